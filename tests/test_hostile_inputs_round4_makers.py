"""Bad input to the single-job command lines of qwen_image.py and wan_video.py, found by a fourth hostile review:
each case failed on the code before its fix (see git log). Runs on the stand-in models."""

import hashlib

import numpy as np
import pytest
from conftest import run_json
from PIL import Image
from producer.cli import ExitCode
from producer.makers import wan_video

pytestmark = pytest.mark.usefixtures("standin_hf_home")

WAN_FAST = ["--size", "64x64", "--frames", "9", "--quiet"]


def picture(path, size=(64, 48)):
    Image.fromarray((np.random.default_rng(0).random((size[1], size[0], 3)) * 255).astype(np.uint8)).save(path)
    return path


def digest(path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def names(folder) -> list[str]:
    return sorted(p.name for p in folder.iterdir())


# ---------------------------------------------------------------- a Wan shift too small to sample with


@pytest.mark.parametrize("shift", ["1e-300", "1e-8"])
def test_a_shift_too_small_to_sample_with_is_refused_before_loading(tmp_path, shift):
    """Was: 1e-300 crashed in diffusers' scheduler (IndexError, "report it"); 1e-8 made NaN frames, reported as
    a broken clip whose fix blamed --fp8-matmul and --attention. Both only after loading and denoising."""
    start = picture(tmp_path / "kf.png")
    code, report, _ = run_json(wan_video.main, "--start-frame", start, "--prompt", "waves", "--shift", shift,
                               *WAN_FAST, "-o", tmp_path / "v.mp4")
    assert code == ExitCode.USAGE and "--shift" in report["error"] and "0.01 to 100" in report["fix"], report
    assert "seconds" not in report and names(tmp_path) == ["kf.png"]
    code, report, _ = run_json(wan_video.main, "--start-frame", start, "--prompt", "waves", "--shift", "0.01",
                               *WAN_FAST, "-o", tmp_path / "v.mp4")
    assert code == 0, report
