"""Retakes within a budget (producer.workflow.retakes): flagged items kept as variants and moved to a new seed until
their variant limit or the total budget; every variant kept with its figures, proposed best first; an
interruption in the middle neither loses a variant nor spends the budget twice; nothing is approved."""

import pytest
from PIL import Image
from producer.files import layout
from producer.workflow import approvals, retakes


def flag(figure, item="keyframe:KF-A"):
    return {"item": item, "reason": "identity", "frames": [], "figure": figure, "threshold": 0.25, "fix": "retake"}


def make(root, item, shade):
    """`next` making an item's current take: a picture whose grey level tells the takes apart."""
    path = layout.keyframe_path(root, item.split(":")[1])
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (16, 16), (shade, shade, shade)).save(path)
    return path


def test_budget_is_off_by_default_and_read_from_settings():
    assert not retakes.budget_from({}).on and not retakes.budget_from({"judge": {"retake_variants": 1}}).on
    assert retakes.budget_from({"judge": {"retake_variants": 3, "retake_budget": 4}}) == retakes.Budget(3, 4)


def test_the_loop_stops_at_each_items_limit_and_at_the_budget_keeping_every_variant(tmp_path):
    budget = retakes.Budget(variants=3, total=3)
    items = ["keyframe:KF-A", "keyframe:KF-B"]
    figures = {"keyframe:KF-A": [0.1, 0.2, 0.15], "keyframe:KF-B": [0.05, 0.1]}
    rounds = []
    for round_ in range(5):
        takes = approvals.read_takes(tmp_path)
        outputs = {i: make(tmp_path, i, 40 * takes.get(i, 0)) for i in items}
        flagged = {i: [flag(figures[i][min(takes.get(i, 0), len(figures[i]) - 1)], i)] for i in items}
        done = retakes.plan(tmp_path, outputs, flagged, budget)
        rounds.append(done["retaken"])
        if not done["retaken"]:
            break
    assert rounds == [items, ["keyframe:KF-A"], []] and done["spent"] == 3  # the budget, not KF-A's limit, stopped it
    assert approvals.read_takes(tmp_path) == {"keyframe:KF-A": 2, "keyframe:KF-B": 1}
    state = retakes.read_state(tmp_path)
    assert [r["take"] for r in state["items"]["keyframe:KF-A"]] == [0, 1, 2]
    for item, records in state["items"].items():
        for r in records:  # each variant is its own file, with the grey level of its take
            kept = Image.open(tmp_path / r["folder"] / f"{item.split(':')[1]}.png").getpixel((0, 0))
            assert kept == (40 * r["take"],) * 3
    assert not layout.state_file(tmp_path, approvals.APPROVALS).exists()  # nothing approved by itself
    ranked = retakes.proposals(tmp_path, {"keyframe:KF-A": [flag(0.15)], "keyframe:KF-B": []})
    assert [c["take"] for c in ranked["keyframe:KF-A"]] == [1, 2, 0]  # 0.2 is nearest the threshold
    best = ranked["keyframe:KF-B"][0]  # its current take is clean now: first
    assert (best["take"], best["flags"], best["badness"], best["current"]) == (1, [], 0, True)


def test_an_interruption_between_keeping_and_moving_on_neither_loses_nor_double_spends(tmp_path, monkeypatch):
    budget = retakes.Budget(variants=4, total=4)
    item = "keyframe:KF-A"
    monkeypatch.setenv("PRODUCER_FAULT", f"retake:{item}=error")
    with pytest.raises(RuntimeError):
        retakes.plan(tmp_path, {item: make(tmp_path, item, 0)}, {item: [flag(0.1)]}, budget)
    assert len(retakes.read_state(tmp_path)["items"][item]) == 1 and approvals.read_takes(tmp_path) == {}
    monkeypatch.delenv("PRODUCER_FAULT")
    done = retakes.plan(tmp_path, {item: make(tmp_path, item, 0)}, {item: [flag(0.1)]}, budget)
    assert done == {"retaken": [item], "at_limit": [], "spent": 1, "budget": 4}
    assert len(retakes.read_state(tmp_path)["items"][item]) == 1 and approvals.read_takes(tmp_path) == {item: 1}
