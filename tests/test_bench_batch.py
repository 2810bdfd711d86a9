"""The benchmark's batch workloads (bench/batches.py): the scripts' own --batch on models installed on disk,
per item against pure generation, and each phase against the estimate's prediction."""

import json
import subprocess
import sys
from pathlib import Path

BENCH = Path(__file__).resolve().parents[1] / "bench"
sys.path[:0] = [str(BENCH), str(BENCH.parent / "scripts")]


def test_production_runs_its_phases_through_the_scripts_batch_from_installed_models(tmp_path):
    out, md, home = tmp_path / "r.json", tmp_path / "r.md", tmp_path / "models"
    proc = subprocess.run(
        [
            sys.executable,
            str(BENCH / "benchmark.py"),
            "--size",
            "tiny",
            "--device",
            "cpu",
            "--run",
            "production-3:plan10x32",
            "--batch-items",
            "1",
            "--from-disk",
            str(home),
            "--out",
            str(out),
            "--markdown",
            str(md),
        ],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    run = json.loads(out.read_text())["runs"][0]
    keyframes, clips = run["phases"]
    assert (keyframes["family"], clips["family"]) == ("qwen", "wan")
    # the 10 GB / 32 GB machine's weight forms, installed under the real repo ids where the scripts look
    assert [(i["family"], i["form"], i["written"]) for i in run["installs"]] == [
        ("qwen", "gguf-q8", True),
        ("wan", "gguf-q4", True),
    ]
    assert "weights gguf-q8" in keyframes["plan"] and "weights gguf-q4" in clips["plan"]
    assert clips["machine_plan"].startswith("plan group-offload")
    for phase in (keyframes, clips):  # each phase's host RAM beside the plan's prediction (models read from files)
        assert phase["peak_ram_anon_gib"] > 0 and phase["predicted_ram_gib"] > 0 and phase["predicted_vram_gib"] >= 0
    made = home / "production-production-3-plan10x32"
    from PIL import Image

    # the clip started on the keyframe qwen_image.py made (64x64; one written for a clips-only run is 32x32)
    assert Image.open(made / "keyframes" / "KF-1.png").size == (64, 64)
    assert (made / "clips" / "scene-1.mp4").is_file() and (made / "clips" / "scene-1.first.png").is_file()
    for phase in (keyframes, clips):
        (item,) = phase["per_item"]
        assert item["pure_s"] > 0 and item["load_s"] > 0, "the first item reads the denoiser(s)"
        assert abs(item["wall_s"] - item["pure_s"] - item["load_s"] - item["overhead_s"]) < 2e-3
        assert phase["total_s"] >= phase["items_s"] + phase["before_first_item_s"] - 1e-3
        # no GPU: the speed model predicts nothing, and says why
        assert phase["predicted"]["total_s"] is None and "NVIDIA" in phase["predicted"]["notes"][0]
    assert run["production"]["measured_s"] == round(keyframes["total_s"] + clips["total_s"], 2)
    assert "| plan10x32 | clips | 1 |" in md.read_text()


def test_measure_takes_the_load_out_of_the_first_item_and_the_swap_out_of_pure_generation():
    from batches import measure

    jobs = [
        {"job": 0, "seconds": {"load_experts": 2.0, "denoise": 10.0, "expert_swap": 1.0, "decode": 2.0}},
        {"job": 1, "seconds": {"load_experts": 1.0, "denoise": 10.0, "expert_swap": 1.0, "decode": 2.0}},
    ]
    marks = {0: (105.0, 119.0), 1: (119.0, 132.5)}  # the batch began at 100: 5 s before the first item
    m = measure(jobs, marks, 100.0, 33.0)
    first, second = m["per_item"]
    assert (first["pure_s"], first["load_s"], first["overhead_s"]) == (11.0, 2.0, 1.0)
    # a later item's expert reads (one expert in RAM) are its own overhead, not the batch's load
    assert (second["load_s"], second["overhead_s"], second["ratio"]) == (0.0, 2.5, round(13.5 / 11.0, 3))
    assert (m["load_text_s"], m["items_s"], m["item_ratio_median"]) == (7.0, 25.5, second["ratio"])


def test_predict_phase_is_the_estimates_phase_load_prompts_and_items():
    from producer.facts import hardware
    from producer.sizing import estimate
    from producer.workflow import forecast

    hw = hardware.from_sizes(80, 128, name="NVIDIA H100 80GB HBM3")
    items = [estimate.Item("wan", 832, 480, 4, False, frames=81)] * 3
    p = forecast.predict_phase("wan", items, hw, {"offload": "auto", "weights": "gguf-q4"})
    assert p["plan"].weights == "gguf-q4" and len(p["items"]) == 3
    assert p["seconds"] == round(p["load_seconds"] + p["text_seconds"] + sum(i.seconds for i in p["items"]), 1)
    assert p["text_seconds"] > 0 and p["items"][0].seconds > 1


def test_the_scripts_stage_clock_synchronises_the_gpu_at_both_ends_of_a_stage_while_measured(monkeypatch):
    import batches
    from producer.cli import Stopwatch

    calls = []
    monkeypatch.setattr(batches, "_sync", lambda device: calls.append(device))
    original = Stopwatch.stage
    with batches.synced_stages("cuda"):
        watch = Stopwatch()
        with watch.stage("denoise"):
            calls.append("work")
    assert calls == ["cuda", "work", "cuda"] and "denoise" in watch.seconds
    assert Stopwatch.stage is original, "the scripts' clock is left as it was"
