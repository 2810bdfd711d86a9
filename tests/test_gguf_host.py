"""A GGUF expert that lives in host memory is read once, straight into packed chunks, and loads the same."""

from __future__ import annotations

import logging

import torch
from producer.sizing import gguf_host, offload


def _storages(tensors) -> set[int]:
    return {t.untyped_storage().data_ptr() for t in tensors}


def test_reads_what_diffusers_reads_into_few_chunks(wan_q4):
    from diffusers.models.model_loading_utils import load_gguf_checkpoint

    path, _ = wan_q4
    mine, theirs = gguf_host.read_into_host_chunks(path), load_gguf_checkpoint(str(path))
    assert mine.keys() == theirs.keys()
    for name, tensor in theirs.items():
        assert type(mine[name]) is type(tensor) and mine[name].dtype == tensor.dtype, name
        assert getattr(mine[name], "quant_type", None) == getattr(tensor, "quant_type", None), name
        assert torch.equal(mine[name].view(torch.uint8), tensor.view(torch.uint8)), name
    assert any(getattr(t, "quant_type", None) is not None for t in mine.values())
    assert len(_storages(mine.values())) == 1  # one chunk of 2 GiB holds a stand-in whole


def test_from_single_file_keeps_the_chunks_and_builds_the_same_model(wan_q4):
    from diffusers import GGUFQuantizationConfig, WanTransformer3DModel

    path, config = wan_q4
    state = gguf_host.read_into_host_chunks(path)
    chunk = _storages(state.values())

    def load(source):
        return WanTransformer3DModel.from_single_file(
            source, quantization_config=GGUFQuantizationConfig(compute_dtype=torch.float32), config=str(config),
            subfolder="transformer", dtype=torch.float32)

    mine, reference = load(state), load(str(path))
    quantized = [p for p in mine.parameters() if getattr(p, "quant_type", None) is not None]
    assert quantized and _storages(quantized) == chunk  # diffusers kept the blocks where they were read
    theirs = reference.state_dict()
    for name, value in mine.state_dict().items():
        assert torch.equal(value.view(torch.uint8), theirs[name].view(torch.uint8)), name


def test_page_locking_refused_midway_reads_the_rest_into_plain_memory(wan_q4, monkeypatch, caplog):
    calls = []

    def refuse_after_one(nbytes):
        calls.append(nbytes)
        if len(calls) > 1:
            raise RuntimeError("cudaHostAlloc failed: out of memory\nmore")
        return torch.empty(nbytes, dtype=torch.uint8)

    monkeypatch.setattr(offload, "_pinned_chunk", refuse_after_one)
    monkeypatch.setattr(offload, "PIN_CHUNK", 64 * 1024)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    path, _ = wan_q4
    with caplog.at_level(logging.WARNING):
        state = gguf_host.read_into_host_chunks(path)
    assert len(calls) == 2 and "could not page-lock more host memory" in caplog.text
    assert "cudaHostAlloc failed: out of memory" in caplog.text and "more" not in caplog.text.split("(")[-1]
    assert len(_storages(state.values())) > 1  # the rest went on into plain chunks
    from diffusers.models.model_loading_utils import load_gguf_checkpoint

    theirs = load_gguf_checkpoint(str(path))
    assert all(torch.equal(state[n].view(torch.uint8), t.view(torch.uint8)) for n, t in theirs.items())


def test_packer_keeps_tensors_apart_and_aligned():
    packer = offload.HostPacker(chunk_bytes=4096, pinned=False)
    a, b = torch.arange(10, dtype=torch.float32), torch.arange(3, dtype=torch.int16)
    va, vb = packer.take(a), packer.take(b)
    assert torch.equal(va, a) and torch.equal(vb, b)
    assert vb.data_ptr() - va.data_ptr() == offload.PIN_ALIGN
    big = packer.take(torch.ones(2048, dtype=torch.float32))  # larger than a chunk: a chunk of its own
    assert big.untyped_storage().nbytes() == 8192 and torch.equal(big, torch.ones(2048))


def test_resident_blocks_are_read_apart_from_the_chunks_and_load_the_same(wan_q4):
    """Blocks the plan keeps on the GPU are plain copies: in a shared chunk their host bytes would stay held
    after placement moved them to the card."""
    path, config = wan_q4
    everything = gguf_host.read_into_host_chunks(path)
    blocks = 1 + max(int(name.split(".")[1]) for name in everything if name.startswith("blocks."))
    on_gpu = gguf_host.resident_prefixes("blocks", blocks, 1)
    assert on_gpu == ("blocks.0.",)
    state = gguf_host.read_into_host_chunks(path, on_gpu)
    resident = [t for name, t in state.items() if name.startswith(on_gpu)]
    packed = [t for name, t in state.items() if not name.startswith(on_gpu)]
    assert resident and packed and len(_storages(packed)) == 1
    assert _storages(resident).isdisjoint(_storages(packed))  # each its own storage, freed on its own
    for name, tensor in everything.items():
        assert torch.equal(state[name].view(torch.uint8), tensor.view(torch.uint8)), name
        assert getattr(state[name], "quant_type", None) == getattr(tensor, "quant_type", None), name
    assert gguf_host.resident_prefixes("blocks", blocks, 0) == ()
    from diffusers import WanTransformer3DModel

    model = gguf_host.load_gguf(WanTransformer3DModel, path, config, "transformer", torch.float32, True, on_gpu)
    reference = gguf_host.load_gguf(WanTransformer3DModel, path, config, "transformer", torch.float32, False)
    theirs = reference.state_dict()
    for name, value in model.state_dict().items():
        assert torch.equal(value.view(torch.uint8), theirs[name].view(torch.uint8)), name


