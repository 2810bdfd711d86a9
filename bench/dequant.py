"""GGUF dequantization alone, at the real layer shapes: diffusers' eager ops against the compiled forms
(producer/sizing/compiled_dequant.py), each weight's bytes the same; with the bf16 matmul the layer then does
for scale. Why the compiled dequantization did not pay in the whole runs (docs/performance.md).

The whole layer is timed too, three ways: diffusers' (`eager_linear_ms`: dequantize, then the matmul), with the
compiled dequantization (`compiled_linear_ms`: what `--compile on` runs), and compiled as one graph with
inductor's max-autotune (`fused_linear_ms`), which may pick a Triton matmul that dequantizes each tile as it
loads it (prologue fusion), so the bf16 weight is never written. For Q8_0 also `split_linear_ms`: the bytes
split once into int8 values and fp16 scales, which leaves the matmul a plain broadcast multiply to take in. Against `matmul_ms` (bf16 weights held) this
says what a fused GGUF linear would save; `fused_vs_eager` is its output against diffusers' layer (relative L2:
a different matmul kernel sums in another order, so bf16 rounding differs).

    python bench/dequant.py --out dequant.json

The `--out` file is rewritten after every layer shape (`"complete": false` until the last), so a run stopped by a
timeout keeps what it measured.

`--size tiny` runs the same code on small shapes on the CPU (the test suite does), so it cannot rot.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "scripts"))

# (GGML type, rows = out features, cols = in features, tokens of the matmul): Qwen's block linears (Q8_0,
# 3072 wide, 12288 in the MLP, 8704 tokens for a 1-reference edit) and Wan's (Q4_K / Q6_K, 5120 wide, 13824
# in the MLP, 32760 tokens at 480p).
SHAPES = [("Q8_0", 3072, 3072, 8704), ("Q8_0", 12288, 3072, 8704), ("Q8_0", 3072, 12288, 8704),
          ("Q4_K", 5120, 5120, 32760), ("Q4_K", 13824, 5120, 32760), ("Q6_K", 5120, 13824, 32760)]
TINY = [("Q8_0", 64, 96, 8), ("Q4_K", 32, 256, 8), ("Q6_K", 16, 512, 8)]


def sync(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def save(path: Path | None, result: dict, complete: bool) -> None:
    """`result` as measured so far, written after every row (here and in forward_profile.py, vae_speed.py): a run
    stopped by `timeout` keeps every row it finished. Written whole to a temp file beside `path` and renamed over
    it (producer.files.outputs), so a run killed mid-write leaves the previous rows, never a torn file;
    `complete` says whether the run went to its end."""
    from producer.files.outputs import write_json_atomic

    if path is not None:
        write_json_atomic(path, {**result, "complete": complete})


def timed(device: str, repeats: int, fn, *args) -> float:
    fn(*args)
    sync(device)
    start = time.perf_counter()
    for _ in range(repeats):
        fn(*args)
    sync(device)
    return (time.perf_counter() - start) / repeats * 1000


def weight_linear(x: torch.Tensor, weight) -> torch.Tensor:
    return torch.nn.functional.linear(x, eager(weight))


def compiled_linear(x: torch.Tensor, raw: torch.Tensor, quant_type) -> torch.Tensor:
    from producer.sizing import compiled_dequant

    return torch.nn.functional.linear(x, compiled_dequant.dequantize(raw, quant_type, x.dtype))


def eager(weight) -> torch.Tensor:
    from diffusers.quantizers.gguf import utils as gguf_utils

    return gguf_utils.dequantize_gguf_tensor(weight).to(torch.bfloat16)


def linear(x: torch.Tensor, raw: torch.Tensor, quant_type, shape) -> torch.Tensor:
    """A GGUF linear layer's forward as one function of its raw bytes (what `fused` compiles whole)."""
    from producer.sizing.compiled_dequant import _dequantize

    return torch.nn.functional.linear(x, _dequantize(raw, quant_type, x.dtype).reshape(shape))


def split_q8_0(raw: torch.Tensor, shape) -> tuple[torch.Tensor, torch.Tensor]:
    """A Q8_0 weight's bytes split once into its int8 values (out, in) and fp16 scales (out, in / 32): the same
    8.5 bits a weight, laid out so that dequantizing is one broadcast multiply a matmul can take into its loads."""
    blocks = raw.view(torch.uint8).reshape(-1, 34)
    scales = blocks[:, :2].contiguous().view(torch.float16).reshape(shape[0], -1)
    return blocks[:, 2:].contiguous().view(torch.int8).reshape(shape), scales


