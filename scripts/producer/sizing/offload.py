"""Carry out a memory plan on a loaded pipeline with diffusers' own mechanisms.

- resident: `.to(device)`
- expert swap (Wan, one expert on the GPU at a time): a forward pre-hook moves the called expert in
  and the other one out, so the switch happens exactly at the boundary step.
- group offload: `apply_group_offloading(block_level, streams, low_cpu_mem_usage)` over weights that were
  first packed into page-locked chunks in place (pin_in_place), so they stay once in host RAM and stream
  without a copy. diffusers' default keeps a second, pinned copy of every weight rounded up to a power of
  two (99.9 GiB of host RAM for the 41 GB Qwen transformer); its low_cpu_mem_usage alone pins each group
  anew at every transfer (Qwen under a 10 GiB cap: 7.7 s an image against 3.5 s).
- partial residency: the plan's `resident_blocks` of each streamed denoiser stay on the GPU, spread evenly
  through the block list, and group offloading is applied to the other blocks only (see _group_offload).
- dequantize on arrival (opt-in, GGUF streamed): producer.sizing.arrival's hook on each streamed block.
- sequential: group offload at leaf level, no streams (the last resort).
- fp8 storage: `enable_layerwise_casting(float8_e4m3fn -> bfloat16)`.
- text encoders: on the GPU whole, or streamed block by block (see place_text_encoder); freed after encoding.
"""

from __future__ import annotations

import gc
import logging
import math
from contextlib import contextmanager

import torch

from producer.facts.registry import WAN_DENOISERS
from producer.sizing.host_copies import keep_host_copies
from producer.sizing.memory import MemoryPlan, Placement

log = logging.getLogger("producer")

DENOISERS = WAN_DENOISERS  # Qwen's one denoiser is the first of them

def torch_dtype(name: str) -> torch.dtype:
    return {"bfloat16": torch.bfloat16, "float32": torch.float32, "float16": torch.float16}[name]


def apply_plan(pipe, plan: MemoryPlan, device: str | torch.device | None = None) -> None:
    """Place every component of `pipe` as the plan says. Call once, after loading (and LoRAs)."""
    device = torch.device(device or plan.device)
    compute = torch_dtype(plan.dtype)
    for name in DENOISERS:
        module = getattr(pipe, name, None)
        if module is None:
            continue
        component = plan.components[name]
        if component.weights == "fp8":
            module.enable_layerwise_casting(storage_dtype=torch.float8_e4m3fn, compute_dtype=compute)
        place_denoiser(module, component.placement, device, plan)
    if plan.components.get("transformer_2") and plan.components["transformer_2"].placement is Placement.MODEL_OFFLOAD:
        install_expert_swap(pipe, device)
    if getattr(pipe, "vae", None) is not None:
        pipe.vae.to(device)
        if plan.vae_tiling:
            pipe.vae.enable_tiling()
    text_encoder = getattr(pipe, "text_encoder", None)
    if text_encoder is not None:
        place_text_encoder(text_encoder, plan.text_encoder, device)


def place_denoiser(module: torch.nn.Module, placement: Placement, device: torch.device, plan: MemoryPlan) -> None:
    """`place_module` for a denoiser, with the plan's levers for streamed blocks (the placement is the caller's:
    a Wan expert alone in RAM lives on the GPU where the plan would swap it)."""
    place_module(module, placement, device, plan.resident_blocks, plan.dequantize_on_arrival, plan.run_ahead)


def place_module(module: torch.nn.Module, placement: Placement, device: torch.device, resident_blocks: int = 0,
                 dequantize_on_arrival: bool = False, run_ahead: bool = False) -> None:
    """`resident_blocks`: under group offload, how many blocks stay on the GPU (the plan's partial residency);
    `dequantize_on_arrival`: the streamed GGUF blocks are dequantized as they arrive (producer.sizing.arrival);
    `run_ahead`: the host does not wait for the GPU at every streamed block (producer.sizing.run_ahead)."""
    placement = Placement(placement)  # a placement's value (`group_offload`) names it too; others raise
    if placement is Placement.GPU:
        module.to(device)
    elif placement is Placement.GROUP_OFFLOAD:
        _group_offload(module, device, leaf=False, resident=resident_blocks, arrival=dequantize_on_arrival,
                       run_ahead=run_ahead)
    elif placement is Placement.SEQUENTIAL:
        _group_offload(module, device, leaf=True)
    else:  # model_offload (the expert swap, or the session, brings it to the GPU for its turn) and cpu
        module.to("cpu")


