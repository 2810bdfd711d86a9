"""`production.py demo OUTDIR`: the sample production made end to end on tiny stand-in models.

It copies examples/lighthouse into OUTDIR, installs the stand-ins (tiny random models with the real
classes, producer.standins) into a temporary Hugging Face cache (or uses --models-dir), and then does
what an agent does: `next`, run the commands it gives (in this process, through each script's own
main()), `next` again... The one difference is loud: every checkpoint is approved automatically,
where a real production shows each phase to the user and waits for a yes.

The demo's .production/settings.json makes every picture 96x64 and every clip 9 frames, so the whole
film takes a minute or two on a CPU. The pictures are noise (random weights); the files, recipes,
approvals, contact sheets, seam review and the assembled film are the real thing.
"""

from __future__ import annotations

import contextlib
import io
import json
import logging
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

from . import layout
from .cli import CliError, ExitCode
from .outputs import write_json_atomic

log = logging.getLogger("producer")

SAMPLE = Path(__file__).resolve().parents[2] / "examples" / "lighthouse"
DEMO_SETTINGS = {
    "_comment": "demo only: tiny sizes for the stand-in models; delete this file for real models",
    "qwen_image.py": {"size": "96x64"},
    "wan_video.py": {"size": "96x64", "frames": 9},
}
MAX_STEPS = 40  # a 3-scene production needs about 15 (phases, keyframe rounds, approvals)


def run_demo(outdir: str | Path, models_dir: str | None = None, quiet: bool = False) -> dict:
    outdir = Path(outdir).resolve()
    if outdir.exists() and (not outdir.is_dir() or any(outdir.iterdir())):
        raise CliError(f"{outdir} is not an empty folder", "give a new folder for the demo, e.g. /tmp/lighthouse-demo")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")  # before huggingface_hub is imported: the demo never downloads
    shutil.copytree(SAMPLE, outdir, dirs_exist_ok=True)
    layout.state_dir(outdir).mkdir(exist_ok=True)
    write_json_atomic(layout.state_file(outdir, "settings.json"), DEMO_SETTINGS)
    steps = []
    with _models(models_dir, quiet) as models_note:
        log.warning("DEMO: every checkpoint below is approved automatically. In a real production the agent shows "
                    "each phase to the user and runs `production.py approve` only after a yes.")
        for _ in range(MAX_STEPS):
            step = _step(outdir, quiet)
            steps.append(step)
            if step["action"] == "done":
                break
        else:
            raise CliError(f"the demo did not finish in {MAX_STEPS} steps", "run `production.py next` on "
                           f"{outdir} to see where it stands", ExitCode.FAILED)
    return {"command": "demo", "root": str(outdir), "models": models_note, "steps": steps,
            "files": _files(outdir), "message": _closing(outdir)}


@contextlib.contextmanager
def _models(models_dir: str | None, quiet: bool) -> Iterator[str]:
    from . import models

    if models_dir:
        models.use_models_dir(models_dir)
        yield f"models from {models_dir}"
        return
    from . import standins

    with tempfile.TemporaryDirectory(prefix="producer-standins-") as home:
        log.info("installing the stand-in models into %s (a few seconds)", home)
        with _progress_bars(enabled=not quiet):
            standins.install_standins(home)
        models.use_models_dir(home)
        yield "stand-ins (tiny random models) in a temporary cache, removed afterwards"


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


def _step(root: Path, quiet: bool) -> dict:
    from . import checkpoints, nextstep, status

    step = nextstep.next_step(status.snapshot(root))
    action = step["action"]
    if action == "approve":
        log.warning("DEMO: approving Phase %s (%s) automatically: %s", step["phase_number"], step["phase"],
                    ", ".join(step["files"]) or "-")
        checkpoints.approve(status.snapshot(root), step["phase"])
    elif action == "generate":
        for argv in ([step["batch_argv"]] if "batch_argv" in step else [j["argv"] for j in step["jobs"]]):
            _run_script(argv, quiet)
    elif action != "done":
        raise CliError(f"the demo stopped at Phase {step['phase_number']} ({step['phase']}): {step['message']}",
                       json.dumps(step.get("problems") or step.get("errors") or [])[:500], ExitCode.FAILED)
    return {"phase": step["phase"], "action": action, "jobs": [j["id"] for j in step.get("jobs", [])]}


def _run_script(argv: list[str], quiet: bool) -> dict:
    """Run a generation script's main() in this process (argv as `next` printed it) and read its JSON."""
    from .planner import script_module

    script = Path(argv[1]).name
    args = [a for a in argv[2:] if a != "--json"] + ["--json"] + (["--quiet"] if quiet else [])
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        code = script_module(script).main(args)
    lines = out.getvalue().strip().splitlines()
    result = json.loads(lines[-1]) if lines else {}
    if code != 0:
        failed = [j.get("error") for j in result.get("jobs", []) if j.get("status") == "error"] or [result.get("error")]
        raise CliError(f"the demo's {script} run failed (exit {code}): {'; '.join(map(str, failed))}",
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


def _closing(root: Path) -> str:
    return (f"Done: {layout.film_path(root)}. Look around with `production.py status {root}`. With real models on a "
            "GPU the commands are the same: install them (setup_diffusers.py --download), copy examples/lighthouse, "
            "and follow `production.py next` phase by phase, approving each checkpoint only after the user has seen it.")
