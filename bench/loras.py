"""The step-distill LoRA in the benchmark's plan runs: `planVxR-lora` and `planVxR-lorapeft`.

The 4-step plans run with a step-distill LoRA (Wan: LightX2V's rank-64 distill LoRA on both experts; Qwen:
the rank-64 Lightning LoRA). On bf16 weights the scripts fuse it, which costs nothing per step; on GGUF
weights it cannot be fused: the scripts fold it into the weight each layer dequantizes
(producer.sizing.folded_lora; `-lora`), where before it stayed a peft adapter on the activations
(`-lorapeft`, the same run with folding turned off). Both load it through the scripts' own loader
(producer.engines.loras.lora) from a file of the real layout and rank (random values, scaled small so that
the random model stays finite), written once by its own process so that its making does not count in a
run's peak RAM. The plain runs have no LoRA: fused, it changes nothing in their time.
"""

from __future__ import annotations

import functools
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import torch
from benchmark import has_lever

SUFFIXES = {"-lora": True, "-lorapeft": False}  # config suffix -> the scripts fold it on GGUF weights
RANK = 64  # lightx2v/Wan2.2-Distill-Loras and lightx2v/Qwen-Image-Edit-2511-Lightning (model-files.md)
UP_SCALE = 1e-3  # a delta of ~1e-4 a weight, beside the random weights' ~1e-2


def folding(config: str) -> bool | None:
    """True / False: the run loads the LoRA folded / as adapters; None: no LoRA."""
    return next((fold for suffix, fold in SUFFIXES.items() if has_lever(config, suffix)), None)


def lora_file(args, family: str, device: str, wide: bool) -> Path:
    """The LoRA file of `family` at the run's size (written once, beside the GGUF files when there are some);
    `wide`: for the widened tiny stand-ins of the GGUF runs (fullsize._TINY_WIDE)."""
    folder = Path(args.from_disk) if args.from_disk else Path(tempfile.gettempdir()) / "producer-bench"
    path = folder / f"{family}-{args.size}{'-wide' if wide else ''}-lora-r{RANK}.safetensors"
    if not path.exists():
        cmd = [sys.executable, str(Path(__file__).with_name("benchmark.py")), "--write-lora", family,
               str(int(wide)), str(path), "--size", args.size, "--device", device]
        subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL)
    return path


def _state(family: str, wide: bool, size: str) -> dict:
    """The LoRA's tensors in the published layout, for the benchmark's model of `size` (on the current default
    device: under `torch.device("meta")` shapes only)."""
    import fullsize
    from producer.testing import standin_loras

    if family == "wan":
        from diffusers import WanTransformer3DModel

        with torch.device("meta"):  # shapes only
            model = WanTransformer3DModel(**fullsize.wan_expert_config(size, wide))
        return standin_loras.wan_lightx2v_lora(model, rank=RANK, alpha=None, head="diff", dtype=torch.bfloat16)
    from diffusers import QwenImageTransformer2DModel

    with torch.device("meta"):
        model = QwenImageTransformer2DModel(**fullsize.qwen_transformer_config(size, wide))
    return standin_loras.qwen_lightning_lora(model, rank=RANK, dtype=torch.bfloat16)


def write_lora(family: str, wide: bool, path: str, size: str) -> dict:
    """(its own process) The LoRA of `family` for the benchmark's model of `size`: the real file layout."""
    from producer.testing import standin_loras

    state = {k: v * UP_SCALE if "lora_up" in k or k.endswith((".diff", ".diff_b", ".diff_m")) else v
             for k, v in _state(family, wide, size).items()}
    partial = Path(f"{path}.partial")
    standin_loras.save_lora(state, partial)
    os.replace(partial, path)
    return {"path": str(path), "bytes": Path(path).stat().st_size}


@functools.lru_cache
def plan_params(family: str, config: str) -> int:
    """The factors a `-lora` / `-lorapeft` run's plan counts beside each GGUF denoiser: those of the full-size
    LoRA (the `planVxR` plans are of the full-size model), counted on the meta device; 0 without a LoRA."""
    if folding(config) is None:
        return 0
    from producer.modelfiles.lora_sizes import DOWN_SUFFIXES, UP_SUFFIXES

    with torch.device("meta"):
        state = _state(family, False, "full")
    return sum(v.numel() for k, v in state.items() if k.endswith(DOWN_SUFFIXES + UP_SUFFIXES))


def session_specs(args, family: str, config: str, device: str, wide: bool) -> list:
    """The LoRA specs of the run (none without `-lora` / `-lorapeft`), with the scripts' folding set for it."""
    fold = folding(config)
    if fold is None:
        return []
    from producer.engines.loras import lora

    lora.FOLD_GGUF = fold
    path = lora_file(args, family, device, wide)
    return [lora.parse_lora_spec(f"{path}:1.0:both" if family == "wan" else f"{path}:1.0", family)]


def reported(reports) -> dict:
    """What the run's LoRA load did, for its result: per expert, whether its LoRA was fused (bf16), folded (GGUF)
    or neither (left as peft adapters). `reports`: a Wan session's lora_reports or a Qwen session's lora_report."""
    if not reports:
        return {}
    entries = reports.to_dict()["loras"] if hasattr(reports, "to_dict") else [e for v in reports.values() for e in v]
    experts = [e for entry in entries for e in entry.get("experts", [])]
    return {"lora": {"rank": RANK, "fused": {e["component"]: e["fused"] for e in experts},
                     "folded": {e["component"]: e["folded"] for e in experts}}} if experts else {}
