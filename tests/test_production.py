"""production.py: the checker on the sample and on broken variants, approvals, staleness, `next` on the
stand-ins, and the demo. The demo's production (made once per module through the real scripts) is the
"generated" state the status tests copy and edit."""

import contextlib
import io
import json
import shlex
import shutil
from pathlib import Path

import pytest
from PIL import Image
from producer.commands import production
from producer.commands.demo import SAMPLE
from producer.production import rules
from producer.runs import batch
from producer.workflow import approvals, planner, seeds

BREAKDOWN, ASSETS = "scene-breakdown.md", "assets.json"


def run(argv: list[str]) -> tuple[int, dict]:
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        code = production.main([*argv, "--json"])
    return code, json.loads(out.getvalue().strip().splitlines()[-1])


def edit(root: Path, name: str, old: str, new: str) -> None:
    path = root / name
    text = path.read_text(encoding="utf-8")
    assert old in text, f"{old!r} not in {name}"
    path.write_text(text.replace(old, new, 1), encoding="utf-8")


@pytest.fixture
def sample(tmp_path: Path) -> Path:
    root = tmp_path / "film"
    shutil.copytree(SAMPLE, root)
    return root


@pytest.fixture
def demo(finished_demo) -> tuple[Path, dict]:
    """The sample made end to end on the stand-ins by `production.py demo` (conftest: once per process)."""
    return finished_demo


@pytest.fixture
def made(demo, tmp_path: Path, standin_hf_home) -> Path:
    """A private copy of the finished demo production, with the stand-ins as the installed models."""
    root = tmp_path / "made"
    shutil.copytree(demo[0], root)
    # approvals and recipes hold content hashes only, so the copy is as approved and up to date as the original
    return root


def states(root: Path) -> dict[str, str]:
    code, report = run(["status", str(root)])
    assert code == 0, report
    return {item["id"]: item["state"] for item in report["items"]}


def not_ok(root: Path) -> set[str]:
    return {k for k, v in states(root).items() if v != "ok"}


# ---------------------------------------------------------------- check


def test_sample_passes_check(sample):
    code, result = run(["check", str(sample)])
    assert code == 0 and result["problems"] == [] and result["missing_files"] == []


# (file, old text, new text) -> (file, line, words of the message)
BROKEN = {
    "philosophy placeholder": (("philosophy.md", "- **Lighting**: last light of dusk",
                                "- **Lighting**: [natural, dramatic] last light of dusk"),
                               ("philosophy.md", 6, "template text")),
    "philosophy section missing": (("philosophy.md", "## Motion Language", "## Motion"),
                                   ("philosophy.md", None, "'## Motion Language' is missing")),
    "style typo": (("style.json", '"color_palette"', '"colour_palette"'), ("style.json", 5, "not a style.json field")),
    "scene without camera": ((BREAKDOWN, "**Camera**: static medium shot of the doorway\n", ""),
                             (BREAKDOWN, 42, "scene 2 has no camera")),
    "scene longer than a clip": ((BREAKDOWN, "**Duration**: 5 seconds", "**Duration**: 5.5 seconds"),
                                 (BREAKDOWN, 45, "one clip is at most 81 frames")),
    "too few scenes": ((BREAKDOWN, "**Total Duration**: 13 seconds", "**Total Duration**: 16 seconds"),
                       (BREAKDOWN, 4, "needs at least 4 scenes")),
    "boundary not shared": ((BREAKDOWN, "**Start Keyframe**: KF-B (shared", "**Start Keyframe**: KF-A (shared"),
                            (BREAKDOWN, 48, "scene 1 ends on KF-B")),
    "keyframe unused": ((BREAKDOWN, "| KF-D |", "| KF-E | a spare moment | - | - | night_sea | - | |\n| KF-D |"),
                        (BREAKDOWN, 18, "KF-E is not used by any scene")),
    "keyframe undefined": ((BREAKDOWN, "**Start Keyframe**: KF-D", "**Start Keyframe**: KF-X"),
                           (BREAKDOWN, 66, "KF-X is not in the Unique Keyframes table")),
    "unknown character": ((BREAKDOWN, "| lantern_raised | keeper |", "| lantern_raised | keepr |"),
                          (BREAKDOWN, 17, "names the character 'keepr'")),
    "unknown background": ((BREAKDOWN, "| night_sea |", "| open_sea |"), (BREAKDOWN, 18, "'open_sea'")),
    "landscape with a character": ((BREAKDOWN, "| - | - | lighthouse_door | - | Scene 1 end",
                                    "| - | keeper | lighthouse_door | - | Scene 1 end"),
                                   (BREAKDOWN, 26, "landscape scene but its keyframe KF-B names a character")),
    "template text left": ((BREAKDOWN, "The boat rocks on the swell", "[Specific actions] The boat rocks on the swell"),
                           (BREAKDOWN, 69, "scene 3: the motion still holds template text '[Specific actions]'")),
    "asset path outside": ((ASSETS, '"assets/objects/lantern.png"', '"../lantern.png"'),
                           (ASSETS, 37, "leads outside the production folder")),
    "asset key typo": ((ASSETS, '"description": "a brass', '"descripton": "a brass'),
                       (ASSETS, 36, "unknown key 'descripton'")),
}


