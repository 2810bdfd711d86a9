"""What is installed, and whether it is complete: one install record per registry entry.

When every file of an entry has arrived and been verified, `setup_diffusers.py --download` writes
`$HF_HOME/ai-video-producer/installs/<name>.json`: the commit actually downloaded and, for each file,
its size, its hash (sha256 for LFS files, the git blob sha1 for small ones: the hashes the Hub
publishes) and its modification time. The stand-in installer writes the same records
(`record_standins`), so tests, `--smoke-dir` caches and real downloads are checked alike.

A model counts as present only when the files on disk match its record:
- an interrupted download writes no record (and no snapshot links), so it reads as missing/partial;
- a truncated or grown file fails the size check;
- a file changed in place fails the modification-time check ("changed"); `verify=True` re-hashes
  every file, reports the ones whose content differs as corrupt and re-records the rest;
- a downloaded file whose recorded size or sha256 differs from what the registry knows from a public
  source (`ModelEntry.published`) is "unpublished": not the file the skill was made for. Stand-in
  records are exempt: stand-ins are tiny random files, checked against their own record only.
"""

from __future__ import annotations

import hashlib
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

from producer.facts import registry
from producer.files.outputs import write_json_atomic
from producer.modelfiles import cache
from producer.values import load_json

RECORD_FORMAT = 1
HASH_CHUNK = 8 * 1024 * 1024

COMPLETE = "complete"
MISSING = "missing"  # nothing of it on disk
PARTIAL = "partial"  # some files missing
CORRUPT = "corrupt"  # a file's size or content differs from what arrived
CHANGED = "changed"  # a file was modified after it arrived (content not checked yet: --verify)
UNRECORDED = "unrecorded"  # files present, but not downloaded (or not finished) by setup_diffusers.py
OUTDATED = "outdated"  # installed at another revision than the registry pins
UNPUBLISHED = "unpublished"  # a file's size or sha256 differs from the registry's published facts


def records_dir() -> Path:
    from huggingface_hub import constants

    return Path(constants.HF_HOME) / "ai-video-producer" / "installs"


def record_path(name: str) -> Path:
    return records_dir() / f"{name}.json"


