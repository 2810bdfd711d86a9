"""The speed model and the estimates built on it: the data file regenerates from the committed benchmark
results; figures carry to other GPUs by their TFLOP/s, bandwidth and host link; `production.py estimate`
counts what remains, its disk and memory, and says what would make a plan fit; setup --check quotes one
image and one clip; a batch reports its measured time against the prediction."""

import contextlib
import io
import json
import shutil
import sys
from dataclasses import replace
from pathlib import Path

import pytest
from PIL import Image
from producer.commands import production, setup_diffusers
from producer.commands.demo import SAMPLE
from producer.facts import hardware
from producer.facts.hardware import GiB
from producer.sizing import estimate, memory
from producer.workflow import forecast

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "bench"))
import speedmodel

H200 = hardware.from_sizes(141, 128, name="NVIDIA H200", host_link=(5, 16))
RTX4090 = hardware.from_sizes(24, 64, name="NVIDIA GeForce RTX 4090")


def run_production(argv: list[str]) -> tuple[int, dict]:
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        code = production.main([*argv, "--json"])
    return code, json.loads(out.getvalue().strip().splitlines()[-1])


@pytest.fixture
def sample(tmp_path: Path) -> Path:
    root = tmp_path / "film"
    shutil.copytree(SAMPLE, root)
    return root


def machine(monkeypatch, hw: hardware.Hardware) -> None:
    monkeypatch.setattr(hardware, "probe", lambda *a, **k: hw)


# ---------------------------------------------------------------- the data file


def test_the_data_file_is_what_the_benchmark_results_give():
    """Regenerated from the sources it lists, the committed speed model is byte for byte the same."""
    committed = estimate.SPEED_MODEL.read_text(encoding="utf-8")
    sources = [ROOT / s for s in json.loads(committed)["sources"] if s not in (speedmodel.WRITING, speedmodel.LORA_FOLD, speedmodel.REFOLD)]
    assert speedmodel.dumps(speedmodel.build(sources)) == committed


def test_later_results_replace_earlier_figures_of_the_same_plan(tmp_path):
    model = estimate.speed_model()
    cap10 = [
        e
        for e in model["entries"]
        if (e["family"], e["plan"], e["weights"], e["gpu"]) == ("wan", "group-offload", "bf16", "NVIDIA H200")
    ]
    assert [e["source"] for e in cap10] == ["bench/results/2026-11-29-h200-second/c.json"]  # the scripts' code now
    assert {e["gpu"] for e in model["entries"]} == {"NVIDIA H200", "NVIDIA H100 80GB HBM3"}
    assert 0 < model["bandwidth_share"]["forward"] < model["bandwidth_share"]["decode"] < 1


def test_compare_prints_predicted_against_measured_for_a_run(capsys):
    assert speedmodel.main(["--compare", str(ROOT / "bench/results/2026-12-05-h100/g1.json")]) == 0
    lines = capsys.readouterr().out.splitlines()
    plain = next(line for line in lines if line.startswith("wan-480p-4") and " plain " in line)
    assert "measured 17.34 s" in plain and "error" in plain


# ---------------------------------------------------------------- carrying figures to another machine


def wan_480p(steps=4, cfg=False, frames=81) -> estimate.Item:
    return estimate.Item("wan", 832, 480, steps, cfg, frames=frames)


def plan_on(hw, offload="auto", weights="auto", work=None):
    return memory.plan_memory(hw, memory.WAN_FOOTPRINT, work or memory.wan_workload(832, 480, 81), offload, weights)


