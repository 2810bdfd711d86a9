"""Speed levers for the denoisers, applied after LoRAs are fused and before the first step.

- compile: regional compilation of the repeated transformer blocks (`compile_repeated_blocks`):
  identical math, a one-off compile per process (cached on disk by PyTorch for later runs).
- attention: a diffusers attention backend by name (`set_attention_backend`), e.g. `_native_cudnn`.
- fp8 matmuls: torchao's float8 dynamic quantization (per-row scales) of the linear layers on GPUs with
  fp8 tensor cores (compute capability >= 8.9). It changes the numbers slightly, so it is opt-in;
  docs/performance.md gives its measured difference against bf16.

What is on by default is decided in `default_speed` from measurements (docs/performance.md): on an
H200, compiling the Wan experts cut a 4-step 832x480x81 clip from 16.42 s to 14.55 s but the first clip of
a process took 29.46 s (the compile), so compiling pays off from about 8 clips in one run.
"""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass

log = logging.getLogger("producer")

COMPILE_CHOICES = ("auto", "on", "off")
# One-off compile cost / saving per clip, measured for Wan (14.9 s / 1.87 s): break-even near 8 clips.
COMPILE_MIN_ITEMS = 8


@dataclass(frozen=True)
class Speed:
    compile: bool = False
    attention: str | None = None
    fp8_matmul: bool = False

    def to_dict(self) -> dict:
        return asdict(self)


def default_speed(device_type: str, placement: str, compile_choice: str = "auto", fp8_matmul: bool = False,
                  attention: str | None = None, items: int = 1, family: str = "wan") -> Speed:
    """The levers for a denoiser on this device and placement, for a run of `items` clips or images.

    `auto` compiles only where it was measured to pay: Wan, weights resident on a CUDA GPU (offload hooks
    move weights between calls, which compiled blocks would re-check every step), and a run long enough
    to earn back the compile. Qwen's compile gain is not measured yet, so `auto` leaves it off there.
    """
    resident = placement in ("gpu", "model_offload")
    worth_it = device_type == "cuda" and resident and family == "wan" and items >= COMPILE_MIN_ITEMS
    compile_on = {"on": True, "off": False}.get(compile_choice, worth_it)
    return Speed(compile=compile_on, attention=attention, fp8_matmul=fp8_matmul and device_type == "cuda")


def check_attention_backend(name: str | None) -> None:
    """A clean error for an attention backend diffusers does not know (the choice is diffusers')."""
    if not name:
        return
    from diffusers.models.attention_dispatch import AttentionBackendName

    valid = [b.value for b in AttentionBackendName]
    if name not in valid:
        from .cli import CliError

        raise CliError(f"--attention {name}: not a diffusers attention backend",
                       fix=f"choose one of: {', '.join(valid)} (some need an extra package, e.g. flash-attn)")


def apply_speed(module, speed: Speed) -> list[str]:
    """Apply the levers to one denoiser; returns what was applied, for the report."""
    applied = []
    if speed.attention:
        module.set_attention_backend(speed.attention)
        applied.append(f"attention {speed.attention}")
    if speed.fp8_matmul:
        applied.append(_fp8_matmuls(module))
    if speed.compile:
        module.compile_repeated_blocks(fullgraph=True)
        applied.append("compiled blocks")
    return applied


def _fp8_matmuls(module) -> str:
    try:
        from torchao.quantization import Float8DynamicActivationFloat8WeightConfig, PerRow, quantize_
    except ImportError:
        from .cli import CliError

        raise CliError("fp8 matmuls need torchao", fix="pip install torchao (a build that matches your torch)")
    quantize_(module, Float8DynamicActivationFloat8WeightConfig(granularity=PerRow()))
    return "fp8 matmuls (torchao, per-row scales)"
