"""One denoiser forward, profiled, in the forms the plans run: where a GGUF forward's time goes. Wan: one expert
at 480p; Qwen (`--family qwen`): the transformer in a 1-reference 1024x1024 edit.

The whole-clip runs put the GGUF Q4 experts at ~1.22x plain's denoising whatever the residency
(docs/performance.md), while the dequantization alone (bench/dequant.py) accounts for ~1 s of the ~3 s; Qwen's
GGUF Q8 transformer costs ~1.40x plain even with every block on the card. This times one forward of the
full-size model held on the card (nothing streamed) in each form, and from torch.profiler the GPU's busy time
(the sum of its kernels) against the wall time: a forward whose GPU is idle part of the time is bound by the
CPU launching kernels, one that is busy by the kernels themselves (the top kernels then say which). Forms:
bf16; the GGUF form of the family's 10 GB plan (Wan Q4_K_M, Qwen Q8_0; published type maps,
bench/fullsize.py); the same with the step-distill LoRA folded into the weights (the scripts) and as peft
adapters (before); and the folded form streamed as the 10 GB plans stream it (`@streamed`), and with each
block dequantized on arrival (`@arrival`), or with the host not waiting for the GPU at every block
(`@runahead`). With diffusers' per-block synchronisation (no `record_stream`,
offload.py says why) the host waits for every block, so the GPU's idle share there is what streaming costs
beyond the transfers. Host-to-device copies are counted apart (`copy_s`), since they overlap the kernels.

    python bench/forward_profile.py --out forward.json
    python bench/forward_profile.py --family qwen --out forward-qwen.json

The `--out` file is rewritten after every form (`"complete": false` until the last), so a run stopped by a
timeout keeps what it measured.

`--size tiny` runs the same code on the stand-in configs on the CPU (the test suite does).
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "scripts"))
sys.path.insert(0, str(Path(__file__).resolve().parent))

# The GGUF form each family's 10 GB plans choose (docs/memory-plan.md): Wan Q4_K_M, Qwen Q8_0.
GGUF_FORM = {"wan": "gguf-q4", "qwen": "gguf-q8"}
VARIANTS = ("bf16", "{q}", "{q}+lora", "{q}+lorapeft", "{q}+lora@streamed", "{q}+lora@arrival", "{q}+lora@runahead")


def forms(family: str) -> tuple[str, ...]:
    return tuple(v.format(q=GGUF_FORM[family]) for v in VARIANTS)


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--family", choices=tuple(GGUF_FORM), default="wan",
                   help="wan: one expert at 480p; qwen: the transformer, a 1-reference edit at 1024x1024")
    p.add_argument("--size", choices=("full", "tiny"), default="full")
    p.add_argument("--device", default=None, help="cuda (default when available) or cpu")
    p.add_argument("--forms", default=None, help=f"comma-separated, of {', '.join(VARIANTS)} with {{q}} the "
                                                 "family's GGUF form (gguf-q4 for Wan, gguf-q8 for Qwen); all by default")
    p.add_argument("--repeats", type=int, default=2, help="timed forwards after a warm-up one")
    p.add_argument("--out", type=Path, default=None)
    return p.parse_args(argv)


def _inputs(family: str, size: str, device: str, dtype: torch.dtype, text_dim: int) -> dict:
    return (_wan_inputs if family == "wan" else _qwen_inputs)(size, device, dtype, text_dim)


def _qwen_inputs(size: str, device: str, dtype: torch.dtype, text_dim: int) -> dict:
    """What QwenImageEditPlusPipeline hands its transformer for a 1024x1024 edit of one 1024x1024 reference: the
    packed latents of both (64 x 64 each, 64 channels), the prompt with the reference's vision tokens, or a small
    edit at tiny size."""
    import fullsize

    side = 64 if size == "full" else 4
    gen = torch.Generator(device="cpu").manual_seed(0)
    embeds, mask = fullsize.qwen_prompt_embeds(size, 1, device, dtype)
    return {"hidden_states": torch.randn(1, 2 * side * side, 64, generator=gen).to(device, dtype),
            "timestep": torch.tensor([0.75], device=device, dtype=dtype), "encoder_hidden_states": embeds,
            "encoder_hidden_states_mask": mask, "img_shapes": [[(1, side, side), (1, side, side)]],
            "return_dict": False}


def _wan_inputs(size: str, device: str, dtype: torch.dtype, text_dim: int) -> dict:
    """What the pipeline hands an expert at 832x480x81 (21 x 60 x 104 latents, 36 channels with the image
    condition; 512 text tokens), or a small clip at tiny size."""
    frames, height, width = (21, 60, 104) if size == "full" else (3, 8, 8)
    gen = torch.Generator(device="cpu").manual_seed(0)
    return {"hidden_states": torch.randn(1, 36, frames, height, width, generator=gen).to(device, dtype),
            "timestep": torch.tensor([750.0], device=device),
            "encoder_hidden_states": torch.randn(1, 512, text_dim, generator=gen).to(device, dtype),
            "return_dict": False}


def _expert(family: str, size: str, form: str, device: str, dtype: torch.dtype):
    """The expert (Wan) or transformer (Qwen) in `form`; `@streamed` / `@arrival`: then streamed block by block
    from page-locked host memory as the scripts' plans stream it (offload.place_module: pinned in place,
    diffusers' group offloading with streams, no resident block), `@arrival` with each block dequantized as it
    arrives (producer.sizing.arrival), `@runahead` with the host running ahead (producer.sizing.run_ahead)."""
    from producer.sizing import offload
    from producer.sizing.placement import Placement

    form, _, streamed = form.partition("@")
    model, config = _held_model(family, size, form, device, dtype)
    if streamed:
        model.to("cpu")
        offload.place_module(model, Placement.GROUP_OFFLOAD, torch.device(device),
                             dequantize_on_arrival=streamed == "arrival", run_ahead=streamed == "runahead")
    return model, config


def _held_model(family: str, size: str, form: str, device: str, dtype: torch.dtype):
    import fullsize
    from diffusers import QwenImageTransformer2DModel, WanTransformer3DModel

    weights, _, lora_form = form.partition("+")
    wide = weights != "bf16"
    config = fullsize.wan_expert_config(size, wide) if family == "wan" else fullsize.qwen_transformer_config(size, wide)
    torch.manual_seed(0)
    with fullsize._building(device, dtype):
        model = (WanTransformer3DModel if family == "wan" else QwenImageTransformer2DModel)(**config).eval()
    if weights != "bf16":
        fullsize.quantize_like_gguf(model, weights, dtype)
    if lora_form:
        _load_lora(family, size, model, fold=lora_form == "lora")
    return model, config


def _load_lora(family: str, size: str, model, fold: bool) -> None:
    """The step-distill LoRA's layout and rank (bench/loras.py), loaded by the scripts' loader: folded into the
    GGUF weights, or left as peft adapters (`fold=False`, as before folding)."""
    import loras
    from diffusers import QwenImageEditPlusPipeline
    from producer.engines.loras import lora
    from producer.engines.wan.experts import lora_view

    path = Path(tempfile.gettempdir()) / f"producer-profile-{family}-{size}-lora.safetensors"
    if not path.exists():
        loras.write_lora(family, size == "tiny", str(path), size)
    lora.FOLD_GGUF = fold
    if family == "wan":
        pipe, spec = lora_view("transformer", model), f"{path}:1.0:high"
    else:
        pipe = QwenImageEditPlusPipeline(scheduler=None, vae=None, text_encoder=None, tokenizer=None, processor=None,
                                         transformer=model)
        spec = f"{path}:1.0"
    lora.load_loras(pipe, [lora.parse_lora_spec(spec, family)], family, fuse=True)


def measure(model, inputs: dict, device: str, repeats: int) -> tuple[dict, torch.Tensor]:
    """Wall seconds of a forward (mean of `repeats` after a warm-up), then one profiled forward: the GPU's
    kernel time against its wall time, and the kernels that took most of it; and the warm-up's output (on the
    host), which a streamed form is checked against."""
    from dequant import sync
    from torch.profiler import ProfilerActivity, profile

    with torch.no_grad():
        output = model(**inputs)[0].float().cpu()
        sync(device)
        started = time.perf_counter()
        for _ in range(repeats):
            model(**inputs)
        sync(device)
        wall = (time.perf_counter() - started) / repeats
        activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device == "cuda" else [])
        with profile(activities=activities) as prof:
            started = time.perf_counter()
            model(**inputs)
            sync(device)
            profiled = time.perf_counter() - started
    events = [e for e in prof.key_averages() if e.device_type.name == ("CUDA" if device == "cuda" else "CPU")]
    busy = "self_device_time_total" if device == "cuda" else "self_cpu_time_total"
    copies = [e for e in events if "memcpy" in e.key.lower() and "htod" in e.key.lower()]
    events = [e for e in events if e not in copies]
    total = sum(getattr(e, busy) for e in events) / 1e6
    top = sorted(events, key=lambda e: getattr(e, busy), reverse=True)[:10]
    # kernel_s / profiled_forward_s: the share of the forward the GPU was busy (the profiler adds a little)
    return {"forward_s": round(wall, 4), "kernel_s": round(total, 4), "profiled_forward_s": round(profiled, 4),
            "busy": round(total / profiled, 3), "launches": sum(e.count for e in events),
            "copy_s": round(sum(getattr(e, busy) for e in copies) / 1e6, 4),
            "top": [{"name": e.key[:90], "ms": round(getattr(e, busy) / 1e3, 2), "calls": e.count} for e in top]}, \
        output


def main(argv=None) -> int:
    args = parse_args(argv)
    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    dtype = torch.bfloat16 if device == "cuda" else torch.float32
    import fullsize
    from dequant import save

    rows, held = {}, {}  # held: the output of each form on the card, which its streamed forms must reproduce
    result = {"device": torch.cuda.get_device_name() if device == "cuda" else "cpu", "torch": torch.__version__,
              "family": args.family, "size": args.size, "rows": rows}
    known = forms(args.family)
    for form in args.forms.split(",") if args.forms else known:
        if form not in known:
            print(f"unknown form {form!r} for {args.family}: use {', '.join(known)}", file=sys.stderr)
            return 2
        model, config = _expert(args.family, args.size, form, device, dtype)
        text_dim = config["text_dim"] if args.family == "wan" else config["joint_attention_dim"]
        rows[form], output = measure(model, _inputs(args.family, args.size, device, dtype, text_dim), device,
                                     args.repeats)
        base, streamed, _ = form.partition("@")
        if not streamed:
            held[form] = output
        elif base in held:  # same weights, same inputs: streaming (and its levers) must not change the result
            rows[form]["vs_held"] = fullsize.numerical_difference(output, held[base])
        print(form, json.dumps({k: v for k, v in rows[form].items() if k != "top"}), flush=True)
        save(args.out, result, complete=False)
        del model
        if device == "cuda":
            torch.cuda.empty_cache()
    save(args.out, result, complete=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
