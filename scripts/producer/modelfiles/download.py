"""Fetch registry entries from the Hugging Face Hub into its cache: only the registry's files,
resumable, verified, recorded.

1. `remote_entry`: the Hub's file list for the entry's revision (`HfApi.model_info(files_metadata=True)`):
   the commit the revision resolves to, each selected file's size and hash. A file whose size or sha256
   differs from what the registry knows from a public source (`ModelEntry.published`) is refused here.
   An entry without a public commit asks for the commit already recorded for its repository, else main
   (`requested_revision`). Nothing is written.
2. `check_disk`: the bytes still to fetch (all entries together) against the free disk of the cache,
   before anything is written.
3. `fetch_entry`: each file goes to `blobs/<etag>.incomplete`, which survives a failure or Ctrl-C and
   is continued with an HTTP Range request next time; it is verified (size, and sha256 for LFS files
   or the git blob hash for small ones) before it becomes `blobs/<etag>`. Only when every file of the
   entry is verified does the snapshot get its links, the branch its ref, and the entry its install
   record (`producer.modelfiles.install`). The layout is huggingface_hub's own, so `from_pretrained` reads it.

Why not `snapshot_download`: huggingface_hub 2.x downloads each file into a process-unique temp file
that it deletes on failure (an interruption loses the whole current file: 9.6 GB for a GGUF expert),
and it links files into the snapshot one by one (a half-downloaded model looks like a model).
Within one run, huggingface_hub's `http_get` already resumes a dropped connection with a Range request.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from producer.errors import CliError, ExitCode
from producer.facts import registry
from producer.modelfiles import install, models

log = logging.getLogger("producer")

DISK_MARGIN = 2 * 1024**3  # keep 2 GiB free: a full disk breaks more than this download
GATED_FIX = ("open https://huggingface.co/{repo} while logged in and accept its license, then log in here: "
             "`hf auth login` (or set HF_TOKEN=hf_..., or pass --token)")


@dataclass(frozen=True)
class RemoteFile:
    path: str  # in the repo
    size: int | None
    etag: str  # sha256 for LFS files, the git blob sha1 for the others (the Hub's ETag)
    lfs: bool

    def hashes(self) -> dict:
        return {"sha256": self.etag} if self.lfs else {"git_sha1": self.etag}


@dataclass(frozen=True)
class RemoteEntry:
    entry: registry.ModelEntry
    commit: str
    files: tuple[RemoteFile, ...]

    @property
    def total_bytes(self) -> int | None:
        sizes = [f.size for f in self.files]
        return None if None in sizes else sum(sizes)


def hub_endpoint() -> str:
    from huggingface_hub import constants

    return constants.ENDPOINT


# ---------------------------------------------------------------- what the Hub has


def remote_entry(entry: registry.ModelEntry, token: str | None, infos: dict) -> RemoteEntry:
    """The entry's files at its revision, with sizes and hashes. `infos` caches model_info per repo@revision."""
    from huggingface_hub import HfApi

    if token is not None and not (token.isascii() and token.isprintable() and token.strip() == token):
        raise CliError("--token holds characters no Hugging Face token has (tokens are printable ASCII: hf_...)",
                       "copy the token again from https://huggingface.co/settings/tokens, or leave --token out")
    revision = requested_revision(entry)
    key = (entry.repo_id, revision)
    if key not in infos:
        with hub_errors(entry, revision):
            infos[key] = HfApi(endpoint=hub_endpoint()).model_info(
                entry.repo_id, revision=revision, files_metadata=True, token=token)
    info = infos[key]
    siblings = {s.rfilename: s for s in info.siblings or []}
    selected = models.matching_files(list(siblings), entry.files)
    literals = [f for f in entry.files if not any(c in f for c in "*?[")]
    absent = [f for f in literals if f not in siblings]
    if absent or not selected:
        raise CliError(f"{entry.repo_id}@{info.sha[:7]} has no {', '.join(absent) or ' / '.join(entry.files)}",
                       fix="the registry is out of date for this repository: update the skill, or report it",
                       code=ExitCode.FAILED)
    files = tuple(_remote_file(entry, info.sha, siblings[p], token) for p in selected)
    for f in files:
        _refuse_unpublished(entry, info.sha, f)
    return RemoteEntry(entry, info.sha, files)


