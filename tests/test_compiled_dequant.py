"""Compiled GGUF dequantization: the same weights as diffusers' own path, bit for bit, on the GGML types the
published files use; hooked layers give the same outputs; where it does not apply it stays out of the way."""

import os
import shutil

import numpy as np
import pytest
import torch
from gguf import GGMLQuantizationType as T
from producer.sizing import compiled_dequant, speed
from producer.testing import standin_gguf

# torch.compile on the CPU builds C++ (inductor): this machine and CI have g++; elsewhere these are skipped.
needs_compiler = pytest.mark.skipif(
    not any(shutil.which(c) for c in (os.environ.get("CXX", "g++"), "g++", "c++", "clang++")),
    reason="torch.compile on the CPU needs a C++ compiler")


@pytest.fixture
def caplog(caplog, monkeypatch):
    """caplog for the producer logger, which a script run earlier in this process may have detached."""
    import logging

    monkeypatch.setattr(logging.getLogger("producer"), "propagate", True)
    caplog.set_level(logging.INFO, logger="producer")
    return caplog


def _raw(qtype, rows: int, width: int, seed: int) -> torch.Tensor:
    values = np.random.default_rng(seed).normal(0, 0.05, (rows, width)).astype(np.float32)
    return torch.from_numpy(np.ascontiguousarray(standin_gguf._gguf_data(values, qtype))).view(torch.uint8)


@pytest.mark.parametrize("qtype", [T.Q4_K, T.Q6_K, T.Q8_0])
@needs_compiler
def test_compiled_weights_equal_diffusers_bit_for_bit(qtype):
    """Two shapes each (the second reuses the dynamic graph), in bf16, where inductor's rounding could differ."""
    from diffusers.quantizers.gguf.utils import GGUFParameter, dequantize_gguf_tensor

    for rows, width, seed in ((4, 512, 0), (6, 256, 1)):
        raw = _raw(qtype, rows, width, seed)
        expected = dequantize_gguf_tensor(GGUFParameter(raw, quant_type=qtype)).to(torch.bfloat16)
        got = compiled_dequant.dequantize(raw, qtype, torch.bfloat16)
        assert got.shape == (rows, width) and got.dtype == torch.bfloat16
        assert torch.equal(got.view(torch.int16), expected.view(torch.int16))


@needs_compiler
def test_every_layer_shape_of_a_type_shares_one_graph():
    """Seen in the GPU smoke: given 2-D bytes, rows of one block (narrow layers) made a second graph per type,
    and with three types the stand-in models ran past torch's recompile limit (8), leaving later layers to run
    through dynamo's guards uncompiled. Flat bytes: one graph per type, whatever the layer's shape."""
    torch._dynamo.reset()
    counters = torch._dynamo.utils.counters
    counters.clear()
    for rows, width in ((2, 32), (3, 64), (5, 32), (7, 96), (4, 32), (9, 64), (6, 128), (8, 32), (3, 256), (11, 32)):
        compiled_dequant.dequantize(_raw(T.Q8_0, rows, width, 0), T.Q8_0, torch.bfloat16)
    assert counters["stats"]["unique_graphs"] == 1, dict(counters["stats"])


@needs_compiler
def test_hooked_expert_gives_the_same_output_and_reports_its_compile(standin_hf_home, monkeypatch):
    from diffusers.hooks import HookRegistry
    from test_offload import _gguf_expert, _wan_input

    expert = _gguf_expert(standin_hf_home)
    x = _wan_input(expert)
    with torch.no_grad():
        before = expert(**x)[0]
    layers = compiled_dequant.gguf_layers(expert)
    types = ", ".join(sorted({T(m.weight.quant_type).name for m in layers}))
    notes = speed.apply_speed(expert, speed.Speed(compile_dequantize=True), "cpu")
    assert len(notes) == 1 and notes[0].startswith(f"GGUF dequantization compiled ({types}: ")
    assert layers and all(HookRegistry.check_if_exists_or_initialize(m).get_hook(compiled_dequant.HOOK)
                          for m in layers)
    real, calls = compiled_dequant.compiled(), []
    monkeypatch.setattr(compiled_dequant, "compiled", lambda: lambda *a: calls.append(a[1]) or real(*a))
    with torch.no_grad():
        after = expert(**x)[0]
    assert len(calls) == len(layers), "every quantized layer went through the compiled dequantization"
    assert torch.equal(before, after)


