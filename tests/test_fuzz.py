"""Garbage in, a clean error out: hypothesis over every script's arguments and over batch, style and
assets JSON, each case run in-process through the script's main(argv) with no model installed (so a
generation that passes every check ends at "not installed", exit 3, after its inputs were read). The rules
each case must keep, and the stages cases are counted at, are in tests/fuzzing.py; test_fuzz_deep.py runs
cases through the stand-in models, past "not installed".

Each test requires that a share of its cases gets past the argument parser, so that the fuzzing reaches the
code that reads files and values rather than only argparse (docs/reliability.md quotes the figures). Left out:
--parallel-worker (hidden, the coordinator's way to start a worker), and because they start long work when
they succeed: production.py demo (the whole sample film), validate_diffusers.py --smoke and --smoke-dir
(every script end to end), and --workers or --context-parallel of 2 or more (worker processes).
"""

import json
import os
from pathlib import Path

import pytest
from fuzzing import JSON_SCALARS, PATHS, any_json, batch_jobs, fuzz_settings, option_args, run_case, sometimes, text
from hypothesis import given
from hypothesis import strategies as st
from producer.cli import ExitCode
from producer.commands import production, setup_diffusers, validate_diffusers
from producer.makers import assemble_video, qwen_image, wan_video

BASES = {  # a command that works (up to "not installed"), which the cases then vary
    "qwen_image": ["--prompt", "a fox", "-o", "out/new.png", "-r", "in/kf.png"],
    "wan_video": ["--start-frame", "in/kf.png", "--prompt", "waves", "-o", "out/new.mp4"],
    "assemble_video": ["--clips", "in/clip.mp4", "in/clip.mp4", "--review"],  # -o (an encode) comes as an option
    "setup_diffusers": ["--check"], "validate_diffusers": []}
PAST_PARSER = ("inputs", "model", "denoise", "done", "report")
reaches = pytest.mark.reaches


# ---------------------------------------------------------------- the scripts' arguments


@reaches(0.5, *PAST_PARSER)
@fuzz_settings(250)
@given(option_args(qwen_image.build(), base=BASES["qwen_image"]))
def test_any_qwen_arguments_end_cleanly(in_world, stages, argv):
    run_case(qwen_image.main, argv, in_world, stages)


@reaches(0.5, *PAST_PARSER)
@fuzz_settings(250)
@given(option_args(wan_video.build(), base=BASES["wan_video"]))
def test_any_wan_arguments_end_cleanly(in_world, stages, argv):
    run_case(wan_video.main, argv, in_world, stages)


@reaches(0.5, *PAST_PARSER)
@fuzz_settings(150)
@given(st.lists(st.sampled_from(PATHS), max_size=1), option_args(assemble_video.build(), base=BASES["assemble_video"]))
def test_any_assemble_arguments_end_cleanly(in_world, stages, positional, argv):
    run_case(assemble_video.main, positional + argv, in_world, stages)


@reaches(0.5, *PAST_PARSER)
@fuzz_settings(100)
@given(option_args(setup_diffusers.build(), base=BASES["setup_diffusers"]))
def test_any_setup_arguments_end_cleanly(in_world, stages, argv):
    run_case(setup_diffusers.main, argv, in_world, stages)


@reaches(0.5, *PAST_PARSER)
@fuzz_settings(50)
@given(option_args(validate_diffusers.build(), skip=("smoke", "smoke_dir"), base=BASES["validate_diffusers"]))
def test_any_validate_arguments_end_cleanly(in_world, stages, argv):
    run_case(validate_diffusers.main, argv, in_world, stages)


def production_commands():
    parser = production.build()
    subparsers = next(a for a in parser._actions if a.dest == "command").choices
    extra = {"approve": st.lists(st.one_of(st.sampled_from(["philosophy", "scenes", "assets", "keyframe:KF-A",
                                                            "clip:scene-01", "film"]), text()), min_size=1,
                                 max_size=3),
             "retake": st.one_of(st.sampled_from(["keyframe:KF-A", "clip:scene-02", "asset:characters/keeper"]),
                                 text()).map(lambda v: [v])}

    def command_line(name):
        folder = sometimes(st.sampled_from(["in", "nowhere", "in/kf.png", ""]), st.just("film"), one_in=4)
        return st.tuples(folder, extra.get(name, st.just([])), option_args(subparsers[name], most=3)).map(
            lambda t: [name, t[0], *t[1], *t[2]])

    commands = [c for c in subparsers if c != "demo"]
    return sometimes(option_args(parser), st.sampled_from(commands).flatmap(command_line))


@reaches(0.5, *PAST_PARSER)
@fuzz_settings(150)
@given(production_commands())
def test_any_production_command_ends_cleanly(in_world, stages, argv):
    run_case(production.main, argv, in_world, stages)


# ---------------------------------------------------------------- JSON files: batch, style, assets


