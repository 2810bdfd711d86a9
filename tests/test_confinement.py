"""Confinement to the production folder: batch-job keys, the production's own folders, deep JSON.

A batch job's keys must be option names in full (argparse's prefix matching read "out" as --output, past the
path check that knows "output"); relative paths in a batch file are relative to the batch file; a production
whose keyframes/ or .production/ is a symlink elsewhere is a problem `check` reports and nothing writes
through; `next` never adds --allow-outside by itself.
"""

import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
from conftest import run_json
from PIL import Image
from producer import cli
from producer.cli import CliError, ExitCode
from producer.commands import production as tool
from producer.files import paths
from producer.makers import qwen_image, wan_video
from producer.runs import batch

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "lighthouse"
SCRIPTS = {"qwen": qwen_image, "wan": wan_video}


def run(main, *argv) -> tuple[int, dict]:
    return run_json(main, *argv)[:2]


def picture(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.zeros((16, 16, 3), np.uint8)).save(path)
    return path


def parse(script, batch_file: Path, allow_outside: bool = False):
    return batch.parse_jobs(script.build(), batch_file, script.PATH_OPTIONS, script.BATCH_ONLY, allow_outside)


# ---------------------------------------------------------------- batch-job keys


@pytest.fixture
def film(tmp_path):
    root = tmp_path / "film"
    picture(root / "keyframes" / "KF-A.png")
    picture(tmp_path / "elsewhere" / "secret.png")
    return root


# (script, abbreviated key, the option it would have meant, a value leading outside)
ABBREVIATED = [
    ("qwen", "out", "output", "../../stolen.png"),
    ("qwen", "outp", "output", "../../stolen.png"),
    ("qwen", "ref", "reference", "../elsewhere/secret.png"),
    ("wan", "out", "output", "../../stolen.mp4"),
    ("wan", "star", "start-frame", "../elsewhere/secret.png"),
]


@pytest.mark.parametrize("script,key,meant,value", ABBREVIATED)
def test_an_abbreviated_key_is_refused_naming_the_option_it_could_mean(film, script, key, meant, value):
    job = (
        {"prompt": "x", "output": "a.png", "start-frame": "keyframes/KF-A.png"}
        if script == "wan"
        else {"prompt": "x", "output": "a.png"}
    )
    job = {k: v for k, v in job.items() if k != meant} | {key: value}
    (film / "jobs.json").write_text(json.dumps([job]))
    parsed = parse(SCRIPTS[script], film / "jobs.json")
    assert isinstance(parsed[0], CliError), "an abbreviation was accepted"
    assert f"{key!r} is not an option" in parsed[0].message and repr(meant) in parsed[0].message
    assert "full" in parsed[0].fix


@pytest.mark.parametrize("script,key", [("qwen", "offl"), ("qwen", "comp"), ("wan", "distill-str"), ("wan", "wei")])
def test_an_abbreviated_whole_batch_option_is_refused_not_ignored(film, script, key):
    job = {"prompt": "x", "output": "a.png", key: "x"}
    if script == "wan":
        job["start-frame"] = "keyframes/KF-A.png"
    (film / "jobs.json").write_text(json.dumps([job]))
    parsed = parse(SCRIPTS[script], film / "jobs.json")
    assert isinstance(parsed[0], CliError) and f"{key!r} is not an option" in parsed[0].message


def test_full_names_underscores_and_negations_still_work(film):
    (film / "jobs.json").write_text(
        json.dumps([{"prompt": "x", "output": "a.png", "style_maintain": False, "negative_prompt": "blur", "seed": 3}])
    )
    job = parse(qwen_image, film / "jobs.json")[0]
    assert isinstance(job, batch.Job) and job.args.style_maintain is False and job.args.seed == 3


def test_the_command_line_takes_no_abbreviations_either(tmp_path):
    code, result = run(qwen_image.main, "--prompt", "x", "--out", tmp_path / "a.png")
    assert code == ExitCode.USAGE and "--out" in result["error"]
    assert not (tmp_path / "a.png").exists()
    code, result = run(tool.main, "check", EXAMPLE, "--allow-out")  # a subcommand's parser too
    assert code == ExitCode.USAGE and "--allow-out" in result["error"]


def test_relative_paths_in_a_batch_file_are_relative_to_the_batch_file(film, tmp_path, monkeypatch):
    elsewhere = tmp_path / "cwd"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    (film / "jobs.json").write_text(
        json.dumps([{"prompt": "x", "reference": "keyframes/KF-A.png", "output": "out/a.png"}])
    )
    job = parse(qwen_image, Path(os.path.relpath(film / "jobs.json")))[0]
    assert isinstance(job, batch.Job)
    assert Path(job.args.reference[0]).resolve() == (film / "keyframes" / "KF-A.png").resolve()
    assert Path(job.args.output).resolve() == (film / "out" / "a.png").resolve()


# ---------------------------------------------------------------- JSON nested too deeply


@pytest.mark.parametrize(
    "text",
    ["[" * 100_000, "[" * 100_000 + "]" * 100_000, '{"a":' * 50_000 + "1" + "}" * 50_000],
    ids=["open", "closed", "objects"],
)
def test_a_batch_file_nested_too_deeply_is_a_clear_error(tmp_path, text):
    (tmp_path / "jobs.json").write_text(text)
    code, result = run(qwen_image.main, "--batch", tmp_path / "jobs.json")
    assert code == ExitCode.USAGE and "nested too deeply" in result["error"] and "jobs.json" in result["error"]


