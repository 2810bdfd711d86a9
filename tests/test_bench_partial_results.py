"""The GPU benchmarks that time one form (or layer shape) after another rewrite their --out file after each, so a
run that `timeout` stops on the GPU machine keeps every row it measured: valid JSON with "complete": false
until the last row, then the same result as a whole run gives, with "complete": true.

The scripts run in this process at tiny size on the CPU, with a few forms each, so that a test can make the
second form fail (as a timeout would stop it) and read what the first left behind. A finished run's file (complete,
no temp file beside it) is checked where tests/test_bench.py runs each script whole. A benchmark configuration
whose child ends without a result is reported with the child's last lines."""

import json
import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))

# the benchmark scripts, importable once bench/ is on the path (as tests/test_bench.py imports them)
import dequant
import forward_profile
import vae_speed


class Stopped(BaseException):
    """What a timeout does to a run: it stops between forms, before anything after them runs."""


def stop_on_second_call(monkeypatch, module, name: str, out: Path, seen: list) -> None:
    """module.name measures one form; its second call reads the file the first left, then stops the run."""
    real = getattr(module, name)

    def measured(*args, **kwargs):
        if seen:
            seen.append(json.loads(out.read_text()))
            raise Stopped
        seen.append(None)
        return real(*args, **kwargs)

    monkeypatch.setattr(module, name, measured)


def no_compiling(monkeypatch) -> None:
    """dequant.py compiles its linears and the dequantization (a minute on the CPU; tests/test_bench.py covers
    that): eager here. compiled_dequant.compiled is patched too, not called: it caches its function for the
    process, and an eager one left there would stand in for the compiled one in later tests."""
    from producer.sizing import compiled_dequant

    monkeypatch.setattr(torch, "compile", lambda fn, **options: fn)
    monkeypatch.setattr(compiled_dequant, "compiled", lambda: compiled_dequant._dequantize)


def finished(out: Path) -> dict:
    assert [p.name for p in out.parent.iterdir()] == [out.name], "no temp file left beside the result"
    return json.loads(out.read_text())


RUNS = {  # script, its arguments, its per-form function, the keys of its result, the forms it measures
    "forward_profile": (forward_profile, ["--family", "wan", "--size", "tiny", "--device", "cpu", "--repeats", "1",
                                          "--forms", "bf16,gguf-q4"], "measure",
                        {"device", "torch", "family", "size", "rows"}, ["bf16", "gguf-q4"]),
    "dequant": (dequant, ["--size", "tiny", "--repeats", "1", "--types", "Q8_0,Q4_K"], "measure",
                {"device", "torch", "rows"}, ["Q8_0", "Q4_K"]),
    "vae_speed": (vae_speed, ["--size", "tiny", "--device", "cpu", "--repeats", "1", "--forms",
                              "bf16,channels-last"], "run_form", {"device", "torch", "size", "shape", "rows"},
                  ["bf16", "channels-last"]),
}


def forms_in(rows) -> list:
    return [r["type"] for r in rows] if isinstance(rows, list) else list(rows)


@pytest.mark.parametrize("script", RUNS)
def test_a_run_stopped_after_its_first_form_leaves_that_forms_result(tmp_path, monkeypatch, script):
    module, args, measure, keys, forms = RUNS[script]
    no_compiling(monkeypatch)
    out, seen = tmp_path / "result.json", []
    stop_on_second_call(monkeypatch, module, measure, out, seen)
    with pytest.raises(Stopped):
        module.main(args + ["--out", str(out)])
    left = finished(out)
    assert left == seen[1], "the file as it was when the second form began: nothing written since"
    assert set(left) == keys | {"complete"} and left["complete"] is False
    assert forms_in(left["rows"]) == forms[:1]


def test_a_child_that_ends_without_a_result_is_reported_as_an_error_with_its_last_words(monkeypatch):
    """A configuration's child that exits 0 without printing its result (an H100 run lost one so) is an error
    that keeps the child's last lines, not a KeyError in the benchmark's own report."""
    import argparse
    import subprocess

    import benchmark

    outputs = iter([('{"note": "a log line"}\n{not json\n', "last words\n"),
                    ('{"seconds": {"total": 1.5}, "cold_total": 2.0}\n{not json\n', "")])
    monkeypatch.setattr(benchmark.subprocess, "run",
                        lambda cmd, **kw: subprocess.CompletedProcess(cmd, 0, *next(outputs)))
    args = argparse.Namespace(size="tiny", repeats=1, device="cpu", measure_steps=None, from_disk=None, timeout=5,
                              batch_items=3)
    lost = benchmark._spawn(args, "wan-480p-4", "plan10x32")
    assert lost["error"].startswith("exit code 0: last words") and "a log line" in lost["error"]
    benchmark._print_line(lost)  # reported, not a KeyError
    assert benchmark._spawn(args, "wan-480p-4", "plan10x32")["seconds"] == {"total": 1.5}