def test_an_expert_read_from_disk_is_the_disks_time_not_the_clips():
    """The 8 GB / 16 GB plan reads each expert at its turn: those seconds are left out of the clip's other
    time (the estimate adds them at the disk's speed), and a comparison predicts them at the speed the run
    measured on its own disk."""
    data = json.loads((ROOT / "bench/results/2026-12-07-h100-late/e.json").read_text())
    run = next(r for r in data["runs"] if (r["workload"], r["config"]) == ("wan-480p-4", "plan8x16"))
    sec = run["seconds"]
    e = speedmodel.entry_of(run, data["environment"]["gpu"], "e")
    besides = sec["total"] - sec["high_expert"] - sec["low_expert"] - sec["decode"]
    assert e["other_s"] == pytest.approx(besides - sec["load_experts"] - sec["expert_swap"], abs=1e-3)
    assert e["other_s"] < 2.0 < besides
    model = estimate.speed_model()
    here = speedmodel._on_this_disk(model, run)["assumptions"]["disk_read_gb_s"]
    assert here == run["disk_read"]["gb_per_s"] != model["assumptions"]["disk_read_gb_s"]
    (row,) = [r for r in speedmodel.compare(data, model) if (r["workload"], r["config"]) == ("wan-480p-4", "plan8x16")]
    assert abs(row["error"]) < 0.10
    run.pop("disk_read")  # a run that did not measure its disk is predicted at the assumed 1 GB/s: slower here
    (assumed,) = [r for r in speedmodel.compare(data, model) if (r["workload"], r["config"]) == ("wan-480p-4", "plan8x16")]
    assert assumed["predicted_s"] > row["predicted_s"] + 10 and assumed["error"] < -0.30


def test_an_expert_read_is_charged_at_the_slower_of_the_disk_and_the_pace_the_scripts_read_at():
    """With one expert in RAM a clip reads both experts. From page-cached files (a one-reader read at >= 3 GB/s)
    those reads show the scripts' own pace: 1.63 GB/s on the H200 when each read locked its memory afresh and
    copied from the map (2026-12-07-h200-night/s.json), 6.84 GB/s on an H100 once the chunks were kept for the
    next expert and filled by several readers (2026-12-07-h100-late/e.json). The model keeps the last, and a disk
    slower than it is what limits the read; a run whose drive limited the read (1.65 GB/s) gives no pace."""
    night = json.loads((ROOT / "bench/results/2026-12-07-h200-night/s.json").read_text())["runs"]
    assert speedmodel.expert_read_gb_s(night) == pytest.approx(19.323 / (6.202 + 5.658), abs=0.01)
    late = json.loads((ROOT / "bench/results/2026-12-07-h100-late/e.json").read_text())
    assert speedmodel.expert_read_gb_s(late["runs"]) == pytest.approx(19.323 / (1.34 + 1.486), abs=0.01)
    model = estimate.speed_model()
    assert model["assumptions"]["expert_read_gb_s"] == 6.84
    slow = json.loads((ROOT / "bench/results/2026-12-07-h100/f.json").read_text())["runs"]
    assert speedmodel.expert_read_gb_s(slow) is None
    plan = plan_on(hardware.from_sizes(8, 16, name="NVIDIA H100 SXM"))
    h100 = estimate.gpu_spec("NVIDIA H100 SXM")
    on_disk = [estimate.predict_item(wan_480p(), plan, h100, model={**model, "assumptions": {
        **model["assumptions"], "disk_read_gb_s": disk}}).other_s for disk in (0.5, 6.84, 10.0)]
    assert on_disk[0] > on_disk[1] == on_disk[2]  # above 6.84 GB/s a faster disk no longer helps


