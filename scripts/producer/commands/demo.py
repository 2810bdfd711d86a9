"""`production.py demo OUTDIR` and `production.py rehearse DIR`: a production made on tiny stand-in models.

Both do what an agent does: `next`, run the commands it gives (in this process, through each script's
own main()), `next` again... on stand-ins (producer.testing.standins) installed into the rehearsal's own
`.production/standins` (about 5 MB, kept, so that `status` can still compare every recipe afterwards).
The one difference from a real production is loud: every checkpoint is approved automatically, where a
real production shows each phase to the user and waits for a yes. Every output and the folder itself
are marked as a rehearsal (producer.workflow.rehearsal), so none of it can pass for, or be approved as, real work.

- demo: copies the sample production (examples/lighthouse) into OUTDIR and makes all of it.
- rehearse: copies DIR's plan (phase files, the pictures the user provided, settings) into a rehearsal
  folder (DIR/.production/rehearsal unless --into) and makes all of it there. A plan that is not whole
  or fails the check is refused before anything is written. DIR itself is only read.

Every picture is 96x64 and every clip 9 frames (rehearsal.TINY_SETTINGS): the sample's 3-scene film
takes about 15 s on 2 CPU cores, a 96x64 film of about 1.6 s. The pictures are noise (random weights);
the files, recipes, approvals, contact sheets, seam review and the assembled film are the real thing.
"""

from __future__ import annotations

import contextlib
import io
import json
import logging
import os
import shutil
import time
from collections.abc import Iterator
from pathlib import Path

from producer.errors import CliError, ExitCode
from producer.files import layout
from producer.files.outputs import write_json_atomic
from producer.values import load_json, not_text
from producer.workflow import rehearsal
from producer.workflow.rehearsal import DEMO_TIME  # noqa: F401  (production.py shows it in --help)

log = logging.getLogger("producer")

SAMPLE = Path(__file__).resolve().parents[3] / "examples" / "lighthouse"
MAX_STEPS = 60  # a 3-scene production needs about 15 (phases, keyframe rounds, approvals)
PROVIDED_PATTERNS = ("keyframes/KF-*.png", "keyframes/layers/*/*.png")  # planned outputs a user may provide


def run_demo(outdir: str | Path, models_dir: str | None = None, quiet: bool = False) -> dict:
    _require_models_dir(models_dir)
    outdir = Path(outdir).resolve()
    _require_a_utf8_home_for_standins(outdir, models_dir, "the demo's folder")
    if outdir.exists() and (not outdir.is_dir() or any(outdir.iterdir())):
        raise CliError(f"{outdir} is not an empty folder", "give a new folder for the demo, e.g. /tmp/lighthouse-demo")
    shutil.copytree(SAMPLE, outdir, dirs_exist_ok=True)
    result = _rehearse_in(outdir, SAMPLE, models_dir, quiet, "demo")
    return {"command": "demo", **result, "message": _closing_demo(outdir, result["film"])}


def run_rehearsal(source: str | Path, into: str | Path | None = None, models_dir: str | None = None,
                  quiet: bool = False) -> dict:
    source = Path(source).resolve()
    if not source.is_dir():
        raise CliError(f"{source} is not a folder", "give the production folder (the one with philosophy.md)")
    if rehearsal.read_marker(source) is not None:
        raise CliError(f"{source} is itself a rehearsal", "rehearse the real production folder it was copied from")
    dest = Path(into).resolve() if into else layout.state_dir(source) / rehearsal.DEFAULT_FOLDER
    if dest == source:
        raise CliError("--into is the production folder itself", "give another folder (or leave --into out)")
    if dest.exists() and (not dest.is_dir() or (any(dest.iterdir()) and rehearsal.read_marker(dest) is None)):
        raise CliError(f"{dest} is not empty and not a rehearsal", "give a new folder with --into, or leave it out")
    _require_a_whole_plan(source)
    _require_models_dir(models_dir)
    _require_a_utf8_home_for_standins(dest, models_dir, "--into")
    copied = _copy_plan(source, dest)
    result = _rehearse_in(dest, source, models_dir, quiet, "rehearse")
    return {"command": "rehearse", **result, "rehearsal_of": str(source), "copied": copied,
            "message": _closing_rehearsal(source, dest, result)}


