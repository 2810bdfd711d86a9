"""LoRA files in the forms the published families ship, run through the scripts on the stand-ins, and
malformed LoRA files refused by the scripts before anything is generated."""

import json

import numpy as np
import pytest
import torch
from PIL import Image

import wan_video
from producer import standin_loras as SL
from producer.cli import ExitCode

WAN_FAST = ["--size", "64x64", "--frames", "5", "--quiet", "--json"]


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