def split_linear(x: torch.Tensor, values: torch.Tensor, scales: torch.Tensor) -> torch.Tensor:
    """The Q8_0 linear on the split form, computing what diffusers' `dequantize_blocks_Q8_0` does (the fp16
    scale cast to the compute dtype, times the int8 value)."""
    out, into = values.shape
    weight = scales.to(x.dtype)[..., None] * values.view(out, -1, 32)
    return torch.nn.functional.linear(x, weight.reshape(out, into))


def time_compiled(row: dict, name: str, device: str, repeats: int, want: torch.Tensor, fn, *args) -> None:
    """`{name}_first_call_s` (compiling), `{name}_linear_ms` and `{name}_vs_eager` (relative L2 to `want`)."""
    started = time.perf_counter()
    got = fn(*args)
    sync(device)
    row[f"{name}_first_call_s"] = round(time.perf_counter() - started, 2)
    row[f"{name}_linear_ms"] = timed(device, repeats, fn, *args)
    row[f"{name}_vs_eager"] = float(f"{relative_l2(got, want):.3g}")


def relative_l2(got: torch.Tensor, want: torch.Tensor) -> float:
    got, want = got.double(), want.double()
    return float((got - want).norm() / want.norm().clamp_min(1e-30))


def measure(name: str, out_f: int, in_f: int, tokens: int, device: str, repeats: int, generator, forms) -> dict:
    """One layer shape: the dequantization alone, then the whole linear each way (`forms`: the compiled
    `linear` and `split_linear`)."""
    import gguf
    from diffusers.quantizers.gguf import utils as gguf_utils
    from fullsize import random_gguf_weight
    from producer.sizing import compiled_dequant

    qtype = gguf.GGMLQuantizationType[name]
    weight = random_gguf_weight(out_f, in_f, qtype, device, generator)
    raw = weight.as_tensor()
    x = torch.randn(tokens, in_f, device=device, dtype=torch.bfloat16)
    dense = gguf_utils.dequantize_gguf_tensor(weight).to(torch.bfloat16)
    started = time.perf_counter()
    compiled = compiled_dequant.dequantize(raw, qtype, torch.bfloat16)
    sync(device)
    first = time.perf_counter() - started
    row = {
        "type": name, "shape": [out_f, in_f], "tokens": tokens,
        "same_bits": bool(torch.equal(compiled.view(torch.int16), dense.view(torch.int16))),
        "eager_ms": timed(device, repeats, eager, weight),
        "compiled_ms": timed(device, repeats, compiled_dequant.dequantize, raw, qtype, torch.bfloat16),
        "compiled_first_call_s": round(first, 2),
        "matmul_ms": timed(device, repeats, torch.nn.functional.linear, x, dense),
        "bytes_read_written_mb": round((raw.numel() + dense.numel() * 2) / 1e6, 1),
        "eager_linear_ms": timed(device, repeats, weight_linear, x, weight),
        "compiled_linear_ms": timed(device, repeats, compiled_linear, x, raw, qtype),
    }
    want = torch.nn.functional.linear(x, dense)
    fused, split = forms
    time_compiled(row, "fused", device, repeats, want, fused, x, raw.view(torch.uint8).reshape(-1), qtype, dense.shape)
    if name == "Q8_0":
        time_compiled(row, "split", device, repeats, want, split, x, *split_q8_0(raw, dense.shape))
    return {k: round(v, 3) if isinstance(v, float) and not k.endswith("_vs_eager") else v for k, v in row.items()}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--out", type=Path)
    parser.add_argument("--size", choices=("full", "tiny"), default="full")
    parser.add_argument("--types", default="Q8_0,Q4_K,Q6_K", help="comma-separated GGML types to time")
    args = parser.parse_args(argv)
    device = "cuda" if args.size == "full" else "cpu"
    generator = torch.Generator(device).manual_seed(0)
    # max-autotune on the GPU (Triton matmul templates, which can take the dequantization in); inductor's default
    # on the CPU, where the tests run this at tiny size.
    mode = "max-autotune-no-cudagraphs" if device == "cuda" else None
    forms = torch.compile(linear, mode=mode), torch.compile(split_linear, mode=mode)
    types = set(args.types.split(","))
    rows = []
    result = {"device": torch.cuda.get_device_name() if device == "cuda" else "cpu", "torch": torch.__version__,
              "rows": rows}
    for name, out_f, in_f, tokens in SHAPES if args.size == "full" else TINY:
        if name in types:
            rows.append(measure(name, out_f, in_f, tokens, device, args.repeats, generator, forms))
            print(json.dumps(rows[-1]), flush=True)
            save(args.out, result, complete=False)
    save(args.out, result, complete=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
