"""Every model fact lives in the registry; each entry must be complete and its defaults valid. Revisions
are commits of main (never a branch name or a pull-request ref's commit); files the registry knows from
public sources are checked by --download and --check."""

import json
import re
from pathlib import Path

import pytest
from producer.facts import registry
from producer.modelfiles import install, models
from producer.testing import standins

HEX40 = re.compile(r"[0-9a-f]{40}")
# Commits seen publicly that are not on main: refs/pr/1 of Wan-AI/Wan2.2-I2V-A14B-Diffusers (model-files.md).
PULL_REQUEST_COMMITS = {"2ec9bda285536cab0b8f3372a62bbedafcb7fe3c"}
# Repositories for which no public source pins a commit: revision None, the download records main's
# commit (registry docstring). Adding a repository here is a decision, not a default.
NO_PUBLIC_COMMIT = {"QuantStack/Wan2.2-I2V-A14B-GGUF", "lightx2v/Wan2.1-I2V-14B-480P-StepDistill-CfgDistill-Lightx2v",
                    "InstantX/Qwen-Image-ControlNet-Union"}


@pytest.mark.parametrize("entry", registry.entries(), ids=lambda e: e.name)
def test_revision_is_a_main_commit_never_a_branch_or_a_pull_request(entry):
    if entry.repo_id in NO_PUBLIC_COMMIT:
        assert entry.revision is None
        return
    assert isinstance(entry.revision, str) and HEX40.fullmatch(entry.revision), \
        f"{entry.name}: {entry.revision!r} is not a 40-hex commit (branch names move)"
    assert entry.pinned and entry.revision not in PULL_REQUEST_COMMITS


def test_entries_of_one_repo_share_one_revision():
    by_repo: dict = {}
    for entry in registry.entries():
        by_repo.setdefault(entry.repo_id, set()).add(entry.revision)
    assert all(len(revisions) == 1 for revisions in by_repo.values()), by_repo


@pytest.mark.parametrize("entry", registry.entries(), ids=lambda e: e.name)
def test_published_facts_name_files_the_entry_fetches(entry):
    for path, size in entry.file_sizes.items():
        assert path in entry.files and isinstance(size, int) and size > 0
    for path, digest in entry.sha256.items():
        assert path in entry.files and re.fullmatch(r"[0-9a-f]{64}", digest)
    if not entry.approximate_size:
        assert entry.size_bytes == sum(entry.file_sizes[f] for f in entry.files)


@pytest.mark.parametrize("entry", registry.entries(), ids=lambda e: e.name)
def test_entry_is_complete(entry):
    assert re.fullmatch(r"[a-z0-9][a-z0-9-]*", entry.name)
    assert re.fullmatch(r"[\w.-]+/[\w.-]+", entry.repo_id)
    assert entry.files and all(isinstance(f, str) and f for f in entry.files)
    assert entry.size_bytes > 0
    assert entry.loader and entry.license and entry.title
    for role_file in entry.roles.values():
        assert role_file in entry.files, f"{entry.name}: role file {role_file} is not among the files fetched"
    if entry.kind == "lora":
        assert entry.targets and 0 < entry.strength <= 2


def test_wan_lightning_goes_into_both_experts_with_the_right_file():
    lightning = registry.get("wan-lightning")
    assert set(lightning.targets) == {"transformer", "transformer_2"}
    assert "high_noise" in lightning.roles["transformer"] and "low_noise" in lightning.roles["transformer_2"]


def test_sampling_defaults_are_valid():
    wan = registry.WAN
    assert 0 < wan.boundary_ratio < 1
    assert (wan.frames - 1) % wan.frame_multiple == 0, "Wan frame counts are 4n + 1"
    assert wan.fps == 16 and wan.frames == 81
    for sampling in (wan.full, wan.distilled):
        assert sampling.steps > 0 and sampling.shift > 0 and sampling.guidance >= 1
    assert wan.distilled.steps == 4 and wan.distilled.guidance == 1.0
    for w, h in wan.presets.values():
        assert w % wan.size_multiple == 0 and h % wan.size_multiple == 0
    qwen = registry.QWEN
    assert qwen.max_references == 3
    assert qwen.lightning_4.steps == 4 and qwen.lightning_4.cfg == 1.0 and qwen.full.cfg > 1


def test_unknown_name_lists_the_known_ones():
    with pytest.raises(registry.UnknownModel) as info:
        registry.get("wan-t2v")
    assert "wan-i2v" in str(info.value) and "qwen-edit" in str(info.value)


def test_components_entries_share_the_full_repo_and_revision():
    assert registry.get("wan-i2v-components").repo_id == registry.get("wan-i2v").repo_id
    assert registry.get("wan-i2v-components").revision == registry.get("wan-i2v").revision
    assert registry.get("qwen-edit-components").repo_id == registry.get("qwen-edit").repo_id


