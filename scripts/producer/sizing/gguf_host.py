"""Read a GGUF file into host memory once, straight into the chunks that streaming transfers from.

diffusers' `load_gguf_checkpoint` copies every tensor out of the memory-mapped file (`tensor.data.copy()`),
and `offload.pin_in_place` then copies it again into page-locked chunks: for a streamed Wan Q4 expert
(~9.6 GB) that is the file's pages, the plain copy and the pinned copy at once, and with one expert in RAM
it happens at every clip. Here each tensor goes from the mapped file into a `HostPacker` chunk once; the
state dict is then handed to `from_single_file`, which keeps these tensors as they are (GGUF blocks and
tensors already in the compute dtype). The few F16 tensors cast to the compute dtype are pinned later.

On CUDA the chunks come from PyTorch's pinned allocator, page-locked before the read copies into them.
Reading into plain chunks that a background thread locked while the load went on was measured slower, load from
disk to the first step on an H200 (Wan 10 / 32, bench/results/2026-12-07-h200-night/lock.json): 7.37 s locked
first against 7.72 s, 10.60 s against 11.93 s with the step-distill LoRA (its GGUF load, build and LoRA stages ran
longer beside the locking thread).

The blocks the plan keeps on the GPU are read into plain memory of their own instead, which frees itself when
they move to the card: in a shared pinned chunk their bytes would stay held beside the streamed blocks' (a 24 GB
card keeps 31 of each Wan expert's 40 blocks: ~13.8 GiB of host RAM for nothing).
"""

from __future__ import annotations

import warnings
from pathlib import Path

import torch

from producer.sizing import offload


def load_gguf(model_class, path: Path | str, config: Path | str, subfolder: str, dtype: torch.dtype,
              on_host: bool, on_gpu: tuple[str, ...] = ()):
    """`model_class.from_single_file` for a GGUF file, with the repo's config (config= + subfolder=: without them
    diffusers guesses the architecture, e.g. Wan 2.1 I2V for a Wan 2.2 expert). `on_host`: the model will live
    in host memory (streamed or swapped), so the file is read straight into page-locked chunks, except the
    tensors whose names start with one of `on_gpu` (the resident blocks: `resident_prefixes`)."""
    from diffusers import GGUFQuantizationConfig

    source = read_into_host_chunks(path, on_gpu) if on_host else str(path)
    return model_class.from_single_file(source, quantization_config=GGUFQuantizationConfig(compute_dtype=dtype),
                                        config=str(config), subfolder=subfolder, dtype=dtype)


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


def read_into_host_chunks(path: Path | str, on_gpu: tuple[str, ...] = ()) -> dict[str, torch.Tensor]:
    """The file's tensors by name, as `load_gguf_checkpoint` returns them, held in packed host chunks
    (page-locked where CUDA is present; where locking is refused, the rest is plain memory); those whose names
    start with one of `on_gpu` are plain copies in memory of their own, freed once placement moves them to the
    card."""
    import gguf
    from diffusers.quantizers.gguf.utils import SUPPORTED_GGUF_QUANT_TYPES, GGUFParameter

    plain = (gguf.GGMLQuantizationType.F32, gguf.GGMLQuantizationType.F16)
    reader = gguf.GGUFReader(str(path))
    total = sum(offload.aligned(int(t.n_bytes)) for t in reader.tensors if not t.name.startswith(on_gpu))
    packer, state, copied = offload.HostPacker(total=total), {}, 0
    for tensor in reader.tensors:
        quantized = tensor.tensor_type not in plain
        if quantized and tensor.tensor_type not in SUPPORTED_GGUF_QUANT_TYPES:
            raise ValueError(f"{tensor.name} has a quantization type: {tensor.tensor_type} which is unsupported.")
        with warnings.catch_warnings():  # the map is read-only; it is only read from
            warnings.simplefilter("ignore", UserWarning)
            source = torch.from_numpy(tensor.data)
        if tensor.name.startswith(on_gpu):
            data = source.clone()
        else:
            data = _copy(packer, source, copied)
            copied += data.numel() * data.element_size()
        state[tensor.name] = GGUFParameter(data, quant_type=tensor.tensor_type) if quantized else data
    del reader  # unmaps the file: its pages stay only in the page cache, which the kernel may reclaim
    return state


def _copy(packer: offload.HostPacker, source: torch.Tensor, copied: int) -> torch.Tensor:
    if packer.pinned:
        try:
            return packer.take(source)
        except RuntimeError as exc:  # page-locking refused: the rest is read into plain memory
            offload.warn_unpinned(copied, exc)
            packer.pinned = False
    return packer.take(source)