def test_with_one_expert_in_ram_each_read_folds_the_lora_again_and_the_estimate_counts_it():
    """A GGUF expert read at its turn gets its LoRA again (its factors are not kept: RAM holds one expert). The pace
    comes from a load of both experts with a full-size LoRA (H100: 3.70 s for 2 x 311 M factors)."""
    import loras

    late = json.loads((ROOT / speedmodel.LORA_FOLD).read_text())["runs"]
    rate = speedmodel.lora_fold_mparams_s(late)
    assert rate == pytest.approx(2 * loras.plan_params("wan", "plan10x32-lora") / 1e6 / 3.696, abs=0.1)
    model = estimate.speed_model()
    assert model["assumptions"]["lora_fold_mparams_s"] == rate
    hw, h100 = hardware.from_sizes(8, 16, name="NVIDIA H100 SXM"), estimate.gpu_spec("NVIDIA H100 SXM")
    work = memory.wan_workload(832, 480, 81)
    bare = memory.plan_memory(hw, memory.WAN_FOOTPRINT, work, "auto", "auto")
    lora = memory.plan_memory(hw, replace(memory.WAN_FOOTPRINT, adapter_params=343_500_000), work, "auto", "auto")
    assert lora.experts_in_ram == 1 and lora.weights.startswith("gguf") and lora.adapter_params == 343_500_000
    one, with_lora = (estimate.predict_item(wan_480p(), p, h100, model=model) for p in (bare, lora))
    assert with_lora.seconds - one.seconds == pytest.approx(2 * 343.5 / rate, abs=0.02)
    assert any("LoRA loaded the whole way" in n for n in with_lora.notes)
    # a batch reads once a group of clips, on the group's first clip; from the second group on, each expert's
    # LoRA is folded again without peft (lora_refold), in refold_share of the time
    def extra(position):
        return (estimate.predict_item(wan_480p(), lora, h100, items_in_run=20, model=model, position=position).seconds
                - estimate.predict_item(wan_480p(), bare, h100, items_in_run=20, model=model, position=position).seconds)

    share = model["assumptions"]["refold_share"]
    assert 0 < share < 1 and extra(1) == pytest.approx(0.0, abs=0.01)
    assert extra(0) == pytest.approx(2 * 343.5 / rate, abs=0.02)
    assert extra(memory.CLIPS_PER_EXPERT_READ) == pytest.approx(2 * 343.5 / rate * share, abs=0.02)
    both = memory.plan_memory(hardware.from_sizes(10, 32, name="NVIDIA H100 SXM"),
                              replace(memory.WAN_FOOTPRINT, adapter_params=343_500_000), work, "auto", "auto")
    assert both.experts_in_ram == 2 and not any("LoRA" in n for n in estimate.predict_item(
        wan_480p(), both, h100, model=model).notes)


def test_a_batch_the_model_was_not_built_from_is_predicted_within_10_percent():
    """A real --batch of 3 clips on the 8 GB / 16 GB plan (H100, experts read from disk, expert by expert) is not
    among the data's sources: the model predicts it from the single clips, on that run's machine."""
    batch = "bench/results/2026-12-07-h100-late/b.json"
    model = estimate.speed_model()
    assert batch not in model["sources"]
    (row,) = speedmodel.compare_production(json.loads((ROOT / batch).read_text()), model)
    assert row["config"] == "plan8x16:clips" and abs(row["error"]) <= 0.10, row


def test_an_older_production_is_slower_than_todays_code_is_predicted():
    """production-3 under the 10 GB plan (H100, 2026-12-06) ran before the host ran ahead of streamed blocks:
    its Qwen phase is still predicted within 20%, its clips now take less than it measured."""
    p3b = "bench/results/2026-12-06-h100/p3b.json"
    model = estimate.speed_model()
    assert p3b not in model["sources"]
    rows = speedmodel.compare_production(json.loads((ROOT / p3b).read_text()), model)
    assert [r["config"] for r in rows] == ["plan10x32:keyframes", "plan10x32:clips"]
    assert abs(rows[0]["error"]) <= 0.20 and rows[1]["error"] > 0.10, rows


def test_a_forms_resident_forward_is_fitted_from_its_streamed_shares():
    def run(share, forward, config):
        return {"gpu": "G", "family": "qwen", "plan": "group-offload", "weights": "gguf-q8", "levers": [],
                "tokens": 8704, "cfg": False, "streamed_share": share, "forward_s": forward, "decode_s": 0.1,
                "other_s": 0.0, "cold_extra_s": 5.0, "source": "r.json", "config": config}

    (fit,) = speedmodel.fit_resident_forms([run(1.0, 1.0, "a"), run(0.5, 0.8, "b"), run(0.25, 0.7, "c")])
    assert fit["plan"] == "resident" and fit["forward_s"] == pytest.approx(0.6) and "streamed_share" not in fit
    assert speedmodel.fit_resident_forms([run(1.0, 1.0, "a"), run(0.9, 0.95, "b")]) == []  # too close to tell
    assert speedmodel.fit_resident_forms([run(1.0, 1.0, "a")]) == []


