"""wan_video.py end to end on the tiny stand-ins, in-process: I2V and FLF clips decoded back, the step
split between the experts, LoRAs per expert, GGUF experts, batch skip and failure, and bad input."""

import json
import shlex

import numpy as np
import pytest
from PIL import Image
from producer.cli import CliError, ExitCode
from producer.files import provenance, review, video
from producer.makers import wan_video
from producer.testing import standin_loras as SL
from producer.testing import standin_models

FAST = ["--size", "64x64", "--frames", "9", "--quiet", "--json"]
DISTILL_TIMESTEPS = {"transformer": [1000.0, 937.5], "transformer_2": [833.333, 625.0]}


def gradient(path, size=(128, 96), flip=False):
    w, h = size
    yy, xx = np.mgrid[0:h, 0:w]
    channels = [xx / w, yy / h, np.full((h, w), 0.5)]
    rgb = np.stack(channels[::-1] if flip else channels, axis=-1)
    Image.fromarray((rgb * 255).astype(np.uint8)).save(path)
    return path


@pytest.fixture
def frames(tmp_path):
    return gradient(tmp_path / "kf-a.png"), gradient(tmp_path / "kf-b.png", flip=True)


def run(capsys, *argv):
    code = wan_video.main([str(a) for a in argv])
    out = capsys.readouterr()
    return code, json.loads(out.out.strip().splitlines()[-1]) if out.out.strip() else {}, out.err


def files_in(folder):
    return sorted(p.name for p in folder.iterdir())


# ---------------------------------------------------------------- I2V and FLF


def test_i2v_clip_end_to_end(standin_hf_home, frames, tmp_path, capsys):
    out = tmp_path / "scene-01" / "video.mp4"
    out.parent.mkdir()
    code, result, err = run(capsys, "--start-frame", frames[0], "--prompt", "a cat walks", "-o", out, "--seed", 5,
                            "--size", "64x64", "--frames", 10, "--quiet", "--json")
    assert code == 0, err
    info = video.probe_video(out)
    assert (info["frames"], info["fps"], info["width"], info["height"]) == (9, 16.0, 64, 64)
    assert (info["codec"], info["pix_fmt"]) == ("h264", "yuv420p")
    assert result["frames"] == 9 and "not 4n+1" in result["notes"][0] and "using 9" in err
    assert result["mode"] == "i2v" and result["seed"] == 5 and result["duration"] == 0.562
    # both experts ran, two distilled steps each, split at the boundary
    assert {c: e["timesteps"] for c, e in result["experts"].items()} == DISTILL_TIMESTEPS
    assert result["settings"]["distill"] == "wan-lightning" and result["settings"]["steps"] == 4
    assert set(result["seconds"]) >= {"denoise", "high_expert", "low_expert", "decode", "write"}
    assert result["memory_plan"]["name"] == "cpu" and result["model"]["revision"]
    for key in ("first_frame", "last_frame", "contact_sheet"):
        assert review.made_by(tmp_path / "scene-01" / result[key].split("/")[-1], "wan_video.py")
    sheet = Image.open(out.with_name("video.contact.png"))
    assert sheet.width > 4 * 64  # 8 tiles in 4 columns
    first = np.asarray(Image.open(out.with_name("video.first.png")))
    decoded, _ = video.read_video(out)
    assert np.abs(first.astype(int) - decoded[0]).mean() < 8  # the PNG is the clip's first frame (H.264 rounding)
    recipe = provenance.read_recipe(out)
    assert recipe["settings"]["seed"] == 5 and recipe["model"]["revision"] == result["model"]["revision"]
    assert recipe["weights"] == {"weights": "fp32"}
    assert set(result["continuity"]) == {"first_vs_start", "drift"}
    assert result["color_match"]["applied"] is False  # auto never matches an I2V clip
    assert files_in(out.parent) == ["video.contact.png", "video.first.png", "video.last.png", "video.mp4",
                                    "video.mp4.provenance.json"]


