"""`production.py rehearse DIR`: a production's own plan made on stand-ins, marked so that it never passes for real
work (issue 18). The rehearsal runs once per module through the real scripts; the tests copy and inspect it."""

import contextlib
import io
import json
import os
import shutil
from pathlib import Path

import pytest
from conftest import use_hf_home
from producer.commands import production
from producer.commands.demo import SAMPLE
from producer.files import provenance
from producer.workflow import rehearsal


def run(argv: list[str]) -> tuple[int, dict]:
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        code = production.main([*argv, "--json", "--quiet"])
    return code, json.loads(out.getvalue().strip().splitlines()[-1])


def listing(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def rehearsed(tmp_path_factory, standin_install):
    """The sample production (as a user's folder) rehearsed on the session's stand-ins; its files before."""
    source = tmp_path_factory.mktemp("rehearse") / "my-film"
    shutil.copytree(SAMPLE, source)
    before = listing(source)
    with pytest.MonkeyPatch.context() as mp:
        use_hf_home(mp, standin_install.hf_home)
        code, result = run(["rehearse", str(source), "--models-dir", str(standin_install.hf_home)])
    assert code == 0, result
    return source, before, result


def test_a_rehearsal_runs_every_phase_elsewhere_and_leaves_the_production_alone(rehearsed):
    source, before, result = rehearsed
    root = Path(result["root"])
    assert root == source / ".production" / "rehearsal" and result["rehearsal"] is True
    assert [s["phase"] for s in result["steps"] if s["action"] == "approve"] == [
        "philosophy", "scenes", "assets", "keyframes", "clips", "film"]
    assert result["film"]["width"] == 96 and result["film"]["seconds"] < 2
    assert {k: v for k, v in listing(source).items() if not k.startswith(".production")} == before
    recipes = [provenance.read_recipe(p) for p in root.glob("keyframes/*.png")]
    assert recipes and all(r["standin_models"] is True for r in recipes)
    report = run(["status", str(root)])[1]
    assert report["rehearsal"]["rehearsal_of"] == str(source) and "REHEARSAL" in report["rehearsal"]["message"]
    assert {i["state"] for i in report["items"]} == {"ok"}  # compared against the rehearsal's own stand-ins
    assert run(["next", str(root)])[1]["message"].startswith("REHEARSAL")


def test_rehearsal_outputs_are_stale_and_unapprovable_in_a_real_production(rehearsed, tmp_path):
    """The rehearsal folder copied and its marker removed (what a careless user might do): every output made on
    stand-ins is stale, approving it as real is refused, and `next` makes it again."""
    real = tmp_path / "real"
    shutil.copytree(rehearsed[2]["root"], real)
    (real / ".production" / rehearsal.MARKER).unlink()
    (real / ".production" / "settings.json").unlink()
    report = run(["status", str(real)])[1]
    made = [i for i in report["items"] if i["id"] != "film"]
    assert made and all(i["state"] == "stale" and i["reasons"] == [rehearsal.STALE_REASON] for i in made)
    assert report["rehearsal"] is None and report["current_phase"] == "assets"
    code, refused = run(["approve", str(real), "assets"])
    assert code == 2 and "asset:characters/keeper (stale)" in refused["error"]
    nxt = run(["next", str(real)])[1]
    assert nxt["action"] == "generate" and all(j["batch_job"].get("overwrite") for j in nxt["jobs"])


def test_a_real_batch_never_skips_an_output_made_on_stand_ins():
    recipe = {"script": "qwen_image.py", "settings": {"seed": 1}, "inputs": {}, "model": {"repo": "r", "commit": "c"}}
    assert provenance.recipe_key(recipe) != provenance.recipe_key({**recipe, rehearsal.RECIPE_MARK: True})


def test_a_rehearsal_refuses_a_plan_the_real_run_would_stop_at(tmp_path, standin_hf_home):
    source = tmp_path / "broken"
    shutil.copytree(SAMPLE, source)
    text = (source / "scene-breakdown.md").read_text()
    (source / "scene-breakdown.md").write_text(text.replace("**Camera**:", "**Kamera**:", 1))
    code, result = run(["rehearse", str(source), "--models-dir", str(standin_hf_home)])
    assert code == 2 and "scene 1 has no camera" in result["error"] and f"production.py check {source}" in result["fix"]
    (source / "scene-breakdown.md").unlink()
    (source / "assets.json").unlink()
    code, result = run(["rehearse", str(source), "--models-dir", str(standin_hf_home)])
    assert code == 2 and "scene-breakdown.md, assets.json not written yet" in result["error"]
    assert not (source / ".production").exists()  # refused before anything was written


def test_rehearse_refuses_a_rehearsal_and_a_foreign_folder(rehearsed, tmp_path):
    code, result = run(["rehearse", rehearsed[2]["root"]])
    assert code == 2 and "itself a rehearsal" in result["error"]
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "keep.txt").write_text("mine")
    code, result = run(["rehearse", str(rehearsed[0]), "--into", str(tmp_path / "other")])
    assert code == 2 and "not empty and not a rehearsal" in result["error"]
    assert (tmp_path / "other" / "keep.txt").read_text() == "mine"


@pytest.mark.parametrize("models_dir", ["", "missing", "empty"])
def test_a_models_dir_without_models_is_refused_before_anything_is_written(tmp_path, models_dir):
    """Once the plan was copied and a marker written before the missing models were noticed: a failed
    rehearsal left a half-made folder behind."""
    source = tmp_path / "film"
    shutil.copytree(SAMPLE, source, ignore=shutil.ignore_patterns(".production"))
    (tmp_path / "empty").mkdir()
    given = str(tmp_path / models_dir) if models_dir else ""
    before = listing(tmp_path)
    code, result = run(["rehearse", str(source), "--into", str(tmp_path / "rehearsal"), "--models-dir", given])
    assert code == 2 and "models" in result["error"] and "--models-dir" in result["fix"]
    assert listing(tmp_path) == before and not (tmp_path / "rehearsal").exists()


def test_a_rehearsal_folder_whose_name_is_not_utf8_is_refused_before_anything_is_written(tmp_path):
    """Found by the fuzzing: the stand-ins installed inside such a folder could not be written (safetensors
    opens UTF-8 paths only), a crash after the plan was copied."""
    source = tmp_path / "film"
    shutil.copytree(SAMPLE, source, ignore=shutil.ignore_patterns(".production"))
    before = listing(tmp_path)
    into = tmp_path / os.fsdecode(b"re\xffhearsal")
    code, result = run(["rehearse", str(source), "--into", str(into)])
    assert code == 2 and "not valid UTF-8" in result["error"] and "--models-dir" in result["fix"]
    assert listing(tmp_path) == before
