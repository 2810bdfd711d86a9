"""Speed levers for the denoisers, applied after LoRAs are fused and before the first step.

- compile: regional compilation of the repeated transformer blocks (`compile_repeated_blocks`):
  identical math, a one-off compile per process (cached on disk by PyTorch for later runs).
- attention: a diffusers attention backend by name (`set_attention_backend`), e.g. `_native_cudnn`.
- compiled GGUF dequantization: diffusers' dequantization of each GGUF weight fused into one kernel
  (`compiled_dequant`): the same numbers bit for bit, 5-10 s of compiling per process on an H100 (cached on
  disk); where the plan streams the blocks, with `--compile on` or with `auto` for long runs
  (COMPILE_DEQUANT_MIN_ITEMS says why).
- fp8 matmuls: torchao's float8 dynamic quantization (per-row scales) of the linear layers on GPUs with
  fp8 tensor cores (compute capability >= 8.9). It changes the numbers slightly, so it is opt-in;
  docs/performance.md gives its measured difference against bf16.

What is on by default is decided in `default_speed` from measurements (docs/performance.md): on an
H200, compiling the Wan experts cut a 4-step 832x480x81 clip from 16.42 s to 14.55 s but the first clip of
a process took 29.46 s (the compile), so compiling pays off from about 8 clips in one run; compiling Qwen
cut a 4-step 1024^2 edit from 1.81 s to 1.46 s for a one-off ~11 s, so from about 32 images. fp8 matmuls
with compiled blocks made the Wan clip 13.08 s, at a relative L2 difference of 4.5% on one forward
against bf16 (random weights): opt-in (`--fp8-matmul`).
"""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass

from producer.sizing.placement import Placement

log = logging.getLogger("producer")

COMPILE_CHOICES = ("auto", "on", "off")
# One-off compile cost / saving per item, measured on an H200: Wan 14.9 s / 1.87 s a clip (break-even near
# 8 clips), Qwen ~11 s / 0.35 s an image (near 32 images).
COMPILE_MIN_ITEMS = {"wan": 8, "qwen": 32}
# The GGUF dequantization compiled alone (compiled_dequant), where the plan streams the blocks. With the host running
# ahead (bench/results/2026-12-07-h200-night/cd.json, H200) the 10 GB Wan clip took 16.92 s against 17.54 s and the
# 24 GB Qwen edit 2.19 against 2.25 s; the 10 GB Qwen edit 2.28 against 2.42 s (H100, 2026-12-07-h100-evening).
# Compiling costs each process 10.0 s for Wan's Q4_K and Q6_K (2026-12-06-h100-night) and 4.8-6.6 s for Q8_0,
# so it pays from ~17 clips and ~28-40 edits (the 24 GB Qwen row, a quarter of its blocks streamed, from ~100).
# Before the host ran ahead (2026-12-06-h100-night) it made those rows no faster or slower, so measure again
# before lowering these. The 10 GB Qwen edit measured again on an H100 (2026-12-07-h100-late/qc.json, 3 repeats):
# 2.37 s against 2.42, a smaller saving (0.05 s) that would put the break-even near 100 edits; at 40 the compile
# then costs ~3 s once, so the threshold stays until more runs settle it.
COMPILE_DEQUANT_MIN_ITEMS = {"wan": 20, "qwen": 40}
FP8_CAPABILITY = (8, 9)  # Ada and Hopper and newer have fp8 tensor cores


@dataclass(frozen=True)
class Speed:
    compile: bool = False
    compile_dequantize: bool = False
    attention: str | None = None
    fp8_matmul: bool = False

    def to_dict(self) -> dict:
        return asdict(self)


def default_speed(device_type: str, placement: Placement, compile_choice: str = "auto", fp8_matmul: bool = False,
                  attention: str | None = None, items: int = 1, family: str = "wan") -> Speed:
    """The levers for a denoiser on this device and placement, for a run of `items` clips or images.

    `auto` compiles the blocks only where it was measured to pay: the whole denoiser on a CUDA GPU while it runs
    and a run long enough to earn back the compile (COMPILE_MIN_ITEMS). Blocks are never compiled where offload
    hooks stream the weights block by block (dynamo cannot trace the hooks' transfers, even with `on`); there
    the GGUF weights' dequantization is compiled instead (compiled_dequant): with `on`, and with `auto` on a CUDA
    GPU for a run long enough to earn back its compile (COMPILE_DEQUANT_MIN_ITEMS).
    """
    hooks = Placement(placement).streams
    worth_it = device_type == "cuda" and Placement(placement).runs_whole_on_gpu and items >= COMPILE_MIN_ITEMS[family]
    compile_on = {"on": not hooks, "off": False}.get(compile_choice, worth_it)
    long_run = device_type == "cuda" and items >= COMPILE_DEQUANT_MIN_ITEMS[family]
    dequantize = hooks and {"on": True, "off": False}.get(compile_choice, long_run)  # where blocks cannot compile
    return Speed(compile=compile_on, compile_dequantize=dequantize, attention=attention,
                 fp8_matmul=fp8_matmul and device_type == "cuda")