def _require_a_utf8_home_for_standins(folder: Path, models_dir: str | None, what: str) -> None:
    """Without --models-dir the stand-ins are installed inside `folder`, and safetensors and tokenizers open
    UTF-8 paths only: a name with other bytes (Linux allows them) would fail after the copy, mid-install."""
    if models_dir is None and not_text(str(folder)):
        raise CliError(f"{what} {folder}: the path is not valid UTF-8, and the stand-in models installed inside it "
                       "could not be opened (safetensors and tokenizers open UTF-8 paths only)",
                       "give a folder whose path is UTF-8, or --models-dir with installed stand-ins")


def _require_models_dir(models_dir: str | None) -> None:
    """A --models-dir given must hold installed models (a `hub` folder, as the stand-ins install it): refused
    here, before anything is copied or written, rather than after the plan was copied."""
    if models_dir is None:
        return
    if not models_dir.strip():
        raise CliError("--models-dir is empty", "give the folder the stand-ins were installed into, or leave "
                       "--models-dir out to install them into the rehearsal", ExitCode.USAGE)
    from producer.modelfiles.models import models_home

    hub = models_home(models_dir) / "hub"
    if not hub.is_dir():
        raise CliError(f"--models-dir {models_dir} holds no installed models (no {hub})",
                       "give the folder the stand-ins were installed into (`validate_diffusers.py --smoke-dir`), "
                       "or leave --models-dir out to install them into the rehearsal", ExitCode.USAGE)


def _require_a_whole_plan(source: Path) -> None:
    """A rehearsal needs the whole plan, checked: refused here, before anything is written or installed, with
    the same problems `check` reports (the real run would stop at them too)."""
    from producer.workflow import status

    snap = status.snapshot(source, with_states=False)
    if snap.prod.missing:
        raise CliError(f"{', '.join(snap.prod.missing)} not written yet in {source}: a rehearsal needs the whole plan",
                       "write them (SKILL.md Phases 1 to 2.5), then rehearse again", ExitCode.USAGE)
    problems = snap.prod.all_problems()
    if problems:
        listed = "; ".join(f"{p.file}:{p.line}: {p.message}" for p in problems[:5])
        raise CliError(f"{source}'s plan has {len(problems)} problem(s): {listed}",
                       f"fix them (`production.py check {source}` lists each with its fix), then rehearse again",
                       ExitCode.USAGE)


def _rehearse_in(root: Path, source: Path, models_dir: str | None, quiet: bool, made_by: str) -> dict:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")  # before huggingface_hub is imported: a rehearsal never downloads
    layout.state_dir(root).mkdir(parents=True, exist_ok=True)
    cache = Path(models_dir).expanduser().resolve() if models_dir else rehearsal.models_dir(root)
    write_json_atomic(rehearsal.marker_path(root), {
        "rehearsal_of": str(source), "models_dir": str(cache), "made_by": f"production.py {made_by}",
        "note": "a rehearsal on tiny stand-in models: nothing here is a real output"})
    _write_settings(root, source, cache)
    started = time.monotonic()
    steps = []
    with _models(cache, models_dir is None, quiet):
        log.warning("REHEARSAL: every checkpoint below is approved automatically. In a real production the agent "
                    "shows each phase to the user and runs `production.py approve` only after a yes.")
        for _ in range(MAX_STEPS):
            step = _step(root, source, quiet)
            steps.append(step)
            if step["action"] == "done":
                break
        else:
            raise CliError(f"the rehearsal did not finish in {MAX_STEPS} steps", "run `production.py next` on "
                           f"{root} to see where it stands", ExitCode.FAILED)
    film = _film_facts(root)
    return {"root": str(root), "rehearsal": True, "models": f"stand-ins (tiny random models) in {cache}",
            "seconds": round(time.monotonic() - started, 1), "steps": steps, "files": _files(root), "film": film}