def test_loading_is_no_faster_than_the_disk_where_ram_cannot_cache_the_files():
    model = estimate.speed_model()
    hw = hardware.from_sizes(80, 128, name="NVIDIA H100 80GB HBM3")
    plan = forecast._plan("wan", [estimate.Item("wan", 832, 480, 4, False, frames=81)], hw, {"offload": "auto", "weights": "gguf-q4"})
    size = estimate.read_bytes("wan", "gguf-q4") / 1e9
    cached = estimate.read_seconds("wan", plan, model, ram_total=hw.ram_total)
    cold = estimate.read_seconds("wan", plan, model, ram_total=plan.peak_ram + int(size * 1e9) - 1)
    assert cached == pytest.approx(size / model["assumptions"]["load_gb_s"]["wan"], abs=0.1)
    assert cold == pytest.approx(size / model["assumptions"]["disk_read_gb_s"], abs=0.1) and cold > cached
    assert "page cache" in estimate.read_rate("wan", plan, model, hw.ram_total)[1]
    assert "assumed disk speed" in estimate.read_rate("wan", plan, model, plan.peak_ram)[1]
    phase = forecast.predict_phase("wan", [estimate.Item("wan", 832, 480, 4, False, frames=81)], hw,
                                   {"offload": "auto", "weights": "gguf-q4"}, model)
    assert "page cache" in phase["load_basis"]  # what the estimate's JSON says of its loading figure


def test_one_expert_in_ram_reads_both_experts_once_a_group_of_clips():
    """A batch on a 16 GB machine makes its clips expert by expert (engines/wan/halfway.py): the two reads
    are shared by up to memory.CLIPS_PER_EXPERT_READ clips, a single clip pays both."""
    h100 = estimate.gpu_spec("NVIDIA H100 80GB HBM3")
    plan = plan_on(hardware.from_sizes(10, 16, name=h100.name))
    assert plan.experts_in_ram == 1
    a = estimate.speed_model()["assumptions"]
    both = 2 * memory.WAN_FOOTPRINT.denoiser_params * memory.BYTES_PER_PARAM[plan.weights] / 1e9 / a["disk_read_gb_s"]
    other = {n: estimate.predict_item(wan_480p(), plan, h100, items_in_run=n).other_s
             - estimate._writing(a, "wan", n) for n in (1, 8, 9)}
    assert other[1] - other[8] == pytest.approx(both * 7 / 8, abs=0.02)
    assert other[9] - other[8] == pytest.approx(both * (2 / 9 - 1 / 8), abs=0.02)
    assert "every group of up to 8 clips" in " ".join(estimate.predict_item(wan_480p(), plan, h100,
                                                                             items_in_run=3).notes)
    # ... so loading reads only the text encoder and the VAE: the experts are not counted twice
    both_in_ram = plan_on(hardware.from_sizes(10, 32, name=h100.name))
    assert both_in_ram.experts_in_ram == 2 and estimate.loads_denoisers(both_in_ram)
    assert not estimate.loads_denoisers(plan)
    rest = estimate.read_bytes("wan", plan.weights, denoisers=False)
    assert estimate.read_bytes("wan", plan.weights) - rest == pytest.approx(both * 1e9 * a["disk_read_gb_s"], rel=1e-6)
    assert estimate.read_seconds("wan", plan, ram_total=plan.peak_ram) == pytest.approx(
        rest / 1e9 / a["disk_read_gb_s"], abs=0.05)


def test_a_wan_batch_item_pays_only_what_stays_in_the_main_thread_of_its_files():
    """runs/behind.py: a clip's colour match and files are made while the next clip generates; the batch waits
    once, for the last clip's. A single clip, and Qwen's pictures, pay their files in full."""
    a = estimate.speed_model()["assumptions"]
    full, behind = a["write_s"]["wan"], a["written_behind_s"]["wan"]
    assert behind < full / 10  # measured (p3a): 0.06 s of 2.3 s a clip stays in the main thread
    assert estimate._writing(a, "wan", 1) == full
    assert estimate._writing(a, "wan", 4) == pytest.approx(behind + (full - behind) / 4)
    assert estimate._writing(a, "qwen", 4) == a["write_s"]["qwen"]
    h100 = estimate.gpu_spec("NVIDIA H100 80GB HBM3")
    plan = plan_on(hardware.from_sizes(80, 128, name=h100.name))
    single, batch = (estimate.predict_item(wan_480p(), plan, h100, items_in_run=n).seconds for n in (1, 4))
    assert single - batch == pytest.approx((full - behind) * 3 / 4, abs=0.02)


