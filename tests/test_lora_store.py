"""LoRA folds kept between runs (producer.engines.loras.lora_store): a later load of the same files into the same
GGUF model folds without peft, gives the same parameters bit for bit and the same report; anything different
goes the whole way, and the store never fails a load."""

from __future__ import annotations

import json
import os
from dataclasses import replace

import pytest
import torch
from producer.engines.loras import lora, lora_store
from producer.engines.wan.experts import lora_view
from test_folded_lora import _specs
from test_lora_refold import assert_same_without_peft
from test_offload import _gguf_expert


@pytest.fixture
def whole_way(monkeypatch):
    """Counts the loads that went through peft (diffusers' loader), as a list of adapter names."""
    loaded, real = [], lora._load_plan
    monkeypatch.setattr(lora, "_load_plan", lambda pipe, plan, report: loaded.append(plan.adapter_name)
                        or real(pipe, plan, report))
    return loaded


def _load(expert, specs, **kwargs):
    return lora.load_loras(lora_view("transformer", expert), specs, "wan", fuse=True, **kwargs)


def _entries():
    return sorted(lora_store.store_dir().glob("*.json"))


def test_a_later_run_folds_from_the_store_what_the_whole_way_folded(standin_hf_home, tmp_path, whole_way, caplog):
    first = _gguf_expert(standin_hf_home)
    specs = _specs(tmp_path, first)
    report = _load(first, specs)
    assert len(whole_way) == 2 and len(_entries()) == 1
    later = _gguf_expert(standin_hf_home)  # what a later process reads
    caplog.set_level("INFO", logger="producer")
    again = _load(later, specs)
    assert len(whole_way) == 2, "the later load went through peft"
    assert again.to_dict() == report.to_dict() and again._folded == report._folded
    assert "folded from the store" in caplog.text and "LoRA a:" in caplog.text
    assert_same_without_peft(later, first)
    assert again._refolds["transformer"] is not None  # a read again within the later process refolds too


def test_a_later_run_from_another_folder_with_relative_paths_folds_from_the_store(
        standin_hf_home, tmp_path, whole_way, monkeypatch):
    first = _gguf_expert(standin_hf_home)
    specs = _specs(tmp_path, first)
    monkeypatch.chdir(tmp_path)
    relative = [replace(s, path=s.path.relative_to(tmp_path)) for s in specs]
    _load(first, relative)
    assert len(whole_way) == 2
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    later = _gguf_expert(standin_hf_home)
    _load(later, [replace(s, path=".." / s.path) for s in relative])  # the same files, named from there
    assert len(whole_way) == 2, "the later load went through peft"
    assert_same_without_peft(later, first)


@pytest.mark.parametrize("change", ["strength", "file", "model", "allow_partial"])
def test_anything_the_fold_depends_on_that_changed_goes_the_whole_way(standin_hf_home, tmp_path, whole_way,
                                                                       change):
    first = _gguf_expert(standin_hf_home)
    specs = _specs(tmp_path, first)
    _load(first, specs)
    later, kwargs = _gguf_expert(standin_hf_home), {}
    if change == "strength":
        specs = [replace(specs[0], strength=0.7), specs[1]]
    elif change == "file":  # same size, rewritten: its time changes
        path = specs[0].path
        stat = path.stat()
        os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns + 1_000_000))
    elif change == "model":
        later.blocks[0].ffn.net[2].bias.data = later.blocks[0].ffn.net[2].bias.data.double()
    else:
        kwargs = {"allow_partial": True}
    _load(later, specs, **kwargs)
    assert len(whole_way) == 4 and len(_entries()) == 2


def test_a_store_entry_that_no_longer_matches_its_files_changes_nothing_and_goes_the_whole_way(
        standin_hf_home, tmp_path, whole_way):
    first = _gguf_expert(standin_hf_home)
    specs = _specs(tmp_path, first)
    _load(first, specs)
    (entry,) = _entries()
    data = json.loads(entry.read_text())
    layers = data["refolds"]["transformer"]["layers"]
    layers["blocks.0.not_a_layer"] = next(iter(layers.values()))
    entry.write_text(json.dumps(data))
    later = _gguf_expert(standin_hf_home)
    _load(later, specs)
    assert len(whole_way) == 4


