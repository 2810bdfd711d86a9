"""Bad input to the single-job command lines of qwen_image.py and wan_video.py, found by a fourth hostile review:
each case failed on the code before its fix (see git log). Runs on the stand-in models."""

import hashlib

import numpy as np
import pytest
from conftest import run_json
from PIL import Image
from producer.cli import ExitCode
from producer.makers import qwen_image, wan_video

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


# ---------------------------------------------------------------- a clip's files over its own inputs


def test_a_clip_never_replaces_its_own_start_frame(tmp_path):
    """Was: exit 0, and --overwrite replaced the keyframe the clip started from: its own earlier last frame (a
    retake that continues the clip), or a PNG named like the clip. The recipe then named content that was gone."""
    start = picture(tmp_path / "kf.png")
    common = ["--prompt", "waves", "--seed", "1", *WAN_FAST]
    code, report, _ = run_json(wan_video.main, "--start-frame", start, *common, "-o", tmp_path / "v.mp4")
    assert code == 0, report
    last = tmp_path / "v.last.png"
    before = {name: digest(tmp_path / name) for name in names(tmp_path)}
    code, report, _ = run_json(wan_video.main, "--start-frame", last, *common, "-o", tmp_path / "v.mp4", "--overwrite")
    assert code == ExitCode.USAGE and "one of its own inputs" in report["error"] and "v-2.mp4" in report["fix"], report
    assert {name: digest(tmp_path / name) for name in names(tmp_path)} == before
    png_named_mp4 = tmp_path / "k.mp4"
    png_named_mp4.write_bytes(start.read_bytes())
    code, report, _ = run_json(wan_video.main, "--start-frame", png_named_mp4, *common, "-o", png_named_mp4,
                               "--overwrite")
    assert code == ExitCode.USAGE and "one of its own inputs" in report["error"], report
    assert png_named_mp4.read_bytes() == start.read_bytes()


@pytest.mark.parametrize("overwrite", [[], ["--overwrite"]])
@pytest.mark.parametrize("folder", ["v.first.png", "v.mp4.provenance.json"])
def test_a_folder_where_a_clip_file_goes_is_refused_before_loading(tmp_path, folder, overwrite):
    """Was: exit 2 only after the whole clip was made (the rename onto the folder failed: "it is a folder, not a
    file", fix "give a file"); without --overwrite a review folder was "not made by wan_video.py", fix: --overwrite."""
    start = picture(tmp_path / "kf.png")
    (tmp_path / folder).mkdir()
    code, report, _ = run_json(wan_video.main, "--start-frame", start, "--prompt", "waves", *WAN_FAST, *overwrite,
                               "-o", tmp_path / "v.mp4")
    assert code == ExitCode.USAGE and "is a folder" in report["error"], report
    assert "move the folder" in report["fix"] and "seconds" not in report, report
    assert names(tmp_path) == sorted(["kf.png", folder])


def test_a_clip_output_that_is_a_folder_names_an_mp4_to_give(tmp_path):
    """Was: fix "give a file name, e.g. v.mp4/out.png", which wan_video.py then refuses (not an .mp4)."""
    (tmp_path / "v.mp4").mkdir()
    code, report, _ = run_json(wan_video.main, "--start-frame", picture(tmp_path / "kf.png"), "--prompt", "waves",
                               *WAN_FAST, "-o", tmp_path / "v.mp4")
    assert code == ExitCode.USAGE and "is a directory" in report["error"], report
    assert report["fix"].endswith(str(tmp_path / "v.mp4" / "out.mp4")), report