def choose(args, plan, items: int, family: str) -> Speed:
    """The levers for a script's run: its flags checked against this machine and plan, then the defaults."""
    placement = plan.components["transformer"].placement
    check_attention_backend(args.attention)
    check_fp8_matmul(args.fp8_matmul, plan.device, placement)
    return default_speed(plan.device, placement, args.compile, fp8_matmul=args.fp8_matmul,
                         attention=args.attention, items=items, family=family)


def check_fp8_matmul(requested: bool, device: str, placement: Placement, capability: tuple[int, int] | None = None) -> None:
    """--fp8-matmul only where it was measured and can run: fp8 tensor cores, weights resident, torchao."""
    if not requested:
        return
    from producer.errors import CliError

    if not str(device).startswith("cuda"):
        raise CliError("--fp8-matmul needs an NVIDIA GPU with fp8 tensor cores (RTX 40xx, L4/L40, H100 or newer)",
                       fix="drop --fp8-matmul on this machine")
    if capability is None:
        import torch

        capability = torch.cuda.get_device_capability(torch.device(device))
    if tuple(capability) < FP8_CAPABILITY:
        raise CliError(f"--fp8-matmul: this GPU (compute capability {capability[0]}.{capability[1]}) has no fp8 "
                       "tensor cores", fix="drop --fp8-matmul; --compile on is the lever that keeps the numbers")
    if not Placement(placement).resident:
        raise CliError(f"--fp8-matmul needs the weights resident on the GPU, and this machine's plan streams them "
                       f"({placement})", fix="drop --fp8-matmul, or add --offload none on a card that holds them")
    try:
        import torchao  # noqa: F401
    except ImportError:
        raise CliError("--fp8-matmul needs torchao", fix="pip install torchao (a build that matches your torch)")


def check_attention_backend(name: str | None) -> None:
    """A clean error for an attention backend diffusers does not know (the choice is diffusers')."""
    if not name:
        return
    from diffusers.models.attention_dispatch import AttentionBackendName

    from producer.errors import CliError

    valid = [b.value for b in AttentionBackendName]
    if name not in valid:
        raise CliError(f"--attention {name}: not a diffusers attention backend",
                       fix=f"choose one of: {', '.join(valid)} (some need an extra package, e.g. flash-attn)")
    from diffusers.models.attention_dispatch import _check_attention_backend_requirements

    try:  # the check set_attention_backend makes, made here before a model loads (diffusers' own rule)
        _check_attention_backend_requirements(AttentionBackendName(name))
    except RuntimeError as exc:
        raise CliError(f"--attention {name}: {exc}",
                       fix="install what it names, or leave --attention out (PyTorch's own attention)") from None


def apply_speed(module, speed: Speed, device) -> list[str]:
    """Apply the levers to one denoiser computing on `device`; returns what was applied, for the report."""
    applied = []
    if speed.attention:
        module.set_attention_backend(speed.attention)
        applied.append(f"attention {speed.attention}")
    if speed.fp8_matmul:
        applied.append(_fp8_matmuls(module))
    if speed.compile:
        module.compile_repeated_blocks(fullgraph=True)
        applied.append("compiled blocks")
    if speed.compile_dequantize:
        from producer.sizing import compiled_dequant

        note = compiled_dequant.install(module, device)
        applied += [note] if note else []
    return applied


def _fp8_matmuls(module) -> str:
    try:
        from torchao.quantization import Float8DynamicActivationFloat8WeightConfig, PerRow, quantize_
    except ImportError:
        from producer.errors import CliError

        raise CliError("fp8 matmuls need torchao", fix="pip install torchao (a build that matches your torch)")
    quantize_(module, Float8DynamicActivationFloat8WeightConfig(granularity=PerRow()))
    return "fp8 matmuls (torchao, per-row scales)"
