"""LoRA files in the forms the published families ship, run through the scripts on the stand-ins, and
malformed LoRA files refused by the scripts before anything is generated."""

import json

import numpy as np
import pytest
import torch
from PIL import Image
from producer.cli import ExitCode
from producer.makers import wan_video
from producer.testing import standin_loras as SL

WAN_FAST = ["--seed", "3", "--size", "64x64", "--frames", "5", "--quiet", "--json"]


def run_wan(capsys, *argv):
    code = wan_video.main([str(a) for a in argv])
    out = capsys.readouterr()
    assert "Traceback" not in out.err
    return code, json.loads(out.out.strip().splitlines()[-1]), out.err


@pytest.fixture
def start_frame(tmp_path):
    path = tmp_path / "start.png"
    Image.fromarray(np.full((64, 64, 3), 120, dtype=np.uint8)).save(path)
    return path


def test_a_nan_delta_is_refused_before_generation(standin_hf_home, start_frame, tmp_path, capsys):
    """It used to be applied: a black clip and exit 0."""
    nan = SL.save_lora({"diffusion_model.blocks.0.diff_m": torch.full((1, 6, 32), float("nan"))},
                       tmp_path / "nan.safetensors")
    out = tmp_path / "clip.mp4"
    code, result, _ = run_wan(capsys, "--start-frame", start_frame, "--prompt", "x", "--lora", nan, "-o", out,
                              *WAN_FAST)
    assert code == ExitCode.USAGE and "nan.safetensors" in result["error"] and "NaN" in result["error"]
    assert not out.exists() and sorted(p.name for p in tmp_path.iterdir()) == ["nan.safetensors", "start.png"]


# ---------------------------------------------------------------- the published forms through the scripts


def experts_of(result, name):
    """{component: expert report} of the LoRA `name` in a wan_video.py result."""
    found = {}
    for component, entries in result["loras"].items():
        for entry in entries:
            if entry["name"] == name:
                (found[component],) = [e for e in entry["experts"] if e["component"] == component]
                found[component]["_file"] = entry
    return found


def not_applicable(expert):
    return sum(s["count"] for s in expert["skipped"] if "not applicable" in s["reason"] and not s["lost"])


def test_wan_lightning_as_published_high_without_image_keys_low_with_them(standin_hf_home, start_frame, tmp_path,
                                                                          capsys):
    """LightX2V's 1022 files: no .alpha keys (scale 1), head.head.diff, .diff_m; k_img/v_img only in the
    low-noise file. Each file reaches its own expert completely; the image keys are 'not applicable'."""
    code, result, err = run_wan(capsys, "--start-frame", start_frame, "--prompt", "x", "-o", tmp_path / "c.mp4",
                                *WAN_FAST)
    assert code == 0, err
    high = experts_of(result, "wan-lightning:high")["transformer"]
    low = experts_of(result, "wan-lightning:low")["transformer_2"]
    for expert in (high, low):
        assert expert["_file"]["alphas"] == [] and expert["_file"]["scales"] == [1.0]
        assert expert["lora_modules_applied"] > 0 and expert["deltas_applied"] > 0 and not expert["partial"]
        assert "head.head.diff" not in json.dumps(expert["skipped"])  # applied, not skipped
    assert not_applicable(high) == 0 and high["lora_modules_applied"] == high["lora_modules"]
    # the low file's k_img/v_img pairs (2 blocks x 2) and img_emb's two linears have no target in Wan 2.2
    assert low["lora_modules"] - low["lora_modules_applied"] == 6 and not_applicable(low) > 6
    assert low["lora_modules_applied"] == high["lora_modules_applied"]