@pytest.mark.parametrize("case", list(BROKEN), ids=list(BROKEN))
def test_each_broken_rule_is_reported_with_its_line(sample, case):
    (name, old, new), (file, line, words) = BROKEN[case]
    edit(sample, name, old, new)
    code, result = run(["check", str(sample)])
    assert code == 2
    hits = [p for p in result["problems"] if words in p["message"]]
    assert hits, result["problems"]
    assert hits[0]["file"] == file and (line is None or hits[0]["line"] == line), hits[0]
    assert hits[0]["fix"]


def test_symlink_escape_is_refused_unless_allowed(sample, tmp_path):
    outside = tmp_path / "elsewhere"
    outside.mkdir()
    (sample / "assets" / "objects").symlink_to(outside, target_is_directory=True)
    code, result = run(["check", str(sample)])
    assert code == 2 and any("leads outside" in p["message"] for p in result["problems"])
    assert run(["check", str(sample), "--allow-outside"])[0] == 0


def test_check_text_names_file_line_and_fix(sample, capsys):
    edit(sample, BREAKDOWN, "**Camera**: static medium shot of the doorway\n", "")
    assert production.main(["check", str(sample)]) == 2
    out = capsys.readouterr().out
    assert f"{BREAKDOWN}:42: scene 2 has no camera" in out and "fix: add '**Camera**: static'" in out


# ---------------------------------------------------------------- approvals and the order of phases


def test_phases_are_approved_in_order_and_dropped_on_change(sample):
    code, result = run(["approve", str(sample), "scenes"])
    assert code == 2 and "philosophy) is not approved" in result["error"]
    assert run(["next", str(sample)])[1]["action"] == "approve"
    assert run(["approve", str(sample), "philosophy"])[0] == 0
    _, nxt = run(["next", str(sample)])
    assert nxt["phase"] == "scenes" and nxt["action"] == "approve"
    edit(sample, "style.json", "slow and calm", "slow, calm")
    _, report = run(["status", str(sample)])
    assert report["dropped_approvals"] == [{"name": "philosophy", "reason": "style.json changed after it was approved"}]
    assert report["current_phase"] == "philosophy"
    assert run(["next", str(sample)])[1]["phase"] == "philosophy"


def test_next_refuses_to_plan_past_an_unapproved_phase(sample):
    run(["approve", str(sample), "philosophy"])
    _, nxt = run(["next", str(sample)])
    assert nxt["action"] == "approve" and nxt["phase"] == "scenes" and "jobs" not in nxt
    assert not (sample / ".production" / "next-assets.json").exists()


def test_next_plans_assets_as_batch_jobs_the_script_parses(sample, monkeypatch):
    monkeypatch.chdir(sample.parent)  # a relative folder: the batch file still names absolute paths
    run(["approve", "film", "philosophy", "scenes"])
    _, nxt = run(["next", "film"])
    assert nxt["action"] == "generate" and nxt["phase"] == "assets"
    qwen = planner.script_module("qwen_image.py")
    jobs = batch.parse_jobs(qwen.build(), nxt["batch_file"], qwen.PATH_OPTIONS, qwen.BATCH_ONLY)
    assert len(jobs) == 6 and not any(isinstance(j, Exception) for j in jobs)  # the pose is keypoints JSON
    for job in nxt["jobs"]:
        args = qwen.build().parse_args(job["argv"][2:])
        assert args.seed == seeds.seed(seeds.salt(sample), job["id"]) and args.prompt and args.style_ref or \
            "poses" in job["id"]
    assert all(Path(j["output"]).is_absolute() for j in json.loads(Path(nxt["batch_file"]).read_text())["jobs"])
    assert run(["next", str(sample)])[1]["jobs"] == nxt["jobs"]  # the same plan, the same commands


