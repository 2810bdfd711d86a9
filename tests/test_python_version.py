"""An older Python gets a message that names the fix and exit code 1, before any module of the package is read
(the package uses enum.StrEnum, new in 3.11: the import alone would otherwise end in a traceback)."""

from __future__ import annotations

import importlib
import sys

import producer
import pytest


def test_an_older_python_is_refused_with_the_fix(monkeypatch, capsys):
    monkeypatch.setattr(sys, "version_info", (3, 10, 14, "final", 0))
    with pytest.raises(SystemExit) as stop:
        importlib.reload(producer)
    err = capsys.readouterr().err
    assert stop.value.code == 1
    assert err.startswith("error: these scripts need Python 3.11 or newer; this is Python ")
    assert "fix: install Python 3.11+" in err


def test_this_python_passes_and_setup_reports_the_same_minimum():
    from producer.modelfiles import environment

    assert importlib.reload(producer).MIN_PYTHON == (3, 11)
    info = environment.python_info()
    assert info["ok"] is (sys.version_info[:2] >= producer.MIN_PYTHON) and info["problem"] is None
