"""Bad input found by a fourth hostile review of production.py, the judging and assemble_video.py: each case
failed on the code before its fix (see git log)."""

import json
import shutil

import pytest
from conftest import run_json
from producer.cli import ExitCode
from producer.commands import production


@pytest.fixture
def made(finished_demo, tmp_path):
    """A copy of the finished sample film (a rehearsal on the stand-ins), safe to edit."""
    root = tmp_path / "film"
    shutil.copytree(finished_demo[0], root, symlinks=True)
    return root


def edit_json(path, change):
    data = json.loads(path.read_text(encoding="utf-8"))
    change(data)
    path.write_text(json.dumps(data), encoding="utf-8")


def unapprove(root, *names):
    edit_json(root / ".production" / "approvals.json", lambda d: [d["approvals"].pop(n) for n in names])


# ---------------------------------------------------------------- approvals.json edited by hand


@pytest.mark.parametrize("approvals", [[1], "film", 3])
def test_approvals_that_are_not_an_object_are_named_not_crashed(made, approvals):
    """Was: exit 1, "AttributeError: 'list' object has no attribute 'items'", for every command."""
    edit_json(made / ".production" / "approvals.json", lambda d: d.update(approvals=approvals))
    for command in (["status"], ["next"], ["approve", "film"]):
        code, report, _ = run_json(production.main, command[0], made, *command[1:])
        assert code == ExitCode.USAGE, report
        assert '"approvals"' in report["error"] and "approvals.json" in report["error"], report
        assert "AttributeError" not in report["error"] and "delete" in report["fix"], report


# ---------------------------------------------------------------- settings.json's "judge" edited by hand


@pytest.mark.parametrize("judge, named", [
    ({"retake_variants": "three", "retake_budget": 4}, "judge.retake_variants"),  # was: ValueError in next
    ({"retake_variants": 3, "retake_budget": float("inf")}, "judge.retake_budget"),  # was: OverflowError in next
    ({"identity_min": 10 ** 400}, "judge.identity_min"),  # was: OverflowError in status
    ({"black_level": float("nan")}, "judge.black_level"),  # was: check passed, every job then refused it
    ({"colour_drift": float("nan")}, "judge.colour_drift"),  # was: accepted, the flag silently never raised
])
def test_a_judge_setting_that_is_not_a_plain_number_is_a_problem_of_check(made, judge, named):
    unapprove(made, "keyframes", "clips", "film")  # next stops at the keyframes checkpoint, where retakes are planned
    edit_json(made / ".production" / "settings.json", lambda d: d.update(judge=judge))
    code, report, _ = run_json(production.main, "check", made)
    assert code == ExitCode.USAGE and any(named in p["message"] for p in report["problems"]), report
    for command in ("status", "next"):
        code, report, _ = run_json(production.main, command, made)
        assert code == 0 and any(named in p["message"] for p in report["problems"]), report
    assert report["action"] == "fix", report


def test_a_whole_retake_budget_still_plans_retakes(made):
    from producer.workflow import retakes

    assert retakes.budget_from({"judge": {"retake_variants": 3, "retake_budget": 2}}) == retakes.Budget(3, 2)
    assert retakes.budget_from({"judge": {"retake_variants": 2.5, "retake_budget": 2}}) == retakes.Budget(0, 2)


# ---------------------------------------------------------------- a seam of clips too small for SSIM


def test_a_seam_of_tiny_clips_reports_null_not_nan_and_says_why(tmp_path, capsys):
    """Was: "ssim": NaN in the --json report (not JSON: jq and JSON.parse refuse it), and no word of why."""
    import numpy as np
    from producer.files import video
    from producer.makers import assemble_video

    clips = []
    for seed in (0, 1):
        clips.append(tmp_path / f"{seed}.mp4")
        video.write_mp4(np.random.default_rng(seed).integers(0, 255, (5, 8, 10, 3), dtype="uint8"), clips[-1], fps=16)
    code = assemble_video.main(["--clips", *map(str, clips), "--review", "--transition", "continuous", "--json"])
    out = capsys.readouterr().out
    report = json.loads(out, parse_constant=lambda c: pytest.fail(f"{c} in the JSON report"))
    seam = report["seams"][0]
    assert code == 0 and seam["clip_to_clip"]["ssim"] is None and "ssim is not measured" in seam["notes"][0], seam


