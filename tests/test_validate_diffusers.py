"""validate_diffusers.py: the default checks, --test-load on good and broken installs, --smoke end to end."""

import json
import shutil
import sys
import types

import pytest
from conftest import use_hf_home
from producer.commands import installcheck, setup_diffusers, smoke, validate_diffusers
from producer.facts import registry
from producer.modelfiles import install, models, weightcheck
from producer.testing import standin_models, standins

NEEDED = ["wan-i2v", "qwen-edit", "wan-lightning", "qwen-lightning"]


def run(capsys, *argv):
    code = validate_diffusers.main([*argv, "--json", "--quiet"])
    out, err = capsys.readouterr()
    return code, json.loads(out), err


@pytest.fixture(scope="module")
def recorded(tmp_path_factory):
    """A stand-in cache as setup_diffusers.py --download leaves it: every entry but the annotators, recorded."""
    home = tmp_path_factory.mktemp("validate-standins")
    mp = pytest.MonkeyPatch()
    use_hf_home(mp, home)
    manifest = standins.install_standins(home)
    install.record_standins(manifest)
    mp.undo()
    return home, manifest


def snap(manifest, name):
    from pathlib import Path

    return Path(manifest[name]["snapshot"])


def test_default_validation_passes_on_a_complete_install(recorded, capsys):
    home, _ = recorded
    code, result, _ = run(capsys, "--models-dir", str(home))
    assert code == 0 and result["status"] == "ok" and result["failures"] == []
    env = result["environment"]
    assert env["imports_ok"] == env["imports"] and env["ffmpeg"]["ok"]
    entries = {e["name"]: e for e in result["models"]["entries"]}
    assert set(entries) == set(standins.default_entry_names())
    classes = {c["what"]: c["detail"] for c in entries["qwen-edit"]["checks"]}
    assert classes["pipeline class"] == "QwenImageEditPlusPipeline"
    assert classes["text_encoder"] == "Qwen2_5_VLForConditionalGeneration"
    assert "--test-load" in result["next_command"]


def test_detailed_reports_versions_and_component_configs(recorded, capsys):
    home, _ = recorded
    code, result, _ = run(capsys, "--models-dir", str(home), "--detailed")
    assert code == 0
    assert {i["module"] for i in result["environment"]["import_report"]} >= {"torch", "diffusers", "gguf"}
    wan = next(e for e in result["models"]["entries"] if e["name"] == "wan-i2v")
    transformer = next(c for c in wan["checks"] if c["what"] == "transformer")
    assert transformer["data"]["config"]["num_layers"] == standin_models.WAN_TRANSFORMER_CONFIG["num_layers"]
    assert validate_diffusers.main(["--models-dir", str(home), "--detailed"]) == 0
    assert "torch" in capsys.readouterr().out


def test_test_load_covers_every_model_and_lora(recorded, capsys):
    home, _ = recorded
    code, result, _ = run(capsys, "--models-dir", str(home), "--test-load")
    assert code == 0, result["failures"]
    checks = {c["what"]: c for e in result["models"]["entries"] for c in e["checks"]}
    assert checks["wan-i2v-gguf-q4/transformer_2 weights"]["ok"]
    assert checks["qwen-edit/text_encoder weights"]["data"]["covered"] > 0
    assert checks["processor loads"]["ok"]
    lora = next(c for what, c in checks.items() if what.startswith("LoRA wan2.2_i2v_A14b_low_noise"))
    expert = lora["data"]["loras"][0]["experts"][0]
    assert expert["component"] == "transformer_2" and expert["lost"] == 0 and expert["lora_modules_applied"] > 0


def test_missing_models_exit_3_with_the_download_command(capsys, monkeypatch):
    from producer.facts import hardware

    monkeypatch.setattr(hardware, "probe", lambda *a, **k: hardware.from_sizes(24, 64))
    code, result, _ = run(capsys)
    assert code == 3 and result["models"]["entries"] == []
    assert all(f["missing_model"] for f in result["failures"])
    assert "setup_diffusers.py --download --only" in result["next_command"]


