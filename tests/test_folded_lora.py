"""LoRAs folded into GGUF weights (producer.sizing.folded_lora): the layer adds scale * B @ A to the weight it
dequantizes, which computes what peft's adapters compute on the activations, and leaves no peft layer."""

from __future__ import annotations

import pytest
import torch
from diffusers.quantizers.gguf import utils as gguf_utils
from producer.engines.loras import lora
from producer.engines.wan.experts import lora_view
from producer.sizing import compiled_dequant, folded_lora
from producer.testing import standin_loras


def _load(expert, specs, monkeypatch, fold: bool):
    monkeypatch.setattr(lora, "FOLD_GGUF", fold)
    return lora.load_loras(lora_view("transformer", expert), specs, "wan", fuse=True)


def _specs(tmp_path, expert):
    """Two LoRAs on the high-noise expert at different strengths: the folded factors stack both."""
    first = standin_loras.save_lora(standin_loras.wan_lightx2v_lora(expert, seed=1, rank=4), tmp_path / "a.safetensors")
    second = standin_loras.save_lora(standin_loras.wan_lightx2v_lora(expert, seed=2, rank=8, alpha=8.0, deltas=False),
                                     tmp_path / "b.safetensors")
    return [lora.LoraSpec(first, 0.8, ("transformer",), "a"), lora.LoraSpec(second, 0.5, ("transformer",), "b")]


def test_two_folded_loras_compute_what_the_adapters_compute(standin_hf_home, tmp_path, monkeypatch):
    from test_offload import _gguf_expert, _wan_input

    adapters, folded = _gguf_expert(standin_hf_home), _gguf_expert(standin_hf_home)
    specs = _specs(tmp_path, adapters)
    _load(adapters, specs, monkeypatch, fold=False)
    report = _load(folded, specs, monkeypatch, fold=True)
    assert all(e.folded and not e.fused for entry in report.loras for e in entry.experts)
    x = _wan_input(folded)
    with torch.no_grad():
        assert torch.allclose(folded(**x)[0], adapters(**x)[0], atol=1e-5)
    layers = compiled_dequant.gguf_layers(folded)
    assert layers and all(folded_lora.folded(layer) for layer in layers)
    q = folded.blocks[0].attn1.to_q
    assert q.lora_up.shape == (q.out_features, 4 + 8) and q.lora_down.shape == (4 + 8, q.in_features)
    # parameters of the block: group offloading moves them with it
    assert {"blocks.0.attn1.to_q.lora_up", "blocks.0.attn1.to_q.lora_down"} <= dict(folded.named_parameters()).keys()


def test_a_folded_layer_adds_the_delta_to_the_weight_it_dequantizes(standin_hf_home, tmp_path, monkeypatch):
    from test_offload import _gguf_expert

    expert = _gguf_expert(standin_hf_home)
    _load(expert, _specs(tmp_path, expert), monkeypatch, fold=True)
    layer = expert.blocks[1].ffn.net[2]
    x = torch.randn(3, layer.in_features, generator=torch.Generator().manual_seed(0))
    dense = gguf_utils.dequantize_gguf_tensor(layer.weight).to(layer.compute_dtype)
    expected = torch.nn.functional.linear(x, dense + layer.lora_up @ layer.lora_down, layer.bias)
    with torch.no_grad():
        assert torch.allclose(layer(x), expected, atol=1e-6)
        # a weight handed over already dequantized (dequantize on arrival) is not changed by the delta
        quantized = layer._parameters["weight"]
        layer._parameters["weight"] = torch.nn.Parameter(dense.clone(), requires_grad=False)
        assert torch.allclose(layer(x), expected, atol=1e-6)
        assert torch.equal(layer.weight, dense)
        layer._parameters["weight"] = quantized