def _copy_plan(source: Path, dest: Path) -> list[str]:
    """DIR's phase files, settings and the pictures the user provided (no recipe), into the rehearsal.
    A rehearsal folder made before is brought up to date: its outputs stay, and `next` remakes what changed."""
    from producer.files.provenance import read_recipe
    from producer.production.project import PHASE_FILES

    dest.mkdir(parents=True, exist_ok=True)
    copied = []
    for name in (f for files in PHASE_FILES.values() for f in files):
        _copy(source / name, dest / name)  # all there: _require_a_whole_plan
        copied.append(name)
    candidates = _asset_pictures(source) + [p for pattern in PROVIDED_PATTERNS for p in source.glob(pattern)]
    for path in dict.fromkeys(candidates):
        try:
            relative = path.resolve().relative_to(source)
        except ValueError:
            continue  # a picture outside the folder: the rehearsal reports it as the check does
        if path.is_file() and read_recipe(path) is None:
            _copy(path, dest / relative)
            copied.append(str(relative))
    return copied


def _asset_pictures(root: Path) -> list[Path]:
    """Every "image" assets.json names (the check judges the file itself; unreadable means none)."""
    try:
        plan = load_json((root / layout.ASSETS).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return []
    kinds = plan.values() if isinstance(plan, dict) else []
    return [root / item["image"] for kind in kinds if isinstance(kind, dict) for item in kind.values()
            if isinstance(item, dict) and isinstance(item.get("image"), str)]


def _copy(src: Path, dst: Path) -> None:
    """Copy through a temporary file and a rename: a rehearsal file is never left half-written."""
    dst.parent.mkdir(parents=True, exist_ok=True)
    tmp = dst.with_name(f".{dst.name}.copying")
    shutil.copyfile(src, tmp)
    os.replace(tmp, dst)


def _write_settings(root: Path, source: Path, cache: Path) -> None:
    """The production's own settings, at the rehearsal's tiny size, every command pointed at the stand-ins."""
    settings_file = layout.state_file(source, "settings.json")
    try:
        settings = load_json(settings_file.read_text(encoding="utf-8")) if settings_file.is_file() else {}
    except (OSError, ValueError):
        settings = {}  # the check reports a broken settings file in the real production
    settings = settings if isinstance(settings, dict) else {}
    merged = {"_comment": "a rehearsal on stand-in models: tiny sizes, --models-dir of the stand-ins "
                          "(written by production.py; the real production's settings are in its own folder)"}
    for script in set(settings) | set(rehearsal.TINY_SETTINGS):
        if script.startswith("_"):
            continue
        ours = dict(rehearsal.TINY_SETTINGS.get(script, {}))
        if script in rehearsal.TINY_SETTINGS:
            ours["models_dir"] = str(cache)
        theirs = settings.get(script) if isinstance(settings.get(script), dict) else {}
        merged[script] = {**theirs, **ours}
    write_json_atomic(layout.state_file(root, "settings.json"), merged)


@contextlib.contextmanager
def _models(cache: Path, install_here: bool, quiet: bool) -> Iterator[None]:
    from producer.modelfiles import models

    if install_here and not (cache / "hub").is_dir():
        from producer.testing import standins

        log.info("installing the stand-in models into %s (a few seconds, once)", cache)
        with _progress_bars(enabled=not quiet):
            standins.install_standins(cache)
    models.use_models_dir(str(cache))
    yield


@contextlib.contextmanager
def _progress_bars(enabled: bool) -> Iterator[None]:
    """The libraries' own progress bars while the stand-ins are written (off with --quiet)."""
    if enabled:
        yield
        return
    from diffusers.utils import logging as diffusers_logging
    from transformers.utils import logging as transformers_logging

    diffusers_logging.disable_progress_bar()
    transformers_logging.disable_progress_bar()
    try:
        yield
    finally:
        diffusers_logging.enable_progress_bar()
        transformers_logging.enable_progress_bar()


def _step(root: Path, source: Path, quiet: bool) -> dict:
    from producer.workflow import checkpoints, nextstep, status

    started = time.monotonic()
    step = nextstep.next_step(status.snapshot(root, plan_seeds=True))
    action = step["action"]
    if action == "approve":
        log.warning("REHEARSAL: approving Phase %s (%s) automatically: %s", step["phase_number"], step["phase"],
                    ", ".join(step["files"]) or "-")
        checkpoints.approve(status.snapshot(root), step["phase"])
    elif action == "generate":
        for argv in ([step["batch_argv"]] if "batch_argv" in step else [j["argv"] for j in step["jobs"]]):
            _run_script(argv, quiet)
    elif action != "done":
        raise _stopped(step, source)
    return {"phase": step["phase"], "action": action, "jobs": [j["id"] for j in step.get("jobs", [])],
            "seconds": round(time.monotonic() - started, 1)}


def _stopped(step: dict, source: Path) -> CliError:
    """Where the run stops, as the real run would: the production's files need writing or fixing."""
    where = f"Phase {step['phase_number']} ({step['phase']})"
    if step["action"] == "write":
        return CliError(f"the rehearsal stopped at {where}: {', '.join(step['files'])} not written yet in {source}",
                        f"write them (SKILL.md Phase {step['phase_number']}), then rehearse again", ExitCode.USAGE)
    problems = step.get("problems") or []
    if problems:
        listed = "; ".join(f"{p['file']}:{p['line']}: {p['message']}" for p in problems[:5])
        return CliError(f"the rehearsal stopped at {where}: {len(problems)} problem(s): {listed}",
                        f"fix them in {source} (`production.py check {source}` lists each with its fix), then "
                        "rehearse again", ExitCode.USAGE)
    return CliError(f"the rehearsal stopped at {where}: {step['message']}",
                    json.dumps(step.get("errors") or step.get("waiting") or [])[:500], ExitCode.FAILED)


def _run_script(argv: list[str], quiet: bool) -> dict:
    """Run a generation script's main() in this process (argv as `next` printed it) and read its JSON."""
    from producer.workflow.planner import script_module

    script = Path(argv[1]).name
    args = [a for a in argv[2:] if a != "--json"] + ["--json"] + (["--quiet"] if quiet else [])
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        code = script_module(script).main(args)
    lines = out.getvalue().strip().splitlines()
    result = load_json(lines[-1]) if lines else {}
    if code != 0:
        failed = [j.get("error") for j in result.get("jobs", []) if j.get("status") == "error"] or [result.get("error")]
        raise CliError(f"the rehearsal's {script} run failed (exit {code}): {'; '.join(map(str, failed))}",
                       result.get("fix") or "rerun the command `production.py next` prints, with --debug",
                       ExitCode.FAILED)
    return result


def _files(root: Path) -> dict[str, list[str]]:
    def found(pattern: str) -> list[str]:
        return sorted(str(p) for p in root.glob(pattern) if p.is_file())

    return {"assets": found("assets/*/*.png"), "keyframes": found("keyframes/*.png"),
            "layers": found("keyframes/layers/*/*.png"), "clips": found("scene-*/video.mp4"),
            "contact sheets": found("scene-*/video.contact.png") + found("final/*.contact.png"),
            "film": found("final/*.mp4")}


def _film_facts(root: Path) -> dict | None:
    from producer.files.video import probe_video

    film = layout.film_path(root)
    if not film.is_file():
        return None
    info = probe_video(film)
    return {"path": str(film), "width": info["width"], "height": info["height"], "seconds": info["duration"]}


def _tiny(film: dict | None) -> str:
    if film is None:
        return ""
    return (f" The film is tiny on purpose ({film['width']}x{film['height']}, {film['seconds']:.1f} s: every picture "
            "96x64, every clip 9 frames) and its pictures are noise: stand-in models have random weights.")


def _closing_demo(root: Path, film: dict | None) -> str:
    return (f"Done: {layout.film_path(root)}.{_tiny(film)} Look around with `production.py status {root}`. With real "
            "models the commands are the same: install them (setup_diffusers.py --check says which), copy "
            "examples/lighthouse, and follow `production.py next` phase by phase, approving each checkpoint only after "
            "the user has seen it. Your own plan on stand-ins first: `production.py rehearse DIR`.")


def _closing_rehearsal(source: Path, dest: Path, result: dict) -> str:
    return (f"REHEARSAL done in {result['seconds']:.0f} s: every phase of {source} ran on stand-in models in {dest}."
            f"{_tiny(result['film'])} Nothing there is a real output or a real approval; {source} is unchanged. "
            f"Look around with `production.py status {dest}`; the real run: `production.py next {source}`.")
