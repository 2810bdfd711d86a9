"""Tiny random stand-ins for every model the skill uses, built with the real classes.

No weights can be downloaded where the project is built and tested, so the tests and
`validate_diffusers.py --smoke` run the scripts' real code on tiny models instead: the same
diffusers / transformers classes and the same folder layouts as the real repositories, only with
a few thousand random parameters. `install_standins()` writes them into a Hugging Face cache under
the registry's real repo ids and revisions, so that with `HF_HUB_OFFLINE=1` and `HF_HOME=<dir>`
e.g. `WanImageToVideoPipeline.from_pretrained("Wan-AI/Wan2.2-I2V-A14B-Diffusers")` resolves
unchanged. GGUF expert files are written in the ComfyUI-GGUF format (original key names).

Every stand-in snapshot carries `producer_standin.json` (see `standin_facts`): facts in which the
tiny models differ from the real ones, e.g. the reference-image areas that keep a Qwen edit run fast.
Nothing here is ever committed as weights: everything is built from a seed in a second or two.

Heavy libraries (torch, diffusers, transformers, gguf) are imported inside the functions that need
them, so `standin_facts` costs nothing to import.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import sys
import tempfile
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from producer.facts import registry
from producer.modelfiles.models import STANDIN_MARKER, matching_files, standin_facts  # noqa: F401 - one reader of the marker
from producer.testing import standin_loras
from producer.testing.standin_gguf import QWEN_TIMESTEP_MARKER, gguf_scheme_of, wan_state_dict_to_original, write_gguf
from producer.testing.standin_models import (
    QWEN_CONDITION_AREA,
    QWEN_REFERENCE_AREA,
    build_dinov2,
    build_qwen_controlnet,
    build_qwen_edit_pipeline,
    build_qwen_edit_transformer,
    build_qwen_t2i_pipeline,
    build_wan_experts,
    build_wan_pipeline,
    component_seed,
    transformers4_text_encoder_config,
)

if TYPE_CHECKING:  # pragma: no cover - for annotations only; numpy is imported where it is used
    pass

MARKER_NAME = STANDIN_MARKER
MARKER_FORMAT = 1



# LoRA stand-ins are written by producer.testing.standin_loras (see writers()).
LORA_KINDS = frozenset({"lora"})
# Built only on request: the real OpenPose networks hold ~127 M parameters (see write_openpose_annotators).
ON_REQUEST_KINDS = frozenset({"annotator"})

# ---------------------------------------------------------------- OpenPose annotators


def write_openpose_annotators(folder: Path, seed: int = 0) -> None:
    """Random weights with the real architectures of controlnet_aux's body, hand and face networks.

    They are big (52 M + 37 M + 38 M parameters): built on the meta device for the shapes, drawn in
    float16 (~255 MB instead of the real files' ~510 MB of float32; load_state_dict casts). Saved as
    plain tensor dicts with torch.save, which torch.load(weights_only=True) reads. Body and hand
    files use the real files' key names: controlnet_aux's `transfer` drops the module's first name."""
    import torch
    from controlnet_aux.open_pose.face import FaceNet
    from controlnet_aux.open_pose.model import bodypose_model, handpose_model

    for filename, model_class, strip_first_name in (("body_pose_model.pth", bodypose_model, True),
                                                    ("hand_pose_model.pth", handpose_model, True),
                                                    ("facenet.pth", FaceNet, False)):
        with torch.device("meta"):
            shapes = {name: tensor.shape for name, tensor in model_class().state_dict().items()}
        generator = torch.Generator().manual_seed(component_seed(seed, filename))
        state = {}
        for name, shape in shapes.items():
            key = name.split(".", 1)[1] if strip_first_name else name
            fan_in = max(1, shape[1:].numel()) if len(shape) > 1 else 1
            std = (2.0 / fan_in) ** 0.5 if len(shape) > 1 else 0.01  # He init keeps deep VGG stacks finite
            state[key] = (torch.randn(shape, generator=generator) * std).to(torch.float16)
        torch.save(state, folder / filename)


# ---------------------------------------------------------------- repo writers
# A writer fills a folder with a repository's files for the given registry entries (entries that
# share a repo and a writer are handled in one call). The installer keeps only the files each
# entry's patterns select.

Writer = Callable[[Path, Sequence[registry.ModelEntry], int], None]


def _write_wan_repo(folder: Path, entries: Sequence[registry.ModelEntry], seed: int) -> None:
    build_wan_pipeline(seed).save_pretrained(folder)
    # The Wan diffusers repositories' model_index.json names the tokenizer T5TokenizerFast (transformers 4's
    # class; FastVideo's docs quote Wan2.1-I2V-14B-720P-Diffusers' file), transformers 5 saves T5Tokenizer.
    index = json.loads((folder / "model_index.json").read_text())
    index["tokenizer"] = ["transformers", "T5TokenizerFast"]
    _write_json(folder / "model_index.json", index)


def _write_qwen_edit_repo(folder: Path, entries: Sequence[registry.ModelEntry], seed: int) -> None:
    build_qwen_edit_pipeline(seed).save_pretrained(folder)
    _text_encoder_config_as_published(folder)


def _write_qwen_t2i_repo(folder: Path, entries: Sequence[registry.ModelEntry], seed: int) -> None:
    build_qwen_t2i_pipeline(seed).save_pretrained(folder)
    _text_encoder_config_as_published(folder)


def _text_encoder_config_as_published(folder: Path) -> None:
    """The real repositories' text_encoder/config.json is in the transformers-4 layout (model-files.md)."""
    path = folder / "text_encoder" / "config.json"
    _write_json(path, transformers4_text_encoder_config(json.loads(path.read_text())))


def _write_qwen_controlnet_repo(folder: Path, entries: Sequence[registry.ModelEntry], seed: int) -> None:
    build_qwen_controlnet(seed).save_pretrained(folder)


def _write_wan_gguf(folder: Path, entries: Sequence[registry.ModelEntry], seed: int) -> None:
    experts = dict(zip(registry.WAN_DENOISERS, build_wan_experts(seed)))
    for entry in entries:
        for role, relpath in entry.roles.items():
            write_gguf(folder / relpath, wan_state_dict_to_original(experts[role].state_dict()), "wan",
                       gguf_scheme_of(relpath))


def _write_qwen_gguf(folder: Path, entries: Sequence[registry.ModelEntry], seed: int) -> None:
    # ComfyUI's Qwen-Image keys are diffusers' own: diffusers maps them 1:1 (identity conversion). The
    # 2511 repacks also carry a marker tensor (model-files.md); whether unsloth's file has it is not
    # confirmed, so the stand-in has it: loading and the weight check must tolerate it either way.
    state_dict = build_qwen_edit_transformer(seed).state_dict()
    for entry in entries:
        relpath = entry.roles["transformer"]
        write_gguf(folder / relpath, state_dict, "qwen_image", gguf_scheme_of(relpath),
                   extra={QWEN_TIMESTEP_MARKER: [0.0]})


def _write_annotators(folder: Path, entries: Sequence[registry.ModelEntry], seed: int) -> None:
    write_openpose_annotators(folder, seed)


def _write_dinov2(folder: Path, entries: Sequence[registry.ModelEntry], seed: int) -> None:
    model, processor = build_dinov2(seed)
    model.save_pretrained(folder)
    processor.save_pretrained(folder)


_WRITERS: dict[str, Writer] = {
    "wan-i2v": _write_wan_repo,
    "wan-i2v-components": _write_wan_repo,
    "wan-i2v-gguf-q4": _write_wan_gguf,
    "wan-i2v-gguf-q8": _write_wan_gguf,
    "qwen-edit": _write_qwen_edit_repo,
    "qwen-edit-components": _write_qwen_edit_repo,
    "qwen-edit-gguf-q4": _write_qwen_gguf,
    "qwen-edit-gguf-q8": _write_qwen_gguf,
    "qwen-image-t2i": _write_qwen_t2i_repo,
    "qwen-controlnet-union": _write_qwen_controlnet_repo,
    "openpose-annotators": _write_annotators,
    "dinov2-small": _write_dinov2,
}


def writers() -> dict[str, Writer]:
    """Registry entry name -> the writer of its stand-in files (the LoRA entries' from standin_loras)."""
    return {**_WRITERS, **standin_loras.lora_writers()}


# ---------------------------------------------------------------- the Hugging Face cache


def standin_revision(entry: registry.ModelEntry) -> str:
    """The snapshot hash: the registry's commit when pinned, else a stable fake one per repo
    (entries that share a repo and a branch share the snapshot)."""
    if entry.pinned:
        return entry.revision
    return hashlib.sha1(f"producer-standin:{entry.repo_id}@main".encode()).hexdigest()


def repo_cache_dir(hub_cache: Path, repo_id: str) -> Path:
    return Path(hub_cache) / ("models--" + repo_id.replace("/", "--"))


def default_entry_names(with_annotators: bool = False) -> list[str]:
    """Every entry that has a stand-in writer, without the on-request ones unless asked."""
    available = writers()
    return [e.name for e in registry.entries()
            if e.name in available and (with_annotators or e.kind not in ON_REQUEST_KINDS)]


def _resolve_entries(names: Iterable[str] | None, with_annotators: bool) -> list[registry.ModelEntry]:
    chosen = default_entry_names(with_annotators) if names is None else list(dict.fromkeys(names))
    available = writers()
    entries = [registry.get(name) for name in chosen]
    missing = [e.name for e in entries if e.name not in available]
    if missing:
        raise ValueError(f"no stand-in for {', '.join(missing)} (yet); stand-ins exist for "
                         f"{', '.join(sorted(available))}")
    return entries


def install_standins(hf_home: str | os.PathLike, names: Iterable[str] | None = None, seed: int = 0,
                     with_annotators: bool = False) -> dict[str, dict]:
    """Build the stand-ins and install them into `hf_home`/hub under the registry's repo ids.

    names: registry entry names; None means every entry with a stand-in except the on-request ones
    (the OpenPose annotators, added by `with_annotators=True` or by naming them).
    Returns a manifest per entry name: name, repo_id, revision (the snapshot hash),
    requested_revision (the registry's), snapshot (path), files (path in the repo -> bytes, exactly
    the files the entry's patterns select), total_bytes, marker (the stand-in marker's path in the repo).

    Each repository is written into a staging folder and swapped in whole, so a crashed install
    leaves either the previous snapshot or none, never a half-written one. A snapshot that is not a
    stand-in (no marker: real downloaded weights) is never touched."""
    hf_home = Path(hf_home)
    groups: dict[tuple[str, str], list[registry.ModelEntry]] = {}
    for entry in _resolve_entries(names, with_annotators):
        groups.setdefault((entry.repo_id, standin_revision(entry)), []).append(entry)
    manifest = {}
    for (repo_id, revision), entries in groups.items():
        snapshot = _install_repo(hf_home, repo_id, revision, entries, seed)
        for entry in entries:
            manifest[entry.name] = _entry_manifest(entry, revision, snapshot)
    return manifest


def install_standin_loras(hf_home: str | os.PathLike, names: Iterable[str] | None = None, seed: int = 0) -> dict:
    """Install the registry's LoRA entries as stand-ins into `hf_home`/hub (real repo ids, revisions and
    file paths; `refs/main`; the registry commit as snapshot when pinned, else the stable fake hash).
    Returns the manifest (per entry: repo_id, revision, snapshot, files, ...)."""
    names = list(names or standin_loras.LORA_ENTRY_NAMES)
    unknown = [n for n in names if n not in standin_loras.LORA_ENTRY_NAMES]
    if unknown:
        raise ValueError(f"not LoRA entries: {unknown}; LoRA entries are {', '.join(standin_loras.LORA_ENTRY_NAMES)}")
    return install_standins(hf_home, names, seed=seed)


def _install_repo(hf_home: Path, repo_id: str, revision: str, entries: list[registry.ModelEntry],
                  seed: int) -> Path:
    repo_dir = repo_cache_dir(hf_home / "hub", repo_id)
    snapshot = repo_dir / "snapshots" / revision
    if snapshot.exists() and standin_facts(snapshot) is None:
        raise FileExistsError(f"{snapshot} holds a real download (no {MARKER_NAME}); refusing to overwrite it "
                              "with stand-ins: use an empty HF_HOME")
    staging_root = hf_home / ".standin-staging"  # outside hub/, where cache scanners look
    staging_root.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=repo_dir.name + "-", dir=staging_root))
    try:
        built, fresh = work / "built", work / "snapshot"
        built.mkdir()
        fresh.mkdir()
        _run_writers(built, entries, seed)
        for relpath in _select_files(built, entries):
            target = fresh / relpath
            target.parent.mkdir(parents=True, exist_ok=True)
            os.replace(built / relpath, target)
        _keep_previous_files(snapshot, fresh)
        _write_json(fresh / MARKER_NAME, _marker(repo_id, revision, seed))
        _swap_in(fresh, snapshot, work / "previous")
        _write_text_atomic(repo_dir / "refs" / "main", revision)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return snapshot


