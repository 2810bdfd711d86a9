"""The software side of a machine: Python, torch and its GPU build, the packages requirements.txt asks for.

Used by `setup_diffusers.py --check` and `validate_diffusers.py`. Every function returns plain dicts
(for --json) and never raises for a broken install: a missing or broken package is a finding.
"""

from __future__ import annotations

import importlib
import math
import platform
import sys
import warnings
from importlib import metadata
from pathlib import Path

from producer import MIN_PYTHON

REQUIREMENTS = Path(__file__).resolve().parents[3] / "requirements.txt"
PIP_FIX = f"pip install -r {REQUIREMENTS}" if REQUIREMENTS.is_file() else "pip install -r requirements.txt"
TORCH_FIX = ("install a torch build for your GPU first (https://pytorch.org/get-started/locally/, e.g. "
             "pip install torch torchvision --index-url https://download.pytorch.org/whl/cu128), then " + PIP_FIX)

# Modules the scripts import, with the distribution that provides each (for versions and messages).
IMPORTS = (
    ("torch", "torch"), ("torchvision", "torchvision"), ("diffusers", "diffusers"),
    ("transformers", "transformers"), ("accelerate", "accelerate"), ("huggingface_hub", "huggingface_hub"),
    ("peft", "peft"), ("safetensors", "safetensors"), ("gguf", "gguf"), ("PIL", "pillow"),
    ("imageio", "imageio"), ("imageio_ffmpeg", "imageio-ffmpeg"), ("ftfy", "ftfy"),
    ("controlnet_aux", "controlnet_aux"), ("psutil", "psutil"), ("numpy", "numpy"), ("filelock", "filelock"),
)


def python_info() -> dict:
    ok = sys.version_info[:2] >= MIN_PYTHON
    return {"version": platform.python_version(), "executable": sys.executable, "ok": ok,
            "problem": None if ok else f"Python {'.'.join(map(str, MIN_PYTHON))}+ is needed"}


def read_requirements(path: Path = REQUIREMENTS) -> list:
    """requirements.txt as packaging Requirements (comments, blank lines and pip options skipped)."""
    from packaging.requirements import InvalidRequirement, Requirement

    reqs = []
    for line in path.read_text(encoding="utf-8").splitlines():
        text = line.split("#", 1)[0].strip()
        if not text or text.startswith("-"):
            continue
        try:
            reqs.append(Requirement(text))
        except InvalidRequirement:
            continue
    return reqs


def package_report(path: Path = REQUIREMENTS) -> list[dict]:
    """Each requirement: the version installed and whether it satisfies the range. Empty without the file."""
    if not path.is_file():
        return []
    report = []
    for req in read_requirements(path):
        if req.marker is not None and not req.marker.evaluate():
            continue
        try:
            installed = metadata.version(req.name)
        except metadata.PackageNotFoundError:
            installed = None
        ok = installed is not None and req.specifier.contains(installed, prereleases=True)
        problem = None if ok else ("not installed" if installed is None else f"{installed} is outside {req.specifier}")
        report.append({"name": req.name, "wanted": str(req.specifier) or "any", "installed": installed, "ok": ok,
                       "problem": problem})
    return report


def import_report() -> list[dict]:
    """Import every module the scripts use; a module that fails to import is reported with its error."""
    report = []
    for module, dist in IMPORTS:
        try:
            with warnings.catch_warnings():  # libraries' deprecation chatter on import is not a finding
                warnings.simplefilter("ignore")
                importlib.import_module(module)
            error = None
        except Exception as exc:  # an import can fail with anything (missing DLLs, ABI errors)
            error = f"{type(exc).__name__}: {str(exc).strip().splitlines()[0] if str(exc).strip() else ''}"
        try:
            version = metadata.version(dist)
        except metadata.PackageNotFoundError:
            version = None
        report.append({"module": module, "distribution": dist, "version": version, "ok": error is None,
                       "error": error})
    return report


def ffmpeg_info() -> dict:
    try:
        import imageio_ffmpeg

        exe = imageio_ffmpeg.get_ffmpeg_exe()
        return {"ok": True, "path": exe, "version": imageio_ffmpeg.get_ffmpeg_version()}
    except Exception as exc:  # RuntimeError when the bundled binary is missing, ImportError without the package
        return {"ok": False, "error": f"{type(exc).__name__}: {exc}", "fix": "pip install imageio-ffmpeg"}


def torch_info() -> dict:
    """torch's version, what it was built for (CUDA / ROCm / CPU) and what it can reach now."""
    try:
        import torch
    except Exception as exc:
        return {"ok": False, "error": f"{type(exc).__name__}: {exc}", "fix": TORCH_FIX}
    info = {"ok": True, "version": torch.__version__, "cuda_build": torch.version.cuda,
            "hip_build": getattr(torch.version, "hip", None), "cuda_available": torch.cuda.is_available(),
            "mps_available": bool(getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()),
            "devices": []}
    build = ("CUDA " + info["cuda_build"]) if info["cuda_build"] else ("ROCm " + info["hip_build"]) \
        if info["hip_build"] else "CPU-only"
    info["build"] = build
    if info["cuda_available"]:
        for index in range(torch.cuda.device_count()):
            props = torch.cuda.get_device_properties(index)
            info["devices"].append({"index": index, "name": props.name, "total_gib": round(props.total_memory / 2**30, 1),
                                    "capability": f"{props.major}.{props.minor}"})
    return info


def torch_problem(info: dict) -> str | None:
    """Why this torch cannot use the machine's GPU, if it cannot (e.g. a CPU-only wheel on an NVIDIA box)."""
    if not info.get("ok"):
        return "torch does not import"
    if info["cuda_available"] or info["mps_available"]:
        return None
    if not info["cuda_build"] and not info["hip_build"] and _nvidia_driver_present():
        return "torch is a CPU-only build, but this machine has an NVIDIA driver"
    return None


def _nvidia_driver_present() -> bool:
    return Path("/proc/driver/nvidia/version").exists()


def device_smoke(device: str) -> dict:
    """Run a small bf16 matmul on `device`: proves the kernels for this GPU are in the torch build."""
    try:
        import torch

        dtype = torch.bfloat16 if device != "cpu" else torch.float32
        a = torch.randn(256, 256, device=device, dtype=dtype)
        value = float((a @ a).float().abs().mean().cpu())
        return {"ok": math.isfinite(value), "device": device, "dtype": str(dtype).removeprefix("torch.")}
    except Exception as exc:  # no kernel image for this GPU, driver too old, ...
        return {"ok": False, "device": device, "error": f"{type(exc).__name__}: {str(exc).splitlines()[0]}",
                "fix": TORCH_FIX}
