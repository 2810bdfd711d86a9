"""A streamed GGUF model's chunks are page-locked behind its load, where they lie, and unlocked when they go.

CUDA's calls are recorded by a fake `cudart` (this machine has no GPU): what is tested is which memory gets
locked and unlocked, when, and that placement waits for it; the speed is measured on a GPU machine.
"""

from __future__ import annotations

import gc
import logging

import pytest
import torch
from producer.sizing import gguf_host, lock_behind, offload
from producer.sizing.placement import Placement


class Cudart:
    """Records cudaHostRegister / cudaHostUnregister; refuses every lock after `allow` of them."""

    def __init__(self, allow: int | None = None):
        self.locked: dict[int, int] = {}  # address -> bytes, while locked
        self.calls: list[tuple] = []
        self.allow = allow

    def cudaHostRegister(self, address, nbytes, flags):
        self.calls.append(("lock", address, nbytes))
        if self.allow is not None and len(self.locked) >= self.allow:
            return 2  # cudaErrorMemoryAllocation
        self.locked[address] = nbytes
        return 0

    def cudaHostUnregister(self, address):
        self.calls.append(("unlock", address))
        self.locked.pop(address)
        return 0

    def covers(self, tensor: torch.Tensor) -> bool:
        at = tensor.data_ptr()
        return any(a <= at and at + tensor.numel() * tensor.element_size() <= a + n for a, n in self.locked.items())


@pytest.fixture
def cudart(monkeypatch):
    fake = Cudart()
    monkeypatch.setattr(torch.cuda, "cudart", lambda: fake)
    return fake


def test_each_chunk_is_locked_once_where_it_lies_when_full_and_the_rest_at_the_end(cudart):
    locker = lock_behind.LockBehind()
    packer = offload.HostPacker(chunk_bytes=4096, total=3 * 4096, locker=locker)
    assert not packer.pinned
    pieces = [torch.full((1024,), float(i)) for i in range(3)]  # 4 KiB each: one chunk each
    views = [packer.take(p) for p in pieces[:2]]
    assert len(cudart.calls) <= 2  # full chunks go to the locker as they fill
    views.append(packer.take(pieces[2][:10]))  # a chunk left part-empty: locked at finish
    packer.finish()
    assert locker.wait() == packer.allocated == 3 * 4096
    assert sorted(c[0] for c in cudart.calls) == ["lock"] * 3
    assert all(cudart.covers(v) for v in views)
    assert [torch.equal(v, p[:v.numel()]) for v, p in zip(views, pieces)] == [True] * 3


def test_a_chunk_is_unlocked_when_its_last_view_goes_and_one_never_locked_is_left_alone(cudart):
    locker = lock_behind.LockBehind()
    locked, never = locker.chunk(8192), locker.chunk(8192)
    locker.submit(locked)
    view, address = locked[100:200], locked.data_ptr()
    del locked
    locker.wait()
    gc.collect()
    assert address in cudart.locked  # a view still holds the chunk
    del view
    gc.collect()
    assert address not in cudart.locked and ("unlock", address) in cudart.calls
    del never
    gc.collect()
    assert [c for c in cudart.calls if c[0] == "unlock"] == [("unlock", address)]


def test_a_refused_lock_stops_locking_and_placement_says_so(monkeypatch, caplog):
    fake = Cudart(allow=1)
    monkeypatch.setattr(torch.cuda, "cudart", lambda: fake)
    locker = lock_behind.LockBehind()
    chunks = [locker.chunk(4096) for _ in range(3)]
    for chunk in chunks:
        locker.submit(chunk)
    module = torch.nn.Linear(2, 2)
    module.__dict__[lock_behind.ATTRIBUTE] = locker
    with caplog.at_level(logging.WARNING):
        offload.place_module(module, Placement.CPU, torch.device("cpu"))
    assert len(fake.locked) == 1 and len([c for c in fake.calls if c[0] == "lock"]) == 2  # none tried after
    assert "could not page-lock more host memory" in caplog.text and "cudaHostRegister returned error 2" in caplog.text
    assert lock_behind.ATTRIBUTE not in module.__dict__  # settled once
    assert lock_behind.settle(module) == (0, None)


