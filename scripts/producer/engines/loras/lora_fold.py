"""LoRAs on GGUF weights: folded into the weight each layer dequantizes (producer.sizing.folded_lora).

GGUF weights cannot take a delta, so peft would keep a LoRA as an adapter on the activations; folded, it
costs one addmm on the weight a call, and since the GGUF weights are never changed it can be taken out
again exactly (`unfold_all`), which fused bf16 weights cannot. Folding happens where the scripts fuse: at
a load before the transformer is placed. A Qwen batch that swaps LoRA sets loads the later ones into a
transformer already offloaded block by block, whose groups would not carry new parameters: there they
stay adapters, as on bf16 weights.
"""

from __future__ import annotations

import logging

from producer.engines.loras.lora_plan import SpecPlan, is_quantized_model
from producer.engines.loras.lora_report import LoraReport

log = logging.getLogger("producer")


def adapter_components(plans: list[SpecPlan]) -> dict[str, list[str]]:
    """Each transformer that took adapters, with their names."""
    components: dict[str, list[str]] = {}
    for plan in plans:
        for expert in plan.experts:
            if expert.modules:
                components.setdefault(expert.component, []).append(plan.adapter_name)
    return components


def mark(plans: list[SpecPlan], component: str, flag: str) -> None:
    """Set `flag` (fused or folded) on every expert report of `component` that took adapters."""
    for plan in plans:
        for expert in plan.experts:
            if expert.component == component and expert.modules:
                setattr(expert, flag, True)


def fold_quantized(pipe, plans: list[SpecPlan], report: LoraReport, enabled: bool = True) -> None:
    """Fold the adapters of each GGUF transformer; one that cannot be folded (or `enabled` False: the
    benchmark's measure of peft's path) keeps its adapters, with a warning that says why."""
    from producer.sizing import folded_lora

    for component, names in adapter_components(plans).items():
        model = getattr(pipe, component)
        if not is_quantized_model(model):
            continue
        why = folded_lora.fold(model, names) if enabled else "folding is off"
        if why is not None:
            log.warning(f"LoRAs stay peft adapters on the quantized {component} ({why}): each step runs them on "
                        "the activations (same images, slower per step)")
            continue
        log.info(f"LoRAs folded into the quantized {component}'s weights as each layer dequantizes them")
        report._folded[component] = names
        mark(plans, component, "folded")


def unfold_all(pipe, report: LoraReport) -> None:
    """Take the LoRAs that `report`'s load folded out of their transformers (those of other loads stay)."""
    from producer.sizing import folded_lora

    for component, names in report._folded.items():
        folded_lora.unfold(getattr(pipe, component), names)
    report._folded.clear()
