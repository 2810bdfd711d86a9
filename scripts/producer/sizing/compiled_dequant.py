"""Compiled GGUF dequantization: diffusers' own dequantization of each GGUF linear weight, fused by torch.compile.

diffusers' GGUF linear layers (without its optional CUDA kernels, which come from the Hugging Face Hub) turn
the whole quantized weight back into the compute dtype at every call, through a chain of torch ops: a
Q4_K weight takes about ten kernels, each reading and writing the full weight. Measured on an H100
(docs/performance.md): the GGUF Q8_0 Qwen transformer costs 1.40x bf16 even with every block on the card, and
at Wan's block shapes the Q4_K dequantization alone was 0.27 s of a 1.27 s forward.

Here a diffusers hook on each GGUF linear layer runs the very same functions (diffusers'
`dequantize_functions`, then the layer's compute dtype) through torch.compile, which fuses them into one
kernel that reads the quantized bytes once and writes the weight once; the matmul stays `F.linear`, as in
diffusers' layer. Inductor is asked to round at every cast the eager ops make (`emulate_precision_casts`), so
the weights are the same bit for bit (tests/test_compiled_dequant.py compares every GGML type the published
files use). One compile per GGML type and compute dtype (dynamic shapes) when the denoiser is prepared,
reported with its seconds; PyTorch caches the compiled code on disk (its inductor cache, under the system's
temporary folder unless TORCHINDUCTOR_CACHE_DIR says otherwise), so a later process mostly skips it.

The hook is a plain fallback wherever it does not apply: a weight that is not quantized (F16/F32 tensors, or
one already dequantized on arrival, see `arrival`), and layers that diffusers runs through its CUDA kernels.
"""

from __future__ import annotations

import functools
import logging
import time

import torch
from diffusers.hooks import HookRegistry, ModelHook
from diffusers.quantizers.gguf import utils as gguf_utils

log = logging.getLogger("producer")

HOOK = "producer_compiled_dequantize"
# Seconds each (GGML type, compute dtype) took to compile in this process: compiled once, reported each time.
_COMPILED: dict[tuple, float] = {}


def _dequantize(raw: torch.Tensor, quant_type, dtype: torch.dtype) -> torch.Tensor:
    """`dequantize_gguf_tensor` of diffusers on the raw bytes of a weight, then the layer's compute dtype."""
    block_size, type_size = gguf_utils.GGML_QUANT_SIZES[quant_type]
    shape = gguf_utils._quant_shape_from_byte_shape(raw.shape, type_size, block_size)
    blocks = raw.view(torch.uint8).reshape(-1, type_size)
    weight = gguf_utils.dequantize_functions[quant_type](blocks, block_size, type_size)
    return weight.reshape(shape).to(dtype)


@functools.cache
def compiled():
    """The compiled dequantization (one per process: its graphs, one per GGML type and dtype, are shared)."""
    return torch.compile(_dequantize, dynamic=True, options={"emulate_precision_casts": True})


def quantized(weight) -> bool:
    return getattr(weight, "quant_type", None) in gguf_utils.dequantize_functions


def gguf_layers(module: torch.nn.Module) -> list[torch.nn.Module]:
    """The GGUF linear layers under `module` whose weight is quantized (F16/F32 ones are plain linears)."""
    return [layer for layer in module.modules()
            if isinstance(layer, gguf_utils.GGUFLinear) and quantized(layer.weight)]


class CompiledDequantize(ModelHook):
    """One GGUF linear layer's forward with its weight dequantized by the compiled function."""

    _is_stateful = False

    def new_forward(self, module: torch.nn.Module, inputs: torch.Tensor, *args, **kwargs):
        weight = module.weight
        kernels = gguf_utils.ops is not None and weight.is_cuda and inputs.is_cuda
        if kernels or not quantized(weight):
            return self.fn_ref.original_forward(inputs, *args, **kwargs)
        dense = compiled()(weight.as_tensor(), weight.quant_type, module.compute_dtype)
        bias = module.bias.to(module.compute_dtype) if module.bias is not None else None
        return torch.nn.functional.linear(inputs, dense, bias)


def install(module: torch.nn.Module, device) -> str | None:
    """Hook every GGUF linear layer of a denoiser and compile its GGML types now on `device` (the compute
    device: the first step then runs at full speed). Returns the note for the report, or None without GGUF
    quantized GGUF weights (nothing to do). A type compiled earlier in the process is not compiled again; the note gives the
    seconds its compile took."""
    layers = gguf_layers(module)
    if not layers:
        return None
    kinds, where = set(), torch.device(device).type
    for layer in layers:
        HookRegistry.check_if_exists_or_initialize(layer).register_hook(CompiledDequantize(), HOOK)
        kinds.add((layer.weight.quant_type, layer.compute_dtype, where))
    for kind in sorted(kinds - _COMPILED.keys(), key=str):
        started = time.perf_counter()
        warm_up(*kind[:2], device)
        _COMPILED[kind] = time.perf_counter() - started
    seconds = sum(_COMPILED[kind] for kind in kinds)
    names = ", ".join(sorted({gguf_utils.gguf.GGMLQuantizationType(kind[0]).name for kind in kinds}))
    log.info("GGUF dequantization compiled for %s in %.1f s (cached on disk for later runs)", names, seconds)
    return f"GGUF dequantization compiled ({names}: {seconds:.1f} s)"


def warm_up(quant_type, dtype: torch.dtype, device) -> None:
    """Compile the dequantization of one GGML type by running it on zero bytes of two sizes (dynamic shapes:
    the real weights then reuse the graph)."""
    block_size, type_size = gguf_utils.GGML_QUANT_SIZES[quant_type]
    for rows, blocks in ((2, 2), (3, 4)):
        compiled()(torch.zeros(rows, blocks * type_size, dtype=torch.uint8, device=device), quant_type, dtype)
