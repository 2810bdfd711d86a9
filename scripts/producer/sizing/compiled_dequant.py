"""Compiled GGUF dequantization: diffusers' own dequantization of each GGUF linear weight, fused by torch.compile.

diffusers' GGUF linear layers (without its optional CUDA kernels, which come from the Hugging Face Hub) turn
the whole quantized weight back into the compute dtype at every call, through a chain of torch ops: a
Q4_K weight takes about ten of them, each reading and writing the full weight. Measured on an H100
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

from producer.sizing import folded_lora
from producer.sizing.folded_lora import quantized

log = logging.getLogger("producer")

HOOK = "producer_compiled_dequantize"
NOTE = "GGUF dequantization compiled"  # how the report's `speed` says so (bench/speedmodel.py reads it)
# Seconds each (GGML type, compute dtype, device type) took to compile in this process (None: it could not be
# compiled, or its weights differed from diffusers' own, so it is not used): done once, reported each time.
_COMPILED: dict[tuple, float | None] = {}


def _dequantize(flat: torch.Tensor, quant_type, dtype: torch.dtype) -> torch.Tensor:
    """diffusers' dequantization of a weight's bytes, given flat (one dimension, so that every layer shape of a
    GGML type shares one graph), then the layer's compute dtype: (blocks, values a block)."""
    block_size, type_size = gguf_utils.GGML_QUANT_SIZES[quant_type]
    return gguf_utils.dequantize_functions[quant_type](flat.reshape(-1, type_size), block_size, type_size).to(dtype)


@functools.cache
def compiled():
    """The compiled dequantization (one per process: its graphs, one per GGML type and dtype, are shared)."""
    return torch.compile(_dequantize, dynamic=True, options={"emulate_precision_casts": True})


def dequantize(raw: torch.Tensor, quant_type, dtype: torch.dtype) -> torch.Tensor:
    """`dequantize_gguf_tensor` of diffusers on the raw bytes of a weight, then `dtype`, compiled."""
    block_size, type_size = gguf_utils.GGML_QUANT_SIZES[quant_type]
    shape = gguf_utils._quant_shape_from_byte_shape(raw.shape, type_size, block_size)
    return compiled()(raw.view(torch.uint8).reshape(-1), quant_type, dtype).reshape(shape)


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
        if kernels or not quantized(weight) or _GAVE_UP:
            return self.fn_ref.original_forward(inputs, *args, **kwargs)
        try:
            dense = dequantize(weight.as_tensor(), weight.quant_type, module.compute_dtype)
        except torch.OutOfMemoryError:
            raise
        except Exception as exc:  # noqa: BLE001 - a later compile (a new shape) failed: diffusers' path from now on
            _give_up(exc)
            return self.fn_ref.original_forward(inputs, *args, **kwargs)
        return folded_lora.linear(module, inputs, dense, fresh=True)


def install(module: torch.nn.Module, device) -> str | None:
    """Hook every quantized GGUF linear layer of a denoiser, once its GGML type is compiled on `device` (the
    compute device: the first step then runs at full speed) and its compiled weights were checked equal to
    diffusers' own on one of the layers. Returns the note for the report, or None without quantized GGUF
    weights (nothing to do). A type compiled earlier in the process is not compiled again; the note's seconds
    are this call's compiling, and it names the types compiled before."""
    layers = gguf_layers(module)
    if not layers:
        return None
    where = torch.device(device).type
    kind_of = {layer: (layer.weight.quant_type, layer.compute_dtype, where) for layer in layers}
    earlier = set(_COMPILED)
    for kind, sample in {kind: layer for layer, kind in kind_of.items()}.items():
        if kind not in _COMPILED:
            _COMPILED[kind] = _compile_and_check(kind, sample, device)
    for layer, kind in kind_of.items():
        if _COMPILED[kind] is not None:
            HookRegistry.check_if_exists_or_initialize(layer).register_hook(CompiledDequantize(), HOOK)
    return _note({kind: _COMPILED[kind] for kind in kind_of.values()}, earlier)


def _compile_and_check(kind: tuple, sample: torch.nn.Module, device) -> float | None:
    """Compile one GGML type's dequantization; its seconds, or None when it cannot be compiled here or its
    compiled weights of `sample` differ from diffusers' own on this device (that type then stays with
    diffusers)."""
    quant_type, dtype, _ = kind
    raw = sample.weight.as_tensor().to(device)
    expected = gguf_utils.dequantize_gguf_tensor(gguf_utils.GGUFParameter(raw, quant_type=quant_type)).to(dtype)
    started = time.perf_counter()
    try:
        warm_up(quant_type, dtype, device)
        got = dequantize(raw, quant_type, dtype)
    except torch.OutOfMemoryError:
        raise
    except Exception as exc:  # noqa: BLE001 - no compiler here (e.g. no Triton): diffusers' own path, as before
        log.warning("warning: the GGUF dequantization could not be compiled (%s: %s); diffusers' own is used",
                    type(exc).__name__, str(exc).splitlines()[0] if str(exc) else "")
        return None
    seconds = time.perf_counter() - started
    if torch.equal(got.view(-1).view(torch.uint8), expected.view(-1).view(torch.uint8)):
        return seconds
    log.warning("warning: the compiled GGUF dequantization of %s differs from diffusers' own on this device; "
                "those weights keep diffusers' dequantization", _name(quant_type))
    return None


_GAVE_UP: list[str] = []  # why the compiled path stopped in this process (then every layer uses diffusers')


def _give_up(exc: Exception) -> None:
    if not _GAVE_UP:
        log.warning("warning: the compiled GGUF dequantization failed (%s: %s); diffusers' own is used from now on",
                    type(exc).__name__, str(exc).splitlines()[0] if str(exc) else "")
    _GAVE_UP.append(type(exc).__name__)


def _name(quant_type) -> str:
    return gguf_utils.gguf.GGMLQuantizationType(quant_type).name


def _note(seconds_by_kind: dict, earlier: set) -> str:
    compiled_types = sorted({_name(k[0]) for k, s in seconds_by_kind.items() if s is not None})
    kept = sorted({_name(k[0]) for k, s in seconds_by_kind.items() if s is None})
    seconds = sum(s for k, s in seconds_by_kind.items() if s is not None and k not in earlier)
    before = sorted({_name(k[0]) for k, s in seconds_by_kind.items() if s is not None and k in earlier})
    earlier_note = f"; {', '.join(before)} compiled earlier in this process" if before else ""
    note = f"{NOTE} ({', '.join(compiled_types)}: {seconds:.1f} s{earlier_note})" if compiled_types else ""
    if kept:
        note += ("; " if note else "") + f"{', '.join(kept)} left to diffusers (not compiled, or different weights)"
    log.info("%s; the compiled code is cached on disk for later runs", note)
    return note


def warm_up(quant_type, dtype: torch.dtype, device) -> None:
    """Compile the dequantization of one GGML type by running it on zero bytes of two sizes (dynamic shapes:
    the real weights then reuse the graph)."""
    type_size = gguf_utils.GGML_QUANT_SIZES[quant_type][1]
    for blocks in (4, 12):
        compiled()(torch.zeros(blocks * type_size, dtype=torch.uint8, device=device), quant_type, dtype)
