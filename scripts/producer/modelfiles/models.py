"""Where the registry's models are on this machine, and what they weigh.

Models live in the Hugging Face cache (`HF_HOME`, or `--models-dir`) under their real repo ids and
the registry's revisions, so `from_pretrained` works offline. Nothing here downloads: a missing model
is a CliError that names the `setup_diffusers.py` command that fetches it.
"""

from __future__ import annotations

import json
import os
from dataclasses import replace
from pathlib import Path

from producer.errors import CliError, ExitCode, missing
from producer.facts import registry
from producer.files.provenance import model_refs
from producer.modelfiles import install
from producer.modelfiles.cache import (
    hub_cache,
    matching_files,
    repo_folder,
    setup_command,
    snapshot_dir,
    snapshot_files,
)
from producer.sizing.memory import QWEN_FOOTPRINT, WAN_FOOTPRINT, ModelFootprint

STANDIN_MARKER = "producer_standin.json"

# Which registry entries make up each weight form of a family.
FORMS = {
    "wan": {"bf16": ("wan-i2v",), "fp8": ("wan-i2v",), "gguf-q8": ("wan-i2v-components", "wan-i2v-gguf-q8"),
            "gguf-q4": ("wan-i2v-components", "wan-i2v-gguf-q4")},
    "qwen": {"bf16": ("qwen-edit",), "fp8": ("qwen-edit",), "gguf-q8": ("qwen-edit-components", "qwen-edit-gguf-q8"),
             "gguf-q4": ("qwen-edit-components", "qwen-edit-gguf-q4")},
}


def models_home(models_dir: str) -> Path:
    """The folder `--models-dir` names, resolved (HF_HOME layout: the models sit in its `hub`)."""
    if "\0" in models_dir:
        raise CliError(f"--models-dir {models_dir!r} {missing(models_dir)}", "give the folder itself")
    try:
        home = Path(models_dir).expanduser().resolve()
    except RuntimeError:  # "~someone" with no such user, or a symlink loop
        if not models_dir.startswith("~"):
            raise CliError(f"--models-dir {models_dir} {missing(models_dir)}", "give the folder itself") from None
        raise CliError(f"--models-dir {models_dir}: no such user's home folder", "give the folder itself") from None
    try:
        str(home).encode("utf-8")
    except UnicodeEncodeError:  # a name with bytes that are not UTF-8 (Linux allows them)
        raise CliError(f"--models-dir {home}: the path is not valid UTF-8, and safetensors and tokenizers open "
                       "UTF-8 paths only (the model would fail to load after the checks)",
                       "rename the folder, or give a symlink to it whose path is UTF-8") from None
    return home


def use_models_dir(models_dir: str | None) -> None:
    """`--models-dir DIR` means HF_HOME=DIR for this process.

    huggingface_hub reads its paths when imported, so its constants are updated too.
    """
    if not models_dir:
        return
    home = models_home(models_dir)
    os.environ["HF_HOME"] = str(home)
    os.environ.pop("HF_HUB_CACHE", None)
    os.environ.pop("HUGGINGFACE_HUB_CACHE", None)
    from huggingface_hub import constants

    constants.HF_HOME = str(home)
    constants.HF_HUB_CACHE = str(home / "hub")


def _has_files(snap: Path, entry: registry.ModelEntry) -> bool:
    """Every literal file of the entry is there and its patterns select something.

    (Whether each file is complete is setup_diffusers.py's business: it records sizes at download.)
    """
    files = snapshot_files(snap)
    literals = [f for f in entry.files if not any(c in f for c in "*?[")]
    return all((snap / f).is_file() for f in literals) and bool(matching_files(files, entry.files))


def is_present(entry: registry.ModelEntry) -> bool:
    """Installed and complete. With an install record (setup_diffusers.py writes one once every file has
    arrived and been verified), the files must match it. Entries sharing a repo share its snapshot, so
    when another entry of the same repo is recorded, an unrecorded entry is not installed even if its
    patterns match some files (the components' configs match `transformer/*`). Only a repo that
    setup_diffusers.py never touched (files from another tool) is judged by its files alone."""
    if install.read_record(entry.name) is not None:
        return install.entry_status(entry).complete
    if any(install.read_record(e.name) for e in registry.entries() if e.repo_id == entry.repo_id):
        return False
    snap = snapshot_dir(entry)
    return snap is not None and _has_files(snap, entry)


def locate(entry: registry.ModelEntry) -> Path:
    snap = snapshot_dir(entry)
    if snap is None or not is_present(entry):
        raise CliError(f"{entry.title} ({entry.repo_id}) is not installed in {hub_cache()}",
                       fix=f"download it: {setup_command(entry.name)}  (or point --models-dir / HF_HOME at the "
                           "folder that holds it)", code=ExitCode.MISSING_MODEL)
    return snap