@needs_compiler
def test_it_runs_inside_blocks_that_diffusers_streams(standin_hf_home):
    """The streamed plans' case: the blocks are group-offloaded (diffusers' hooks on each block), the compiled
    dequantization hooks sit on the layers inside them; the same output as diffusers' own path."""
    from producer.sizing import offload
    from producer.sizing.placement import Placement
    from test_offload import _gguf_expert, _wan_input

    expert = _gguf_expert(standin_hf_home)
    x = _wan_input(expert)
    with torch.no_grad():
        before = expert(**x)[0]
    offload.place_module(expert, Placement.GROUP_OFFLOAD, torch.device("cpu"))
    chosen = speed.default_speed("cuda", "group_offload", "on", family="wan")
    assert not chosen.compile and chosen.compile_dequantize  # blocks under the hooks are not compiled
    assert speed.apply_speed(expert, chosen, "cpu")[0].startswith("GGUF dequantization compiled")
    with torch.no_grad():
        assert torch.equal(expert(**x)[0], before)


@needs_compiler
@pytest.mark.parametrize("fold", [True, False], ids=["folded", "adapters"])
def test_it_runs_under_a_lora(standin_hf_home, monkeypatch, fold):
    """GGUF experts take a LoRA (the Lightning distill LoRA of the 4-step plans) folded into the weight each
    layer dequantizes (producer.sizing.folded_lora), or, where it cannot be folded, as peft adapters around
    the GGUF layers: the compiled dequantization sits on the GGUF layers and the output is unchanged."""
    from dataclasses import replace

    from producer.engines.loras import lora
    from producer.engines.wan.experts import lora_view
    from producer.sizing import folded_lora
    from test_offload import _gguf_expert, _wan_input

    monkeypatch.setattr(lora, "FOLD_GGUF", fold)
    expert = _gguf_expert(standin_hf_home)
    specs = [replace(s, components=("transformer",)) for s in lora.registry_lora_specs("wan-lightning")
             if "transformer" in s.components]
    report = lora.load_loras(lora_view("transformer", expert), specs, "wan", allow_partial=False, fuse=True)
    from diffusers.quantizers.gguf.utils import GGUFLinear

    assert report.to_dict()["loras"]
    adapters = any(isinstance(getattr(m, "base_layer", None), GGUFLinear) for m in expert.modules())
    assert adapters is not fold
    assert any(folded_lora.folded(m) for m in compiled_dequant.gguf_layers(expert)) is fold
    x = _wan_input(expert)
    with torch.no_grad():
        before = expert(**x)[0]
    assert speed.apply_speed(expert, speed.Speed(compile_dequantize=True), "cpu")
    with torch.no_grad():
        assert torch.equal(expert(**x)[0], before)


def test_layers_without_a_quantized_weight_are_left_alone():
    from diffusers.hooks import HookRegistry
    from diffusers.quantizers.gguf.utils import GGUFLinear

    layer = GGUFLinear(8, 4, bias=True, compute_dtype=torch.float32)  # an F16/F32 tensor of a GGUF file
    assert compiled_dequant.install(layer, "cpu") is None
    assert HookRegistry.check_if_exists_or_initialize(layer).get_hook(compiled_dequant.HOOK) is None
    assert compiled_dequant.install(torch.nn.Linear(8, 4), "cpu") is None
    assert speed.apply_speed(torch.nn.Linear(8, 4), speed.Speed(compile_dequantize=True), "cpu") == []


@pytest.mark.parametrize("device,placement,choice,items,family,expected", [
    ("cuda", "group_offload", "auto", 20, "wan", True),   # a run long enough to earn back its compile
    ("cuda", "group_offload", "auto", 19, "wan", False),  # shorter: the compile costs more than it saves
    ("cuda", "group_offload", "auto", 40, "qwen", True),
    ("cuda", "group_offload", "auto", 39, "qwen", False),
    ("cuda", "model_offload", "auto", 100, "wan", False),  # nothing streamed: nothing dequantized per block
    ("cuda", "gpu", "auto", 15, "qwen", False),
    ("cuda", "gpu", "auto", 32, "qwen", False),           # the whole blocks are compiled, dequantization with them
    ("cuda", "group_offload", "on", 1, "qwen", True),     # asked for: blocks cannot compile under the hooks
    ("cpu", "cpu", "on", 1, "wan", False),                # blocks compiled instead
    ("cpu", "cpu", "auto", 100, "wan", False),
    ("cuda", "group_offload", "off", 100, "wan", False),
])
def test_when_the_dequantization_is_compiled(device, placement, choice, items, family, expected):
    chosen = speed.default_speed(device, placement, choice, items=items, family=family)
    assert chosen.compile_dequantize is expected


