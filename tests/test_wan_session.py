"""producer.engines.wan.wan.WanSession on the stand-ins: the distill schedule, the split between the experts, one
expert in RAM at a time, the benchmark's seam (prebuilt components), fp8 storage and decode retries."""

import logging
from dataclasses import replace

import numpy as np
import pytest
import torch
from diffusers import FlowMatchEulerDiscreteScheduler
from PIL import Image
from producer.engines.loras import lora
from producer.engines.wan import wan
from producer.engines.wan.wan_load import components_snapshot, locate_files, plan_for
from producer.facts import hardware, registry
from producer.sizing import memory
from producer.testing import standin_models


@pytest.fixture
def setup(standin_hf_home):
    """The CPU plan for a 64x64x9 clip and the installed stand-in files."""
    snapshot = components_snapshot()
    plan = plan_for(hardware.probe(device="cpu"), snapshot, [memory.wan_workload(64, 64, 9)], "auto", "auto")
    return plan, locate_files(plan.weights)


def job(sampling=registry.WAN.distilled, seed=11, **kw):
    rng = np.random.default_rng(0)
    image = Image.fromarray((rng.random((64, 64, 3)) * 255).astype(np.uint8))
    return wan.ClipJob(image=image, prompt="a cat walks", width=64, height=64, frames=9, sampling=sampling,
                       seed=seed, **kw)


@pytest.fixture
def producer_log(caplog, monkeypatch):
    """caplog for the producer logger, which a script run earlier in this process may have detached."""
    monkeypatch.setattr(logging.getLogger("producer"), "propagate", True)
    caplog.set_level(logging.INFO, logger="producer")
    return caplog


def distill_specs():
    return lora.registry_lora_specs("wan-lightning")


def test_distill_scheduler_gives_the_timesteps_the_loras_were_trained_with():
    ours = wan.DistillEulerScheduler(shift=5.0)
    ours.set_timesteps(4)
    assert ours.timesteps.tolist() == pytest.approx([1000.0, 937.5, 833.333, 625.0], abs=1e-3)
    stock = FlowMatchEulerDiscreteScheduler(shift=5.0)
    stock.set_timesteps(4)
    assert stock.timesteps.tolist() == pytest.approx([1000.0, 909.7, 717.4, 24.0], abs=1.0)  # why the subclass exists
    ours.set_timesteps(sigmas=[1.0, 0.5])  # explicit sigmas are still diffusers' business
    assert ours.timesteps.tolist() == pytest.approx([1000.0, 5 * 0.5 / (1 + 4 * 0.5) * 1000], abs=1e-3)


def test_the_full_schedule_splits_at_the_boundary(setup):
    plan, files = setup
    session = wan.WanSession.from_files(files, plan, progress=False)
    full = replace(registry.WAN.full, steps=8)
    clip = session.generate(job(full, negative_prompt="blurry"))
    high, low = clip.experts["transformer"], clip.experts["transformer_2"]
    scheduler = wan.make_scheduler(full, session._scheduler_config)
    scheduler.set_timesteps(8)
    expected_high = sum(1 for t in scheduler.timesteps if t >= 900)
    assert (high.steps, low.steps) == (expected_high, 8 - expected_high) and 0 < expected_high < 8
    assert min(high.timesteps) >= 900 > max(low.timesteps)
    assert (high.forwards, low.forwards) == (2 * high.steps, 2 * low.steps)  # guidance 3.5: two passes a step


def test_one_expert_in_ram_gives_the_same_clip_as_both(setup, producer_log):
    plan, files = setup
    both = wan.WanSession.from_files(files, plan, lora_specs=distill_specs(), progress=False)
    one = wan.WanSession.from_files(files, replace(plan, experts_in_ram=1), lora_specs=distill_specs(),
                                    progress=False)
    one.encode([job()])
    assert one.pipe.text_encoder is None and one.loaded_experts() == []  # encoded before any expert was read
    reference = both.generate(job())
    producer_log.clear()
    first = one.generate(job())
    assert one.loaded_experts() == ["transformer_2"]  # the high-noise expert was freed at the boundary
    second = one.generate(job())  # and read again for the next clip
    for clip in (first, second):
        np.testing.assert_array_equal(clip.frames, reference.frames)
        assert {c: e.steps for c, e in clip.experts.items()} == {"transformer": 2, "transformer_2": 2}
        assert clip.seconds["expert_swap"] > 0
    assert set(one.lora_reports) == {"transformer", "transformer_2"}
    assert producer_log.text.count("LoRA wan-lightning:low") == 1  # reloaded for the second clip, reported once


