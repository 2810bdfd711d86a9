"""Read a GGUF file into host memory once, straight into the chunks that streaming transfers from.

diffusers' `load_gguf_checkpoint` copies every tensor out of the memory-mapped file (`tensor.data.copy()`),
and `offload.pin_in_place` then copies it again into page-locked chunks: for a streamed Wan Q4 expert
(~9.6 GB) that is the file's pages, the plain copy and the pinned copy at once, and with one expert in RAM
it happens at every clip. Here the file is parsed for its tensors' names, types and offsets, and each tensor's
bytes are read from the file straight into room in a `HostPacker` chunk, by several readers (`FileReader`); the
state dict is then handed to `from_single_file`, which keeps these tensors as they are (GGUF blocks and
tensors already in the compute dtype). The few F16 tensors cast to the compute dtype are pinned later.

On CUDA the chunks come from PyTorch's pinned allocator, page-locked before the read copies into them.
Reading into plain chunks that a background thread locked while the load went on was measured slower, load from
disk to the first step on an H200 (Wan 10 / 32, bench/results/2026-12-07-h200-night/lock.json): 7.37 s locked
first against 7.72 s, 10.60 s against 11.93 s with the step-distill LoRA (its GGUF load, build and LoRA stages ran
longer beside the locking thread).

Where the plan streams the model's blocks on CUDA and PRODUCER_LOCK_IN_PLACE=1 asks for it (opt-in until a GPU run
measures it: `streams_in_place`), its streamed blocks are not read if CUDA can lock them where they lie (`map_in_place`,
producer.sizing.locked_map): the streamed quantized tensors are views of the file's read-only map, their pages
locked in the page cache by background threads while diffusers builds the model; the few other tensors are read.
Where the device refuses, the placement copies the views into locked memory and later loads read their files;
models moved to the GPU whole are read (their locked pages would stay behind them).

The blocks the plan keeps on the GPU are read into plain memory of their own instead, which frees itself when
they move to the card: in a shared pinned chunk their bytes would stay held beside the streamed blocks' (a 24 GB
card keeps 31 of each Wan expert's 40 blocks: ~13.8 GiB of host RAM for nothing).
"""

from __future__ import annotations

import logging
import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import NamedTuple, Self

import torch

from producer.sizing import offload
from producer.sizing.locked_map import LockedMap
from producer.values import env_switch

log = logging.getLogger(__name__)

# Readers filling the host chunks from the file, each taking the next piece in file order: a page-cached file
# is then copied by several cores, and a drive keeps several requests in flight.
READ_THREADS = min(8, os.cpu_count() or 1)
READ_PIECE = 16 << 20


def load_gguf(model_class, path: Path | str, config: Path | str, subfolder: str, dtype: torch.dtype,
              on_host: bool, on_gpu: tuple[str, ...] = (), in_place: bool = False):
    """`model_class.from_single_file` for a GGUF file, with the repo's config (config= + subfolder=: without them
    diffusers guesses the architecture, e.g. Wan 2.1 I2V for a Wan 2.2 expert). `on_host`: the model will live
    in host memory (streamed or swapped), so the file is read straight into page-locked chunks, except the
    tensors whose names start with one of `on_gpu` (the resident blocks: `resident_prefixes`). `in_place` (see
    `streams_in_place`): the streamed tensors are locked where the file's pages lie instead, where CUDA allows."""
    from diffusers import GGUFQuantizationConfig

    source, mapped = map_in_place(path, on_gpu) if in_place and on_host else (None, None)
    if mapped is None:
        source = read_into_host_chunks(path, on_gpu) if on_host else str(path)
    try:
        model = model_class.from_single_file(source, quantization_config=GGUFQuantizationConfig(compute_dtype=dtype),
                                             config=str(config), subfolder=subfolder, dtype=dtype)
    except BaseException:
        if mapped is not None:
            mapped.close()
        raise
    if mapped is not None and finish_locking(mapped):
        model._producer_locked_map = mapped  # unlocked by offload.release (or when the model goes)
    return model


# Locking streamed GGUF files in place is opt-in (PRODUCER_LOCK_IN_PLACE=1) until a GPU run has measured it against
# the read: CUDA's locking of a file's pages has not run on this project's machines yet.
LOCK_IN_PLACE = False


