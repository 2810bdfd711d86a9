"""A model file's pages page-locked where they lie: the file mapped read-only, its streamed tensors views of the
map, the ranges they span registered with CUDA (`cudaHostRegister` with `cudaHostRegisterReadOnly`).

Reading a GGUF expert into page-locked chunks (`gguf_host.read_into_host_chunks`) makes fresh locked memory and
copies the file into it: Wan's two Q4 experts (19.3 GB, from the page cache) took 5.29 s on an H100, 4.44 s of it
making the locked memory beside the copy, where reading them into one plain buffer took 4.76 s. Registering the
file's own pages makes no memory and copies nothing: the pages the page cache already holds are locked (19.3 GB in
1.11 s on an H100, 2026-12-08), and streaming is to transfer from them (not yet run on a GPU: the load tries
one transfer first, `check_transfer`). The weights then count as the process's
file pages (RssFile), not anonymous memory: the same bytes, held once instead of twice while the read runs (page
cache and copy). `start` locks in background threads, so the model is built from the views meanwhile; `finish`
waits.

Registering a read-only mapping needs the device to support it (`cudaDevAttrHostRegisterReadOnlySupported`);
where it does not (a B300 host reported so, vllm-project/vllm-omni#6240) or the system refuses to lock that
much, `finish` (or `lock`) raises `LockRefused` having unlocked what it locked; the views stay valid over
pages that are not locked, and the caller copies them into locked memory or reads the file.
The map is read-only: a write into a weight would fault at once rather than change a page the GPU reads.
Unlocking comes before unmapping (`close`, then the views' last reference unmaps), never the other way round.

PyTorch (and diffusers' group offloading) asks CUDA whether a tensor is pinned at its storage's first byte
(`is_pinned`: `isPinnedPtr(self.storage().data())`, aten/src/ATen/native/Memory.cpp). A view of the whole map
starts at the file's header, which is never locked, so each tensor is a view of the locked piece that holds it, a
storage that begins at a locked page (H100, 2026-12-08: with views of the whole map, the scripts copied every
streamed tensor into pinned chunks again, 3.9 s and 17 GiB more). A piece is registered on its own, so the cuts
between pieces are put where no locked range lies across them; a range that still crosses one has no view
(`view` gives None) and the caller reads it.
"""

from __future__ import annotations

import bisect
import contextlib
import mmap
import warnings
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import torch

# cudaHostRegisterReadOnly | cudaHostRegisterPortable (CUDA runtime API, driver_types.h): the device only reads the
# pages, and they count as locked for every CUDA context of the process (several GPUs), as the allocator's do.
REGISTER_FLAGS = 0x08 | 0x01
THREADS = 8  # registering faults the pages in; several threads share that work
PAGE = mmap.PAGESIZE
MERGE_GAP = 1 << 20  # ranges this close are locked as one (the small tensors between them are locked too)
CUT_SEARCH = 64 << 20  # how far from an even share a cut may move to fall between locked ranges
CHECK_BYTES = 64 << 20  # a transfer as large as a block's largest tensor (Wan's Q6_K ffn.2: ~58 MB)


_locked_now = [0]  # bytes locked in place by every map of the process (RAM that cannot be given back)


def locked_bytes_now() -> int:
    """Bytes of model files locked where their pages lie in this process now: they are file pages, not
    anonymous memory, yet must fit in RAM like it (the benchmark's RAM watch adds them)."""
    return _locked_now[0]


class LockRefused(RuntimeError):
    """CUDA would not lock the mapped ranges (nothing stays locked)."""