class _Small(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.first = gguf_utils.GGUFLinear(8, 8, compute_dtype=torch.float32)
        self.second = torch.nn.Linear(8, 8)


@pytest.mark.parametrize("config, why", [({"use_dora": True}, "DoRA"), ({"lora_bias": True}, "a LoRA bias")])
def test_an_adapter_it_cannot_fold_leaves_every_adapter_as_it_was(config, why):
    from peft import LoraConfig, inject_adapter_in_model

    model = inject_adapter_in_model(LoraConfig(r=2, target_modules=["first", "second"], **config), _Small(),
                                    adapter_name="x")
    before = list(model.named_modules())
    assert why in folded_lora.fold(model, ["x"])
    assert list(model.named_modules()) == before


def test_a_model_already_offloaded_block_by_block_is_not_folded(monkeypatch):
    from diffusers.hooks import group_offloading
    from peft import LoraConfig, inject_adapter_in_model

    model = inject_adapter_in_model(LoraConfig(r=2, target_modules=["second"]), _Small(), adapter_name="x")
    monkeypatch.setattr(group_offloading, "_is_group_offload_enabled", lambda module: True)
    assert "offloaded" in folded_lora.fold(model, ["x"])
    assert hasattr(model.second, "lora_A")


def test_a_plain_layer_beside_the_gguf_ones_is_folded_too_and_unfolds_exactly():
    from peft import LoraConfig, inject_adapter_in_model

    model = inject_adapter_in_model(LoraConfig(r=2, target_modules=["second"], init_lora_weights=False), _Small(),
                                    adapter_name="x")
    x = torch.randn(2, 8)
    with torch.no_grad():
        expected, base = model.second(x), model.second.base_layer(x)
        weight = model.second.base_layer.weight.clone()
        assert folded_lora.fold(model, ["x"]) is None
        assert type(model.second) is torch.nn.Linear and torch.allclose(model.second(x), expected, atol=1e-6)
        assert torch.equal(model.second.weight, weight)  # the weight itself is never changed
        assert folded_lora.unfold(model) == 1
        assert torch.equal(model.second(x), base) and not folded_lora.folded(model.second)


def test_a_second_load_folds_beside_the_first(standin_hf_home, tmp_path, monkeypatch):
    """Loading another LoRA into an expert that already holds folded ones keeps them: the new factors are
    stacked beside the old, one hook a layer."""
    from diffusers.hooks import HookRegistry
    from test_offload import _gguf_expert, _wan_input

    adapters, folded = _gguf_expert(standin_hf_home), _gguf_expert(standin_hf_home)
    first, second = _specs(tmp_path, adapters)
    _load(adapters, [first, second], monkeypatch, fold=False)
    _load(folded, [first], monkeypatch, fold=True)
    _load(folded, [second], monkeypatch, fold=True)
    x = _wan_input(folded)
    with torch.no_grad():
        assert torch.allclose(folded(**x)[0], adapters(**x)[0], atol=1e-5)
    q = folded.blocks[0].attn1.to_q
    assert q.lora_up.shape[1] == 4 + 8 and HookRegistry.check_if_exists_or_initialize(q).get_hook(folded_lora.HOOK)


def test_unloading_the_second_of_two_folds_leaves_the_first(standin_hf_home, tmp_path, monkeypatch):
    """Each load's unload (or rollback) takes out only the factors it folded: the expert then computes what it
    computed with the first LoRA alone."""
    from test_offload import _gguf_expert, _wan_input

    first_only, both = _gguf_expert(standin_hf_home), _gguf_expert(standin_hf_home)
    first, second = _specs(tmp_path, first_only)
    _load(first_only, [first], monkeypatch, fold=True)
    _load(both, [first], monkeypatch, fold=True)
    report = _load(both, [second], monkeypatch, fold=True)
    lora.unload_loras(lora_view("transformer", both), report)
    x = _wan_input(both)
    with torch.no_grad():
        assert torch.allclose(both(**x)[0], first_only(**x)[0], atol=1e-6)
    assert both.blocks[0].attn1.to_q.lora_up.shape[1] == 4


def test_folded_factors_are_packed_and_streamed_with_their_block(standin_hf_home, tmp_path, monkeypatch):
    """Under the streamed plans the factors are weights of their block like any other: packed into the
    page-locked chunks and offloaded block by block by diffusers, the expert computing the same."""
    from producer.sizing import offload
    from producer.sizing.placement import Placement
    from test_offload import _gguf_expert, _wan_input

    chunks = []
    monkeypatch.setattr(offload, "_pinned_chunk", lambda n: chunks.append(torch.empty(n, dtype=torch.uint8)) or
                        chunks[-1])
    expert = _gguf_expert(standin_hf_home)
    _load(expert, _specs(tmp_path, expert), monkeypatch, fold=True)
    x = _wan_input(expert)
    with torch.no_grad():
        before = expert(**x)[0]
        offload.pin_in_place(expert)  # what place_module does on a CUDA device first
        offload.place_module(expert, Placement.GROUP_OFFLOAD, torch.device("cpu"), resident_blocks=0)
        after = expert(**x)[0]
    factors = [p for n, p in expert.named_parameters() if n.endswith((".lora_up", ".lora_down"))]
    assert factors and all(any(c.data_ptr() <= p.data_ptr() < c.data_ptr() + c.numel() for c in chunks)
                           for p in factors)
    assert torch.equal(before, after)