def streams_in_place(plan, component: str, device) -> bool:
    """Whether `component`'s GGUF file is to be locked where its pages lie (locked_map) rather than read into
    chunks: its blocks stream from host memory on a CUDA device, and PRODUCER_LOCK_IN_PLACE (1/true/yes/on or
    0/false/no/off; LOCK_IN_PLACE where unset) asks for it. Only a streamed model keeps its host tensors for the
    whole run; one moved to the GPU whole would leave the locked pages behind it."""
    from producer.sizing.placement import Placement

    wanted = env_switch("PRODUCER_LOCK_IN_PLACE", LOCK_IN_PLACE)
    streamed = plan.components[component].placement is Placement.GROUP_OFFLOAD
    return wanted and streamed and torch.device(device).type == "cuda" and not _lock_refused


def resident_prefixes(block_list: str, blocks: int, resident: int) -> tuple[str, ...]:
    """Key prefixes of the blocks a plan keeps on the GPU (the same ones `offload.resident_indices` picks)."""
    return tuple(f"{block_list}.{i}." for i in offload.resident_indices(blocks, resident)) if resident else ()


def kept_on_gpu(plan, component: str, block_list: str, device) -> tuple[str, ...]:
    """`resident_prefixes` of the blocks `plan` keeps on the GPU for `component`: none unless its blocks stream on
    a CUDA device (off CUDA, placement keeps nothing resident; unstreamed, everything goes one way)."""
    from producer.sizing.placement import Placement

    if plan.components[component].placement is not Placement.GROUP_OFFLOAD or torch.device(device).type != "cuda":
        return ()
    return resident_prefixes(block_list, plan.blocks, plan.resident_blocks)


def read_into_host_chunks(path: Path | str, on_gpu: tuple[str, ...] = (),
                          threads: int = READ_THREADS) -> dict[str, torch.Tensor]:
    """The file's tensors by name, as `load_gguf_checkpoint` returns them, held in packed host chunks
    (page-locked where CUDA is present; where locking is refused, the rest is plain memory); those whose names
    start with one of `on_gpu` are in memory of their own, freed once placement moves them to the card. The
    file is parsed for names, types and offsets; each tensor is then read straight into its room by `threads`
    readers in the background while the next chunks are made (locking memory and reading overlap)."""
    tensors = _parsed(path)
    total = sum(offload.aligned(t.nbytes) for t in tensors if not t.name.startswith(on_gpu))
    packer, state, reserved = offload.HostPacker(total=total), {}, 0
    with FileReader(path, threads) as file:
        for t in tensors:
            if t.name.startswith(on_gpu):
                data = torch.empty(t.shape, dtype=t.dtype)
            else:
                data = _reserve(packer, t.shape, t.dtype, reserved)
                reserved += t.nbytes
            file.read_into(data, t.offset)
            state[t.name] = (data, t.kind)
    return _as_gguf_state(state)


def map_in_place(path: Path | str, on_gpu: tuple[str, ...] = ()) -> tuple[dict[str, torch.Tensor], LockedMap]:
    """The file's tensors by name: the quantized ones outside `on_gpu` as views of its read-only map, whose pages
    are being locked where they lie in the background (locked_map; `mapped.finish()` waits, and raises LockRefused,
    with nothing locked, where CUDA refused); the rest read into memory of their own, as the read does: the
    resident blocks go to the card, the F16/F32 tensors are cast or pinned, and a LoRA's deltas may be added to
    them (a write into the map would fault)."""
    tensors, mapped = _parsed(path), LockedMap(path)
    streamed = {t.name for t in tensors if t.kind is not None and not t.name.startswith(on_gpu)}
    state = {}
    try:
        mapped.start([(t.offset, t.offset + t.nbytes) for t in tensors if t.name in streamed])
        with FileReader(path) as file:
            for t in tensors:
                data = mapped.view(t.offset, t.shape, t.dtype) if t.name in streamed else None
                if data is None:
                    data = torch.empty(t.shape, dtype=t.dtype)
                    file.read_into(data, t.offset)
                state[t.name] = (data, t.kind)
    except BaseException:
        mapped.close()  # a cut file, an interrupt: nothing stays locked
        raise
    return _as_gguf_state(state), mapped


