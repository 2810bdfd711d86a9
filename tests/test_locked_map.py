"""A streamed GGUF model's file locked where its pages lie: the same weights as the read, the streamed blocks' ranges
locked (and only those), unlocked before the map goes, and the read where CUDA refuses."""

from __future__ import annotations

import itertools
import logging

import pytest
import torch
from producer.sizing import gguf_host, locked_map, offload


class FakeRuntime:
    """CUDA's register calls, recorded (no CUDA here); `refuse` answers that error from the nth call on."""

    def __init__(self, refuse: int | str = 0, after: int = 0):
        self.locked: dict[int, int] = {}
        self.calls, self.refuse, self.after = [], refuse, after

    def cudaHostRegister(self, address, size, flags):
        self.calls.append(("register", address, size, flags))
        if self.refuse and len([c for c in self.calls if c[0] == "register"]) > self.after:
            if isinstance(self.refuse, str):
                raise RuntimeError(self.refuse)
            return self.refuse
        assert not any(a < address + size and address < a + s for a, s in self.locked.items()), "a page twice"
        self.locked[address] = size
        return 0

    def cudaHostUnregister(self, address):
        self.calls.append(("unregister", address))
        del self.locked[address]
        return 0


@pytest.fixture
def runtime(monkeypatch):
    fake = FakeRuntime()
    monkeypatch.setattr(torch.cuda, "cudart", lambda: fake)
    return fake


def test_page_spans_are_whole_pages_merged_where_they_touch():
    assert locked_map.page_spans([(10, 20), (4096 * 600, 4096 * 600 + 1)], 4096, 1 << 30) == [
        (0, 4096), (4096 * 600, 4096 * 601)]
    assert locked_map.page_spans([(5000, 9000), (100, 200), (9000, 9000)], 4096, 1 << 30) == [(0, 12288)]
    assert locked_map.page_spans([(0, 10)], 4096, 10) == [(0, 10)]  # never past the file's end


def test_the_spans_are_cut_so_that_every_thread_locks_a_share():
    pieces = locked_map.split([(0, 4096 * 80), (4096 * 100, 4096 * 101)], 8, 4096)
    assert all(e - s <= 4096 * 11 and s % 4096 == 0 for s, e in pieces) and len(pieces) == 9
    assert sum(e - s for s, e in pieces) == 4096 * 81 and pieces[-1] == (4096 * 100, 4096 * 101)
    assert locked_map.split([(0, 10)], 8, 4096) == [(0, 10)]


def test_the_mapped_tensors_are_the_files_and_load_the_same_model(wan_q4, runtime, monkeypatch):
    from diffusers import WanTransformer3DModel
    from diffusers.models.model_loading_utils import load_gguf_checkpoint

    monkeypatch.setattr(locked_map, "PAGE", 64)  # the stand-in's tensors are small: a few pieces, each larger
    monkeypatch.setattr(locked_map, "THREADS", 3)  # than any tensor (as a full-size expert's ~1.2 GB are)
    path, config = wan_q4
    on_gpu = gguf_host.resident_prefixes("blocks", 2, 1)
    state, mapped = gguf_host.map_in_place(path, on_gpu)
    mapped.finish()  # the locking ran in the background
    theirs = load_gguf_checkpoint(str(path))
    assert state.keys() == theirs.keys()
    for name, tensor in theirs.items():
        assert type(state[name]) is type(tensor) and state[name].dtype == tensor.dtype, name
        assert getattr(state[name], "quant_type", None) == getattr(tensor, "quant_type", None), name
        assert torch.equal(state[name].view(torch.uint8), tensor.view(torch.uint8)), name
    base = mapped._whole.data_ptr()
    spans = []  # the locked pieces, joined where they lie side by side
    for start, end in sorted((a - base, a - base + s) for a, s in runtime.locked.items()):
        if spans and start == spans[-1][1]:
            spans[-1] = (spans[-1][0], end)
        else:
            spans.append((start, end))
    assert all(flags == locked_map.REGISTER_FLAGS for *_, flags in runtime.calls)

    def locked(t):
        at = t.data_ptr() - base
        return any(s <= at and at + t.numel() * t.element_size() <= e for s, e in spans)

    def pinned_where_it_lies(t):
        # PyTorch asks CUDA about a tensor's storage's first byte: it must be where a registration begins, and the
        # tensor inside that one registration (a transfer never reads across two)
        first = t.untyped_storage().data_ptr()
        return first in runtime.locked and t.data_ptr() + t.numel() * t.element_size() <= first + runtime.locked[first]

    def own_memory(t):
        return not base <= t.untyped_storage().data_ptr() < base + mapped._whole.numel()

    streamed = [t for n, t in state.items() if n.startswith("blocks.1.") and getattr(t, "quant_type", None)]
    resident = [t for n, t in state.items() if n.startswith("blocks.0.") and getattr(t, "quant_type", None)]
    assert streamed and all(map(locked, streamed)) and all(map(pinned_where_it_lies, streamed))
    assert resident and all(map(own_memory, resident))  # read: they go to the card
    plain = [t for t in state.values() if getattr(t, "quant_type", None) is None]
    assert plain and all(map(own_memory, plain))  # read: cast, pinned, or given a LoRA's delta in place
    assert mapped.locked_bytes == sum(e - s for s, e in spans)

    model = gguf_host.load_gguf(WanTransformer3DModel, path, config, "transformer", torch.float32, True, on_gpu, True)
    reference = gguf_host.load_gguf(WanTransformer3DModel, path, config, "transformer", torch.float32, False)
    quantized = [p for p in model.blocks[1].parameters() if getattr(p, "quant_type", None) is not None]
    assert quantized and all(map(pinned_where_it_lies, quantized))
    theirs = reference.state_dict()
    for name, value in model.state_dict().items():
        assert torch.equal(value.view(torch.uint8), theirs[name].view(torch.uint8)), name