def _run_writers(folder: Path, entries: list[registry.ModelEntry], seed: int) -> None:
    by_writer: dict[Writer, list[registry.ModelEntry]] = {}
    available = writers()
    for entry in entries:
        by_writer.setdefault(available[entry.name], []).append(entry)
    for writer, its_entries in by_writer.items():
        writer(folder, its_entries, seed)


def _repo_files(folder: Path) -> list[str]:
    return sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file())


def _matching(files: Iterable[str], patterns: Sequence[str]) -> list[str]:
    return matching_files(list(files), patterns)


def _select_files(built: Path, entries: list[registry.ModelEntry]) -> list[str]:
    """The union of what the entries' patterns select; every literal file name must be there."""
    files = [f for f in _repo_files(built) if f != MARKER_NAME]
    selected: set[str] = set()
    for entry in entries:
        matched = _matching(files, entry.files)
        literal_missing = [p for p in entry.files if not any(c in p for c in "*?[") and p not in files]
        if not matched or literal_missing:
            raise RuntimeError(f"stand-in for {entry.name} lacks {literal_missing or entry.files}")
        selected.update(matched)
    return sorted(selected)


def _keep_previous_files(snapshot: Path, fresh: Path) -> None:
    """Files of entries installed earlier into the same snapshot stay (e.g. the full Wan repo after
    its components); files written now replace their old versions."""
    if not snapshot.is_dir():
        return
    for relpath in _repo_files(snapshot):
        target = fresh / relpath
        if not target.exists():
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(snapshot / relpath, target)


