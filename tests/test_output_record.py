"""A video's sidecar recipe records the file that was made (size, sha256): a clip cut short after it was made
(a copy that stopped, a full disk elsewhere) is damaged, not up to date (status: stale; a batch rerun says so)."""

import numpy as np
import pytest
from producer.errors import CliError
from producer.files import provenance, video
from producer.files.outputs import write_json_atomic


def _clip(tmp_path, name="clip.mp4", shade=0.0):
    path = tmp_path / name
    frames = np.zeros((17, 48, 64, 3), dtype="uint8") + np.arange(17, dtype="uint8")[:, None, None, None] * 9
    video.write_mp4((frames + int(shade)).astype("uint8"), path, fps=16)
    recipe = provenance.make_recipe("wan_video.py", {"prompt": "waves", "seed": 1}, {}, {})
    write_json_atomic(provenance.sidecar_path(path), provenance.with_output(recipe, path))
    return path, recipe


def test_the_clip_as_made_keeps_its_recipe(tmp_path):
    path, recipe = _clip(tmp_path)
    got, damage = provenance.recipe_or_damage(path)
    assert damage is None and got["settings"] == recipe["settings"]
    assert got["output"]["bytes"] == path.stat().st_size
    assert provenance.up_to_date(path, recipe, seed_given=True, overwrite=False)


def test_a_clip_cut_short_is_damaged_and_a_batch_rerun_says_so(tmp_path):
    path, recipe = _clip(tmp_path)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) * 2 // 3])
    got, damage = provenance.recipe_or_damage(path)
    assert got is None and "cut short or damaged" in damage
    with pytest.raises(CliError) as err:
        provenance.up_to_date(path, recipe, seed_given=True, overwrite=False)
    assert "cut short" in err.value.message and "--overwrite" in err.value.fix
    assert provenance.up_to_date(path, recipe, seed_given=True, overwrite=True) is False  # remade on request


def test_a_whole_clip_that_changed_keeps_its_recipe(tmp_path):
    """Trimmed or re-encoded by hand, or renamed into place before its new recipe (a killed run): not damage."""
    path, recipe = _clip(tmp_path)
    other, _ = _clip(tmp_path, "other.mp4", shade=40)
    path.write_bytes(other.read_bytes())
    got, damage = provenance.recipe_or_damage(path)
    assert damage is None and got["settings"] == recipe["settings"]


def test_a_recipe_written_before_outputs_were_recorded_still_holds(tmp_path):
    path, recipe = _clip(tmp_path)
    write_json_atomic(provenance.sidecar_path(path), recipe)  # no "output" entry
    path.write_bytes(path.read_bytes()[:100])
    assert provenance.recipe_or_damage(path) == (recipe, None)
