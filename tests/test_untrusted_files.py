"""Files the skill did not make are treated as hostile: no pickle is ever unpickled beyond plain tensors,
no model code is fetched or run, no path from a file reaches outside the production folder, and no
picture is decoded past its size limit."""

import json
import os
import pickle
import re
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import run_json
from PIL import Image
from producer.cli import CliError, ExitCode
from producer.engines.qwen import pose
from producer.files import paths
from producer.makers import qwen_image, wan_video
from producer.modelfiles import models
from producer.runs import batch

SCRIPTS = Path(__file__).resolve().parents[1] / "scripts"


def run(main, *argv) -> tuple[int, dict]:
    return run_json(main, *argv)[:2]


# ---------------------------------------------------------------- model code and weights


def test_no_remote_code_anywhere():
    hits = [f"{p.relative_to(SCRIPTS)}:{n}" for p in SCRIPTS.rglob("*.py")
            for n, line in enumerate(p.read_text().splitlines(), 1) if "trust_remote_code" in line]
    assert hits == []


def calls(source: str, name: str) -> list[str]:
    """The text of every call `name(...)` in source, parentheses matched."""
    found = []
    for match in re.finditer(re.escape(name) + r"\(", source):
        depth = 0
        for end in range(match.end() - 1, len(source)):
            depth += {"(": 1, ")": -1}.get(source[end], 0)
            if depth == 0:
                found.append(source[match.start():end + 1])
                break
    return found


def test_every_weight_load_asks_for_safetensors():
    """The modules that load weights (Wan, Qwen) pass use_safetensors=True to every from_pretrained; GGUF files
    go through from_single_file. (Elsewhere from_pretrained reads configs, tokenizers and schedulers only.)"""
    loads = [call for name in ("engines/wan/wan.py", "engines/qwen/qwen_load.py")
             for call in calls((SCRIPTS / "producer" / name).read_text(), ".from_pretrained")]
    assert len(loads) >= 6 and [c for c in loads if "use_safetensors=True" not in c] == []


def test_use_safetensors_refuses_a_pickled_model_folder(tmp_path):
    """What the flag buys: the same folder loads (unpickled) without it and is refused with it."""
    from diffusers import AutoencoderKL

    vae = AutoencoderKL(block_out_channels=(8,), norm_num_groups=8, latent_channels=4, sample_size=8)
    vae.save_pretrained(tmp_path, safe_serialization=False)  # diffusion_pytorch_model.bin: a pickle
    AutoencoderKL.from_pretrained(tmp_path)
    with pytest.raises(OSError, match="safetensors"):
        AutoencoderKL.from_pretrained(tmp_path, use_safetensors=True)
    with pytest.raises(CliError, match="pickle") as info:
        models.refuse_pickled_weights(tmp_path)
    assert "arbitrary code" in info.value.message and "setup_diffusers.py" in info.value.fix
    (tmp_path / "diffusion_pytorch_model.safetensors").write_bytes(b"")
    models.refuse_pickled_weights(tmp_path)  # safetensors beside it: those are what loads


