"""The agent's contract (issue 18): every command that `check`, `status`, `next` and their fixes print parses with
its script's own parser and runs; README, SKILL.md and --help agree on exit codes, times and actions; .ci/run
follows README literally."""

import contextlib
import io
import json
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from producer import cli
from producer.commands import docgen, production
from producer.commands.demo import SAMPLE
from producer.modelfiles import needs
from producer.workflow import nextstep, planner
from producer.workflow.rehearsal import DEMO_TIME

ROOT = Path(__file__).resolve().parents[1]
SCRIPTS = ("production", "qwen_image", "wan_video", "assemble_video", "setup_diffusers", "validate_diffusers")
# A command inside a message: the script, then its arguments up to a delimiter or a word of the sentence.
MENTION = re.compile(r"(?:\S+/)?\b(" + "|".join(SCRIPTS) + r")\.py((?: (?!(?:then|makes|for|or|and|to|lists|"
                     r"again|with|each)\b)(?:'[^']*'|[^\s`;,()']+))*)")


def run(argv: list[str]) -> tuple[int, dict]:
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        code = production.main([*argv, "--json", "--quiet"])
    return code, json.loads(out.getvalue().strip().splitlines()[-1])


def flat(text: str) -> str:
    return " ".join(text.split())


def commands_in(value) -> list[str]:
    """Every command a JSON answer prints: command lists as they are, and every script named in its texts."""
    found = []
    if isinstance(value, dict):
        for key, item in value.items():
            if key in ("commands", "approve_commands") and isinstance(item, list):
                found += [c for c in item if isinstance(c, str)]
            elif key == "command" and isinstance(item, str) and ".py" in item:
                found.append(item)
            elif key not in ("argv", "batch_argv", "batch_job"):
                found += commands_in(item)
    elif isinstance(value, list):
        for item in value:
            found += commands_in(item)
    elif isinstance(value, str):
        found += [f"{m.group(1)}.py{m.group(2)}" for m in MENTION.finditer(value) if _a_command(m.group(1), m.group(2))]
    return list(dict.fromkeys(found))


VERBS = ("check", "status", "next", "approve", "retake", "rehearse", "demo")


def _a_command(script: str, args: str) -> bool:
    """A script named with options or a production.py verb after it is a command; "wan_video.py colour matching"
    or "with qwen_image.py" is prose."""
    first = args.split()[0] if args.split() else ""
    return first.startswith("-") or (script == "production" and first in VERBS)


def parse(command: str):
    """(script, Namespace): the command parsed by its script's own parser (argparse exits 2 on a bad one)."""
    words = shlex.split(command)
    at = next(i for i, w in enumerate(words) if w.endswith(".py"))
    script = Path(words[at]).name
    return script, docgen.script_parser(script).parse_args(words[at + 1:])


def variants(root: Path) -> dict[str, Path]:
    """The sample, and broken variants of it, each in its own folder."""
    made = {}

    def variant(name, change=None):
        folder = root / name
        shutil.copytree(SAMPLE, folder)
        if change:
            change(folder)
        made[name] = folder

    def edit(name, old, new):
        def change(folder):
            path = folder / name
            text = path.read_text(encoding="utf-8")
            assert old in text, (name, old)
            path.write_text(text.replace(old, new, 1), encoding="utf-8")
        return change

    variant("sample")
    variant("no-camera", edit("scene-breakdown.md", "**Camera**:", "**Kamera**:"))
    variant("asset-outside", edit("assets.json", '"assets/characters/keeper.png"', '"../keeper.png"'))
    variant("unknown-character", edit("scene-breakdown.md", "| keeper |", "| keepr |"))
    variant("bad-settings", lambda f: ((f / ".production").mkdir(),
                                       (f / ".production" / "settings.json").write_text('{"qwen_image.py": {"seed": 3}}')))
    variant("no-assets", lambda f: (f / "assets.json").unlink())
    (root / "empty").mkdir()
    made["empty"] = root / "empty"
    return made


def answers(folder: Path) -> list[dict]:
    out = [run(["check", str(folder)])[1], run(["status", str(folder)])[1]]
    for phase in ("philosophy", "scenes"):  # as far as the files allow: each approval refused or recorded
        out.append(run(["next", str(folder)])[1])
        out.append(run(["approve", str(folder), phase])[1])
    out.append(run(["next", str(folder)])[1])
    return out