def test_on_the_card_it_was_measured_on_the_prediction_is_the_measurement():
    p = estimate.predict_item(wan_480p(), plan_on(H200), estimate.gpu_spec("NVIDIA H200"), (5, 16))
    write = estimate.speed_model()["assumptions"]["write_s"]["wan"]
    assert p.seconds - write == pytest.approx(16.519, abs=0.02)  # bench/results/2026-12-07-h200-night/cd.json, plain


def test_a_card_of_half_the_compute_and_bandwidth_takes_twice_as_long():
    h200 = estimate.gpu_spec("NVIDIA H200")
    half = estimate.Gpu("half", h200.bf16_tflops / 2, h200.gb_per_s / 2, (5, 16), True, "test")
    plan, model = plan_on(H200), estimate.speed_model()
    measured_on_h200 = {**model, "entries": [e for e in model["entries"] if e["gpu"] == h200.name]}  # carried from it
    fast, slow = (estimate.predict_item(wan_480p(), plan, g, (5, 16), model=measured_on_h200) for g in (h200, half))
    assert slow.denoise_s == pytest.approx(2 * fast.denoise_s, rel=1e-3)
    assert slow.decode_s == pytest.approx(2 * fast.decode_s, rel=1e-2)


def test_bandwidth_alone_moves_each_stage_by_its_fitted_share():
    h200 = estimate.gpu_spec("NVIDIA H200")
    narrow = estimate.Gpu("narrow", h200.bf16_tflops, h200.gb_per_s / 2, (5, 16), True, "test")
    model = estimate.speed_model()
    assert estimate.carry(model, "forward", h200, narrow) == pytest.approx(1 + model["bandwidth_share"]["forward"])


def test_steps_cfg_and_size_scale_the_forwards():
    plan, gpu = plan_on(H200), estimate.gpu_spec("NVIDIA H200")
    four = estimate.predict_item(wan_480p(), plan, gpu)
    forty_cfg = estimate.predict_item(wan_480p(40, True), plan, gpu)
    assert forty_cfg.denoise_s == pytest.approx(20 * four.denoise_s, rel=0.02)  # 80 forwards against 4
    big = estimate.predict_item(estimate.Item("wan", 1280, 720, 4, False, frames=81), plan, gpu)
    assert big.denoise_s / four.denoise_s == pytest.approx(12.465 / 3.2985, rel=0.01)  # the measured 720p forward


def test_a_slow_host_link_bounds_a_streaming_plan():
    streamed = plan_on(hardware.from_sizes(10, 64), offload="group", weights="bf16")
    gpu = estimate.gpu_spec("NVIDIA H200")
    fast = estimate.predict_item(wan_480p(), streamed, gpu, (5, 16))
    slow = estimate.predict_item(wan_480p(), streamed, gpu, (3, 4))
    assert slow.denoise_s > 2 * fast.denoise_s and any("host link" in n for n in slow.notes)
    resident = estimate.predict_item(wan_480p(), plan_on(H200), gpu, (3, 4))
    assert not any("host link" in n for n in resident.notes)  # resident weights never cross the link


