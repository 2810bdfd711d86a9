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