def requested_revision(entry: registry.ModelEntry) -> str:
    """The revision to ask the Hub for. Pinned: the registry's commit. Without a public commit: the commit
    already recorded for this repository (this entry's or one sharing the repo), so a second download and
    `--check` stay on what was verified, else main (whose commit the install record then keeps)."""
    if entry.pinned:
        return entry.revision
    for name in [entry.name] + [e.name for e in registry.entries() if e.repo_id == entry.repo_id]:
        record = install.read_record(name)
        if record and isinstance(record.get("commit"), str) and record.get("source", "").startswith("hub"):
            return record["commit"]
    return "main"


def _refuse_unpublished(entry: registry.ModelEntry, commit: str, f: "RemoteFile") -> None:
    """The Hub's file must be the one the registry knows from its public source (size, sha256)."""
    known = entry.published(f.path)
    differs = []
    if "size" in known and f.size is not None and f.size != known["size"]:
        differs.append(f"{f.size:,} bytes, the registry knows {known['size']:,}")
    if "sha256" in known and f.lfs and f.etag != known["sha256"]:
        differs.append(f"sha256 {f.etag[:12]}..., the registry knows {known['sha256'][:12]}...")
    if differs:
        raise CliError(f"{entry.repo_id}@{commit[:7]} serves {f.path} with {'; '.join(differs)}: not the published "
                       "file this skill was made for; nothing was downloaded",
                       fix="update the skill (its registry may be out of date), or report it with this message",
                       code=ExitCode.FAILED)


def _remote_file(entry: registry.ModelEntry, commit: str, sibling, token: str | None) -> RemoteFile:
    if sibling.lfs is not None:
        return RemoteFile(sibling.rfilename, sibling.lfs.size, sibling.lfs.sha256, True)
    if sibling.blob_id:
        return RemoteFile(sibling.rfilename, sibling.size, sibling.blob_id, False)
    # No file metadata in the listing (a mirror that leaves it out): ask the file itself.
    from huggingface_hub import get_hf_file_metadata, hf_hub_url

    with hub_errors(entry):
        meta = get_hf_file_metadata(hf_hub_url(entry.repo_id, sibling.rfilename, revision=commit), token=token)
    lfs = meta.etag is not None and len(meta.etag) == 64
    return RemoteFile(sibling.rfilename, meta.size, meta.etag, lfs)


@contextlib.contextmanager
def hub_errors(entry: registry.ModelEntry, revision: str | None = None) -> Iterator[None]:
    """Turn what huggingface_hub and the network raise into messages that say what to do."""
    from huggingface_hub import errors

    repo = entry.repo_id
    try:
        yield
    except errors.GatedRepoError:
        raise CliError(f"{repo} ({entry.name}) is gated: the Hub refused the download without access",
                       fix=GATED_FIX.format(repo=repo), code=ExitCode.FAILED) from None
    except errors.RevisionNotFoundError:
        raise CliError(f"{repo} has no revision {revision or entry.revision}",
                       fix="the registry is out of date: update the "
                       "skill, or report it", code=ExitCode.FAILED) from None
    except errors.RepositoryNotFoundError:
        raise CliError(f"{repo} was not found on {hub_endpoint()} (or it is private and no valid token was sent)",
                       fix="check HF_ENDPOINT and your token (`hf auth login` or HF_TOKEN)",
                       code=ExitCode.FAILED) from None
    except errors.OfflineModeIsEnabled:
        raise CliError(f"offline mode is on (HF_HUB_OFFLINE=1): cannot fetch {entry.name}",
                       fix="unset HF_HUB_OFFLINE to download", code=ExitCode.FAILED) from None
    except errors.HfHubHTTPError as exc:
        status = exc.response.status_code if exc.response is not None else "?"
        raise CliError(f"{hub_endpoint()} answered HTTP {status} for {repo}", fix="try again later; finished "
                       "files are kept and a partly downloaded file continues where it stopped",
                       code=ExitCode.FAILED) from None
    except _transport_errors() as exc:
        raise CliError(f"cannot reach {hub_endpoint()}: {type(exc).__name__}: {exc}",
                       fix="check the network (and HF_ENDPOINT), then run the same command again: finished files "
                           "are kept and a partly downloaded file continues where it stopped",
                       code=ExitCode.FAILED) from None