def test_a_batch_made_expert_by_expert_gives_the_same_clips_with_two_reads(setup):
    """One expert in RAM and the clips known in advance: the high-noise halves of the group run first, then
    each clip's low-noise half; the same clips as both experts in RAM (a multistep UniPC clip with CFG among
    them, whose scheduler history crosses the split), and each expert read once for the three clips."""
    plan, files = setup
    both = wan.WanSession.from_files(files, plan, progress=False)
    one = wan.WanSession.from_files(files, replace(plan, experts_in_ram=1), progress=False)
    full = replace(registry.WAN.full, steps=6)
    jobs = [job(seed=11), job(full, seed=12, negative_prompt="blurry"), job(seed=13)]
    jobs[2] = replace(jobs[2], last_image=jobs[1].image)  # first-last-frame mode too
    both.encode(jobs)
    one.encode(jobs)
    reads = []
    get = one._experts.get
    one._experts.get = lambda component, **kw: reads.append(component) or get(component, **kw)
    one.make_in_order(jobs)
    clips = [one.generate(j) for j in jobs]
    assert reads == ["transformer", "transformer_2"]
    for j, clip in zip(jobs, clips):
        reference = both.generate(j)
        np.testing.assert_array_equal(clip.frames, reference.frames)
        assert {c: (e.steps, e.forwards, e.timesteps) for c, e in clip.experts.items()} == \
            {c: (e.steps, e.forwards, e.timesteps) for c, e in reference.experts.items()}
    assert clips[0].seconds["ahead"] > 0 and "ahead" not in clips[1].seconds  # the later halves ran with the first
    assert not one._halfway


def test_a_clip_made_out_of_order_or_without_a_boundary_is_made_whole(setup):
    plan, files = setup
    one = wan.WanSession.from_files(files, replace(plan, experts_in_ram=1), progress=False)
    single_step = job(replace(registry.WAN.distilled, steps=1), seed=13)  # high-noise steps only: no split
    jobs = [job(seed=11), single_step, job(seed=12)]
    one.encode(jobs)
    one.make_in_order(jobs)
    first = one.generate(jobs[0])
    assert len(one._halfway) == 1  # the third clip's half ran with the first, not the single step's
    clip = one.generate(single_step)
    assert clip.experts["transformer"].steps == 1 and clip.experts["transformer_2"].steps == 0
    assert first.seconds["ahead"] > 0 and "ahead" not in clip.seconds
    jobs = [job(seed=11), job(seed=12)]
    one.encode(jobs)
    one.make_in_order(jobs)
    stranger = job(seed=14)  # not announced: made on its own, as before
    one.encode([stranger])
    clip = one.generate(stranger)
    assert clip.seconds["expert_swap"] > 0 and "ahead" not in clip.seconds and not one._halfway


def test_an_expert_let_go_at_the_boundary_holds_no_memory_though_the_loop_still_holds_it(setup):
    """diffusers' Wan loop keeps `current_model` (the high-noise expert) until its next step: its weights must
    be freed at the swap all the same, or one-expert-in-RAM plans hold both experts at once (measured on an
    H100: 27.3 GiB of anonymous memory against 14.6 planned, bench/results/2026-12-06-h100/g4.md)."""
    plan, files = setup
    one = wan.WanSession.from_files(files, replace(plan, experts_in_ram=1), progress=False)
    seen = {}
    swap = one._swap_at_boundary

    def watching(watch):
        callback = swap(watch)

        def after_swap(pipe, i, t, kwargs):
            high = pipe.transformer
            out = callback(pipe, i, t, kwargs)
            if pipe.transformer is None and "high" not in seen:
                seen["high"] = sum(p.numel() for p in list(high.parameters()) + list(high.buffers()))
            return out

        return after_swap

    one._swap_at_boundary = watching
    one.generate(job())
    assert seen == {"high": 0}