def test_resident_blocks_count_only_the_streamed_blocks():
    """Partial residency: the link floor counts the streamed bytes only, and the measured all-streamed forward
    is carried block by block (resident blocks at the resident cost of the same weight form: for GGUF Q8 the
    line through the measured streamed shares at 0, dearer than bf16)."""
    gpu, qwen = estimate.gpu_spec("NVIDIA H200"), estimate.Item("qwen", 1024, 1024, 4, False, references=1)
    work = memory.qwen_workload(1024, 1024, 1)
    # the host waiting at each block: those runs measured a streaming extra at several shares (running ahead,
    # the measured extra is nil, so every share predicts the resident cost)
    kept = memory.plan_memory(hardware.from_sizes(16, 32), memory.QWEN_FOOTPRINT, work, run_ahead=False)
    streamed = memory.plan_memory(hardware.from_sizes(16, 32), memory.QWEN_FOOTPRINT, work, max_resident_blocks=0,
                                  run_ahead=False)
    assert kept.resident_blocks > 0 and streamed.resident_blocks == 0
    with_kept, all_streamed = estimate.predict_item(qwen, kept, gpu), estimate.predict_item(qwen, streamed, gpu)
    on_card = memory.plan_memory(H200, memory.QWEN_FOOTPRINT, work, weights=kept.weights)
    resident = estimate.predict_item(qwen, on_card, gpu)
    assert on_card.placement == memory.Placement.GPU and "fitted at 0 streamed" in resident.basis
    assert estimate.predict_item(qwen, plan_on(H200), gpu).denoise_s < resident.denoise_s  # bf16 < GGUF Q8
    assert resident.denoise_s < with_kept.denoise_s < all_streamed.denoise_s
    share = kept.streamed_share
    expected = resident.denoise_s + (all_streamed.denoise_s - resident.denoise_s) * share
    assert with_kept.denoise_s == pytest.approx(expected, abs=0.02)
    assert any("blocks resident" in n for n in with_kept.notes)
    slow_kept = estimate.predict_item(qwen, kept, gpu, (3, 4))
    slow_all = estimate.predict_item(qwen, streamed, gpu, (3, 4))  # link-bound: bytes over a PCIe 3.0 x4 link
    assert slow_kept.denoise_s / slow_all.denoise_s == pytest.approx(kept.streamed_bytes / streamed.streamed_bytes,
                                                                     rel=1e-2)

def test_an_unknown_gpu_gets_the_stated_conservative_guess():
    guess = estimate.gpu_spec("Mystery Accelerator 9000")
    assert not guess.known and "guess" in guess.source
    assert estimate.gpu_spec("NVIDIA GeForce RTX 4090").known
    assert estimate.gpu_spec("NVIDIA H100 PCIe").name == "NVIDIA H100 PCIe"  # before the plain H100 entry
    p = estimate.predict_item(wan_480p(), plan_on(hardware.from_sizes(24, 64)), guess)
    assert any("guess" in n for n in p.notes)


def test_no_gpu_no_prediction():
    cpu = memory.plan_memory(hardware.from_sizes(0, 64), memory.WAN_FOOTPRINT, memory.wan_workload(832, 480, 81))
    assert estimate.predict_item(wan_480p(), cpu, estimate.gpu_spec(None)).seconds is None


# ---------------------------------------------------------------- production.py estimate


def test_estimate_before_anything_is_made(sample, monkeypatch):
    machine(monkeypatch, RTX4090)
    code, r = run_production(["estimate", str(sample)])
    assert code == 0 and r["command"] == "estimate"
    assert r["counts"] == {"images": 12, "clips": 3, "film": 1}
    assert [p["phase"] for p in r["phases"]] == ["assets", "keyframes", "clips"]
    assert [p["items"] for p in r["phases"]] == [6, 6, 3]
    assert r["total_seconds"] == pytest.approx(sum(p["seconds"] for p in r["phases"]), abs=0.2)
    assert r["slowest"]["id"].startswith("clip:") and r["slowest"]["seconds"] > 10
    assert r["disk"]["outputs_bytes"] > 3 * 1_000_000 and r["disk"]["download_bytes"] > 50e9  # nothing installed
    assert "wan-lightning" in r["disk"]["models_to_download"] and r["fits"]
    assert r["peak_vram_gib"] <= 24 and r["gpu"]["name"] == "NVIDIA GeForce RTX 4090"
    assert all(i["steps"] == 4 and not i["cfg"] for i in r["items"])  # the default download brings Lightning