def test_flf_clip_reports_the_end_and_colour_figures(standin_hf_home, frames, tmp_path, capsys):
    out = tmp_path / "flf.mp4"
    style = tmp_path / "style.json"
    style.write_text(json.dumps({"motion_language": {"pacing": "slow and deliberate"},
                                 "constraints": {"avoid": ["flicker"]}}))
    code, result, err = run(capsys, "--start-frame", frames[0], "--end-frame", frames[1], "--prompt", "pan",
                            "--style-ref", style, "--color-match", "on", "--fit", "pad", "--distill", "lightx2v",
                            "-o", out, *FAST)
    assert code == 0, err
    assert result["settings"]["prompt"] == "pan, slow and deliberate"
    assert result["settings"]["negative_prompt"] == "flicker"
    assert "sha256" in provenance.read_recipe(out)["inputs"]["style_ref"]
    assert video.probe_video(out)["frames"] == 9 and result["mode"] == "flf"
    assert result["settings"]["fit_rule"] == "fit inside + edge-colour bars"
    # the Wan 2.1 LightX2V LoRA: one file into both experts, its image-encoder keys reported as not applicable
    assert {c: [e["name"] for e in entries] for c, entries in result["loras"].items()} == {
        "transformer": ["wan21-lightx2v"], "transformer_2": ["wan21-lightx2v"]}
    skipped = result["loras"]["transformer_2"][0]["experts"][0]["skipped"]
    assert any("not applicable" in s["reason"] and not s["lost"] for s in skipped)
    matched = result["color_match"]
    assert matched["applied"] and set(matched["before"]) == set(matched["after"]) == {"first_vs_start", "last_vs_end",
                                                                                          "drift"}
    assert result["continuity"] == matched["after"]
    assert 0 <= result["continuity"]["last_vs_end"]["ssim"] <= 1


def test_help_documents_both_modes_and_its_examples_parse(capsys):
    assert wan_video.main(["--help"]) == 0
    text = capsys.readouterr().out
    for phrase in ("I2V", "FLF", "--end-frame", "--fit pad", "4n+1", "--batch", "contact", "--color-match"):
        assert phrase in text
    parser = wan_video.build()
    examples = [line.strip() for line in wan_video.EPILOG.replace("\\\n", " ").splitlines()
                if line.strip().startswith("wan_video.py")]
    assert len(examples) == 7
    for line in examples:
        parser.parse_args(shlex.split(line)[1:])


# ---------------------------------------------------------------- LoRAs


def lora_file(tmp_path, name, state_dict):
    return SL.save_lora(state_dict, tmp_path / f"{name}.safetensors")


def test_user_loras_in_each_format_reach_their_expert_and_change_the_clip(standin_hf_home, frames, tmp_path, capsys):
    high, low = standin_models.build_wan_experts(0)
    kijai = lora_file(tmp_path, "kijai", SL.wan_lightx2v_lora(high, seed=1, pair=("lora_A", "lora_B")))
    diffusers_fmt = lora_file(tmp_path, "diffusers", SL.wan_diffusers_lora(low, seed=2))
    musubi = lora_file(tmp_path, "musubi", SL.wan_musubi_lora(high, seed=3))
    common = ["--start-frame", frames[0], "--prompt", "a cat walks", "--seed", 3, "--distill", "off", "--steps", 4,
              *FAST]
    code, base, err = run(capsys, *common, "-o", tmp_path / "base.mp4")
    assert code == 0, err
    code, result, err = run(capsys, *common, "-o", tmp_path / "lora.mp4", "--lora", f"{kijai}:1.0:high",
                            "--lora", f"{diffusers_fmt}:0.7:low", "--lora", f"{musubi}:0.6")
    assert code == 0, err
    names = {c: [entry["name"] for entry in entries] for c, entries in result["loras"].items()}
    assert names == {"transformer": ["kijai.safetensors", "musubi.safetensors"],
                     "transformer_2": ["diffusers.safetensors", "musubi.safetensors"]}
    import torch

    linears = [n for n, m in high.named_modules() if isinstance(m, torch.nn.Linear)]
    expected = {"kijai.safetensors": len(linears),  # every linear layer, with .diff_b deltas and norm/.diff_m deltas
                "diffusers.safetensors": sum(n.startswith("blocks.") for n in linears),
                "musubi.safetensors": sum(n.startswith("blocks.") for n in linears)}
    for entries in result["loras"].values():
        for entry in entries:
            (expert,) = entry["experts"]
            assert expert["lora_modules_applied"] == expert["lora_modules"] == expected[entry["name"]]
            assert not expert["partial"] and expert["deltas_applied"] == expert["deltas"] - sum(
                s["count"] for s in expert["skipped"])
    assert result["loras"]["transformer_2"][0]["experts"][0]["strength"] == 0.7
    before = np.asarray(Image.open(tmp_path / "base.last.png"), dtype=float)
    after = np.asarray(Image.open(tmp_path / "lora.last.png"), dtype=float)
    assert np.abs(before - after).mean() > 1.0
    assert base["settings"]["steps"] == result["settings"]["steps"] == 4 and base["settings"]["guidance"] == 3.5