class LockedMap:
    """A file mapped read-only; `lock` page-locks ranges of it, `view` gives tensors over the locked bytes."""

    def __init__(self, path: Path | str):
        self.name = Path(path).name
        with open(path, "rb") as f:
            self._map = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
        with warnings.catch_warnings():  # "not writable": read-only on purpose, a write would fault
            warnings.simplefilter("ignore", UserWarning)
            self._whole = torch.frombuffer(self._map, dtype=torch.uint8)
        self._locked: list[int] = []  # addresses registered
        self._pending: list = []  # (address, size, future) of registrations still running
        self._runtime = None
        self._pieces: list[tuple[int, int, torch.Tensor]] = []  # (start, end, its own storage) of each locked piece
        self.locked_bytes = 0

    def view(self, offset: int, shape, dtype: torch.dtype) -> torch.Tensor | None:
        """A tensor over the file's bytes at `offset`, a view of the locked piece that holds them all; None where no
        piece does (never locked, or across a cut): the caller reads those bytes."""
        nbytes = int(torch.Size(shape).numel()) * dtype.itemsize
        if offset + nbytes > len(self._map):
            raise ValueError(f"{self.name} ends at byte {len(self._map)}, inside a tensor: the file is cut short "
                             "(an interrupted download?); fetch it again")
        at = bisect.bisect_right(self._pieces, offset, key=lambda piece: piece[0]) - 1
        if at < 0 or offset + nbytes > self._pieces[at][1]:
            return None
        start, _, piece = self._pieces[at]
        return piece[offset - start:offset - start + nbytes].view(dtype).view(shape)

    def lock(self, ranges: list[tuple[int, int]], runtime=None) -> None:
        """Page-lock the byte ranges [start, end) of the file (merged and widened to whole pages); raises
        LockRefused, with nothing left locked, where CUDA refuses any of them."""
        self.start(ranges, runtime)
        self.finish()

    def start(self, ranges: list[tuple[int, int]], runtime=None) -> None:
        """Begin locking the ranges in THREADS background threads (`finish` waits): `view` works at once, so the
        model can be built from the views while their pages are locked."""
        self._runtime = runtime or torch.cuda.cudart()
        base = self._whole.data_ptr()
        spans = split(page_spans(ranges, PAGE, len(self._map)), THREADS, PAGE, ranges)
        self._pieces = sorted(self._pieces + [(start, end, self._piece(start, end)) for start, end in spans],
                              key=lambda piece: piece[0])
        pool = ThreadPoolExecutor(min(THREADS, max(len(spans), 1)))
        self._pending = [(base + start, end - start, pool.submit(_register, self._runtime, base + start, end - start))
                         for start, end in spans]
        pool.shutdown(wait=False)

    def finish(self) -> None:
        """Wait for the locking `start` began; raises LockRefused, with nothing left locked, where CUDA refused any
        range (the views stay valid, over pages that are not locked)."""
        pending, self._pending = self._pending, []
        errors = [future.result() for _, _, future in pending]
        done = [(address, size) for (address, size, _), error in zip(pending, errors) if error == 0]
        self._locked += [address for address, _ in done]
        self.locked_bytes += sum(size for _, size in done)
        _locked_now[0] += sum(size for _, size in done)
        refused = [e for e in errors if e != 0]
        if refused:
            self.close()
            reason = f"CUDA error {refused[0]}" if isinstance(refused[0], int) else refused[0]
            raise LockRefused(f"cudaHostRegister refused {len(refused)} of {len(pending)} ranges ({reason})")

    def check_transfer(self, device, nbytes: int = CHECK_BYTES) -> None:
        """Copy the first `nbytes` of the first locked piece to `device` and back, as streaming will; raises
        RuntimeError where CUDA will not (the one transfer the first benchmark made from such a range, 8 GiB at
        once on an H100, failed with "invalid argument") or the bytes come back changed."""
        if not self._pieces:
            return
        source = self._pieces[0][2][:nbytes]
        there = source.to(device, non_blocking=True)
        if not torch.equal(there.cpu(), source):
            raise RuntimeError("the bytes copied from the locked file came back changed")

    def close(self) -> None:
        """Unlock every range (after any locking still running); the map itself goes when the last view of it
        does."""
        if self._pending:
            with contextlib.suppress(LockRefused):
                self.finish()  # a refusal closes, which lands here again with nothing pending
        if self._locked:
            if torch.cuda.is_initialized():
                torch.cuda.synchronize()  # no transfer may still be reading a range being unlocked
            for address in self._locked:
                self._runtime.cudaHostUnregister(address)
        _locked_now[0] -= self.locked_bytes
        self._locked, self._pieces, self.locked_bytes = [], [], 0

    def _piece(self, start: int, end: int) -> torch.Tensor:
        """The bytes [start, end) of the map as a storage of their own, whose first byte is a locked page."""
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)
            return torch.frombuffer(self._map, dtype=torch.uint8, count=end - start, offset=start)

    def __del__(self) -> None:
        with contextlib.suppress(Exception):  # at interpreter shutdown CUDA may be gone already
            self.close()


def _register(runtime, address: int, size: int) -> int | str:
    """0, or what CUDA said: the runtime's binding returns the error code; a build that raises instead gives its
    first line."""
    try:
        return int(runtime.cudaHostRegister(address, size, REGISTER_FLAGS))
    except RuntimeError as exc:
        return (str(exc).splitlines() or ["an error"])[0]


def page_spans(ranges: list[tuple[int, int]], page: int, size: int) -> list[tuple[int, int]]:
    """The ranges widened to whole pages (inside `size`), sorted, those that touch or lie within MERGE_GAP of each
    other merged: CUDA refuses to register a page twice."""
    spans: list[list[int]] = []
    for start, end in sorted(r for r in ranges if r[1] > r[0]):
        start, end = start // page * page, min(-(-end // page) * page, size)
        if spans and start <= spans[-1][1] + MERGE_GAP:
            spans[-1][1] = max(spans[-1][1], end)
        else:
            spans.append([start, end])
    return [(s, e) for s, e in spans]


def split(spans: list[tuple[int, int]], parts: int, page: int,
          ranges: list[tuple[int, int]] = ()) -> list[tuple[int, int]]:
    """The spans cut at page boundaries into pieces of at most about 1/`parts` of their whole (a little more where
    a cut moves), so that `parts` threads share the locking however few spans there are (pieces side by side
    share no page). Each cut moves, by at most CUT_SEARCH, to a page boundary that lies inside none of `ranges`:
    a transfer then never reads across two registrations."""
    most = max(-(-sum(e - s for s, e in spans) // parts // page) * page, page)
    inside = _inside(ranges)
    pieces = []
    for start, end in spans:
        at = start
        while end - at > most:
            cut = _free_cut(at + most, at, end, page, inside)
            pieces.append((at, cut))
            at = cut
        pieces.append((at, end))
    return pieces


def _inside(ranges: list[tuple[int, int]]):
    """A test of whether a byte boundary lies strictly inside one of `ranges` (sorted, for bisection)."""
    ordered = sorted(r for r in ranges if r[1] > r[0])
    starts = [s for s, _ in ordered]
    reach = []  # the furthest end among the ranges up to each one (ranges may nest or overlap)
    for _, e in ordered:
        reach.append(max(e, reach[-1]) if reach else e)

    def test(point: int) -> bool:
        at = bisect.bisect_left(starts, point) - 1  # ranges starting before the point
        return at >= 0 and reach[at] > point
    return test


def _free_cut(ideal: int, low: int, high: int, page: int, inside) -> int:
    """The page boundary nearest `ideal`, strictly between `low` and `high`, inside no range; `ideal` if none lies
    within CUT_SEARCH."""
    reach = min(CUT_SEARCH, max(ideal - low, high - ideal))  # no boundary further off lies inside the span
    for step in range(reach // page + 1):
        for cut in (ideal + step * page, ideal - step * page):
            if low < cut < high and not inside(cut):
                return cut
    return ideal
