"""The Qwen session on the tiny stand-in pipeline, without the script: `QwenSession.from_components` (the
benchmark's entry), its seconds per stage, and what it does when memory runs out (qwen_image.py's own runs are
in test_qwen_image.py)."""

import numpy as np
import pytest
import torch
from PIL import Image
from producer.cli import CliError, ExitCode
from producer.engines.qwen import qwen
from producer.facts import hardware
from producer.sizing import memory


def _tiny_footprint():
    from dataclasses import replace

    return replace(memory.QWEN_FOOTPRINT, denoiser_params=10**6, text_encoder_params=10**6, vae_params=10**6)


def cpu_plan():
    return memory.plan_memory(hardware.from_sizes(0, 64), _tiny_footprint(), memory.qwen_workload(64, 64, 1))


def job(seed=3, refs=1):
    ref = qwen.prepare_reference(Image.new("RGB", (80, 64), (180, 40, 40)), 64, 64, "crop", 64 * 64)
    return qwen.QwenJob(prompt="a fox", width=64, height=64, steps=2, cfg=1.0, seed=seed, references=[ref] * refs)


def test_from_components_generates_with_seconds_per_stage(tiny_qwen_edit_pipeline):
    session = qwen.QwenSession.from_components(tiny_qwen_edit_pipeline, cpu_plan(),
                                               areas=qwen.Areas(64 * 64, 32 * 32))
    first, again = session.generate(job()), session.generate(job())
    assert first.image.size == (64, 64) and {"text_encode", "denoise", "decode"} <= set(first.seconds)
    assert np.array_equal(np.asarray(first.image), np.asarray(again.image))
    assert session.pipe.text_encoder is not None  # the benchmark keeps its encoder unless asked


def test_decode_out_of_memory_retries_tiled_with_the_same_latents(tiny_qwen_edit_pipeline, monkeypatch):
    session = qwen.QwenSession.from_components(tiny_qwen_edit_pipeline, cpu_plan(),
                                               areas=qwen.Areas(64 * 64, 32 * 32))
    reference = session.generate(job(refs=0)).image
    vae, calls = session.pipe.vae, []
    original = vae.decode

    def decode_once_oom(*a, **k):
        calls.append(vae.use_tiling)
        if len(calls) == 1:
            raise torch.OutOfMemoryError("CUDA out of memory (simulated)")
        return original(*a, **k)

    monkeypatch.setattr(vae, "decode", decode_once_oom)
    made = session.generate(job(refs=0))
    assert made.decode_tiled and calls == [False, True] and session.decode_retiled
    assert np.abs(np.asarray(made.image, np.int16) - np.asarray(reference, np.int16)).mean() < 8


def test_denoise_out_of_memory_names_the_next_plan(tiny_qwen_edit_pipeline, monkeypatch):
    plan = memory.plan_memory(hardware.from_sizes(24, 64), _tiny_footprint(), memory.qwen_workload(64, 64, 0))
    session = qwen.QwenSession.from_components(tiny_qwen_edit_pipeline, plan, device="cpu")
    monkeypatch.setattr(session, "_ensure_placed", lambda: None)  # keep the tiny model on the CPU

    def oom(*a, **k):
        raise torch.OutOfMemoryError("CUDA out of memory (simulated)")

    monkeypatch.setattr(tiny_qwen_edit_pipeline.transformer, "forward", oom)
    with pytest.raises(CliError) as err:
        session.generate(job(refs=0))
    assert err.value.code == ExitCode.OUT_OF_MEMORY and f"--offload {memory.next_offload(plan)}" in err.value.fix


def test_a_streamed_plan_with_resident_blocks_makes_the_same_image(tiny_qwen_edit_pipeline):
    """The session applies a group-offload plan that keeps one of the two blocks resident (on a CPU: no streams,
    the same hooks): the resident block is never hooked, the other streams, the image is the one of the CPU plan."""
    from dataclasses import replace

    from diffusers.hooks import HookRegistry

    reference = qwen.QwenSession.from_components(tiny_qwen_edit_pipeline, cpu_plan(),
                                                 areas=qwen.Areas(64 * 64, 32 * 32)).generate(job()).image
    streamed = memory.plan_memory(hardware.from_sizes(10, 64), _tiny_footprint(), memory.qwen_workload(64, 64, 1),
                                  offload="group")
    plan = replace(streamed, device="cpu", dtype="float32", resident_blocks=1, blocks=2)
    assert plan.components["transformer"].placement == "group_offload"
    session = qwen.QwenSession.from_components(tiny_qwen_edit_pipeline, plan, areas=qwen.Areas(64 * 64, 32 * 32))
    image = session.generate(job()).image
    hooked = [HookRegistry.check_if_exists_or_initialize(b).get_hook("group_offloading") is not None
              for b in session.pipe.transformer.transformer_blocks]
    assert hooked == [False, True]
    assert np.array_equal(np.asarray(image), np.asarray(reference))