def test_partial_lora_is_refused_unless_allowed(standin_hf_home, frames, tmp_path, capsys):
    high, _ = standin_models.build_wan_experts(0)
    state = SL.wan_lightx2v_lora(high, seed=4, deltas=False)
    state["diffusion_model.blocks.0.self_attn.gate.lora_down.weight"] = state[
        "diffusion_model.blocks.0.self_attn.q.lora_down.weight"].clone()
    state["diffusion_model.blocks.0.self_attn.gate.lora_up.weight"] = state[
        "diffusion_model.blocks.0.self_attn.q.lora_up.weight"].clone()
    partial = lora_file(tmp_path, "partial", state)
    common = ["--start-frame", frames[0], "--prompt", "x", "--lora", f"{partial}:1:high", *FAST]
    code, result, _ = run(capsys, *common, "-o", tmp_path / "a.mp4")
    assert code == ExitCode.USAGE and "--allow-partial-lora" in result["fix"] and "only in part" in result["error"]
    assert not (tmp_path / "a.mp4").exists()
    code, result, err = run(capsys, *common, "-o", tmp_path / "b.mp4", "--allow-partial-lora")
    assert code == 0, err
    high_report = next(e for e in result["loras"]["transformer"] if e["name"] == "partial.safetensors")
    assert high_report["experts"][0]["lost"] == 2


def test_a_lora_for_another_model_is_refused_and_nothing_is_written(standin_hf_home, frames, tmp_path, capsys):
    flux = lora_file(tmp_path, "flux", SL.other_model_lora("flux"))
    code, result, _ = run(capsys, "--start-frame", frames[0], "--prompt", "x", "--lora", flux, "-o",
                          tmp_path / "out.mp4", *FAST)
    assert code == ExitCode.USAGE and "Flux" in result["error"] and result["fix"]
    assert [p for p in files_in(tmp_path) if p.startswith("out")] == []


# ---------------------------------------------------------------- weights


def test_gguf_experts_load_with_the_wan22_config_and_take_the_distill_lora(standin_hf_home, frames, tmp_path, capsys,
                                                                          monkeypatch):
    from producer.sizing import gguf_host

    read = []  # experts kept in host memory (the CPU plan) are read once, into packed chunks
    original = gguf_host.read_into_host_chunks
    monkeypatch.setattr(gguf_host, "read_into_host_chunks", lambda path, *rest: read.append(path.name) or original(path, *rest))
    code, result, err = run(capsys, "--start-frame", frames[0], "--prompt", "x", "--weights", "gguf-q4",
                            "--distill-strength", "1.0:0.5", "--negative-prompt", "blur", "-o", tmp_path / "gguf.mp4",
                            *FAST)
    assert code == 0, err
    assert "--negative-prompt has no effect at guidance 1" in err
    assert [e["experts"][0]["strength"] for c in ("transformer", "transformer_2") for e in result["loras"][c]] == [1, 0.5]
    assert {"encode", "load_text_encoder", "load_experts", "write"} <= set(result["seconds"])
    assert result["memory_plan"]["weights"] == "gguf-q4"
    assert result["model"]["gguf"]["files"][0].startswith("HighNoise/") and result["model"]["weights"] == "gguf-q4"
    assert {c: e["steps"] for c, e in result["experts"].items()} == {"transformer": 2, "transformer_2": 2}
    experts = [e["experts"][0] for entries in result["loras"].values() for e in entries]
    assert [(e["fused"], e["folded"]) for e in experts] == [(False, True)] * 2  # into the weights GGUF dequantizes
    assert video.probe_video(tmp_path / "gguf.mp4")["frames"] == 9
    assert sorted(read) == ["Wan2.2-I2V-A14B-HighNoise-Q4_K_M.gguf", "Wan2.2-I2V-A14B-LowNoise-Q4_K_M.gguf"], read


