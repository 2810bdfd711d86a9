"""Parity with diffusers' own pipelines: the project's sessions compute what diffusers computes.

For every generation path the job is resolved by the script's own resolver (keyframe fitting, frame rounding,
reference sizing, prompts, LoRAs, schedule) and run through the project's session on the installed stand-ins;
then diffusers' pipeline (`WanImageToVideoPipeline`, `QwenImageEditPlusPipeline`, `QwenImagePipeline`,
`QwenImageControlNetPipeline`), loaded by `from_pretrained` from the same snapshot, is called with the same
inputs, seed and schedule. Where the project differs from the pipeline's defaults on purpose, the diffusers
side is configured the same way *from the public source, not from the project's code* (each such setting is
a row of docs/real-models.md, "Deliberate differences"): so each test shows that this difference is the only
one. Latents before decoding and decoded pictures are compared within the tolerances below.

Tolerances, measured on these stand-ins (CPU, fp32): the paths without LoRAs are bit-identical, latents and
pictures. Fused LoRA weights (the project) against diffusers' unfused adapters differ by float rounding
(W + s*B@A once, against W@x + s*B@(A@x) every step): latents within LORA_ATOL, 8-bit pictures within one
level. Latents are taken from the pipeline's last step (callback_on_step_end), which is what
output_type="latent" returns, so each side runs once.
"""

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from producer.engines.loras import lora
from producer.engines.qwen import qwen, qwen_jobs
from producer.engines.wan import wan
from producer.engines.wan.wan_load import components_snapshot, locate_files, plan_for
from producer.facts import hardware, registry
from producer.sizing import memory
from producer.testing import standin_loras

LORA_ATOL = 2e-6  # measured: 6.0e-7 (Wan Lightning pair), 4.8e-7 (Qwen Lightning; Lightning + AnyPose)
EXACT = 0.0

pytestmark = pytest.mark.usefixtures("standin_hf_home")

# ModelTC/Qwen-Image-Lightning `generate_with_diffusers.py` (commit 342260e8, lines 82-97), verbatim: the
# diffusers side of the Lightning tests builds its scheduler from this, not from the project's overrides.
MODELTC_LIGHTNING_SCHEDULER = {
    "base_image_seq_len": 256, "base_shift": np.log(3), "invert_sigmas": False, "max_image_seq_len": 8192,
    "max_shift": np.log(3), "num_train_timesteps": 1000, "shift": 1.0, "shift_terminal": None,
    "stochastic_sampling": False, "time_shift_type": "exponential", "use_beta_sigmas": False,
    "use_dynamic_shifting": True, "use_exponential_sigmas": False, "use_karras_sigmas": False,
}
# Wan2.2 `wan/configs/wan_i2v_A14B.py`: sample_shift 5.0 (the repo's scheduler config says 3.0).
WAN_SAMPLE_SHIFT = 5.0
# LightX2V `configs/wan22/wan_moe_i2v_distill.json`: denoising_step_list [1000, 750, 500, 250], shift 5.
LIGHTX2V_STEPS = [1000, 750, 500, 250]


def assert_close(ours, theirs, atol: float, what: str) -> None:
    ours, theirs = np.asarray(ours, np.float64), np.asarray(theirs, np.float64)
    assert ours.shape == theirs.shape, f"{what}: shapes {ours.shape} and {theirs.shape}"
    worst = float(np.abs(ours - theirs).max())
    assert worst <= atol, f"{what}: differs by up to {worst:.3g} (allowed {atol:g})"


