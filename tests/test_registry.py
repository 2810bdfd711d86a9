"""Every model fact lives in the registry; each entry must be complete and its defaults valid."""

import re

import pytest

from producer import registry


@pytest.mark.parametrize("entry", registry.entries(), ids=lambda e: e.name)
def test_entry_is_complete(entry):
    assert re.fullmatch(r"[a-z0-9][a-z0-9-]*", entry.name)
    assert re.fullmatch(r"[\w.-]+/[\w.-]+", entry.repo_id)
    assert entry.revision == "main" or entry.pinned, "a revision is a 40-hex commit or the branch main"
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
