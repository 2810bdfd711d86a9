"""Page-lock a streamed model's host chunks where they lie, in a thread of their own, while its load goes on.

Streamed weights must be page-locked for their transfers to be direct DMA. Made by PyTorch's pinned
allocator, each chunk is locked before the read can copy into it: on an H200 the 10 / 32 plan's load spent
3.4 s of its 4.7 s read making page-locked memory (cudaHostRegister setting), then 1.1 s building the model
and 4.3 s loading the step-distill LoRA, with the link idle (bench/results/2026-12-07-h200). Here the read
copies into plain chunks (an anonymous map each, so no chunk shares a page with other memory), and each full
chunk is locked in place by cudaHostRegister from another thread (PyTorch's binding releases the GIL) while
the read fills the next ones, the model is built and its LoRAs are loaded. Placement waits for the last lock
(`settle`) before it streams the blocks: group offloading and `pin_in_place` then find them page-locked.
On an H100 pages already filled locked at 15.3 GB/s on one thread, with the GIL let go, where PyTorch's pinned
allocator made locked memory at 5.3 GB/s (bench/results/2026-12-07-h100-afternoon).

A chunk is unlocked (cudaHostUnregister) when the last tensor in it goes, before its pages are unmapped: the
finalizer sits on the numpy array over the map, which numpy calls before it lets go of the map. Where locking
is refused (a memlock limit), the rest stays plain and placement pins what it can, as before.
"""

from __future__ import annotations

import mmap
import weakref
from concurrent.futures import Future, ThreadPoolExecutor

import numpy as np
import torch

ATTRIBUTE = "_producer_lock_behind"  # on a model whose chunks may still be locking (gguf_host.load_gguf)


class LockBehind:
    """Makes plain host chunks and locks each handed back (`submit`) in a background thread."""

    def __init__(self):
        self._pool = ThreadPoolExecutor(1, thread_name_prefix="producer-lock")
        self._pending: list[Future] = []
        self._states: dict[int, dict] = {}  # per chunk (by address): whether it is locked, for its finalizer
        self.locked = 0  # bytes locked so far
        self.refused: str | None = None  # why locking stopped, where it did

    def chunk(self, nbytes: int) -> torch.Tensor:
        """`nbytes` of plain host memory in pages of its own, unlocked (if locked) when the last view of it goes."""
        pages = np.frombuffer(mmap.mmap(-1, nbytes), dtype=np.uint8)
        state = {"locked": False}
        address = pages.ctypes.data
        weakref.finalize(pages, _unlock, address, state).atexit = False  # at exit the process frees it all
        self._states[address] = state
        return torch.from_numpy(pages)

    def submit(self, chunk: torch.Tensor) -> None:
        """Lock `chunk` (one made by `chunk`, filled) in the background."""
        self._pending.append(self._pool.submit(self._lock, chunk))

    def _lock(self, chunk: torch.Tensor) -> None:
        if self.refused is not None:
            return
        address, nbytes = chunk.data_ptr(), chunk.numel()
        code = int(torch.cuda.cudart().cudaHostRegister(address, nbytes, 0))
        if code != 0:
            self.refused = f"cudaHostRegister returned error {code}"
            return
        self._states[address]["locked"] = True
        self.locked += nbytes  # only the locking thread adds

    def wait(self) -> int:
        """Block until every submitted chunk is locked (or locking stopped); the bytes locked."""
        for future in self._pending:
            future.result()
        self._pending.clear()
        self._pool.shutdown(wait=True)
        self._states.clear()  # the finalizers keep their own state
        return self.locked


def _unlock(address: int, state: dict) -> None:
    if state["locked"]:
        torch.cuda.cudart().cudaHostUnregister(address)


def settle(module: torch.nn.Module) -> tuple[int, str | None]:
    """Wait for the locks of `module`'s chunks still in flight: (bytes locked, why locking stopped or None);
    (0, None) for a model loaded otherwise."""
    locker = module.__dict__.pop(ATTRIBUTE, None)
    if locker is None:
        return 0, None
    return locker.wait(), locker.refused