# ---------------------------------------------------------------- batch


def test_batch_one_load_skips_up_to_date_and_keeps_going_after_a_failure(standin_hf_home, frames, tmp_path, capsys):
    jobs = {"defaults": {"size": "64x64", "frames": 9, "seed": 2},
            "jobs": [{"start_frame": "kf-a.png", "prompt": "walk", "output": "s1.mp4"},
                     {"start_frame": "kf-a.png", "end_frame": "kf-b.png", "prompt": "turn", "output": "s2.mp4"},
                     {"start_frame": "missing.png", "prompt": "x", "output": "s3.mp4"}]}
    batch_file = tmp_path / "clips.json"
    batch_file.write_text(json.dumps(jobs))
    code, result, err = run(capsys, "--batch", batch_file, "--json", "--quiet")
    assert code == ExitCode.PARTIAL, err
    assert [j["status"] for j in result["jobs"]] == ["ok", "ok", "error"]
    assert "missing.png" in result["jobs"][2]["error"] and result["jobs"][1]["mode"] == "flf"
    assert list(result["loras"]) == ["transformer", "transformer_2"]
    mtime = (tmp_path / "s1.mp4").stat().st_mtime_ns

    # the weight form follows the machine's plan: another form does not make a clip out of date
    code, again, _ = run(capsys, "--batch", batch_file, "--json", "--quiet", "--weights", "gguf-q8")
    assert code == ExitCode.PARTIAL and [j["status"] for j in again["jobs"]] == ["skipped", "skipped", "error"]
    assert "loras" not in again  # nothing to make: no model was loaded
    assert (tmp_path / "s1.mp4").stat().st_mtime_ns == mtime

    jobs["jobs"][0]["prompt"] = "run"
    batch_file.write_text(json.dumps(jobs))
    code, changed, _ = run(capsys, "--batch", batch_file, "--json", "--quiet")
    assert [j["status"] for j in changed["jobs"]] == ["error", "skipped", "error"]
    assert "other settings" in changed["jobs"][0]["error"] and "--overwrite" in changed["jobs"][0]["fix"]


def test_a_batch_with_one_expert_in_ram_reads_each_expert_once(standin_hf_home, frames, tmp_path, capsys,
                                                                 monkeypatch):
    """A 16 GB machine's plan holds one expert: the batch announces its clips, so the session makes them
    expert by expert (two reads for the batch, not two a clip) and writes the clips a clip-by-clip run makes."""
    from dataclasses import replace

    from producer.engines.wan import experts, wan_load

    plan_for = wan_load.plan_for
    monkeypatch.setattr(wan_load, "plan_for", lambda *a, **kw: replace(plan_for(*a, **kw), experts_in_ram=1))
    reads = []
    get = experts.ExpertsOnDisk.get
    monkeypatch.setattr(experts.ExpertsOnDisk, "get", lambda self, c, **kw: reads.append(c) or get(self, c, **kw))
    jobs = {"defaults": {"size": "64x64", "frames": 9},
            "jobs": [{"start_frame": "kf-a.png", "prompt": "walk", "output": "b1.mp4", "seed": 1},
                     {"start_frame": "kf-b.png", "prompt": "turn", "output": "b2.mp4", "seed": 2}]}
    (tmp_path / "clips.json").write_text(json.dumps(jobs))
    code, result, err = run(capsys, "--batch", tmp_path / "clips.json", "--json", "--quiet")
    assert code == 0, err
    assert reads == ["transformer", "transformer_2"]
    assert result["memory_plan"]["experts_in_ram"] == 1
    reads.clear()
    code, _, err = run(capsys, "--start-frame", tmp_path / "kf-b.png", "--prompt", "turn", "-o",
                       tmp_path / "alone.mp4", "--size", "64x64", "--frames", "9", "--seed", "2", "--json", "--quiet")
    assert code == 0, err
    assert reads == ["transformer", "transformer_2"]
    assert np.array_equal(video.read_video(tmp_path / "alone.mp4")[0], video.read_video(tmp_path / "b2.mp4")[0])