@pytest.mark.parametrize("damage", ["garbage", "empty", "wrong types"])
def test_a_damaged_store_entry_is_ignored(standin_hf_home, tmp_path, whole_way, damage):
    first = _gguf_expert(standin_hf_home)
    specs = _specs(tmp_path, first)
    _load(first, specs)
    (entry,) = _entries()
    data = json.loads(entry.read_text())
    data["refolds"]["transformer"]["layers"] = {"x": 3}
    entry.write_text({"garbage": "{not json", "empty": "", "wrong types": json.dumps(data)}[damage])
    report = _load(_gguf_expert(standin_hf_home), specs)
    assert len(whole_way) == 4 and all(e.folded for f in report.loras for e in f.experts)
    assert json.loads(_entries()[0].read_text())["key"]  # the whole way wrote it again


def test_a_store_that_cannot_be_written_never_fails_a_load(standin_hf_home, tmp_path, whole_way, monkeypatch):
    blocked = tmp_path / "blocked"
    blocked.write_text("a file where the folder would go")
    monkeypatch.setenv("HF_ASSETS_CACHE", str(blocked))
    expert = _gguf_expert(standin_hf_home)
    report = _load(expert, _specs(tmp_path, expert))
    assert len(whole_way) == 2 and all(e.folded for f in report.loras for e in f.experts)
    assert blocked.is_file()


@pytest.mark.parametrize("off", ["0", "false", " Off "])
def test_the_store_can_be_turned_off(standin_hf_home, tmp_path, whole_way, monkeypatch, off):
    monkeypatch.setenv(lora_store.ENV, off)
    expert = _gguf_expert(standin_hf_home)
    specs = _specs(tmp_path, expert)
    _load(expert, specs)
    _load(_gguf_expert(standin_hf_home), specs)
    assert len(whole_way) == 4 and not lora_store.store_dir().exists()


def test_the_oldest_entries_beyond_the_limit_are_removed(standin_hf_home, tmp_path, monkeypatch):
    monkeypatch.setattr(lora_store, "KEPT", 2)
    expert = _gguf_expert(standin_hf_home)
    specs = _specs(tmp_path, expert)
    for strength in (0.1, 0.2, 0.3):
        _load(_gguf_expert(standin_hf_home), [replace(specs[0], strength=strength)])
    kept = _entries()
    assert len(kept) == 2
    strengths = sorted(json.loads(p.read_text())["key"]["specs"][0][1] for p in kept)
    assert strengths == [0.2, 0.3]


def test_a_load_whose_folds_were_not_all_captured_is_not_kept(standin_hf_home, tmp_path, monkeypatch):
    from producer.engines.loras import lora_refold

    monkeypatch.setattr(lora_refold, "factors", lambda *a, **k: None)  # capture cannot check: no Refold
    expert = _gguf_expert(standin_hf_home)
    report = _load(expert, _specs(tmp_path, expert))
    assert report._refolds == {"transformer": None} and _entries() == []


@pytest.mark.parametrize("experts_in_ram", [1, 2])
def test_a_second_session_loads_no_expert_the_whole_way(standin_hf_home, monkeypatch, whole_way, experts_in_ram):
    """Two runs of a 16 GB machine's plan (one expert in RAM) or a 32 GB one's (both): the second run's loads
    fold from the store."""
    from producer.engines.wan import wan
    from producer.engines.wan.wan_load import components_snapshot, locate_files, plan_for
    from producer.facts import hardware
    from producer.sizing import memory
    from test_wan_session import distill_specs, job

    plan = plan_for(hardware.probe(device="cpu"), components_snapshot(), [memory.wan_workload(64, 64, 9)], "auto",
                    "gguf-q4")
    plan = replace(plan, experts_in_ram=experts_in_ram)
    runs = []
    for _ in range(2):
        session = wan.WanSession.from_files(locate_files(plan.weights), plan, lora_specs=distill_specs(),
                                            progress=False)
        runs.append((session.generate(job()), session.lora_reports))
    assert len(whole_way) == 2  # the first run: each expert's LoRA once; the second run: none
    assert len(_entries()) == 2  # the session loads each expert's LoRAs on its own: an entry each
    assert runs[0][1] == runs[1][1]
    assert torch.equal(torch.as_tensor(runs[0][0].frames), torch.as_tensor(runs[1][0].frames))


