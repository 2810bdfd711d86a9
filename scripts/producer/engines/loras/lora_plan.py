"""Planning a LoRA load: which keys fit which transformer, and refusing what would apply partly or not at all.

Everything here runs before the pipeline is touched (see producer.engines.loras.lora).
"""

from __future__ import annotations

import logging
import re
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any

from producer.engines.loras.lora_files import (
    EXPERT_ROLES,
    MODEL_TITLES,
    NOT_APPLICABLE,
    QUANTIZED,
    WAN21_IMAGE_KEY,
    ZERO_DELTA,
    LoraDelta,
    LoraFile,
    LoraModule,
    LoraSpec,
)
from producer.errors import CliError

log = logging.getLogger("producer")


# ---------------------------------------------------------------- what a load will do


ALLOW_PARTIAL_HINT = "--allow-partial-lora"  # the scripts' flag that passes allow_partial=True


@dataclass
class ExpertPlan:
    component: str
    model: Any = field(repr=False)
    strength: float
    modules: list[LoraModule]  # pairs that fit this transformer (after loading: the verified ones)
    deltas: list[tuple[LoraDelta, Any]]  # (delta, parameter) to add (after loading: the added ones)
    module_count: int
    delta_count: int
    skipped: dict[tuple[str, bool], list[str]] = field(default_factory=lambda: defaultdict(list))
    fused: bool = False
    folded: bool = False  # into GGUF weights (producer.sizing.folded_lora): the weights untouched, so reversible

    @property
    def applies_anything(self) -> bool:
        return bool(self.modules or self.deltas)

    def lost(self) -> dict[str, list[str]]:
        return {reason: keys for (reason, lost), keys in self.skipped.items() if lost}

    def add_deltas(self, tensors: dict, originals: list | None = None) -> None:
        """weight += strength * delta for each of the deltas, keeping (parameter, original) in `originals` to
        restore them exactly (None: nothing to restore later, as for an expert folded again by lora_refold)."""
        import torch

        for delta, param in self.deltas:
            if originals is not None:
                originals.append((param, param.detach().clone()))
            with torch.no_grad():
                change = tensors[delta.key].to(device=param.device, dtype=torch.float32)
                param.copy_((param.float() + self.strength * change).to(param.dtype))


@dataclass
class SpecPlan:
    spec: LoraSpec
    lora: LoraFile
    adapter_name: str
    experts: list[ExpertPlan]

    @property
    def has_modules(self) -> bool:
        return any(e.modules for e in self.experts)


# ---------------------------------------------------------------- planning: what goes where, before loading


def plan_spec(pipe, spec: LoraSpec, lora: LoraFile, family: str, index: int) -> SpecPlan:
    experts = []
    for component in spec.components:
        model = getattr(pipe, component, None)
        if model is None:
            raise CliError(f"{spec.name}: this pipeline has no {component} ({role_name(component, family)})",
                           fix="load Wan LoRAs with ':high' into a single-expert pipeline")
        experts.append(_plan_expert(model, lora, component, spec.strength, family))
    slug = re.sub(r"[^0-9A-Za-z]+", "_", spec.path.stem).strip("_")[:40]
    return SpecPlan(spec, lora, f"lora{index}_{slug}", experts)


MALFORMED_PAIR = "malformed pair"


def _plan_expert(model, lora: LoraFile, component: str, strength: float, family: str) -> ExpertPlan:
    plan = ExpertPlan(component, model, strength, [], [], len(lora.modules), len(lora.deltas))
    for module in lora.modules.values():
        problem = _module_problem(model, module, lora.tensors, family)
        if problem:
            keys = module.key_list()
            if problem[0].startswith(MALFORMED_PAIR):  # the misshapen tensor first: the message names it
                keys.sort(key=lambda k: k not in (module.keys["down"], module.keys["up"]) or lora.tensors[k].ndim == 2)
            plan.skipped[problem].extend(keys)
        else:
            plan.modules.append(module)
    paired = {m.target for m in plan.modules}
    for delta in lora.deltas:
        problem, param = _delta_problem(model, delta, lora.tensors[delta.key], family)
        as_lora = _delta_as_lora(model, lora, delta, paired) if problem and problem[0].startswith(QUANTIZED) else None
        if as_lora:
            plan.modules.append(as_lora)
        elif problem:
            plan.skipped[problem].append(delta.key)
        else:
            plan.deltas.append((delta, param))
    for key in lora.others:
        plan.skipped[(_other_key_reason(key), True)].append(key)
    return plan