def _transport_errors() -> tuple[type[BaseException], ...]:
    try:
        import httpx2 as httpx  # huggingface_hub 2.x
    except ImportError:
        import httpx  # huggingface_hub 1.x
    return (httpx.TransportError,)


# ---------------------------------------------------------------- where files go


def blob_path(entry: registry.ModelEntry, f: RemoteFile) -> Path:
    return models.repo_folder(entry.repo_id) / "blobs" / f.etag


def partial_path(entry: registry.ModelEntry, f: RemoteFile) -> Path:
    return blob_path(entry, f).with_name(f.etag + ".incomplete")


def pointer_path(remote: RemoteEntry, f: RemoteFile) -> Path:
    return models.repo_folder(remote.entry.repo_id) / "snapshots" / remote.commit / f.path


def _complete_copy(remote: RemoteEntry, f: RemoteFile) -> Path | None:
    """A file already in the cache with the right size: the blob, or the snapshot file (another tool's)."""
    for path in (blob_path(remote.entry, f), pointer_path(remote, f)):
        if path.is_file() and (f.size is None or path.stat().st_size == f.size):
            return path
    return None


def bytes_to_fetch(remotes: list[RemoteEntry]) -> int:
    """Bytes still to download for all entries (files shared by entries counted once)."""
    todo: dict[tuple[str, str], int] = {}
    for remote in remotes:
        unknown = sum(1 for f in remote.files if f.size is None)
        known = sum(f.size for f in remote.files if f.size is not None)
        # A file without a size: an even share of what the registry says the entry weighs.
        fallback = max(remote.entry.size_bytes - known, 0) // unknown if unknown else 0
        for f in remote.files:
            if _complete_copy(remote, f) is None:
                partial = partial_path(remote.entry, f)
                done = partial.stat().st_size if partial.is_file() else 0
                todo[(remote.entry.repo_id, f.etag)] = max((f.size if f.size is not None else fallback) - done, 0)
    return sum(todo.values())


def free_disk_bytes(path: Path) -> int:
    """Free bytes on the disk that holds `path` (or its nearest existing parent)."""
    path = Path(path)
    while not path.exists() and path.parent != path:
        path = path.parent
    return shutil.disk_usage(path).free


def check_disk(remotes: list[RemoteEntry]) -> int:
    need = bytes_to_fetch(remotes)
    cache = models.hub_cache()
    free = free_disk_bytes(cache)
    if need and need + DISK_MARGIN > free:
        raise CliError(f"not enough disk: the download needs {install.human_bytes(need)} (+ "
                       f"{install.human_bytes(DISK_MARGIN)} kept free) in {cache}, which has "
                       f"{install.human_bytes(free)} free",
                       fix="free disk space, or put the models on a bigger disk with --models-dir DIR (or HF_HOME); "
                           "--weights gguf-q4 needs the least", code=ExitCode.FAILED)
    return need


# ---------------------------------------------------------------- fetching


def fetch_entry(remote: RemoteEntry, token: str | None, counter: list[int], total_files: int) -> Path:
    """Download, verify and link every file of one entry, then write its install record."""
    from huggingface_hub.utils import WeakFileLock

    entry = remote.entry
    locks = models.hub_cache() / ".locks" / models.repo_folder(entry.repo_id).name
    locks.mkdir(parents=True, exist_ok=True)
    sources = {}
    for f in remote.files:
        counter[0] += 1
        size = install.human_bytes(f.size) if f.size is not None else "size unknown"
        log.info(f"  [{counter[0]}/{total_files}] {entry.name}: {f.path} ({size})")
        with WeakFileLock(locks / f"{f.etag}.lock"):
            sources[f] = _fetch_file(remote, f, token)
    for f, source in sources.items():
        _link(source, pointer_path(remote, f))
    if not entry.pinned:  # from_pretrained without a revision, and models.snapshot_dir, read refs/main
        _write_ref(models.repo_folder(entry.repo_id) / "refs" / "main", remote.commit)
    snapshot = models.repo_folder(entry.repo_id) / "snapshots" / remote.commit
    files = {f.path: {"size": pointer_path(remote, f).stat().st_size, **f.hashes()} for f in remote.files}
    install.write_record(entry, remote.commit, snapshot, files, source=f"hub {hub_endpoint()}")
    return snapshot


