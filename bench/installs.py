"""Full-size models with random weights, installed where the scripts look for models.

The scripts find their models in a Hugging Face cache (`--models-dir DIR` = HF_HOME) under the registry's
real repo ids and revisions (producer.modelfiles.models). `install` writes one there for a family and a GGUF form, as
`setup_diffusers.py --download --only <family>-components <family>-gguf-<q>` would leave it: the diffusers
folder with the text encoder, VAE, tokenizer (and Qwen's processor), scheduler and denoiser configs, and the
GGUF denoiser file(s) of the form. GGUF, because the bf16 denoisers do not fit the GPU machine's disk beside
their text encoder (Wan: 2 x 28.6 GB + 11.4 GB; Wan Q4_K_M: 2 x 9.4 GB).

How the weights are made (also written into each snapshot as `bench_random_weights.json`):
- text encoders, VAE: the real classes with the published configs (bench/fullsize.py), random
  initialisation, built on the GPU in bf16 and saved as safetensors;
- denoisers: the real class, every block linear replaced by random GGUF blocks of the type the published
  file has (Q4_K / Q6_K, or Q8_0), fixed scales for a trained model's spread (fullsize.quantize_like_gguf);
- tokenizer and processor: the tiny stand-ins' (producer.testing.standin_models): the real vocabularies cannot be
  downloaded here; token ids only select embedding rows, and prompts are padded (Wan: 512 tokens) or
  short, so the compute is the real model's.
`size="tiny"` writes the stand-in configs through the same code (the denoisers widened to 256-value rows
so K-quant blocks fit), marked as stand-ins (producer_standin.json) like every tiny model.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from pathlib import Path

import fullsize
import torch

HOW_MADE = "bench/installs.py (module doc): real classes and published configs, random weights"
RECORD = "bench_random_weights.json"
# Bytes an install takes on disk at full size (bf16 text encoder and VAE + the GGUF denoisers), for the
# free-space check before writing: Wan UMT5 11.4 GB + 2 x 9.4 GB Q4; Qwen2.5-VL 16.6 GB + ~12 GB Q4.
NEEDS_GB = {("wan", "gguf-q4"): 31, ("wan", "gguf-q8"): 43, ("qwen", "gguf-q4"): 30, ("qwen", "gguf-q8"): 39}


def entries(family: str, form: str):
    from producer.modelfiles import models

    return models.entries_for_form(family, form)  # (components, gguf)


def installed(home: Path, family: str, form: str) -> bool:
    """Both snapshots were written whole (the record is written last) and hold this form's files (the GGUF
    forms share a snapshot, which holds one form at a time)."""
    components, gguf = entries(family, form)
    files = [snapshot(home, gguf) / f for f in gguf.roles.values()]
    return all((snapshot(home, e) / RECORD).is_file() for e in (components, gguf)) and all(f.is_file() for f in files)


def snapshot(home: Path, entry) -> Path:
    from producer.testing import standins

    return standins.repo_cache_dir(Path(home) / "hub", entry.repo_id) / "snapshots" / standins.standin_revision(entry)


def make_room(home: Path, family: str, form: str, size: str) -> list[str]:
    """Remove the other families' installs under `home` when the disk cannot hold this one beside them."""
    if size == "tiny":
        return []
    need = NEEDS_GB.get((family, form), 45) * 1e9
    removed = []
    for other in ("wan", "qwen"):
        if other == family or shutil.disk_usage(home).free >= need:
            continue
        for entry in entries(other, "gguf-q4") + entries(other, "gguf-q8"):
            repo = snapshot(home, entry).parents[1]
            if repo.is_dir():
                shutil.rmtree(repo)
                removed.append(entry.repo_id)
    return sorted(set(removed))


def install(home: Path, family: str, form: str, size: str, device: str) -> dict:
    """Write the family's components and GGUF denoiser(s) of `form` into the cache at `home`/hub (skipped when
    there already); returns what was written, its bytes and the seconds it took."""
    home = Path(home)
    if installed(home, family, form):
        return {"family": family, "form": form, "written": False}
    started = time.perf_counter()
    home.mkdir(parents=True, exist_ok=True)
    removed = make_room(home, family, form, size)
    dtype = torch.float32 if size == "tiny" and device == "cpu" else torch.bfloat16
    components, gguf = entries(family, form)
    comp_dir, gguf_dir = snapshot(home, components), snapshot(home, gguf)
    files = {}
    if not (comp_dir / RECORD).is_file():  # shared by both GGUF forms: written once
        files.update(COMPONENTS[family](_fresh(comp_dir), size, device, dtype))
        _finish(comp_dir, components, size, form)
    files.update(DENOISERS[family](comp_dir, _fresh(gguf_dir), gguf.roles, form, size, device, dtype))
    _finish(gguf_dir, gguf, size, form)
    return {
        "family": family,
        "form": form,
        "written": True,
        "removed_first": removed,
        "files": files,
        "bytes": sum(files.values()),
        "seconds": round(time.perf_counter() - started, 1),
        "how": HOW_MADE,
    }


def _fresh(folder: Path) -> Path:
    if folder.exists():  # a half-written install (no record): written again whole
        shutil.rmtree(folder)
    folder.mkdir(parents=True)
    return folder