def _swap_in(fresh: Path, snapshot: Path, previous: Path) -> None:
    """Two renames: between them the snapshot is absent (a crash there reads as 'not installed')."""
    snapshot.parent.mkdir(parents=True, exist_ok=True)
    if snapshot.exists():
        os.replace(snapshot, previous)
    os.replace(fresh, snapshot)


def _marker(repo_id: str, revision: str, seed: int) -> dict:
    return {
        "standin": True,
        "format": MARKER_FORMAT,
        "repo_id": repo_id,
        "revision": revision,
        "seed": seed,
        "qwen_reference_area": QWEN_REFERENCE_AREA,
        "qwen_condition_area": QWEN_CONDITION_AREA,
    }


def _write_text_atomic(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def _write_json(path: Path, obj: dict) -> None:
    path.write_text(json.dumps(obj, indent=2, sort_keys=True) + "\n")


def _entry_manifest(entry: registry.ModelEntry, revision: str, snapshot: Path) -> dict:
    files = {relpath: (snapshot / relpath).stat().st_size
             for relpath in _matching([f for f in _repo_files(snapshot) if f != MARKER_NAME], entry.files)}
    return {
        "name": entry.name,
        "repo_id": entry.repo_id,
        "revision": revision,
        "requested_revision": entry.revision,
        "snapshot": str(snapshot),
        "files": files,
        "total_bytes": sum(files.values()),
        "marker": MARKER_NAME,
    }


# ---------------------------------------------------------------- command line


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m producer.testing.standins",
        description="Install tiny random stand-ins of the registry's models into a Hugging Face cache "
                    "(for tests and smoke runs; never into the cache that holds real weights).")
    parser.add_argument("--hf-home", required=True, help="the HF_HOME folder to install into (hub/ inside it)")
    parser.add_argument("--only", nargs="+", metavar="NAME", choices=sorted(writers()),
                        help="registry entries to install (default: all but the on-request ones)")
    parser.add_argument("--with-annotators", action="store_true",
                        help="also write the OpenPose annotator weights (~255 MB, real architectures)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    manifest = install_standins(args.hf_home, args.only, seed=args.seed, with_annotators=args.with_annotators)
    print(json.dumps(manifest, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
