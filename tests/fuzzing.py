"""What the fuzz tests share: the world the cases run in, the strategies that make their inputs, and
`run_case`, which runs one case in-process and checks every rule a run must keep.

The rules (for every script and case): the run ends in success, a report (a check with problems, a partial
batch: non-zero exit, the report on stdout) or a clean error: an exit code from the documented set, "error:"
and "fix:" on stderr, no traceback, no crash (the catch-all message for an unexpected exception asks to
"report it": that counts as a crash here), one JSON object on stdout with --json, and when the run fails,
nothing created or changed anywhere in the area a run could touch (`snapshot`: the world, which is the
current folder, the Hugging Face cache with the stand-in models, and the folder around the world; no output
under a final name, no temp file, no lock). stdout and stderr are real text streams with Python's own error
handlers (stdout strict, stderr backslashreplace), so a name that is not valid UTF-8 cannot slip through.

Each case is also placed at the stage it reached (`STAGES`), reported to hypothesis with `event()` (see
`pytest --hypothesis-show-statistics`) and counted, so a test can require that its cases go deep:
  help       --help/-h answered
  arguments  refused by the argument parser (exit 2, "see ... --help")
  inputs     refused after parsing, before any model: a file, a value, a path, a lock
  model      stopped at the model: not installed (exit 3), or refused by the loader
  denoise    the model denoised at least one step, then the run failed
  done       success (for a generation: the output, its recipe and its review files exist)
  report     a report with problems (a check, a partial batch)
"""

import contextlib
import io
import json
import os
import shutil
import struct
import zlib
from collections import Counter
from pathlib import Path
from typing import NamedTuple
from unittest import mock

import numpy as np
import pytest
from hypothesis import HealthCheck, event, settings
from hypothesis import strategies as st
from hypothesis.errors import InvalidArgument
from PIL import Image
from producer.cli import ExitCode
from producer.files import video

DOCUMENTED_CODES = {int(c) for c in ExitCode} - {ExitCode.INTERRUPTED, ExitCode.TERMINATED}
CRASH_FIX = "if it persists, report it"  # cli.run_main's catch-all for an unexpected exception
INTERNAL = ("parallel_worker",)  # hidden from --help: how a coordinator starts its workers, not for people
SAMPLE = Path(__file__).resolve().parents[1] / "examples" / "lighthouse"
HUB_BOOKKEEPING = {"refs", ".no_exist", ".locks"}  # a ref to a commit, a file known to be missing, its locks
STAGES: dict[str, Counter] = {}  # per test name: how many cases reached each stage


def fuzz_settings(examples: int):
    # Derandomized: the same cases in every run, reproducible in CI. The function-scoped fixtures a fuzz test
    # takes (monkeypatch, the offline cache) are set up once for all of its cases on purpose.
    return settings(max_examples=examples, deadline=None, derandomize=True, database=None,
                    suppress_health_check=list(HealthCheck))


# ---------------------------------------------------------------- the world the cases run in (their cwd)


