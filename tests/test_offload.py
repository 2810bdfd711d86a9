"""pin_in_place packs host weights into few chunks, in place, with the same values and nothing lost."""

import torch
from producer.sizing import offload
from producer.sizing.placement import Placement


def _model():
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(40, 300), torch.nn.LayerNorm(300), torch.nn.Linear(300, 7))
    model.register_buffer("steps", torch.arange(5))  # an integer buffer travels too
    return model.to(torch.bfloat16)


def test_weights_move_into_chunks_with_their_values(monkeypatch):
    chunks = []

    def fake_pinned(nbytes):  # CPU-only machine: the packing is what is tested here, pinning on a GPU machine
        chunks.append(torch.empty(nbytes, dtype=torch.uint8))
        return chunks[-1]

    monkeypatch.setattr(offload, "_pinned_chunk", fake_pinned)
    model = _model()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    x = torch.randn(3, 40, dtype=torch.bfloat16)
    expected = model(x)
    pinned = offload.pin_in_place(model, chunk_bytes=16 * 1024)
    assert pinned == sum(v.numel() * v.element_size() for v in before.values())
    # the big matrix (24,000 bytes) gets a chunk of its own, rounded up to a power of two as the pinned
    # allocator would round it; the small tensors fill the rest of it
    assert [c.numel() for c in chunks] == [32 * 1024]
    for name, value in model.state_dict().items():
        assert torch.equal(value, before[name]) and value.dtype == before[name].dtype
        start = value.untyped_storage().data_ptr()
        assert any(c.data_ptr() <= start < c.data_ptr() + c.numel() for c in chunks), name
    assert torch.equal(model(x), expected)


def test_a_tensor_larger_than_a_chunk_gets_its_own(monkeypatch):
    sizes = []
    monkeypatch.setattr(offload, "_pinned_chunk", lambda n: sizes.append(n) or torch.empty(n, dtype=torch.uint8))
    model = torch.nn.Linear(100, 100)
    offload.pin_in_place(model, chunk_bytes=1024)
    assert sizes[0] == 65536  # 40,000 bytes, in the power of two the pinned allocator gives anyway


def test_a_refusal_to_lock_memory_leaves_the_rest_usable(monkeypatch, caplog):
    def refuse(nbytes):
        raise RuntimeError("CUDA error: out of memory\nmore")

    monkeypatch.setattr(offload, "_pinned_chunk", refuse)
    model = _model()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    assert offload.pin_in_place(model) == 0
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())
    assert "could not page-lock" in caplog.text


def test_pinning_in_place_on_cuda_copies_into_the_allocators_chunks_not_locking_in_place(monkeypatch):
    """pin_in_place asks PyTorch's pinned allocator: locking filled chunks where they lie made the whole placement
    2.3 s slower on an H100 (offload.py says where); nothing is registered with CUDA, every weight keeps its value."""
    chunks, registered = [], []
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "cudart", lambda: registered.append("cudart") or None)
    monkeypatch.setattr(offload, "_pinned_chunk", lambda n: chunks.append(torch.empty(n, dtype=torch.uint8))
                        or chunks[-1])
    torch.manual_seed(0)
    model = torch.nn.Sequential(*[torch.nn.Linear(64, 64) for _ in range(6)])
    before = {k: v.clone() for k, v in model.state_dict().items()}
    pinned = offload.pin_in_place(model, chunk_bytes=8192)
    assert pinned == sum(v.numel() * v.element_size() for v in before.values())
    assert chunks and not registered
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())

def test_the_allocator_grows_segments_unless_the_user_chose(monkeypatch):
    from producer.facts import hardware

    for key in ("PYTORCH_CUDA_ALLOC_CONF", "PYTORCH_ALLOC_CONF"):
        monkeypatch.delenv(key, raising=False)
    monkeypatch.setattr(hardware.sys, "platform", "linux")
    hardware.configure_cuda_allocator()
    import os

    assert os.environ["PYTORCH_CUDA_ALLOC_CONF"] == hardware.ALLOCATOR_SETTING
    assert "expandable_segments:True" in hardware.ALLOCATOR_SETTING
    assert "pinned_use_cuda_host_register:True" in hardware.ALLOCATOR_SETTING
    monkeypatch.delenv("PYTORCH_CUDA_ALLOC_CONF")
    monkeypatch.setenv("PYTORCH_ALLOC_CONF", "max_split_size_mb:128")
    hardware.configure_cuda_allocator()
    assert "PYTORCH_CUDA_ALLOC_CONF" not in os.environ
    monkeypatch.delenv("PYTORCH_ALLOC_CONF")
    monkeypatch.setattr(hardware.sys, "platform", "win32")  # PyTorch has no expandable segments there
    hardware.configure_cuda_allocator()
    assert "PYTORCH_CUDA_ALLOC_CONF" not in os.environ