def test_settings_are_checked_with_the_scripts_parsers(sample):
    (sample / ".production").mkdir()
    (sample / ".production" / "settings.json").write_text(json.dumps({
        "qwen_image.py": {"prompt": "x", "stepz": 3}, "wan_video.py": {"distill": "off"}}))
    code, result = run(["check", str(sample)])
    messages = " | ".join(p["message"] for p in result["problems"])
    assert code == 2 and "'prompt' is set by the plan itself" in messages and "stepz" in messages


# ---------------------------------------------------------------- status after generating, and staleness


def test_demo_made_every_file_and_approved_every_phase(demo):
    root, result = demo
    files = result["files"]
    assert len(files["keyframes"]) == 4 and len(files["layers"]) == 2 and len(files["clips"]) == 3
    assert files["film"] == [str(root / "final" / "film.mp4")] and len(files["contact sheets"]) == 4
    assert [s["action"] for s in result["steps"]].count("approve") == 6 and result["steps"][-1]["action"] == "done"


def test_status_of_the_finished_production(made):
    _, report = run(["status", str(made)])
    assert report["current_phase"] is None and all(p["complete"] and p["approved"] for p in report["phases"])
    assert {i["state"] for i in report["items"]} == {"ok"} and len(report["items"]) == 16
    assert len(report["seams"]) == 2 and report["style_asset"] == "storybook"
    judging = report["judging"]  # identity, colour and motion per scene (producer.workflow.drift), a chart each
    assert [s["item"] for s in judging["scenes"]] == ["clip:scene-01", "clip:scene-02", "clip:scene-03"]
    assert all(Path(s["chart"]).is_file() for s in judging["scenes"]) and judging["notes"] == []
    assert {k["asset"] for k in judging["keyframes"]} == {"asset:characters/keeper", "asset:objects/lantern"}


def test_status_before_generating(sample):
    report = run(["status", str(sample)])[1]
    assert report["counts"]["keyframes"] == {"missing": 6} and report["counts"]["assets"] == {"missing": 6}


STALE = {  # an edit -> exactly the items it makes stale
    "shared keyframe description": (BREAKDOWN, "lamp above just lit", "lamp above just lit, warm light",
                                    {"keyframe:KF-B", "background:KF-C", "keyframe:KF-C", "clip:scene-01",
                                     "clip:scene-02", "film"}),
    "character keyframe description": (BREAKDOWN, "raising her lantern towards", "raising her lantern high towards",
                                       {"keyframe:KF-C", "clip:scene-02", "film"}),
    "scene motion": (BREAKDOWN, "The boat rocks on the swell", "The boat rocks gently on the swell",
                     {"clip:scene-03", "film"}),
    "object description": (ASSETS, "a brass storm lantern", "a copper storm lantern",
                           {"asset:objects/lantern", "character:KF-C", "keyframe:KF-C", "clip:scene-02", "film"}),
    "transition": (BREAKDOWN, "**Transition to Next**: cut", "**Transition to Next**: fade", {"film"}),
}


@pytest.mark.parametrize("case", list(STALE), ids=list(STALE))
def test_an_edit_makes_exactly_its_dependents_stale(made, case):
    name, old, new, expected = STALE[case]
    edit(made, name, old, new)
    assert not_ok(made) == expected


def test_stale_reasons_and_dropped_approvals(made):
    edit(made, BREAKDOWN, "raising her lantern towards", "raising her lantern high towards")
    report = run(["status", str(made)])[1]
    by_id = {i["id"]: i for i in report["items"]}
    assert by_id["keyframe:KF-C"]["reasons"] == ["prompt changed"]
    assert by_id["clip:scene-02"]["reasons"] == ["made from keyframe:KF-C, which is stale"]
    assert [d["name"] for d in report["dropped_approvals"]] == ["scenes"] and report["current_phase"] == "scenes"


def test_retake_changes_one_seed(made):
    _, result = run(["retake", str(made), "KF-D"])
    assert result["retake"] == "keyframe:KF-D" and result["seed"] == seeds.seed(seeds.salt(made), "keyframe:KF-D", 1)
    report = run(["status", str(made)])[1]
    by_id = {i["id"]: i for i in report["items"]}
    assert {k for k, v in by_id.items() if v["state"] != "ok"} == {"keyframe:KF-D", "clip:scene-03", "film"}
    assert by_id["keyframe:KF-D"]["reasons"][0].startswith("seed ")


