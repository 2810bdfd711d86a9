"""The stand-ins' config files in the formats the real repositories ship, and the project's own settings
where those differ: the Qwen2.5-VL text encoder config in the transformers-4 layout, the Wan scheduler
with flow_shift 3.0 (the project samples at 5 itself)."""

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from producer.facts import registry
from producer.makers import wan_video
from producer.testing import standin_models


def _snapshot(install, name) -> Path:
    return Path(install.manifest[name]["snapshot"])


@pytest.mark.parametrize("name", ["qwen-edit", "qwen-image-t2i"])
def test_qwen_text_encoder_config_is_in_the_transformers4_layout_and_loads_the_same(standin_install, name):
    from transformers import Qwen2_5_VLForConditionalGeneration

    folder = _snapshot(standin_install, name) / "text_encoder"
    config = json.loads((folder / "config.json").read_text())
    assert config["rope_scaling"]["mrope_section"] == config["text_config"]["rope_scaling"]["mrope_section"]
    assert config["hidden_size"] == config["text_config"]["hidden_size"] == standin_models.QWEN_VL_TEXT_CONFIG[
        "hidden_size"]
    assert "rope_parameters" not in json.dumps(config) and "torch_dtype" in config and "dtype" not in config

    loaded = Qwen2_5_VLForConditionalGeneration.from_pretrained(folder)  # transformers 5, legacy path
    assert loaded.config.text_config.rope_parameters["mrope_section"] == config["rope_scaling"]["mrope_section"]
    assert loaded.config.text_config.rope_parameters["rope_theta"] == config["rope_theta"]
    tokenizer = standin_models.build_qwen_tokenizer()
    component = "qwen.text_encoder" if name == "qwen-edit" else "qwen_t2i.text_encoder"
    built = standin_models.build_qwen_text_encoder(tokenizer, 0, component=component)
    ids = torch.tensor([[5, 6, 7, 8, 9]])
    with torch.no_grad():
        expected = built(input_ids=ids, output_hidden_states=True).hidden_states[-1]
        got = loaded(input_ids=ids, output_hidden_states=True).hidden_states[-1]
    assert torch.equal(expected, got)


def test_wan_scheduler_says_3_and_the_full_schedule_samples_at_5(standin_hf_home, tmp_path, capsys):
    """The repository's scheduler config says flow_shift 3.0; the official I2V sampling uses 5 and the project
    sets it explicitly. The clip's timesteps are the shift-5 ones, not the config's shift-3 ones."""
    from diffusers import UniPCMultistepScheduler

    snap = standin_hf_home / "hub" / ("models--" + registry.WAN_REPO.replace("/", "--")) / "snapshots"
    (config_path,) = snap.glob("*/scheduler/scheduler_config.json")
    config = json.loads(config_path.read_text())
    assert config["flow_shift"] == 3.0 and registry.WAN.full.shift == 5.0

    def timesteps(shift, steps=4):
        scheduler = UniPCMultistepScheduler.from_config(config, flow_shift=shift)
        scheduler.set_timesteps(steps)
        return [round(float(t), 3) for t in scheduler.timesteps]

    assert timesteps(5.0) != timesteps(3.0)
    start = tmp_path / "start.png"
    Image.fromarray(np.full((64, 64, 3), 90, dtype=np.uint8)).save(start)
    code = wan_video.main(["--start-frame", str(start), "--prompt", "x", "--distill", "off", "--steps", "4",
                           "--size", "64x64", "--frames", "5", "--seed", "1", "-o", str(tmp_path / "c.mp4"),
                           "--quiet", "--json"])
    out = capsys.readouterr()
    assert code == 0, out.err
    result = json.loads(out.out.strip().splitlines()[-1])
    ran = [round(t, 3) for c in ("transformer", "transformer_2") for t in result["experts"][c]["timesteps"]]
    assert ran == timesteps(5.0)


def test_model_index_files_name_the_published_classes_and_load(standin_hf_home, standin_install):
    """As published: Wan's tokenizer is T5TokenizerFast (transformers 4's name, an alias in 5), no image
    encoder; Qwen's components are the 2511 repository's classes."""
    from diffusers import WanImageToVideoPipeline

    wan = json.loads((_snapshot(standin_install, "wan-i2v") / "model_index.json").read_text())
    assert wan["tokenizer"] == ["transformers", "T5TokenizerFast"] and wan["image_encoder"] == [None, None]
    assert wan["boundary_ratio"] == registry.WAN.boundary_ratio
    qwen = json.loads((_snapshot(standin_install, "qwen-edit") / "model_index.json").read_text())
    assert {k: v for k, v in qwen.items() if not k.startswith("_")} == {
        "processor": ["transformers", "Qwen2VLProcessor"],
        "scheduler": ["diffusers", "FlowMatchEulerDiscreteScheduler"],
        "text_encoder": ["transformers", "Qwen2_5_VLForConditionalGeneration"],
        "tokenizer": ["transformers", "Qwen2Tokenizer"], "transformer": ["diffusers", "QwenImageTransformer2DModel"],
        "vae": ["diffusers", "AutoencoderKLQwenImage"]}
    pipe = WanImageToVideoPipeline.from_pretrained(registry.WAN_REPO, revision=registry.WAN_COMMIT)
    assert pipe.tokenizer("a cat").input_ids
