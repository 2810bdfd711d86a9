"""setup_diffusers.py against a Hugging Face Hub on loopback (tests/localhub.py) serving tiny stand-in repos.

Downloads go through huggingface_hub's real HTTP code (HfApi.model_info, http_get with its retries),
so resuming, verification, gating and the disk check are exercised as they run against the Hub.
"""

import json
import os
from pathlib import Path

import pytest
from localhub import LocalHub
from producer.commands import setup_diffusers
from producer.facts import hardware, registry
from producer.modelfiles import download, install, models, needs
from producer.sizing import memory
from producer.testing import standins

LORAS = ["wan-lightning", "qwen-lightning"]
SMALL_MACHINE = ["wan-i2v-components", "wan-i2v-gguf-q4", "qwen-edit-components", "qwen-edit-gguf-q4"]
CHUNK = 512
EXTRA_PRECISION = "Qwen-Image-Edit-2511-Lightning-4steps-V1.0-fp32.safetensors"  # on the hub, not in the registry


@pytest.fixture(scope="module")
def hub_content(tmp_path_factory):
    """The repos the hub serves: stand-ins of the LoRAs and of the small-machine form, plus a file the
    registry does not name (another precision) that must never be downloaded."""
    manifest = standins.install_standins(tmp_path_factory.mktemp("hub-content"), LORAS + SMALL_MACHINE)
    lightning = Path(manifest["qwen-lightning"]["snapshot"])
    (lightning / EXTRA_PRECISION).write_bytes(os.urandom(3000))
    return manifest


@pytest.fixture
def hub(hub_content, monkeypatch):
    """The local hub, with huggingface_hub pointed at it and online (the autouse fixture made it offline)."""
    from huggingface_hub import constants

    # The hub serves stand-ins, not the published files whose sizes and hashes the registry knows
    # (tests/test_registry.py checks that rule with its own values).
    monkeypatch.setattr(registry.ModelEntry, "published", lambda self, path: {})
    with LocalHub() as server:
        server.add_standins(hub_content)
        monkeypatch.setenv("HF_ENDPOINT", server.url)
        monkeypatch.setattr(constants, "ENDPOINT", server.url)
        monkeypatch.setattr(constants, "HUGGINGFACE_CO_URL_TEMPLATE", server.url + "/{repo_id}/resolve/{revision}/{filename}")
        monkeypatch.setenv("HF_HUB_OFFLINE", "0")
        monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
        monkeypatch.delenv("HF_TOKEN", raising=False)
        monkeypatch.setattr(constants, "HF_TOKEN_PATH", str(Path(constants.HF_HOME) / "token"))  # no stored login
        # http_get writes what it receives in chunks of 10 MB; scaled down to the stand-ins' size, so that a
        # dropped connection finds whole chunks written and resumes after them.
        monkeypatch.setattr(constants, "DOWNLOAD_CHUNK_SIZE", CHUNK)
        yield server


def run(capsys, *argv):
    code = setup_diffusers.main([*argv, "--json", "--quiet"])
    out, err = capsys.readouterr()
    return code, json.loads(out), err


def lora_file(name, role):
    entry = registry.get(name)
    return entry, entry.roles[role]


# ---------------------------------------------------------------- downloads


def test_download_then_check_says_complete(hub, capsys):
    code, result, _ = run(capsys, "--download", "--only", *LORAS)
    assert code == 0, result
    assert [d["name"] for d in result["downloaded"]] == LORAS
    for name in LORAS:
        status = install.entry_status(registry.get(name))
        assert status.complete and status.source.startswith("hub ")
        assert status.commit == hub.repos[registry.get(name).repo_id].commit
        snap = models.locate(registry.get(name))
        assert all((snap / f).is_symlink() for f in registry.get(name).files)  # huggingface_hub's layout
    assert not hub.gets(EXTRA_PRECISION) and not list(models.hub_cache().rglob(EXTRA_PRECISION))
    code, result, _ = run(capsys, "--check", "--only", *LORAS)
    assert code == 0 and result["ready"] and all(result["models"][n]["status"] == "complete" for n in LORAS)
    code, result, _ = run(capsys, "--download", "--only", *LORAS)  # nothing left to fetch: no file requests
    requests_before = len(hub.requests)
    assert code == 0 and result["downloaded"] == [] and result["already_complete"] == LORAS
    assert len(hub.requests) == requests_before


