"""Speed levers for the denoisers, applied after LoRAs are fused and before the first step.

- compile: regional compilation of the repeated transformer blocks (`compile_repeated_blocks`):
  identical math, a one-off compile per process (cached on disk by PyTorch for later runs).
- attention: a diffusers attention backend by name (`set_attention_backend`), e.g. `_native_cudnn`.
- fp8 matmuls: torchao's float8 dynamic quantization (per-row scales) of the linear layers on GPUs with
  fp8 tensor cores (compute capability >= 8.9). It changes the numbers slightly, so it is opt-in;
  docs/performance.md gives its measured difference against bf16.

What is on by default is decided in `default_speed` from measurements (docs/performance.md).
"""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass

log = logging.getLogger("producer")

COMPILE_CHOICES = ("auto", "on", "off")


@dataclass(frozen=True)
class Speed:
    compile: bool = False
    attention: str | None = None
    fp8_matmul: bool = False

    def to_dict(self) -> dict:
        return asdict(self)


def default_speed(device_type: str, placement: str, compile_choice: str = "auto", fp8_matmul: bool = False,
                  attention: str | None = None) -> Speed:
    """The levers for a denoiser on this device and placement.

    Compiling pays off only where the weights stay on the GPU (offload hooks move weights between calls,
    which the compiled blocks would re-check every step) and only on CUDA.
    """
    resident = placement in ("gpu", "model_offload")
    compile_on = {"on": True, "off": False}.get(compile_choice, device_type == "cuda" and resident)
    return Speed(compile=compile_on, attention=attention, fp8_matmul=fp8_matmul and device_type == "cuda")


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

        raise CliError("--fp8-matmul needs torchao", fix="pip install torchao (a build that matches your torch)")
    quantize_(module, Float8DynamicActivationFloat8WeightConfig(granularity=PerRow()))
    return "fp8 matmuls (torchao, per-row scales)"
