"""What of Wan 2.2 I2V A14B is installed here, and the memory plan for a run. No torch at import.

`plan_for` plans a run (a batch: its largest clip) from the installed configs; `locate_files` finds the
files of the weight form the plan chose. producer.engines.wan.wan loads them.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from pathlib import Path

from producer.errors import CliError, ExitCode
from producer.facts import registry
from producer.modelfiles import models
from producer.sizing import memory

DENOISERS = registry.WAN_DENOISERS


@dataclass(frozen=True)
class WanFiles:
    """The installed files for one weight form."""

    snapshot: Path  # the diffusers folder: configs, tokenizer, text encoder, VAE (and bf16 experts)
    weights: str  # bf16 | fp8 | fp32 | gguf-q8 | gguf-q4
    gguf: dict[str, Path] | None = None  # expert -> .gguf file
    provenance: dict = field(default_factory=dict)


def locate_files(weights: str) -> WanFiles:
    """Find the files of a weight form (fp32, used for tiny models on a CPU, reads the bf16 repo)."""
    form = "bf16" if weights == "fp32" else weights
    entries = models.entries_for_form("wan", form)
    snapshot = models.locate(entries[0])
    prov = {"repo": entries[0].repo_id, "revision": snapshot.name, "weights": weights}
    if not form.startswith("gguf"):
        return WanFiles(snapshot, weights, None, prov)
    gguf = {c: models.locate_file(entries[1], c) for c in DENOISERS}
    prov["gguf"] = {"repo": entries[1].repo_id, "revision": models.snapshot_dir(entries[1]).name,
                    "files": [entries[1].roles[c] for c in DENOISERS]}
    return WanFiles(snapshot, weights, gguf, prov)


def components_snapshot() -> Path:
    """The diffusers folder every form needs (configs, text encoder, VAE), for the plan's footprint."""
    entry = registry.get("wan-i2v-components")
    try:
        return models.locate(entry)
    except CliError:
        raise CliError(f"Wan 2.2 I2V A14B is not installed in {models.hub_cache()}",
                       f"download it: {models.setup_command('wan-i2v')}  (small machines: "
                       f"{models.setup_command('wan-i2v-components', 'wan-i2v-gguf-q4')}); or point --models-dir "
                       "at the folder that holds it", ExitCode.MISSING_MODEL) from None


def plan_for(hw, snapshot: Path, workloads: list[memory.Workload], offload_choice: str,
             weights: str, adapter_params: int = 0) -> memory.MemoryPlan:
    """The memory plan for the largest workload of the run (a batch is planned once); `adapter_params`: each
    expert's LoRA factors (lora_files.adapter_params), which GGUF experts keep."""
    work = memory.Workload(tokens=max(w.tokens for w in workloads),
                           decode_pixels=max(w.decode_pixels for w in workloads))
    footprint = replace(models.footprint("wan", snapshot), adapter_params=adapter_params)
    plan = memory.plan_memory(hw, footprint, work, offload_choice, weights, models.installed_forms("wan"))
    if plan.placement is memory.Placement.CPU and weights not in ("auto", plan.weights):
        # The CPU plan keeps tiny models (the stand-ins) in fp32 whatever was asked; a forced form is honoured
        # (computed in the plan's dtype) so that e.g. GGUF experts can be exercised on any machine.
        components = {k: replace(v, weights=weights) if k in DENOISERS else v for k, v in plan.components.items()}
        plan = replace(plan, weights=weights, components=components)
    return plan
