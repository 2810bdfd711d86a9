"""A batch's prediction: each item's predicted seconds beside what it measured (`estimate.batch_prediction`),
where the stages of a batch fall, and both scripts' `--batch` reporting it."""

from __future__ import annotations

import json

import pytest
from PIL import Image
from producer.facts import hardware
from producer.makers import qwen_image, wan_video
from producer.sizing import estimate, memory
from test_estimate import H200, plan_on, wan_480p


def test_batch_prediction_reports_the_error_against_the_measured_time():
    plan = plan_on(H200)
    item = wan_480p()
    predicted = estimate.predict_item(item, plan, estimate.gpu_spec(H200.gpu_name), H200.host_link).seconds
    seconds = {"denoise": predicted, "high_expert": 5.0, "low_expert": 5.0, "decode": predicted / 10}
    r = estimate.batch_prediction([(item, seconds)], plan, H200)
    assert r["items"] == 1 and r["predicted_s"] == pytest.approx(predicted, abs=0.01)
    assert r["measured_s"] == pytest.approx(1.1 * predicted, abs=0.01)  # the experts are parts of denoise
    assert r["error"] == pytest.approx(0.1, abs=0.002) and r["per_item"][0]["error"] == r["error"]
    standin = estimate.batch_prediction([(item, seconds)], plan, H200, standin=True)
    assert standin["predicted_s"] is None and "stand-in" in standin["note"]



def test_a_later_clips_half_run_ahead_counts_once_in_the_batch_prediction():
    """A one-expert batch runs later clips' high-noise halves in the first clip's "ahead" stage and counts each
    half in its own clip's denoise too: measured on an H200 (8 / 16, 3 clips) the items summed to 95.3 s against
    77.2 s of work, an 18.7% error that was the double count."""
    plan, item = plan_on(H200), wan_480p()
    first = {"load_experts": 4.8, "ahead": 18.1, "denoise": 23.3, "expert_swap": 5.8, "decode": 2.2}
    later = {"denoise": 16.9, "decode": 2.1}
    r = estimate.batch_prediction([(item, first), (item, later), (item, later)], plan, H200)
    assert [row["measured_s"] for row in r["per_item"]] == [30.3, 19.0, 19.0]
    assert r["measured_s"] == pytest.approx(68.3, abs=0.01)


def test_a_one_expert_batch_predicts_the_expert_reads_on_each_groups_first_clip():
    """The group's first clip reads both experts (its load and its swap); the others read none. Measured on an
    H200 (8 / 16, 3 clips): 33.4 s for the first item, ~19 s for each later one, where an even share had
    predicted 26.75 s for each. The run's total stays what the even shares sum to."""
    small = hardware.from_sizes(8, 16, name="NVIDIA H200", host_link=(5, 16))
    plan, h200 = plan_on(small), estimate.gpu_spec("NVIDIA H200")
    assert plan.experts_in_ram == 1
    a = estimate.speed_model()["assumptions"]
    both = 2 * memory.WAN_FOOTPRINT.denoiser_params * memory.BYTES_PER_PARAM[plan.weights] / 1e9 / a["disk_read_gb_s"]
    n = memory.CLIPS_PER_EXPERT_READ + 2  # two groups
    placed = [estimate.predict_item(wan_480p(), plan, h200, items_in_run=n, position=i).seconds for i in range(n)]
    even = estimate.predict_item(wan_480p(), plan, h200, items_in_run=n).seconds
    first, later = placed[0], placed[1]
    assert first - later == pytest.approx(both, abs=0.02)
    assert placed[memory.CLIPS_PER_EXPERT_READ] == first and placed[-1] == later  # the second group's first clip
    assert sum(placed) == pytest.approx(n * even, abs=0.05)
    item = wan_480p()
    made = [(item, {"denoise": 20.0}), (item, {"denoise": 20.0}), (item, {"denoise": 20.0})]
    rows = estimate.batch_prediction(made, plan, small)["per_item"]
    assert rows[0]["predicted_s"] - rows[1]["predicted_s"] == pytest.approx(both, abs=0.02)
    assert rows[1]["predicted_s"] == rows[2]["predicted_s"]


def test_both_scripts_batches_report_their_prediction(standin_hf_home, tmp_path, capsys):
    Image.new("RGB", (64, 64), (90, 120, 150)).save(tmp_path / "kf.png")
    (tmp_path / "clips.json").write_text(
        json.dumps([{"start_frame": "kf.png", "prompt": "walk", "output": "c.mp4", "size": "64x64", "frames": 9}])
    )
    assert wan_video.main(["--batch", str(tmp_path / "clips.json"), "--json", "--quiet"]) == 0
    wan = json.loads(capsys.readouterr().out.strip().splitlines()[-1])["prediction"]
    (tmp_path / "pics.json").write_text(
        json.dumps(
            [
                {
                    "prompt": "fox",
                    "reference": "kf.png",
                    "output": "p.png",
                    "size": "64x64",
                    "steps": 2,
                    "lightning": "off",
                    "cfg": 1,
                }
            ]
        )
    )
    assert qwen_image.main(["--batch", str(tmp_path / "pics.json"), "--json", "--quiet"]) == 0
    qwen = json.loads(capsys.readouterr().out.strip().splitlines()[-1])["prediction"]
    for p in (wan, qwen):  # stand-ins on a CPU: measured, and said why nothing is predicted
        assert p["items"] == 1 and p["measured_s"] > 0 and p["predicted_s"] is None and p["error"] is None
        assert "stand-in" in p["note"]
