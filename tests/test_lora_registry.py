"""The registry's LoRAs (distill, Lightning, AnyPose) found in the Hugging Face cache and loaded where they
belong; the helpers are test_lora.py's."""

import pytest
import torch
from producer import cli
from producer.cli import CliError, ExitCode
from producer.engines.loras import lora as L
from producer.testing import standin_models, standins
from test_lora import WAN_EXPERTS, outputs, skipped, with_lora_writers


def test_registry_lora_missing_names_the_setup_command():
    with pytest.raises(CliError) as err:
        L.registry_lora_specs("wan-lightning")
    assert err.value.code == ExitCode.MISSING_MODEL
    assert "setup_diffusers.py --download --only wan-lightning" in err.value.fix


def test_wan_distill_loras_go_into_both_experts(offline_hf_home, monkeypatch, tiny_wan_pipeline):
    wan = tiny_wan_pipeline
    with_lora_writers(monkeypatch)
    manifest = standins.install_standin_loras(offline_hf_home, ["wan-lightning", "wan21-lightx2v"])
    assert manifest["wan-lightning"]["repo_id"] == "lightx2v/Wan2.2-Distill-Loras"

    lightning = L.registry_lora_specs("wan-lightning")
    assert [(s.path.name.split("_")[3], s.components) for s in lightning] == [
        ("high", ("transformer",)), ("low", ("transformer_2",))]
    before = outputs(wan)
    report = L.load_loras(wan, lightning, "wan")
    after = outputs(wan)
    assert all(not torch.allclose(after[c], before[c], atol=1e-4) for c in WAN_EXPERTS)
    assert [[e.component for e in lora.experts] for lora in report.loras] == [["transformer"], ["transformer_2"]]
    # the high file's B matrix is in the high-noise expert, the low file's in the low-noise one
    from safetensors.torch import load_file

    for s, component, lora in zip(lightning, WAN_EXPERTS, report.loras):
        up = load_file(s.path)["diffusion_model.blocks.0.self_attn.q.lora_up.weight"].float()
        layer = getattr(wan, component).blocks[0].attn1.to_q
        assert torch.equal(layer.lora_B[lora.adapter_name].weight, up)

    (lightx2v,) = L.registry_lora_specs("wan21-lightx2v")
    assert lightx2v.components == WAN_EXPERTS
    split = L.registry_lora_specs("wan21-lightx2v", strength={"transformer": 3.0, "transformer_2": 1.5})
    assert [(s.components, s.strength) for s in split] == [(("transformer",), 3.0), (("transformer_2",), 1.5)]
    fresh = standin_models.build_wan_pipeline(0)
    report = L.load_loras(fresh, [lightx2v], "wan")
    assert [e.component for e in report.loras[0].experts] == list(WAN_EXPERTS)
    assert all(skipped(e, L.NOT_APPLICABLE) > 0 and not e.partial for e in report.loras[0].experts)


def test_qwen_lightning_and_anypose_from_the_cache(offline_hf_home, monkeypatch, tiny_qwen_edit_pipeline):
    qwen = tiny_qwen_edit_pipeline
    with_lora_writers(monkeypatch)
    manifest = standins.install_standin_loras(offline_hf_home, ["qwen-lightning", "qwen-anypose"])
    entry = manifest["qwen-lightning"]
    assert entry["revision"] == "d74eba145674fd7e31b949324e148e21e7118abd"
    assert entry["snapshot"].endswith(entry["revision"])
    (four,) = L.registry_lora_specs("qwen-lightning", steps=4)
    (eight,) = L.registry_lora_specs("qwen-lightning", steps=8)
    assert "4steps" in four.path.name and "8steps" in eight.path.name
    with pytest.raises(CliError, match="4- and 8-step"):
        L.registry_lora_specs("qwen-lightning", steps=6)
    anypose = L.registry_lora_specs("qwen-anypose")
    assert [s.strength for s in anypose] == [0.7, 0.7]
    report = L.load_loras(qwen, [four, *anypose], "qwen")
    assert [lora.scales for lora in report.loras] == [[0.125], [1.0], [1.0]]
    assert all(lora.experts[0].lora_modules_applied == lora.experts[0].lora_modules > 0 for lora in report.loras)


def test_an_unknown_home_folder_is_a_clean_error():
    with pytest.raises(cli.CliError, match="home folder"):
        L.parse_lora_spec("~nosuchuser-2b7f/x.safetensors:0.8", "wan")