def test_cuts_between_pieces_fall_between_tensors_where_one_can(wan_q4, runtime, monkeypatch):
    from gguf import GGUFReader

    path, _ = wan_q4
    ranges = [(int(t.data_offset), int(t.data_offset) + int(t.n_bytes)) for t in GGUFReader(path).tensors]
    monkeypatch.setattr(locked_map, "PAGE", 64)  # the stand-in's tensors are small: many cuts to place
    whole = [(min(s for s, _ in ranges) // 64 * 64, max(e for _, e in ranges))]
    pieces = locked_map.split(whole, 8, 64, ranges)
    assert len(pieces) > 4 and pieces[0][0] == whole[0][0] and pieces[-1][1] == whole[0][1]
    assert all(a[1] == b[0] and a[1] % 64 == 0 for a, b in itertools.pairwise(pieces))
    assert not any(s < cut < e for cut, _ in pieces[1:] for s, e in ranges)
    monkeypatch.setattr(locked_map, "CUT_SEARCH", 0)  # no room to move: a tensor across a cut has no view
    state, mapped = gguf_host.map_in_place(path)
    mapped.finish()
    base = mapped._whole.data_ptr()
    cuts = sorted(address - base for address in runtime.locked)[1:]
    crossing = [t for t in state.values() if any(t.data_ptr() - base < c < t.data_ptr() - base + t.nbytes
                                                 for c in cuts)]
    assert not crossing  # each tensor lies inside one piece, or was read into memory of its own
    ours = [t for t in state.values() if base <= t.untyped_storage().data_ptr() < base + mapped._whole.numel()]
    assert 0 < len(ours) < sum(1 for t in state.values() if getattr(t, "quant_type", None) is not None)
    from diffusers.models.model_loading_utils import load_gguf_checkpoint

    for name, tensor in load_gguf_checkpoint(str(path)).items():
        assert torch.equal(state[name].view(torch.uint8), tensor.view(torch.uint8)), name
    mapped.close()


def test_the_pages_are_locked_while_diffusers_builds_the_model(wan_q4, monkeypatch):
    import threading

    from diffusers import WanTransformer3DModel

    building = threading.Event()

    class WaitsForTheBuild(FakeRuntime):
        def cudaHostRegister(self, address, size, flags):
            self.waited.append(building.wait(20))  # False had the load waited for the locking before building
            return super().cudaHostRegister(address, size, flags)

    fake = WaitsForTheBuild()
    fake.waited = []
    monkeypatch.setattr(torch.cuda, "cudart", lambda: fake)
    monkeypatch.setattr(gguf_host, "_lock_refused", False)
    build = WanTransformer3DModel.from_single_file
    monkeypatch.setattr(WanTransformer3DModel, "from_single_file",
                        classmethod(lambda cls, *a, **k: building.set() or build(*a, **k)))
    path, config = wan_q4
    model = gguf_host.load_gguf(WanTransformer3DModel, path, config, "transformer", torch.float32, True, (), True)
    assert fake.waited and all(fake.waited) and model._producer_locked_map.locked_bytes == sum(fake.locked.values())
    model._producer_locked_map.close()


def test_a_transfer_that_fails_from_the_locked_pages_falls_back_to_copying_them(wan_q4, runtime, monkeypatch, caplog):
    """The load tries one transfer from the locked pages before streaming relies on them: where CUDA will not
    copy from them, nothing stays locked and the placement copies the weights, as where it refused to lock."""
    from diffusers import WanTransformer3DModel

    path, config = wan_q4
    _, mapped = gguf_host.map_in_place(path)
    mapped.finish()
    mapped.check_transfer("cpu")  # the copy there and back, compared
    mapped.close()
    monkeypatch.setattr(gguf_host, "_lock_refused", False)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 0)

    def refuses(self, device):
        raise RuntimeError("CUDA error: invalid argument\nmore")
    monkeypatch.setattr(locked_map.LockedMap, "check_transfer", refuses)
    with caplog.at_level(logging.INFO, logger=gguf_host.log.name):
        model = gguf_host.load_gguf(WanTransformer3DModel, path, config, "transformer", torch.float32, True, (), True)
    assert not hasattr(model, "_producer_locked_map") and not runtime.locked and gguf_host._lock_refused
    assert "could not be locked where they lie (CUDA error: invalid argument)" in caplog.text


def test_release_unlocks_before_the_map_goes(wan_q4, runtime):
    from diffusers import WanTransformer3DModel

    path, config = wan_q4
    model = gguf_host.load_gguf(WanTransformer3DModel, path, config, "transformer", torch.float32, True, (), True)
    assert runtime.locked
    holder = type("Pipe", (), {})()
    holder.transformer = model
    del model
    offload.release(holder, "transformer", keep_pinned=True)
    assert holder.transformer is None and not runtime.locked
    assert runtime.calls[-1][0] == "unregister"


def test_where_cuda_refuses_nothing_stays_locked_and_the_model_is_the_files(wan_q4, monkeypatch, caplog):
    """The refusal comes while the model is built from the views: they stay valid over unlocked pages, which the
    placement copies into locked memory as it does a read file's tensors; later loads of the process read."""
    from diffusers import WanTransformer3DModel

    fake = FakeRuntime(refuse=801, after=1)  # cudaErrorNotSupported: read-only registration unsupported
    monkeypatch.setattr(torch.cuda, "cudart", lambda: fake)
    monkeypatch.setattr(locked_map, "MERGE_GAP", 0)  # several ranges, so the refusal comes after one lock
    monkeypatch.setattr(locked_map, "PAGE", 32)
    monkeypatch.setattr(gguf_host, "_lock_refused", False)
    path, config = wan_q4
    _, mapped = gguf_host.map_in_place(path)
    with pytest.raises(locked_map.LockRefused, match="CUDA error 801"):
        mapped.finish()
    assert not fake.locked and any(c[0] == "unregister" for c in fake.calls)
    raising = FakeRuntime(refuse="CUDA error: operation not supported\nmore", after=1)  # a binding that raises
    monkeypatch.setattr(torch.cuda, "cudart", lambda: raising)
    _, mapped = gguf_host.map_in_place(path)
    with pytest.raises(locked_map.LockRefused, match=r"ranges \(CUDA error: operation not supported\)$"):
        mapped.finish()
    assert not raising.locked
    fake = FakeRuntime(refuse=801, after=1)
    monkeypatch.setattr(torch.cuda, "cudart", lambda: fake)
    with caplog.at_level(logging.INFO, logger=gguf_host.log.name):
        model = gguf_host.load_gguf(WanTransformer3DModel, path, config, "transformer", torch.float32, True, (), True)
    assert not hasattr(model, "_producer_locked_map") and "could not be locked where they lie" in caplog.text
    assert not fake.locked and locked_map.locked_bytes_now() == 0
    reference = gguf_host.load_gguf(WanTransformer3DModel, path, config, "transformer", torch.float32, False)
    theirs = reference.state_dict()
    assert all(torch.equal(v.view(torch.uint8), theirs[k].view(torch.uint8)) for k, v in model.state_dict().items())
    assert gguf_host._lock_refused  # the process reads its files from then on
    monkeypatch.setenv("PRODUCER_LOCK_IN_PLACE", "1")
    from producer.facts.hardware import from_sizes
    from producer.sizing import memory

    plan = memory.plan_memory(from_sizes(10, 32), memory.WAN_FOOTPRINT, memory.wan_workload(832, 480, 81))
    assert not gguf_host.streams_in_place(plan, "transformer", "cuda")


def test_only_a_streamed_model_on_cuda_is_locked_in_place(monkeypatch):
    from producer.facts.hardware import from_sizes
    from producer.sizing import memory

    monkeypatch.setattr(gguf_host, "_lock_refused", False)
    monkeypatch.setenv("PRODUCER_LOCK_IN_PLACE", "1")
    work = memory.wan_workload(832, 480, 81)
    streamed = memory.plan_memory(from_sizes(10, 32), memory.WAN_FOOTPRINT, work)
    resident = memory.plan_memory(from_sizes(80, 32), memory.WAN_FOOTPRINT, work)
    assert gguf_host.streams_in_place(streamed, "transformer", "cuda")
    assert not gguf_host.streams_in_place(streamed, "transformer", "cpu")
    assert not gguf_host.streams_in_place(resident, "transformer", "cuda")
    for off in ("0", "off", "False"):
        monkeypatch.setenv("PRODUCER_LOCK_IN_PLACE", off)
        assert not gguf_host.streams_in_place(streamed, "transformer", "cuda")
    monkeypatch.delenv("PRODUCER_LOCK_IN_PLACE")
    for default in (False, True):
        monkeypatch.setattr(gguf_host, "LOCK_IN_PLACE", default)
        assert gguf_host.streams_in_place(streamed, "transformer", "cuda") is default


def test_the_map_is_read_only(tmp_path, runtime):
    path = tmp_path / "f.bin"
    path.write_bytes(bytes(range(256)) * 32)
    mapped = locked_map.LockedMap(path)
    assert mapped.view(256, (2, 128), torch.uint8) is None  # not locked: the caller reads it
    mapped.lock([(256, 512)])
    view = mapped.view(256, (2, 128), torch.uint8)
    assert view[1].tolist() == list(range(128, 256))
    with open(path, "rb") as f:  # the bytes are the file's, unchanged by making the views
        assert f.read() == bytes(range(256)) * 32
    with pytest.raises(ValueError, match="ends at byte 8192, inside a tensor.*fetch it again"):
        mapped.view(8000, (200,), torch.uint8)
    # A write into a view faults at once (the map is PROT_READ) rather than changing a page the GPU may read:
    # in a process of its own, which it kills.
    import signal
    import subprocess
    import sys
    from pathlib import Path

    scripts = Path(__file__).resolve().parents[1] / "scripts"
    code = (f"import sys; sys.path.insert(0, {str(scripts)!r}); import torch; "
            f"from producer.sizing.locked_map import LockedMap; "
            f"cuda = type('Cuda', (), {{'cudaHostRegister': staticmethod(lambda *a: 0)}}); "
            f"m = LockedMap({str(path)!r}); m.lock([(0, 16)], cuda); m.view(0, (16,), torch.uint8).fill_(7)")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, timeout=120, check=False)
    assert done.returncode in (-signal.SIGSEGV, -signal.SIGBUS), done
    assert path.read_bytes() == bytes(range(256)) * 32