def test_every_command_the_tool_prints_parses_and_runs(tmp_path, standin_hf_home):
    """check, status, next and approve on the sample and its broken variants: every command they print (lists
    and commands inside messages and fixes) parses with its script's own parser; those on production.py run."""
    parsed, ran = 0, 0
    for name, folder in variants(tmp_path).items():
        for answer in answers(folder):
            for command in commands_in(answer):
                script, args = parse(command)
                parsed += 1
                if script == "production.py" and args.command in ("check", "status", "next"):
                    code, result = run([args.command, str(args.dir)])
                    assert code in (0, 2) and "error" not in result, (name, command, result)
                    ran += 1
    assert parsed >= 30 and ran >= 7


@pytest.fixture
def finished(finished_demo) -> Path:
    """The demo: a finished production with flagged seams (conftest: made once; tests work on copies)."""
    return finished_demo[0]


def test_every_command_of_a_finished_production_parses_and_runs(finished, tmp_path):
    """The seam commands and the approve commands of every phase parse and run; a retake it suggests makes the
    item stale, the trimmed film is written beside the film."""
    root = shutil.copytree(finished, tmp_path / "demo")
    report = run(["status", str(root)])[1]
    seam_commands = [c for seam in report["seams"] for c in seam["commands"]]
    assert any("--trim-end" in c for c in seam_commands) and any(" retake " in c for c in seam_commands)
    for command in commands_in(report):
        script, args = parse(command)
        if script == "assemble_video.py" and command.startswith(sys.executable):  # a whole command, not advice
            completed = subprocess.run(shlex.split(command) + ["--json"], capture_output=True, text=True, timeout=300)
            assert completed.returncode == 0, completed.stderr[-2000:]
    assert (root / "final" / "film-trimmed.mp4").is_file()
    retake = next(c for c in seam_commands if " retake " in c)
    _, args = parse(retake)
    code, result = run(["retake", str(args.dir), args.item])
    assert code == 0 and f"production.py next {root}" in result["message"]
    nxt = run(["next", str(root)])[1]
    for command in commands_in(nxt):
        parse(command)
    assert nxt["action"] == "approve" or nxt["action"] == "generate"


def test_next_on_an_empty_folder_says_write(tmp_path):
    nxt = run(["next", str(tmp_path)])[1]
    assert nxt["action"] == "write" and nxt["files"] == ["philosophy.md", "style.json"]


def test_approve_shows_pictures_and_planned_commands_carry_json(finished, tmp_path):
    root = shutil.copytree(finished, tmp_path / "demo")
    for phase in ("clips", "film"):
        snap_answer = _approve_answer(root, phase)
        assert snap_answer["show"] and all(p.endswith(".png") for p in snap_answer["show"]), snap_answer
        assert "contact.png" in snap_answer["message"] and ".mp4 for" not in snap_answer["message"].split("(")[0]
    (root / "final" / "film.mp4").unlink()
    nxt = run(["next", str(root)])[1]
    assert nxt["action"] == "generate" and nxt["commands"][0].endswith("--json")


def _approve_answer(root: Path, phase: str) -> dict:
    from producer.workflow import status

    return nextstep._approve(status.snapshot(root), phase, flags=[])


# ---------------------------------------------------------------- the documents agree with the code


def test_exit_codes_in_skill_md_are_the_scripts_codes():
    """SKILL.md's table and every script's --help (cli.EXIT_CODE_HELP) give each exit code the same meaning."""
    table = re.findall(r"^\| (\d+(?:, \d+)?) \| ([^|]+) \|", (ROOT / "SKILL.md").read_text(), re.M)
    documented = {}
    for codes, meaning in table:
        for code, word in zip(codes.split(", "), meaning.strip().split(", ")):
            documented[int(code)] = word
    in_help = dict((int(m.group(1)), m.group(2)) for m in re.finditer(r"(\d+) ([a-z][a-z ]+?)(?:,|$)",
                                                                      cli.EXIT_CODE_HELP.split(": ", 1)[1]))
    assert set(documented) == set(in_help) == {int(c) for c in cli.ExitCode}
    assert documented == in_help