def place_text_encoder(module: torch.nn.Module, placement: Placement, device: torch.device) -> None:
    """The plan's placement; a streamed text encoder streams block by block from each block list's parent.

    diffusers 0.42.1 finds only direct ModuleList children, and reaching UMT5's or Qwen2.5-VL's block lists
    through `block_modules` with streams registers its layer-execution tracker twice ("Hook with name
    layer_execution_tracker already exists", seen on an H200). Offloading each list's parent on its own
    finds the blocks directly. Leaf-level offloading without streams, used before, cost 10.45 s a prompt
    for UMT5-XXL under a 10 GiB cap on an H100, against 0.04 s on the GPU (bench/results/2026-12-05-h100).
    """
    if placement == Placement.GROUP_OFFLOAD and device.type == "cuda":
        module.to("cpu")  # offloading starts from host memory (a prebuilt encoder may sit on the GPU)
        _stream_block_lists(module, device)
        return
    if placement != Placement.GPU:
        module.to("cpu")
    place_module(module, placement, device)


def block_list_parents(module: torch.nn.Module) -> list[torch.nn.Module]:
    """The modules that hold a list of transformer blocks (UMT5: `encoder`; Qwen2.5-VL: the language model
    and the vision tower), outermost first, none inside another."""
    parents: list[tuple[str, torch.nn.Module]] = []
    for name, child in module.named_modules():
        if isinstance(child, torch.nn.ModuleList) and len(child) >= 2 and name:
            parent_name = name.rpartition(".")[0]
            if not any(parent_name == p or parent_name.startswith(p + ".") for p, _ in parents if p):
                parents.append((parent_name, module.get_submodule(parent_name) if parent_name else module))
    return [m for _, m in parents]


def _stream_block_lists(module: torch.nn.Module, device: torch.device) -> None:
    """Block-level group offloading with streams on every block list's parent; what lies outside them (tied
    embeddings, heads) goes to the GPU, since the parents' own hooks bring in only what they hold."""
    parents = block_list_parents(module)
    inside = {id(p) for parent in parents for p in parent.parameters()}
    pin_in_place(module)
    for parent in parents:
        _group_offload(parent, device, leaf=False, pinned=True)
        for table in parent.modules():
            if isinstance(table, torch.nn.Embedding):
                _look_up_where_the_table_is(table)
    for param in module.parameters():
        if id(param) not in inside:
            param.data = param.data.to(device)
    streamed = {id(m) for parent in parents for m in parent.modules()}
    for owner in module.modules():
        if id(owner) not in streamed:
            for name, buf in list(owner.named_buffers(recurse=False)):
                owner._buffers[name] = buf.to(device)


def _look_up_where_the_table_is(table: torch.nn.Embedding) -> None:
    """An embedding inside a streamed parent is brought in with the parent's own weights when the parent
    runs, but transformers' Qwen2.5-VL looks the prompt's tokens up in `language_model.embed_tokens` itself,
    before it calls the language model: the table is still in host memory and the tokens on the GPU
    ("index is on cuda:0, different from other tensors on cpu", H100, production-3 at 10 GiB). Such a lookup
    runs where the table is (a few thousand rows) and its result goes where the tokens were."""
    def tokens_to_table(module, args):
        ids = args[0] if args else None  # called with input= by keyword: left as it is
        if ids is None or ids.device == module.weight.device:
            return None
        module._tokens_device = ids.device
        return (ids.to(module.weight.device), *args[1:])

    def rows_to_tokens(module, args, output):
        device = module.__dict__.pop("_tokens_device", None)
        return None if device is None else output.to(device, non_blocking=True)

    table.register_forward_pre_hook(tokens_to_table)
    table.register_forward_hook(rows_to_tokens)