def test_the_benchmarks_ram_watch_counts_locked_file_pages_as_what_must_fit(monkeypatch):
    from pathlib import Path

    monkeypatch.syspath_prepend(str(Path(__file__).resolve().parents[1] / "bench"))
    import ramwatch

    if ramwatch.sample() is None:
        pytest.skip("no /proc here")
    monkeypatch.setattr(locked_map, "_locked_now", [3 << 30])
    with ramwatch.RamWatch() as watch:
        pass
    peaks = watch.peaks()
    assert peaks["locked_file_pages_at_anon_peak_gib"] == 3.0
    assert peaks["peak_ram_anon_gib"] >= 3.0 + 0.01  # the process's own anonymous memory on top


def test_a_loras_deltas_reach_a_model_locked_in_place_and_the_file_is_unchanged(tiny_wan_pipeline, tmp_path, runtime):
    """The LightX2V layout adds diffs to F32 tensors (norms, biases) with copy_: those tensors are read, not views
    of the read-only map, so the LoRA lands as on a read model (a write into the map would kill the process)."""
    from diffusers import WanTransformer3DModel
    from producer.engines.loras import lora
    from producer.testing import standin_gguf
    from producer.testing import standin_loras as SL
    from test_lora import spec, wan_out

    pipe = tiny_wan_pipeline
    pipe.transformer.save_config(tmp_path / "config" / "transformer")
    path = tmp_path / "high.gguf"
    standin_gguf.write_gguf(path, standin_gguf.wan_state_dict_to_original(pipe.transformer.state_dict()), "wan", "Q8_0")
    written = path.read_bytes()
    kijai = SL.save_lora(SL.wan_lightx2v_lora(pipe.transformer, rank=4, alpha=2.0, head="diff"),
                         tmp_path / "kijai.safetensors")
    out = {}
    for in_place in (False, True):
        pipe.transformer = gguf_host.load_gguf(WanTransformer3DModel, path, tmp_path / "config", "transformer",
                                               torch.float32, True, (), in_place)
        assert hasattr(pipe.transformer, "_producer_locked_map") is in_place
        lora.load_loras(pipe, [spec(kijai, 0.5, "high")], "wan", fuse=True)
        out[in_place] = wan_out(pipe.transformer)
    assert runtime.locked and torch.equal(out[True], out[False])
    assert path.read_bytes() == written
