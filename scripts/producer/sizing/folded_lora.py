"""LoRAs on GGUF weights, folded into the weight each call dequantizes anyway.

A LoRA cannot be merged into GGUF weights once (they are quantized bytes), so peft keeps it as an adapter
around each GGUF linear: every call then runs the adapter on the activations, `x @ A.T @ B.T * scale`, two
thin matmuls that read and write the whole activation (at Wan's 32,760 tokens a 5120-wide layer moves ~1.7 GB
for them, counted from the shapes, not measured) beside the layer's own. But diffusers' GGUF layer rebuilds
its full weight at every call (`dequantize_gguf_tensor`, then the compute dtype): adding `scale * B @ A` to
that fresh weight costs one `addmm` on the weight (rank x in x out multiply-adds, no activation traffic), and
the layer then makes one matmul, as a bf16 layer with a fused LoRA does. The result is what `fuse_lora`
gives on bf16 weights (the delta added to the weight in the compute dtype), which is what the bf16 plans run.

`fold` replaces each peft layer of a GGUF model by its base layer, carrying the adapters' factors as two
parameters (`lora_up` = the B matrices times their scales side by side, `lora_down` = the A matrices
stacked), so group offloading moves them with the block; a hook computes the layer's output from the
dequantized weight plus the delta. The layers a GGUF file keeps unquantized (embedders, head: F16/F32) are
folded the same way (their weight plus the delta at each call: small layers), so no weight is ever changed
and `unfold` takes every LoRA out exactly. All or nothing: a model with an adapter this cannot fold (DoRA, a
LoRA bias, a layer that is not a linear) keeps every adapter unfused, as before.
"""

from __future__ import annotations

import torch
from diffusers.hooks import HookRegistry, ModelHook
from diffusers.quantizers.gguf import utils as gguf_utils

HOOK = "producer_folded_lora"
UP, DOWN = "lora_up", "lora_down"
PARTS = "_folded_parts"  # per folded layer: (the adapter names of one fold, its rank), in stacking order


def quantized(weight) -> bool:
    """A GGUF weight that diffusers dequantizes (F16/F32 tensors of a GGUF file are plain ones)."""
    return getattr(weight, "quant_type", None) in gguf_utils.dequantize_functions


def folded(layer: torch.nn.Module) -> bool:
    return getattr(layer, UP, None) is not None


def add_delta(layer: torch.nn.Module, dense: torch.Tensor, fresh: bool) -> torch.Tensor:
    """`dense` (the layer's weight in its compute dtype) plus the folded LoRA delta, if the layer has one;
    in place when `dense` was made for this call alone (`fresh`)."""
    if not folded(layer):
        return dense
    up, down = getattr(layer, UP), getattr(layer, DOWN)
    return dense.addmm_(up, down) if fresh else torch.addmm(dense, up, down)


class FoldedLora(ModelHook):
    """A GGUF linear layer's forward with its folded LoRA: dequantize (diffusers' own functions), add the
    delta to the weight, one matmul."""

    _is_stateful = False

    def new_forward(self, module: torch.nn.Module, inputs: torch.Tensor, *args, **kwargs):
        weight, up, down = module.weight, getattr(module, UP), getattr(module, DOWN)
        if gguf_utils.ops is not None and weight.is_cuda and inputs.is_cuda:
            # diffusers' CUDA kernels multiply the quantized weight directly: the delta goes on the activations
            out = self.fn_ref.original_forward(inputs, *args, **kwargs)
            return out + torch.nn.functional.linear(torch.nn.functional.linear(inputs.to(up.dtype), down), up)
        dense = gguf_utils.dequantize_gguf_tensor(weight).to(compute_dtype(module))
        return linear(module, inputs, dense, fresh=quantized(weight))


def linear(layer: torch.nn.Module, inputs: torch.Tensor, dense: torch.Tensor, fresh: bool) -> torch.Tensor:
    """What a GGUF linear layer computes from its weight `dense` (already in the compute dtype), with its folded
    LoRA if it has one: GGUFLinear.forward_native's matmul, shared by this hook and compiled_dequant's."""
    bias = layer.bias.to(dense.dtype) if layer.bias is not None else None
    return torch.nn.functional.linear(inputs, add_delta(layer, dense, fresh), bias)


def compute_dtype(layer: torch.nn.Module) -> torch.dtype:
    """A GGUF layer's compute dtype; a plain linear's (the embedders a GGUF file keeps in F16/F32) own."""
    return getattr(layer, "compute_dtype", None) or layer.weight.dtype


