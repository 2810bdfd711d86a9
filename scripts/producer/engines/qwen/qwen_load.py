"""Where a Qwen session's weights are, in which form they load, and the loading itself.

Nothing here runs a model: `model_files` locates (never downloads) the files of the weight form the
memory plan chose, and `load_session` builds the pipeline without its denoiser, which loads after the
prompts are encoded (see producer.engines.qwen.qwen). A missing model is a CliError naming the setup command.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path

from producer.engines.qwen.qwen import QwenSession, areas_for
from producer.errors import CliError, ExitCode
from producer.facts import registry
from producer.modelfiles import models
from producer.sizing.memory import ComponentPlan, MemoryPlan, Placement

GGUF_FORMS = ("gguf-q8", "gguf-q4")



def any_installed_snapshot(kind: str = "edit") -> Path:
    """A snapshot with the configs (for the plan's footprint), before the weight form is chosen."""
    names = ("qwen-edit", "qwen-edit-components") if kind == "edit" else ("qwen-image-t2i",)
    for name in names:
        snap = models.snapshot_dir(registry.get(name))
        if snap is not None and models.is_present(registry.get(name)):
            return snap
    if kind == "edit":
        raise CliError("Qwen-Image-Edit-2511 is not installed in " + str(models.hub_cache()),
                       f"download it: {models.setup_command('qwen-edit')}  (or, for machines with little RAM, "
                       f"{models.setup_command('qwen-edit-components', 'qwen-edit-gguf-q4')}); or point "
                       "--models-dir at the folder that holds it", ExitCode.MISSING_MODEL)
    return models.locate(registry.get("qwen-image-t2i"))


def resolve_weights(plan: MemoryPlan, requested: str, installed: frozenset[str]) -> MemoryPlan:
    """The plan with the weight form that will be loaded.

    On a CPU the plan keeps tiny models in fp32 whatever --weights says; an explicit --weights still
    decides which files are loaded (fp8 storage, GGUF), so the flag is never ignored."""
    if requested == "auto" or plan.weights == requested:
        return plan
    component = plan.components["transformer"]
    components = {**plan.components, "transformer": ComponentPlan(component.placement, requested)}
    return replace(plan, weights=requested, components=components,
                   notes=plan.notes + (f"--weights {requested} loaded as asked (the CPU plan alone keeps fp32)",))


def files_form(weights: str) -> str:
    """The registry form whose files hold these weights (fp32/bf16/fp8 all come from the bf16 repo)."""
    return weights if weights in GGUF_FORMS else "bf16"


@dataclass(frozen=True)
class ModelFiles:
    """Where a session's weights are, and what outputs record about them (repo, commit, form)."""

    kind: str  # edit | controlnet
    snapshot: Path
    info: dict
    gguf: Path | None = None
    controlnet: Path | None = None


def model_files(kind: str, weights: str) -> ModelFiles:
    """Locate (never load) the files of a session; a missing one is a CliError naming the setup command."""
    if kind == "controlnet":
        base, union = registry.get("qwen-image-t2i"), registry.get("qwen-controlnet-union")
        snap, union_snap = models.locate(base), models.locate(union)
        info = {"repo": base.repo_id, "commit": snap.name, "weights": weights,
                "controlnet": {"repo": union.repo_id, "commit": union_snap.name}}
        return ModelFiles(kind, snap, info, controlnet=union_snap)
    form = files_form(weights)
    entries = models.entries_for_form("qwen", form)
    snap = models.locate(entries[0])
    info = {"repo": entries[0].repo_id, "commit": snap.name, "weights": weights}
    gguf = models.locate_file(entries[1], "transformer") if form in GGUF_FORMS else None
    if gguf is not None:
        info["transformer_file"] = {"repo": entries[1].repo_id, "commit": gguf.parent.name, "file": gguf.name}
    return ModelFiles(kind, snap, info, gguf=gguf)


def load_session(files: ModelFiles, plan: MemoryPlan, device=None, **kwargs) -> QwenSession:
    """The pipeline without its denoiser: the transformer (and ControlNet) load after the prompts are encoded.

    Edit: Qwen-Image-Edit-2511 (bf16 repo, fp8 storage from it, or a GGUF transformer with the repo's
    configs). ControlNet: Qwen-Image (text-to-image) + the ControlNet Union, for pose-guided text-to-image."""
    from diffusers import (
        QwenImageControlNetModel,
        QwenImageControlNetPipeline,
        QwenImageEditPlusPipeline,
        QwenImageTransformer2DModel,
    )

    from producer.sizing import gguf_host, offload

    dtype = offload.torch_dtype(plan.dtype)
    snap = files.snapshot

    def load_denoiser() -> dict:
        if files.gguf is not None:
            placement = plan.components["transformer"].placement
            on_gpu = gguf_host.kept_on_gpu(plan, "transformer", registry.QWEN_BLOCK_LIST, device or plan.device)
            transformer = gguf_host.load_gguf(
                QwenImageTransformer2DModel, files.gguf, snap, "transformer", dtype, placement is not Placement.GPU,
                on_gpu, gguf_host.streams_in_place(plan, "transformer", device or plan.device))
        else:
            transformer = QwenImageTransformer2DModel.from_pretrained(snap, subfolder="transformer", dtype=dtype,
                                                                      use_safetensors=True)
        if files.kind == "edit":
            return {"transformer": transformer}
        return {"transformer": transformer, "controlnet": QwenImageControlNetModel.from_pretrained(
            files.controlnet, dtype=dtype, use_safetensors=True)}

    models.refuse_pickled_weights(snap, files.controlnet)  # and use_safetensors=True: a pickle is never opened
    if files.kind == "edit":
        pipe = QwenImageEditPlusPipeline.from_pretrained(snap, transformer=None, dtype=dtype, use_safetensors=True)
    else:
        pipe = QwenImageControlNetPipeline.from_pretrained(snap, transformer=None, controlnet=None, dtype=dtype,
                                                           use_safetensors=True)
    return QwenSession(pipe, plan, device, files.kind, areas_for(snap), files.info, load_denoiser, **kwargs)
