"""A GGUF expert's LoRAs folded again after the expert is read again, without diffusers' loader or peft.

With one Wan expert in RAM (16 GB machines) every clip reads both experts from disk, and each read had its LoRA
loaded the whole way again: diffusers' conversion, peft's adapters, the check of what loaded, `set_adapters`, the
fold (3.70 s for both experts on an H100, bench/results/2026-12-07-h100-late/lora.json). The first load of an
expert still goes that way, checks and reports. Before its fold, `peft_scales` notes the scale and dtypes peft
holds each adapter at; after it, `capture` keeps a `Refold`: per folded layer, the LoRA modules in it in the fold's
order. A later read of the same expert (`refold`) plans the files against the fresh model as the first load did,
computes each layer's factors from the files with `folded_lora._fold_layer`'s arithmetic on the values peft held,
attaches them, and adds the plain deltas. `capture` keeps a Refold only where its factors equal the fold's own,
bit for bit, on sampled layers; otherwise every read takes the whole way.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, replace

import torch

from producer.engines.loras.lora_files import read_lora
from producer.engines.loras.lora_plan import SpecPlan, plan_spec
from producer.sizing import folded_lora

log = logging.getLogger("producer")

SAMPLED_LAYERS = 3  # layers compared at capture from each end of the folded ones


@dataclass
class Refold:
    specs: list  # LoraSpec, each for this component alone, in the load's order
    family: str
    # per folded layer: its parts (folded_lora.PARTS) and [(spec index, scale, A dtype, B dtype)] in fold order
    layers: dict[str, tuple[list, list[tuple[int, float, torch.dtype, torch.dtype]]]]

    @property
    def component(self) -> str:
        """The denoiser these LoRAs fold into (every spec is narrowed to it)."""
        return self.specs[0].components[0]


def peft_scales(model: torch.nn.Module) -> dict[str, dict[str, tuple[float, torch.dtype, torch.dtype]]]:
    """Before the fold: each peft layer's {adapter: (scaling, A's dtype, B's dtype)}, by layer name."""
    from peft.tuners.tuners_utils import BaseTunerLayer

    return {name: {a: (layer.scaling[a], layer.lora_A[a].weight.dtype, layer.lora_B[a].weight.dtype)
                   for a in layer.lora_A}
            for name, layer in model.named_modules() if isinstance(layer, BaseTunerLayer)}


def capture(plans: list[SpecPlan], component: str, family: str, scales: dict) -> Refold | None:
    """After `lora.load_loras` folded `component`'s adapters (`scales`: peft_scales before the fold): how to fold
    them again, checked on sampled layers against the fold's factors; None where that cannot be done exactly.
    It only saves time, so it never fails a load: a layout it does not know gives None, and the whole way."""
    try:
        return _capture(plans, component, family, scales)
    except (KeyError, IndexError, RuntimeError, ValueError) as exc:
        log.info("LoRAs of %s will be loaded the whole way at each read (%s: %s)", component, type(exc).__name__, exc)
        return None


def _capture(plans: list[SpecPlan], component: str, family: str, scales: dict) -> Refold | None:
    experts = [next((e for e in p.experts if e.component == component), None) for p in plans]
    if not any(experts):
        return None
    model = next(e.model for e in experts if e is not None)
    index = {p.adapter_name: i for i, p in enumerate(plans)}
    verified = {(i, m.target) for i, e in enumerate(experts) if e is not None for m in e.modules}
    layers = {}
    for name, layer in model.named_modules():
        if not folded_lora.folded(layer):
            continue
        parts, held = list(getattr(layer, folded_lora.PARTS)), scales.get(name, {})
        present = [a for a in parts[0][0] if a in held]  # what the fold folded here, in its order
        # folded by several loads, or holding an adapter whose module the check did not count (allow_partial)
        if len(parts) != 1 or not present or any(a not in index or (index[a], name) not in verified for a in present):
            return None
        layers[name] = (parts, [(index[a], *held[a]) for a in present])
    refold = Refold([replace(p.spec, components=(component,)) for p in plans], family, layers)
    names = list(layers)
    sample = names[:SAMPLED_LAYERS] + names[SAMPLED_LAYERS:][-SAMPLED_LAYERS:]
    made = factors(refold, plans, model, sample)
    same = made is not None and all(
        torch.equal(up, getattr(model.get_submodule(n), folded_lora.UP))
        and torch.equal(down, getattr(model.get_submodule(n), folded_lora.DOWN)) for n, (up, down, _) in made.items())
    return refold if same else None