def read_record(name: str) -> dict | None:
    path = record_path(name)
    try:
        record = load_json(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    if not isinstance(record, dict) or record.get("format") != RECORD_FORMAT or not isinstance(
            record.get("files"), dict):
        return None
    return record


def write_record(entry: registry.ModelEntry, commit: str, snapshot: Path, files: dict[str, dict],
                 source: str) -> Path:
    """The one writer of install records (real downloads and stand-ins alike).

    files: path in the repo -> {"size", "sha256" and/or "git_sha1"}; the modification time is read here.
    """
    facts = {}
    for relpath, info in sorted(files.items()):
        stat = (snapshot / relpath).stat()
        if stat.st_size != info["size"]:
            raise ValueError(f"{relpath} has {stat.st_size} bytes on disk, {info['size']} expected")
        facts[relpath] = {**info, "mtime_ns": stat.st_mtime_ns}
    record = {
        "format": RECORD_FORMAT,
        "name": entry.name,
        "repo_id": entry.repo_id,
        "requested_revision": entry.revision,
        "commit": commit,
        "source": source,  # "hub" (with the endpoint) or "standin"
        "recorded_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "total_bytes": sum(f["size"] for f in facts.values()),
        "files": facts,
    }
    path = record_path(entry.name)
    path.parent.mkdir(parents=True, exist_ok=True)
    write_json_atomic(path, record)
    return path


def remove_record(name: str) -> None:
    record_path(name).unlink(missing_ok=True)


# ---------------------------------------------------------------- hashes


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while chunk := fh.read(HASH_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def git_blob_sha1(path: Path) -> str:
    """The git object id of a file: what the Hub reports (and uses as ETag) for files not stored in LFS."""
    digest = hashlib.sha1()
    digest.update(f"blob {path.stat().st_size}\0".encode())
    with open(path, "rb") as fh:
        while chunk := fh.read(HASH_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def hash_matches(path: Path, info: dict) -> bool:
    """Every hash the record holds for this file matches (a record without hashes cannot be checked)."""
    if info.get("sha256") and sha256_file(path) != info["sha256"]:
        return False
    if info.get("git_sha1") and git_blob_sha1(path) != info["git_sha1"]:
        return False
    return True


def record_standins(manifest: dict[str, dict]) -> list[Path]:
    """Install records for what `producer.testing.standins.install_standins` returned (hashes computed here)."""
    paths = []
    for name, item in manifest.items():
        snapshot = Path(item["snapshot"])
        files = {rel: {"size": size, "sha256": sha256_file(snapshot / rel)} for rel, size in item["files"].items()}
        paths.append(write_record(registry.get(name), item["revision"], snapshot, files, source="standin"))
    return paths


# ---------------------------------------------------------------- status


@dataclass
class EntryStatus:
    name: str
    status: str
    commit: str | None = None
    files: int = 0
    bytes: int = 0
    problems: list[str] = field(default_factory=list)
    snapshot: str | None = None
    source: str | None = None

    @property
    def complete(self) -> bool:
        return self.status == COMPLETE

    def to_dict(self) -> dict:
        return asdict(self)

    def describe(self) -> str:
        if self.complete:
            where = f"commit {self.commit[:7]}" + (", stand-in" if self.source == "standin" else "")
            return f"complete ({self.files} files, {human_bytes(self.bytes)}, {where})"
        detail = f": {'; '.join(self.problems[:3])}" if self.problems else ""
        more = f" (+{len(self.problems) - 3} more)" if len(self.problems) > 3 else ""
        return f"{self.status}{detail}{more}"


def entry_status(entry: registry.ModelEntry, verify: bool = False) -> EntryStatus:
    """Compare the files on disk with the entry's install record. `verify` re-hashes every file."""
    snap = cache.snapshot_dir(entry)
    record = read_record(entry.name)
    if record is None:
        present = snap is not None and cache.matching_files(cache.snapshot_files(snap), entry.files)
        if not present:
            return EntryStatus(entry.name, MISSING)
        return EntryStatus(entry.name, UNRECORDED, snapshot=str(snap), problems=[
            f"{len(present)} file(s) on disk but no install record (another tool, or an interrupted download)"])
    status = EntryStatus(entry.name, COMPLETE, commit=record["commit"], files=len(record["files"]),
                         bytes=int(record.get("total_bytes", 0)), source=record.get("source"))
    if entry.pinned and record["commit"] != entry.revision:
        status.status = OUTDATED
        status.problems.append(f"installed commit {record['commit'][:7]}, the registry pins {entry.revision[:7]}")
        return status
    differs = unpublished_files(entry, record)
    if differs:
        status.status = UNPUBLISHED
        status.problems.extend(differs)
        return status
    if snap is None or snap.name != record["commit"]:
        status.status = MISSING if snap is None else UNRECORDED
        status.problems.append(f"the cache's {entry.revision} is {snap.name[:7] if snap else 'absent'}, "
                               f"the record is for {record['commit'][:7]}")
        return status
    status.snapshot = str(snap)
    _check_coverage(entry, record, status)
    _check_files(snap, record, status, verify)
    return status


def unpublished_files(entry: registry.ModelEntry, record: dict) -> list[str]:
    """The recorded files whose size or sha256 differs from what a public source gives for them."""
    if record.get("source") == "standin":
        return []
    problems = []
    for relpath, info in record["files"].items():
        known = entry.published(relpath)
        if "size" in known and info.get("size") != known["size"]:
            problems.append(f"{relpath} has {info.get('size'):,} bytes, the published file {known['size']:,}")
        if "sha256" in known and info.get("sha256") and info["sha256"] != known["sha256"]:
            problems.append(f"{relpath} has sha256 {info['sha256'][:12]}..., the published file "
                            f"{known['sha256'][:12]}...")
    return problems


def _check_coverage(entry: registry.ModelEntry, record: dict, status: EntryStatus) -> None:
    """The record must hold what the registry asks for now (its patterns may have grown since)."""
    recorded = list(record["files"])
    literals = [f for f in entry.files if not any(c in f for c in "*?[")]
    missing = [f for f in literals if f not in record["files"]]
    if missing or not cache.matching_files(recorded, entry.files):
        status.status = PARTIAL
        status.problems.append(f"not downloaded: {', '.join(missing) or 'any file of ' + ', '.join(entry.files)}")


def _check_files(snap: Path, record: dict, status: EntryStatus, verify: bool) -> None:
    rerecord = False
    for relpath, info in record["files"].items():
        path = snap / relpath
        if not path.is_file():
            _worse(status, PARTIAL, f"{relpath} is missing")
            continue
        stat = path.stat()
        if stat.st_size != info["size"]:
            _worse(status, CORRUPT, f"{relpath} has {stat.st_size} bytes, {info['size']} arrived")
        elif verify:
            if not hash_matches(path, info):
                _worse(status, CORRUPT, f"{relpath}: content differs from what arrived (hash mismatch)")
            elif stat.st_mtime_ns != info.get("mtime_ns"):
                info["mtime_ns"] = stat.st_mtime_ns  # touched, same content: re-record the time
                rerecord = True
        elif stat.st_mtime_ns != info.get("mtime_ns"):
            _worse(status, CHANGED, f"{relpath} was modified after it arrived")
    if rerecord and status.complete:
        write_json_atomic(record_path(record["name"]), record)


SEVERITY = {COMPLETE: 0, CHANGED: 1, PARTIAL: 2, CORRUPT: 3}


def _worse(status: EntryStatus, new: str, problem: str) -> None:
    status.problems.append(problem)
    if SEVERITY[new] > SEVERITY.get(status.status, 0):
        status.status = new


def statuses(names=None, verify: bool = False) -> dict[str, EntryStatus]:
    chosen = names or list(registry.REGISTRY)
    return {name: entry_status(registry.get(name), verify) for name in chosen}


def status_fix(status: EntryStatus, models_dir: str | None = None) -> str:
    """The command that repairs an entry in this state."""
    suffix = f" --models-dir {models_dir}" if models_dir else ""
    if status.status == CHANGED:
        return f"python scripts/setup_diffusers.py --check --verify{suffix}  (re-hashes the files)"
    if status.status == UNPUBLISHED:
        return cache.setup_command(status.name) + suffix + (
            "  (fetches the published files again; if the Hub itself serves other ones, it stops and says so)")
    return cache.setup_command(status.name) + suffix + (
        "  (verifies what is there, fetches the rest)" if status.status == UNRECORDED else "")


def human_bytes(n: float) -> str:
    for unit, size in (("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if n >= size:
            return f"{n / size:.1f} {unit}"
    return f"{int(n)} B"


def snapshot_of(status: EntryStatus) -> Path | None:
    return Path(status.snapshot) if status.complete and status.snapshot else None