def _group_offload(module: torch.nn.Module, device: torch.device, leaf: bool, pinned: bool = False,
                   resident: int = 0, arrival: bool = False, run_ahead: bool = False) -> None:
    from diffusers.hooks import apply_group_offloading

    streams = device.type == "cuda" and not leaf
    run_ahead = run_ahead and streams  # without streams every transfer waits anyway
    blocks = None if leaf or (resident <= 0 and not arrival and not run_ahead) else block_list(module)
    kept = resident_indices(len(blocks[1]), resident) if blocks else []
    if blocks and arrival:
        _dequantize_on_arrival([b for i, b in enumerate(blocks[1]) if i not in set(kept)])
    if blocks:
        for i in kept:  # on the card before pinning, which then skips them (a GGUF file's resident blocks
            # were read into plain memory, not the shared chunks: gguf_host.resident_prefixes), freeing host RAM
            blocks[1][i].to(device)
    if streams and not pinned:
        pin_in_place(module)
    with _hidden(module, blocks, kept):
        apply_group_offloading(
            module,
            onload_device=device,
            offload_device=torch.device("cpu"),
            offload_type="leaf_level" if leaf else "block_level",
            num_blocks_per_group=None if leaf else 1,
            use_stream=streams,
            # record_stream gave garbage images with QwenImage (diffusers issue 12673, fixed in 0.42.1):
            # synchronise instead, unless the plan runs ahead (producer.sizing.run_ahead bounds it).
            record_stream=run_ahead,
            # Never a second pinned copy of the weights: diffusers pins what is not pinned yet at each transfer,
            # which pin_in_place has made a no-op (or, where pinning failed, still works, only slower).
            low_cpu_mem_usage=True,
        )
    keep_host_copies(module)  # no copy back to the host at every forward (producer.sizing.host_copies)
    if run_ahead:
        from producer.sizing import run_ahead as ahead

        ahead.install([b for i, b in enumerate(blocks[1]) if i not in set(kept)])
        log.info("the host runs up to %d streamed blocks ahead of the GPU", ahead.BLOCKS_AHEAD)
    if kept:
        log.info("%d of %d blocks stay on the GPU; the others stream", len(kept), len(blocks[1]))


def _dequantize_on_arrival(streamed: list[torch.nn.Module]) -> None:
    from producer.sizing import arrival

    if not arrival.available():
        log.info("diffusers' GGUF CUDA kernels are in use: streamed blocks are not dequantized on arrival")
        return
    # Registered before group offloading, so that diffusers' hook runs around this one (see producer.sizing.arrival).
    log.info("%d streamed blocks are dequantized on arrival", arrival.install(streamed))


def block_list(module: torch.nn.Module) -> tuple[str, torch.nn.ModuleList] | None:
    """(name, list) of the module's transformer blocks: the direct ModuleList child with the most parameters
    (Qwen's `transformer_blocks`, Wan's `blocks`), the list diffusers' block-level offloading streams."""
    lists = [(name, child) for name, child in module.named_children() if isinstance(child, torch.nn.ModuleList)]
    if not lists:
        return None
    return max(lists, key=lambda item: sum(p.numel() for p in item[1].parameters()))


def resident_indices(count: int, resident: int) -> list[int]:
    """Which of `count` blocks stay on the GPU: `resident` of them, spread evenly from the first. A streamed
    block's prefetch starts when the streamed block before it starts, so the resident blocks between two
    streamed ones lend the host link their compute time too; a resident first block hides the transfer of
    the first streamed one, which otherwise waits at the start of every forward."""
    resident = max(0, min(resident, count - 1))
    return [int(i * count / resident) for i in range(resident)] if resident else []


@contextmanager
def _hidden(module: torch.nn.Module, blocks, kept: list[int]):
    """The block list without its resident blocks while group offloading is applied: diffusers then hooks,
    pins and prefetches only the streamed blocks (in their order), and its group for the module's own weights
    does not take the resident ones. The full list (same objects, same order) is put back afterwards."""
    if not kept:
        yield
        return
    name, full = blocks
    module._modules[name] = torch.nn.ModuleList([b for i, b in enumerate(full) if i not in set(kept)])
    try:
        yield
    finally:
        module._modules[name] = full


# An exact power of two: PyTorch's pinned allocator rounds every request up to one. 256 MiB, not the 2 GiB
# used before: with 2 GiB chunks filled one after the other, two streamed Wan Q4 experts held ~4 GiB more than
# planned (27.3 GiB anonymous memory against 23.3, H100, g4); HostPacker now fills them first fit.
PIN_CHUNK = 1 << 28
PIN_ALIGN = 512