def test_skill_md_lists_the_actions_next_gives():
    actions = re.findall(r"^\s+- `(\w+)`:", (ROOT / "SKILL.md").read_text(), re.M)
    documented_in_code = re.findall(r"^  (\w+) {2,}", nextstep.__doc__, re.M)
    assert set(actions) == set(documented_in_code) == {"write", "fix", "generate", "approve", "retake", "done"}


def test_one_demo_time_everywhere():
    help_text = flat(production.build().format_help())
    demo_help = flat(production.build()._subparsers._group_actions[0].choices["demo"].format_help())
    for where, text in (("README.md", flat((ROOT / "README.md").read_text())),
                        ("SKILL.md", flat((ROOT / "SKILL.md").read_text())), ("--help", help_text),
                        ("demo --help", demo_help), ("setup's verdict", " ".join(needs.WITHOUT_MODELS))):
        assert DEMO_TIME in text, where
        assert not re.search(r"demo[^.]*\b(half a minute|about a minute|a few minutes)", text), where


def test_ci_follows_readme_literally():
    """.ci/run --dry-run: README's install lines (the unreachable PyTorch index as the local build), its demo
    command, requirements-dev.txt and its test command, in README's order."""
    out = subprocess.run(["bash", str(ROOT / ".ci" / "run"), "--dry-run"], capture_output=True, text=True,
                         check=True, timeout=60).stdout.splitlines()
    readme = (ROOT / "README.md").read_text()
    assert "download.pytorch.org/whl/cpu" in readme and "download.pytorch.org/whl/cu128" in readme
    assert "CI cannot reach" in out[0] and out[0].endswith("pip install -q torch==2.14.1 torchvision==0.29.1")
    assert out[1:] == ["python -m pip install -q -r requirements.txt", "python scripts/production.py demo /tmp/lighthouse",
                       "python -m pip install -q -r requirements-dev.txt", "python -m pytest -q -n auto"]
    assert "<!-- test-install -->\n```bash\npip install -r requirements-dev.txt" in readme


# ---------------------------------------------------------------- one exit-code rule for batches


def test_a_batch_whose_every_job_misses_the_model_exits_3_in_both_scripts(tmp_path, capsys):
    """No model installed (the autouse empty cache): qwen_image.py used to say 6 "partial" where wan_video.py said
    3; both now give the reason's code when every job failed for it (SKILL.md's table)."""
    from PIL import Image
    from producer.makers import qwen_image, wan_video

    Image.new("RGB", (64, 64), "grey").save(tmp_path / "kf.png")
    (tmp_path / "stills.json").write_text(json.dumps([{"prompt": f"a fox {i}", "output": f"s{i}.png"} for i in range(3)]))
    (tmp_path / "clips.json").write_text(json.dumps([{"prompt": "walk", "start_frame": "kf.png", "output": f"c{i}.mp4"}
                                                     for i in range(2)]))
    for main, batch in ((qwen_image.main, "stills.json"), (wan_video.main, "clips.json")):
        code = main(["--batch", str(tmp_path / batch), "--json", "--quiet"])
        out, err = capsys.readouterr()
        result = json.loads(out)
        assert code == cli.ExitCode.MISSING_MODEL and result["status"] == "error", (batch, result)
        assert "setup_diffusers.py --download --only" in result["fix"] and "fix:" in err


def test_a_warning_every_clip_repeats_is_shown_once_per_batch():
    import logging

    from producer.makers import wan_video

    once = wan_video._DistinctWarnings()
    record = lambda text: logging.LogRecord("producer", logging.WARNING, __file__, 1, text, None, None)  # noqa: E731
    assert [once.filter(record(t)) for t in ("a", "a", "b", "a")] == [True, False, True, False]
    assert once.filter(logging.LogRecord("producer", logging.INFO, __file__, 1, "a", None, None))


def test_the_planner_asks_wan_for_frames_it_means():
    """A scene of 4 s is planned as 65 frames (4n+1 at 16 fps), so no clip warns "64 frames; using 65"."""
    from producer.production import project

    prod = project.load_production(SAMPLE)
    plan = planner.plan_production(prod, {})
    clips = [j for j in plan.jobs if j.phase == "clips"]
    assert clips and all("duration" not in j.options and (j.options["frames"] - 1) % 4 == 0 for j in clips)