# ---------------------------------------------------------------- where status draws its charts


def test_a_review_folder_that_is_a_file_is_noted_not_crashed(made):
    """Was: exit 1, "FileExistsError: ... .production/review" from `status`."""
    review = made / ".production" / "review"
    shutil.rmtree(review)
    review.write_text("someone's notes")
    code, report, _ = run_json(production.main, "status", made)
    assert code == 0 and any("drift charts not drawn" in n and "is a file" in n for n in report["judging"]["notes"])
    assert review.read_text() == "someone's notes" and report["judging"]["scenes"], report


@pytest.mark.parametrize("linked", [".production/review", ".production"])
def test_status_draws_no_chart_through_a_link_out_of_the_production(made, tmp_path, linked):
    """Was: `status` wrote the drift charts into the folder the link led to, outside the production."""
    elsewhere = tmp_path / "elsewhere"
    shutil.move(made / linked, elsewhere)
    shutil.rmtree(elsewhere / "review", ignore_errors=True)
    before = sorted(p.name for p in elsewhere.iterdir())
    (made / linked).symlink_to(elsewhere, target_is_directory=True)
    code, report, _ = run_json(production.main, "status", made)
    assert code == 0 and sorted(p.name for p in elsewhere.iterdir()) == before, report
    assert any("drift charts not drawn" in n for n in report["judging"]["notes"]), report
    code, report, _ = run_json(production.main, "check", made)  # the tool's own folders stay inside: a problem
    assert code == ExitCode.USAGE and any(linked in p["message"] for p in report["problems"]), report


# ---------------------------------------------------------------- a byte-order mark from an editor


@pytest.mark.parametrize("name", ["settings.json", "approvals.json"])
def test_state_files_saved_with_a_bom_are_read(made, name):
    """Was: "Unexpected UTF-8 BOM": settings.json a problem that stopped every generating phase, approvals.json
    refused by every command with "fix or delete it" (style.json, assets.json and the .md files took the BOM)."""
    path = made / ".production" / name
    path.write_bytes(b"\xef\xbb\xbf" + path.read_bytes())
    code, report, _ = run_json(production.main, "status", made)
    assert code == 0 and not report["problems"] and report["current_phase"] is None, report


def test_approving_a_file_that_links_out_of_the_production_names_the_link_and_the_fix(tmp_path):
    """A clip that is a symbolic link to a file elsewhere: the approval names the production's own path and the
    copy that puts the file in place (it said only that the target was outside, 'approve files of this
    production only')."""
    from producer.errors import CliError
    from producer.workflow import approvals

    root, elsewhere = tmp_path / "prod", tmp_path / "elsewhere"
    (root / "scene-02").mkdir(parents=True)
    elsewhere.mkdir()
    (elsewhere / "a.mp4").write_bytes(b"clip")
    link = root / "scene-02" / "video.mp4"
    link.symlink_to(elsewhere / "a.mp4")
    with pytest.raises(CliError) as err:
        approvals._rel(root, link)
    assert "is a link to" in str(err.value) and str(link) in str(err.value)
    assert "cp --remove-destination" in err.value.fix and str(elsewhere / "a.mp4") in err.value.fix
    with pytest.raises(CliError) as other:
        approvals._rel(root, elsewhere / "a.mp4")  # as the planner's resolved output of that clip arrives
    assert "outside the production folder" in str(other.value) and "cp --remove-destination" in other.value.fix


def test_an_audio_file_with_no_samples_is_named_empty_not_an_ffmpeg_progress_line(tmp_path):
    import wave

    from producer.errors import CliError
    from producer.files import clips

    empty = tmp_path / "empty.wav"
    with wave.open(str(empty), "wb") as w:
        w.setnchannels(1), w.setsampwidth(2), w.setframerate(16000)
        w.writeframes(b"")
    with pytest.raises(CliError) as err:
        clips.probe_audio(empty)
    assert "is empty" in str(err.value) and "time=N/A" not in str(err.value)
    assert "sound" in err.value.fix