def test_pytorch_accepts_the_allocator_setting():
    """PyTorch parses the whole setting (an unknown key or a thread count not a power of two is an error), in
    a process of its own since the setting is global."""
    import subprocess
    import sys

    from producer.facts import hardware

    code = ("import sys, torch; set = getattr(torch._C, '_accelerator_setAllocatorSettings', None) "
            "or torch.cuda.memory._set_allocator_settings; set(sys.argv[1])")
    proc = subprocess.run([sys.executable, "-c", code, hardware.ALLOCATOR_SETTING], capture_output=True, text=True,
                          check=False)
    assert proc.returncode == 0, proc.stderr[-1000:]
    bad = subprocess.run([sys.executable, "-c", code, "pinned_num_register_threads:7"], capture_output=True, check=False)
    assert bad.returncode != 0


def test_release_hands_pinned_chunks_back(monkeypatch):
    calls = []
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "empty_cache", lambda: calls.append("device cache"))
    monkeypatch.setattr(torch._C, "_host_emptyCache", lambda: calls.append("pinned cache"), raising=False)

    class Pipe:
        transformer = torch.nn.Linear(4, 4)

    pipe = Pipe()
    offload.release(pipe, "transformer")
    assert pipe.transformer is None and calls == ["device cache", "pinned cache"]

    calls.clear()
    pipe.transformer = torch.nn.Linear(4, 4)
    offload.release(pipe, "transformer", keep_pinned=True)  # the next read reuses them
    assert pipe.transformer is None and calls == ["device cache"]


def test_gguf_experts_are_packed_too_and_compute_the_same(standin_hf_home, monkeypatch):
    from diffusers import GGUFQuantizationConfig, WanTransformer3DModel
    from diffusers.quantizers.gguf.utils import GGUFParameter
    from producer.facts import registry
    from producer.modelfiles import models

    chunks = []
    monkeypatch.setattr(offload, "_pinned_chunk", lambda n: chunks.append(torch.empty(n, dtype=torch.uint8)) or
                        chunks[-1])
    snapshot = models.snapshot_dir(registry.get("wan-i2v-components"))
    gguf = next(standin_hf_home.glob("hub/**/*HighNoise-Q4_K_M.gguf"))
    expert = WanTransformer3DModel.from_single_file(
        str(gguf), quantization_config=GGUFQuantizationConfig(compute_dtype=torch.float32), config=str(snapshot),
        subfolder="transformer", dtype=torch.float32)
    x = {"hidden_states": torch.randn(1, 36, 3, 8, 8), "timestep": torch.tensor([500]),
         "encoder_hidden_states": torch.randn(1, 8, expert.config.text_dim), "return_dict": False}
    with torch.no_grad():
        before = expert(**x)[0]
        offload.pin_in_place(expert)
        after = expert(**x)[0]
    quantized = [p for p in expert.parameters() if isinstance(p, GGUFParameter)]
    assert quantized and all(p.quant_type is not None for p in quantized)
    inside = [any(c.data_ptr() <= p.data_ptr() < c.data_ptr() + c.numel() for c in chunks) for p in quantized]
    assert all(inside), "GGUF blocks stream from the page-locked chunks too"
    assert torch.equal(before, after)