def bomb_png(path: Path, side: int = 100_000) -> None:
    """A valid PNG header declaring side x side pixels, with almost no data: a decompression bomb."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", side, side, 8, 2, 0, 0, 0))
                     + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + chunk(b"IEND", b""))


def make_world(root: Path) -> Path:
    inputs = root / "in"
    inputs.mkdir(parents=True)
    Image.fromarray((np.random.default_rng(0).random((48, 64, 3)) * 255).astype(np.uint8)).save(inputs / "kf.png")
    Image.fromarray((np.random.default_rng(1).random((48, 64, 3)) * 255).astype(np.uint8)).save(inputs / "kf2.png")
    Image.new("RGB", (8, 8)).save(inputs / "tiny.png")
    (inputs / "text.png").write_text("not a picture")
    bomb_png(inputs / "bomb.png")
    (inputs / "style.json").write_text(json.dumps({"visual_style": {"art_style": "ink wash"}}))
    (inputs / "broken.json").write_text("{\"jobs\": [")
    (inputs / "jobs.json").write_text(json.dumps([{"prompt": "x", "output": "out.png"}]))
    (inputs / "evil.pt").write_bytes(b"\x80\x04not really a pickle")
    (inputs / "fake.safetensors").write_text("not safetensors")
    video.write_mp4([np.zeros((16, 16, 3), np.uint8)] * 2, inputs / "clip.mp4", fps=16)
    (inputs / "latin1.txt").write_bytes("caf\xe9".encode("latin-1"))
    shutil.copytree(SAMPLE, root / "film", ignore=shutil.ignore_patterns(".production"))
    (root / "out").mkdir()
    return root


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    return make_world(tmp_path_factory.mktemp("fuzz"))


@pytest.fixture
def in_world(world, monkeypatch):
    """Cases run with the world as their current folder: relative paths (all the strategies make) land in it."""
    monkeypatch.chdir(world)
    return world


# Relative to the world. Outside it: the root, a device, a user that does not exist, a name that is not UTF-8.
PATHS = ["in/kf.png", "in/tiny.png", "in/text.png", "in/bomb.png", "in/style.json", "in/broken.json", "in/jobs.json",
         "in/evil.pt", "in/fake.safetensors", "in/clip.mp4", "in/latin1.txt", "in/missing.png", "in", "film",
         "film/scene-breakdown.md", "film/assets.json", "out/new.png", "out/new.mp4", "out/missing/dir/x.png", "out",
         "out/new.json", "", "-", "../../etc/passwd", "/dev/null", "/", "~nosuchuser/x.png",
         os.fsdecode(b"out/\xff\xfe.png")]


# ---------------------------------------------------------------- values


def text(allow_nul: bool = False):
    """Any text a command line (or, with NUL, a JSON file) can carry, non-UTF-8 bytes and very long text too."""
    alphabet = st.characters(blacklist_categories=("Cs",) if not allow_nul else (), blacklist_characters=""
                             if allow_nul else "\x00")
    return st.one_of(st.text(alphabet, max_size=40), st.binary(max_size=16).map(os.fsdecode).filter(
        lambda s: allow_nul or "\x00" not in s), st.sampled_from(["", " ", "-", "--", "nan", "-1", "1e999", "0x0"]),
        st.integers(1, 200_000).map(lambda n: "a lighthouse at dusk, " * (n // 22)))


NUMBERS = st.one_of(st.integers(-10**20, 10**20).map(str), st.integers(0, 100).map(str), st.floats().map(repr),
                    st.sampled_from(["0", "1", "2", "4", "9", "16", "81", "-0", "1e400", "inf", "nan", "0.5", "64x64",
                                     "832x480", "0x0", "-16x16", "65536x65536", "1:0.5", "1:2:3", "0,1", "0,0", "cut",
                                     "fade:0.5", "dissolve:9", "continuous:1", "fade:x"]))
USUAL = {  # by the option's type: values a user would give, so that most cases get past the parser
    "size_arg": ["64x64", "832x480", "480x832", "1280x720"], "strength_arg": ["1", "0.8", "1:0.5", "1.5"],
    "gpu_list": ["0", "0,1"], "transition_arg": ["cut", "fade:0.5", "dissolve:1"], "seed_arg": ["0", "7", "42"],
    "whole number": ["1", "2", "4", "5", "9", "17", "33", "81"]}
USUAL_OTHERWISE = ["0.5", "1", "2", "3.5", "5", "8"]  # float, int, number_arg's "number"
PATH_METAVARS = {"IMG", "FILE", "style.json", "STYLE.json", "OUT.mp4", "FILE.json", "MP4", "DIR", "RUN_FOLDER"}
PATH_DESTS = {"output", "production_dir", "audio", "models_dir", "batch", "lora", "clips"}
WORDS = {"device": ["cpu", "cuda", "cuda:0", "cuda:7", "meta", "mps", "cpu:0"], "attention": ["sdpa", "flash", "native",
         "_native_flash", "sage", "xformers"], "only": ["wan-i2v", "qwen-edit", "wan-lightning", "openpose-annotators"]}
NUMBER_TYPES = ("seed_arg", "size_arg", "strength_arg", "gpu_list", "transition_arg", "number", "whole number")


def sometimes(rare, otherwise, one_in: int = 8):
    """`rare` in about one case of `one_in`, else `otherwise` (one_of would pick each half the time). The rare
    branch sits mid-range: hypothesis draws the ends of a range more often than the middle."""
    return st.integers(1, one_in).flatmap(lambda i: rare if i == one_in // 2 else otherwise)


def value_for(action, overrides: dict | None = None):
    """Mostly a value of the right kind (so that cases get past the parser), sometimes anything at all.
    `overrides` maps an option's dest to the values to use instead (the deep tests keep runs small)."""
    if overrides and action.dest in overrides:
        return sometimes(text(), st.sampled_from(overrides[action.dest]), one_in=10)
    if action.choices:
        good = st.sampled_from([str(c) for c in action.choices])
    elif action.dest in ("workers", "context_parallel"):
        return sometimes(st.sampled_from(["-1", "0", "x"]), st.just("1"), one_in=3)  # 2 or more starts processes
    elif action.dest in WORDS:
        good = st.sampled_from(WORDS[action.dest])
    elif action.type in (int, float) or getattr(action.type, "__name__", "") in NUMBER_TYPES:
        usual = USUAL.get(getattr(action.type, "__name__", ""), USUAL_OTHERWISE)
        good = sometimes(NUMBERS, st.sampled_from(usual), one_in=3)
    elif action.metavar in PATH_METAVARS or action.dest in PATH_DESTS:
        loras = [p + suffix for p in PATHS[:2] for suffix in (":0.8", ":1:high", ":x")]
        good = st.sampled_from(PATHS + loras)
    else:  # prompts, titles, tokens
        return text()
    return sometimes(text(), otherwise=good)