def keyframe(path: Path, size=(80, 64), seed=0) -> Path:
    """A keyframe with structure (a gradient and noise), of another aspect than the clip: fitting matters."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:size[1], 0:size[0]]
    img = np.stack([xx / size[0], yy / size[1], rng.random(size[::-1])], -1)
    Image.fromarray((img * 255).astype(np.uint8)).save(path)
    return path


# ================================================================ Wan 2.2 I2V


def wan_request(tmp_path: Path, *argv):
    from producer.makers import wan_video

    args = wan_video.build().parse_args(["--start-frame", str(keyframe(tmp_path / "start.png")), "--prompt",
                                         "a lighthouse at dusk", "--size", "64x64", "--frames", "8", "--seed", "7",
                                         "-o", str(tmp_path / "clip.mp4"), *map(str, argv)])
    return args, wan_video


def wan_session(lora_specs=()):
    plan = plan_for(hardware.probe(device="cpu"), components_snapshot(), [memory.wan_workload(64, 64, 9)],
                    "auto", "auto")
    files = locate_files(plan.weights)
    return wan.WanSession.from_files(files, plan, lora_specs=lora_specs, progress=False), files


def diffusers_wan(files, dtype):
    from diffusers import WanImageToVideoPipeline

    pipe = WanImageToVideoPipeline.from_pretrained(files.snapshot, dtype=dtype, use_safetensors=True)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def run_diffusers_wan(pipe, req):
    call = dict(image=req.image, last_image=req.last_image, prompt=req.prompt,
                negative_prompt=req.negative_prompt or None, height=req.height, width=req.width,
                num_frames=req.frames, num_inference_steps=req.sampling.steps, guidance_scale=req.sampling.guidance,
                guidance_scale_2=req.sampling.guidance_2)
    return run_once(pipe, call, req.seed, "np")


def run_once(pipe, call: dict, seed: int, output_type: str):
    """The pipeline's output, with the latents of its last step (what output_type="latent" would return) in
    `.latents`."""
    seen = {}

    def keep(_pipe, _i, _t, tensors):
        seen["latents"] = tensors["latents"].clone()
        return tensors

    out = pipe(**call, generator=torch.Generator("cpu").manual_seed(seed), output_type=output_type,
               callback_on_step_end=keep, callback_on_step_end_tensor_inputs=["latents"])
    out.latents = seen["latents"]
    return out


def lightx2v_euler(pipe):
    """Euler at LightX2V's denoising_step_list, shift 5: the sigmas are the step list / 1000, shifted."""
    from diffusers import FlowMatchEulerDiscreteScheduler

    scheduler = FlowMatchEulerDiscreteScheduler(num_train_timesteps=1000, shift=WAN_SAMPLE_SHIFT)
    set_timesteps = scheduler.set_timesteps

    def at_the_step_list(num_inference_steps=None, device=None, **kw):
        set_timesteps(sigmas=[t / 1000 for t in LIGHTX2V_STEPS][:num_inference_steps], device=device)

    scheduler.set_timesteps = at_the_step_list
    pipe.scheduler = scheduler


def wan_parity(tmp_path, argv, distilled: bool, configure, lora_specs=(), atol=EXACT, diffusers_loras=None):
    args, wan_video = wan_request(tmp_path, *argv)
    req = wan_video.resolve_request(args, distilled)
    session, files = wan_session(lora_specs)
    clip = session.generate(wan_video.to_job(req))
    pipe = diffusers_wan(files, session.dtype)
    configure(pipe)
    if diffusers_loras:
        diffusers_loras(pipe)
    out = run_diffusers_wan(pipe, req)
    latents, frames = out.latents, out.frames[0]
    assert_close(clip.latents, latents, atol, "latents")
    assert_close(clip.frames, frames, atol, "decoded frames")
    # 8 bits: the project rounds (producer.files.video.frame_to_uint8); diffusers' export_to_video truncates
    # (frame * 255).astype(uint8). Configured the same way, the written frames agree.
    from producer.files.video import frame_to_uint8

    ours = np.stack([frame_to_uint8(f) for f in clip.frames])
    assert_same_picture(ours, (np.clip(frames, 0, 1) * 255).round().astype(np.uint8), atol)
    return req, clip


def unipc_shift_5(pipe):
    from diffusers import UniPCMultistepScheduler

    pipe.scheduler = UniPCMultistepScheduler.from_config(pipe.scheduler.config, flow_shift=WAN_SAMPLE_SHIFT)


def test_wan_i2v_full_schedule_is_bit_identical(tmp_path):
    req, clip = wan_parity(tmp_path, ["--distill", "off", "--steps", "6", "--negative-prompt", "blurry"], False,
                           unipc_shift_5)
    assert req.frames == 9 and req.image.size == (64, 64)  # 8 frames rounded to 4n+1; 80x64 centre-cropped
    assert clip.experts["transformer"].steps and clip.experts["transformer_2"].steps  # both experts ran


def test_wan_first_last_frame_full_schedule_is_bit_identical(tmp_path):
    end = keyframe(tmp_path / "end.png", seed=1)
    wan_parity(tmp_path, ["--distill", "off", "--steps", "4", "--end-frame", end, "--color-match", "off"], False,
               unipc_shift_5)