@pytest.mark.parametrize("strength", ["", "x", "0.8x"])
def test_a_qwen_lora_strength_that_is_not_a_number_shows_qwens_own_syntax(tmp_path, strength):
    """Was: fix "use FILE[:STRENGTH], e.g. my_lora.safetensors:0.8:high"; qwen_image.py refuses ':high' (one model)."""
    lora = tmp_path / "ink.safetensors"
    code, report, _ = run_json(qwen_image.main, "-p", "x", "--lora", f"{lora}:{strength}", "-o", tmp_path / "a.png")
    assert code == ExitCode.USAGE and "my_lora.safetensors:0.8" in report["fix"], report
    assert ":high" not in report["fix"], report
    code, report, _ = run_json(wan_video.main, "--start-frame", picture(tmp_path / "kf.png"), "--prompt", "x",
                               "--lora", f"{lora}:x", "-o", tmp_path / "v.mp4")
    assert code == ExitCode.USAGE and "my_lora.safetensors:0.8:high" in report["fix"], report


# ---------------------------------------------------------------- a --device this machine does not have


@pytest.mark.parametrize("device,says", [("xyz", "is not a device"), ("cuda:x", "is not a device"),
                                         ("meta", "is not a device"), ("", "is not a device"),
                                         ("cuda:0", "no such accelerator"), ("CUDA", "no such accelerator"),
                                         ("mps", "no such accelerator")])
def test_a_device_that_is_not_here_is_refused_before_loading(tmp_path, device, says):
    """Was (wan_video.py; no GPU here): exit 1 with torch's RuntimeError or NotImplementedError and "report it",
    after the model files were found; qwen_image.py called "" and cpu:0 no accelerator, and on a GPU machine
    let any name through to torch."""
    start = picture(tmp_path / "kf.png")
    code, report, _ = run_json(wan_video.main, "--start-frame", start, "--prompt", "waves", *WAN_FAST,
                               "--device", device, "-o", tmp_path / "v.mp4")
    assert code == ExitCode.USAGE and says in report["error"] and "--device" in report["fix"] + report["error"], report
    code, report, _ = run_json(qwen_image.main, "-p", "x", "--device", device, "-o", tmp_path / "a.png")
    assert code == ExitCode.USAGE and says in report["error"], report
    assert names(tmp_path) == ["kf.png"]


def test_a_gpu_index_the_machine_does_not_have_is_named_with_the_ones_it_has(monkeypatch):
    """Was: on a machine with one GPU, --device cuda:3 went to torch.cuda.mem_get_info(3) ("invalid device
    ordinal"): a crash. The check runs before the probe."""
    import torch
    from producer.cli import CliError
    from producer.facts import hardware

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    hardware.check_device("cuda:0")
    with pytest.raises(CliError, match=r"cuda:3: no such accelerator here \(1 CUDA GPU\(s\): cuda:0 to cuda:0\)"):
        hardware.check_device("cuda:3")


# ---------------------------------------------------------------- prompts of invisible characters, sizes named as typed


@pytest.mark.parametrize("prompt", ["\u200b", "\ufeff \u200d", "\u2060\n"])
def test_a_prompt_of_invisible_characters_only_is_refused_as_empty(tmp_path, prompt):
    """Was: a zero-width space went to the text encoder as a prompt, and the picture or clip came from nothing."""
    start = picture(tmp_path / "kf.png")
    code, report, _ = run_json(wan_video.main, "--start-frame", start, "--prompt", prompt, *WAN_FAST,
                               "-o", tmp_path / "v.mp4")
    assert code == ExitCode.USAGE and "--prompt" in report["error"], report
    code, report, _ = run_json(qwen_image.main, "--prompt", prompt, "--size", "64x64", "-o", tmp_path / "k.png")
    assert code == ExitCode.USAGE and "prompt is empty" in report["error"], report
    assert names(tmp_path) == ["kf.png"]


def test_a_qwen_size_too_small_is_named_as_given_not_as_snapped():
    from producer.engines.qwen import qwen_jobs
    from producer.errors import CliError

    with pytest.raises(CliError) as err:
        qwen_jobs.check_size(1, 1)
    assert "size 1x1:" in str(err.value) and "16x16" not in str(err.value)
