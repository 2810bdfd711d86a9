"""The sampling settings the scripts use with the real weights, each pinned to the value its public source
gives (docs/real-models.md names the source of every row and the test here that pins it).

Schedules are computed with diffusers' own code (the pipelines' `calculate_shift` and sigma rule) on the
real repositories' scheduler configs, at the real sizes; the end-to-end tests record the timesteps the
stand-in transformer is actually called with, in every mode that can use the Lightning LoRA."""

import json
import re
from pathlib import Path

import numpy as np
import pytest
from diffusers import QwenImageTransformer2DModel
from diffusers.pipelines.qwenimage.pipeline_qwenimage_edit_plus import calculate_shift
from PIL import Image
from producer.cli import CliError
from producer.engines.qwen import qwen, qwen_jobs
from producer.engines.wan import wan
from producer.facts import registry
from producer.makers import qwen_image
from producer.testing import standin_models

# Qwen/Qwen-Image-Edit-2511 (and Qwen/Qwen-Image) `scheduler/scheduler_config.json`, as published.
QWEN_REPO_SCHEDULER = {
    "base_image_seq_len": 256, "base_shift": 0.5, "invert_sigmas": False, "max_image_seq_len": 8192,
    "max_shift": 0.9, "num_train_timesteps": 1000, "shift": 1.0, "shift_terminal": 0.02, "stochastic_sampling": False,
    "time_shift_type": "exponential", "use_beta_sigmas": False, "use_dynamic_shifting": True,
    "use_exponential_sigmas": False, "use_karras_sigmas": False,
}
TOKENS_1024 = (1024 // 16) ** 2  # packed latent tokens of a 1024x1024 output: what the pipelines compute mu from


def qwen_schedule(name: str, steps: int, tokens: int = TOKENS_1024) -> tuple[list[float], list[float]]:
    """(sigmas, timesteps) exactly as QwenImageEditPlusPipeline / QwenImagePipeline set them."""
    scheduler = qwen.make_scheduler(name, QWEN_REPO_SCHEDULER)
    c = scheduler.config
    mu = calculate_shift(tokens, c.base_image_seq_len, c.max_image_seq_len, c.base_shift, c.max_shift)
    scheduler.set_timesteps(sigmas=np.linspace(1.0, 1 / steps, steps), mu=mu)
    return scheduler.sigmas.tolist()[:-1], scheduler.timesteps.tolist()


def test_standin_qwen_scheduler_is_the_published_one():
    assert standin_models.QWEN_SCHEDULER_CONFIG.items() <= QWEN_REPO_SCHEDULER.items()


# ---------------------------------------------------------------- Qwen Lightning


def test_qwen_lightning_4_steps_sample_at_the_distillation_schedule():
    sigmas, timesteps = qwen_schedule("lightning", 4)
    assert sigmas == pytest.approx([1.0, 0.9, 0.75, 0.5], abs=1e-6)
    assert timesteps == pytest.approx([1000.0, 900.0, 750.0, 500.0], abs=1e-3)


def test_qwen_lightning_8_steps_sample_at_the_distillation_schedule():
    sigmas, timesteps = qwen_schedule("lightning", 8)
    expected = [3 * s / (1 + 2 * s) for s in np.linspace(1.0, 1 / 8, 8)]  # shift 3 on the evenly spaced sigmas
    assert sigmas == pytest.approx(expected, abs=1e-6)
    assert sigmas == pytest.approx([1.0, 0.954545, 0.9, 0.833333, 0.75, 0.642857, 0.5, 0.3], abs=1e-6)
    assert timesteps == pytest.approx([s * 1000 for s in expected], abs=1e-3)


@pytest.mark.parametrize("tokens", [(480 // 16) * (832 // 16), TOKENS_1024, (1344 // 16) * (768 // 16), 8192])
def test_qwen_lightning_schedule_does_not_depend_on_the_size(tokens):
    """mu = log 3 at every size (base_shift = max_shift): the fixed shift the LoRA was distilled at."""
    assert qwen_schedule("lightning", 4, tokens)[0] == pytest.approx([1.0, 0.9, 0.75, 0.5], abs=1e-6)


def test_the_repo_scheduler_would_give_lightning_the_wrong_sigmas():
    """The defect issue 15 found: the repo's own scheduler at 4 steps and 1024^2."""
    assert qwen_schedule("model", 4)[0] == pytest.approx([1.0, 0.7667, 0.4556, 0.02], abs=1e-4)


def test_qwen_full_schedule_at_1024():
    sigmas, timesteps = qwen_schedule("model", registry.QWEN.full.steps)
    assert len(sigmas) == 40 and sigmas[0] == 1.0 and sigmas[-1] == pytest.approx(0.02, abs=1e-6)
    assert [round(s, 4) for s in sigmas] == [
        1.0, 0.987, 0.9736, 0.9599, 0.9458, 0.9313, 0.9165, 0.9012, 0.8856, 0.8694, 0.8529, 0.8358, 0.8182, 0.8002,
        0.7815, 0.7623, 0.7425, 0.7221, 0.701, 0.6792, 0.6567, 0.6334, 0.6093, 0.5844, 0.5586, 0.5318, 0.504,
        0.4752, 0.4453, 0.4143, 0.3819, 0.3483, 0.3132, 0.2767, 0.2386, 0.1987, 0.1571, 0.1135, 0.0679, 0.02]
    assert timesteps == pytest.approx([s * 1000 for s in sigmas], abs=1e-3)


def test_one_step_on_the_repo_scheduler_is_nan_and_refused():
    """Why the rule exists: the terminal stretch divides 0 by 0 with one sigma."""
    with np.errstate(invalid="ignore", divide="ignore"):
        assert np.isnan(qwen_schedule("model", 1)[0][0])
    assert qwen_schedule("lightning", 1) == ([1.0], [1000.0])  # no stretch: one step from pure noise is valid
    with pytest.raises(CliError, match="--steps 1 cannot run on the model's full schedule"):
        qwen_jobs.check_sampling(registry.QwenSampling(steps=1, cfg=4.0))
    qwen_jobs.check_sampling(registry.QwenSampling(steps=1, cfg=1.0, scheduler="lightning"))


def test_the_session_refuses_one_step_from_the_loaded_scheduler_config(tiny_qwen_edit_pipeline):
    """The same rule where the scheduler is made (issue 17: a one-step job that reached it wrote a black
    picture with exit 0); one step on a config without the stretch still runs."""
    from dataclasses import replace

    from producer.facts import hardware
    from producer.sizing import memory

    plan = memory.plan_memory(hardware.from_sizes(0, 64), memory.QWEN_FOOTPRINT, memory.qwen_workload(64, 64, 0))
    session = qwen.QwenSession.from_components(tiny_qwen_edit_pipeline, plan)
    assert session._scheduler_config["shift_terminal"] == 0.02
    one = qwen.QwenJob(prompt="a fox", width=64, height=64, steps=1, cfg=1.0, seed=1)
    with pytest.raises(CliError, match="--steps 1 cannot run on this scheduler.*shift_terminal"):
        session.generate(one)
    picture = np.asarray(session.generate(replace(one, scheduler="lightning")).image)
    assert np.isfinite(picture).all() and picture.std() > 0


def test_qwen_registry_sampling_values():
    q = registry.QWEN
    assert (q.full.steps, q.full.cfg, q.full.scheduler) == (40, 4.0, "model")
    assert (q.lightning_4.steps, q.lightning_4.cfg, q.lightning_4.scheduler) == (4, 1.0, "lightning")
    assert (q.lightning_8.steps, q.lightning_8.cfg, q.lightning_8.scheduler) == (8, 1.0, "lightning")
    assert registry.QWEN_LIGHTNING_SCHEDULER == {
        "base_shift": pytest.approx(1.0986123), "max_shift": pytest.approx(1.0986123), "shift_terminal": None,
        "use_dynamic_shifting": True, "time_shift_type": "exponential", "base_image_seq_len": 256,
        "max_image_seq_len": 8192}
    assert (registry.get("qwen-lightning").strength, registry.get("qwen-anypose").strength) == (1.0, 0.7)
    assert q.max_references == 3 and q.default_size == (1024, 1024)
    assert qwen_jobs.CONTROLNET_SCALE == 1.0


def test_qwen_prompt_template_is_diffusers_own():
    """The session encodes through the pipeline's encode_prompt, so the template is the pipeline's: pinned here
    so a diffusers upgrade that changes it is seen (the 2511 model card uses QwenImageEditPlusPipeline as is)."""
    from diffusers import QwenImageEditPlusPipeline

    pipe = standin_models.build_qwen_edit_pipeline(seed=0)
    assert isinstance(pipe, QwenImageEditPlusPipeline)
    assert pipe.prompt_template_encode.startswith("<|im_start|>system\nDescribe the key features of the input image")
    assert pipe.prompt_template_encode_start_idx == 64


# ---------------------------------------------------------------- Qwen, what the transformer is called with


@pytest.fixture
def transformer_timesteps(monkeypatch):
    """Timesteps (sigmas: the pipelines divide by 1000) of every call of any Qwen transformer, in order."""
    seen, forward = [], QwenImageTransformer2DModel.forward

    def spy(self, *args, **kwargs):
        seen.append(round(float(kwargs["timestep"].flatten()[0]), 6))
        return forward(self, *args, **kwargs)

    monkeypatch.setattr(QwenImageTransformer2DModel, "forward", spy)
    return seen


def _picture(path: Path, size, colour) -> str:
    Image.new("RGB", size, colour).save(path)
    return str(path)


def _run(capsys, argv) -> tuple[int, dict]:
    code = qwen_image.main([str(a) for a in argv] + ["--json", "--quiet", "--size", "64x64"])
    out = capsys.readouterr().out.strip().splitlines()
    return code, json.loads(out[-1])


LIGHTNING_MODES = {
    "text-to-image": lambda d: [],
    "edit": lambda d: ["-r", _picture(d / "a.png", (80, 64), (200, 30, 30))],
    "composite": lambda d: ["-r", _picture(d / "a.png", (80, 64), (200, 30, 30)),
                            "-r", _picture(d / "b.png", (64, 64), (30, 200, 30))],
    "pose-anypose": lambda d: ["-r", _picture(d / "a.png", (80, 64), (200, 30, 30)),
                               "--pose", _picture(d / "p.png", (64, 64), (30, 30, 200)), "--pose-method", "anypose"],
    "pose-native": lambda d: ["-r", _picture(d / "a.png", (80, 64), (200, 30, 30)),
                              "--pose", _skeleton(d), "--pose-method", "native"],
}


def _skeleton(folder: Path) -> str:
    from producer.engines.qwen import pose

    points = [(32, 10), (32, 20), (24, 20), (20, 30), (18, 40), (40, 20), (44, 30), (46, 40), (28, 40), (28, 50),
              (28, 60), (36, 40), (36, 50), (36, 60), (30, 8), (34, 8), (28, 9), (36, 9)]
    keypoints = {"canvas_width": 64, "canvas_height": 64,
                 "people": [{"pose_keypoints_2d": [v for x, y in points for v in (x, y, 1.0)]}]}
    (folder / "pose.json").write_text(json.dumps(keypoints))
    path = folder / "skeleton.png"
    pose.load_pose(folder / "pose.json", (64, 64)).image.save(path)
    return str(path)


@pytest.mark.usefixtures("standin_hf_home")
@pytest.mark.parametrize("mode", list(LIGHTNING_MODES))
@pytest.mark.parametrize("steps", ["4", "8"])
def test_every_lightning_mode_samples_on_the_distillation_schedule(mode, steps, tmp_path, capsys,
                                                                   transformer_timesteps):
    argv = ["--prompt", "the fox from image 1", "-o", tmp_path / "out.png", "--lightning", steps,
            *LIGHTNING_MODES[mode](tmp_path)]
    code, result = _run(capsys, argv)
    assert code == 0, result
    expected, _ = qwen_schedule("lightning", int(steps))
    assert transformer_timesteps == pytest.approx(expected, abs=1e-6)  # cfg 1: one call a step
    assert result["settings"]["scheduler"].startswith("FlowMatchEulerDiscrete, fixed shift 3")


@pytest.mark.usefixtures("standin_hf_home")
def test_full_schedule_keeps_the_repo_scheduler_and_its_recipe(tmp_path, capsys, transformer_timesteps):
    argv = ["--prompt", "a fox", "-o", tmp_path / "out.png", "--lightning", "off", "--steps", "4", "--cfg", "1"]
    code, result = _run(capsys, argv)
    assert code == 0 and "scheduler" not in result["settings"]  # recipes of full-schedule outputs are unchanged
    assert transformer_timesteps == pytest.approx(qwen_schedule("model", 4, 16)[0], abs=1e-6)  # 64x64: 16 tokens


@pytest.mark.usefixtures("standin_hf_home")
def test_one_step_full_schedule_is_refused_before_loading(tmp_path, capsys):
    code, result = _run(capsys, ["--prompt", "a fox", "-o", tmp_path / "one.png", "--lightning", "off",
                                 "--steps", "1"])
    assert code != 0 and result["status"] == "error" and "--steps 1" in result["error"]
    assert "--steps 2" in result["fix"] and not (tmp_path / "one.png").exists()


@pytest.mark.usefixtures("standin_hf_home")
def test_one_step_lightning_is_valid(tmp_path, capsys, transformer_timesteps):
    code, result = _run(capsys, ["--prompt", "a fox", "-o", tmp_path / "one.png", "--lightning", "4",
                                 "--steps", "1"])
    assert code == 0 and transformer_timesteps == [1.0]
    assert np.asarray(Image.open(tmp_path / "one.png")).std() > 0  # a picture, not NaN turned black


# ---------------------------------------------------------------- Wan


WAN_REPO_SCHEDULER = {"prediction_type": "flow_prediction", "use_flow_sigmas": True, "flow_shift": 3.0}


@pytest.mark.parametrize("config_shift", [3.0, 5.0])  # the real repo says 3.0; older stand-ins said 5.0
def test_wan_full_schedule_uses_shift_5_whatever_the_repo_config_says(config_shift):
    from diffusers import UniPCMultistepScheduler

    base = UniPCMultistepScheduler(**{**WAN_REPO_SCHEDULER, "flow_shift": config_shift}).config
    scheduler = wan.make_scheduler(registry.WAN.full, base)
    assert isinstance(scheduler, UniPCMultistepScheduler) and scheduler.config.flow_shift == 5.0
    scheduler.set_timesteps(registry.WAN.full.steps)
    t = scheduler.timesteps.tolist()
    assert t == [999, 994, 989, 984, 978, 972, 965, 959, 952, 945, 937, 929, 921, 912, 902, 893, 882, 871, 859, 847,
                 833, 819, 803, 787, 769, 750, 729, 707, 682, 655, 625, 593, 556, 516, 470, 418, 359, 291, 211, 117]
    high = sum(1 for x in t if x >= registry.WAN.boundary_ratio * 1000)
    assert high == 15  # 15 steps on the high-noise expert, 25 on the low-noise one (shift 3 would give 11)


def test_wan_lightning_schedule_and_expert_switch():
    scheduler = wan.make_scheduler(registry.WAN.distilled, None)
    scheduler.set_timesteps(registry.WAN.distilled.steps)
    t = scheduler.timesteps.tolist()
    shifted = [5 * s / (1 + 4 * s) * 1000 for s in (1.0, 0.75, 0.5, 0.25)]  # 1000, 750, 500, 250 shifted by 5
    assert t == pytest.approx(shifted, abs=1e-3) and t == pytest.approx([1000, 937.5, 833.333, 625], abs=1e-3)
    assert [x >= registry.WAN.boundary_ratio * 1000 for x in t] == [True, True, False, False]  # 2 + 2


def test_wan_registry_sampling_values():
    w = registry.WAN
    assert w.full == registry.WanSampling(steps=40, guidance=3.5, guidance_2=3.5, shift=5.0, scheduler="unipc")
    assert w.distilled == registry.WanSampling(steps=4, guidance=1.0, guidance_2=1.0, shift=5.0, scheduler="euler")
    assert (w.boundary_ratio, w.fps, w.frames, w.frame_multiple, w.size_multiple) == (0.9, 16, 81, 4, 16)
    assert w.presets == {"480p": (832, 480), "720p": (1280, 720)}
    assert registry.get("wan-lightning").strength == 1.0 and registry.get("wan21-lightx2v").strength == 1.0
    assert wan.MAX_SEQUENCE_LENGTH == 512


@pytest.mark.parametrize("requested, expected", [(81, 81), (80, 81), (83, 85), (1, 5), (9, 9)])
def test_wan_frames_are_4n_plus_1(requested, expected):
    from producer.engines.wan import wan_settings

    assert wan_settings.snap_frames(requested).count == expected


def test_wan_shift_5_beats_the_repo_flow_shift_in_the_recorded_settings():
    from producer.engines.wan import wan_settings

    assert wan_settings.resolve_sampling(False).shift == 5.0 and wan_settings.resolve_sampling(True).shift == 5.0


# ---------------------------------------------------------------- the table in docs/real-models.md


ROOT = Path(__file__).resolve().parents[1]


def table_rows(markdown: str) -> list[list[str]]:
    """The body rows of every table (header and separator rows left out), as cells."""
    rows, lines = [], markdown.splitlines()
    for i, line in enumerate(lines):
        if line.startswith("|") and not re.match(r"^\|[-| ]+\|$", line):
            is_header = i + 1 < len(lines) and re.match(r"^\|[-| ]+\|$", lines[i + 1])
            if not is_header:
                rows.append([cell.strip() for cell in line.strip().strip("|").split(" | ")])
    return rows


def test_every_row_names_a_test_that_exists():
    rows = table_rows((ROOT / "docs" / "real-models.md").read_text())
    assert len(rows) >= 40
    for row in rows:
        ids = re.findall(r"`(tests/[\w/]+\.py)::(\w+)`", row[-1])
        assert ids, f"row {row[0]!r} names no test"
        assert all(cell for cell in row), f"row {row[0]!r} has an empty cell"
        for path, name in ids:
            source = (ROOT / path).read_text()
            assert re.search(rf"^def {name}\(", source, re.M), f"row {row[0]!r}: {path}::{name} does not exist"