def test_every_file_reader_reports_deep_nesting_as_bad_json():
    with pytest.raises(json.JSONDecodeError, match="nested too deeply"):
        cli.load_json("[" * 100_000)
    assert cli.load_json('{"a": [1, 2]}') == {"a": [1, 2]}


@pytest.fixture
def lighthouse(tmp_path):
    root = tmp_path / "lighthouse"
    shutil.copytree(EXAMPLE, root, ignore=shutil.ignore_patterns(".production"))
    return root


@pytest.mark.parametrize(
    "name", ["style.json", "assets.json", ".production/settings.json", ".production/approvals.json"]
)
def test_deeply_nested_production_files_are_reported_not_crashed(lighthouse, name):
    (lighthouse / name).parent.mkdir(exist_ok=True)
    (lighthouse / name).write_text("[" * 100_000)
    for command in ("check", "status", "next"):
        code, result = run(tool.main, command, lighthouse)
        assert code in (ExitCode.OK, ExitCode.USAGE), (command, result)
        assert "RecursionError" not in json.dumps(result)


# ---------------------------------------------------------------- the production's own folders


def provide_assets(root: Path) -> None:
    """Every asset picture made by hand (a file without a recipe is used as it is), so the keyframes come next."""
    for kind in json.loads((root / "assets.json").read_text()).values():
        for asset in kind.values():
            if asset["image"].endswith(".png"):
                picture(root / asset["image"])


def test_a_symlinked_output_folder_is_a_problem_and_next_plans_nothing(lighthouse, tmp_path):
    provide_assets(lighthouse)
    assert run(tool.main, "approve", lighthouse, "philosophy", "scenes", "assets")[0] == 0
    outside = tmp_path / "outside"
    outside.mkdir()
    (lighthouse / "keyframes").symlink_to(outside)
    code, result = run(tool.main, "check", lighthouse)
    assert code == ExitCode.USAGE
    assert any(p["file"] == "keyframes" and "leads outside the production" in p["message"] for p in result["problems"])
    _, result = run(tool.main, "next", lighthouse)
    assert result["action"] == "fix" and "keyframes" in json.dumps(result["problems"])
    assert "--allow-outside" not in json.dumps(result)
    assert not (lighthouse / ".production" / "next-keyframes.json").exists() and not list(outside.iterdir())


def test_a_symlinked_state_folder_receives_nothing(lighthouse, tmp_path):
    stolen = tmp_path / "stolen"
    stolen.mkdir()
    (lighthouse / ".production").symlink_to(stolen)
    code, result = run(tool.main, "check", lighthouse)
    assert code == ExitCode.USAGE and any(p["file"] == ".production" for p in result["problems"])
    code, result = run(tool.main, "approve", lighthouse, "philosophy")
    assert code == ExitCode.USAGE and ".production" in result["error"]
    _, result = run(tool.main, "next", lighthouse)
    assert result["action"] == "fix"
    code, result = run(tool.main, "retake", lighthouse, "keyframe:KF-A")
    assert code == ExitCode.USAGE and ".production" in result["error"]
    assert list(stolen.iterdir()) == []


def test_a_state_folder_in_a_loop_is_named_as_a_loop(lighthouse):
    (lighthouse / ".production").symlink_to(lighthouse / ".production")
    code, result = run(tool.main, "check", lighthouse)
    assert code == ExitCode.USAGE
    assert any(p["file"] == ".production" and "leads in a circle" in p["message"] for p in result["problems"])


def test_a_link_between_the_productions_own_folders_is_fine(lighthouse):
    (lighthouse / "kf-real").mkdir()
    (lighthouse / "keyframes").symlink_to(lighthouse / "kf-real")
    assert paths.folder_problems(lighthouse) == []
    code, result = run(tool.main, "check", lighthouse)
    assert code == ExitCode.OK, result


def test_only_the_users_allow_outside_lets_an_asset_folder_lead_elsewhere(lighthouse, tmp_path):
    """production.py --allow-outside is for asset pictures kept elsewhere; keyframes/ stays a problem with it."""
    (tmp_path / "shared").mkdir()
    (lighthouse / "assets" / "characters").symlink_to(tmp_path / "shared")
    (tmp_path / "kf").mkdir()
    (lighthouse / "keyframes").symlink_to(tmp_path / "kf")
    _, result = run(tool.main, "check", lighthouse, "--allow-outside")
    assert [p["file"] for p in result["problems"]] == ["keyframes"]
    code, result = run(tool.main, "check", lighthouse)
    assert code == ExitCode.USAGE and {"keyframes", "assets/characters"} <= {p["file"] for p in result["problems"]}


def test_settings_json_cannot_widen_the_confinement(lighthouse):
    """.production/settings.json adds options to every command `next` writes; --allow-outside is not one of them."""
    (lighthouse / ".production").mkdir()
    (lighthouse / ".production" / "settings.json").write_text(json.dumps({"qwen_image.py": {"allow_outside": True}}))
    run(tool.main, "approve", lighthouse, "philosophy", "scenes")
    code, result = run(tool.main, "check", lighthouse)
    assert code == ExitCode.USAGE and any("allow_outside" in p["message"] for p in result["problems"])
    _, result = run(tool.main, "next", lighthouse)
    assert result["action"] == "fix" and "--allow-outside" not in json.dumps(result.get("commands", []))