def test_an_entry_whose_folds_name_other_files_than_its_key_is_not_used(standin_hf_home, tmp_path, whole_way):
    first = _gguf_expert(standin_hf_home)
    specs = _specs(tmp_path, first)
    _load(first, specs)
    (entry,) = _entries()
    data = json.loads(entry.read_text())
    other = tmp_path / "other.safetensors"
    other.write_bytes(specs[0].path.read_bytes())
    data["refolds"]["transformer"]["specs"][0][0] = str(other)
    entry.write_text(json.dumps(data))
    _load(_gguf_expert(standin_hf_home), specs)
    assert len(whole_way) == 4


def test_with_folding_turned_off_a_kept_fold_is_not_used(standin_hf_home, tmp_path, whole_way, monkeypatch):
    """`lora.FOLD_GGUF = False` keeps peft's adapters on GGUF weights (the benchmark's -lorapeft): the store, which
    holds folds, must not answer for it."""
    first = _gguf_expert(standin_hf_home)
    specs = _specs(tmp_path, first)
    _load(first, specs)
    monkeypatch.setattr(lora, "FOLD_GGUF", False)
    later = _gguf_expert(standin_hf_home)
    report = _load(later, specs)
    assert len(whole_way) == 4 and not any(e.folded for f in report.loras for e in f.experts)
    assert any(type(m).__module__.startswith("peft") for m in later.modules())


def test_an_entry_missing_a_part_or_failing_to_fold_goes_the_whole_way(standin_hf_home, tmp_path, whole_way,
                                                                        monkeypatch):
    first = _gguf_expert(standin_hf_home)
    specs = _specs(tmp_path, first)
    _load(first, specs)
    (entry,) = _entries()
    data = json.loads(entry.read_text())
    del data["folded"]
    entry.write_text(json.dumps(data))
    _load(_gguf_expert(standin_hf_home), specs)  # the whole way writes the entry again, whole
    from producer.engines.loras import lora_refold

    def broken(*args, **kwargs):
        raise RuntimeError("shape mismatch")

    monkeypatch.setattr(lora_refold, "factors", broken)
    report = _load(_gguf_expert(standin_hf_home), specs)
    assert len(whole_way) == 6 and all(e.folded for f in report.loras for e in f.experts)


def test_a_kept_report_keeps_what_was_skipped(standin_hf_home, tmp_path, whole_way, caplog):
    """Keys the first load skipped (here Wan 2.1 image-encoder keys, which Wan 2.2 has no target for) are in the
    report a later run prints and returns."""
    from producer.testing import standin_loras

    first = _gguf_expert(standin_hf_home)
    path = standin_loras.save_lora(standin_loras.wan_lightx2v_lora(first, seed=4, rank=4, wan21_image_keys=True),
                                   tmp_path / "with-image-keys.safetensors")
    specs = [lora.LoraSpec(path, 1.0, ("transformer",), "x")]
    report = _load(first, specs)
    skipped = report.to_dict()["loras"][0]["experts"][0]["skipped"]
    assert skipped and skipped[0]["count"] > 0
    caplog.set_level("INFO", logger="producer")
    again = _load(_gguf_expert(standin_hf_home), specs)
    assert len(whole_way) == 1 and again.to_dict() == report.to_dict()
    assert "skipped:" in caplog.text