def options_of(parser, skip=()) -> list:
    return [a for a in parser._actions if a.option_strings and a.dest not in ("help", *INTERNAL, *skip)]


def option_args(parser, skip=(), base: list | None = None, overrides: dict | None = None, always_base=False,
                most: int = 6):
    """A random command line for `parser`: often (always, with `always_base`) a working one (`base`) with
    options added, any of its options in any order, with values of the right kind or not, and now and then a
    stray token."""
    actions = options_of(parser, skip)

    def one(action):
        flag = st.sampled_from(action.option_strings)
        if action.nargs == 0:
            return flag.map(lambda f: [f])
        count = st.integers(1, 3) if action.nargs in ("+", "*") else st.just(1)
        return st.tuples(flag, count.flatmap(lambda n: st.lists(value_for(action, overrides), min_size=n,
                                                                max_size=n))).map(lambda fv: [fv[0], *fv[1]])

    chosen = st.lists(st.sampled_from(actions), max_size=4 if base else most).flatmap(
        lambda acts: st.tuples(*[one(a) for a in acts])) if actions else st.just(())
    stray = sometimes(st.sampled_from(["--help", "-h", "--json", "--", "--no-such-flag", "x"]).map(lambda t: [t]),
                      st.just([]), one_in=8 if not always_base else 20)
    if always_base:
        start = st.just(base)
    else:
        start = sometimes(st.just([]), st.just(base), one_in=5) if base else st.just([])
    return st.tuples(start, chosen, stray, st.randoms(use_true_random=False)).map(_shuffle)


def _shuffle(parts) -> list[str]:
    start, chosen, stray, rng = parts
    groups = [list(g) for g in chosen] + [[s] for s in stray]
    rng.shuffle(groups)
    return [str(token) for token in start] + [token for g in groups for token in g]


JSON_SCALARS = st.one_of(st.none(), st.booleans(), st.integers(-10**12, 10**12), st.floats(), text(allow_nul=True))