def test_dropped_connection_is_resumed_with_a_range_request(hub, capsys):
    entry, path = lora_file("wan-lightning", "transformer")
    cut = 4 * CHUNK + 100
    hub.cut_next_get(entry.repo_id, path, after=cut)
    code, result, _ = run(capsys, "--download", "--only", "wan-lightning")
    assert code == 0, result
    first, second = hub.gets(hub.repos[entry.repo_id].files[path].sha256)
    resumed_at = int(second.range.removeprefix("bytes=").rstrip("-"))
    assert first.range is None and 0 < resumed_at <= cut and resumed_at % CHUNK == 0
    assert install.entry_status(entry, verify=True).complete


def test_interrupted_file_continues_where_it_stopped_and_is_not_reported_present(hub, capsys):
    entry, path = lora_file("qwen-lightning", "4")
    served = hub.repos[entry.repo_id].files[path]
    half = served.size // 2
    partial = models.repo_folder(entry.repo_id) / "blobs" / f"{served.sha256}.incomplete"
    partial.parent.mkdir(parents=True)
    partial.write_bytes(served.local.read_bytes()[:half])  # what an interrupted run leaves
    code, result, _ = run(capsys, "--check", "--only", "qwen-lightning")
    assert code == 3 and result["models"]["qwen-lightning"]["status"] == "missing"
    assert "--download --only qwen-lightning" in result["next_command"]
    code, result, _ = run(capsys, "--download", "--only", "qwen-lightning")
    assert code == 0, result
    assert [g.range for g in hub.gets(served.sha256)] == [f"bytes={half}-"]
    assert not partial.exists() and install.entry_status(entry, verify=True).complete


def test_corrupted_files_are_detected_and_repaired(hub, capsys):
    assert run(capsys, "--download", "--only", "wan-lightning")[0] == 0
    entry, path = lora_file("wan-lightning", "transformer_2")
    on_disk = models.locate(entry) / path
    data = on_disk.read_bytes()
    on_disk.write_bytes(data[:-100])  # truncated
    code, result, _ = run(capsys, "--check", "--only", "wan-lightning")
    status = result["models"]["wan-lightning"]
    assert code == 3 and status["status"] == "corrupt" and path in status["problems"][0]
    on_disk.write_bytes(data[:50] + bytes([data[50] ^ 0xFF]) + data[51:])  # same size, one byte flipped
    code, result, _ = run(capsys, "--check", "--only", "wan-lightning")
    assert code == 3 and result["models"]["wan-lightning"]["status"] == "changed"
    assert "--check --verify" in result["next_command"]
    code, result, _ = run(capsys, "--check", "--verify", "--only", "wan-lightning")
    assert code == 3 and result["models"]["wan-lightning"]["status"] == "corrupt"
    assert "hash mismatch" in result["models"]["wan-lightning"]["problems"][0]
    code, result, err = run(capsys, "--download", "--only", "wan-lightning")
    assert code == 0 and "does not match" in err
    assert install.entry_status(entry, verify=True).complete and on_disk.read_bytes() == data


def test_touched_but_intact_file_is_re_recorded_by_verify(hub, capsys):
    assert run(capsys, "--download", "--only", "qwen-lightning")[0] == 0
    entry, path = lora_file("qwen-lightning", "8")
    on_disk = models.locate(entry) / path
    os.utime(on_disk, ns=(1, 1))
    assert install.entry_status(entry).status == "changed"
    assert install.entry_status(entry, verify=True).complete
    assert install.entry_status(entry).complete  # the record now holds the new time