# ---------------------------------------------------------------- --download and --check against published facts


@pytest.fixture(scope="module")
def lightning_standins(tmp_path_factory):
    return standins.install_standins(tmp_path_factory.mktemp("published-hub"), ["qwen-lightning", "wan21-lightx2v"])


@pytest.fixture
def hub(lightning_standins, monkeypatch):
    """tests/localhub.py serving the stand-in LoRA repos, huggingface_hub pointed at it and online."""
    from huggingface_hub import constants
    from localhub import LocalHub

    with LocalHub() as server:
        server.add_standins(lightning_standins)
        monkeypatch.setattr(constants, "ENDPOINT", server.url)
        monkeypatch.setattr(constants, "HUGGINGFACE_CO_URL_TEMPLATE",
                            server.url + "/{repo_id}/resolve/{revision}/{filename}")
        monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
        monkeypatch.setenv("HF_HUB_OFFLINE", "0")
        monkeypatch.delenv("HF_TOKEN", raising=False)
        yield server


def setup(capsys, *argv):
    from producer.commands import setup_diffusers

    code = setup_diffusers.main([*argv, "--json", "--quiet"])
    return code, json.loads(capsys.readouterr().out)


def publish(monkeypatch, name, **facts):
    """The registry entry `name` with these published facts (file_sizes=..., sha256=...)."""
    import dataclasses

    entry = dataclasses.replace(registry.get(name), **facts)
    monkeypatch.setitem(registry.REGISTRY, name, entry)
    monkeypatch.setattr(registry, "_ENTRIES", [entry if e.name == name else e for e in registry._ENTRIES])
    return entry


def four_step(lightning_standins):
    entry = registry.get("qwen-lightning")
    path = entry.roles["4"]
    return path, Path(lightning_standins["qwen-lightning"]["snapshot"]) / path


def test_download_verifies_the_published_sha256_and_check_reports_a_mismatch(hub, lightning_standins, capsys,
                                                                            monkeypatch):
    path, served = four_step(lightning_standins)
    publish(monkeypatch, "qwen-lightning", sha256={path: install.sha256_file(served)},
            file_sizes={path: served.stat().st_size})
    code, result = setup(capsys, "--download", "--only", "qwen-lightning")
    assert code == 0, result
    code, result = setup(capsys, "--check", "--only", "qwen-lightning")
    assert result["models"]["qwen-lightning"]["status"] == "complete"

    publish(monkeypatch, "qwen-lightning", sha256={path: "0" * 64})  # a skill that knows another file
    code, result = setup(capsys, "--check", "--only", "qwen-lightning")
    row = result["models"]["qwen-lightning"]
    assert code != 0 and row["status"] == install.UNPUBLISHED and "published file 000000000000" in row["problems"][0]
    assert "setup_diffusers.py --download --only qwen-lightning" in row["fix"]


def test_download_refuses_a_file_that_is_not_the_published_one_before_fetching(hub, lightning_standins, capsys,
                                                                              monkeypatch):
    path, served = four_step(lightning_standins)
    publish(monkeypatch, "qwen-lightning", file_sizes={path: served.stat().st_size + 1})
    code, result = setup(capsys, "--download", "--only", "qwen-lightning")
    assert code != 0 and "not the published file" in result["error"] and path in result["error"]
    assert "update the skill" in result["fix"]
    assert not hub.gets(path) and models.snapshot_dir(registry.get("qwen-lightning")) is None
    publish(monkeypatch, "qwen-lightning", sha256={path: "f" * 64})
    code, result = setup(capsys, "--download", "--only", "qwen-lightning")
    assert code != 0 and "sha256" in result["error"] and not hub.gets(path)


def test_an_entry_without_a_public_commit_stays_on_the_commit_it_recorded(hub, capsys, monkeypatch):
    from producer.modelfiles import download

    entry = publish(monkeypatch, "wan21-lightx2v", sha256={})  # the hub serves stand-ins, not the real file
    assert entry.revision is None and download.requested_revision(entry) == "main"
    code, result = setup(capsys, "--download", "--only", "wan21-lightx2v")
    assert code == 0, result
    commit = hub.repos[entry.repo_id].commit
    assert hub.gets(f"/api/models/{entry.repo_id}/revision/main")
    assert install.read_record("wan21-lightx2v")["commit"] == commit
    assert (models.repo_folder(entry.repo_id) / "refs" / "main").read_text() == commit
    assert download.requested_revision(entry) == commit  # later downloads of this repo ask for that commit
    code, result = setup(capsys, "--check", "--only", "wan21-lightx2v")
    assert result["models"]["wan21-lightx2v"]["status"] == "complete"
