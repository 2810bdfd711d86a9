"""The LoRA load report: per file and per expert, what was applied and what was skipped, and why."""

from __future__ import annotations

import logging
import math
from dataclasses import asdict, dataclass, field
from typing import Any

from producer.engines.loras.lora_plan import SpecPlan, role_name

log = logging.getLogger("producer")

# ---------------------------------------------------------------- the report


@dataclass
class Skipped:
    reason: str
    lost: bool  # True: it would have changed the model and did not; False: no effect or not applicable
    count: int = 0
    examples: list[str] = field(default_factory=list)


@dataclass
class ExpertReport:
    component: str  # transformer | transformer_2
    role: str  # high-noise expert | low-noise expert | transformer
    strength: float
    lora_modules: int  # A/B pairs in the file
    lora_modules_applied: int  # verified in the loaded adapter
    deltas: int  # .diff / .diff_b / .diff_m tensors in the file
    deltas_applied: int
    skipped: list[Skipped] = field(default_factory=list)
    fused: bool = False
    folded: bool = False  # into the weights a GGUF layer dequantizes at each call; unloading takes it out

    @property
    def lost(self) -> int:
        return sum(s.count for s in self.skipped if s.lost)

    @property
    def partial(self) -> bool:
        return self.lost > 0


@dataclass
class LoraFileReport:
    name: str
    path: str
    adapter_name: str | None  # None when the file holds deltas only
    key_format: str
    looks_like: str | None  # the model its key names point at
    ranks: list[int]
    alphas: list[float]  # stored alphas; empty when the file has none (alpha = rank)
    scales: list[float]  # alpha / rank, what a loader that honours alpha multiplies by
    experts: list[ExpertReport]


@dataclass
class LoraReport:
    family: str
    loras: list[LoraFileReport] = field(default_factory=list)
    # Originals of the parameters that deltas changed, to restore them exactly (not part of to_dict).
    _originals: list[tuple[Any, Any]] = field(default_factory=list, repr=False, compare=False)
    _adapters: list[str] = field(default_factory=list, repr=False, compare=False)
    # components with LoRAs this load folded, and the adapter names it folded them as
    _folded: dict[str, list[str]] = field(default_factory=dict, repr=False, compare=False)
    # per folded component: how to fold its LoRAs again into a fresh copy (lora_refold.Refold, or None)
    _refolds: dict[str, Any] = field(default_factory=dict, repr=False, compare=False)

    @property
    def fused(self) -> bool:
        return any(e.fused for lora in self.loras for e in lora.experts)

    def to_dict(self) -> dict:
        out = {"family": self.family, "loras": []}
        for lora in self.loras:
            d = asdict(lora)
            for expert, data in zip(lora.experts, d["experts"]):
                data.update(partial=expert.partial, lost=expert.lost)
            out["loras"].append(d)
        return out

    def describe(self) -> str:
        return "\n".join(_describe_lora(lora) for lora in self.loras)


def report_from_dict(data: dict) -> LoraReport:
    """The report `LoraReport.to_dict` gave (as engines/loras/lora_store keeps it)."""
    def expert(e: dict) -> ExpertReport:
        fields = {k: v for k, v in e.items() if k not in ("partial", "lost", "skipped")}
        return ExpertReport(**fields, skipped=[Skipped(**s) for s in e["skipped"]])

    loras = [LoraFileReport(**{**d, "experts": [expert(e) for e in d["experts"]]}) for d in data["loras"]]
    return LoraReport(data["family"], loras)


def _describe_lora(lora: LoraFileReport) -> str:
    scale = _describe_scale(lora)
    lines = [f"LoRA {lora.name}: {lora.key_format}; {scale}"]
    for e in lora.experts:
        fused = ", fused" if e.fused else ", folded into the GGUF weights" if e.folded else ""
        where = e.role if e.role == e.component else f"{e.role} ({e.component})"
        lines.append(f"  {where} at strength {e.strength:g}{fused}: "
                     f"{e.lora_modules_applied}/{e.lora_modules} LoRA modules, "
                     f"{e.deltas_applied}/{e.deltas} weight deltas applied")
        for s in e.skipped:
            lines.append(f"    {'LOST' if s.lost else 'skipped'}: {s.count} key(s), {s.reason} "
                         f"(e.g. {', '.join(s.examples)})")
    return "\n".join(lines)


def _describe_scale(lora: LoraFileReport) -> str:
    ranks = "/".join(str(r) for r in lora.ranks) or "-"
    if not lora.ranks:
        return "no LoRA modules (weight deltas only)"
    if not lora.alphas:
        return f"rank {ranks}, no alpha stored (alpha = rank, scale 1)"
    alphas = "/".join(f"{a:g}" for a in lora.alphas)
    scales = "/".join(f"{s:g}" for s in lora.scales)
    return f"rank {ranks}, alpha {alphas} -> scale alpha/rank = {scales}"


# ---------------------------------------------------------------- the report


def file_report(plan: SpecPlan, family: str) -> LoraFileReport:
    lora, tensors = plan.lora, plan.lora.tensors
    pairs = [m for m in lora.modules.values() if "down" in m.keys and "up" in m.keys]
    alphas = sorted({a for m in pairs if (a := m.alpha(tensors)) is not None})
    experts = [ExpertReport(
        component=e.component, role=role_name(e.component, family), strength=e.strength,
        lora_modules=e.module_count, lora_modules_applied=sum(1 for m in e.modules if not m.from_delta),
        deltas=e.delta_count, deltas_applied=len(e.deltas) + sum(1 for m in e.modules if m.from_delta),
        fused=e.fused, folded=e.folded,
        skipped=[Skipped(reason, lost, len(keys), keys[:3]) for (reason, lost), keys in e.skipped.items()],
    ) for e in plan.experts]
    return LoraFileReport(
        name=plan.spec.name, path=str(plan.spec.path), adapter_name=plan.adapter_name if plan.has_modules else None,
        key_format=lora.key_format, looks_like=lora.looks_like, ranks=sorted({m.rank(tensors) for m in pairs}),
        alphas=alphas, scales=sorted({round(m.scale(tensors), 6) for m in pairs}), experts=experts)


def log_lora(lora: LoraFileReport) -> None:
    for line in _describe_lora(lora).splitlines():
        log.log(logging.WARNING if line.lstrip().startswith("LOST") else logging.INFO, line)


def warn_alpha_given_as_strength(plan: SpecPlan) -> None:
    scales = {m.scale(plan.lora.tensors) for e in plan.experts for m in e.modules if not m.from_delta}
    if len(scales) != 1 or math.isclose(next(iter(scales)), 1.0):
        return
    scale = next(iter(scales))
    for expert in plan.experts:
        if math.isclose(expert.strength, scale, rel_tol=1e-3):
            log.warning(f"{plan.spec.name}: strength {expert.strength:g} equals the file's alpha/rank ({scale:g}); "
                        f"this loader already applies alpha/rank, so the LoRA acts at {expert.strength * scale:g}. "
                        f"Use 1.0 here; {scale:g} is the value for tools that ignore alpha.")