def test_the_plans_resident_blocks_are_the_ones_read_apart():
    assert gguf_host.resident_prefixes("transformer_blocks", 60, 3) == tuple(
        f"transformer_blocks.{i}." for i in offload.resident_indices(60, 3))
    assert gguf_host.resident_prefixes("blocks", 40, 2) == ("blocks.0.", "blocks.20.")


def test_a_wan_expert_read_for_a_plan_with_resident_blocks_reads_them_apart_on_cuda_only():
    from producer.engines.wan.experts import ExpertsOnDisk
    from producer.facts.hardware import from_sizes
    from producer.sizing import memory

    work = memory.wan_workload(832, 480, 81)
    plan = memory.plan_memory(from_sizes(24, 32), memory.WAN_FOOTPRINT, work)
    assert plan.resident_blocks > 0
    expected = gguf_host.resident_prefixes("blocks", plan.blocks, plan.resident_blocks)
    assert ExpertsOnDisk(None, torch.bfloat16, torch.device("cuda"), plan)._resident("transformer") == expected
    assert ExpertsOnDisk(None, torch.bfloat16, torch.device("cpu"), plan)._resident("transformer") == ()
    resident = memory.plan_memory(from_sizes(80, 32), memory.WAN_FOOTPRINT, work)
    assert ExpertsOnDisk(None, torch.bfloat16, torch.device("cuda"), resident)._resident("transformer") == ()


def test_on_cuda_the_file_is_read_into_the_allocators_chunks_and_the_resident_blocks_apart(wan_q4, monkeypatch):
    """Where CUDA is present, a model that lives in host memory is read into chunks from PyTorch's pinned allocator
    (locked before the read copies into them; nothing is locked where it lies, which measured slower), the blocks
    kept on the card into plain memory of their own, and it loads the same weights."""
    from diffusers import WanTransformer3DModel

    chunks, registered = [], []
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(offload, "_pinned_chunk", lambda n: chunks.append(torch.empty(n, dtype=torch.uint8))
                        or chunks[-1])
    monkeypatch.setattr(torch.cuda, "cudart", lambda: registered.append("cudart") or None)
    path, config = wan_q4
    on_gpu = gguf_host.resident_prefixes("blocks", 2, 1)
    model = gguf_host.load_gguf(WanTransformer3DModel, path, config, "transformer", torch.float32, True, on_gpu)
    assert chunks and not registered

    def in_chunks(tensor):
        return any(c.data_ptr() <= tensor.data_ptr() < c.data_ptr() + c.numel() for c in chunks)

    resident = [p for p in model.blocks[0].parameters() if getattr(p, "quant_type", None) is not None]
    streamed = [p for p in model.blocks[1].parameters() if getattr(p, "quant_type", None) is not None]
    assert resident and streamed and all(map(in_chunks, streamed)) and not any(map(in_chunks, resident))
    assert all(p.untyped_storage().nbytes() == p.numel() * p.element_size() for p in resident)  # each its own
    reference = gguf_host.load_gguf(WanTransformer3DModel, path, config, "transformer", torch.float32, False)
    theirs = reference.state_dict()
    for name, value in model.state_dict().items():
        assert torch.equal(value.view(torch.uint8), theirs[name].view(torch.uint8)), name


def test_every_way_of_reading_gives_the_same_bytes(wan_q4, monkeypatch):
    """One reader or several (pieces smaller than the tensors, so they split), the bytes are the file's."""
    path, _ = wan_q4
    monkeypatch.setattr(gguf_host, "READ_PIECE", 4096)
    one, several = gguf_host.read_into_host_chunks(path, threads=1), gguf_host.read_into_host_chunks(path, threads=3)
    from diffusers.models.model_loading_utils import load_gguf_checkpoint

    for name, tensor in load_gguf_checkpoint(str(path)).items():
        for mine in (one[name], several[name]):
            assert torch.equal(mine.view(torch.uint8), tensor.view(torch.uint8)), name


def test_a_file_that_ends_inside_a_tensor_says_so(tmp_path):
    """(weightcheck refuses a truncated file before loading; this is for one cut while it is read.)"""
    path = tmp_path / "cut.gguf"
    path.write_bytes(bytes(range(256)) * 4)
    whole, cut = torch.empty(1000, dtype=torch.uint8), torch.empty(100, dtype=torch.uint8)
    for threads in (1, 2):
        with gguf_host.FileReader(path, threads) as file:
            file.read_into(whole, 24)
        assert whole.tolist() == list((bytes(range(256)) * 4)[24:1024])
        try:
            with gguf_host.FileReader(path, threads) as file:
                file.read_into(cut, 1000)
        except ValueError as exc:
            assert "ends at byte 1024" in str(exc) and "fetch it again" in str(exc)
        else:
            raise AssertionError("a cut file read without complaint")


def test_the_readers_fill_tensors_in_the_background_while_the_caller_goes_on(tmp_path, monkeypatch):
    """read_into_host_chunks makes the next page-locked chunk while the last tensors are read: read_into must
    return before its bytes arrive, and leaving the block must wait for them."""
    import threading

    path = tmp_path / "f.bin"
    path.write_bytes(bytes(range(256)) * 64)
    gate, read_piece = threading.Event(), gguf_host._read_piece

    def held(*args, **kwargs):
        gate.wait(10)
        return read_piece(*args, **kwargs)

    monkeypatch.setattr(gguf_host, "_read_piece", held)
    target = torch.zeros(1000, dtype=torch.uint8)
    with gguf_host.FileReader(path, threads=2) as file:
        file.read_into(target, 10)  # returns at once: the readers wait at the gate
        assert not target.any()
        gate.set()
    assert target.tolist() == list((bytes(range(256)) * 64)[10:1010])
