"""How fast the benchmark machine's disk gives back a model file, read the ways a loader can read it.

The plans that read an expert from disk at every clip (one expert in RAM: the 8 and 10 GB / 16 GB rows) pay
that read inside the clip, and the scripts' GGUF loader (producer/sizing/gguf_host.py) copies each tensor out
of the memory-mapped file into its chunk, one tensor after the other. This says whether the disk would give
more to several readers at once (an NVMe drive serves many requests in parallel; one sequential reader keeps
few in flight), i.e. whether reading in parallel is a lever for those clips. Each way reads every file whole
after its pages were dropped from the page cache (`posix_fadvise(DONTNEED)`; `cold` says whether dropping
worked: a second read of the first 256 MiB faster than 4 GB/s means the pages stayed cached).

    python bench/disk_read.py /tmp/models/*.gguf --out disk.json

Ways: `serial` (one reader, 64 MiB reads), `threads-N` (N readers, each taking the next 16 MiB piece),
`mmap-copy` (the loader's way: torch copies from the mapped file). Every way reads into buffers made once: fresh
memory at every read would add its page faults (16 MiB reads on this project's 2-core CI machine: one reader's
rate went from 1.75 to 0.73 GB/s). The loader's page-locked chunks are faulted in when they are made, so reused buffers
are its case.
"""

from __future__ import annotations

import argparse
import json
import mmap
import os
import threading
import time
import warnings
from pathlib import Path

import numpy as np
import torch

PIECE = 16 << 20
SERIAL_READ = 64 << 20


def drop_cached(paths: list[Path]) -> None:
    for path in paths:
        fd = os.open(path, os.O_RDONLY)
        try:
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        finally:
            os.close(fd)


def read_serial(path: Path) -> int:
    buffer, total = memoryview(bytearray(SERIAL_READ)), 0
    with open(path, "rb", buffering=0) as f:
        while got := f.readinto(buffer):
            total += got
    return total


def read_threads(path: Path, threads: int) -> int:
    """N readers on one descriptor (the kernel's read-ahead then sees the file read in order overall), each
    into its own buffer, reused: fresh memory at every read would time the page faults, not the disk."""
    size = path.stat().st_size
    offsets = iter(range(0, size, PIECE))
    lock = threading.Lock()
    fd = os.open(path, os.O_RDONLY)

    def reader() -> None:
        buffer = memoryview(bytearray(PIECE))
        while True:
            with lock:
                offset = next(offsets, None)
            if offset is None:
                return
            os.preadv(fd, [buffer], offset)

    try:
        workers = [threading.Thread(target=reader) for _ in range(threads)]
        for w in workers:
            w.start()
        for w in workers:
            w.join()
    finally:
        os.close(fd)
    return size


def read_mmap_copy(path: Path) -> int:
    size = path.stat().st_size
    target = torch.empty(SERIAL_READ, dtype=torch.uint8)
    with open(path, "rb") as f, mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as mapped:
        view = np.frombuffer(mapped, dtype=np.uint8)
        warnings.filterwarnings("ignore", "The given NumPy array is not writable")  # only read from
        for offset in range(0, size, SERIAL_READ):
            piece = torch.from_numpy(view[offset:offset + SERIAL_READ])
            target[:piece.numel()].copy_(piece)
            del piece
        del view
    return size


def cold(path: Path) -> bool:
    """Were the pages really dropped? A cached 256 MiB read runs at memory speed."""
    drop_cached([path])
    start = time.perf_counter()
    with open(path, "rb", buffering=0) as f:
        n = len(f.read(256 << 20))
    return n / (time.perf_counter() - start) < 4e9


def measure(paths: list[Path], way: str) -> dict:
    drop_cached(paths)
    start = time.perf_counter()
    if way == "serial":
        total = sum(read_serial(p) for p in paths)
    elif way == "mmap-copy":
        total = sum(read_mmap_copy(p) for p in paths)
    else:
        total = sum(read_threads(p, int(way.split("-")[1])) for p in paths)
    seconds = time.perf_counter() - start
    return {"bytes": total, "seconds": round(seconds, 3), "gb_per_s": round(total / seconds / 1e9, 2)}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("paths", nargs="+", type=Path)
    p.add_argument("--ways", default="serial,threads-4,threads-8,threads-16,mmap-copy")
    p.add_argument("--out", type=Path)
    args = p.parse_args(argv)
    missing = [str(x) for x in args.paths if not x.is_file()]
    if missing:
        p.error(f"no such file: {', '.join(missing)}")
    result = {"files": [str(x) for x in args.paths], "cold": cold(args.paths[0]),
              "ways": {way: measure(args.paths, way) for way in args.ways.split(",")}}
    emit(result, args.out)
    return 0


def emit(result: dict, out: Path | None) -> None:
    """The result as JSON on stdout, and into `out` where given."""
    text = json.dumps(result, indent=2)
    if out:
        out.write_text(text)
    print(text)


if __name__ == "__main__":
    raise SystemExit(main())
