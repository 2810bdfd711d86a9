"""Which registry entries a machine needs: the weight form each script's memory plan calls for.

`setup_diffusers.py --download` asks the plan with `installed=None` (any form may be downloaded) and
fetches that form's entries plus the step-distill LoRAs. `--check` asks it the way the generation
scripts do, narrowed to the forms already complete on disk, and reports whether those are there.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from producer.facts import registry
from producer.facts.hardware import GiB, Hardware
from producer.modelfiles import lora_sizes, models
from producer.sizing import memory

# The demo's time: measured 13 s on 2 idle cores (several times that while other jobs share them).
# README.md, SKILL.md, `production.py --help` and setup's verdicts quote it (tests/test_contract.py checks).
DEMO_TIME = "about 15 s on 2 idle CPU cores"
FAMILIES = ("wan", "qwen")
SCRIPTS = {"wan": "wan_video.py", "qwen": "qwen_image.py"}
DISTILL_LORAS = {"wan": "wan-lightning", "qwen": "qwen-lightning"}
# Optional extras for --download-all: other paths of the workflow, not needed for the default one.
OPTIONAL = ("wan21-lightx2v", "qwen-anypose", "qwen-image-t2i", "qwen-controlnet-union", "openpose-annotators",
            "dinov2-small")
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
    # the step-distill LoRA that comes with every download; GGUF forms keep its factors (memory.denoiser_bytes)
    model = replace(models.footprint(family, snap), adapter_params=lora_sizes.entry_params(DISTILL_LORAS[family]))
    plan = memory.plan_memory(hw, model, work, weights=weights, installed=installed)
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


# ---------------------------------------------------------------- what this machine can do


DEMO_COMMAND = "python scripts/production.py demo /tmp/lighthouse"
REHEARSE_COMMAND = "python scripts/production.py rehearse DIR"
# What runs on any machine, real models or not: the verdicts name these first when the real models cannot run.
WITHOUT_MODELS = (f"{DEMO_COMMAND}  (the whole workflow on tiny stand-in models, {DEMO_TIME})",
                  f"{REHEARSE_COMMAND}  (your own production's plan on stand-ins, every phase, results marked "
                  "as a rehearsal)")


def reach(hw: Hardware, complete: set[str], plans: dict[str, FamilyNeed]) -> dict[str, FamilyNeed]:
    """Per family, the plan a download would serve: the installed model's own when it fits (its configs are
    here: stand-ins stay stand-ins, a repair keeps the form), else the best any form could do."""
    def served(family: str) -> FamilyNeed:
        installed = any(n in complete for n in CONFIG_ENTRIES[family]) and plans[family].plan.fits
        return plans[family] if installed else family_need(family, hw, None)

    return {family: served(family) for family in FAMILIES}


def shortfalls(hw: Hardware, plans: dict[str, FamilyNeed]) -> list[dict]:
    """Per script whose plan does not fit: which memory it lacks and by how much (GiB, rounded up)."""
    out = []
    for need in plans.values():
        plan = need.plan
        if plan.fits:
            continue
        for what, wanted, have in (("VRAM", plan.peak_vram, hw.vram_total), ("RAM", plan.peak_ram, hw.ram_total)):
            if wanted > have:
                out.append({"script": need.script, "memory": what, "need_gib": _gib(wanted), "have_gib": _gib(have),
                            "short_gib": _gib(wanted - have)})
    return out


def _gib(n: int) -> float:
    return round(n / GiB, 1)


def cannot_run(hw: Hardware, plans: dict[str, FamilyNeed]) -> str:
    """The verdict when even the download plan does not fit: what is lacking, per script, and by how much."""
    lacks = "; ".join(f"{s['script']} needs ~{s['need_gib']:.0f} GiB of {s['memory']} (this machine has "
                      f"{s['have_gib']:.0f}, {s['short_gib']:.0f} short)" for s in shortfalls(hw, plans))
    if hw.has_gpu:
        tier = "more memory (SETUP.md, Memory tiers)"
    else:
        cpu_ram = max(need.plan.peak_ram for need in plans.values()) / GiB
        tier = (f"a GPU with 10 GB of VRAM and 32 GB of RAM (SETUP.md, What you need), or ~{cpu_ram:.0f} GiB of "
                "RAM to run on the CPU alone, at hours per picture or clip")
    return (f"this machine ({hw.describe()}) can run the demo and rehearsals on stand-in models, not the real "
            f"models: {lacks}. The real models need {tier}; downloading them here would not help")


def download_bytes(names: list[str], complete: set[str]) -> int:
    """Bytes a download of these entries still has to fetch (registry sizes, approximate for some)."""
    return sum(registry.get(n).size_bytes for n in names if n not in complete)


def download_advice(hw: Hardware, lacking: list[str], complete: set[str], suffix: str = "") -> tuple[str, str]:
    """(what to say, the command) for models this machine lacks: the download when it fits the disk, else a
    smaller weight form whose memory plans fit and whose download fits, else no download at all."""
    from producer.modelfiles.install import human_bytes

    need = download_bytes(lacking, complete)
    if need <= hw.disk_free:
        return f"the download (~{human_bytes(need)}) fits the disk", "python scripts/setup_diffusers.py --download" + suffix
    room = f"the download needs ~{human_bytes(need)} and the models' disk has {human_bytes(hw.disk_free)} free"
    for weights in ("gguf-q8", "gguf-q4"):
        if not all(family_need(family, hw, None, weights).plan.fits for family in FAMILIES):
            continue
        size = download_bytes(download_names(hw, weights), complete)
        if size <= hw.disk_free:
            return (f"{room}: the {weights} weights (~{human_bytes(size)}) fit",
                    f"python scripts/setup_diffusers.py --download --weights {weights}" + suffix)
    return (f"{room}, and no smaller weight form fits either: free disk space, or put the models on a bigger disk "
            "with --models-dir DIR (the demo and rehearsals need no download)"), DEMO_COMMAND