def any_json(keys=None):
    key = st.one_of(st.sampled_from(keys), text(allow_nul=True)) if keys else text(allow_nul=True)
    return st.recursive(JSON_SCALARS, lambda inner: st.one_of(st.lists(inner, max_size=4),
                                                            st.dictionaries(key, inner, max_size=6)), max_leaves=12)


def batch_jobs(parser, base: dict, overrides: dict | None = None, skip=()):
    """Batch jobs: mostly jobs that would work (`base`) with options of the right kind or any JSON value added."""
    def entry(action):
        name = action.option_strings[-1].lstrip("-")
        name = st.sampled_from([name, name.replace("-", "_")])
        if action.nargs == 0:
            return st.tuples(name, sometimes(JSON_SCALARS, st.booleans(), one_in=4))
        kind = value_for(action, overrides)
        return st.tuples(name, sometimes(any_json(), st.one_of(kind, st.lists(kind, max_size=3)), one_in=6))

    extra = st.lists(st.sampled_from(options_of(parser, skip)).flatmap(entry), max_size=3).map(dict)
    return st.tuples(sometimes(st.just({}), st.just(base), one_in=6), extra).map(lambda t: {**t[0], **t[1]})


# ---------------------------------------------------------------- running one case


def snapshot(world: Path) -> dict[str, object]:
    """The area a run could touch, as it is now: every file under the world (the cases' current folder, where
    all their relative paths point) with a checksum of its content (a file rewritten with the same bytes is
    unchanged); every file of the Hugging Face cache in use (the stand-in models: size and modification time,
    too big to read at every case) but huggingface_hub's own notes of a lookup (`HUB_BOOKKEEPING`: it writes
them while resolving a file, also for a run that then fails); the names beside the world (a path with "..")."""
    found = {str(p): zlib.crc32(p.read_bytes()) for p in world.rglob("*") if p.is_file() and not p.is_symlink()}
    cache = Path(os.environ.get("HF_HOME", world))
    if not cache.is_relative_to(world):
        found.update({str(p): p.stat()[6:9] for p in cache.rglob("*") if p.is_file() and not HUB_BOOKKEEPING & set(
            p.relative_to(cache).parts)})
    found.update({str(p): "entry" for p in world.parent.iterdir()})
    return found


@contextlib.contextmanager
def denoise_probe():
    """Counts scheduler steps (Qwen's flow-matching Euler, Wan's UniPC and Euler): a case that made one
    reached the model's denoising loop."""
    from diffusers import FlowMatchEulerDiscreteScheduler, UniPCMultistepScheduler

    steps = Counter()
    patches = []
    for cls in (FlowMatchEulerDiscreteScheduler, UniPCMultistepScheduler):
        original = cls.step

        def step(self, *args, _original=original, **kwargs):
            steps["steps"] += 1
            return _original(self, *args, **kwargs)

        patches.append(mock.patch.object(cls, "step", step))
    with contextlib.ExitStack() as stack:
        for p in patches:
            stack.enter_context(p)
        yield steps


@contextlib.contextmanager
def same_cache():
    """--models-dir points this process at another cache (models.use_models_dir): each case starts from the
    test's own, as a new process would."""
    from huggingface_hub import constants

    saved = dict(os.environ), constants.HF_HOME, constants.HF_HUB_CACHE
    try:
        yield
    finally:
        os.environ.clear()
        os.environ.update(saved[0])
        constants.HF_HOME, constants.HF_HUB_CACHE = saved[1], saved[2]


def stage_of(code: int, argv: list[str], stderr: str, steps: int) -> str:
    if code == 0:
        return "help" if {"-h", "--help"} & set(argv) and "--" not in argv else "done"
    if "error:" not in stderr:
        return "report"
    if steps:
        return "denoise"
    if code == ExitCode.MISSING_MODEL:
        return "model"
    return "arguments" if code == ExitCode.USAGE and "--help`" in stderr.splitlines()[-1] else "inputs"


