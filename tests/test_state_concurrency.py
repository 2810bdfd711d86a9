"""Concurrent `production.py approve` and `retake` on one production: every update lands.

approvals.json and takes.json are each read, changed and written; two commands doing that at once used
to lose one update (four concurrent retakes recorded two or three). Now each read-modify-write holds the
production's lock (locks.state_lock). The commands here are real processes started together; a slowed
write (0.2 s between reading a file and writing it back, as a busy machine gives) makes the overlaps that
can happen happen, so the test fails reliably without the lock (it recorded one retake of four).
"""

import json
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

from producer.files import locks
from producer.workflow import approvals

ROOT = Path(__file__).resolve().parents[1]
SAMPLE = ROOT / "examples" / "lighthouse"

SLOW_COMMAND = """
    import json, sys, time
    from producer.workflow import approvals
    write = approvals.write_json_atomic

    def slowed(*args, **kwargs):  # a busy machine: time passes between reading the state and writing it
        time.sleep(0.2)
        return write(*args, **kwargs)

    approvals.write_json_atomic = slowed
    from producer.commands import production
    sys.stdin.readline()  # every command starts at the same moment
    sys.exit(production.main(sys.argv[1:]))
"""


def start(*argv) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": str(ROOT / "scripts")}
    return subprocess.Popen([sys.executable, "-c", textwrap.dedent(SLOW_COMMAND), *map(str, argv), "--json"],
                            env=env, text=True, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE)


def together(*commands) -> list[dict]:
    procs = [start(*argv) for argv in commands]
    for proc in procs:
        proc.stdin.write("go\n")
        proc.stdin.flush()
    results = [proc.communicate(timeout=120) for proc in procs]
    assert all(p.returncode == 0 for p in procs), [(p.returncode, out[-300:]) for p, (out, _) in zip(procs, results) if p.returncode]
    return [json.loads(out.strip().splitlines()[-1]) for out, _ in results]


def test_concurrent_retakes_and_approvals_all_land(tmp_path):
    root = tmp_path / "film"
    shutil.copytree(SAMPLE, root, ignore=shutil.ignore_patterns(".production"))
    together(("approve", root, "philosophy"))
    first = approvals.read_approvals(root)["philosophy"]
    # Four retakes of one item, one of another, and two approvals: seven commands at once.
    commands = [("retake", root, "keyframe:KF-D")] * 4 + [("retake", root, "keyframe:KF-A")]
    commands += [("approve", root, "scenes"), ("approve", root, "philosophy")]
    results = together(*commands)
    assert approvals.read_takes(root) == {"keyframe:KF-A": 1, "keyframe:KF-D": 4}
    assert sorted(r["take"] for r in results if r["command"] == "retake" and r["retake"] == "keyframe:KF-D") == \
        [1, 2, 3, 4]  # each command got its own take: no two read the same count
    assert set(approvals.read_approvals(root)) == {"philosophy", "scenes"}
    assert first.files == approvals.read_approvals(root)["philosophy"].files
    assert not locks.state_lock_path(root).exists()
