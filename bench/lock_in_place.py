"""Locking a model file's pages where they lie, against reading it into locked memory (producer.sizing.locked_map).

Writes a file of random bytes (`--gib`), reads it once so the page cache holds it (as a file read before does),
then times, in one process:
- `register_*`: mapping it read-only and page-locking the map with cudaHostRegister (read-only flag), by one call
  and by 8 and 16 threads each locking a slice (locked_map locks its ranges with THREADS, 8), and the transfer
  rate to the GPU from it;
- `alloc_and_read_s`: the scripts' other way, chunks from PyTorch's pinned allocator (the scripts' allocator
  setting) with the file read into them, and the transfer rate from those.
Then both again from the drive (`cold_*`: the file's cached pages dropped first).
The error code where CUDA refuses read-only registration (801: not supported on this device) is reported as is.
First, `probe`: the device's registration attributes, and on the file's first GiB whether PyTorch sees a
registered map's tensors as pinned (at a locked storage's first byte, and at a storage that starts on an unlocked
header), and whether transfers from it work: small and whole, and across two registrations. Every transfer is
timed in pieces of 256 MiB, as streaming moves a block's tensors; a failing step records its error and the rest go
on.

    python bench/lock_in_place.py --file /tmp/lock.bin --gib 8 --out lock.json
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "scripts"))


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--file", type=Path, required=True)
    p.add_argument("--gib", type=int, default=8)
    p.add_argument("--out", type=Path)
    args = p.parse_args(argv)
    from producer.facts import hardware

    hardware.configure_cuda_allocator()  # the scripts' pinned-allocator setting, before CUDA starts
    import torch
    from producer.sizing import locked_map

    n = args.gib << 30
    _write(args.file, n)
    start = time.perf_counter()
    _read_all(args.file)
    out = {"gib": args.gib, "warm_read_gb_s": round(n / (time.perf_counter() - start) / 1e9, 2),
           "allocator": os.environ.get("PYTORCH_CUDA_ALLOC_CONF")}
    torch.cuda.init()
    out["probe"] = _probe(args.file)
    threads = locked_map.THREADS  # what the scripts lock with
    for count in (1, threads, 16):
        out[f"register_{count}_threads"] = _register(args.file, n, count)
    out.update(_alloc_and_read(args.file, n))
    # From the drive: the file's cached pages dropped first (posix_fadvise, no root needed), as on a machine
    # whose RAM cannot keep the files between reads (the 16 GB rows).
    _drop_cached(args.file)
    out[f"cold_register_{threads}_threads"] = _register(args.file, n, threads)
    _drop_cached(args.file)
    cold = {f"cold_{k}": v for k, v in _alloc_and_read(args.file, n).items() if k != "h2d_gb_s_chunks"}
    out.update(cold)
    text = json.dumps(out, indent=1)
    print(text)
    if args.out:
        args.out.write_text(text)
    return 0


def _write(path: Path, n: int) -> None:
    if path.exists() and path.stat().st_size == n:
        return
    block = os.urandom(64 << 20)
    with open(path, "wb") as f:
        f.writelines(block for _ in range(n // len(block)))
        f.flush()
        os.fsync(f.fileno())  # written back, so that dropping the cached pages drops them


def _drop_cached(path: Path) -> None:
    with open(path, "rb") as f:
        os.posix_fadvise(f.fileno(), 0, 0, os.POSIX_FADV_DONTNEED)


def _read_all(path: Path) -> None:
    buf = bytearray(64 << 20)
    with open(path, "rb", buffering=0) as f:
        while f.readinto(buf):
            pass


def _register(path: Path, n: int, threads: int) -> dict:
    from producer.sizing import locked_map

    mapped = locked_map.LockedMap(path)
    start = time.perf_counter()
    try:
        with _threads(threads):  # lock cuts the range into `threads` pieces, one a thread
            mapped.lock([(0, n)])
    except locked_map.LockRefused as exc:
        return {"refused": str(exc)}
    result = {"s": round(time.perf_counter() - start, 3), "locked_gib": round(mapped.locked_bytes / 2**30, 2),
              "pieces": len(mapped._pieces)}
    result["h2d_gb_s"] = _h2d([piece for _, _, piece in mapped._pieces])
    start = time.perf_counter()
    mapped.close()
    result["unlock_s"] = round(time.perf_counter() - start, 3)
    return result


def _alloc_and_read(path: Path, n: int) -> dict:
    import torch

    # the chunks of an earlier call are made afresh, not taken from the allocator's cache
    getattr(torch._C, "_host_emptyCache", lambda: None)()
    start = time.perf_counter()
    chunks = [torch.empty(256 << 20, dtype=torch.uint8, pin_memory=True) for _ in range(n // (256 << 20))]
    made = time.perf_counter() - start
    with open(path, "rb", buffering=0) as f:
        for c in chunks:
            f.readinto(memoryview(c.numpy()))
    whole = time.perf_counter() - start
    return {"alloc_s": round(made, 3), "alloc_and_read_s": round(whole, 3), "h2d_gb_s_chunks": _h2d(chunks)}


def _h2d(tensors) -> float | str:
    """GB/s of copying the host tensors to the GPU one after the other, in pieces of 256 MiB (streaming moves a
    block's tensors, each far smaller than a piece), or CUDA's error."""
    import torch

    piece = 256 << 20
    dst = torch.empty(min(max(t.numel() for t in tensors), piece), dtype=torch.uint8, device="cuda")
    torch.cuda.synchronize()
    start = time.perf_counter()
    try:
        for t in tensors:
            flat = t.reshape(-1)
            for at in range(0, flat.numel(), piece):
                part = flat[at:at + piece]
                dst[:part.numel()].copy_(part, non_blocking=True)
        torch.cuda.synchronize()
    except RuntimeError as exc:
        return _error(exc)
    return round(sum(t.numel() for t in tensors) / (time.perf_counter() - start) / 1e9, 1)


def _error(exc: Exception) -> str:
    return "error: " + (str(exc).splitlines() or ["?"])[0]


def _probe(path: Path) -> dict:
    """What CUDA does with a registered read-only map, on the file's first GiB (see the module's docstring)."""
    import torch
    from producer.sizing import locked_map

    gib, page = 1 << 30, locked_map.PAGE
    out = {"attributes": _attributes()}
    mapped = locked_map.LockedMap(path)
    try:
        with _threads(1):  # one registration
            mapped.lock([(page, gib)])  # the first page stays unlocked, as a GGUF header does
    except locked_map.LockRefused as exc:
        return {**out, "refused": str(exc)}
    inside = mapped.view(page, (gib - page,), torch.uint8)
    out["pinned_at_locked_storage"] = bool(inside.is_pinned())
    out["pinned_view_of_unlocked_storage"] = bool(mapped._whole[page:gib].is_pinned())
    for name, t in (("copy_1mib", inside[:1 << 20]), ("copy_64mib", inside[:64 << 20]), ("copy_whole", inside)):
        out[name] = _copy(t)
    mapped.close()
    halves = locked_map.LockedMap(path)  # two registrations side by side; one copy across the cut between them
    with _threads(2):
        halves.lock([(0, gib)])
    across = halves._whole[gib // 2 - (32 << 20):gib // 2 + (32 << 20)]
    out["registrations"] = len(halves._locked)
    out["copy_across_two_registrations"] = _copy(across)
    halves.close()
    return out


def _copy(t) -> str:
    """'ok GB/s' for one non-blocking copy to the GPU, or CUDA's error."""
    import torch

    dst = torch.empty(t.numel(), dtype=torch.uint8, device="cuda")
    torch.cuda.synchronize()
    start = time.perf_counter()
    try:
        dst.copy_(t, non_blocking=True)
        torch.cuda.synchronize()
    except RuntimeError as exc:
        return _error(exc)
    return f"ok {t.numel() / (time.perf_counter() - start) / 1e9:.1f} GB/s"


@contextlib.contextmanager
def _threads(count: int):
    """locked_map.THREADS set for a `with` block (lock cuts a range into that many pieces)."""
    from producer.sizing import locked_map

    kept, locked_map.THREADS = locked_map.THREADS, count
    try:
        yield
    finally:
        locked_map.THREADS = kept


def _attributes() -> dict:
    """cudaDevAttrHostRegisterSupported (99), ...PageableMemoryAccessUsesHostPageTables (100) and
    ...HostRegisterReadOnlySupported (113) of device 0, from the CUDA runtime PyTorch loaded."""
    import ctypes

    libs = sorted({line.split()[-1] for line in Path("/proc/self/maps").read_text().splitlines()
                   if "libcudart" in line})
    if not libs:
        return {"error": "no libcudart in this process"}
    cudart, value, out = ctypes.CDLL(libs[0]), ctypes.c_int(), {"library": Path(libs[0]).name}
    for name, code in (("host_register", 99), ("pageable_uses_host_page_tables", 100),
                       ("host_register_read_only", 113)):
        error = cudart.cudaDeviceGetAttribute(ctypes.byref(value), code, 0)
        out[name] = value.value if error == 0 else f"error {error}"
    return out


if __name__ == "__main__":
    sys.exit(main())