def _fetch_file(remote: RemoteEntry, f: RemoteFile, token: str | None) -> Path:
    """A verified copy of `f` in the cache (downloaded now, or already there and re-verified)."""
    existing = _complete_copy(remote, f)
    if existing is not None:
        if _verified(existing, f):
            return existing
        log.warning(f"    {f.path}: the copy on disk does not match the Hub's hash; fetching it again")
        existing.unlink()
    blob = blob_path(remote.entry, f)
    partial = partial_path(remote.entry, f)
    blob.parent.mkdir(parents=True, exist_ok=True)
    _download(remote, f, partial, token)
    if not _verified(partial, f):
        partial.unlink()
        raise CliError(f"{f.path} of {remote.entry.repo_id} arrived corrupted (its hash does not match the Hub's)",
                       fix="run the same command again to fetch it anew", code=ExitCode.FAILED)
    os.replace(partial, blob)
    return blob


def _download(remote: RemoteEntry, f: RemoteFile, partial: Path, token: str | None) -> None:
    from huggingface_hub import hf_hub_url
    from huggingface_hub.file_download import http_get
    from huggingface_hub.utils import build_hf_headers

    resume = partial.stat().st_size if partial.is_file() else 0
    if f.size is not None and resume > f.size:  # not this file after all
        partial.unlink()
        resume = 0
    if resume:
        log.info(f"    continuing from {install.human_bytes(resume)}")
    url = hf_hub_url(remote.entry.repo_id, f.path, revision=remote.commit, endpoint=hub_endpoint())
    with hub_errors(remote.entry), _disk_full_message(partial, f"{f.path} of {remote.entry.repo_id}"), \
            open(partial, "r+b" if resume else "wb") as fh:
        fh.seek(resume)
        http_get(url, fh, resume_size=resume, headers=build_hf_headers(token=token), expected_size=f.size,
                 displayed_filename=Path(f.path).name)


@contextlib.contextmanager
def _disk_full_message(path: Path, what: str) -> Iterator[None]:
    """`what` is the file the user knows (its path in the repo), not the cache's blob being written."""
    try:
        yield
    except OSError as exc:
        if exc.errno == 28:  # ENOSPC
            raise CliError(f"the disk filled up while downloading {what} (into {path.parent})",
                           fix="free disk space and run the same command again: the download continues where it "
                           "stopped", code=ExitCode.FAILED, disk_full=True) from None
        if "Consistency check failed" in str(exc):  # huggingface_hub: the body ended early, retries used up
            raise CliError(f"the download of {what} ended early: {str(exc).splitlines()[0]}",
                           fix="run the same command again: it continues where it stopped",
                           code=ExitCode.FAILED) from None
        raise


def _verified(path: Path, f: RemoteFile) -> bool:
    if f.size is not None and path.stat().st_size != f.size:
        return False
    return install.hash_matches(path, f.hashes())


def _link(source: Path, pointer: Path) -> None:
    """The snapshot entry for a blob: a relative symlink as huggingface_hub makes it; a move where the
    file system has no symlinks (Windows without developer mode), as huggingface_hub does then."""
    if source == pointer:
        return
    pointer.parent.mkdir(parents=True, exist_ok=True)
    tmp = pointer.with_name(f".{pointer.name}.{os.getpid()}.link")
    tmp.unlink(missing_ok=True)
    try:
        os.symlink(os.path.relpath(source, pointer.parent), tmp)
    except OSError:
        shutil.move(source, tmp)
    os.replace(tmp, pointer)


def _write_ref(path: Path, commit: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(commit)
    os.replace(tmp, path)