def batch_files(parser, base: dict):
    """Batch files: mostly jobs that would work (`base`) with options added, sometimes any JSON at all."""
    jobs = st.lists(batch_jobs(parser, base), min_size=1, max_size=3)
    return sometimes(st.one_of(st.fixed_dictionaries({"defaults": batch_jobs(parser, base), "jobs": jobs}),
                               any_json(["jobs", "defaults"])), jobs, one_in=4)


BATCH_BASES = {"qwen_image": {"prompt": "a fox", "output": "out/new.png", "reference": "in/kf.png"},
               "wan_video": {"start_frame": "in/kf.png", "prompt": "waves", "output": "out/new.mp4"}}
BATCH_FLAGS = st.sampled_from([[], ["--overwrite"], ["--allow-outside"], ["--on-oom", "retry"]])


def run_batch(main, content, flags, world, name):
    batch = world / "fuzz-batch.json"  # in the world's root: the jobs' relative paths are the world's
    batch.write_text(json.dumps(content), encoding="utf-8", errors="surrogatepass")
    try:
        return run_case(main, ["--batch", str(batch), "--json", *flags], world, name)
    finally:
        batch.unlink()


@reaches(0.5, *PAST_PARSER)
@fuzz_settings(150)
@given(batch_files(qwen_image.build(), BATCH_BASES["qwen_image"]), BATCH_FLAGS)
def test_any_qwen_batch_file_ends_cleanly(in_world, stages, content, flags):
    run_batch(qwen_image.main, content, flags, in_world, stages)


@reaches(0.5, *PAST_PARSER)
@fuzz_settings(150)
@given(batch_files(wan_video.build(), BATCH_BASES["wan_video"]), BATCH_FLAGS)
def test_any_wan_batch_file_ends_cleanly(in_world, stages, content, flags):
    run_batch(wan_video.main, content, flags, in_world, stages)


STYLE_KEYS = ["project_name", "visual_style", "motion_language", "subject_consistency", "constraints", "art_style",
              "color_palette", "lighting", "composition", "movement_quality", "pacing", "camera_style", "main_subject",
              "environment", "avoid", "maintain", "_notes", "$schema"]
STYLE_SECTIONS = {"visual_style": ["art_style", "color_palette", "lighting", "composition"],
                  "motion_language": ["movement_quality", "pacing", "camera_style"],
                  "subject_consistency": ["main_subject", "environment"]}
PLAIN = st.text(st.characters(blacklist_categories=("Cs", "Cc")), min_size=1, max_size=30)
STYLE_TEXT = sometimes(st.one_of(JSON_SCALARS, text(allow_nul=True)), PLAIN, one_in=12)
SHAPED_STYLE = st.fixed_dictionaries(  # the schema's shape, with any text (now and then any JSON) as values
    {"visual_style": st.fixed_dictionaries({"art_style": STYLE_TEXT},
                                           optional={k: STYLE_TEXT for k in STYLE_SECTIONS["visual_style"][1:]})},
    optional={"project_name": STYLE_TEXT,
              **{name: st.fixed_dictionaries({}, optional={key: STYLE_TEXT for key in keys})
                 for name, keys in STYLE_SECTIONS.items() if name != "visual_style"},
              "constraints": st.fixed_dictionaries({}, optional={
                  key: sometimes(any_json(), st.lists(STYLE_TEXT, max_size=40), one_in=8)
                  for key in ("avoid", "maintain")})})


@reaches(0.5, "model")  # a style file that reads well leaves the run at "not installed"
@fuzz_settings(150)
@given(sometimes(st.one_of(any_json(STYLE_KEYS), st.binary(max_size=64)), SHAPED_STYLE, one_in=6))
def test_any_style_file_ends_cleanly(in_world, stages, content):
    style = in_world / "out" / "fuzz-style.json"
    if isinstance(content, bytes):
        style.write_bytes(content)
    else:
        style.write_text(json.dumps(content), encoding="utf-8", errors="surrogatepass")
    run_case(qwen_image.main, ["--prompt", "a fox", "-o", "out/s.png", "--style-ref", str(style), "--json"],
             in_world, stages)


ASSET_KEYS = ["characters", "backgrounds", "poses", "styles", "objects", "keeper", "lighthouse", "description", "image",
              "ref_image", "identity_ref", "_comment"]
ASSET_IMAGES = ["assets/characters/keeper.png", "../in/kf.png", "in/kf.png", "assets/x.json", "/etc/passwd"]


@fuzz_settings(150)
@given(st.one_of(any_json(ASSET_KEYS + ASSET_IMAGES), st.binary(max_size=64)),
       st.sampled_from(["check", "status", "next"]))