def test_streamed_text_encoders_offload_each_block_list_from_its_own_parent():
    """UMT5 keeps its blocks in `encoder.block`, Qwen2.5-VL in the language model and the vision tower:
    diffusers' block-level offloading finds only direct ModuleList children, so each parent is offloaded."""
    import torch
    from producer.sizing import offload
    from producer.testing import standin_models
    from transformers import UMT5Config, UMT5EncoderModel

    umt5 = UMT5EncoderModel(UMT5Config(**standin_models.UMT5_CONFIG))
    assert offload.block_list_parents(umt5) == [umt5.encoder]
    qwen = standin_models.build_qwen_text_encoder(standin_models.build_qwen_tokenizer())
    parents = offload.block_list_parents(qwen)
    lists = [[c for c in p.children() if isinstance(c, torch.nn.ModuleList)] for p in parents]
    assert len(parents) == 2 and all(len(found) == 1 for found in lists), [type(p).__name__ for p in parents]
    assert {type(p).__name__ for p in parents} == {"Qwen2_5_VLTextModel", "Qwen2_5_VisionTransformerPretrainedModel"}


def _hooked(module: torch.nn.Module) -> bool:
    registry = getattr(module, "_diffusers_hook", None)
    return registry is not None and registry.get_hook("group_offloading") is not None


def test_resident_blocks_stay_out_of_group_offloading_and_compute_the_same():
    """Partial residency: the plan's resident blocks keep no offloading hook (they never leave the device);
    diffusers streams the others; the block list is whole again, in order, and the output unchanged."""
    from diffusers import WanTransformer3DModel
    from producer.testing import standin_models

    torch.manual_seed(0)
    expert = WanTransformer3DModel(**{**standin_models.WAN_TRANSFORMER_CONFIG, "num_layers": 5}).eval()
    blocks = list(expert.blocks)
    x = {"hidden_states": torch.randn(1, 36, 3, 8, 8), "timestep": torch.tensor([500]),
         "encoder_hidden_states": torch.randn(1, 8, expert.config.text_dim), "return_dict": False}
    with torch.no_grad():
        before = expert(**x)[0]
        offload.place_module(expert, Placement.GROUP_OFFLOAD, torch.device("cpu"), resident_blocks=2)
        after = expert(**x)[0]
    assert list(expert.blocks) == blocks and offload.block_list(expert) == ("blocks", expert.blocks)
    resident = offload.resident_indices(5, 2)
    assert resident == [0, 2]
    assert [_hooked(b) for b in blocks] == [i not in resident for i in range(5)]
    assert _hooked(expert), "the weights outside the blocks still stream with the module's own group"
    assert torch.equal(before, after)


def test_without_resident_blocks_every_block_streams():
    from diffusers import QwenImageTransformer2DModel
    from producer.testing import standin_models

    model = QwenImageTransformer2DModel(**{**standin_models.QWEN_EDIT_TRANSFORMER_CONFIG, "num_layers": 3})
    assert offload.block_list(model)[0] == "transformer_blocks"
    offload.place_module(model, Placement.GROUP_OFFLOAD, torch.device("cpu"))
    assert all(_hooked(b) for b in model.transformer_blocks)


def test_resident_blocks_spread_from_the_first_and_one_always_streams():
    assert offload.resident_indices(60, 7) == [0, 8, 17, 25, 34, 42, 51]
    assert offload.resident_indices(4, 9) == [0, 1, 2], "at least one block streams"
    assert offload.resident_indices(40, 0) == []


def _gguf_expert(standin_hf_home):
    from diffusers import GGUFQuantizationConfig, WanTransformer3DModel
    from producer.facts import registry
    from producer.modelfiles import models

    snapshot = models.snapshot_dir(registry.get("wan-i2v-components"))
    gguf = next(standin_hf_home.glob("hub/**/*HighNoise-Q4_K_M.gguf"))
    return WanTransformer3DModel.from_single_file(
        str(gguf), quantization_config=GGUFQuantizationConfig(compute_dtype=torch.float32), config=str(snapshot),
        subfolder="transformer", dtype=torch.float32)


def _wan_input(expert):
    torch.manual_seed(1)
    return {"hidden_states": torch.randn(1, 36, 3, 8, 8), "timestep": torch.tensor([500]),
            "encoder_hidden_states": torch.randn(1, 8, expert.config.text_dim), "return_dict": False}