def test_batch_refuses_model_options_inside_a_job(tmp_path, capsys):
    batch_file = tmp_path / "b.json"
    batch_file.write_text(json.dumps([{"start_frame": "a.png", "prompt": "x", "output": "o.mp4", "lora": "l.safetensors"}]))
    code, result, _ = run(capsys, "--batch", batch_file, "--json")
    assert code == ExitCode.USAGE and "whole batch" in result["jobs"][0]["error"]  # its only job: that reason's code
    code, result, _ = run(capsys, "--batch", batch_file, "--json", "--seed", 3, "--fit", "pad", "--overwrite")
    assert code == ExitCode.USAGE and "--seed, --fit beside --batch would not reach the jobs" in result["error"]
    assert '"defaults"' in result["fix"]


# ---------------------------------------------------------------- bad input


@pytest.mark.parametrize("extra, says, fix", [
    (["--size", "70x64"], "multiples of 16", "--size 64x64"),
    (["--lora", "style.pt"], "pickle", ".safetensors"),
    (["--lora", "style.ckpt:0.5:high"], "pickle", ".safetensors"),
    (["--guidance", "1", "--guidance-2", "3"], "--guidance-2 3 needs --guidance above 1", "--guidance"),
    (["--frames", "9", "--duration", "2"], "not both", "--frames"),
    (["--distill", "off", "--distill-strength", "1"], "no step-distill LoRA", "--distill"),
])
def test_bad_settings_fail_before_loading(standin_hf_home, frames, tmp_path, capsys, extra, says, fix):
    code, result, err = run(capsys, "--start-frame", frames[0], "--prompt", "x", "-o", tmp_path / "o.mp4", "--json",
                            *extra)
    assert code == ExitCode.USAGE and says in result["error"] and fix in result["fix"]
    assert "Traceback" not in err and not (tmp_path / "o.mp4").exists()


def test_bad_keyframes(frames, tmp_path, capsys):
    corrupt = tmp_path / "corrupt.png"
    corrupt.write_bytes(b"\x89PNG\r\n\x1a\n" + b"not really" * 10)
    small = gradient(tmp_path / "small.png", size=(64, 48))
    for argv, says in ((["--start-frame", tmp_path / "nope.png"], "does not exist"),
                       (["--start-frame", corrupt], "corrupt.png"),
                       (["--start-frame", frames[0], "--end-frame", small], "both keyframes at one size")):
        code, result, err = run(capsys, *argv, "--prompt", "x", "-o", tmp_path / "o.mp4", "--json")
        assert code == ExitCode.USAGE and says in result["error"] and result["fix"], result
        assert "Traceback" not in err
    assert "make the end keyframe 128x96" in result["fix"]


def test_existing_output_is_never_overwritten(frames, tmp_path, capsys):
    out = tmp_path / "video.mp4"
    out.write_bytes(b"the user's clip")
    code, result, _ = run(capsys, "--start-frame", frames[0], "--prompt", "x", "-o", out, "--json")
    assert code == ExitCode.USAGE and "already exists" in result["error"] and "--overwrite" in result["fix"]
    assert out.read_bytes() == b"the user's clip"
    foreign = tmp_path / "other.first.png"
    Image.new("RGB", (8, 8)).save(foreign)
    code, result, _ = run(capsys, "--start-frame", frames[0], "--prompt", "x", "-o", tmp_path / "other.mp4", "--json")
    assert code == ExitCode.USAGE and "not made by wan_video.py" in result["error"]