def wan_diffusers_lora_files(tmp_path: Path) -> dict[str, Path]:
    """A LoRA pair diffusers' Wan loader takes completely: LightX2V layout, lora_down/up without alpha keys (as
    LightX2V publishes them; diffusers' converter refuses alpha outside the blocks), no deltas (diffusers'
    loader drops .diff/.diff_b/.diff_m deltas, which the project applies: tested in test_lora)."""
    high, low = wan_experts()
    out = {}
    for component, module in (("transformer", high), ("transformer_2", low)):
        sd = standin_loras.wan_lightx2v_lora(module, seed=3 if component == "transformer" else 4, rank=4, alpha=None,
                                             deltas=False, head="lora")
        out[component] = standin_loras.save_lora(sd, tmp_path / f"{component}.safetensors")
    return out


def wan_experts():
    from producer.testing import standin_models

    return standin_models.build_wan_experts(0)


def test_wan_lightning_with_loras_matches_diffusers_loader(tmp_path):
    files = wan_diffusers_lora_files(tmp_path)
    specs = [lora.LoraSpec(files["transformer"], 1.0, ("transformer",)),
             lora.LoraSpec(files["transformer_2"], 1.0, ("transformer_2",))]

    def diffusers_loras(pipe):
        pipe.load_lora_weights(str(files["transformer"]), adapter_name="high")
        pipe.load_lora_weights(str(files["transformer_2"]), adapter_name="low", load_into_transformer_2=True)

    req, clip = wan_parity(tmp_path, [], True, lightx2v_euler, specs, LORA_ATOL, diffusers_loras)
    assert req.sampling == registry.WAN.distilled
    assert clip.experts["transformer"].timesteps == pytest.approx([1000.0, 937.5], abs=1e-3)
    assert clip.experts["transformer_2"].timesteps == pytest.approx([833.333, 625.0], abs=1e-3)


def test_wan_colour_matching_is_the_only_post_processing(tmp_path):
    """FLF colour matching runs after the pipeline's frames (review.color_match), on the rounded 8-bit frames:
    with --color-match off the written frames are the rounded decoded frames, which the tests above pin."""
    from producer.files import review

    frames = (np.random.default_rng(0).random((9, 64, 64, 3)) * 255).astype(np.uint8)
    start = Image.fromarray(frames[0])
    same, report = review.color_match(frames, start, start, "off")
    assert same is frames and not report["applied"]


# ================================================================ Qwen-Image-Edit-2511, Qwen-Image + ControlNet


def picture(path: Path, size, colour, seed=0) -> str:
    rng = np.random.default_rng(seed)
    img = np.clip(np.array(colour, float) + rng.normal(0, 30, (size[1], size[0], 3)), 0, 255)
    Image.fromarray(img.astype(np.uint8)).save(path)
    return str(path)


def skeleton(folder: Path) -> str:
    from producer.engines.qwen import pose

    points = [(32, 10), (32, 20), (24, 20), (20, 30), (18, 40), (40, 20), (44, 30), (46, 40), (28, 40), (28, 50),
              (28, 60), (36, 40), (36, 50), (36, 60), (30, 8), (34, 8), (28, 9), (36, 9)]
    (folder / "pose.json").write_text(json.dumps({"canvas_width": 64, "canvas_height": 64, "people": [
        {"pose_keypoints_2d": [v for x, y in points for v in (x, y, 1.0)]}]}))
    path = folder / "skeleton.png"
    pose.load_pose(folder / "pose.json", (64, 64)).image.save(path)
    return str(path)


def qwen_project(tmp_path: Path, argv):
    """The job as qwen_image.py resolves it, run through its session: (resolved, latents, picture, files, dtype)."""
    from producer.makers import qwen_image
    from producer.sizing import offload

    args = qwen_image.build().parse_args(["--prompt", "the fox from image 1 at dusk", "--size", "64x64", "--seed",
                                          "5", "--quiet", "-o", str(tmp_path / "out.png"), *map(str, argv)])
    resolved = qwen_image.resolve_job(args)
    plan, files = qwen_image.plan_for(args, [resolved], resolved.kind)
    session = qwen_image.open_session(args, plan, files)
    job = resolved.job
    session.use_loras(job.loras, fuse=True)
    session.encode([job])
    latents = session.denoise(job)
    image, _ = session.decode(latents, job)
    return resolved, latents, image, files, offload.torch_dtype(plan.dtype)


