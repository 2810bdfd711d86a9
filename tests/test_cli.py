"""The shared CLI conventions: exit codes, --json on stdout only, errors with a fix, atomic outputs."""

import json
import os

import pytest
from producer import cli
from producer.files import outputs


def _parser():
    parser = cli.build_parser("demo.py", "demo")
    parser.add_argument("--value", type=int, default=1)
    cli.add_output_args(parser)
    return parser


def test_json_result_is_one_object_on_stdout(capsys):
    code = cli.run_main(_parser(), lambda args: {"value": args.value}, ["--value", "3", "--json"])
    out, err = capsys.readouterr()
    assert code == 0
    result = json.loads(out)
    assert result["value"] == 3 and result["status"] == "ok" and "seconds_total" in result
    assert out.count("\n") == 1


def test_usage_error_is_a_message_with_a_fix_and_exit_2(capsys):
    code = cli.run_main(_parser(), lambda args: {}, ["--value", "x", "--json"])
    out, err = capsys.readouterr()
    assert code == cli.ExitCode.USAGE
    assert "Traceback" not in err and "error:" in err and "--help" in err
    assert json.loads(out)["status"] == "error"


def test_cli_error_keeps_its_code(capsys):
    def run(args):
        raise cli.CliError("model not installed", "run setup", cli.ExitCode.MISSING_MODEL)

    assert cli.run_main(_parser(), run, []) == 3
    assert "fix: run setup" in capsys.readouterr().err


def test_unexpected_exception_shows_no_traceback(capsys):
    def run(args):
        raise RuntimeError("boom")

    assert cli.run_main(_parser(), run, []) == cli.ExitCode.FAILED
    err = capsys.readouterr().err
    assert "Traceback" not in err and "boom" in err and "--debug" in err


def test_out_of_memory_is_reported_as_such(capsys):
    import torch

    def run(args):
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")

    assert cli.run_main(_parser(), run, []) == cli.ExitCode.OUT_OF_MEMORY
    assert "--offload" in capsys.readouterr().err


def test_keyboard_interrupt_exits_130(capsys):
    def run(args):
        raise KeyboardInterrupt

    assert cli.run_main(_parser(), run, []) == 130


def test_atomic_output_leaves_nothing_on_failure(tmp_path):
    target = tmp_path / "out.txt"
    with pytest.raises(RuntimeError):
        with outputs.atomic_output(target) as tmp:
            tmp.write_text("half")
            raise RuntimeError("died mid-write")
    assert not target.exists() and os.listdir(tmp_path) == []


def test_atomic_output_keeps_the_old_file_until_the_new_one_is_complete(tmp_path):
    target = tmp_path / "out.txt"
    target.write_text("old")
    with pytest.raises(KeyboardInterrupt):
        with outputs.atomic_output(target) as tmp:
            tmp.write_text("new")
            raise KeyboardInterrupt
    assert target.read_text() == "old"
    with outputs.atomic_output(target) as tmp:
        assert tmp.suffix == ".txt"
        tmp.write_text("new")
    assert target.read_text() == "new"


def test_check_output(tmp_path):
    existing = tmp_path / "a.png"
    existing.write_bytes(b"x")
    with pytest.raises(cli.CliError, match="already exists"):
        outputs.check_output(existing, overwrite=False)
    assert outputs.check_output(existing, overwrite=True) == existing
    with pytest.raises(cli.CliError, match="does not exist") as info:
        outputs.check_output(tmp_path / "missing" / "a.png", overwrite=False)
    assert "mkdir -p" in info.value.fix


def test_seed_is_always_chosen_and_zero_is_a_seed():
    assert cli.resolve_seed(0) == 0
    seeds = {cli.resolve_seed(None) for _ in range(5)}
    assert all(0 <= s < 2**32 for s in seeds) and len(seeds) > 1


def test_a_missing_package_names_its_install_not_a_bug_report(monkeypatch):
    """Seen in the GPU smoke: a machine without controlnet_aux failed the pose step with "report it"."""
    import sys

    monkeypatch.setitem(sys.modules, "controlnet_aux", None)  # as if it were not installed
    with pytest.raises(ModuleNotFoundError) as caught:
        import controlnet_aux.open_pose  # noqa: F401
    err = cli.unexpected_error(caught.value)
    assert "the Python package controlnet_aux is not installed" in err.message
    assert "pip install" in err.fix and "requirements.txt" in err.fix and "report" not in err.fix
    monkeypatch.setitem(sys.modules, "PIL", None)
    with pytest.raises(ModuleNotFoundError) as caught:
        import PIL.Image  # noqa: F401
    assert "pip install pillow" in cli.unexpected_error(caught.value).fix  # the distribution's name, not PIL


def test_a_switch_in_the_environment_reads_the_usual_words_and_falls_back_to_its_default(monkeypatch):
    from producer.values import env_switch

    for word, default, expected in (("1", False, True), ("On", False, True), (" yes ", False, True),
                                    ("0", True, False), ("OFF", True, False), ("no", True, False),
                                    ("maybe", True, True), ("maybe", False, False), ("", True, True)):
        monkeypatch.setenv("PRODUCER_SWITCH", word)
        assert env_switch("PRODUCER_SWITCH", default) is expected, word
    monkeypatch.delenv("PRODUCER_SWITCH")
    assert env_switch("PRODUCER_SWITCH", True) and not env_switch("PRODUCER_SWITCH", False)
