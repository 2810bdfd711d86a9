"""`--batch FILE.json`: many jobs, one model load.

A batch file is a JSON list of jobs, or an object `{"defaults": {...}, "jobs": [...]}`. A job uses the
script's own long option names as keys (`"prompt"`, `"reference": ["a.png", "b.png"]`, `"seed": 7`,
`"overwrite": true`), so a job means exactly what the same flags mean on the command line: each job is
turned back into arguments and parsed by the script's own parser. Relative paths in a job are relative
to the batch file's folder. Options that shape the model load (device, offload, weights...) apply to
the whole batch and are refused inside a job.

Each job's output is skipped when it exists with the same recipe (unless `--overwrite`); a failing job
is reported and the others go on; the result lists every job.
"""

from __future__ import annotations

import argparse
import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from .cli import CliError, ExitCode

log = logging.getLogger("producer")

MAX_JOBS = 10_000


@dataclass
class Job:
    index: int
    args: argparse.Namespace
    raw: dict


@dataclass
class BatchResult:
    jobs: list[dict] = field(default_factory=list)

    @property
    def failed(self) -> int:
        return sum(1 for j in self.jobs if j["status"] == "error")

    def to_dict(self) -> dict:
        counts: dict[str, int] = {}
        for j in self.jobs:
            counts[j["status"]] = counts.get(j["status"], 0) + 1
        return {"jobs": self.jobs, "counts": counts,
                "exit_code": int(ExitCode.PARTIAL if self.failed else ExitCode.OK)}


def read_batch_file(path: str | Path) -> list[dict]:
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise CliError(f"batch file {p} does not exist", fix="check the path") from None
    except UnicodeDecodeError as exc:
        raise CliError(f"batch file {p} is not UTF-8 text ({exc.reason} at byte {exc.start})",
                       fix="save it as UTF-8 JSON") from None
    except OSError as exc:
        raise CliError(f"cannot read batch file {p}: {exc.strerror}", fix="check the path and permissions") from None
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise CliError(f"batch file {p} is not valid JSON: {exc.msg} at line {exc.lineno} column {exc.colno}",
                       fix="fix the JSON (a list of job objects, or {\"defaults\": {...}, \"jobs\": [...]})") from None
    defaults: dict = {}
    if isinstance(data, dict):
        defaults = data.get("defaults", {})
        unknown = set(data) - {"defaults", "jobs"}
        if unknown or not isinstance(defaults, dict) or "jobs" not in data:
            raise CliError(f"batch file {p}: an object must have 'jobs' (and optionally 'defaults') only"
                           + (f"; unknown key(s): {', '.join(sorted(unknown))}" if unknown else ""),
                           fix="use a list of jobs, or {\"defaults\": {...}, \"jobs\": [...]}")
        data = data["jobs"]
    if not isinstance(data, list) or not data:
        raise CliError(f"batch file {p} holds no jobs", fix="give a non-empty JSON list of job objects")
    if len(data) > MAX_JOBS:
        raise CliError(f"batch file {p} has {len(data)} jobs; the limit is {MAX_JOBS}", fix="split it")
    jobs = []
    for i, job in enumerate(data):
        if not isinstance(job, dict):
            raise CliError(f"batch file {p}: job {i} is a {type(job).__name__}, not an object",
                           fix="each job is an object of option names, e.g. {\"prompt\": \"...\", \"output\": \"a.png\"}")
        jobs.append({**defaults, **job})
    return jobs


def job_to_argv(job: dict, index: int, base_dir: Path, path_options: set[str], batch_only: set[str]) -> list[str]:
    """Turn a job object into the argument list the script's parser understands."""
    argv: list[str] = []
    for key, value in job.items():
        if not isinstance(key, str) or not key or key.startswith("-"):
            raise CliError(f"job {index}: bad option name {key!r}", fix="use option names without dashes, e.g. \"prompt\"")
        option = key.replace("_", "-")
        if option in batch_only:
            raise CliError(f"job {index}: --{option} applies to the whole batch, not to one job",
                           fix=f"pass --{option} on the command line next to --batch")
        values = value if isinstance(value, list) else [value]
        for v in values:
            argv.extend(_option_args(option, v, index, base_dir, option in path_options))
    return argv


def _option_args(option: str, value: Any, index: int, base_dir: Path, is_path: bool) -> list[str]:
    if isinstance(value, bool):
        return [f"--{option}"] if value else []
    if value is None:
        return []
    if isinstance(value, (dict, list)):
        raise CliError(f"job {index}: {option} must be a string or number, not a {type(value).__name__}",
                       fix="see the script's --help for what each option takes")
    text = str(value)
    if is_path and text and not Path(text).is_absolute():
        text = str(base_dir / text)
    return [f"--{option}", text]


def parse_jobs(parser: argparse.ArgumentParser, batch_path: str | Path, path_options: set[str],
               batch_only: set[str]) -> list[Job | CliError]:
    """Every job parsed with the script's own parser; a job that does not parse is kept as its error."""
    base_dir = Path(batch_path).resolve().parent
    parsed: list[Job | CliError] = []
    for i, raw in enumerate(read_batch_file(batch_path)):
        try:
            argv = job_to_argv(raw, i, base_dir, path_options, batch_only)
            parsed.append(Job(i, parser.parse_args(argv), raw))
        except CliError as err:
            message = err.message if err.message.startswith("job ") else f"job {i}: {err.message}"
            parsed.append(CliError(message, err.fix, err.code, job=i))
    return parsed


def run_jobs(jobs: list[Job | CliError], run_one: Callable[[Job], dict],
             describe: Callable[[Job], str] = lambda job: f"job {job.index}") -> BatchResult:
    """Run every job; one failure does not stop the others (Ctrl-C and SIGTERM still do)."""
    result = BatchResult()
    total = len(jobs)
    for n, job in enumerate(jobs, 1):
        if isinstance(job, CliError):
            result.jobs.append(job.to_dict())
            log.error("[%d/%d] %s", n, total, job.message)
            continue
        log.info("[%d/%d] %s", n, total, describe(job))
        try:
            outcome = run_one(job)
        except CliError as err:
            outcome = err.to_dict()
            log.error("[%d/%d] job %d failed: %s", n, total, job.index, err.message)
        except Exception as exc:  # noqa: BLE001 - one job's failure must not lose the others
            if _is_oom(exc):
                raise  # the caller decides whether to retry with a more frugal plan
            outcome = CliError(f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}",
                               "rerun this job alone with --debug for details", ExitCode.FAILED).to_dict()
            log.error("[%d/%d] job %d failed: %s", n, total, job.index, outcome["error"])
        outcome.setdefault("job", job.index)
        result.jobs.append(outcome)
    return result


def _is_oom(exc: BaseException) -> bool:
    try:
        import torch

        return isinstance(exc, torch.OutOfMemoryError)
    except ImportError:
        return False
