"""Read a GGUF file into host memory once, straight into the chunks that streaming transfers from.

diffusers' `load_gguf_checkpoint` copies every tensor out of the memory-mapped file (`tensor.data.copy()`),
and `offload.pin_in_place` then copies it again into page-locked chunks: for a streamed Wan Q4 expert
(~9.6 GB) that is the file's pages, the plain copy and the pinned copy at once, and with one expert in RAM
it happens at every clip. Here each tensor goes from the mapped file into a `HostPacker` chunk once; the
state dict is then handed to `from_single_file`, which keeps these tensors as they are (GGUF blocks and
tensors already in the compute dtype). The few F16 tensors cast to the compute dtype are pinned later.

A model that will stream block by block (`lock_behind`) is read into plain chunks that
producer.sizing.lock_behind page-locks in the background while the load goes on; placement waits for them.

The blocks the plan keeps on the GPU are read into memory of their own instead, which frees itself when they
move to the card: in a shared pinned chunk their bytes would stay held beside the streamed blocks' (a 24 GB
card keeps 31 of each Wan expert's 40 blocks: ~13.8 GiB of host RAM for nothing). Locked behind the load, that
memory is locked too (chunks of their own), so that moving them is direct DMA; otherwise it is plain.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import torch

from producer.sizing import lock_behind, offload

# Page-lock a streamed model's chunks behind its load (producer.sizing.lock_behind); False locks each chunk before
# the read copies into it, as before (the benchmark's `-lockfirst` lever measures the two in the same run).
LOCK_BEHIND = True


def load_gguf(model_class, path: Path | str, config: Path | str, subfolder: str, dtype: torch.dtype,
              on_host: bool, on_gpu: tuple[str, ...] = (), streamed: bool = False):
    """`model_class.from_single_file` for a GGUF file, with the repo's config (config= + subfolder=: without them
    diffusers guesses the architecture, e.g. Wan 2.1 I2V for a Wan 2.2 expert). `on_host`: the model will live
    in host memory (streamed or swapped), so the file is read straight into page-locked chunks, except the
    tensors whose names start with one of `on_gpu` (the resident blocks: `resident_prefixes`). `streamed`: its
    blocks will stream from there (group offloading, whose placement waits for the locks: offload.place_module),
    so on CUDA the chunks are page-locked behind the load rather than before the read copies into them."""
    from diffusers import GGUFQuantizationConfig

    behind = LOCK_BEHIND and on_host and streamed and torch.cuda.is_available()
    locker = lock_behind.LockBehind() if behind else None
    source = read_into_host_chunks(path, on_gpu, locker) if on_host else str(path)
    model = model_class.from_single_file(source, quantization_config=GGUFQuantizationConfig(compute_dtype=dtype),
                                         config=str(config), subfolder=subfolder, dtype=dtype)
    if locker is not None:
        model.__dict__[lock_behind.ATTRIBUTE] = locker
    return model


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
                          locker: lock_behind.LockBehind | None = None) -> dict[str, torch.Tensor]:
    """The file's tensors by name, as `load_gguf_checkpoint` returns them, held in packed host chunks
    (page-locked where CUDA is present, or by `locker` behind the read; where locking is refused, the rest is
    plain memory); those whose names start with one of `on_gpu` are copies in memory of their own (locked by
    `locker` too where there is one), freed once placement moves them to the card."""
    import gguf
    from diffusers.quantizers.gguf.utils import SUPPORTED_GGUF_QUANT_TYPES, GGUFParameter

    plain = (gguf.GGMLQuantizationType.F32, gguf.GGMLQuantizationType.F16)
    reader = gguf.GGUFReader(str(path))
    total = sum(offload.aligned(int(t.n_bytes)) for t in reader.tensors if not t.name.startswith(on_gpu))
    packer, state, copied = offload.HostPacker(total=total, locker=locker), {}, 0
    resident = _resident_packer(reader, on_gpu, locker)
    for tensor in reader.tensors:
        quantized = tensor.tensor_type not in plain
        if quantized and tensor.tensor_type not in SUPPORTED_GGUF_QUANT_TYPES:
            raise ValueError(f"{tensor.name} has a quantization type: {tensor.tensor_type} which is unsupported.")
        with warnings.catch_warnings():  # the map is read-only; it is only read from
            warnings.simplefilter("ignore", UserWarning)
            source = torch.from_numpy(tensor.data)
        if tensor.name.startswith(on_gpu):
            data = resident.take(source) if resident else source.clone()
        else:
            data = _copy(packer, source, copied)
            copied += data.numel() * data.element_size()
        state[tensor.name] = GGUFParameter(data, quant_type=tensor.tensor_type) if quantized else data
    packer.finish()
    if resident:
        resident.finish()
    del reader  # unmaps the file: its pages stay only in the page cache, which the kernel may reclaim
    return state


def _resident_packer(reader, on_gpu: tuple[str, ...], locker) -> offload.HostPacker | None:
    """With a `locker`, the resident blocks are read into chunks of their own that it locks too, so that
    placement copies them to the card by direct DMA rather than from pageable memory (3.15 s for the 24 / 32
    plan's ~13.6 GiB on an H200); their chunks are unlocked and freed once every block in them has moved."""
    if locker is None or not on_gpu:
        return None
    total = sum(offload.aligned(int(t.n_bytes)) for t in reader.tensors if t.name.startswith(on_gpu))
    return offload.HostPacker(total=total, locker=locker)


def _copy(packer: offload.HostPacker, source: torch.Tensor, copied: int) -> torch.Tensor:
    if packer.pinned:
        try:
            return packer.take(source)
        except RuntimeError as exc:  # page-locking refused: the rest is read into plain memory
            offload.warn_unpinned(copied, exc)
            packer.pinned = False
    return packer.take(source)