def _module_problem(model, module: LoraModule, tensors: dict, family: str) -> tuple[str, bool] | None:
    import torch

    if "down" not in module.keys or "up" not in module.keys:
        return "incomplete LoRA pair (needs both lora_down/lora_A and lora_up/lora_B)", True
    layer = submodule(model, module.target)
    if layer is None:
        if _is_wan21_image_key(family, model, module.target):
            return NOT_APPLICABLE, False
        return f"no such module in the {MODEL_TITLES[family]} transformer", True
    base = _base_layer(layer)
    if not isinstance(base, torch.nn.Linear):
        return f"targets a {type(base).__name__}, not a linear layer (unsupported)", True
    down, up = tensors[module.keys["down"]], tensors[module.keys["up"]]
    if down.ndim != 2 or up.ndim != 2:  # 0 and 1 dimensions are refused when the file is read
        dims = max(down.ndim, up.ndim)
        return f"{MALFORMED_PAIR}: a tensor with {dims} dimensions, where a linear layer's LoRA is two matrices", True
    fits = (down.ndim == 2 and up.ndim == 2 and up.shape[1] == down.shape[0]
            and down.shape[1] == base.in_features and up.shape[0] == base.out_features)
    return None if fits else ("shape mismatch: made for a model of another size", True)


def _delta_problem(model, delta: LoraDelta, tensor, family: str) -> tuple[tuple[str, bool] | None, Any]:
    import torch

    param = _find_parameter(model, delta.target)
    if param is None:
        if _is_wan21_image_key(family, model, delta.target):
            return (NOT_APPLICABLE, False), None
        return (f"no such parameter in the {MODEL_TITLES[family]} transformer", True), None
    if not torch.count_nonzero(tensor):
        return (ZERO_DELTA, False), None
    quantized = _quantized_kind(param)
    if quantized:
        return (f"{QUANTIZED} ({quantized})", True), None
    if tensor.ndim != param.ndim:
        dims = f"{tensor.ndim} dimension" + ("s" if tensor.ndim != 1 else "")
        return (f"malformed delta: {dims} for a parameter with {param.ndim}", True), None
    if tuple(tensor.shape) != tuple(param.shape):
        return ("shape mismatch: made for a model of another size", True), None
    return None, param


def _delta_as_lora(model, lora: LoraFile, delta: LoraDelta, paired: set[str]) -> LoraModule | None:
    """A weight delta D (out x in) for a quantized linear layer, as a LoRA pair with an identity factor.

    B = I, A = D when out <= in (else A = I, B = D): rank min(out, in), e.g. 64 for Wan's head.head.diff
    (64 x 5120). It is loaded and scaled like any LoRA and never merged into the quantized weight;
    diffusers' converter does the same for head.head.diff. Not possible when the layer already takes a
    LoRA pair from this file (one adapter, one pair per layer)."""
    import torch

    module_path = delta.target.rpartition(".")[0]
    layer = submodule(model, module_path)
    tensor = lora.tensors[delta.key]
    if delta.kind != "weight" or module_path in paired or not isinstance(_base_layer(layer), torch.nn.Linear):
        return None
    base = _base_layer(layer)
    if tuple(tensor.shape) != (base.out_features, base.in_features):
        return None
    out_f, in_f = tensor.shape
    down, up = (tensor, torch.eye(out_f, dtype=tensor.dtype)) if out_f <= in_f else \
        (torch.eye(in_f, dtype=tensor.dtype), tensor)
    keys = {"down": f"{delta.key}#as_lora_down", "up": f"{delta.key}#as_lora_up"}
    lora.tensors.setdefault(keys["down"], down)
    lora.tensors.setdefault(keys["up"], up)
    return LoraModule(delta.source, keys, target=module_path, from_delta=delta.key)


def _other_key_reason(key: str) -> str:
    if "dora_scale" in key:
        return "DoRA magnitude key (DoRA LoRAs are not supported)"
    if re.search(r"lora_te\d?_|text_encoder|text_model", key):
        return "text-encoder key (LoRAs apply to the transformer only)"
    return "not a LoRA key (no lora_down/lora_up, lora_A/lora_B, alpha or .diff suffix)"


def _is_wan21_image_key(family: str, model, target: str) -> bool:
    no_image_branch = getattr(model.config, "image_dim", None) is None
    return family == "wan" and no_image_branch and bool(WAN21_IMAGE_KEY.search(target))


def submodule(model, path: str):
    try:
        return model.get_submodule(path)
    except AttributeError:
        return None


def _base_layer(module):
    from peft.tuners.tuners_utils import BaseTunerLayer

    return module.get_base_layer() if isinstance(module, BaseTunerLayer) else module