def test_a_streamed_expert_loads_into_chunks_locked_behind_and_placement_waits_for_them(wan_q4, cudart, monkeypatch):
    from diffusers import WanTransformer3DModel

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    path, config = wan_q4
    model = gguf_host.load_gguf(WanTransformer3DModel, path, config, "transformer", torch.float32, True,
                                streamed=True)
    locker = model.__dict__[lock_behind.ATTRIBUTE]
    quantized = [p for p in model.parameters() if getattr(p, "quant_type", None) is not None]
    assert quantized
    settled = []
    monkeypatch.setattr(lock_behind, "settle", lambda m: settled.append(m) or (locker.wait(), locker.refused))
    offload.place_module(model, Placement.CPU, torch.device("cpu"))
    assert settled == [model] and all(cudart.covers(p) for p in quantized)
    reference = gguf_host.load_gguf(WanTransformer3DModel, path, config, "transformer", torch.float32, False)
    theirs = reference.state_dict()
    for name, value in model.state_dict().items():
        assert torch.equal(value.view(torch.uint8), theirs[name].view(torch.uint8)), name


def test_only_a_streamed_expert_on_cuda_is_locked_behind(wan_q4, cudart, monkeypatch):
    from diffusers import WanTransformer3DModel

    path, config = wan_q4
    load = gguf_host.load_gguf
    assert lock_behind.ATTRIBUTE not in load(WanTransformer3DModel, path, config, "transformer", torch.float32,
                                             True, streamed=True).__dict__  # no CUDA here
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(offload, "_pinned_chunk", lambda n: torch.empty(n, dtype=torch.uint8))
    swapped = load(WanTransformer3DModel, path, config, "transformer", torch.float32, True)  # whole to the GPU
    assert lock_behind.ATTRIBUTE not in swapped.__dict__
    monkeypatch.setattr(gguf_host, "LOCK_BEHIND", False)  # the benchmark's -lockfirst
    assert lock_behind.ATTRIBUTE not in load(WanTransformer3DModel, path, config, "transformer", torch.float32,
                                             True, streamed=True).__dict__
    assert not cudart.calls


def test_the_resident_blocks_are_locked_in_chunks_of_their_own_freed_when_they_move(wan_q4, cudart, monkeypatch):
    """Placement copies the blocks kept on the card from locked memory (direct DMA), and their chunks, which
    hold nothing else, are unlocked and freed once the blocks have moved; the streamed blocks' stay locked."""
    from diffusers import WanTransformer3DModel

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    path, config = wan_q4
    on_gpu = gguf_host.resident_prefixes("blocks", 2, 1)
    model = gguf_host.load_gguf(WanTransformer3DModel, path, config, "transformer", torch.float32, True,
                                on_gpu=on_gpu, streamed=True)
    model.__dict__[lock_behind.ATTRIBUTE].wait()
    kept, streamed = model.blocks[0], model.blocks[1]
    assert on_gpu == ("blocks.0.",)
    resident = [p for p in kept.parameters() if getattr(p, "quant_type", None) is not None]
    others = [p for p in streamed.parameters() if getattr(p, "quant_type", None) is not None]
    assert resident and others and all(cudart.covers(p) for p in resident + others)

    def chunk_of(tensor):
        at = tensor.data_ptr()
        return next(a for a, n in cudart.locked.items() if a <= at < a + n)

    theirs = {chunk_of(p) for p in resident}
    assert theirs.isdisjoint(chunk_of(p) for p in others)
    del resident
    kept.to("meta")  # as moving them to the card does: the block lets go of its host tensors
    gc.collect()
    assert theirs.isdisjoint(cudart.locked) and {("unlock", a) for a in theirs} <= set(cudart.calls)
    assert all(cudart.covers(p) for p in others)


def test_pinning_in_place_on_cuda_copies_into_the_allocators_chunks_not_locking_in_place(cudart, monkeypatch):
    """pin_in_place asks PyTorch's pinned allocator: locking filled chunks where they lie made the whole placement
    2.3 s slower on an H100 (offload.py says where); every weight keeps its value."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    chunks = []
    monkeypatch.setattr(offload, "_pinned_chunk", lambda n: chunks.append(torch.empty(n, dtype=torch.uint8))
                        or chunks[-1])
    torch.manual_seed(0)
    model = torch.nn.Sequential(*[torch.nn.Linear(64, 64) for _ in range(6)])
    before = {k: v.clone() for k, v in model.state_dict().items()}
    pinned = offload.pin_in_place(model, chunk_bytes=8192)
    assert pinned == sum(v.numel() * v.element_size() for v in before.values())
    assert chunks and not cudart.locked and not cudart.calls  # nothing registered in place
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())