def test_too_little_disk_is_refused_before_anything_is_written(hub, capsys, monkeypatch):
    monkeypatch.setattr(download, "free_disk_bytes", lambda path: download.DISK_MARGIN + 1000)
    code, result, _ = run(capsys, "--download", "--only", *LORAS)
    assert code == 1 and "not enough disk" in result["error"] and "--models-dir" in result["fix"]
    assert not hub.gets("/lfs/") and not models.hub_cache().exists()
    assert not install.records_dir().exists()


def test_offline_with_a_complete_cache_needs_no_network(hub, capsys, monkeypatch):
    from huggingface_hub import constants

    assert run(capsys, "--download", "--only", *LORAS)[0] == 0
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    seen = len(hub.requests)
    code, result, _ = run(capsys, "--download", "--only", *LORAS)
    assert code == 0 and result["already_complete"] == LORAS
    code, result, _ = run(capsys, "--check", "--only", *LORAS)
    assert code == 0 and result["ready"]
    code, result, _ = run(capsys, "--download", "--only", "wan-i2v-gguf-q4")
    assert code == 1 and "HF_HUB_OFFLINE" in result["error"] + result["fix"]
    assert len(hub.requests) == seen


def test_gated_repo_without_a_token_gets_a_clear_message(hub, capsys):
    entry = registry.get("qwen-lightning")
    hub.gate(entry.repo_id, tokens={"hf_granted"})
    code, result, err = run(capsys, "--download", "--only", "qwen-lightning")
    assert code == 1 and "gated" in result["error"]
    assert f"https://huggingface.co/{entry.repo_id}" in result["fix"] and "accept its license" in result["fix"]
    assert "HF_TOKEN" in result["fix"] and "Traceback" not in err
    assert install.read_record("qwen-lightning") is None
    code, result, _ = run(capsys, "--download", "--only", "qwen-lightning", "--token", "hf_not_granted")  # 403
    assert code == 1 and "gated" in result["error"]
    code, result, _ = run(capsys, "--download", "--only", "qwen-lightning", "--token", "hf_granted")
    assert code == 0 and install.entry_status(entry).complete
    assert not any(r.authorized for r in hub.requests if r.server == "cdn")  # the token stays on the hub


def test_download_fetches_the_form_the_memory_plan_picks(hub, capsys, monkeypatch):
    small = hardware.from_sizes(vram_gb=10, ram_gb=16)
    monkeypatch.setattr(hardware, "probe", lambda *a, **k: small)
    code, result, _ = run(capsys, "--download")
    assert code == 0, result
    assert result["requested"] == needs.download_names(small)
    assert set(result["requested"]) == set(SMALL_MACHINE + LORAS)
    assert all(install.entry_status(registry.get(n)).complete for n in result["requested"])


# ---------------------------------------------------------------- what to download, and --check verdicts


@pytest.mark.parametrize("vram, ram, weights, expected", [
    (80, 128, "auto", ["wan-i2v", "wan-lightning", "qwen-edit", "qwen-lightning"]),
    (24, 64, "auto", ["wan-i2v", "wan-lightning", "qwen-edit", "qwen-lightning"]),
    (10, 16, "auto", SMALL_MACHINE[:2] + ["wan-lightning"] + SMALL_MACHINE[2:] + ["qwen-lightning"]),
    (80, 128, "gguf-q8", ["wan-i2v-components", "wan-i2v-gguf-q8", "wan-lightning", "qwen-edit-components",
                          "qwen-edit-gguf-q8", "qwen-lightning"]),
    (80, 128, "fp8", ["wan-i2v", "wan-lightning", "qwen-edit", "qwen-lightning"]),  # fp8 is cast from bf16 files
])
def test_download_set_follows_the_plan(vram, ram, weights, expected):
    hw = hardware.from_sizes(vram, ram)
    assert needs.download_names(hw, weights) == expected
    assert needs.download_names(hw, weights, everything=True) == expected + list(needs.OPTIONAL)
    for family in needs.FAMILIES:
        need = needs.family_need(family, hw, None, weights)
        form = memory.plan_memory(hw, models.footprint(family, None), needs.workload(family)[0], weights=weights).weights
        assert need.form == form