def test_without_the_models_status_compares_what_it_can(demo, tmp_path):
    """No models installed here (the autouse empty cache): settings cannot be resolved, seeds and inputs can."""
    root = tmp_path / "copy"
    shutil.copytree(demo[0], root)
    marker = root / ".production" / "rehearsal.json"  # the demo's own stand-ins are gone (another machine)
    marker.write_text(json.dumps({**json.loads(marker.read_text()), "models_dir": str(tmp_path / "gone")}))
    report = run(["status", str(root)])[1]
    assert {i["id"]: i["state"] for i in report["items"]}["keyframe:KF-A"] == "unchecked"
    assert report["current_phase"] is None and any("not installed here" in n for n in report["notes"])
    run(["retake", str(root), "keyframe:KF-D"])
    assert not_ok(root) - {i["id"] for i in report["items"] if i["state"] == "unchecked"} == {"film"}
    by_id = {i["id"]: i for i in run(["status", str(root)])[1]["items"]}
    assert by_id["keyframe:KF-D"]["state"] == "stale" and by_id["clip:scene-03"]["state"] == "stale"


def test_a_new_model_revision_makes_outputs_stale(standin_hf_home):
    from producer.facts import registry
    from producer.modelfiles import models
    from producer.workflow import recipes

    entry = registry.get("qwen-edit")
    reasons, notes = recipes.model_changes({"model": {"repo": entry.repo_id, "commit": "0" * 40, "weights": "bf16"}})
    assert len(reasons) == 1 and reasons[0].startswith(f"model {entry.repo_id} is now at") and notes == []
    same = {"repo": entry.repo_id, "revision": models.snapshot_dir(entry).name}  # wan_video.py says "revision"
    assert recipes.model_changes({"model": same}) == ([], [])


def test_a_picture_without_recipe_is_provided_and_never_planned(made):
    keeper = made / "assets" / "characters" / "keeper.png"
    Image.open(keeper).convert("RGB").save(keeper)  # no metadata: as if the user painted it
    report = run(["status", str(made)])[1]
    by_id = {i["id"]: i["state"] for i in report["items"]}
    assert by_id["asset:characters/keeper"] == "provided" and by_id["character:KF-C"] == "stale"
    nxt = run(["next", str(made)])[1]  # the assets changed since approval: back to the user, nothing to make
    assert nxt["phase"] == "assets" and nxt["action"] == "approve" and "jobs" not in nxt


def test_next_remakes_only_the_stale_items_on_the_standins(made):
    """Edit one keyframe's moment; `next` plans that keyframe alone, then (after approvals) its clip alone,
    and the batch files run through the real scripts."""
    edit(made, BREAKDOWN, "raising her lantern towards", "raising her lantern high towards")
    before = (made / "keyframes" / "KF-C.png").read_bytes()
    assert run(["approve", str(made), "scenes"])[0] == 0
    nxt = run(["next", str(made)])[1]
    assert [j["id"] for j in nxt["jobs"]] == ["keyframe:KF-C"] and nxt["jobs"][0]["batch_job"]["overwrite"] is True
    assert _run_batch(nxt) == {"ok": 1}
    assert (made / "keyframes" / "KF-C.png").read_bytes() != before
    assert not_ok(made) == {"clip:scene-02", "film"}
    assert run(["next", str(made)])[1]["action"] == "approve"  # KF-C changed: the keyframes go back to the user
    run(["approve", str(made), "keyframes"])
    nxt = run(["next", str(made)])[1]
    assert [j["id"] for j in nxt["jobs"]] == ["clip:scene-02"]
    assert _run_batch(nxt) == {"ok": 1}
    assert not_ok(made) == {"film"}


def _run_batch(nxt: dict) -> dict:
    script = planner.script_module(Path(nxt["batch_argv"][1]).name)
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        assert script.main([*nxt["batch_argv"][2:], "--quiet"]) == 0
    return json.loads(out.getvalue().strip().splitlines()[-1])["counts"]


def test_demo_refuses_a_folder_with_files(tmp_path):
    (tmp_path / "x").write_text("mine")
    code, result = run(["demo", str(tmp_path)])
    assert code == 2 and "not an empty folder" in result["error"] and (tmp_path / "x").read_text() == "mine"


def test_help_lists_the_commands(capsys):
    assert production.main(["--help"]) == 0
    out = capsys.readouterr().out
    assert all(word in out for word in ("check DIR", "status DIR", "approve DIR", "next DIR", "demo OUTDIR",
                                        "rehearse DIR"))