class Payload:
    """A pickle that would create a file when unpickled (what a malicious .pth can do)."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (Path.write_text, (self.marker, "the payload ran"))


def test_the_pose_annotators_unpickle_plain_tensors_only(tmp_path):
    marker = tmp_path / "ran.txt"
    evil = tmp_path / "body_pose_model.pth"
    evil.write_bytes(pickle.dumps({"weight": Payload(marker)}))
    with pytest.raises(CliError, match="not a plain tensor file") as info:
        pose._load_network(torch.nn.Linear(2, 2), evil, None)
    assert not marker.exists() and "could run code" in info.value.fix
    good = tmp_path / "good.pth"
    torch.save(torch.nn.Linear(2, 2).state_dict(), good)
    assert isinstance(pose._load_network(torch.nn.Linear(2, 2), good, None), torch.nn.Linear)


def test_a_pickled_lora_is_refused_with_the_reason(tmp_path):
    (tmp_path / "style.pt").write_bytes(pickle.dumps({"x": 1}))
    code, result = run(wan_video.main, "--start-frame", "kf.png", "--prompt", "x", "-o", tmp_path / "v.mp4",
                       "--lora", tmp_path / "style.pt")
    assert code == ExitCode.USAGE and "pickle" in result["error"] and "arbitrary code" in result["error"]


# ---------------------------------------------------------------- pictures


@pytest.mark.parametrize("side,message", [(100_000, "refusing to decode"), (9_000, "over the 64 MP limit")])
def test_a_decompression_bomb_is_refused_from_its_header(tmp_path, side, message):
    from fuzzing import bomb_png

    bomb_png(tmp_path / "bomb.png", side=side)  # gigapixels declared in a few hundred bytes
    code, result = run(qwen_image.main, "-r", tmp_path / "bomb.png", "-p", "x", "-o", tmp_path / "out.png")
    assert code == ExitCode.USAGE and message in result["error"] and "downscale" in result["fix"]
    assert not (tmp_path / "out.png").exists()


# ---------------------------------------------------------------- paths from files


def picture(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(path)
    return path


@pytest.fixture
def production(tmp_path):
    """A production folder with a picture inside, one beside it, and a symlink inside that leads out."""
    root = tmp_path / "film"
    picture(root / "assets" / "fox.png")
    picture(tmp_path / "elsewhere" / "secret.png")
    (root / "assets" / "link").symlink_to(tmp_path / "elsewhere")
    return root


@pytest.mark.parametrize("reference", ["../elsewhere/secret.png", "assets/link/secret.png", "{abs}",
                                       "assets/../../elsewhere/secret.png"])
def test_batch_paths_cannot_leave_the_production(production, reference):
    reference = reference.format(abs=production.parent / "elsewhere" / "secret.png")
    (production / "jobs.json").write_text(json.dumps([{"prompt": "x", "reference": reference, "output": "a.png"},
                                                      {"prompt": "x", "reference": "assets/fox.png",
                                                       "output": "b.png"}]))
    jobs = batch.parse_jobs(qwen_image.build(), production / "jobs.json", qwen_image.PATH_OPTIONS,
                            qwen_image.BATCH_ONLY)
    assert isinstance(jobs[0], CliError) and "leads outside the production folder" in jobs[0].message
    assert "--allow-outside" in jobs[0].fix and isinstance(jobs[1], batch.Job)
    allowed = batch.parse_jobs(qwen_image.build(), production / "jobs.json", qwen_image.PATH_OPTIONS,
                               qwen_image.BATCH_ONLY, allow_outside=True)
    assert all(isinstance(j, batch.Job) for j in allowed)


def test_outputs_are_confined_too_and_the_script_says_so(production):
    (production / "jobs.json").write_text(json.dumps([{"prompt": "x", "output": "../../overwrite-me.png"}]))
    code, result = run(qwen_image.main, "--batch", production / "jobs.json")
    assert code == ExitCode.USAGE and "leads outside the production folder" in result["jobs"][0]["error"]


def test_a_batch_in_the_state_folder_belongs_to_the_production_above(production):
    state = production / ".production"
    state.mkdir()
    assert paths.batch_root(state / "next-keyframes.json") == production.resolve()
    assert paths.batch_root(production / "jobs.json") == production.resolve()
    (state / "next.json").write_text(json.dumps([{"prompt": "x", "reference": str(production / "assets/fox.png"),
                                                  "output": str(production / "a.png")}]))
    jobs = batch.parse_jobs(qwen_image.build(), state / "next.json", qwen_image.PATH_OPTIONS, qwen_image.BATCH_ONLY)
    assert isinstance(jobs[0], batch.Job)


def test_scene_files_name_keyframes_inside_the_production():
    from producer.production.scenes import parse_scene_breakdown

    text = ("## Scene 1\n- **Type**: landscape\n- **Duration**: 3 seconds\n"
            "- **Start Keyframe**: ../other-film/keyframes/KF-A.png\n")
    problems = parse_scene_breakdown(text, "scene-breakdown.md").problems
    assert any("leads outside the production folder" in p.message for p in problems)


def test_asset_pictures_follow_the_same_rule(production):
    from producer.production.assets import load_assets

    def problems(image):
        (production / "assets.json").write_text(json.dumps({
            "styles": {"ink": {"description": "ink wash", "image": "assets/fox.png"}},
            "characters": {"fox": {"description": "a fox", "image": image}}}))
        return [p.message for p in load_assets(production)[1] if "outside" in p.message]

    assert problems("assets/link/secret.png") and problems("../elsewhere/secret.png")
    assert problems(os.fspath(production.parent / "elsewhere" / "secret.png"))
    assert not problems("assets/fox2.png")


def test_a_production_that_allows_outside_pictures_passes_the_flag_to_its_batch(tmp_path, monkeypatch):
    """production.py --allow-outside keeps an asset elsewhere; the batch `next` writes must then allow it too.
    A relative production folder, as people type it."""
    import shutil

    from producer.commands import production as tool

    shutil.copytree(Path(__file__).resolve().parents[1] / "examples" / "lighthouse", tmp_path / "film",
                    ignore=shutil.ignore_patterns(".production"))
    monkeypatch.chdir(tmp_path)
    assets = json.loads(Path("film/assets.json").read_text())
    assets["characters"]["keeper"]["image"] = "../shared/keeper.png"
    Path("film/assets.json").write_text(json.dumps(assets))
    code, result = run(tool.main, "check", "film")
    assert code == ExitCode.USAGE and any("leads outside" in p["message"] for p in result["problems"])
    assert run(tool.main, "approve", "film", "philosophy", "scenes", "--allow-outside")[0] == 0
    code, result = run(tool.main, "next", "film", "--allow-outside")
    assert code == 0 and result["action"] == "generate" and "--allow-outside" in result["batch_argv"]
    jobs = batch.parse_jobs(qwen_image.build(), result["batch_file"], qwen_image.PATH_OPTIONS, qwen_image.BATCH_ONLY,
                            allow_outside=True)
    assert all(isinstance(j, batch.Job) for j in jobs)
    assert any(isinstance(j, CliError) for j in batch.parse_jobs(
        qwen_image.build(), result["batch_file"], qwen_image.PATH_OPTIONS, qwen_image.BATCH_ONLY))