def _finish(folder: Path, entry, size: str, form: str) -> None:
    from producer.testing import standin_models, standins

    revision = folder.name
    (folder.parents[1] / "refs").mkdir(exist_ok=True)
    (folder.parents[1] / "refs" / "main").write_text(revision)
    if size == "tiny":  # a tiny model is a stand-in wherever it lies (the scripts read the marker's areas)
        _json(
            folder / standins.MARKER_NAME,
            {
                "standin": True,
                "format": standins.MARKER_FORMAT,
                "repo_id": entry.repo_id,
                "revision": revision,
                "seed": 0,
                "qwen_reference_area": standin_models.QWEN_REFERENCE_AREA,
                "qwen_condition_area": standin_models.QWEN_CONDITION_AREA,
            },
        )
    _json(
        folder / RECORD,
        {
            "how": __doc__.split("How the weights are made")[1].strip(),
            "size": size,
            "form": form,
            "repo_id": entry.repo_id,
            "written_by": HOW_MADE,
        },
    )


def _json(path: Path, data: dict) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(data, indent=1) + "\n")
    os.replace(tmp, path)


def _sizes(folder: Path) -> dict:
    return {p.relative_to(folder.parents[2]).as_posix(): p.stat().st_size for p in folder.rglob("*") if p.is_file()}


def _index(folder: Path, updates: dict) -> None:
    """model_index.json as the real repositories have it: the denoisers named (they are saved apart)."""
    path = folder / "model_index.json"
    _json(path, {**json.loads(path.read_text()), **updates})


def _wan_components(comp: Path, size: str, device: str, dtype) -> dict:
    """Text encoder first and alone on the GPU (then freed), then the VAE: the experts come after."""
    from diffusers import AutoencoderKLWan, UniPCMultistepScheduler, WanImageToVideoPipeline
    from producer.facts import registry
    from producer.testing import standin_models

    text_encoder = fullsize.umt5_encoder(size, device, dtype)
    text_encoder.save_pretrained(comp / "text_encoder", safe_serialization=True)
    del text_encoder
    _free()
    with torch.device(device):
        vae = AutoencoderKLWan(**(standin_models.WAN_VAE_CONFIG if size == "tiny" else {}))
    vae.to(torch.float32 if size == "tiny" else dtype)
    pipe = WanImageToVideoPipeline(
        tokenizer=standin_models.build_t5_tokenizer(),
        text_encoder=None,
        vae=vae.eval(),
        scheduler=UniPCMultistepScheduler(**standin_models.WAN_SCHEDULER_CONFIG),
        transformer=None,
        transformer_2=None,
        boundary_ratio=registry.WAN.boundary_ratio,
    )
    pipe.save_pretrained(comp, safe_serialization=True)
    _index(
        comp,
        {
            "text_encoder": ["transformers", "UMT5EncoderModel"],
            "tokenizer": ["transformers", "T5TokenizerFast"],
            "transformer": ["diffusers", "WanTransformer3DModel"],
            "transformer_2": ["diffusers", "WanTransformer3DModel"],
        },
    )
    return _sizes(comp)


def _wan_denoisers(comp: Path, gguf_dir: Path, roles: dict, form: str, size: str, device: str, dtype) -> dict:
    from producer.facts.registry import WAN_DENOISERS

    parts = fullsize.wan_components(size, device, dtype, wide=True)
    for seed, component in enumerate(WAN_DENOISERS):
        module = parts.pop(component)
        fullsize.quantize_like_gguf(module, form, dtype, seed)
        module.save_config(comp / component)
        fullsize.write_gguf_expert(module, gguf_dir / roles[component], form)
        del module
        _free()
    return _sizes(gguf_dir)


def _qwen_components(comp: Path, size: str, device: str, dtype) -> dict:
    from diffusers import AutoencoderKLQwenImage, FlowMatchEulerDiscreteScheduler, QwenImageEditPlusPipeline
    from producer.testing import standin_models

    tokenizer = standin_models.build_qwen_tokenizer()
    text_encoder = fullsize.qwen_vl_encoder(size, tokenizer, device, dtype)
    text_encoder.save_pretrained(comp / "text_encoder", safe_serialization=True)
    del text_encoder
    _free()
    with torch.device(device):
        vae = AutoencoderKLQwenImage(**(standin_models.QWEN_VAE_CONFIG if size == "tiny" else {}))
    vae.to(torch.float32 if size == "tiny" else dtype)
    pipe = QwenImageEditPlusPipeline(
        scheduler=FlowMatchEulerDiscreteScheduler.from_config(standin_models.QWEN_SCHEDULER_CONFIG),
        vae=vae.eval(),
        text_encoder=None,
        tokenizer=tokenizer,
        processor=standin_models.build_qwen_processor(tokenizer),
        transformer=None,
    )
    pipe.save_pretrained(comp, safe_serialization=True)
    _index(
        comp,
        {
            "text_encoder": ["transformers", "Qwen2_5_VLForConditionalGeneration"],
            "transformer": ["diffusers", "QwenImageTransformer2DModel"],
        },
    )
    return _sizes(comp)


def _qwen_denoisers(comp: Path, gguf_dir: Path, roles: dict, form: str, size: str, device: str, dtype) -> dict:
    module = fullsize.qwen_components(size, device, dtype, wide=True)["transformer"]
    fullsize.quantize_like_gguf(module, form, dtype, 0)
    module.save_config(comp / "transformer")
    fullsize.write_gguf_expert(module, gguf_dir / roles["transformer"], form, arch="qwen_image")
    return _sizes(gguf_dir)


COMPONENTS = {"wan": _wan_components, "qwen": _qwen_components}
DENOISERS = {"wan": _wan_denoisers, "qwen": _qwen_denoisers}


def _free() -> None:
    import gc

    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