def lightning_scheduler(pipe):
    from diffusers import FlowMatchEulerDiscreteScheduler

    pipe.scheduler = FlowMatchEulerDiscreteScheduler.from_config(MODELTC_LIGHTNING_SCHEDULER)


def diffusers_loras(pipe, specs) -> None:
    """diffusers' own loader, unfused, each file at its strength."""
    names = []
    for i, spec in enumerate(specs):
        names.append(f"lora{i}")
        pipe.load_lora_weights(str(spec.path), adapter_name=names[-1])
    if names:
        pipe.set_adapters(names, adapter_weights=[spec.strength for spec in specs])


def run_diffusers_qwen(pipe, call: dict, seed: int):
    """(latents before decoding, the decoded picture)."""
    out = run_once(pipe, call, seed, "pil")
    return out.latents, out.images[0]


def assert_same_picture(ours, theirs, atol: float) -> None:
    ours, theirs = np.asarray(ours, np.int16), np.asarray(theirs, np.int16)
    worst = int(np.abs(ours - theirs).max())
    assert worst <= (0 if atol == EXACT else 1), f"pictures differ by up to {worst} levels of 255"


def edit_call(job) -> dict:
    return dict(prompt=job.prompt, negative_prompt=job.negative_prompt, true_cfg_scale=job.cfg, height=job.height,
                width=job.width, num_inference_steps=job.steps)


def diffusers_edit(files, dtype, job, monkeypatch):
    """QwenImageEditPlusPipeline with the project's reference sizing: the prepared references, and the
    pipeline's reference area (its module constant VAE_IMAGE_SIZE) set to their area."""
    from diffusers import QwenImageEditPlusPipeline
    from diffusers.pipelines.qwenimage import pipeline_qwenimage_edit_plus as edit_plus

    (rw, rh), = {img.size for img in job.references}
    monkeypatch.setattr(edit_plus, "VAE_IMAGE_SIZE", rw * rh)
    monkeypatch.setattr(edit_plus, "CONDITION_IMAGE_SIZE", qwen.areas_for(files.snapshot).condition)
    pipe = QwenImageEditPlusPipeline.from_pretrained(files.snapshot, dtype=dtype, use_safetensors=True)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def qwen_edit_parity(tmp_path, monkeypatch, argv, atol=EXACT):
    resolved, latents, image, files, dtype = qwen_project(tmp_path, argv)
    job = resolved.job
    pipe = diffusers_edit(files, dtype, job, monkeypatch)
    if job.scheduler == "lightning":
        lightning_scheduler(pipe)
    diffusers_loras(pipe, job.loras)
    theirs_latents, theirs_image = run_diffusers_qwen(pipe, {**edit_call(job), "image": list(job.references)}, job.seed)
    assert_close(latents, theirs_latents, atol, "latents")
    assert_same_picture(image, theirs_image, atol)
    return resolved


FULL = ["--lightning", "off", "--steps", "3"]  # the full schedule (true CFG 4, negative " "), 3 steps for speed


def test_qwen_edit_one_reference_full_schedule_is_bit_identical(tmp_path, monkeypatch):
    a = picture(tmp_path / "a.png", (96, 64), (200, 40, 40))
    resolved = qwen_edit_parity(tmp_path, monkeypatch, ["-r", a, *FULL])
    assert resolved.job.true_cfg and resolved.job.negative_prompt == " " and resolved.mode == "edit"


def test_qwen_edit_lightning_matches_diffusers_with_modeltc_scheduler(tmp_path, monkeypatch):
    a = picture(tmp_path / "a.png", (96, 64), (200, 40, 40))
    resolved = qwen_edit_parity(tmp_path, monkeypatch, ["-r", a, "--lightning", "4"], LORA_ATOL)
    assert resolved.job.scheduler == "lightning" and [s.name for s in resolved.job.loras] == ["qwen-lightning"]


def test_qwen_composite_three_pictures_full_schedule_is_bit_identical(tmp_path, monkeypatch):
    pics = [picture(tmp_path / f"{i}.png", size, colour, i) for i, (size, colour) in
            enumerate([((96, 64), (200, 40, 40)), ((64, 64), (40, 200, 40)), ((50, 80), (40, 40, 200))])]
    resolved = qwen_edit_parity(tmp_path, monkeypatch, ["-r", pics[0], "-r", pics[1], "--style-image", pics[2],
                                                        *FULL])
    assert resolved.mode == "composite" and len(resolved.job.references) == 3