def test_missing_model_names_the_setup_command(frames, tmp_path, capsys):
    code, result, err = run(capsys, "--start-frame", frames[0], "--prompt", "x", "-o", tmp_path / "o.mp4", "--json")
    assert code == ExitCode.MISSING_MODEL and "setup_diffusers.py --download" in result["fix"]
    assert "full 40-step schedule" in err  # no distill LoRA either: said, with how to install one
    code, result, _ = run(capsys, "--start-frame", frames[0], "--prompt", "x", "-o", tmp_path / "o.mp4", "--json",
                          "--distill", "lightning")
    assert code == ExitCode.MISSING_MODEL and "wan-lightning" in result["fix"]


def test_out_of_memory_names_the_plan_and_the_next_offload(standin_hf_home, frames, tmp_path, capsys, monkeypatch):
    import torch
    from producer.engines.wan import wan

    def no_memory(self, job):
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")

    monkeypatch.setattr(wan.WanSession, "generate", no_memory)
    code, result, _ = run(capsys, "--start-frame", frames[0], "--prompt", "x", "-o", tmp_path / "o.mp4", *FAST)
    assert code == ExitCode.OUT_OF_MEMORY and "with plan cpu" in result["error"]
    assert result["memory_plan"]["name"] == "cpu" and "--preset 480p" in result["fix"]
    assert not (tmp_path / "o.mp4").exists()


def test_people_get_a_short_summary_on_stdout():
    figures = {"delta_e": 1.5, "cast": 0.4, "ssim": 0.93}
    clip = {"output": "v.mp4", "frames": 81, "duration": 5.062, "fps": 16, "width": 832, "height": 480, "seed": 7,
            "first_frame": "v.first.png", "last_frame": "v.last.png", "contact_sheet": "v.contact.png",
            "continuity": {"first_vs_start": figures, "last_vs_end": figures, "drift": 0.5}}
    text = wan_video.describe(clip)
    assert "wrote v.mp4 (81 frames, 5.062 s at 16 fps, 832x480, seed 7)" in text and "v.contact.png" in text
    assert "last frame vs end keyframe: delta E 1.5, SSIM 0.93" in text
    batch_result = {"counts": {"ok": 1, "error": 1}, "jobs": [{"job": 0, "status": "ok", "output": "a.mp4"},
                                                             {"job": 1, "status": "error", "error": "job 1: bad"}]}
    assert wan_video.describe(batch_result) == "batch: 1 ok, 1 error\n  job 0: ok a.mp4\n  job 1: error bad"


def test_a_plan_that_does_not_fit_is_refused_before_loading(standin_hf_home, frames, tmp_path, capsys, monkeypatch):
    from producer.engines.wan import wan
    from producer.facts import hardware

    monkeypatch.setattr(hardware, "probe", lambda *args, **kwargs: hardware.from_sizes(4, 2))
    monkeypatch.setattr(wan.WanSession, "from_files", lambda *a, **k: pytest.fail("loaded despite the plan"))
    code, result, _ = run(capsys, "--start-frame", frames[0], "--prompt", "x", "-o", tmp_path / "o.mp4", *FAST)
    assert code == ExitCode.OUT_OF_MEMORY and "cannot run Wan 2.2 I2V at 64x64x9" in result["error"]
    assert "--force-memory" in result["fix"] and result["memory_plan"]["fits"] is False


def test_force_memory_tries_a_plan_that_does_not_fit(standin_hf_home, frames, tmp_path, capsys, monkeypatch):
    """The same check as qwen_image.py's: --force-memory goes on to load (here: to the loader, which stops it)."""
    from producer.engines.wan import wan
    from producer.facts import hardware

    def loading(*args, **kwargs):
        raise CliError("reached the loader", "", ExitCode.FAILED)

    monkeypatch.setattr(hardware, "probe", lambda *args, **kwargs: hardware.from_sizes(4, 2))
    monkeypatch.setattr(wan.WanSession, "from_files", loading)
    code, result, _ = run(capsys, "--start-frame", frames[0], "--prompt", "x", "-o", tmp_path / "o.mp4", "--force-memory",
                          *FAST)
    assert code == ExitCode.FAILED and result["error"] == "reached the loader"