@pytest.fixture(scope="module")
def recorded_standins(tmp_path_factory):
    """A stand-in cache holding what a machine needs, with install records (as --smoke-dir leaves it)."""
    home = tmp_path_factory.mktemp("recorded-standins")
    mp = pytest.MonkeyPatch()
    from conftest import use_hf_home

    use_hf_home(mp, home)
    install.record_standins(standins.install_standins(home, ["wan-i2v", "qwen-edit"] + LORAS))
    mp.undo()
    return home


def test_check_on_a_complete_cache_is_ready_and_reports_the_plans(recorded_standins, capsys):
    code, result, _ = run(capsys, "--check", "--models-dir", str(recorded_standins))
    assert code == 0 and result["ready"] and result["status"] == "ok"
    assert set(result["needed"]) == {"wan-i2v", "wan-lightning", "qwen-edit", "qwen-lightning"}
    assert result["models"]["openpose-annotators"]["status"] == "missing" and not result["models"][
        "openpose-annotators"]["needed"]
    for family, script in (("wan", "wan_video.py"), ("qwen", "qwen_image.py")):
        plan = result["plans"][family]
        assert plan["script"] == script and plan["plan"]["fits"] and "peak" in plan["plan"]["summary"]
    assert result["next_command"].startswith("python scripts/validate_diffusers.py --models-dir")
    assert {"python", "torch", "packages"} <= set(result["environment"])
    code = setup_diffusers.main(["--models-dir", str(recorded_standins)])  # --check is the default; human report
    out = capsys.readouterr().out
    assert code == 0 and "Verdict: ready" in out and "wan_video.py (832x480, 81 frames)" in out


def test_check_verdicts_name_the_next_command(recorded_standins, capsys, monkeypatch):
    from producer.modelfiles import environment

    home = ["--models-dir", str(recorded_standins)]
    monkeypatch.setattr(environment, "package_report", lambda: [
        {"name": "diffusers", "wanted": ">=0.42.1,<0.43", "installed": "0.35.0", "ok": False,
         "problem": "0.35.0 is outside >=0.42.1,<0.43"}])
    code, result, _ = run(capsys, "--check", *home)
    assert code == 1 and "diffusers" in result["verdict"] and result["next_command"].startswith("pip install -r")
    monkeypatch.undo()
    monkeypatch.setattr(models, "footprint", lambda family, snap: memory.WAN_FOOTPRINT if family == "wan"
                        else memory.QWEN_FOOTPRINT)  # the real models on an 8 GiB CPU-only machine
    monkeypatch.setattr(hardware, "probe", lambda *a, **k: hardware.from_sizes(0, 8))
    code, result, _ = run(capsys, "--check", *home)
    assert code == 4 and "does not fit" in result["verdict"] and "GPU" in result["next_command"]


def test_unknown_names_and_contradictions_are_usage_errors(capsys):
    code, result, _ = run(capsys, "--download", "--only", "wan-i2v", "no-such-model")
    assert code == 2 and "no-such-model" in result["error"] and "qwen-edit-gguf-q4" in result["fix"]
    code, result, _ = run(capsys, "--download-all", "--only", "wan-i2v")
    assert code == 2
    code, result, _ = run(capsys, "--download", "--verify")
    assert code == 2 and "--check" in result["fix"]


def test_info_describes_every_entry(capsys):
    code, result, _ = run(capsys, "--info")
    assert code == 0 and [m["name"] for m in result["models"]] == list(registry.REGISTRY)
    lightning = next(m for m in result["models"] if m["name"] == "qwen-lightning")
    assert lightning["license"] and lightning["gated"] is False and "always" in lightning["role"]
    assert lightning["status"] == "missing"
    assert "optional" in next(m for m in result["models"] if m["name"] == "openpose-annotators")["role"]