def test_modulation_diff_spelling_reaches_the_clip_like_diff_m(standin_hf_home, start_frame, tmp_path, capsys):
    from producer.testing import standin_models

    high, _ = standin_models.build_wan_experts(0)
    results = {}
    for spelling in ("diff_m", "modulation.diff"):
        sd = SL.wan_lightx2v_lora(high, seed=3, alpha=None, head="diff", modulation=spelling)
        assert any(k.endswith(f".{spelling}") for k in sd)
        path = SL.save_lora(sd, tmp_path / f"{spelling}.safetensors")
        code, result, err = run_wan(capsys, "--start-frame", start_frame, "--prompt", "x", "--lora", f"{path}:1:high",
                                    "-o", tmp_path / f"{spelling}.mp4", *WAN_FAST)
        assert code == 0, err
        expert = experts_of(result, path.name)["transformer"]
        assert not expert["partial"] and expert["deltas_applied"] > 0
        results[spelling] = (expert["deltas"], expert["deltas_applied"], expert["lora_modules_applied"])
        frame = np.asarray(Image.open(tmp_path / f"{spelling}.last.png"), dtype=float)
        results[spelling + ":frame"] = frame
    assert results["diff_m"] == results["modulation.diff"]
    assert np.array_equal(results["diff_m:frame"], results["modulation.diff:frame"])


def test_qwen_lightning_and_anypose_as_published_through_qwen_image(standin_hf_home, start_frame, tmp_path, capsys):
    """Lightning: bare transformer_blocks keys, 12 modules a block, rank 64, alpha 8 (scale 1/8), no img_mod.
    AnyPose: diffusion_model. + lora_A/lora_B, rank 16, no alpha, every block linear with img_mod/txt_mod."""
    from producer.makers import qwen_image
    from producer.testing import standin_models

    keypoints = {"canvas_width": 64, "canvas_height": 64, "people": [{"pose_keypoints_2d": [
        v for x, y in [(32, 10), (32, 20), (24, 20), (20, 30), (18, 40), (40, 20), (44, 30), (46, 40), (28, 40),
                       (28, 50), (28, 60), (36, 40), (36, 50), (36, 60), (30, 8), (34, 8), (28, 9), (36, 9)]
        for v in (x, y, 1.0)]}]}
    (tmp_path / "pose.json").write_text(json.dumps(keypoints))
    code = qwen_image.main(["--prompt", "jump", "-r", str(start_frame), "--pose", str(tmp_path / "pose.json"),
                            "--lightning", "4", "--size", "64x64", "--seed", "1", "-o", str(tmp_path / "p.png"),
                            "--quiet", "--json"])
    out = capsys.readouterr()
    assert code == 0, out.err
    result = json.loads(out.out.strip().splitlines()[-1])
    loras = {lora["name"]: lora for lora in result["loras"]["loras"]}
    assert set(loras) == {"qwen-lightning", "qwen-anypose:base", "qwen-anypose:helper"}

    blocks = standin_models.QWEN_EDIT_TRANSFORMER_CONFIG["num_layers"]
    lightning = loras["qwen-lightning"]
    assert (set(lightning["ranks"]), set(lightning["alphas"]), set(lightning["scales"])) == ({64}, {8.0}, {0.125})
    assert "keys without prefix" in lightning["key_format"]
    (expert,) = lightning["experts"]
    assert expert["lora_modules"] == expert["lora_modules_applied"] == 12 * blocks and not expert["skipped"]

    transformer = standin_models.build_qwen_edit_transformer(0)
    block_linears = sum(1 for name, m in transformer.named_modules()
                        if name.startswith("transformer_blocks.") and isinstance(m, torch.nn.Linear))
    assert any(".img_mod." in n for n, _ in transformer.named_modules())
    for name in ("qwen-anypose:base", "qwen-anypose:helper"):
        anypose = loras[name]
        assert anypose["alphas"] == [] and set(anypose["ranks"]) == {16} and set(anypose["scales"]) == {1.0}
        assert anypose["key_format"] == "ComfyUI-style keys (diffusion_model....), lora_A/lora_B"
        (expert,) = anypose["experts"]
        assert expert["lora_modules"] == expert["lora_modules_applied"] == block_linears and not expert["skipped"]
