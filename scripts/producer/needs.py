"""Which registry entries a machine needs: the weight form each script's memory plan calls for.

`setup_diffusers.py --download` asks the plan with `installed=None` (any form may be downloaded) and
fetches that form's entries plus the step-distill LoRAs. `--check` asks it the way the generation
scripts do, narrowed to the forms already complete on disk, and reports whether those are there.
"""

from __future__ import annotations

from dataclasses import dataclass

from . import memory, models, registry
from .hardware import Hardware

FAMILIES = ("wan", "qwen")
SCRIPTS = {"wan": "wan_video.py", "qwen": "qwen_image.py"}
DISTILL_LORAS = {"wan": "wan-lightning", "qwen": "qwen-lightning"}
# Optional extras for --download-all: other paths of the workflow, not needed for the default one.
OPTIONAL = ("wan21-lightx2v", "qwen-anypose", "qwen-image-t2i", "qwen-controlnet-union", "openpose-annotators")
# Entries whose snapshot holds the family's configs (for exact parameter counts, see models.footprint).
CONFIG_ENTRIES = {"wan": ("wan-i2v", "wan-i2v-components"), "qwen": ("qwen-edit", "qwen-edit-components")}


def workload(family: str) -> tuple[memory.Workload, str]:
    """The scripts' default job: a 480p clip of 81 frames; a 1024x1024 keyframe from one reference."""
    if family == "wan":
        width, height = registry.WAN.presets["480p"]
        frames = registry.WAN.frames
        return memory.wan_workload(width, height, frames), f"{width}x{height}, {frames} frames"
    width, height = registry.QWEN.default_size
    return memory.qwen_workload(width, height, 1), f"{width}x{height}, 1 reference"


@dataclass(frozen=True)
class FamilyNeed:
    family: str
    script: str
    workload: str
    plan: memory.MemoryPlan
    form: str  # the weight form whose entries the plan needs
    names: tuple[str, ...]  # registry entries: the form's files plus the step-distill LoRA

    def to_dict(self) -> dict:
        return {"family": self.family, "script": self.script, "workload": self.workload, "form": self.form,
                "entries": list(self.names), "plan": self.plan.to_dict()}


def family_need(family: str, hw: Hardware, complete: set[str] | None, weights: str = "auto") -> FamilyNeed:
    """complete=None: plan for a download (any form); else plan as the scripts will, from the complete entries."""
    installed = None if complete is None else frozenset(
        form for form, names in models.FORMS[family].items() if set(names) <= complete)
    snap = _config_snapshot(family, complete)
    work, described = workload(family)
    plan = memory.plan_memory(hw, models.footprint(family, snap), work, weights=weights, installed=installed)
    form = "bf16" if plan.weights == "fp32" else plan.weights  # fp32 is bf16 files computed in fp32 (CPU)
    names = tuple(e.name for e in models.entries_for_form(family, form)) + (DISTILL_LORAS[family],)
    return FamilyNeed(family, SCRIPTS[family], described, plan, form, names)


def _config_snapshot(family: str, complete: set[str] | None):
    for name in CONFIG_ENTRIES[family]:
        if complete is not None and name in complete:
            return models.snapshot_dir(registry.get(name))
    return None


def download_names(hw: Hardware, weights: str = "auto", everything: bool = False) -> list[str]:
    """What `--download` fetches on this machine (`everything`: --download-all)."""
    names: list[str] = []
    for family in FAMILIES:
        names.extend(family_need(family, hw, None, weights).names)
    if everything:
        names.extend(OPTIONAL)
    return list(dict.fromkeys(names))