def test_models_that_cannot_run_here_exit_4_without_a_download(capsys, monkeypatch):
    """A CPU-only 24 GiB machine: no download can make the real models run, so none is proposed (issue 18);
    with too little disk for the download, it is not proposed either."""
    from producer.facts import hardware
    from producer.modelfiles import needs

    monkeypatch.setattr(hardware, "probe", lambda *a, **k: hardware.from_sizes(0, 24))
    code, result, _ = run(capsys, "--detailed")
    assert code == 4 and result["next_command"] == needs.DEMO_COMMAND
    assert not any("--download" in f["fix"] for f in result["failures"])
    assert "GiB of RAM (this machine has 24" in result["failures"][0]["detail"]
    monkeypatch.setattr(hardware, "probe", lambda *a, **k: hardware.from_sizes(24, 64, disk_gb=10))
    code, result, _ = run(capsys, "--detailed")
    assert code == 3 and not any("--download" in f["fix"] for f in result["failures"])


# ---------------------------------------------------------------- what --test-load catches


@pytest.fixture
def wan_copy(recorded, tmp_path):
    _, manifest = recorded
    return shutil.copytree(snap(manifest, "wan-i2v"), tmp_path / "wan")


def test_a_wrong_config_is_caught(wan_copy):
    config = wan_copy / "transformer" / "config.json"
    cfg = json.loads(config.read_text())
    cfg["num_layers"] -= 1  # e.g. the config of another model size
    config.write_text(json.dumps(cfg))
    cov = weightcheck.check_folder("wan/transformer", wan_copy / "transformer")
    assert not cov.ok and cov.unexpected and cov.unexpected[0].startswith("blocks.")
    cfg["num_layers"] += 1
    cfg["ffn_dim"] *= 2
    config.write_text(json.dumps(cfg))
    cov = weightcheck.check_folder("wan/transformer", wan_copy / "transformer")
    assert not cov.ok and cov.mismatched and "ffn" in cov.mismatched[0]