def _q8_layer(seed: int):
    """A Q8_0 GGUF linear layer, an input, and its output through diffusers' own dequantization."""
    from diffusers.quantizers.gguf.utils import GGUFLinear, GGUFParameter

    layer = GGUFLinear(256, 2, bias=False, compute_dtype=torch.float32)
    layer.weight = GGUFParameter(_raw(T.Q8_0, 2, 256, seed=seed), quant_type=T.Q8_0)
    x = torch.randn(1, 256)
    return layer, x, layer(x)


@needs_compiler
def test_a_type_whose_compiled_weights_differ_keeps_diffusers_dequantization(monkeypatch, caplog):
    from diffusers.hooks import HookRegistry

    layer, x, expected = _q8_layer(seed=3)
    real = compiled_dequant.compiled()
    monkeypatch.setattr(compiled_dequant, "_COMPILED", {})
    monkeypatch.setattr(compiled_dequant, "compiled", lambda: lambda *a: real(*a) + 1)  # a wrong compiler
    note = compiled_dequant.install(layer, "cpu")
    assert note == "Q8_0 left to diffusers (not compiled, or different weights)"
    assert "differs from diffusers' own" in caplog.text
    assert HookRegistry.check_if_exists_or_initialize(layer).get_hook(compiled_dequant.HOOK) is None
    assert torch.equal(layer(x), expected)


def test_a_compiler_that_fails_leaves_diffusers_dequantization_in_place(monkeypatch, caplog):
    """No Triton or C compiler (a Windows machine without one, say): the layers keep diffusers' path."""
    layer, x, expected = _q8_layer(seed=4)

    def no_compiler():
        def fail(*args):
            raise RuntimeError("Cannot find a working triton installation\nmore")
        return fail

    monkeypatch.setattr(compiled_dequant, "_COMPILED", {})
    monkeypatch.setattr(compiled_dequant, "compiled", no_compiler)
    assert compiled_dequant.install(layer, "cpu") == "Q8_0 left to diffusers (not compiled, or different weights)"
    assert "could not be compiled (RuntimeError: Cannot find a working triton installation)" in caplog.text
    assert torch.equal(layer(x), expected)


@needs_compiler
def test_a_later_compile_that_fails_falls_back_for_the_rest_of_the_run(monkeypatch, caplog):
    layer, x, expected = _q8_layer(seed=5)
    monkeypatch.setattr(compiled_dequant, "_GAVE_UP", [])
    assert compiled_dequant.install(layer, "cpu").startswith("GGUF dequantization compiled (Q8_0: ")
    monkeypatch.setattr(compiled_dequant, "compiled", lambda: lambda *a: (_ for _ in ()).throw(RuntimeError("x")))
    assert torch.equal(layer(x), expected) and torch.equal(layer(x), expected)
    assert caplog.text.count("failed (RuntimeError: x); diffusers' own is used from now on") == 1


def test_the_note_counts_only_this_runs_compiling():
    """In one process (the smoke runs the scripts in-process) a type compiled for an earlier model is reused:
    its seconds are not this model's."""
    q8, q4, q6 = ((t, torch.bfloat16, "cuda") for t in (T.Q8_0, T.Q4_K, T.Q6_K))
    note = compiled_dequant._note({q8: 3.0, q4: 5.0, q6: None}, earlier={q4})
    assert note == ("GGUF dequantization compiled (Q4_K, Q8_0: 3.0 s; Q4_K compiled earlier in this process); "
                    "Q6_K left to diffusers (not compiled, or different weights)")
    assert compiled_dequant._note({q8: 3.0}, earlier=set()) == "GGUF dequantization compiled (Q8_0: 3.0 s)"