def test_dequantize_on_arrival_hands_each_block_its_weights_and_puts_the_gguf_ones_back(standin_hf_home,
                                                                                       monkeypatch):
    """The streamed blocks compute with weights dequantized once, the same numbers as the GGUF layers' own
    path; the block diffusers prefetches is dequantized by the block before it, as soon as that block's
    kernels are queued (here the prefetch chain diffusers builds on a GPU is set by hand: no streams on a CPU);
    afterwards every layer holds its GGUF parameter again, for diffusers to offload."""
    from diffusers.hooks import HookRegistry
    from diffusers.quantizers.gguf.utils import GGUFParameter
    from producer.sizing import arrival

    expert = _gguf_expert(standin_hf_home)
    x = _wan_input(expert)
    with torch.no_grad():
        before = expert(**x)[0]
    events = []
    original = arrival._dequantize
    monkeypatch.setattr(arrival, "_dequantize", lambda w: events.append(("dequantize", w[0][0])) or original(w))
    offload.place_module(expert, Placement.GROUP_OFFLOAD, torch.device("cpu"), dequantize_on_arrival=True)
    first, second = expert.blocks
    hooks = [HookRegistry.check_if_exists_or_initialize(b).get_hook(arrival.HOOK) for b in (first, second)]
    assert all(h is not None and h.weights for h in hooks)
    second.register_forward_pre_hook(lambda *a: events.append(("second starts", None)))
    with torch.no_grad():
        alone = expert(**x)[0]
    assert [e[0] for e in events] == ["dequantize", "second starts", "dequantize"], "no prefetch chain: inline"
    offloading = [HookRegistry.check_if_exists_or_initialize(b).get_hook("group_offloading") for b in (first, second)]
    offloading[0].next_group = offloading[1].group  # what diffusers' lazy prefetching sets up after a first pass
    events.clear()
    with torch.no_grad():
        chained = expert(**x)[0]
    assert [e[0] for e in events] == ["dequantize", "dequantize", "second starts"]
    assert events[1][1] is hooks[1].weights[0][0], "the first block dequantized the second one's weights"
    assert hooks[1].ready is None
    assert torch.equal(before, alone) and torch.equal(before, chained)
    quantized = [owner._parameters[name] for h in hooks for owner, name in h.weights]
    assert all(isinstance(p, GGUFParameter) for p in quantized)


def test_dequantize_on_arrival_leaves_plain_blocks_alone():
    from diffusers import WanTransformer3DModel
    from producer.sizing import arrival
    from producer.testing import standin_models

    expert = WanTransformer3DModel(**standin_models.WAN_TRANSFORMER_CONFIG)
    assert arrival.install(list(expert.blocks)) == 0


def _packed_waste(sizes: list[int], total: bool, monkeypatch) -> int:
    monkeypatch.setattr(offload, "_pinned_chunk", lambda n: torch.empty(n, dtype=torch.uint8, device="meta"))
    packer = offload.HostPacker(pinned=True, total=sum(offload.aligned(n) for n in sizes) if total else None)
    for n in sizes:
        packer.take(torch.empty(n, dtype=torch.uint8, device="meta"))
    return packer.allocated - sum(sizes)


def _one_after_the_other_waste(sizes: list[int]) -> int:
    """The packing before first fit, for the comparison: a tensor that does not fit starts a new chunk."""
    chunks, used = 0, None
    for need in map(offload.aligned, sizes):
        if used is None or used + need > offload.PIN_CHUNK:
            chunks, used = chunks + 1, 0
        used += need
    return chunks * offload.PIN_CHUNK - sum(sizes)


def _wan_q4_expert_tensor_bytes() -> list[int]:
    """A Wan 2.2 A14B expert's block tensors in the GGUF Q4_K_M form (Q4_K, Q6_K for `v` and `ffn.2`, F32
    vectors), in module order: 40 blocks of 5120-wide attention and a 13824-wide MLP."""
    def quant(rows, cols, q6=False):
        return rows * cols // 256 * (210 if q6 else 144)
    block = []
    for _ in ("attn1", "attn2"):
        for name in ("to_q", "to_k", "to_v", "to_out"):
            block += [quant(5120, 5120, q6=name == "to_v"), 5120 * 4]
        block += [5120 * 4, 5120 * 4]
    block += [quant(13824, 5120), 13824 * 4, quant(5120, 13824, q6=True), 5120 * 4, 2 * 5120 * 4, 6 * 5120 * 4]
    return block * 40