def test_the_local_hub_speaks_huggingface_hubs_own_download(hub):
    """hf_hub_download (HEAD, redirect to the CDN, GET) fetches from the local hub: its answers are the Hub's."""
    from huggingface_hub import hf_hub_download

    entry, path = lora_file("wan-lightning", "transformer")
    local = hf_hub_download(entry.repo_id, path, revision="main")
    assert Path(local).read_bytes() == hub.repos[entry.repo_id].files[path].local.read_bytes()
    served = hub.repos[entry.repo_id].files[path]
    assert [(r.server, r.method) for r in hub.requests if path in r.path or served.sha256 in r.path] == [
        ("hub", "HEAD"), ("cdn", "GET")]


def test_ctrl_c_keeps_the_partial_file_for_the_next_run(hub, capsys, monkeypatch):
    from huggingface_hub import file_download

    def interrupted_get(url, fh, resume_size=0, **kwargs):
        fh.write(b"x" * 700)  # what arrived before Ctrl-C
        raise KeyboardInterrupt

    monkeypatch.setattr(file_download, "http_get", interrupted_get)
    code, result, _ = run(capsys, "--download", "--only", "wan-lightning")
    assert code == 130 and "continues where it stopped" in result["error"]
    partials = list(models.repo_folder(registry.get("wan-lightning").repo_id).rglob("*.incomplete"))
    assert [p.stat().st_size for p in partials] == [700]
    assert install.entry_status(registry.get("wan-lightning")).status == "missing"


def test_files_fetched_by_another_tool_are_verified_and_recorded_without_downloading(hub, capsys):
    from huggingface_hub import hf_hub_download

    entry = registry.get("qwen-lightning")
    for path in entry.files:
        hf_hub_download(entry.repo_id, path, revision=entry.revision)
    code, result, _ = run(capsys, "--check", "--only", "qwen-lightning")
    assert code == 3 and result["models"]["qwen-lightning"]["status"] == "unrecorded"
    assert "verifies what is there" in result["models"]["qwen-lightning"]["fix"]
    gets_before = len(hub.gets())
    code, result, _ = run(capsys, "--download", "--only", "qwen-lightning")
    assert code == 0 and install.entry_status(entry).complete
    fetched = [g.path for g in hub.gets()[gets_before:] if entry.repo_id in g.path or "/lfs/" in g.path]
    assert fetched == [f"/api/models/{entry.repo_id}/revision/{entry.revision}"]  # the listing, no file


def test_every_command_in_the_output_example_parses():
    """docs/setup-output-example.md shows real runs; its command lines must stay valid for the parsers."""
    import shlex

    from producer.commands import validate_diffusers

    doc = Path(__file__).resolve().parents[1] / "docs" / "setup-output-example.md"
    commands = [line.removeprefix("$ python ") for line in doc.read_text().splitlines() if line.startswith("$ python ")]
    parsers = {"scripts/setup_diffusers.py": setup_diffusers.build(), "scripts/validate_diffusers.py":
               validate_diffusers.build()}
    assert len(commands) >= 8
    for command in commands:
        script, *argv = shlex.split(command)
        parsers[script].parse_args(argv)


def test_an_unrecorded_entry_sharing_a_recorded_repo_is_not_installed(offline_hf_home):
    """The components' record must not make the full repo (whose patterns match the configs) look installed."""
    from producer.facts import registry
    from producer.modelfiles import install, models
    from producer.testing import standins

    install.record_standins(standins.install_standins(offline_hf_home, ["wan-i2v-components"]))
    components, full = registry.get("wan-i2v-components"), registry.get("wan-i2v")
    assert models.is_present(components)
    assert models.matching_files(models.snapshot_files(models.snapshot_dir(full)), full.files), "configs match"
    assert not models.is_present(full)