def test_with_one_expert_in_ram_a_released_experts_pinned_chunks_wait_for_the_other(setup, monkeypatch):
    """The expert read next has the same chunk sizes, so PyTorch's pinned cache hands the same locked memory
    back; the text encoder's chunks, which nothing reuses, go back to the system."""
    from producer.sizing import offload

    plan, files = setup
    released, release = [], offload.release
    monkeypatch.setattr(offload, "release", lambda pipe, name, keep_pinned=False: released.append(
        (name, keep_pinned)) or release(pipe, name, keep_pinned))
    one = wan.WanSession.from_files(files, replace(plan, experts_in_ram=1), progress=False)
    one.generate(job())
    one.generate(job())
    assert all(not keep for name, keep in released if not name.startswith("transformer"))
    experts = [keep for name, keep in released if name.startswith("transformer")]
    assert experts and all(experts)
    both = wan.WanSession.from_files(files, plan, progress=False)
    released.clear()
    both.generate(job())
    assert all(not keep for _, keep in released)


def test_prebuilt_components_run_through_the_same_code(setup):
    plan, files = setup
    loaded = wan.WanSession.from_files(files, plan, progress=False).generate(job())
    prebuilt = wan.WanSession.from_components(standin_models.build_wan_pipeline(seed=0), plan, progress=False)
    clip = prebuilt.generate(job())
    np.testing.assert_allclose(clip.frames, loaded.frames, atol=1e-5)  # float rounding only
    assert set(clip.seconds) >= {"load_experts", "denoise", "decode", "high_expert", "low_expert"}
    assert clip.experts["transformer"].steps == clip.experts["transformer_2"].steps == 2
    assert {"encode", "free_text_encoder"} <= set(prebuilt.seconds)  # the session's once-a-run stages


def test_fp8_storage_is_applied_to_each_expert_after_its_lora(setup):
    plan, files = setup
    fp8 = plan_for(hardware.probe(device="cpu"), files.snapshot, [memory.wan_workload(64, 64, 9)], "auto", "fp8")
    assert fp8.weights == "fp8" and fp8.components["transformer"].weights == "fp8"
    session = wan.WanSession.from_files(locate_files("fp8"), fp8, lora_specs=distill_specs(), progress=False)
    clip = session.generate(job())
    for component in wan.DENOISERS:
        expert = getattr(session.pipe, component)
        assert expert.blocks[0].attn1.to_q.weight.dtype == torch.float8_e4m3fn
        assert session.lora_reports[component][0]["experts"][0]["fused"]
    assert np.isfinite(clip.frames).all() and clip.frames.shape == (9, 64, 64, 3)


def test_out_of_memory_at_decode_keeps_the_latents_and_retries(setup, monkeypatch, producer_log):
    plan, files = setup
    session = wan.WanSession.from_files(files, plan, progress=False)
    vae = session.pipe.vae
    real_decode = vae.decode
    calls = []

    def decode(z, *args, **kwargs):
        calls.append((vae.use_tiling, z.device.type))
        if len(calls) <= failures:
            raise torch.OutOfMemoryError("CUDA out of memory")
        return real_decode(z, *args, **kwargs)

    monkeypatch.setattr(vae, "decode", decode)
    failures = 1
    clip = session.generate(job())
    assert clip.decode == "tiled" and calls == [(False, "cpu"), (True, "cpu")]
    assert "retrying with VAE tiling" in producer_log.text
    calls.clear()
    vae.disable_tiling()
    failures = 2
    frames, how = session.decode(clip.latents)
    assert how == "tiled on the CPU" and len(calls) == 3 and frames.shape == clip.frames.shape


def test_a_prompt_longer_than_the_text_encoder_reads_is_refused(tiny_wan_pipeline):
    from producer import cli
    from producer.engines.wan import wan
    from producer.facts import hardware, registry
    from producer.sizing import memory

    plan = memory.plan_memory(hardware.from_sizes(0, 16), memory.WAN_FOOTPRINT, memory.wan_workload(64, 64, 9))
    session = wan.WanSession.from_components(tiny_wan_pipeline, plan, "cpu", progress=False)
    job = wan.ClipJob(image=None, prompt="wave " * 600, width=64, height=64, frames=9,
                      sampling=registry.WAN.distilled, seed=0)
    with pytest.raises(cli.CliError, match="at most 512"):
        session.encode([job])
    assert session.pipe.text_encoder is not None, "nothing was encoded or freed"