def test_estimate_counts_only_what_remains_after_a_partial_run(sample, monkeypatch):
    """Clips made with recipes are not remade: a production whose every item but one is there."""
    machine(monkeypatch, RTX4090)
    _, before = run_production(["estimate", str(sample)])
    _, status = run_production(["status", str(sample)])
    made = [i for i in status["items"] if i["phase"] in ("assets",)]
    for item in made:  # pictures without a recipe are the user's own: provided, never planned
        out = sample / item["output"]
        out.parent.mkdir(parents=True, exist_ok=True)
        Image.new("RGB", (64, 64)).save(out)
    _, after = run_production(["estimate", str(sample)])
    assert after["counts"] == {"images": 6, "clips": 3, "film": 1}
    assert [p["phase"] for p in after["phases"]] == ["keyframes", "clips"]
    assert after["total_seconds"] < before["total_seconds"]


def test_a_plan_that_does_not_fit_says_what_would(sample, monkeypatch):
    """720p clips on a 12 GB card: the memory plan does not fit; at 480p it would."""
    (sample / ".production").mkdir(exist_ok=True)
    (sample / ".production" / "settings.json").write_text(json.dumps({"wan_video.py": {"preset": "720p"}}))
    machine(monkeypatch, hardware.from_sizes(12, 64, name="NVIDIA GeForce RTX 3080"))
    _, r = run_production(["estimate", str(sample)])
    assert not r["fits"]
    clips = next(p for p in r["problems"] if p["phase"] == "clips")
    assert "VRAM" in clips["what"] and any("480p" in f for f in clips["fixes"])
    machine(monkeypatch, hardware.from_sizes(12, 64, name="NVIDIA GeForce RTX 3080", disk_gb=5))
    _, r = run_production(["estimate", str(sample)])
    models = next(p for p in r["problems"] if p["phase"] == "models")
    assert models["what"] == "disk" and "free" in models["message"]


def test_full_disk_for_the_outputs_suggests_fewer_scenes(sample, monkeypatch):
    machine(monkeypatch, RTX4090)
    monkeypatch.setattr(forecast.shutil, "disk_usage", lambda path: shutil._ntuple_diskusage(10**9, 10**9, 1000))
    _, r = run_production(["estimate", str(sample)])
    outputs = next(p for p in r["problems"] if p["phase"] == "outputs")
    assert any("fewer scenes" in f for f in outputs["fixes"]) and not r["fits"]


def test_full_schedule_phases_are_told_how_much_lightning_saves(sample, monkeypatch):
    (sample / ".production").mkdir(exist_ok=True)
    (sample / ".production" / "settings.json").write_text(json.dumps({"wan_video.py": {"distill": "off"}}))
    machine(monkeypatch, RTX4090)
    _, r = run_production(["estimate", str(sample)])
    clips = next(p for p in r["phases"] if p["phase"] == "clips")
    assert all(i["steps"] == 40 and i["cfg"] for i in r["items"] if i["family"] == "wan")
    faster = next(f for f in r["faster"] if f["phase"] == "clips")
    assert faster["seconds"] < clips["seconds"] / 5 and "wan-lightning" in faster["how"]


def test_the_estimate_and_the_download_plan_count_the_distill_loras_factors(sample, monkeypatch):
    """On a 10 GB / 32 GB machine the clips stream GGUF experts, which keep the step-distill LoRA's factors
    beside them (folded, in bf16): the estimate and setup's download plan count them as the scripts do. Nothing
    is installed, so the counts come from the registry's file sizes."""

    from producer.modelfiles import lora_sizes, needs

    hw = hardware.from_sizes(10, 32, name="NVIDIA GeForce RTX 3080")
    machine(monkeypatch, hw)
    wan_factors = lora_sizes.entry_params("wan-lightning")
    assert wan_factors == 1_374_000_000 // 2 // 2  # two files in the registry's size, 2 bytes a parameter
    work, _ = needs.workload("wan")
    without = memory.plan_memory(hw, memory.WAN_FOOTPRINT, work)
    counted = memory.plan_memory(hw, replace(memory.WAN_FOOTPRINT, adapter_params=wan_factors), work)
    assert counted.weights == "gguf-q4" and counted.peak_ram - without.peak_ram >= 2 * wan_factors
    _, r = run_production(["estimate", str(sample)])
    clips = next(p for p in r["phases"] if p["phase"] == "clips")
    assert f"~{counted.peak_ram / GiB:.1f} GiB RAM" in clips["plan"]
    assert needs.family_need("wan", hw, None).plan.peak_ram == counted.peak_ram
    qwen = needs.family_need("qwen", hw, None).plan
    assert qwen.weights.startswith("gguf") and qwen.peak_ram > memory.plan_memory(
        hw, memory.QWEN_FOOTPRINT, needs.workload("qwen")[0]).peak_ram


