"""Wan's VAE at 832x480x81, in the forms that might make it faster: where a clip's VAE seconds go.

A 480p Wan clip with every opt-in lever took 12.68-13.08 s on an H100/H200 (goal: 10 s), and about 1.2 s of
its denoise stage (encoding the image-to-video condition: the picture and 80 empty frames) and 2.1 s of its
decode are VAE work (docs/performance.md). This times the full-size AutoencoderKLWan (Wan 2.2 I2V A14B's
VAE: diffusers' default config, random weights, bf16 as the scripts load it) encoding that condition video
and decoding 21 latent frames, one form at a time:

- `bf16`: as the scripts run it (the same calls as WanImageToVideoPipeline: `vae.encode`, `vae.decode`);
- `channels-last`: the weights and the input in channels-last-3d memory format (cuDNN's preferred layout for
  bf16 3-D convolutions on recent GPUs);
- `compiled`: `torch.compile` of the encoder and the decoder (each called once per latent frame, with the
  causal cache); its first call's extra seconds are reported apart (`cold_extra_s`);
- `compiled+channels-last`: both;
- `tiled`: diffusers' tiling (what the plans switch on where the card's room asks for it), for its cost.

Each form reports the warm seconds (mean of `--repeats` after one untimed call), the first call's, peak
reserved VRAM, and its decoded video against `bf16`'s (`vs_bf16`: a form that only reorders memory or
compiles should match to bf16 rounding). A form that fails reports its error and the others still run.

    python bench/vae_speed.py --out vae.json

The `--out` file is rewritten after every form (`"complete": false` until the last), so a run stopped by a
timeout keeps what it measured.

`--size tiny` runs the same code on the stand-in VAE on the CPU (the test suite does).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "scripts"))
sys.path.insert(0, str(Path(__file__).resolve().parent))

FORMS = ("bf16", "channels-last", "compiled", "compiled+channels-last", "tiled")
# 832x480x81 (the scripts' 480p clip): latents 21 x 60 x 104 after the VAE's (4, 8, 8) strides
FULL = {"frames": 81, "height": 480, "width": 832}
TINY = {"frames": 9, "height": 32, "width": 32}


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--size", choices=("full", "tiny"), default="full")
    p.add_argument("--device", default=None, help="cuda (default when available) or cpu")
    p.add_argument("--forms", default=",".join(FORMS), help=f"comma-separated, of {', '.join(FORMS)}")
    p.add_argument("--repeats", type=int, default=2, help="timed calls after the first, untimed one")
    p.add_argument("--out", type=Path, default=None)
    return p.parse_args(argv)


def build_vae(size: str, device: str, dtype: torch.dtype, form: str):
    """The VAE in `form` (the same random weights for every form: seeded)."""
    import fullsize

    vae = fullsize.wan_vae(size, device, dtype)
    if "channels-last" in form:  # the 3-D convolutions' weights (the only 5-D tensors)
        for conv in (m for m in vae.modules() if isinstance(m, torch.nn.Conv3d)):
            conv.weight.data = conv.weight.data.contiguous(memory_format=torch.channels_last_3d)
    if "compiled" in form:
        vae.encoder.compile()
        vae.decoder.compile()
    if form == "tiled":
        vae.enable_tiling()
    return vae


def inputs(size: str, device: str, dtype: torch.dtype, z_dim: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The image-to-video condition video (one picture, then empty frames, as WanImageToVideoPipeline encodes
    it) and latents of the clip's shape to decode."""
    shape = FULL if size == "full" else TINY
    gen = torch.Generator(device="cpu").manual_seed(0)
    video = torch.zeros(1, 3, shape["frames"], shape["height"], shape["width"])
    video[:, :, 0] = torch.rand(1, 3, shape["height"], shape["width"], generator=gen) * 2 - 1
    latent_frames = (shape["frames"] - 1) // 4 + 1
    latents = torch.randn(1, z_dim, latent_frames, shape["height"] // 8, shape["width"] // 8, generator=gen)
    return video.to(device, dtype), latents.to(device, dtype)


def _channels_last(form: str, x: torch.Tensor) -> torch.Tensor:
    return x.contiguous(memory_format=torch.channels_last_3d) if "channels-last" in form else x


def measure(vae, form: str, video: torch.Tensor, latents: torch.Tensor, device: str, repeats: int):
    """Seconds of the first and of the later encodes and decodes, peak reserved VRAM; and the decoded video."""
    from dequant import sync

    video, latents = _channels_last(form, video), _channels_last(form, latents)
    row, decoded = {}, None
    with torch.no_grad():
        for name, call in (("encode", lambda: vae.encode(video).latent_dist.mode()),
                           ("decode", lambda: vae.decode(latents, return_dict=False)[0])):
            sync(device)
            started = time.perf_counter()
            out = call()
            sync(device)
            first = time.perf_counter() - started
            started = time.perf_counter()
            for _ in range(repeats):
                out = call()
            sync(device)
            warm = (time.perf_counter() - started) / max(repeats, 1)
            row[f"{name}_s"], row[f"{name}_first_s"] = round(warm, 4), round(first, 4)
            if name == "decode":
                decoded = out.float().cpu()
    row["cold_extra_s"] = round(row["encode_first_s"] + row["decode_first_s"] - row["encode_s"] - row["decode_s"], 3)
    if device == "cuda":
        row["peak_vram_gib"] = round(torch.cuda.max_memory_reserved() / 2**30, 2)
    return row, decoded


def run_form(form: str, size: str, device: str, dtype: torch.dtype, repeats: int):
    """One form's row and decoded video, or its error (a form that cannot run does not stop the others)."""
    if device == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
    try:
        vae = build_vae(size, device, dtype, form)
        video, latents = inputs(size, device, dtype, vae.config.z_dim)
        return measure(vae, form, video, latents, device, repeats)
    except Exception as exc:  # noqa: BLE001 - a benchmark row, not a crash: say what failed and go on
        return {"error": f"{type(exc).__name__}: {str(exc)[:300]}"}, None


def main(argv=None) -> int:
    args = parse_args(argv)
    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    dtype = torch.bfloat16 if device == "cuda" else torch.float32
    wanted = args.forms.split(",")
    unknown = [f for f in wanted if f not in FORMS]
    if unknown:
        print(f"unknown form(s) {', '.join(unknown)}: use {', '.join(FORMS)}", file=sys.stderr)
        return 2
    import fullsize
    from dequant import save

    rows, reference = {}, None
    result = {"device": torch.cuda.get_device_name() if device == "cuda" else "cpu", "torch": torch.__version__,
              "size": args.size, "shape": FULL if args.size == "full" else TINY, "rows": rows}
    for form in wanted:
        rows[form], decoded = run_form(form, args.size, device, dtype, args.repeats)
        if form == "bf16":
            reference = decoded
        elif decoded is not None and reference is not None:
            rows[form]["vs_bf16"] = fullsize.numerical_difference(decoded, reference)
        print(form, json.dumps(rows[form]), flush=True)
        save(args.out, result, complete=False)
    save(args.out, result, complete=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
