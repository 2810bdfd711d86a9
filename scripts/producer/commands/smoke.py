"""validate_diffusers.py --smoke: each script's real code path, end to end, on tiny stand-in models.

The stand-ins (producer.testing.standins) are the real diffusers/transformers classes with a few thousand
random parameters, installed under the real repo ids into a Hugging Face cache of their own, with
install records like a real download. Each script's `main(argv)` then runs in this process, offline,
at tiny sizes: a text-to-image keyframe, an edit of it, the character posed from keypoints (AnyPose),
a GGUF keyframe, clips from them (full weights; first-last-frame with GGUF experts), the clips joined
into a film. Nothing is downloaded; a GPU is used if there is one.
The outputs are noise, but every stage ran: loading, the memory plan, LoRAs, sampling, decoding,
writing PNG/MP4 with their recipes. A failing step reports the script's own error and fix.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

from producer.cli import setup_logging
from producer.errors import CliError, ExitCode
from producer.modelfiles import install, models
from producer.testing import standins

SIZE = "64x64"
FRAMES = "9"
FULL_STEPS = "2"  # the undistilled schedule with true CFG, cut short


@dataclass
class Step:
    name: str
    ok: bool
    seconds: float
    detail: str = ""
    fix: str = ""
    outputs: list[str] = field(default_factory=list)
    log: list[str] = field(default_factory=list)  # what the script wrote on stderr (warnings; the tail on failure)

    def to_dict(self) -> dict:
        return asdict(self)


def check_smoke_dir(folder: Path) -> None:
    """Stand-ins never go where real models are: not beside this tool's downloads (their install records), nor
    beside a snapshot another tool put in the hub cache (`hf download`, diffusers): installing a stand-in of
    that repo would point its refs/main at the stand-in, for every program that loads it from the cache."""
    fix = ("give --smoke-dir an empty folder (or one an earlier --smoke-dir made): stand-ins never go next to "
           "real models")
    records = Path(folder) / "ai-video-producer" / "installs"
    for path in records.glob("*.json") if records.is_dir() else ():
        with contextlib.suppress(OSError, ValueError):
            if json.loads(path.read_text()).get("source") != "standin":
                raise CliError(f"{folder} holds real downloaded models ({path.stem})", fix=fix)
    for snapshot in sorted(Path(folder).glob("hub/models--*/snapshots/*")):
        try:
            real = models.standin_facts(snapshot) is None
        except (OSError, ValueError):  # a marker that cannot be read proves nothing
            real = True
        if real:
            repo = snapshot.parent.parent.name.removeprefix("models--").replace("--", "/")
            raise CliError(f"{folder} holds models that are not stand-ins ({repo}, snapshot {snapshot.name})", fix=fix)
    outputs = Path(folder) / "smoke-outputs"  # the scripts refuse to replace them, and validate has no --overwrite
    if outputs.is_dir() and any(outputs.iterdir()):
        raise CliError(f"{outputs} holds the outputs of an earlier run",
                       f"remove them (rm -r {outputs}) and run again: the stand-in models beside them are reused; "
                       "or give --smoke-dir another folder")


@contextlib.contextmanager
def standin_cache(hf_home: Path):
    """HF_HOME = hf_home and offline mode for the duration; the previous cache and mode afterwards."""
    from huggingface_hub import constants

    saved_env = {k: os.environ.get(k) for k in ("HF_HOME", "HF_HUB_OFFLINE", "HF_HUB_CACHE")}
    saved = (constants.HF_HOME, constants.HF_HUB_CACHE, constants.HF_HUB_OFFLINE)
    models.use_models_dir(str(hf_home))
    os.environ["HF_HUB_OFFLINE"] = "1"
    constants.HF_HUB_OFFLINE = True
    try:
        yield
    finally:
        constants.HF_HOME, constants.HF_HUB_CACHE, constants.HF_HUB_OFFLINE = saved
        for key, value in saved_env.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def install_step(hf_home: Path) -> Step:
    start = time.perf_counter()
    stderr = io.StringIO()
    try:
        with contextlib.redirect_stderr(stderr):  # save_pretrained's progress bars
            manifest = standins.install_standins(hf_home)
            install.record_standins(manifest)
    except Exception as exc:  # building a stand-in exercises diffusers/transformers: anything can break
        return Step("install the stand-in models", False, _since(start), f"{type(exc).__name__}: {exc}",
                    "rerun with --debug; check `pip install -r requirements.txt`", log=_log_lines(stderr, True))
    return Step("install the stand-in models", True, _since(start), f"{len(manifest)} entries in {hf_home}")


def script_steps(hf_home: Path, out: Path, gpu: bool | None = None) -> list[tuple[str, str, list[str], list[Path]]]:
    """(step name, the script's module, argv, outputs it must leave). On a GPU the small cards' plans run
    too, weights streamed from host memory: a model placed in two memories fails only where there are two
    (the Qwen text encoder's embedding table, left in host memory, once failed every 10 GB card's job)."""
    if gpu is None:
        import torch

        gpu = torch.cuda.is_available()
    common = ["--models-dir", str(hf_home), "--seed", "1"]
    fox, edit, qgguf, posed = out / "fox.png", out / "fox-edit.png", out / "fox-gguf.png", out / "fox-posed.png"
    clip, cgguf, film = out / "clip.mp4", out / "clip-gguf.mp4", out / "film.mp4"
    image = ["--size", SIZE]  # the default schedule: the Lightning LoRA's 4 steps at cfg 1
    video = ["--size", SIZE, "--frames", FRAMES]  # the default: the distill LoRAs' 4 steps
    return [
        ("qwen_image.py text-to-image", "producer.makers.qwen_image",
         ["-p", "a red fox in a forest", "-o", str(fox), *image, *common], [fox]),
        ("qwen_image.py edit (one reference)", "producer.makers.qwen_image",
         ["-p", "the fox from image 1 in the snow", "-r", str(fox), "-o", str(edit), *image, *common], [edit]),
        ("qwen_image.py pose (keypoints JSON)", "producer.makers.qwen_image",
         ["-p", "the fox from image 1 standing like the figure", "-r", str(fox), "--pose", str(out / POSE_FILE),
          "-o", str(posed), *image, *common], [posed]),
        ("qwen_image.py GGUF weights, full schedule with true CFG", "producer.makers.qwen_image",
         ["-p", "a red fox", "-o", str(qgguf), "--weights", "gguf-q4", "--lightning", "off", "--steps", FULL_STEPS,
          *image, *common], [qgguf]),
        ("wan_video.py image-to-video", "producer.makers.wan_video",
         ["--start-frame", str(fox), "--prompt", "the fox runs", "-o", str(clip), *video, *common], [clip]),
        ("wan_video.py first-last-frame, GGUF experts", "producer.makers.wan_video",
         ["--start-frame", str(fox), "--end-frame", str(edit), "--prompt", "the fox turns", "-o", str(cgguf),
          "--weights", "gguf-q4", *video, *common], [cgguf]),
        ("assemble_video.py", "producer.makers.assemble_video",
         ["--clips", str(clip), str(cgguf), "-o", str(film)], [film]),
    ] + (_streamed_steps(out, fox, image, video, common) if gpu else [])


def _streamed_steps(out: Path, fox: Path, image: list[str], video: list[str], common: list[str]) -> list[tuple]:
    """The 10 GB card's plans: text encoders and denoisers streamed block by block (GGUF, as there), with the
    levers those plans get by default for one item (the host running ahead; the compiled dequantization comes only
    with long runs)."""
    edit, clip = out / "fox-edit-streamed.png", out / "clip-streamed.mp4"
    streamed = ["--offload", "group"]
    return [
        ("qwen_image.py edit, weights streamed (the 10 GB plan)", "producer.makers.qwen_image",
         ["-p", "the fox from image 1 at night", "-r", str(fox), "-o", str(edit), "--weights", "gguf-q8",
          *streamed, *image, *common], [edit]),
        ("wan_video.py image-to-video, experts streamed (the 10 GB plan)", "producer.makers.wan_video",
         ["--start-frame", str(fox), "--prompt", "the fox sleeps", "-o", str(clip), "--weights", "gguf-q4",
          *streamed, *video, *common], [clip]),
    ]


POSE_FILE = "pose.json"
# A standing figure, OpenPose COCO-18 order (nose, neck, shoulders, elbows, wrists, hips, knees, ankles,
# eyes, ears) on a 64x64 canvas: drawn into a skeleton by qwen_image.py without any weights.
POSE_POINTS = ((32, 10), (32, 18), (24, 18), (20, 28), (18, 38), (40, 18), (44, 28), (46, 38), (27, 38),
               (27, 48), (27, 60), (37, 38), (37, 48), (37, 60), (30, 8), (34, 8), (28, 9), (36, 9))


def write_inputs(out: Path) -> None:
    keypoints = [v for x, y in POSE_POINTS for v in (x, y, 1.0)]
    (out / POSE_FILE).write_text(json.dumps({"people": [{"pose_keypoints_2d": keypoints}], "canvas_width": 64,
                                             "canvas_height": 64}))


def run_script(name: str, module: str, argv: list[str], outputs: list[Path], quiet: bool, debug: bool) -> Step:
    import importlib

    start = time.perf_counter()
    stdout, stderr = io.StringIO(), io.StringIO()
    flags = ["--json", "--debug" if debug else "--quiet"]  # the scripts' own progress logs are noise here
    try:
        main = importlib.import_module(module).main
        # The script's warnings and the libraries' progress bars are kept with the step (shown as they come
        # with --debug); a failure shows their tail.
        with contextlib.redirect_stdout(stdout), (contextlib.nullcontext() if debug else
                                                  contextlib.redirect_stderr(stderr)):
            code = main([*argv, *flags])
    except Exception as exc:  # a script that raises past its own error handling is a failure to report
        code, stdout = int(ExitCode.FAILED), io.StringIO(json.dumps({"error": f"{type(exc).__name__}: {exc}"}))
    finally:
        setup_logging(quiet, debug)  # the script configured the shared logger for itself
    result = _last_json(stdout.getvalue())
    missing = [str(p) for p in outputs if not p.is_file()]
    ok = code == 0 and not missing
    detail = _summary(result) if ok else (result.get("error") or f"exit {code}, missing {', '.join(missing)}")
    return Step(name, ok, _since(start), detail, "" if ok else result.get("fix", "rerun with --debug"),
                [str(p) for p in outputs if p.is_file()], _log_lines(stderr, failed=not ok))


def _log_lines(stream: io.StringIO, failed: bool) -> list[str]:
    """Warnings (and, after a failure, the last lines) of a step's stderr, without progress bars."""
    lines = [line.strip() for line in stream.getvalue().replace("\r", "\n").splitlines()]
    lines = [line for line in lines if line and "it/s]" not in line and "s/it]" not in line]
    return lines[-8:] if failed else [line for line in lines if not line.startswith(("Loading", "Writing"))]


def _last_json(text: str) -> dict:
    for line in reversed(text.strip().splitlines()):
        with contextlib.suppress(ValueError):
            value = json.loads(line)
            if isinstance(value, dict):
                return value
    return {}


def _summary(result: dict) -> str:
    """What ran, from the script's own --json: mode, pose path, LoRAs, memory plan, speed levers, time."""
    settings = result.get("settings") or {}
    parts = [f"mode {result.get('mode') or settings.get('mode')}"] if result.get("mode") or settings.get("mode") else []
    if settings.get("pose_method"):
        parts.append(f"pose via {settings['pose_method']}")
    loras = sorted(set(_lora_names(result.get("loras"))))
    if loras:
        parts.append("LoRAs " + ", ".join(loras))
    plan = result.get("memory_plan") or {}
    if isinstance(plan, dict) and plan.get("name"):
        parts.append(f"plan {plan['name']} ({plan.get('weights')})")
    parts += [str(note) for note in result.get("speed") or []]  # e.g. what was compiled here, and in how long
    if result.get("seconds_total") is not None:
        parts.append(f"{result['seconds_total']:.1f} s in the script")
    return "; ".join(parts) or "ok"


def _lora_names(report) -> list[str]:
    """Names of the LoRA files in a script's report (per-file entries carry their key format)."""
    if isinstance(report, dict):
        own = [report["name"]] if "key_format" in report and report.get("name") else []
        return own + [n for value in report.values() for n in _lora_names(value)]
    if isinstance(report, list):
        return [n for value in report for n in _lora_names(value)]
    return []


def _since(start: float) -> float:
    return round(time.perf_counter() - start, 2)


def run_smoke(hf_home: Path, out: Path, quiet: bool, debug: bool) -> list[Step]:
    """Install the stand-ins into hf_home, then run every script step; later steps still run after a failure."""
    out.mkdir(parents=True, exist_ok=True)
    write_inputs(out)
    with standin_cache(hf_home):
        steps = [install_step(hf_home)]
        if not steps[0].ok:
            return steps
        for name, module, argv, outputs in script_steps(hf_home, out):
            steps.append(run_script(name, module, argv, outputs, quiet, debug))
    return steps