def factors(refold: Refold, plans: list[SpecPlan], model: torch.nn.Module,
            names: list[str] | None = None) -> dict[str, tuple[torch.Tensor, torch.Tensor, list]] | None:
    """Each folded layer's (up, down, parts) from the planned files, as folded_lora._fold_layer makes them from
    peft's tensors; None if a layer's module is missing from the plans (the file changed since)."""
    modules = [{m.target: m for e in p.experts if e.component == refold.component for m in e.modules} for p in plans]
    out = {}
    for name in refold.layers if names is None else names:
        parts, order = refold.layers[name]
        if any(name not in modules[i] for i, *_ in order):
            return None
        base = model.get_submodule(name)
        dtype, device = folded_lora.compute_dtype(base), base.weight.device
        ups, downs = [], []
        for i, scale, a_dtype, b_dtype in order:
            module, tensors = modules[i][name], plans[i].lora.tensors
            down, alpha_scale = tensors[module.keys["down"]], module.scale(tensors)
            # as lora._adapter_state_dict folds alpha before diffusers loads it, then as peft stores it
            down = down if alpha_scale == 1.0 else (down.float() * alpha_scale).to(down.dtype)
            # fp32 holds every half-precision value exactly, so a_dtype -> fp32 -> dtype is a_dtype -> dtype
            downs.append(down.to(a_dtype))
            ups.append(_scaled_up(tensors[module.keys["up"]], b_dtype, scale, dtype))
        out[name] = (_joined(ups, 1).to(device, dtype), _joined([d.to(dtype) for d in downs], 0).to(device), parts)
    return out


def _scaled_up(up: torch.Tensor, b_dtype: torch.dtype, scale: float, dtype: torch.dtype) -> torch.Tensor:
    """B as peft held it (`b_dtype`) times its scale, in fp32 as _fold_layer computes it (then `dtype`). Where the
    file's B is already in the half-precision `dtype` and peft held it unchanged (in that dtype or in fp32), B * scale
    gives the same bits straight away: PyTorch multiplies half-precision tensors in fp32 and rounds once, as
    fp32 -> `dtype` does. That skips an fp32 copy of every B (0.7 GB an expert of the Wan distill LoRA)."""
    if up.dtype == dtype and dtype in (torch.bfloat16, torch.float16) and b_dtype in (torch.float32, dtype):
        return up * scale
    return up.to(b_dtype).to(torch.float32, copy=True).mul_(scale)


def _joined(tensors: list[torch.Tensor], dim: int) -> torch.Tensor:
    return tensors[0] if len(tensors) == 1 else torch.cat(tensors, dim=dim)  # one LoRA: no copy


def refold(pipe, refold: Refold) -> bool:
    """Fold `refold`'s LoRAs into the fresh expert in `pipe` (a lora_view): plan the files against it as the first
    load did, attach each folded layer's factors, add the plain deltas. False, with nothing changed, where the
    files no longer hold what the first load folded."""
    return refold_all(pipe, [refold]) is not None


def refold_all(pipe, refolds: list[Refold]) -> list[SpecPlan] | None:
    """`refold` for several components of `pipe` at once (a load kept by lora_store): every component's factors
    are made before any is attached, so a file that changed leaves all of them as they were (None). Returns
    the plans folded, for what the whole way reports from them."""
    made, planned = [], []
    for one in refolds:
        plans = [plan_spec(pipe, spec, read_lora(spec.path, one.family), one.family, i)
                 for i, spec in enumerate(one.specs)]
        model = getattr(pipe, one.component)
        factors_made = factors(one, plans, model)
        if factors_made is None:
            return None
        made.append((model, factors_made, plans))
        planned += plans
    with torch.no_grad():
        for model, factors_made, _ in made:
            for name, (up, down, parts) in factors_made.items():
                folded_lora.attach(model.get_submodule(name), up, down, parts)
    for _, _, plans in made:
        for plan in plans:
            for expert in plan.experts:
                expert.add_deltas(plan.lora.tensors)
    return planned
