"""Where the Hugging Face cache keeps a model: the cache folder, a repo's folder, the snapshot of an entry's
revision and its files, huggingface_hub's own pattern matching, and the command that downloads an entry.
Below producer.modelfiles.models (what is installed) and install (the install records), which both read it."""

from __future__ import annotations

from pathlib import Path

from producer.facts import registry


def hub_cache() -> Path:
    from huggingface_hub import constants

    return Path(constants.HF_HUB_CACHE)


def repo_folder(repo_id: str) -> Path:
    return hub_cache() / ("models--" + repo_id.replace("/", "--"))


def snapshot_dir(entry: registry.ModelEntry) -> Path | None:
    """The cached snapshot folder of an entry's revision, or None."""
    folder = repo_folder(entry.repo_id)
    commit = entry.revision
    if not entry.pinned:
        ref = folder / "refs" / "main"  # no public commit: the download recorded main's (registry docstring)
        if not ref.is_file():
            return None
        commit = ref.read_text().strip()
    snap = folder / "snapshots" / commit
    return snap if snap.is_dir() else None


def snapshot_files(snap: Path) -> list[str]:
    return sorted(p.relative_to(snap).as_posix() for p in snap.rglob("*") if p.is_file())


def matching_files(files: list[str], patterns) -> list[str]:
    """The files a download with these allow-patterns fetches (huggingface_hub's own matching)."""
    from huggingface_hub.utils import filter_repo_objects

    return list(filter_repo_objects(list(files), allow_patterns=list(patterns)))


def setup_command(*names: str) -> str:
    return "python scripts/setup_diffusers.py --download --only " + " ".join(names)