def test_installed_loras_are_counted_from_their_headers(standin_hf_home):
    from producer.engines.loras import lora, lora_files
    from producer.modelfiles import lora_sizes

    for name in ("wan-lightning", "qwen-lightning"):
        specs = lora.registry_lora_specs(name)
        assert lora_sizes.entry_params(name) == lora_files.adapter_params(specs) > 0


def test_estimate_text_names_the_phases_and_the_total(sample, monkeypatch, capsys):
    machine(monkeypatch, RTX4090)
    assert production.main(["estimate", str(sample)]) == 0
    out = capsys.readouterr().out
    assert "to make: 12 image(s), 3 clip(s), the film" in out and "total:" in out and "slowest: clip:" in out


# ---------------------------------------------------------------- setup --check and batches


def test_setup_check_quotes_one_image_and_one_clip(offline_hf_home, monkeypatch, capsys):
    machine(monkeypatch, H200)
    setup_diffusers.main(["--check", "--json", "--quiet"])
    result = json.loads(capsys.readouterr().out)
    wan, qwen = result["predicted"]["wan"], result["predicted"]["qwen"]
    assert wan["what"].startswith("one clip, 832x480x81") and 10 < wan["seconds"] < 30
    assert qwen["what"].startswith("one image, 1024x1024") and 0.5 < qwen["seconds"] < 5
    setup_diffusers.main(["--check"])
    out = capsys.readouterr().out
    assert "Predicted time on this machine" in out and f"~{wan['seconds']:.0f} s" in out


def test_the_pcie_link_is_read_from_sysfs(tmp_path, monkeypatch):
    from types import SimpleNamespace

    device = tmp_path / "0000:1b:00.0"
    device.mkdir()
    (device / "max_link_speed").write_text("16.0 GT/s PCIe\n")
    (device / "current_link_width").write_text("8\n")
    monkeypatch.setattr(hardware.sys, "platform", "linux")
    props = SimpleNamespace(pci_domain_id=0, pci_bus_id=0x1B, pci_device_id=0)
    assert hardware._pcie_link(props, str(tmp_path)) == (4, 8)
    assert hardware._pcie_link(SimpleNamespace(pci_domain_id=0, pci_bus_id=2, pci_device_id=0), str(tmp_path)) is None


def test_after_a_real_run_only_what_an_edit_made_stale_remains(finished_demo, standin_hf_home, tmp_path, monkeypatch):
    """The sample made end to end on the stand-ins, then one scene's motion edited: one clip and the film."""
    import shutil

    root = shutil.copytree(finished_demo[0], tmp_path / "made")
    machine(monkeypatch, RTX4090)
    _, done = run_production(["estimate", str(root)])
    assert done["counts"] == {"images": 0, "clips": 0, "film": 0} and done["phases"] == []
    breakdown = root / "scene-breakdown.md"
    text = breakdown.read_text(encoding="utf-8")
    breakdown.write_text(text.replace("The boat rocks on the swell", "The boat rocks gently on the swell", 1))
    _, r = run_production(["estimate", str(root)])
    assert r["counts"] == {"images": 0, "clips": 1, "film": 1}
    assert [i["id"] for i in r["items"]] == ["clip:scene-03"] and r["slowest"]["id"] == "clip:scene-03"
    assert any("stand-ins" in n for n in r["notes"])
