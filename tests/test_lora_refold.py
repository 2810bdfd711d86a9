"""A GGUF expert read again (one Wan expert in RAM) gets its LoRAs folded again from the files without peft
(producer.engines.loras.lora_refold): the same parameters, bit for bit, as the whole way gives."""

from __future__ import annotations

from dataclasses import replace

import pytest
import torch
from producer.engines.loras import lora, lora_refold, lora_store
from producer.engines.wan.experts import lora_view
from test_folded_lora import _specs
from test_offload import _gguf_expert, _wan_input


def _state(model) -> dict:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def _first_load(standin_hf_home, tmp_path):
    expert = _gguf_expert(standin_hf_home)
    specs = _specs(tmp_path, expert)  # two LoRAs, one with alpha and plain deltas, at 0.8 and 0.5
    report = lora.load_loras(lora_view("transformer", expert), specs, "wan", fuse=True, refoldable=True)
    return expert, report


def test_a_refold_gives_the_fresh_expert_what_the_whole_way_gave_the_first(standin_hf_home, tmp_path):
    first, report = _first_load(standin_hf_home, tmp_path)
    refold = report._refolds["transformer"]
    assert refold is not None and len(refold.layers) > 10
    fresh = _gguf_expert(standin_hf_home)
    assert lora_refold.refold(lora_view("transformer", fresh), refold)
    assert_same_without_peft(fresh, first)


def assert_same_without_peft(mine, theirs, dtype=torch.float32) -> None:
    """`mine` holds `theirs`'s parameters bit for bit, computes the same, and holds nothing of peft."""
    ours, reference = _state(mine), _state(theirs)
    assert ours.keys() == reference.keys()
    for name, value in reference.items():
        assert torch.equal(ours[name].view(torch.uint8), value.view(torch.uint8)), name
    x = {k: v.to(dtype) if torch.is_tensor(v) and v.is_floating_point() else v for k, v in _wan_input(theirs).items()}
    with torch.no_grad():
        assert torch.equal(mine(**x)[0], theirs(**x)[0])
    assert not any(type(m).__module__.startswith("peft") for m in mine.modules())


def test_a_load_that_will_not_be_read_again_keeps_no_refold(standin_hf_home, tmp_path, monkeypatch):
    """Both experts in RAM, or Qwen, with the store of folds off (lora_store): nothing is read again, so
    nothing is captured for it."""
    monkeypatch.setenv(lora_store.ENV, "0")
    expert = _gguf_expert(standin_hf_home)
    report = lora.load_loras(lora_view("transformer", expert), _specs(tmp_path, expert), "wan", fuse=True)
    assert report._folded and report._refolds == {}


def test_a_file_that_no_longer_holds_what_was_folded_is_refused_with_nothing_changed(standin_hf_home, tmp_path):
    _, report = _first_load(standin_hf_home, tmp_path)
    refold = report._refolds["transformer"]
    layer = next(iter(refold.layers))
    refold.layers["blocks.0.not_a_layer"] = refold.layers[layer]
    fresh = _gguf_expert(standin_hf_home)
    before = _state(fresh)
    assert not lora_refold.refold(lora_view("transformer", fresh), refold)
    after = _state(fresh)
    assert after.keys() == before.keys() and all(torch.equal(after[k], v) for k, v in before.items())


def test_a_refold_that_would_not_give_the_folds_own_factors_is_not_kept(standin_hf_home, tmp_path, monkeypatch):
    """capture compares its factors with the fold's on sampled layers: a scale off by a little is caught."""
    scales = lora_refold.peft_scales
    monkeypatch.setattr(lora_refold, "peft_scales", lambda model: {
        name: {a: (s * 1.001, da, db) for a, (s, da, db) in adapters.items()}
        for name, adapters in scales(model).items()})
    _, report = _first_load(standin_hf_home, tmp_path)
    assert report._folded and report._refolds == {"transformer": None}