# ---------------------------------------------------------------- honest verdicts (issue 18)


def test_check_on_a_small_cpu_machine_exits_4_and_proposes_no_download(offline_hf_home, capsys, monkeypatch):
    """No GPU, 24 GiB of RAM, no models: the plan cannot fit, so the verdict says what runs here and how much
    is lacking, and never names --download (the old verdict said "models missing", exit 3, --download)."""
    monkeypatch.setattr(hardware, "probe", lambda *a, **k: hardware.from_sizes(0, 24))
    code, result, _ = run(capsys, "--check")
    assert code == 4 and not result["ready"]
    assert "--download" not in result["verdict"] + result["next_command"]
    assert result["next_command"] == needs.DEMO_COMMAND
    assert result["verdict"].startswith("not ready: this machine (no GPU, 24 GiB RAM) can run the demo")
    lacks = {s["script"]: s for s in result["lacks"]}
    assert lacks["wan_video.py"]["memory"] == "RAM" and lacks["wan_video.py"]["short_gib"] > 30
    assert any("rehearse" in line for line in result["can_do"])
    setup_diffusers.main(["--check"])
    out = capsys.readouterr().out
    assert out.index("Runs here without any download:") < out.index("Verdict:")


def test_check_never_proposes_a_download_bigger_than_the_disk(offline_hf_home, capsys, monkeypatch):
    """A 24 GiB card with 64 GiB of RAM: the full download is ~190 GB. With 100 GB free the smaller GGUF Q8 form
    is proposed instead; with 10 GB free no download is, and the verdict says how much is needed."""
    monkeypatch.setattr(hardware, "probe", lambda *a, **k: hardware.from_sizes(24, 64, disk_gb=500))
    code, result, _ = run(capsys, "--check")
    assert code == 3 and result["next_command"] == "python scripts/setup_diffusers.py --download"
    monkeypatch.setattr(hardware, "probe", lambda *a, **k: hardware.from_sizes(24, 64, disk_gb=100))
    code, result, _ = run(capsys, "--check")
    assert code == 3 and result["next_command"].endswith("--download --weights gguf-q8"), result["verdict"]
    assert result["download_bytes"] > 100 * 1024**3
    monkeypatch.setattr(hardware, "probe", lambda *a, **k: hardware.from_sizes(24, 64, disk_gb=10))
    code, result, _ = run(capsys, "--check")
    assert code == 3 and "--download" not in result["next_command"] and "free disk space" in result["verdict"]


def test_the_exit_code_rule_is_quoted_where_the_docs_give_it():
    """One rule for --check's exit code (setup_diffusers.CHECK_EXIT_RULE, shown by --help); SKILL.md and
    SETUP.md quote it word for word."""
    root = Path(__file__).resolve().parents[1]
    flat = " ".join(setup_diffusers.CHECK_EXIT_RULE.split())
    for doc in ("SKILL.md", "SETUP.md"):
        assert flat in " ".join((root / doc).read_text().split()), doc
    assert flat in " ".join(setup_diffusers.build().format_help().split())


def test_a_damaged_file_in_a_cache_whose_plan_fits_is_repaired_not_refused(recorded_standins, tmp_path, capsys):
    """Stand-ins fit this machine: a corrupt LoRA among them is a repair (exit 3, --download), never the
    "cannot run the real models" verdict meant for a machine without them."""
    import shutil

    home = shutil.copytree(recorded_standins, tmp_path / "home", symlinks=True)
    lora = next(p for p in (home / "hub").rglob("*Lightning*.safetensors") if "snapshots" in str(p))
    lora.resolve().write_bytes(b"\0" * 100)
    code, result, _ = run(capsys, "--check", "--models-dir", str(home))
    assert code == 3 and "(corrupt)" in result["verdict"], result["verdict"]
    assert result["next_command"].startswith("python scripts/setup_diffusers.py --download")