def finish_locking(mapped: LockedMap) -> bool:
    """Wait for the locking map_in_place began (it ran beside the model's build) and try one transfer from it;
    False where CUDA refused either, said once: the placement then copies the views into locked memory, as it
    does a read file's tensors, and later loads of the process read their files."""
    global _lock_refused
    try:
        mapped.finish()
        if torch.cuda.is_available():
            mapped.check_transfer(torch.cuda.current_device())
        return True
    except RuntimeError as exc:  # LockRefused, or a transfer from the locked pages failed
        mapped.close()
        _lock_refused = True
        log.info("the model file's pages could not be locked where they lie (%s); its weights are copied into "
                 "locked memory instead", (str(exc).splitlines() or ["?"])[0])
        return False


_lock_refused = False  # CUDA refused once: the process reads its files from then on


class _Tensor(NamedTuple):
    name: str
    shape: tuple[int, ...]
    dtype: torch.dtype
    offset: int  # in the file
    nbytes: int
    kind: object  # the GGML quantization type, None for F16/F32 tensors


def _parsed(path: Path | str) -> list[_Tensor]:
    """The file's tensors, parsed for names, types and offsets (no page of their data read)."""
    import gguf
    from diffusers.quantizers.gguf.utils import SUPPORTED_GGUF_QUANT_TYPES

    plain = (gguf.GGMLQuantizationType.F32, gguf.GGMLQuantizationType.F16)
    reader, tensors = gguf.GGUFReader(str(path)), []
    for tensor in reader.tensors:
        quantized = tensor.tensor_type not in plain
        if quantized and tensor.tensor_type not in SUPPORTED_GGUF_QUANT_TYPES:
            raise ValueError(f"{tensor.name} has a quantization type: {tensor.tensor_type} which is unsupported.")
        # The parsed array only describes the bytes (a view of the map, no page of it read).
        dtype = torch.from_numpy(tensor.data[:0].copy()).dtype
        tensors.append(_Tensor(tensor.name, tuple(tensor.data.shape), dtype, int(tensor.data_offset),
                               int(tensor.n_bytes), tensor.tensor_type if quantized else None))
    del reader  # unmaps the file
    return tensors


def _as_gguf_state(state: dict) -> dict[str, torch.Tensor]:
    from diffusers.quantizers.gguf.utils import GGUFParameter

    return {name: GGUFParameter(data, quant_type=kind) if kind is not None else data
            for name, (data, kind) in state.items()}


class FileReader:
    """Fills tensors with a file's bytes, in pieces of READ_PIECE taken in file order by `threads` readers in the
    background (os.preadv lets go of the GIL), so the caller goes on meanwhile; leaving the `with` block waits
    for every piece and raises the first error. One reader, or a system without preadv: read at once."""

    def __init__(self, path: Path | str, threads: int = READ_THREADS):
        self._file = open(path, "rb", buffering=0)  # noqa: SIM115 (closed by __exit__)
        self._pool = ThreadPoolExecutor(threads) if threads > 1 and hasattr(os, "preadv") else None
        self._pending = []

    def read_into(self, tensor: torch.Tensor, offset: int) -> None:
        if not tensor.numel():
            return
        view = memoryview(tensor.reshape(-1).view(torch.uint8).numpy())
        for at in range(0, len(view), READ_PIECE):
            piece = (self._file, view[at:at + READ_PIECE], offset + at)
            if self._pool is None:
                _read_piece(*piece, positioned=False)
            else:
                self._pending.append(self._pool.submit(_read_piece, *piece, positioned=True))

    def __enter__(self) -> Self:
        return self

    def __exit__(self, kind, exc, tb) -> None:
        try:
            if kind is None:
                for future in self._pending:
                    future.result()
        finally:  # no reader may still write into memory the caller lets go of
            if self._pool is not None:
                self._pool.shutdown(wait=True, cancel_futures=True)
            self._file.close()


def _read_piece(f, piece: memoryview, offset: int, positioned: bool) -> None:
    done = 0
    while done < len(piece):
        if positioned:
            got = os.preadv(f.fileno(), [piece[done:]], offset + done)
        else:
            f.seek(offset + done)
            got = f.readinto(piece[done:])
        if not got:
            raise ValueError(f"{f.name} ends at byte {offset + done}, inside a tensor: the file is cut short "
                             "(an interrupted download?); fetch it again")
        done += got


def _reserve(packer: offload.HostPacker, shape, dtype: torch.dtype, reserved: int) -> torch.Tensor:
    if packer.pinned:
        try:
            return packer.reserve(shape, dtype)
        except RuntimeError as exc:  # page-locking refused: the rest is read into plain memory
            offload.warn_unpinned(reserved, exc)
            packer.pinned = False
    return packer.reserve(shape, dtype)
