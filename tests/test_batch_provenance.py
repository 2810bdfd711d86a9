"""Batch files become the script's own arguments; recipes decide what is up to date."""

import json

import pytest
from producer import cli
from producer.files import provenance
from producer.runs import batch


def _parser():
    p = cli.build_parser("demo.py", "demo")
    p.add_argument("--prompt", required=True)
    p.add_argument("--reference", action="append")
    p.add_argument("--output", required=True)
    p.add_argument("--seed", type=cli.seed_arg)
    p.add_argument("--device")
    cli.add_output_args(p)
    return p


def _write(tmp_path, data):
    path = tmp_path / "jobs.json"
    path.write_text(json.dumps(data))
    return path


def test_jobs_parse_with_the_scripts_parser_and_paths_are_relative_to_the_batch_file(tmp_path):
    path = _write(tmp_path, {"defaults": {"seed": 3}, "jobs": [
        {"prompt": "a cat", "reference": ["a.png", "b.png"], "output": "out/a.png", "overwrite": True},
        {"prompt": "a dog", "output": "/abs/b.png", "seed": 9}]})
    jobs = batch.parse_jobs(_parser(), path, path_options={"reference", "output"}, batch_only={"device"},
                            allow_outside=True)  # /abs/b.png is outside the batch's folder (test_reliability)
    first, second = jobs
    assert first.args.reference == [str(tmp_path / "a.png"), str(tmp_path / "b.png")]
    assert first.args.output == str(tmp_path / "out/a.png") and first.args.overwrite and first.args.seed == 3
    assert second.args.output == "/abs/b.png" and second.args.seed == 9


def test_a_bad_job_is_kept_as_its_error_and_the_others_run(tmp_path):
    path = _write(tmp_path, [{"prompt": "ok", "output": "a.png"}, {"output": "b.png"},
                             {"prompt": "x", "output": "c.png", "device": "cuda"}, {"prompt": "y", "output": "d.png"}])
    jobs = batch.parse_jobs(_parser(), path, {"output"}, {"device"})
    assert isinstance(jobs[1], cli.CliError) and "prompt" in jobs[1].message
    assert isinstance(jobs[2], cli.CliError) and "whole batch" in jobs[2].message

    def run_one(job):
        if job.args.prompt == "y":
            raise RuntimeError("exploded")
        return {"status": "ok", "output": job.args.output}

    result = batch.run_jobs(jobs, run_one).to_dict()
    assert [j["status"] for j in result["jobs"]] == ["ok", "error", "error", "error"]
    assert [j["job"] for j in result["jobs"]] == [0, 1, 2, 3]
    assert result["exit_code"] == cli.ExitCode.PARTIAL


@pytest.mark.parametrize("content,needle", [
    ("[", "not valid JSON"), ("[]", "no jobs"), ("{\"jobz\": []}", "unknown key"), ("[1]", "not an object"),
    ("\"text\"", "no jobs")])
def test_bad_batch_files_name_the_problem(tmp_path, content, needle):
    path = tmp_path / "jobs.json"
    path.write_text(content)
    with pytest.raises(cli.CliError, match=needle):
        batch.read_batch_file(path)


def test_non_utf8_batch_file(tmp_path):
    path = tmp_path / "jobs.json"
    path.write_bytes(b"[\xff\xfe]")
    with pytest.raises(cli.CliError, match="UTF-8"):
        batch.read_batch_file(path)


def test_recipe_key_follows_content_not_paths(tmp_path):
    a = tmp_path / "a.png"
    a.write_bytes(b"one")
    copy = tmp_path / "moved.png"
    copy.write_bytes(b"one")
    r1 = provenance.make_recipe("s", {"prompt": "p", "seed": 1}, {"reference": [a]}, {"rev": "x"})
    r2 = provenance.make_recipe("s", {"prompt": "p", "seed": 1}, {"reference": [copy]}, {"rev": "x"})
    assert provenance.recipe_key(r1) == provenance.recipe_key(r2)
    a.write_bytes(b"two")
    r3 = provenance.make_recipe("s", {"prompt": "p", "seed": 1}, {"reference": [a]}, {"rev": "x"})
    assert provenance.recipe_key(r3) != provenance.recipe_key(r1)
    r4 = provenance.make_recipe("s", {"prompt": "p", "seed": 2}, {"reference": [copy]}, {"rev": "x"})
    assert provenance.recipe_key(r4) != provenance.recipe_key(r2)
    assert provenance.recipe_key(r4, ignore_seed=True) == provenance.recipe_key(r2, ignore_seed=True)


def test_sidecar_round_trip_and_up_to_date(tmp_path):
    out = tmp_path / "video.mp4"
    recipe = provenance.make_recipe("wan_video.py", {"prompt": "p", "seed": 5}, {}, {"rev": "x"})
    assert not provenance.is_up_to_date(out, recipe, seed_given=True)
    out.write_bytes(b"mp4")
    provenance.write_sidecar(out, recipe)
    assert provenance.read_recipe(out) == recipe
    assert provenance.is_up_to_date(out, recipe, seed_given=True)
    other_seed = provenance.make_recipe("wan_video.py", {"prompt": "p", "seed": 6}, {}, {"rev": "x"})
    assert not provenance.is_up_to_date(out, other_seed, seed_given=True)
    assert provenance.is_up_to_date(out, other_seed, seed_given=False)


def test_false_means_the_negative_form_for_negatable_options(tmp_path):
    import argparse

    p = _parser()
    p.add_argument("--style-maintain", action=argparse.BooleanOptionalAction, default=True)
    path = _write(tmp_path, [{"prompt": "a", "output": "a.png", "style_maintain": False},
                             {"prompt": "b", "output": "b.png", "style-maintain": True},
                             {"prompt": "c", "output": "c.png", "overwrite": False}])
    jobs = batch.parse_jobs(p, path, {"output"}, {"device"})
    assert [j.args.style_maintain for j in jobs] == [False, True, True]
    assert jobs[2].args.overwrite is False