def test_a_truncated_weight_file_is_caught(wan_copy, recorded):
    weights = wan_copy / "vae" / "diffusion_pytorch_model.safetensors"
    weights.write_bytes(weights.read_bytes()[:100])
    cov = weightcheck.check_folder("wan/vae", wan_copy / "vae")
    assert not cov.ok and "unreadable" in cov.error
    _, manifest = recorded
    gguf = snap(manifest, "wan-i2v-gguf-q4") / registry.get("wan-i2v-gguf-q4").roles["transformer"]
    cut = wan_copy / "cut.gguf"
    cut.write_bytes(gguf.read_bytes()[: gguf.stat().st_size // 3])
    cov = weightcheck.check_gguf("gguf", cut, wan_copy / "transformer")
    assert not cov.ok and "GGUF unreadable" in cov.error


def test_a_gguf_file_for_another_model_is_caught(recorded):
    _, manifest = recorded
    qwen_gguf = snap(manifest, "qwen-edit-gguf-q4") / registry.get("qwen-edit-gguf-q4").roles["transformer"]
    cov = weightcheck.check_gguf("gguf", qwen_gguf, snap(manifest, "wan-i2v") / "transformer")
    assert not cov.ok and cov.missing and cov.unexpected


def test_a_lora_for_another_model_is_caught(recorded, monkeypatch):
    home, manifest = recorded
    use_hf_home(monkeypatch, home)
    checks = installcheck.lora_checks(registry.get("qwen-lightning"), snap(manifest, "wan-i2v"))
    assert checks and not any(c.ok for c in checks)
    assert "Qwen" in checks[0].detail and "fix:" in checks[0].detail


def test_the_wrong_pipeline_class_is_caught(wan_copy):
    index = wan_copy / "model_index.json"
    index.write_text(json.dumps({**json.loads(index.read_text()), "_class_name": "WanPipeline"}))
    first = installcheck.structure(registry.get("wan-i2v"), wan_copy, detailed=False)[0]
    assert not first.ok and "WanImageToVideoPipeline" in first.detail


def test_an_incomplete_install_fails_validation(recorded, tmp_path, capsys, monkeypatch):
    home = tmp_path / "home"
    use_hf_home(monkeypatch, home)
    install.record_standins(standins.install_standins(home, ["wan-lightning"]))
    lora = models.locate(registry.get("wan-lightning")) / registry.get("wan-lightning").roles["transformer"]
    lora.write_bytes(lora.read_bytes()[:-10])
    code, result, _ = run(capsys, "--models-dir", str(home))
    failure = next(f for f in result["failures"] if f["what"] == "wan-lightning: install")
    assert code == 1 and "corrupt" in failure["detail"] and "--download --only wan-lightning" in failure["fix"]


# ---------------------------------------------------------------- --smoke


def test_smoke_dir_runs_every_script_and_leaves_a_usable_cache(tmp_path, capsys):
    home = tmp_path / "standins"
    code, result, _ = run(capsys, "--smoke-dir", str(home))
    assert code == 0, result["failures"]
    steps = {s["name"]: s for s in result["smoke"]["steps"]}
    assert all(s["ok"] for s in steps.values()) and len(steps) == 1 + len(smoke.script_steps(home, tmp_path, gpu=False))
    assert (home / "smoke-outputs" / "film.mp4").is_file() and "models" not in result
    code = setup_diffusers.main(["--check", "--models-dir", str(home), "--json", "--quiet"])
    check = json.loads(capsys.readouterr().out)
    assert code == 0 and check["ready"] and "stand-ins" in check["verdict"]
    assert all(check["models"][n]["source"] == "standin" for n in NEEDED)


def test_on_a_gpu_the_smoke_also_runs_the_small_cards_streamed_plans(tmp_path):
    def streamed(gpu):
        return [argv for _, _, argv, _ in smoke.script_steps(tmp_path, tmp_path, gpu=gpu) if "--offload" in argv]

    assert streamed(False) == []  # on the CPU every plan runs in one memory: nothing to check there
    both = streamed(True)
    assert len(both) == 2 and all(argv[argv.index("--offload") + 1] == "group" for argv in both)
    assert {argv[argv.index("--weights") + 1] for argv in both} == {"gguf-q8", "gguf-q4"}
    assert not any("--compile" in argv for argv in both)  # the plans as users get them


def test_a_failing_script_is_reported_with_its_fix(tmp_path, monkeypatch):
    def failing_main(argv):
        print("loading X", file=sys.stderr)
        print(json.dumps({"status": "error", "error": "diffusers could not load X", "fix": "pip install Y"}))
        return 1

    monkeypatch.setitem(sys.modules, "fake_script", types.SimpleNamespace(main=failing_main))
    step = smoke.run_script("fake", "fake_script", [], [tmp_path / "out.png"], quiet=True, debug=False)
    assert not step.ok and step.detail == "diffusers could not load X" and step.fix == "pip install Y"
    assert step.log == ["loading X"]

    def raising_main(argv):
        raise RuntimeError("boom")

    monkeypatch.setitem(sys.modules, "fake_script", types.SimpleNamespace(main=raising_main))
    step = smoke.run_script("fake", "fake_script", [], [], quiet=True, debug=False)
    assert not step.ok and "RuntimeError: boom" in step.detail


def test_smoke_dir_refuses_a_cache_with_real_models(tmp_path, capsys):
    records = tmp_path / "ai-video-producer" / "installs"
    records.mkdir(parents=True)
    (records / "wan-i2v.json").write_text(json.dumps({"source": "hub https://huggingface.co"}))
    code, result, _ = run(capsys, "--smoke-dir", str(tmp_path))
    assert code == 2 and "real downloaded models" in result["error"] and "empty folder" in result["fix"]


def test_gguf_and_loras_wait_for_a_complete_config_source(recorded, monkeypatch):
    _, manifest = recorded
    checks = installcheck.deep(registry.get("wan-i2v-gguf-q4"), snap(manifest, "wan-i2v-gguf-q4"), {"wan": None})
    assert [c.skipped for c in checks] == [True] and "wan-i2v-components" in checks[0].detail


def test_a_steps_summary_says_what_the_script_compiled():
    """A step whose script applied a speed lever (e.g. the GGUF dequantization compiled) says so."""
    result = {"mode": "edit", "memory_plan": {"name": "group-offload", "weights": "gguf-q8"},
              "speed": ["GGUF dequantization compiled (Q8_0: 3.1 s)"], "seconds_total": 12.0}
    assert smoke._summary(result) == ("mode edit; plan group-offload (gguf-q8); GGUF dequantization compiled "
                                      "(Q8_0: 3.1 s); 12.0 s in the script")
    assert "compiled" not in smoke._summary({"mode": "edit", "speed": []})