@pytest.mark.parametrize("weights", ["gguf-q4"])
def test_with_one_expert_in_ram_each_expert_is_loaded_the_whole_way_once(standin_hf_home, monkeypatch, weights):
    """Two clips with one expert in RAM read each expert twice; only the first read of each goes through
    load_loras, and the second clip is the first one again."""
    from producer.engines.wan import wan
    from producer.engines.wan.wan_load import components_snapshot, locate_files, plan_for
    from producer.facts import hardware
    from producer.sizing import memory
    from test_wan_session import distill_specs, job

    plan = plan_for(hardware.probe(device="cpu"), components_snapshot(), [memory.wan_workload(64, 64, 9)], "auto",
                    weights)
    assert plan.weights == weights
    whole, refolds = [], []
    load, again = lora.load_loras, lora_refold.refold
    monkeypatch.setattr(lora, "load_loras", lambda *a, **k: whole.append(1) or load(*a, **k))
    monkeypatch.setattr(lora_refold, "refold", lambda *a: refolds.append(1) or again(*a))
    one = wan.WanSession.from_files(locate_files(plan.weights), replace(plan, experts_in_ram=1),
                                    lora_specs=distill_specs(), progress=False)
    first, second = one.generate(job()), one.generate(job())
    assert len(whole) == 2 and len(refolds) == 2  # each expert: the whole way once, then refolded
    assert all(one._refolds.values()) and set(one._refolds) == {"transformer", "transformer_2"}
    assert torch.equal(torch.as_tensor(first.frames), torch.as_tensor(second.frames))


def test_a_layout_the_refold_does_not_know_loads_the_whole_way_and_never_fails_the_load(
        standin_hf_home, tmp_path, monkeypatch):
    def unknown(*args, **kwargs):
        raise KeyError("lora_B")

    monkeypatch.setattr(lora_refold, "factors", unknown)
    _, report = _first_load(standin_hf_home, tmp_path)
    assert report._folded and report._refolds == {"transformer": None}
    assert all(e.folded for entry in report.loras for e in entry.experts)


def test_a_layer_holding_a_module_the_check_did_not_count_is_not_refolded(standin_hf_home, tmp_path, monkeypatch):
    """With allow_partial a module that failed the check keeps its adapter, which the fold folds: a refold that
    left it out would differ on that layer, sampled or not, so there is no Refold."""
    real = lora._loaded_problem
    first = []

    def one_fails(model, adapter, module, tensors):  # a layer in the middle: not among the sampled ones
        if module.target == "blocks.0.ffn.net.2" and not first:
            first.append(module.target)
            return "loaded with other values than the file's"
        return real(model, adapter, module, tensors)

    monkeypatch.setattr(lora, "_loaded_problem", one_fails)
    expert = _gguf_expert(standin_hf_home)
    report = lora.load_loras(lora_view("transformer", expert), _specs(tmp_path, expert), "wan", allow_partial=True,
                             fuse=True, refoldable=True)
    assert first and report._folded and report._refolds == {"transformer": None}


def test_a_bf16_expert_gets_the_same_bits_without_fp32_copies_of_the_factors(standin_hf_home, tmp_path, monkeypatch):
    """With bf16 factors in the file and a bf16 compute dtype, B * scale is taken straight (no fp32 copy of B):
    the same bits as the fold's fp32 product rounded to bf16."""
    from diffusers import GGUFQuantizationConfig, WanTransformer3DModel
    from producer.engines.loras.lora_files import LoraSpec
    from producer.facts import registry
    from producer.modelfiles import models
    from producer.testing import standin_loras

    snapshot = models.snapshot_dir(registry.get("wan-i2v-components"))
    gguf = next(standin_hf_home.glob("hub/**/*HighNoise-Q4_K_M.gguf"))

    def expert():
        return WanTransformer3DModel.from_single_file(
            str(gguf), quantization_config=GGUFQuantizationConfig(compute_dtype=torch.bfloat16), config=str(snapshot),
            subfolder="transformer", dtype=torch.bfloat16)

    first = expert()
    path = standin_loras.save_lora(standin_loras.wan_lightx2v_lora(first, seed=3, rank=4, dtype=torch.bfloat16),
                                   tmp_path / "bf16.safetensors")
    report = lora.load_loras(lora_view("transformer", first), [LoraSpec(path, 0.7, ("transformer",), "bf16")], "wan",
                             fuse=True, refoldable=True)
    taken, real = [], lora_refold._scaled_up
    monkeypatch.setattr(lora_refold, "_scaled_up", lambda up, b_dtype, scale, dtype: taken.append(
        (b_dtype, up.dtype, dtype)) or real(up, b_dtype, scale, dtype))
    fresh = expert()
    assert lora_refold.refold(lora_view("transformer", fresh), report._refolds["transformer"])
    assert (torch.bfloat16, torch.bfloat16, torch.bfloat16) in taken  # the case the straight product serves
    assert_same_without_peft(fresh, first, torch.bfloat16)