def test_any_assets_file_ends_cleanly(in_world, stages, content, command):
    assets = in_world / "film" / "assets.json"
    original = assets.read_bytes()
    try:
        if isinstance(content, bytes):
            assets.write_bytes(content)
        else:
            assets.write_text(json.dumps(content), encoding="utf-8", errors="surrogatepass")
        run_case(production.main, [command, "film", "--json"], in_world, stages)
    finally:
        assets.write_bytes(original)


# ---------------------------------------------------------------- what the fuzzing found, kept as fixed cases


def found_cases(world: Path) -> list:
    kf, clip = str(world / "in" / "kf.png"), str(world / "in" / "clip.mp4")
    return [  # (script, argv, exit code): each crashed (a traceback or "report it") before its fix
        (qwen_image, ["-p", "x", "-o", "/"], ExitCode.USAGE),  # the output lock named a folder
        (wan_video, ["--start-frame", kf, "--prompt", "w", "-o", ""], ExitCode.USAGE),  # Path("") is "."
        (wan_video, ["--start-frame", kf, "--prompt", "w", "-o", "/"], ExitCode.USAGE),
        (assemble_video, ["--clips", clip, "-o", str(world / "out" / ("a" * 300 + ".mp4"))], ExitCode.USAGE),
        (qwen_image, ["-p", "x", "-o", str(world / "out" / ("b" * 250 + ".png"))], ExitCode.USAGE),  # + lock name
        (setup_diffusers, ["--models-dir", "~nosuchuser/models"], ExitCode.USAGE),
        (qwen_image, ["-p", "x", "-o", os.fsdecode(b"\xff\xfe.png"), "--json"], ExitCode.MISSING_MODEL),  # JSON out
        (production, ["approve", str(world / "film"), "philosophy", "assets", "--json"], ExitCode.USAGE),
        (qwen_image, ["-p", "x", "-o", str(world / "out" / "l.png"), "--lora", "~nosuchuser/a.safetensors"],
         ExitCode.USAGE),  # pathlib cannot expand ~NAME
        (setup_diffusers, ["--download", "--token", "\x80"], ExitCode.USAGE),  # not a header value
        # Text no tokenizer takes (found on the stand-in models, past "not installed"): refused as arguments.
        (qwen_image, ["-p", os.fsdecode(b"a fox \xff"), "-o", str(world / "out" / "t.png")], ExitCode.USAGE),
        (wan_video, ["--start-frame", kf, "--prompt", "w", "--negative-prompt", os.fsdecode(b"\xfe"), "-o",
                     str(world / "out" / "t.mp4")], ExitCode.USAGE),
        (assemble_video, ["--clips", clip, "--title", os.fsdecode(b"\xff"), "-o", str(world / "out" / "t.mp4")],
         ExitCode.USAGE),
    ]


def test_what_fuzzing_found_stays_fixed(world):
    for module, argv, code in found_cases(world):
        assert run_case(module.main, argv, world).code == code, argv


def test_text_that_is_not_utf8_in_style_and_assets_files_is_a_problem(world):
    style = world / "in" / "surrogate-style.json"
    style.write_text('{"visual_style": {"art_style": "ink \\ud800 wash"}}')
    argv = ["--prompt", "x", "-o", str(world / "out" / "s.png"), "--style-ref", str(style), "--json"]
    assert run_case(qwen_image.main, argv, world).code == ExitCode.USAGE
    assets = world / "film" / "assets.json"
    original = assets.read_bytes()
    data = json.loads(original)
    data["characters"]["keeper"]["description"] = "an old \ud800 keeper"
    assets.write_text(json.dumps(data))
    try:
        assert run_case(production.main, ["check", str(world / "film"), "--json"], world).code == ExitCode.USAGE
    finally:
        assets.write_bytes(original)


def test_a_batch_job_asking_for_help_is_a_job_error(world):
    batch = world / "in" / "help-job.json"
    batch.write_text(json.dumps([{"help": True}, {"hel": 1, "prompt": "x"}]))
    assert run_case(qwen_image.main, ["--batch", str(batch), "--json"], world).code == ExitCode.USAGE  # every job: same reason


def test_a_file_named_dash_is_a_file_not_stdin(world, monkeypatch):
    import time

    monkeypatch.chdir(world / "out")
    Path("-").write_text("not a video")
    started = time.perf_counter()
    try:
        run_case(assemble_video.main, ["--clips", "-", "--review", "--json"], world)  # reported as not a video
    finally:
        Path("-").unlink()
    assert time.perf_counter() - started < 5  # ffmpeg read the file "-", not stdin (where it waited 10 s)


def test_json_means_the_flag_not_a_value(capsys):
    from producer import cli

    parser = cli.build_parser("demo.py", "demo")
    parser.add_argument("item")
    cli.add_output_args(parser)
    assert cli.run_main(parser, lambda a: {"item": a.item}, ["--", "--json"], lambda r: f"item {r['item']}") == 0
    assert capsys.readouterr().out == "item --json\n"