def foldable(layer: torch.nn.Module, names: list[str]) -> str | None:
    """Why the peft layer `layer` cannot be folded by `fold`, or None when it can."""
    from peft.tuners.lora.layer import Linear as LoraLinear

    if not isinstance(layer, LoraLinear):
        return f"a {type(layer).__name__} adapter"
    for name in _adapters(layer, names):
        if name in getattr(layer, "lora_variant", {}) or layer.use_dora.get(name, False):
            return "a DoRA adapter"
        if layer.lora_B[name].bias is not None:
            return "a LoRA bias"
    if getattr(layer, "fan_in_fan_out", False):
        return "transposed weights (fan_in_fan_out)"
    return None


def _adapters(layer, names: list[str]) -> list[str]:
    return [n for n in layer.active_adapters if n in names and n in layer.lora_A]


def fold(model: torch.nn.Module, names: list[str]) -> str | None:
    """Fold the adapters `names` of every peft layer of `model` (see the module's note) and take peft off it.
    Returns None when done, or why nothing was changed (the adapters then stay as they were)."""
    from diffusers.hooks.group_offloading import _is_group_offload_enabled
    from peft.tuners.tuners_utils import BaseTunerLayer

    layers = {n: m for n, m in model.named_modules() if isinstance(m, BaseTunerLayer)}
    if _is_group_offload_enabled(model):
        return "the model is already offloaded block by block"
    for name, layer in layers.items():
        why = foldable(layer, names)
        if why is not None:
            return f"{name} holds {why}"
        if set(layer.active_adapters) - set(names):
            return f"{name} has other active adapters"
    with torch.no_grad():
        for name, layer in layers.items():
            base = _fold_layer(layer, names)
            parent, _, child = name.rpartition(".")
            setattr(model.get_submodule(parent) if parent else model, child, base)
    if hasattr(model, "peft_config"):  # what diffusers' unload_lora does once the layers are gone
        del model.peft_config
    if hasattr(model, "_hf_peft_config_loaded"):
        model._hf_peft_config_loaded = None
    return None


def _fold_layer(layer, names: list[str]) -> torch.nn.Module:
    base, adapters = layer.base_layer, _adapters(layer, names)
    if not adapters:  # none of them active here: the layer computes as its base
        return base
    dtype = compute_dtype(base)
    up = torch.cat([layer.lora_B[n].weight.float() * layer.scaling[n] for n in adapters], dim=1)
    down = torch.cat([layer.lora_A[n].weight.float() for n in adapters], dim=0)
    device = layer.lora_A[adapters[0]].weight.device
    up, down = up.to(device, dtype), down.to(device, dtype)
    parts = [*getattr(base, PARTS, []), (tuple(names), down.shape[0])]
    if folded(base):  # LoRAs folded by an earlier load stay: the new factors go beside theirs
        up, down = torch.cat([getattr(base, UP), up], dim=1), torch.cat([getattr(base, DOWN), down], dim=0)
    attach(base, up, down, parts)
    return base


def attach(layer: torch.nn.Module, up: torch.Tensor, down: torch.Tensor, parts: list) -> None:
    """Give `layer` these folded factors and the hook that adds their delta at each call (also how
    engines/loras/lora_refold folds a LoRA again into a fresh copy of an expert)."""
    _set_factors(layer, up, down, parts)
    registry = HookRegistry.check_if_exists_or_initialize(layer)
    if registry.get_hook(HOOK) is None:
        registry.register_hook(FoldedLora(), HOOK)


def _set_factors(layer: torch.nn.Module, up: torch.Tensor, down: torch.Tensor, parts: list) -> None:
    layer.register_parameter(UP, torch.nn.Parameter(up, requires_grad=False))
    layer.register_parameter(DOWN, torch.nn.Parameter(down, requires_grad=False))
    setattr(layer, PARTS, parts)


def unfold(model: torch.nn.Module, names: list[str] | None = None) -> int:
    """Take the LoRAs folded as `names` (one `fold` call's; every folded LoRA when None) out of `model`: the
    other folds' factors stay, and a layer left with none computes as before (its GGUF weights were never
    changed). Returns the number of layers it changed."""
    layers = [m for m in model.modules() if folded(m)]
    changed = 0
    for layer in layers:
        parts = getattr(layer, PARTS)
        kept = [i for i, (key, _) in enumerate(parts) if names is not None and key != tuple(names)]
        if len(kept) == len(parts):
            continue
        changed += 1
        if not kept:
            del layer._parameters[UP], layer._parameters[DOWN]
            delattr(layer, PARTS)
            HookRegistry.check_if_exists_or_initialize(layer).remove_hook(HOOK, recurse=False)
            continue
        starts = [sum(rank for _, rank in parts[:i]) for i in range(len(parts))]
        rows = torch.cat([torch.arange(starts[i], starts[i] + parts[i][1]) for i in kept]).to(layer.lora_down.device)
        with torch.no_grad():
            _set_factors(layer, layer.lora_up[:, rows].contiguous(), layer.lora_down[rows].contiguous(),
                         [parts[i] for i in kept])
    return changed