def test_qwen_pose_anypose_with_lightning_matches_diffusers(tmp_path, monkeypatch):
    a = picture(tmp_path / "a.png", (96, 64), (200, 40, 40))
    pose_photo = picture(tmp_path / "p.png", (64, 64), (90, 90, 160), 1)
    resolved = qwen_edit_parity(tmp_path, monkeypatch, ["-r", a, "--pose", pose_photo, "--pose-method", "anypose",
                                                        "--lightning", "4"], LORA_ATOL)
    assert [(s.name, s.strength) for s in resolved.job.loras] == [
        ("qwen-lightning", 1.0), ("qwen-anypose:base", 0.7), ("qwen-anypose:helper", 0.7)]
    assert resolved.job.prompt.startswith(qwen_jobs.POSE_INSTRUCTION["anypose"].format(pose=2))


def test_qwen_pose_native_full_schedule_is_bit_identical(tmp_path, monkeypatch):
    a = picture(tmp_path / "a.png", (96, 64), (200, 40, 40))
    resolved = qwen_edit_parity(tmp_path, monkeypatch, ["-r", a, "--pose", skeleton(tmp_path), "--pose-method",
                                                        "native", *FULL])
    assert resolved.job.prompt.startswith(qwen_jobs.POSE_INSTRUCTION["native"].format(pose=2))


def test_qwen_text_to_image_full_schedule_is_bit_identical(tmp_path):
    """QwenImagePipeline on the 2511 modules, given the Edit pipeline's encoding of the prompt with no picture
    (the project's choice: the Edit model's own template, not Qwen-Image's)."""
    from diffusers import QwenImageEditPlusPipeline, QwenImagePipeline

    resolved, latents, image, files, dtype = qwen_project(tmp_path, FULL)
    job = resolved.job
    edit = QwenImageEditPlusPipeline.from_pretrained(files.snapshot, dtype=dtype, use_safetensors=True)
    with torch.inference_mode():
        prompt, mask = edit.encode_prompt(job.prompt, image=None)
        negative, negative_mask = edit.encode_prompt(job.negative_prompt, image=None)
    pipe = QwenImagePipeline(scheduler=edit.scheduler, vae=edit.vae, text_encoder=edit.text_encoder,
                             tokenizer=edit.tokenizer, transformer=edit.transformer)
    pipe.set_progress_bar_config(disable=True)
    call = dict(prompt_embeds=prompt, prompt_embeds_mask=mask, negative_prompt_embeds=negative,
                negative_prompt_embeds_mask=negative_mask, true_cfg_scale=job.cfg, height=job.height,
                width=job.width, num_inference_steps=job.steps)
    theirs_latents, theirs_image = run_diffusers_qwen(pipe, call, job.seed)
    assert resolved.mode == "text-to-image" and job.true_cfg
    assert_close(latents, theirs_latents, EXACT, "latents")
    assert_same_picture(image, theirs_image, EXACT)


def test_qwen_controlnet_pose_full_schedule_is_bit_identical(tmp_path):
    from diffusers import QwenImageControlNetModel, QwenImageControlNetPipeline

    resolved, latents, image, files, dtype = qwen_project(tmp_path, ["--pose", skeleton(tmp_path), "--steps", "3"])
    job = resolved.job
    assert resolved.kind == "controlnet" and job.control_scale == qwen_jobs.CONTROLNET_SCALE
    controlnet = QwenImageControlNetModel.from_pretrained(files.controlnet, dtype=dtype, use_safetensors=True)
    pipe = QwenImageControlNetPipeline.from_pretrained(files.snapshot, controlnet=controlnet, dtype=dtype,
                                                       use_safetensors=True)
    pipe.set_progress_bar_config(disable=True)
    call = {**edit_call(job), "control_image": job.control_image,
            "controlnet_conditioning_scale": job.control_scale}
    theirs_latents, theirs_image = run_diffusers_qwen(pipe, call, job.seed)
    assert_close(latents, theirs_latents, EXACT, "latents")
    assert_same_picture(image, theirs_image, EXACT)