@pytest.mark.parametrize("seconds,scenes", [(3, 1), (5, 1), (5.06, 1), (6, 2), (10, 2), (10.1, 2), (11, 3), (15, 3),
                                            (16, 4), (20, 4), (21, 5), (31, 7)])
def test_scene_count_table(seconds, scenes):
    assert rules.minimum_scenes(seconds) == scenes


def test_readme_production_commands_parse():
    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text(encoding="utf-8")
    lines = [line.split("  #")[0] for line in readme.splitlines() if line.startswith("python scripts/production.py")]
    assert len(lines) >= 5
    for line in lines:
        args = production.build().parse_args(shlex.split(line)[2:])
        assert args.command in ("demo", "rehearse", "check", "next", "approve", "status")


def test_seeds_differ_between_productions_and_stay_put_within_one(tmp_path):
    """Seeds derive from a salt drawn once per production (issue 18: every production's KF-A had one seed)."""
    def first_seeds(root):
        run(["approve", str(root), "philosophy", "scenes"])
        return {j["id"]: j["batch_job"]["seed"] for j in run(["next", str(root)])[1]["jobs"]}

    one, two = (shutil.copytree(SAMPLE, tmp_path / name) for name in ("one", "two"))
    seeds_one = first_seeds(one)
    assert seeds_one != first_seeds(two) and first_seeds(one) == seeds_one
    assert len(seeds.salt(one)) == 16 and seeds_one["asset:characters/keeper"] != approvals.derive_seed(
        "asset:characters/keeper")


def test_a_production_made_before_salts_keeps_its_seeds(made):
    """Outputs with recipes and no salt file (made before salts): the salt is "" and seeds are the old ones, so
    nothing turns stale; it is stored at the first `next`."""
    (made / ".production" / "production.json").unlink()
    (made / ".production" / "takes.json").unlink(missing_ok=True)
    assert seeds.salt(made) == "" and seeds.seed("", "keyframe:KF-A", 2) == approvals.derive_seed("keyframe:KF-A", 2)
    run(["next", str(made)])
    assert json.loads((made / ".production" / "production.json").read_text())["seed_salt"] == ""


def test_next_retakes_flagged_keyframes_within_the_budget_and_approves_nothing(made):
    """Retakes on (settings), every keyframe judged off-model (identity_min 1): `next` at the keyframe checkpoint
    keeps the flagged keyframe as a variant and moves it to a new seed instead of asking for approval."""
    approved = json.loads((made / ".production" / "approvals.json").read_text())
    for phase in ("keyframes", "clips", "film"):
        del approved["approvals"][phase]
    (made / ".production" / "approvals.json").write_text(json.dumps(approved))
    settings = json.loads((made / ".production" / "settings.json").read_text())
    settings["judge"] = {"identity_min": 1.0, "flicker_ratio": 9}
    (made / ".production" / "settings.json").write_text(json.dumps(settings))
    _, ask = run(["next", str(made)])  # retakes off: the checkpoint asks, with the flag to show
    assert ask["action"] == "approve" and ask["phase"] == "keyframes" and ask["variants"] == {}
    assert {(f["item"], f["reason"], f["threshold"], f["asset"]) for f in ask["flags"]} == {
        ("keyframe:KF-C", "identity", 1.0, "asset:characters/keeper"), ("keyframe:KF-C", "identity", 1.0,
                                                                        "asset:objects/lantern")}
    assert all("retake" in f["fix"] for f in ask["flags"]) and "Judging raised 2 flag(s) on 1 item(s)" in ask["message"]
    settings["judge"].update(retake_variants=2, retake_budget=5)
    (made / ".production" / "settings.json").write_text(json.dumps(settings))
    _, nxt = run(["next", str(made)])
    assert nxt["action"] == "retake" and nxt["retaken"] == ["keyframe:KF-C"] and nxt["spent"] == 1
    kept = made / ".production" / "variants" / "keyframe-KF-C" / "take-0" / "KF-C.png"
    assert kept.read_bytes() == (made / "keyframes" / "KF-C.png").read_bytes()
    _, again = run(["next", str(made)])
    assert again["action"] == "generate" and [j["id"] for j in again["jobs"]] == ["keyframe:KF-C"]
    assert again["jobs"][0]["batch_job"]["judge"] == ["flicker_ratio=9"]  # the production's thresholds reach the script
    assert "keyframes" not in json.loads((made / ".production" / "approvals.json").read_text())["approvals"]