def locate_file(entry: registry.ModelEntry, role: str) -> Path:
    path = locate(entry) / entry.roles[role]
    if not path.is_file():
        raise CliError(f"{path.name} of {entry.repo_id} is missing", fix=setup_command(entry.name),
                       code=ExitCode.MISSING_MODEL)
    return path


# Files that torch.load would unpickle; unpickling can run any code the file's author wrote.
PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt", ".pkl", ".pickle")


def refuse_pickled_weights(*folders: Path | None) -> None:
    """Weights load from safetensors or GGUF only (the loaders pass use_safetensors=True, so a pickle is never
    opened); a model folder whose weights exist only as pickles is refused here with the reason, not with the
    loader's "no file named ... found"."""
    for snap in filter(None, folders):
        for folder in [snap, *(p for p in sorted(snap.iterdir()) if p.is_dir())]:
            files = [p for p in folder.iterdir() if p.is_file()]
            pickles = [p.name for p in files if p.suffix.lower() in PICKLE_SUFFIXES]
            if pickles and not any(p.suffix in (".safetensors", ".gguf") for p in files):
                raise CliError(f"{folder} holds its weights as pickle files ({', '.join(sorted(pickles)[:3])}); "
                               "pickles can run arbitrary code when loaded, so weights are read from .safetensors "
                               "or GGUF only", "install the model with setup_diffusers.py --download (safetensors)",
                               ExitCode.FAILED)


def installed_forms(family: str) -> frozenset[str]:
    return frozenset(form for form, names in FORMS[family].items()
                     if all(is_present(registry.get(n)) for n in names))


def entries_for_form(family: str, form: str) -> tuple[registry.ModelEntry, ...]:
    return tuple(registry.get(n) for n in FORMS[family][form])


def standin_facts(snap: str | os.PathLike) -> dict | None:
    """The marker the tiny test models carry (facts in which they differ from the real model), or None."""
    marker = Path(snap) / STANDIN_MARKER
    if not marker.is_file():
        return None
    facts = json.loads(marker.read_text())
    return facts if isinstance(facts, dict) and facts.get("standin") is True else None


# ---------------------------------------------------------------- sizes from the installed configs


def made_on_standins(model: dict) -> bool:
    """Whether a recipe's model part names a snapshot that is a stand-in (its marker file is there)."""
    for repo, commit in model_refs(model):
        snap = repo_folder(repo) / "snapshots" / str(commit)
        if snap.is_dir() and standin_facts(snap) is not None:
            return True
    return False


def footprint(family: str, snap: Path | None) -> ModelFootprint:
    """Parameter counts from the installed configs (exact for the real models and the stand-ins alike);
    the registry's published counts when nothing is installed yet."""
    base = WAN_FOOTPRINT if family == "wan" else QWEN_FOOTPRINT
    if snap is None:
        return base
    transformer = _count_params(snap, "transformer")
    if transformer is None:
        return base
    text = _count_params(snap, "text_encoder") or base.text_encoder_params
    vae = _count_params(snap, "vae") or base.vae_params
    blocks = _config(snap, "transformer").get("num_layers", base.denoiser_blocks)
    hidden = _hidden(snap) or base.hidden
    return replace(base, denoiser_params=transformer, denoiser_blocks=blocks, hidden=hidden,
                   text_encoder_params=text, vae_params=vae)


def _config(snap: Path, sub: str) -> dict:
    path = snap / sub / "config.json"
    return json.loads(path.read_text()) if path.is_file() else {}


def _hidden(snap: Path) -> int | None:
    cfg = _config(snap, "transformer")
    if "num_attention_heads" in cfg and "attention_head_dim" in cfg:
        return cfg["num_attention_heads"] * cfg["attention_head_dim"]
    return None


def _count_params(snap: Path, sub: str) -> int | None:
    """Build the component on the meta device from its config (no weights read) and count parameters."""
    cfg = _config(snap, sub)
    if not cfg:
        return None
    import torch

    with torch.device("meta"):
        model = _instantiate(cfg, snap / sub)
    return None if model is None else sum(p.numel() for p in model.parameters())


def _instantiate(cfg: dict, folder: Path):
    if "_class_name" in cfg:  # a diffusers model
        import diffusers

        cls = getattr(diffusers, cfg["_class_name"], None)
        return None if cls is None else cls.from_config(cfg)
    import transformers

    archs = cfg.get("architectures") or []
    cls = getattr(transformers, archs[0], None) if archs else None
    if cls is None:
        return None
    config = transformers.AutoConfig.from_pretrained(folder)
    return cls._from_config(config)