# Chunks from PyTorch's pinned allocator, locked before the copy. Locking filled plain chunks where they lie (four
# threads beside the copy) timed faster alone, 0.27 s against 1.61 s per 8 GiB, yet made the whole placement
# 2.3-2.4 s slower: Qwen's Q8 transformer 8.4-8.6 s against 6.2-6.3 s, Wan's two Q4 experts 6.45 s against 4.09 s
# (H100, bench/results/2026-12-07-h100-evening). Locking them behind a load from disk was slower too (gguf_host).
def pin_in_place(module: torch.nn.Module, chunk_bytes: int | None = None) -> int:
    """Move the module's host weights into page-locked chunks, tensor by tensor, and return the bytes pinned.

    Copying tensor by tensor keeps the peak at the weights plus one chunk. Pinned weights make each streamed
    transfer a direct DMA. If the system refuses to lock more memory, the rest stays pageable (diffusers
    then pins on the fly) and we say so.
    """
    tensors = [t for t in list(module.parameters()) + list(module.buffers()) if _pinnable(t)]
    total = sum(aligned(t.data.numel() * t.data.element_size()) for t in tensors)
    packer, pinned = HostPacker(chunk_bytes, pinned=True, total=total), 0
    try:
        for t in tensors:
            t.data = packer.take(t.data)
            pinned += t.data.numel() * t.data.element_size()
    except RuntimeError as exc:  # page-locking refused (RLIMIT_MEMLOCK, container limits): stream unpinned
        warn_unpinned(pinned, exc)
    return pinned


def warn_unpinned(pinned: int, exc: Exception) -> None:
    log.warning("could not page-lock more host memory after %.1f GiB (%s); the rest streams unpinned, slower",
                pinned / 2**30, (str(exc).splitlines() or ["no reason given"])[0])


class HostPacker:
    """Copies tensors into few large host chunks (page-locked where CUDA is present).

    Each tensor goes into the first chunk with room for it (first fit), so the small tensors fill the ends the
    large ones leave; chunks are `chunk_bytes`, a power of two (the pinned allocator rounds every request up
    to one), except that with `total` (the bytes still to come, where the caller knows them) the last chunks
    shrink to what is left. For a streamed Wan Q4 expert that wastes ~0.25 GiB where filling one chunk after
    the other wasted ~1.4 GiB (`tests/test_offload.py` packs its real tensor sizes; from its layer shapes,
    Qwen's Q8 transformer ~0.6 GiB against ~2.3), and pinning each tensor would round each up to a power of
    two (~1.6x). Without CUDA the chunks are plain memory, exact in size, so the same packing runs (and is
    tested) on CPUs.
    """

    def __init__(self, chunk_bytes: int | None = None, pinned: bool | None = None, total: int | None = None):
        self.chunk_bytes = chunk_bytes or PIN_CHUNK
        self.pinned = torch.cuda.is_available() if pinned is None else pinned
        self.allocated = 0  # bytes of the chunks made: what the packed tensors hold in host memory
        self._open: list[list] = []  # [chunk, bytes used] of the chunks with room left
        self._left = total  # bytes still to come (aligned), or None when the caller does not know

    def take(self, source: torch.Tensor) -> torch.Tensor:
        """A copy of `source` inside a chunk (raises RuntimeError where page-locking is refused)."""
        if source.numel() == 0:
            return source
        view = self.reserve(source.shape, source.dtype)
        view.copy_(source)
        return view

    def reserve(self, shape, dtype: torch.dtype) -> torch.Tensor:
        """Room for a tensor of `shape` and `dtype` inside a chunk, not filled (for a reader that writes into it;
        raises RuntimeError where page-locking is refused)."""
        size = math.prod(shape) * dtype.itemsize
        if size == 0:
            return torch.empty(shape, dtype=dtype)
        need = aligned(size)
        slot = next((s for s in self._open if s[1] + size <= s[0].numel()), None)
        if slot is None:
            slot = [self._new_chunk(self.chunk_size(need)), 0]
            self._open.append(slot)
        chunk, used = slot
        view = chunk[used:used + size].view(dtype).view(shape)
        slot[1] += need
        if slot[1] + PIN_ALIGN > chunk.numel():
            self._open = [s for s in self._open if s is not slot]  # full: not searched again
        if self._left is not None:
            self._left = max(self._left - need, 0)
        return view

    def _new_chunk(self, nbytes: int) -> torch.Tensor:
        chunk = _pinned_chunk(nbytes) if self.pinned else torch.empty(nbytes, dtype=torch.uint8)
        self.allocated += nbytes
        return chunk

    def chunk_size(self, need: int) -> int:
        """The next chunk's bytes: `chunk_bytes`, or less where `total` says less is left; never less than the
        tensor it is made for. Pinned chunks are powers of two (the largest within what is left, or the tensor's
        size rounded up, which the pinned allocator would take anyway); plain ones are exact."""
        want = self.chunk_bytes
        if self._left is not None and self._left < want:
            want = 1 << (max(self._left, 1).bit_length() - 1) if self.pinned else self._left
        nbytes = max(want, need)
        return 1 << (nbytes - 1).bit_length() if self.pinned else nbytes


