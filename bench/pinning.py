"""What page-locked host memory costs to make: the scripts' HostPacker filling `--gib` of 256 MiB chunks from a
source already in memory, under each of PyTorch's pinned-allocator settings (PYTORCH_CUDA_ALLOC_CONF), each in
its own process since the setting is read when CUDA starts.

A streamed expert's load reads its file into such chunks (sizing/gguf_host.py); the load-to-first-step runs
measured 2.2-4.7x the disk's read floor (docs/performance.md), and a fresh page-locked chunk costs its
allocation, its page faults and the locking. Ways:
- `host-alloc`: PyTorch's default, cudaHostAlloc for each chunk;
- `host-register-N`: `pinned_use_cuda_host_register:True,pinned_num_register_threads:N`: plain memory whose
  pages N threads map before cudaHostRegister locks them (pytorch/pytorch#108488, "to avoid large lock wait
  time with cudaHostAlloc");
- `plain`: unlocked memory, for scale (what the copy costs with page faults alone);
- `register-later` (CUDA only): plain chunks filled first, then locked in place by cudaHostRegister, timed
  apart (`register_s`, with 1 and 4 threads each locking whole chunks; `unregister_s`, unlocking them all from
  one thread) and once more from a second thread while this one runs Python (`python_rate_while_registering`:
  this thread's loop rate then, against its rate alone; ~1 means the call lets go of the GIL): the cost of
  locking memory already filled, against making it locked (the scripts make it locked: locking a load's chunks
  behind it was measured slower, sizing/gguf_host.py).

    python bench/pinning.py --gib 8 --out pinning.json

Each way is also timed with the chunks made by a second thread while the first copies (`overlapped_s`): a
lever for the load, not built, which this measures before it is.

Without CUDA only `plain` runs (the test suite runs it so, at `--gib 0.25`).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import threading
import time
from functools import partial
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "scripts"))

WAYS = {"host-alloc": "", "host-register-8": "pinned_use_cuda_host_register:True,pinned_num_register_threads:8",
        "host-register-16": "pinned_use_cuda_host_register:True,pinned_num_register_threads:16", "plain": None,
        "register-later": None}


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--gib", type=float, default=8.0, help="host memory to fill (a streamed Wan Q4 expert: ~9 GiB)")
    p.add_argument("--ways", default=None, help=f"comma-separated, of {', '.join(WAYS)}; all that can run by default")
    p.add_argument("--out", type=Path, default=None)
    p.add_argument("--one", default=None, help=argparse.SUPPRESS)  # the child process measuring one way
    return p.parse_args(argv)


def fill(gib: float, pinned: bool) -> dict:
    """Seconds for HostPacker to copy `gib` of tensors the size of a Wan block's largest linears (Q4 rows of
    13824 x 5120 values: ~40 MB) into fresh chunks; the chunks' making is timed with the copies, as a load
    meets it."""
    import torch
    from producer.sizing import offload

    piece = torch.ones(40 << 20, dtype=torch.uint8)  # in memory already: the file's pages in the page cache
    count = max(int(gib * (1 << 30)) // piece.numel(), 1)
    packer = offload.HostPacker(pinned=pinned, total=count * offload.aligned(piece.numel()))
    start = time.perf_counter()
    kept = [packer.take(piece) for _ in range(count)]
    seconds = time.perf_counter() - start
    out = {"bytes": count * piece.numel(), "seconds": round(seconds, 3),
           "gb_per_s": round(count * piece.numel() / seconds / 1e9, 2), "pinned": packer.pinned}
    del kept, packer
    overlapped = fill_overlapped(piece, count, pinned)
    out.update(overlapped_s=round(overlapped, 3), overlapped_gb_per_s=round(out["bytes"] / overlapped / 1e9, 2))
    return out


def fill_overlapped(piece, count: int, pinned: bool) -> float:
    """Seconds for the same copies when a second thread makes the chunks while this one fills those made
    already: what a loader that allocates ahead would take (not built: this says whether it would pay)."""
    from concurrent.futures import ThreadPoolExecutor

    import torch
    from producer.sizing import offload

    slot = offload.aligned(piece.numel())
    per_chunk = offload.PIN_CHUNK // slot
    make = offload._pinned_chunk if pinned else (lambda nbytes: torch.empty(nbytes, dtype=torch.uint8))
    start = time.perf_counter()
    with ThreadPoolExecutor(1) as pool:
        futures = [pool.submit(make, offload.PIN_CHUNK) for _ in range(-(-count // per_chunk))]
        for i, future in enumerate(futures):
            chunk = future.result()
            for j in range(min(per_chunk, count - i * per_chunk)):
                chunk[j * slot:j * slot + piece.numel()].copy_(piece)
    return time.perf_counter() - start


def register_later(gib: float) -> dict:
    """Plain 256 MiB chunks filled by copies, then page-locked where they lie (cudaHostRegister), and unlocked."""
    import torch

    piece = torch.ones(40 << 20, dtype=torch.uint8)
    chunks = [torch.empty(1 << 28, dtype=torch.uint8) for _ in range(max(int(gib * 4), 1))]
    start = time.perf_counter()
    for chunk in chunks:
        for at in range(0, chunk.numel() - piece.numel() + 1, piece.numel()):
            chunk[at:at + piece.numel()].copy_(piece)
    out = {"bytes": len(chunks) << 28, "fill_s": round(time.perf_counter() - start, 3)}
    for threads in (1, 4):
        seconds, unlock_s = _lock_all(chunks, threads)
        out[f"register_s_{threads}"] = round(seconds, 3)
        out[f"register_gb_per_s_{threads}"] = round(out["bytes"] / seconds / 1e9, 2)
        out[f"unregister_s_{threads}"] = round(unlock_s, 3)
    out["python_rate_while_registering"] = round(_python_rate_while(lambda: _lock_all(chunks, 1)), 3)
    return out


def _lock_all(chunks, threads: int) -> tuple[float, float]:
    """Seconds to cudaHostRegister every chunk (`threads` at a time), and to unregister them all afterwards
    from this thread (what freeing a locked chunk costs the thread that lets go of it)."""
    from concurrent.futures import ThreadPoolExecutor

    import torch

    cudart = torch.cuda.cudart()

    def lock(chunk):
        code = cudart.cudaHostRegister(chunk.data_ptr(), chunk.numel(), 0)
        if int(code) != 0:
            raise RuntimeError(f"cudaHostRegister returned {int(code)}")

    start = time.perf_counter()
    with ThreadPoolExecutor(threads) as pool:
        list(pool.map(lock, chunks))
    seconds = time.perf_counter() - start
    start = time.perf_counter()
    for chunk in chunks:
        cudart.cudaHostUnregister(chunk.data_ptr())
    return seconds, time.perf_counter() - start


def _python_rate_while(work) -> float:
    """This thread's rate of a plain Python loop while `work` runs in another thread, against its rate alone
    (half a second, the same loop)."""
    def spin(stop: threading.Event) -> float:
        count, start = 0, time.perf_counter()
        while not stop.is_set():
            count += 1
        return count / (time.perf_counter() - start)

    timer_done = threading.Event()
    threading.Timer(0.5, timer_done.set).start()
    alone = spin(timer_done)
    done = threading.Event()
    worker = threading.Thread(target=lambda: (work(), done.set()))
    worker.start()
    during = spin(done)
    worker.join()
    return during / alone


def _measure_in_child(way: str, gib: float) -> dict:
    env = dict(os.environ)
    if WAYS[way]:
        env["PYTORCH_CUDA_ALLOC_CONF"] = WAYS[way]
    else:
        env.pop("PYTORCH_CUDA_ALLOC_CONF", None)
    cmd = [sys.executable, __file__, "--one", way, "--gib", str(gib)]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=600, check=False)
    lines = [line for line in proc.stdout.splitlines() if line.startswith("{")]
    if proc.returncode != 0 or not lines:
        return {"error": " | ".join((proc.stderr or proc.stdout).strip().splitlines()[-4:])}
    return json.loads(lines[-1])


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.one:
        way = register_later if args.one == "register-later" else partial(fill, pinned=WAYS[args.one] is not None)
        print(json.dumps(way(args.gib)))
        return 0
    import torch

    known = [w for w in WAYS if torch.cuda.is_available() or (WAYS[w] is None and w != "register-later")]
    ways = args.ways.split(",") if args.ways else known
    unknown = [w for w in ways if w not in known]
    if unknown:
        print(f"unknown or unavailable way(s) {', '.join(unknown)}: use {', '.join(known)}", file=sys.stderr)
        return 2
    rows = {}
    for way in ways:
        rows[way] = _measure_in_child(way, args.gib)
        print(way, json.dumps(rows[way]), flush=True)
    result = {"torch": torch.__version__, "gib": args.gib, "ways": rows,
              "device": torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu"}
    if args.out:
        args.out.write_text(json.dumps(result, indent=2))
    return 0 if not any("error" in r for r in rows.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
