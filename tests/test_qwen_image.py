"""qwen_image.py end to end on the tiny stand-ins, in-process through main(argv), plus its rules as tables."""

import json
import shlex
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from PIL import Image, ImageDraw
from producer.cli import ExitCode
from producer.engines.qwen import qwen, qwen_jobs
from producer.facts import hardware
from producer.files import media
from producer.makers import qwen_image
from producer.modelfiles import models
from producer.sizing import memory
from producer.testing import standin_loras

pytestmark = pytest.mark.usefixtures("standin_hf_home")

# Lightning off, no CFG, 2 steps, 64x64: the cheapest real run (~0.3 s once warm).
FAST = ["--lightning", "off", "--cfg", "1", "--steps", "2", "--size", "64x64", "--quiet"]


STANDING = [(32, 10), (32, 20), (24, 20), (20, 30), (18, 40), (40, 20), (44, 30), (46, 40), (28, 40), (28, 50),
            (28, 60), (36, 40), (36, 50), (36, 60), (30, 8), (34, 8), (28, 9), (36, 9)]


def picture(path: Path, size, color) -> str:
    img = Image.new("RGB", size, color)
    ImageDraw.Draw(img).rectangle((size[0] // 4, size[1] // 4, size[0] // 2, size[1] // 2), fill=(250, 240, 20))
    img.save(path)
    return str(path)


@pytest.fixture
def pics(tmp_path):
    keypoints = {"canvas_width": 64, "canvas_height": 64,
                 "people": [{"pose_keypoints_2d": [v for x, y in STANDING for v in (x, y, 1.0)]}]}
    (tmp_path / "pose.json").write_text(json.dumps(keypoints))
    from producer.engines.qwen import pose

    pose.load_pose(tmp_path / "pose.json", (64, 64)).image.save(tmp_path / "skeleton.png")
    return SimpleNamespace(a=picture(tmp_path / "a.png", (96, 64), (200, 30, 30)),
                           b=picture(tmp_path / "b.png", (64, 64), (30, 200, 30)),
                           c=picture(tmp_path / "c.png", (50, 80), (30, 30, 200)),
                           json=str(tmp_path / "pose.json"), skeleton=str(tmp_path / "skeleton.png"), dir=tmp_path)


def run(capsys, *argv) -> tuple[int, dict]:
    code = qwen_image.main([str(a) for a in argv] + ["--json"])
    captured = capsys.readouterr()
    assert "Traceback" not in captured.err
    return code, json.loads(captured.out.strip().splitlines()[-1])


def pixels(path) -> np.ndarray:
    return np.asarray(Image.open(path).convert("RGB"), dtype=np.int16)


@pytest.fixture
def vae_inputs(monkeypatch):
    """The pictures the VAE encodes (references, control images), as tensors."""
    from diffusers import AutoencoderKLQwenImage

    seen, original = [], AutoencoderKLQwenImage.encode

    def spy(self, x, *args, **kwargs):
        seen.append(x.detach().clone())
        return original(self, x, *args, **kwargs)

    monkeypatch.setattr(AutoencoderKLQwenImage, "encode", spy)
    return seen


MODES = {  # mode -> (arguments, pictures the VAE encodes, expected mode and model in the JSON)
    "text-to-image": (lambda p: [], 0, ("text-to-image", "edit")),
    "edit": (lambda p: ["-r", p.a], 1, ("edit", "edit")),
    "composite-3": (lambda p: ["-r", p.a, "-r", p.b, "--style-image", p.c], 3, ("composite", "edit")),
    "pose-anypose-json": (lambda p: ["-r", p.a, "--pose", p.json], 2, ("pose", "edit")),
    "pose-native-skeleton": (lambda p: ["-r", p.a, "--pose", p.skeleton, "--pose-method", "native"], 2,
                             ("pose", "edit")),
    "pose-anypose-photo": (lambda p: ["-r", p.a, "--pose", p.b], 2, ("pose", "edit")),  # the picture as is
    "pose-controlnet": (lambda p: ["--pose", p.skeleton], 1, ("pose", "controlnet")),
}


@pytest.mark.parametrize("mode", list(MODES))
def test_every_mode_end_to_end(mode, pics, capsys, vae_inputs):
    """One batch per mode (one model load): seed 5 twice and seed 6; each job is checked like a single run."""
    make_args, encoded, (mode_name, model) = MODES[mode]
    job = {"prompt": "the fox from image 1 at dusk", **_job_options(make_args(pics) + FAST)}
    batch = pics.dir / "batch.json"
    batch.write_text(json.dumps([{**job, "seed": seed, "output": name}
                                 for seed, name in ((5, "one.png"), (5, "again.png"), (6, "other.png"))]))
    code, result = run(capsys, "--batch", batch, "--quiet")
    assert code == 0 and [j["status"] for j in result["jobs"]] == ["ok"] * 3
    first = result["jobs"][0]
    assert (first["mode"], first["model"]) == (mode_name, model)
    assert len(vae_inputs) == 3 * encoded and all(x.shape[-2:] == (64, 64) for x in vae_inputs)
    assert [i["image"] for i in first["images"]] == list(range(1, len(first["images"]) + 1))
    assert Image.open(pics.dir / "one.png").size == (64, 64)
    recipe = media.read_png_metadata(pics.dir / "one.png")
    assert recipe["settings"] == first["settings"] and recipe["settings"]["seed"] == 5
    assert recipe["script"] == "qwen_image.py" and recipe["model"]["commit"]
    assert {"denoise", "decode"} <= set(first["seconds"])
    assert {"text_encode", "free_text_encoder"} <= set(result["seconds"][model])  # the batch frees it once
    assert np.array_equal(pixels(pics.dir / "one.png"), pixels(pics.dir / "again.png"))
    assert np.abs(pixels(pics.dir / "one.png") - pixels(pics.dir / "other.png")).max() > 0


def test_same_seed_same_pixels_across_separate_runs(pics, capsys):
    for name in ("x.png", "y.png"):
        code, result = run(capsys, "--prompt", "edit", "-r", pics.a, "--seed", 11, "-o", pics.dir / name, *FAST)
        assert code == 0 and result["seed"] == 11
        assert {"load", "text_encode", "denoise", "decode"} <= set(result["seconds"])
    assert np.array_equal(pixels(pics.dir / "x.png"), pixels(pics.dir / "y.png"))


def _job_options(argv: list[str]) -> dict:
    """Command-line arguments as a batch job object (repeated options become lists; a short option under its long
    name: a job's keys are option names in full)."""
    long_names = {s: max(a.option_strings, key=len) for a in qwen_image.build()._actions for s in a.option_strings}
    job, i = {}, 0
    while i < len(argv):
        key = long_names[argv[i]].lstrip("-").replace("-", "_")
        if key == "quiet":
            i += 1
            continue
        value = argv[i + 1]
        if key in job:
            job[key] = (job[key] if isinstance(job[key], list) else [job[key]]) + [value]
        else:
            job[key] = value
        i += 2
    return job


def test_text_to_image_uses_the_edit_model_without_pictures(pics, capsys, monkeypatch):
    from diffusers import QwenImageEditPlusPipeline, QwenImagePipeline

    called = []
    for cls in (QwenImageEditPlusPipeline, QwenImagePipeline):
        original = cls.__call__
        monkeypatch.setattr(cls, "__call__", lambda self, *a, _o=original, _n=cls.__name__, **k: (
            called.append((_n, k.get("image"))), _o(self, *a, **k))[1])
    code, result = run(capsys, "--prompt", "a lighthouse", "-o", pics.dir / "t.png", *FAST)
    assert code == 0 and result["model_files"]["repo"] == "Qwen/Qwen-Image-Edit-2511"
    assert called == [("QwenImagePipeline", None)]  # denoised by QwenImagePipeline, no picture anywhere


def test_defaults_come_from_the_registry_and_are_reported(pics, capsys):
    code, result = run(capsys, "--prompt", "a lighthouse", "--size", "64x64", "-o", pics.dir / "d.png")
    s = result["settings"]
    assert code == 0 and (s["lightning"], s["steps"], s["cfg"], s["true_cfg"]) == ("4", 4, 1.0, False)
    assert [lo["name"] for lo in result["loras"]["loras"]] == ["qwen-lightning"]
    assert result["loras"]["loras"][0]["experts"][0]["fused"]  # one LoRA set for the run: fused


def sampling_args(**kw):
    return SimpleNamespace(**{"lightning": "auto", "steps": None, "cfg": None, **kw})


@pytest.mark.parametrize("given, installed, expected", [
    ({}, True, ("4", 4, 1.0)),
    ({"lightning": "8"}, True, ("8", 8, 1.0)),
    ({"steps": 8}, True, ("8", 8, 1.0)),
    ({"steps": 20}, True, ("off", 20, 4.0)),
    ({"cfg": 4.0}, True, ("off", 40, 4.0)),
    ({"lightning": "off"}, True, ("off", 40, 4.0)),
    ({"lightning": "4", "steps": 6}, True, ("4", 6, 1.0)),
    ({}, False, ("off", 40, 4.0)),
])
def test_sampling_resolution(given, installed, expected, monkeypatch):
    present = models.is_present
    monkeypatch.setattr(models, "is_present", lambda e: installed if e.name == "qwen-lightning" else present(e))
    lightning, sampling, notes = qwen_jobs.resolve_sampling(sampling_args(**given), "edit")
    assert (lightning, sampling.steps, sampling.cfg) == expected
    assert sampling.scheduler == ("model" if lightning == "off" else "lightning")
    assert bool(notes) == (not installed)


def test_style_negative_turns_true_cfg_on_and_is_reported_unused_at_cfg_1(pics, capsys):
    style = pics.dir / "style.json"
    style.write_text(json.dumps({"visual_style": {"art_style": "ink wash"}, "constraints": {"avoid": ["blur"]}}))
    code, result = run(capsys, "--prompt", "a lighthouse", "--style-ref", style, "-o", pics.dir / "s1.png", *FAST)
    assert code == 0 and "ink wash" in result["settings"]["prompt"] and result["settings"]["negative_prompt"] is None
    assert any("no effect at cfg 1" in n for n in result["notes"])
    code, result = run(capsys, "--prompt", "a lighthouse", "--style-ref", style, "-o", pics.dir / "s2.png",
                       *FAST, "--cfg", "3", "--negative-prompt", "text")
    assert code == 0 and result["settings"]["true_cfg"] and result["settings"]["negative_prompt"] == "text, blur"
    plain = SimpleNamespace(prompt="a lighthouse", negative_prompt=None, style_ref=None)
    assert qwen_jobs.resolve_prompts(plain, None, None, 3.0)[1] == " "  # true CFG needs some negative prompt


def test_user_lora_load_report_and_a_lora_for_another_model(pics, capsys, tiny_qwen_edit_pipeline):
    comfy = pics.dir / "ink.safetensors"
    standin_loras.save_lora(standin_loras.qwen_comfy_lora(tiny_qwen_edit_pipeline.transformer), comfy)
    code, result = run(capsys, "--prompt", "ink", "--lora", f"{comfy}:0.8", "-o", pics.dir / "l.png", *FAST)
    (report,) = result["loras"]["loras"]
    expert = report["experts"][0]
    assert code == 0 and expert["strength"] == 0.8 and expert["lora_modules_applied"] == expert["lora_modules"] > 0
    flux = pics.dir / "flux.safetensors"
    standin_loras.save_lora(standin_loras.other_model_lora("flux"), flux)
    code, result = run(capsys, "--prompt", "ink", "--lora", flux, "-o", pics.dir / "f.png", *FAST)
    assert code == ExitCode.USAGE and "Flux" in result["error"] and not (pics.dir / "f.png").exists()


def test_pose_strength_sets_the_anypose_scale_or_the_controlnet_scale(pics, capsys):
    """One batch, two models: the edit job (AnyPose) runs first, then Qwen-Image + ControlNet is loaded."""
    jobs = [{"prompt": "jump", "pose": "pose.json", "control_strength": 0.6, "output": "p2.png"},
            {"prompt": "jump", "reference": "a.png", "pose": "pose.json", "control_strength": 0.5, "output": "p1.png"}]
    (pics.dir / "poses.json").write_text(json.dumps({"defaults": _job_options(FAST), "jobs": jobs}))
    code, result = run(capsys, "--batch", pics.dir / "poses.json", "--quiet")
    controlnet, anypose = result["jobs"]
    assert code == 0 and set(result["memory_plans"]) == {"edit", "controlnet"}
    assert anypose["settings"]["pose_method"] == "anypose" and anypose["settings"]["control_strength"] == 0.5
    assert {lo["name"]: lo["experts"][0]["strength"] for lo in anypose["loras"]["loras"]} == {
        "qwen-anypose:base": 0.5, "qwen-anypose:helper": 0.5}
    assert controlnet["model"] == "controlnet" and controlnet["settings"]["control_strength"] == 0.6


# ---------------------------------------------------------------- the reference rule


@pytest.mark.parametrize("out, area, expected", [
    ((832, 480), 1024 ** 2, (832, 480)), ((480, 832), 1024 ** 2, (480, 832)), ((1024, 1024), 1024 ** 2, (1024, 1024)),
    ((1280, 720), 1024 ** 2, (1280, 704)), ((1344, 768), 1024 ** 2, (1344, 768)),
    ((2048, 1152), 1024 ** 2, (1344, 768)), ((96, 64), 4096, (64, 32)),
])
def test_reference_size_is_the_outputs_own_on_the_models_grid(out, area, expected):
    from diffusers.pipelines.qwenimage.pipeline_qwenimage_edit_plus import calculate_dimensions

    rw, rh = qwen.reference_size(*out, area)
    assert (rw, rh) == expected
    assert calculate_dimensions(rw * rh, rw / rh) == (rw, rh)  # the pipeline keeps it: no second resize


def test_prepared_references_do_not_shift_or_zoom():
    big = Image.new("RGB", (1664, 960), "black")
    ImageDraw.Draw(big).rectangle((800, 448, 863, 511), fill="white")  # a marker around the centre
    same_aspect = qwen.prepare_reference(big, 832, 480, "crop", 1024 ** 2)
    assert same_aspect.size == (832, 480)
    assert np.array_equal(np.asarray(same_aspect), np.asarray(big.resize((832, 480), Image.Resampling.LANCZOS)))
    hd = qwen.prepare_reference(Image.new("RGB", (1280, 720), "white"), 1280, 720, "crop", 1024 ** 2)
    assert hd.size == (1280, 704)  # 8 rows cut at the top and the bottom, nothing scaled
    tall = Image.new("RGB", (400, 800), "black")
    ImageDraw.Draw(tall).rectangle((190, 390, 209, 409), fill="white")
    fitted = np.asarray(qwen.prepare_reference(tall, 832, 480, "crop", 1024 ** 2).convert("L"))
    ys, xs = np.nonzero(fitted > 128)
    assert abs(xs.mean() - 416) < 2 and abs(ys.mean() - 240) < 2  # the centre stays the centre
    padded = qwen.prepare_reference(tall, 832, 480, "pad", 1024 ** 2)
    assert padded.size == (832, 480)


def test_the_vae_sees_each_reference_exactly_as_prepared(pics, capsys, vae_inputs):
    code, result = run(capsys, "--prompt", "edit", "-r", pics.a, "-o", pics.dir / "r.png", *FAST)
    prepared = qwen.prepare_reference(media.load_image(pics.a), 64, 64, "crop", 64 * 64)
    expected = torch.from_numpy(np.asarray(prepared)).permute(2, 0, 1).float() / 127.5 - 1
    assert code == 0 and result["settings"]["reference_size"] == [64, 64]
    assert torch.allclose(vae_inputs[0][0, :, 0], expected, atol=1e-5)


@pytest.mark.parametrize("size, expected", [((70, 64), (64, 64)), ((832, 480), (832, 480)), ((1080, 1920), (1088, 1920))])
def test_sizes_round_to_16_with_a_note(size, expected):
    w, h, notes = qwen_jobs.check_size(*size)
    assert (w, h) == expected and bool(notes) == (size != expected)


def test_without_a_size_the_first_reference_sets_the_aspect():
    args = SimpleNamespace(size=None, preset=None, width=None, height=None)
    assert qwen_jobs.resolve_size(args, Image.new("RGB", (1920, 1080)))[:2] == (1360, 768)
    assert qwen_jobs.resolve_size(args, None)[:2] == (1024, 1024)
    assert qwen_jobs.resolve_size(SimpleNamespace(**{**vars(args), "preset": "480p-portrait"}), None)[:2] == (480, 832)


# ---------------------------------------------------------------- batch


def test_batch_one_load_prompts_first_skip_and_a_failing_job(pics, capsys, monkeypatch):
    from diffusers import QwenImageEditPlusPipeline

    events = []
    loads = QwenImageEditPlusPipeline.from_pretrained.__func__
    monkeypatch.setattr(QwenImageEditPlusPipeline, "from_pretrained",
                        classmethod(lambda cls, *a, **k: (events.append("load"), loads(cls, *a, **k))[1]))
    for name in ("_encode_job", "denoise"):
        original = getattr(qwen.QwenSession, name)
        monkeypatch.setattr(qwen.QwenSession, name, lambda self, *a, _o=original, _n=name, **k: (
            events.append(_n), _o(self, *a, **k))[1])
    jobs = {"defaults": {"size": "64x64", "steps": 2, "cfg": 1, "lightning": "off"},
            "jobs": [{"prompt": "fox", "reference": "a.png", "output": "j0.png"},
                     {"prompt": "fox", "reference": "missing.png", "output": "j1.png"},
                     {"prompt": "fox", "reference": ["a.png", "b.png"], "output": "j2.png"},
                     {"prompt": "fox", "colour": "red", "output": "j3.png"}]}
    (pics.dir / "b.json").write_text(json.dumps(jobs))
    code, result = run(capsys, "--batch", pics.dir / "b.json", "--quiet")
    assert code == ExitCode.PARTIAL and [j["status"] for j in result["jobs"]] == ["ok", "error", "ok", "error"]
    assert "missing.png" in result["jobs"][1]["error"] and "colour" in result["jobs"][3]["error"]
    assert events.count("load") == 1 and events.count("_encode_job") == 2  # jobs 0 and 2: one load, both prompts
    assert events.index("denoise") > max(i for i, e in enumerate(events) if e == "_encode_job")  # prompts first
    made = {p: (pics.dir / p).stat().st_mtime_ns for p in ("j0.png", "j2.png")}

    code, result = run(capsys, "--batch", pics.dir / "b.json", "--quiet")
    assert [j["status"] for j in result["jobs"]] == ["skipped", "error", "skipped", "error"]
    assert made == {p: (pics.dir / p).stat().st_mtime_ns for p in made}
    jobs["jobs"][0]["prompt"] = "a fox in the rain"  # j0's recipe changes: its output is not replaced silently
    (pics.dir / "b.json").write_text(json.dumps(jobs))
    code, result = run(capsys, "--batch", pics.dir / "b.json", "--quiet")
    assert result["jobs"][0]["status"] == "error" and "overwrite" in result["jobs"][0]["fix"]


# ---------------------------------------------------------------- bad input


@pytest.fixture
def bad_files(pics):
    (pics.dir / "text.png").write_text("not a picture")
    (pics.dir / "cut.png").write_bytes(Path(pics.a).read_bytes()[:60])
    (pics.dir / "junk.pose").write_bytes(b"\x00\x01\x02junk" * 20)
    (pics.dir / "bad-style.json").write_text('{"visual_style": {"colour_palette": "red"}}')
    (pics.dir / "exists.png").write_bytes(b"mine")
    (pics.dir / "bad-batch.json").write_text("[{\"prompt\": ")
    return pics


BAD = [  # (arguments, part of the message)
    (["-r", "{d}/nope.png"], "does not exist"),
    (["-r", "{d}/text.png"], "not an image"),
    (["-r", "{d}/cut.png"], "damaged or truncated"),
    (["-r", "{a}", "-r", "{b}", "-r", "{c}", "--style-image", "{a}"], "at most 3"),
    (["-r", "{a}", "--pose", "{d}/junk.pose"], "neither an image nor OpenPose keypoints JSON"),
    (["--style-ref", "{d}/bad-style.json"], "colour_palette"),
    (["--size", "32x32"], "at least 64"),
    (["--size", "4096x4096"], "limit"),
    (["--size", "1024x256"], "wider than"),
    (["--size", "64x64", "--preset", "480p"], "both set the size"),
    (["--width", "64"], "go together"),
    (["-o", "{d}/exists.png"], "already exists"),
    (["-o", "{d}/no/such/dir/x.png"], "does not exist"),
    (["-o", "{d}/x.jpg"], "must be a .png"),
    (["--batch", "{d}/bad-batch.json"], "not valid JSON"),
    (["--batch", "{d}/bad-batch.json", "--preset", "480p"], "--preset beside --batch"),
    (["--negative-prompt", "blur", "--cfg", "1"], "needs true CFG"),
    (["--control-strength", "0.5"], "pose conditioning only"),
    (["-r", "{a}", "--pose", "{skeleton}", "--pose-method", "native", "--control-strength", "0.5"], "native pose path"),
    (["--pose", "{skeleton}", "--lightning", "4"], "not for Qwen-Image"),
    (["-r", "{a}", "--pose", "{skeleton}", "--pose-method", "controlnet"], "takes no --reference"),
    (["--pose-method", "native"], "needs --pose"),
    (["--prompt", "  "], "empty"),
    (["--steps", "0"], "give a whole number 1 to 200"),
    (["--cfg=-1", "--steps", "2"], "give a number 0 to 20"),
    (["--lora", "{d}/x.ckpt"], "pickle"),
    (["--device", "cuda:0"], "no such accelerator"),
]


@pytest.mark.parametrize("argv, message", BAD, ids=[m for _, m in BAD])
def test_bad_input_is_refused_with_the_fix_and_nothing_written(bad_files, capsys, argv, message):
    p = bad_files
    argv = [a.format(d=p.dir, a=p.a, b=p.b, c=p.c, skeleton=p.skeleton) for a in argv]
    extra = []
    if "--batch" not in argv:
        extra += [] if "--prompt" in argv else ["--prompt", "a fox"]
        extra += [] if {"--size", "--preset", "--width"} & set(argv) else ["--size", "64x64"]
        extra += [] if "-o" in argv else ["-o", str(p.dir / "out.png")]
    before = sorted(x.name for x in p.dir.iterdir())
    if "--batch" not in argv and "--lightning" not in argv:
        extra += ["--lightning", "off"]
    code, result = run(capsys, *argv, *extra)
    assert code in (ExitCode.USAGE, ExitCode.PARTIAL) and result["status"] == "error"
    assert message in result["error"] and result["fix"]
    assert sorted(x.name for x in p.dir.iterdir()) == before  # nothing written, no partial files
    assert (p.dir / "exists.png").read_bytes() == b"mine"


def test_an_output_another_run_is_making_is_refused(pics, capsys):
    from producer.files import locks

    out = pics.dir / "busy.png"
    with locks.output_lock(out, command="qwen_image.py -o busy.png"):  # held as another run would hold it
        code, result = run(capsys, "--prompt", "fox", "-o", out, *FAST)
    assert code == ExitCode.BUSY and "being made by another run" in result["error"] and not out.exists()


def test_a_pose_photo_on_the_native_path_needs_the_detector_weights(pics, capsys):
    code, result = run(capsys, "--prompt", "jump", "-r", pics.a, "--pose", pics.b, "--pose-method", "native",
                       "-o", pics.dir / "n.png", *FAST)
    assert code == ExitCode.MISSING_MODEL and "openpose-annotators" in result["fix"]


def test_a_plan_that_cannot_fit_is_refused_before_loading(pics, capsys, monkeypatch):
    from diffusers import QwenImageEditPlusPipeline

    monkeypatch.setattr(hardware, "probe", lambda *a, **k: hardware.from_sizes(6, 12))
    monkeypatch.setattr(models, "footprint", lambda family, snap: memory.QWEN_FOOTPRINT)  # the real model's sizes
    monkeypatch.setattr(QwenImageEditPlusPipeline, "from_pretrained", None)  # loading would fail loudly
    code, result = run(capsys, "--prompt", "fox", "-o", pics.dir / "x.png", *FAST)
    assert code == ExitCode.OUT_OF_MEMORY and "will not fit" in result["error"] and "--force-memory" in result["fix"]
    assert result["memory_plan"]["fits"] is False and not (pics.dir / "x.png").exists()


@pytest.mark.parametrize("weights", ["gguf-q4", "fp8"])
def test_other_weight_forms_load_as_asked_and_take_two_lora_sets(weights, pics, capsys, monkeypatch):
    from producer.sizing import gguf_host

    read = []  # a transformer kept in host memory (the CPU plan) is read once, into packed chunks
    original = gguf_host.read_into_host_chunks
    monkeypatch.setattr(gguf_host, "read_into_host_chunks", lambda path, *rest: read.append(path) or original(path, *rest))
    jobs = [{"prompt": "fox", "output": "w1.png"}, {"prompt": "fox", "lightning": "4", "output": "w2.png"}]
    (pics.dir / "w.json").write_text(json.dumps({"defaults": _job_options(FAST), "jobs": jobs}))
    code = qwen_image.main(["--batch", str(pics.dir / "w.json"), "--weights", weights, "--json"])
    captured = capsys.readouterr()
    result = json.loads(captured.out.strip().splitlines()[-1])
    assert code == 0 and [j["status"] for j in result["jobs"]] == ["ok", "ok"]
    assert result["memory_plans"]["edit"]["weights"] == weights
    assert ("transformer_file" in result["model_files"]["edit"]) == weights.startswith("gguf")
    assert ("reloading the transformer" in captured.err) == (weights == "fp8")  # fp8 casts LoRA layers too
    assert bool(read) == weights.startswith("gguf")


def test_help_documents_every_mode_and_its_examples_parse(capsys):
    assert qwen_image.main(["--help"]) == 0
    text = capsys.readouterr().out
    for words in ("text-to-image", "edit", "composite", "pose", '"image 1"', "--preset 480p", "anypose", "native",
                  "controlnet", "--batch", "Lightning", "true CFG", "recipe"):
        assert words in text, words
    examples = qwen_image.EPILOG.split("batch file")[0].replace("\\\n", " ").splitlines()
    commands = [shlex.split(line.strip())[1:] for line in examples if line.strip().startswith("qwen_image.py")]
    assert len(commands) >= 9
    for argv in commands:
        qwen_image.build().parse_args(argv)


def test_help_works_from_any_folder_without_importing_torch(tmp_path):
    import subprocess
    import sys

    from producer.makers import script_path

    script = script_path("qwen_image")
    shown = subprocess.run([sys.executable, str(script), "--help"], cwd=tmp_path, capture_output=True, text=True,
                           check=False)
    assert shown.returncode == 0 and "composite" in shown.stdout
    probe = (f"import sys; sys.path.insert(0, {str(script.parent)!r}); from producer.makers import qwen_image; "
             "qwen_image.build(); print('torch' in sys.modules)")
    assert subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True).stdout.strip() == "False"


def test_a_second_run_with_the_same_lora_on_gguf_weights_folds_it_from_the_store(pics, capsys):
    """The first run folds the Lightning LoRA into the GGUF transformer the whole way and keeps how
    (engines/loras/lora_store); the second folds it from there, reports the same, and makes the same image."""
    argv = ["--prompt", "fox", "--weights", "gguf-q4", "--lightning", "4", "--cfg", "1", "--size", "64x64", "--seed", "7"]
    reports, errs = [], []
    for name in ("s1.png", "s2.png"):
        code = qwen_image.main([*argv, "-o", str(pics.dir / name), "--json"])
        captured = capsys.readouterr()
        assert code == 0 and "Traceback" not in captured.err
        reports.append(json.loads(captured.out.strip().splitlines()[-1]))
        errs.append(captured.err)
    assert "folded from the store" not in errs[0] and "folded from the store" in errs[1]
    assert reports[0]["loras"] == reports[1]["loras"] and reports[0]["loras"]
    from PIL import Image

    first, second = (np.asarray(Image.open(pics.dir / n)) for n in ("s1.png", "s2.png"))
    assert np.array_equal(first, second)
