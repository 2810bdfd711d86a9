"""A --batch file read into jobs: each job object turned back into the script's own arguments and parsed by its
parser, paths confined to the batch's production folder (see runs/batch.py for the whole batch)."""

from __future__ import annotations

import argparse
import contextlib
import difflib
import errno
import io
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from producer.errors import CliError, missing
from producer.files import paths
from producer.files.inputs import regular_file
from producer.values import load_json

MAX_JOBS = 10_000
# Options every batch-running script adds with add_batch_policy_args; they belong beside --batch.
POLICY_OPTIONS = {"on-oom", "allow-outside"}


@dataclass
class Job:
    index: int
    args: argparse.Namespace
    raw: dict


def read_batch_file(path: str | Path) -> list[dict]:
    p = regular_file(path, "batch file")
    try:
        text = p.read_text(encoding="utf-8")
    except (FileNotFoundError, NotADirectoryError):
        raise CliError(f"batch file {p} {missing(p)}", fix="check the path") from None
    except UnicodeDecodeError as exc:
        raise CliError(f"batch file {p} is not UTF-8 text ({exc.reason} at byte {exc.start})",
                       fix="save it as UTF-8 JSON") from None
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise CliError(f"batch file {p} {missing(p)}", fix="fix or remove the link") from None
        raise CliError(f"cannot read batch file {p}: {exc.strerror}", fix="check the path and permissions") from None
    try:
        data = load_json(text)
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


def job_to_argv(job: dict, index: int, base_dir: Path, path_options: set[str], batch_only: set[str],
                root: Path | None = None, options: set[str] | None = None) -> list[str]:
    """Turn a job object into the argument list the script's parser understands; with `root`, every path
    must stay inside it (producer.files.paths). With `options` (the parser's long option names), a key must be one
    of them exactly: argparse would read "out" as --output, past the path check that knows "output"."""
    argv: list[str] = []
    for key, value in job.items():
        if not isinstance(key, str) or not key or key.startswith("-"):
            raise CliError(f"job {index}: bad option name {key!r}", fix="use option names without dashes, e.g. \"prompt\"")
        option = key.replace("_", "-")
        if options is not None and option not in options:
            raise _unknown_key(key, option, index, options)
        if option in batch_only:
            raise CliError(f"job {index}: --{option} applies to the whole batch, not to one job",
                           fix=f"pass --{option} on the command line next to --batch")
        values = value if isinstance(value, list) else [value]
        for v in values:
            argv.extend(_option_args(option, v, index, base_dir, option in path_options, root))
    return argv


def long_options(parser: argparse.ArgumentParser) -> set[str]:
    """The parser's long option names without the dashes ("output", "no-style-maintain", ...)."""
    return {name[2:] for action in parser._actions for name in action.option_strings if name.startswith("--")}


def _unknown_key(key: str, option: str, index: int, options: set[str]) -> CliError:
    meant = sorted(o for o in options if o.startswith(option)) or difflib.get_close_matches(option, sorted(options))
    return CliError(f"job {index}: {key!r} is not an option" + (f"; did you mean {' or '.join(map(repr, meant))}?"
                                                                 if meant else ""),
                    "a job's keys are the script's long option names, written out in full (see its --help)")


def _option_args(option: str, value: Any, index: int, base_dir: Path, is_path: bool,
                 root: Path | None = None) -> list[str]:
    if isinstance(value, bool):
        return [f"--{option}"] if value else []
    if value is None:
        return []
    if isinstance(value, (dict, list)):
        raise CliError(f"job {index}: {option} must be a string or number, not a {type(value).__name__}",
                       fix="see the script's --help for what each option takes")
    text = str(value)
    if is_path and "\0" in text:  # checked here too: with --allow-outside no confinement looks at it
        raise CliError(f"job {index}: {option} {text!r} {missing(text)}", "remove the \\0 (\\u0000) from the name")
    if is_path and text and not Path(text).is_absolute():
        text = str(base_dir / text)
    if is_path and text and root is not None:
        paths.confine(text, root, f"job {index}: {option}")
    return [f"--{option}", text]


def _negations(job: dict, negatable: set[str]) -> dict:
    """`"style_maintain": false` means `--no-style-maintain` for options that have a negative form."""
    out = {}
    for key, value in job.items():
        if value is False and isinstance(key, str) and key.replace("-", "_") in negatable:
            out[f"no-{key}"] = True
        else:
            out[key] = value
    return out


def job_error(index: int, err: CliError) -> CliError:
    """`err` as job `index`'s failure: its message starts with "job N", and it carries the job's number."""
    message = err.message if err.message.startswith("job ") else f"job {index}: {err.message}"
    return CliError(message, err.fix, err.code, job=index)


def parse_jobs(parser: argparse.ArgumentParser, batch_path: str | Path, path_options: set[str],
               batch_only: set[str], allow_outside: bool = False) -> list[Job | CliError]:
    """Every job parsed with the script's own parser; a job that does not parse is kept as its error.
    Paths must stay inside the batch's production folder (paths.batch_root) unless `allow_outside`."""
    raw_jobs = read_batch_file(batch_path)  # first: a path that cannot be read (a link loop) is named as such
    base_dir = Path(batch_path).resolve().parent
    negatable = {a.dest for a in parser._actions if isinstance(a, argparse.BooleanOptionalAction)}
    root = None if allow_outside else paths.batch_root(batch_path)
    parsed: list[Job | CliError] = []
    for i, raw in enumerate(raw_jobs):
        try:
            argv = job_to_argv(_negations(raw, negatable), i, base_dir, path_options, batch_only | POLICY_OPTIONS,
                               root, long_options(parser))
            parsed.append(Job(i, _parse_job(parser, argv, i), raw))
        except CliError as err:
            parsed.append(job_error(i, err))
    return parsed


def _parse_job(parser: argparse.ArgumentParser, argv: list[str], index: int) -> argparse.Namespace:
    try:
        with contextlib.redirect_stdout(io.StringIO()):  # stdout carries the run's one JSON object, not help text
            return parser.parse_args(argv)
    except SystemExit:  # "help" (or an abbreviation of it) in a job: argparse printed help and exited
        raise CliError(f"job {index}: asks for --help, which a job cannot do",
                       "remove the \"help\" key; run the script with --help to read it") from None
