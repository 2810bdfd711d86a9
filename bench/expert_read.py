"""How fast a GGUF expert becomes host tensors, the ways the scripts' loader could read it.

With one expert in RAM (the 8 and 10 GB / 16 GB rows) each clip reads both experts again; on an H200 that read
ran at 1.6 GB/s inside the clip where the disk gave 4.4 (bench/results/2026-12-07-h200-night, s.json). A read
is two things: making page-locked chunks for it, and filling them from the file. This times both, for

- `mmap-copy`: the loader before 2026-12-07 (torch copying each tensor out of the memory-mapped file, one after
  the other, into its chunk);
- `pread-N`: `gguf_host.read_into_host_chunks` with N readers (os.preadv straight into the chunks);

each `fresh` (PyTorch's pinned cache emptied first, as `offload.release` did after every expert) and `reused`
(the previous read's chunks left in the cache: `release(..., keep_pinned=True)`). The file is read once before,
so its pages are in the page cache, as on the benchmark machine's clips; `pinned_alloc_s` is the time PyTorch's
allocator spent making locked memory.

    python bench/expert_read.py /tmp/models/wan-full-gguf-q4-transformer.gguf --out read.json
"""

from __future__ import annotations

import argparse
import gc
import sys
import time
import warnings
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "scripts"))

import disk_read
import load_stages
import torch


def read_mmap_copy(path: Path) -> dict:
    """The loader's way before: each tensor copied from the map into a chunk (HostPacker.take)."""
    import gguf
    from producer.sizing import offload

    reader = gguf.GGUFReader(str(path))
    packer = offload.HostPacker(total=sum(offload.aligned(int(t.n_bytes)) for t in reader.tensors))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # the map is read-only; it is only read from
        state = {t.name: packer.take(torch.from_numpy(t.data)) for t in reader.tensors}
    del reader
    return state


def read_way(path: Path, way: str) -> dict:
    from producer.sizing import gguf_host

    if way == "mmap-copy":
        return read_mmap_copy(path)
    return gguf_host.read_into_host_chunks(path, threads=int(way.split("-")[1]))


def measure(path: Path, way: str, reuse: bool) -> dict:
    """One read `way`; `reuse`: a read of the same file, let go, leaves its chunks in the pinned cache first."""
    if reuse:
        read_way(path, way)
    gc.collect()
    if not reuse and torch.cuda.is_available():
        torch._C._host_emptyCache()
    allocating = load_stages._host_alloc_seconds("cuda" if torch.cuda.is_available() else "cpu")
    start = time.perf_counter()
    state = read_way(path, way)
    seconds = time.perf_counter() - start
    size = sum(t.numel() * t.element_size() for t in state.values())
    out = {"bytes": size, "seconds": round(seconds, 3), "gb_per_s": round(size / seconds / 1e9, 2)}
    if allocating is not None:
        out["pinned_alloc_s"] = round(load_stages._host_alloc_seconds("cuda") - allocating, 3)
    del state
    gc.collect()
    return out


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("path", type=Path)
    p.add_argument("--ways", default="mmap-copy,pread-1,pread-4,pread-8")
    p.add_argument("--out", type=Path)
    args = p.parse_args(argv)
    if not args.path.is_file():
        p.error(f"no such file: {args.path}")
    from producer.facts import hardware

    hardware.configure_cuda_allocator()  # the scripts' pinned allocator settings (cudaHostRegister, 8 threads)
    if torch.cuda.is_available():  # CUDA's start-up outside the first way's time (it took 11.75 s before)
        torch.empty(1, pin_memory=True)
        torch._C._host_emptyCache()
    with open(args.path, "rb", buffering=0) as f:  # into the page cache
        while f.read(64 << 20):
            pass
    result = {"file": str(args.path), "bytes": args.path.stat().st_size, "ways": {}}
    for way in args.ways.split(","):
        result["ways"][way] = {"fresh": measure(args.path, way, reuse=False),
                               "reused": measure(args.path, way, reuse=True)}
        print(way, result["ways"][way], file=sys.stderr, flush=True)
    disk_read.emit(result, args.out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
