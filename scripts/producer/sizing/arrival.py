"""Dequantize streamed GGUF blocks once, as they arrive on the copy stream (the plan's dequantize_on_arrival).

diffusers' GGUF linear layers dequantize their whole weight with torch ops inside every call, on the compute
stream, so under group offloading each streamed block pays its dequantization between its own matmuls. Here a
diffusers hook on each streamed block (registered before group offloading, so diffusers' own hook runs around
it) queues the *next* block's dequantization on the copy stream, behind that block's transfer which diffusers
queued there when this block started: it runs beside this block's compute, and diffusers' own synchronisation
with the copy stream (before the next block runs) covers it. While a block runs, its linear layers hold the bf16 weights as plain
parameters (diffusers' GGUF layer then skips its own dequantization); the GGUF parameters are put back before
diffusers offloads the block. Same operations as the layer's own path (`dequantize_gguf_tensor`, then the
layer's compute dtype), so the same numbers.

Costs VRAM: both blocks in flight also hold their bf16 form (memory.plan_memory counts it). Not used when
diffusers runs GGUF through its optional CUDA kernels (those never dequantize a whole weight).
"""

from __future__ import annotations

from contextlib import nullcontext

import torch
from diffusers.hooks import HookRegistry, ModelHook
from diffusers.hooks.group_offloading import _GROUP_OFFLOADING
from diffusers.quantizers.gguf import utils as gguf_utils

HOOK = "producer_dequantize_on_arrival"


def available() -> bool:
    """False when diffusers' GGUF layers use their CUDA kernels, which read the quantized weight themselves."""
    return gguf_utils.ops is None


def gguf_weights(module: torch.nn.Module) -> list[tuple[torch.nn.Module, str]]:
    """(layer, "weight") of every GGUF linear layer under `module` whose weight is quantized (F16/F32 excluded)."""
    from producer.sizing.compiled_dequant import gguf_layers

    return [(layer, "weight") for layer in gguf_layers(module)]


def _dequantize(weights: list[tuple[torch.nn.Module, str]]) -> list[torch.Tensor]:
    """What GGUFLinear.forward_native computes from its weight, for each parameter."""
    return [gguf_utils.dequantize_gguf_tensor(owner._parameters[name]).to(owner.compute_dtype)
            for owner, name in weights]


class DequantizeOnArrival(ModelHook):
    """One streamed block's hook: uses the bf16 weights made on arrival (or makes them now), and makes the next
    streamed block's on the copy stream."""

    _is_stateful = False

    def __init__(self) -> None:
        super().__init__()
        self.weights: list[tuple[torch.nn.Module, str]] = []
        self.ready: list[torch.Tensor] | None = None  # made by the block before, on the copy stream
        self.on_copy_stream = False

    def initialize_hook(self, module: torch.nn.Module) -> torch.nn.Module:
        self.weights = gguf_weights(module)
        return module

    def new_forward(self, module: torch.nn.Module, *args, **kwargs):
        made, self.ready = self.ready, None
        side, self.on_copy_stream = self.on_copy_stream, False
        if made is None:
            made, side = _dequantize(self.weights), False
        originals = [(owner, name, owner._parameters[name]) for owner, name in self.weights]
        for (owner, name), weight in zip(self.weights, made):
            owner._parameters[name] = torch.nn.Parameter(weight, requires_grad=False)
        try:
            output = self.fn_ref.original_forward(*args, **kwargs)
            # After this block's kernels are queued, so that their launch is not delayed; the next block's
            # dequantization still queues long before its transfer ends.
            self._prepare_next(module)
            return output
        finally:
            if side and made and made[0].is_cuda:
                # made on the copy stream: the allocator may hand that memory to the next transfer as soon as it
                # is freed, so the compute that reads it must be done (diffusers synchronises here right after)
                torch.cuda.current_stream(made[0].device).synchronize()
            for owner, name, original in originals:
                owner._parameters[name] = original

    def _prepare_next(self, module: torch.nn.Module) -> None:
        """Dequantize the block diffusers is prefetching, on the stream its transfer was queued on."""
        offloading = HookRegistry.check_if_exists_or_initialize(module).get_hook(_GROUP_OFFLOADING)
        following = getattr(offloading, "next_group", None)
        leader = getattr(following, "onload_leader", None)
        registry = getattr(leader, "_diffusers_hook", None)
        nxt = registry.get_hook(HOOK) if registry is not None else None
        if nxt is None or not nxt.weights:
            return
        stream = following.stream
        if stream is not None and not isinstance(stream, torch.cuda.Stream):
            return  # not a CUDA stream: the next block dequantizes itself when it runs
        with torch.cuda.stream(stream) if stream is not None else nullcontext():
            nxt.ready = _dequantize(nxt.weights)
        nxt.on_copy_stream = stream is not None


def install(blocks: list[torch.nn.Module]) -> int:
    """Register the hook on each block that holds GGUF weights, before group offloading is applied; returns how
    many blocks got it."""
    count = 0
    for block in blocks:
        if gguf_weights(block):
            HookRegistry.check_if_exists_or_initialize(block).register_hook(DequantizeOnArrival(), HOOK)
            count += 1
    return count
