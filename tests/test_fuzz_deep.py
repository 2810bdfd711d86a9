"""Fuzzing past "not installed": the rules of test_fuzz.py (tests/fuzzing.py) with the stand-in models
installed, so that cases go through loading, denoising, decoding, the output, its recipe and its review files.

Cases start from a command that works and keep the run small (sizes of 16 to 64 pixels, a few steps and
frames: the values in SMALL, now and then anything at all), so most of them reach the model; each test
requires a share of its cases to get there (its `reaches` mark). A case that succeeds must leave a whole
output: the picture with its recipe inside, or the clip with its recipe and review pictures. Left out besides
test_fuzz.py's: the options that make a run long or start other processes (LONG).
"""

import itertools
import json
from pathlib import Path

import pytest
from fuzzing import batch_jobs, fuzz_settings, option_args, run_case, text
from hypothesis import given
from hypothesis import strategies as st
from producer.files import provenance
from producer.makers import qwen_image, wan_video

SMALL = {"size": ["64x64", "80x64", "64x80", "64x48", "0x0", "65x65", "64"], "steps": ["1", "2", "3", "0", "-1"],
         "frames": ["5", "9", "4", "1", "0"], "duration": ["0.3", "0.5", "0", "nan", "1e308"],
         "seed": ["0", "7", "-1", "4294967295", "x"], "cfg": ["1", "2.5", "0", "-1", "nan"],
         "guidance": ["1", "3.5", "0", "inf"], "guidance_2": ["1", "2"], "shift": ["3", "5", "0", "nan", "-2"],
         "control_strength": ["0.5", "1", "2", "nan"], "reference": ["in/kf.png", "in/kf2.png"],
         "pose": ["in/kf.png", "in/kf2.png"], "style_image": ["in/kf2.png"], "style_ref": ["in/style.json"],
         "start_frame": ["in/kf.png"], "end_frame": ["in/kf2.png", "in/kf.png"]}
# A preset or width/height makes a full-size frame (minutes on the stand-ins); the rest start other processes,
# compile, need a GPU, LoRA files (test_lora*.py), pose annotators (test_pose.py) or --batch, point at other models,
# or name the output (each case gets its own).
LONG = ("preset", "width", "height", "compile", "gpus", "workers", "context_parallel", "batch", "models_dir",
        "device", "debug", "help", "lora", "fp8_matmul", "on_oom", "output", "allow_outside", "pose",
        "pose_method")
QUIET = ["--json", "--quiet", "--overwrite"]
QWEN_BASE = ["--prompt", "a fox in the snow", "--size", "64x64", "--steps", "2", "--lightning", "off", "--cfg", "2"]
WAN_BASE = ["--start-frame", "in/kf.png", "--prompt", "waves", "--size", "64x64", "--frames", "5", "--steps", "2",
            "--distill", "off", "--guidance", "1", "--guidance-2", "1"]
ORDINAL = itertools.count()  # a new output name for every case: a case never meets an earlier case's output
reaches = pytest.mark.reaches


def whole(report: dict, world: Path) -> None:
    """A success left its whole output: the recipe inside or beside it, and every review file it names."""
    jobs = report.get("jobs") or [report]
    for job in jobs:
        if job.get("status") == "skipped":
            continue
        for key in ("output", "first_frame", "last_frame", "contact_sheet", "provenance"):
            if key in job:
                assert (world / job[key]).stat().st_size > 0, (key, job)
        assert provenance.read_recipe(world / job["output"]), job


def one_run(main, argv: list[str], world: Path, name: str, suffix: str) -> None:
    """A case with an output of its own (an -o the case brings comes later and wins)."""
    case = run_case(main, ["-o", f"out/deep-{next(ORDINAL)}{suffix}", *argv], world, name)
    if case.stage == "done" and case.report:
        whole(case.report, world)


@reaches(0.5, "denoise", "done")
@pytest.mark.usefixtures("standin_hf_home", "qwen_standin_areas")
@fuzz_settings(40)
@given(option_args(qwen_image.build(), skip=LONG, base=QWEN_BASE + QUIET, overrides=SMALL, always_base=True))
def test_any_qwen_arguments_go_through_the_model_cleanly(in_world, stages, argv):
    one_run(qwen_image.main, argv, in_world, stages, ".png")


@reaches(0.5, "denoise", "done")
@pytest.mark.usefixtures("standin_hf_home")
@fuzz_settings(12)
@given(option_args(wan_video.build(), skip=LONG, base=WAN_BASE + QUIET, overrides=SMALL, always_base=True))
def test_any_wan_arguments_go_through_the_model_cleanly(in_world, stages, argv):
    one_run(wan_video.main, argv, in_world, stages, ".mp4")


@reaches(0.5, "denoise", "done", "report")
@pytest.mark.usefixtures("standin_hf_home", "qwen_standin_areas")
@fuzz_settings(15)
@given(st.lists(batch_jobs(qwen_image.build(), {"prompt": "a fox", "size": "64x64", "steps": 2,
                                                               "lightning": "off"}, overrides=SMALL,
                           skip=LONG), min_size=1, max_size=2))
def test_any_qwen_batch_goes_through_the_model_cleanly(in_world, stages, jobs):
    for job in jobs:
        job["output"] = f"out/batch-{next(ORDINAL)}.png"
    batch = in_world / "deep-batch.json"
    batch.write_text(json.dumps(jobs), encoding="utf-8", errors="surrogatepass")
    try:
        case = run_case(qwen_image.main, ["--batch", str(batch), *QUIET], in_world, stages)
    finally:
        batch.unlink()
    if case.stage == "done":
        whole(case.report, in_world)


@reaches(0.5, "done")
@pytest.mark.usefixtures("standin_hf_home")
@fuzz_settings(25)
@given(text(), text())
def test_any_prompt_reaches_the_model_cleanly(in_world, stages, prompt, negative):
    """Any prompt and negative prompt through the stand-in Qwen model (its tokenizer, the 1024-token limit,
    true CFG encoding the negative too). Non-UTF-8 text crashed the tokenizer here."""
    run_case(qwen_image.main, ["--prompt", prompt, "--negative-prompt", negative, "-o", "out/prompted.png",
                               *QWEN_BASE[2:], *QUIET], in_world, stages)