class Case(NamedTuple):
    code: int
    stage: str
    report: dict | None  # the JSON report, with --json


def run_case(main, argv: list[str], world: Path, name: str = "") -> Case:
    """Run `main(argv)` as one case, check the rules of the module doc; its exit code, stage and report."""
    before = snapshot(world)
    out, err = io.BytesIO(), io.BytesIO()
    stdout = io.TextIOWrapper(out, encoding="utf-8", errors="strict", write_through=True)
    stderr = io.TextIOWrapper(err, encoding="utf-8", errors="backslashreplace", write_through=True)
    with denoise_probe() as steps, same_cache(), contextlib.redirect_stdout(stdout), contextlib.redirect_stderr(stderr):
        code = main(argv)  # an exception escaping main (a crash) fails the test with this argv
    stdout_text, stderr_text = out.getvalue().decode(), err.getvalue().decode()
    assert code in DOCUMENTED_CODES, (code, argv, stderr_text[-2000:])
    assert "--debug" in argv or "Traceback" not in stderr_text, (argv, stderr_text[-3000:])
    assert CRASH_FIX not in stderr_text, (argv, stderr_text[-3000:])
    stage = stage_of(code, argv, stderr_text, steps["steps"])
    if stage == "report":
        assert stdout_text.strip(), (argv, code, stderr_text[-2000:])
    report = None
    if "--json" in argv and not {"-h", "--help", "--"} & set(argv):
        report = json.loads(stdout_text)  # exactly one object on stdout, also when the run failed
        failed = code != 0 and stage != "report"
        assert (report["status"] == "ok") == (code == 0) and (report["status"] == "error") == failed, (
            argv, stdout_text[-800:])
    if code != 0 and stage != "report":
        assert "fix:" in stderr_text, (argv, stderr_text[-2000:])
        after = snapshot(world)
        changed = {p for p in after if before.get(p) != after[p]} | (set(before) - set(after))
        assert not changed, (argv, sorted(changed), stderr_text[-1500:])
    left = [p for p, seen in snapshot(world).items() if seen != "entry" and (".partial-" in p or p.endswith(".lock"))]
    assert not left, (argv, left)
    if os.environ.get("FUZZ_CASES"):  # every case, its stage and its last words: for tuning the strategies
        with open(os.environ["FUZZ_CASES"], "a", encoding="utf-8", errors="backslashreplace") as log:
            log.write(json.dumps({"stage": stage, "argv": argv, "said": stderr_text.strip().splitlines()[-2:]}) + "\n")
    with contextlib.suppress(InvalidArgument):  # outside a hypothesis test (a fixed case) there is no event
        event(f"stage: {stage}")
    STAGES.setdefault(name, Counter())[stage] += 1
    return Case(code, stage, report)


def reached(name: str, *stages: str) -> int:
    return sum(STAGES.get(name, Counter())[s] for s in stages)


@pytest.fixture
def stages(request):
    """The name a fuzz test counts its cases under (its own). After its last case (a function-scoped fixture
    is set up once for all the cases of a hypothesis test), the share of its cases that reached the stages
    named by its `reaches(share, *stages)` mark must be at least `share`. With FUZZ_STAGES=FILE, the counts
    are appended to FILE as one JSON line a test (docs/reliability.md quotes them)."""
    name = request.node.name
    STAGES[name] = Counter()
    yield name
    counts, total = STAGES[name], sum(STAGES[name].values())
    if os.environ.get("FUZZ_STAGES"):
        with open(os.environ["FUZZ_STAGES"], "a", encoding="utf-8") as log:
            log.write(json.dumps({"test": name, "cases": total, **counts}) + "\n")
    mark = request.node.get_closest_marker("reaches")
    if mark and total:
        share, *wanted = mark.args
        got = reached(name, *wanted) / total
        assert got >= share, f"{got:.0%} of the cases reached {wanted}, not {share:.0%}: {dict(counts)}"