def aligned(size: int) -> int:
    return -(-size // PIN_ALIGN) * PIN_ALIGN


def _pinned_chunk(nbytes: int) -> torch.Tensor:
    return torch.empty(nbytes, dtype=torch.uint8, pin_memory=True)


def _pinnable(t: torch.Tensor) -> bool:
    """Plain tensors and GGUF blocks (uint8 data; the quant type lives on the parameter, which stays), not
    torchao's tensor subclasses, whose data is several tensors."""
    plain = type(t.data) is torch.Tensor or type(t).__name__ == "GGUFParameter"
    return plain and t.device.type == "cpu" and not t.data.is_pinned()


def _empty_tensors(module: torch.nn.Module) -> None:
    """Give every parameter and buffer of `module` an empty tensor, so its storage (pinned chunks included)
    is freed whoever still holds the module object."""
    for tensor in list(module.parameters()) + list(module.buffers()):
        tensor.data = torch.empty(0, dtype=tensor.dtype, device=tensor.device)


def install_expert_swap(pipe, device: torch.device) -> None:
    """Keep one Wan expert on the GPU: the expert about to run comes in, the other goes back to RAM."""
    experts = [pipe.transformer, pipe.transformer_2]

    def make_hook(mine, other):
        def bring_in(module, args, kwargs):
            if _device_of(other).type != "cpu":
                other.to("cpu", non_blocking=True)
            if _device_of(mine) != device:
                mine.to(device)

        return bring_in

    for mine, other in ((experts[0], experts[1]), (experts[1], experts[0])):
        if getattr(mine, "_producer_swap_hook", None) is None:
            mine._producer_swap_hook = mine.register_forward_pre_hook(make_hook(mine, other), with_kwargs=True)


def _device_of(module: torch.nn.Module) -> torch.device:
    for p in module.parameters():
        return p.device
    return torch.device("cpu")


def release(pipe, name: str, keep_pinned: bool = False) -> None:
    """Drop a component (e.g. the text encoder once every prompt is encoded) and give its memory back.

    `keep_pinned`: leave its page-locked chunks in PyTorch's pinned-memory cache, for a model of the same
    layout read next (one Wan expert in RAM: the other expert, whose chunks have the same sizes, so the
    allocator hands the same locked memory back instead of locking ~9.7 GB afresh at every read)."""
    module = getattr(pipe, name, None)
    if module is None:
        return
    from diffusers.hooks import HookRegistry
    from diffusers.hooks.group_offloading import _GROUP_OFFLOADING

    if hasattr(module, "_diffusers_hook"):
        HookRegistry.check_if_exists_or_initialize(module).remove_hook(_GROUP_OFFLOADING, recurse=True)
    setattr(pipe, name, None)
    # The caller may still hold the module: diffusers' Wan loop keeps `current_model` until its next step,
    # so an expert let go at the boundary would otherwise sit in RAM beside the one read in its place.
    _empty_tensors(module)
    locked = getattr(module, "_producer_locked_map", None)
    if locked is not None:  # a GGUF file locked where its pages lie (gguf_host.map_in_place): unlock them now
        locked.close()
    del module, locked
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
        # The chunks go back to PyTorch's pinned-memory cache, which keeps them locked: hand them back unless
        # the next read reuses them, or they would sit in RAM beside whatever is read next.
        if not keep_pinned:
            getattr(torch._C, "_host_emptyCache", lambda: None)()