def test_a_streamed_wan_expert_packs_with_little_waste(monkeypatch):
    """Filling one chunk after the other left ~1.4 GiB of each Q4 expert's 8.6 GiB empty (a 15-58 MB tensor
    that does not fit starts a new 256 MiB chunk): the 10 / 32 plan held ~3 GiB more than planned from files.
    First fit, with the last chunks sized to what is left: ~0.25 GiB."""
    sizes = _wan_q4_expert_tensor_bytes()
    assert 8.5 < sum(sizes) / 2**30 < 8.7
    assert _one_after_the_other_waste(sizes) > 1.3 * 2**30
    assert _packed_waste(sizes, total=True, monkeypatch=monkeypatch) < 0.3 * 2**30
    assert _packed_waste(sizes, total=False, monkeypatch=monkeypatch) < 0.45 * 2**30  # the last chunk unsized


def test_a_streamed_qwen_q8_transformer_packs_with_little_waste(monkeypatch):
    """Qwen-Image's 60 blocks in GGUF Q8_0 (34 bytes a 32 values): 3072-wide attention for image and text
    (q, k, v, out each), 12288-wide MLPs for both, and the two 6 x 3072 modulations; ~2.3 GiB of waste when
    filled one chunk after the other, ~0.6 GiB first fit."""
    def q8(rows, cols):
        return rows * cols // 32 * 34
    block = [q8(3072, 3072), 3072 * 4] * 8
    block += [q8(12288, 3072), 12288 * 4, q8(3072, 12288), 3072 * 4] * 2 + [q8(18432, 3072), 18432 * 4] * 2
    sizes = block * 60
    assert 20.0 < sum(sizes) / 2**30 < 20.4
    assert _one_after_the_other_waste(sizes) > 2.2 * 2**30
    assert _packed_waste(sizes, total=True, monkeypatch=monkeypatch) < 0.7 * 2**30


def test_a_streamless_group_offloads_back_onto_its_host_copies_without_copying():
    """diffusers moves a group without a stream (the model's own weights beside its streamed blocks) back to the
    host with Module.to: a device-to-host copy into fresh memory at every forward. The scripts point the
    weights back at the host tensors they had instead; the model still computes the same."""
    from diffusers import WanTransformer3DModel
    from diffusers.hooks import HookRegistry
    from producer.testing import standin_models

    torch.manual_seed(0)
    model = WanTransformer3DModel(**standin_models.WAN_TRANSFORMER_CONFIG).eval()
    reference = WanTransformer3DModel(**standin_models.WAN_TRANSFORMER_CONFIG).eval()
    reference.load_state_dict(model.state_dict())
    offload.place_module(model, Placement.GROUP_OFFLOAD, torch.device("cpu"))
    group = HookRegistry.check_if_exists_or_initialize(model).get_hook("group_offloading").group
    assert group.stream is None and group._keeps_host_copies  # the module's own weights: not the blocks'
    own = [p for m in group.modules for p in m.parameters()] + list(group.parameters)
    owned = [(o, n) for m in group.modules for o in m.modules() for n, b in o._buffers.items() if b is not None]
    host = [p.data.data_ptr() for p in own]
    buffers = [o._buffers[n] for o, n in owned]
    assert own and owned  # Wan's rotary tables are buffers of a child module
    buffer_data = [b.data.data_ptr() for b in buffers]
    for t in own + buffers:  # as diffusers' onload to a GPU leaves them: new data elsewhere
        t.data = t.data.clone()
    for o, n in owned[:1]:  # and as Module.to would: a new object in the module
        o._buffers[n] = o._buffers[n].clone()
    group.offload_()
    assert [p.data.data_ptr() for p in own] == host
    assert all(o._buffers[n] is b for (o, n), b in zip(owned, buffers))
    assert [b.data.data_ptr() for b in buffers] == buffer_data
    inputs = {"hidden_states": torch.randn(1, 36, 2, 8, 8), "timestep": torch.tensor([500]),
              "encoder_hidden_states": torch.randn(1, 7, standin_models.WAN_TRANSFORMER_CONFIG["text_dim"]),
              "return_dict": False}
    with torch.no_grad():
        assert torch.equal(model(**inputs)[0], reference(**inputs)[0])