def _find_parameter(model, target: str):
    """The tensor `target` names (e.g. blocks.0.scale_shift_table), looking through LoRA wrappers."""
    import torch

    module_path, _, attr = target.rpartition(".")
    module = submodule(model, module_path) if module_path else model
    if module is None:
        return None
    param = getattr(_base_layer(module), attr, None)
    return param if isinstance(param, torch.Tensor) else None


def _quantized_kind(param) -> str | None:
    """Why a delta cannot be added to this tensor, or None for a plain float tensor."""
    import torch

    quant_type = getattr(param, "quant_type", None)  # diffusers' GGUFParameter
    if quant_type is not None:
        return f"GGUF {getattr(quant_type, 'name', quant_type)}"
    if type(param) not in (torch.nn.Parameter, torch.Tensor) or not param.dtype.is_floating_point:
        return f"{type(param).__name__} {param.dtype}"
    return None


def is_quantized_model(model) -> bool:
    return getattr(model, "hf_quantizer", None) is not None or any(_quantized_kind(p) for p in model.parameters())


def refuse_incomplete(plan: SpecPlan, family: str, allow_partial: bool) -> None:
    """Nothing applied, or a LoRA for another model: always an error. Partly applied: unless allow_partial."""
    if plan.lora.looks_like_family not in (None, family):
        raise _wrong_model(plan, family)
    for expert in plan.experts:
        if not expert.applies_anything:
            raise _applies_to_nothing(plan, expert, family)
    for expert in plan.experts:
        lost = expert.lost()
        if lost and not allow_partial:
            raise _partial(plan, expert, family, lost)


def _applies_to_nothing(plan: SpecPlan, expert: ExpertPlan, family: str) -> CliError:
    lora, title = plan.lora, MODEL_TITLES[family]
    n = len(lora.modules)
    fix = _fix_for(family)
    if n == 0 and lora.deltas and all(r == ZERO_DELTA for (r, _) in expert.skipped):
        return CliError(f"{plan.spec.name} has no effect: it holds no LoRA modules and all its "
                        f"{len(lora.deltas)} weight deltas are zero", fix=fix)
    width, hidden = _lora_width(lora), _model_width(expert.model)
    if width and hidden and width != hidden:
        return CliError(f"{plan.spec.name} was made for a model of another size: its layers are {width} wide, "
                        f"the {title} transformer's are {hidden} (none of its {n} modules fit)", fix=fix)
    examples = ", ".join(k for keys in expert.skipped.values() for k in keys[:1])[:300]
    return CliError(f"{plan.spec.name} applies to nothing in the {role_name(expert.component, family)}: none of its "
                    f"{n} modules match the {title} transformer (e.g. {examples or 'no keys'})", fix=fix)


def _wrong_model(plan: SpecPlan, family: str) -> CliError:
    n, title = len(plan.lora.modules), MODEL_TITLES[family]
    matched = max(len(e.modules) for e in plan.experts)
    how_many = f"none of its {n} modules match" if matched == 0 else f"only {matched} of its {n} modules match"
    return CliError(f"{plan.spec.name} looks like a LoRA for {plan.lora.looks_like}, not {title}: {how_many} "
                    f"the {title} transformer", fix=_fix_for(family))


def _partial(plan: SpecPlan, expert: ExpertPlan, family: str, lost: dict[str, list[str]]) -> CliError:
    count = sum(len(keys) for keys in lost.values())
    total = plan.lora.key_count
    reasons = "; ".join(f"{len(keys)} {reason} (e.g. {keys[0]})" for reason, keys in lost.items())
    return CliError(f"{plan.spec.name} would apply only in part to the {role_name(expert.component, family)}: "
                    f"{count} of its {total} keys cannot be applied: {reasons}",
                    fix=f"use a LoRA made for {MODEL_TITLES[family]}, or load the rest anyway with "
                        f"{ALLOW_PARTIAL_HINT}")


def _fix_for(family: str) -> str:
    if family == "wan":
        return "use a LoRA made for Wan 2.2 I2V A14B (Wan 2.1 14B LoRAs also fit), or drop this --lora"
    return "use a LoRA made for Qwen-Image-Edit (2509/2511) or Qwen-Image, or drop this --lora"


def _lora_width(lora: LoraFile) -> int | None:
    widths = [int(lora.tensors[m.keys["down"]].shape[-1]) for m in lora.modules.values() if "down" in m.keys]
    return max(set(widths), key=widths.count) if widths else None


def _model_width(model) -> int | None:
    config = getattr(model, "config", None)
    if config is None:
        return None
    heads, dim = getattr(config, "num_attention_heads", None), getattr(config, "attention_head_dim", None)
    return heads * dim if heads and dim else None


def role_name(component: str, family: str) -> str:
    return EXPERT_ROLES.get(component, component) if family == "wan" else "transformer"


