"""`--batch FILE.json`: many jobs, one model load.

A batch file is a JSON list of jobs, or an object `{"defaults": {...}, "jobs": [...]}`. A job uses the
script's own long option names as keys (`"prompt"`, `"reference": ["a.png", "b.png"]`, `"seed": 7`,
`"overwrite": true`), so a job means exactly what the same flags mean on the command line: each job is
turned back into arguments and parsed by the script's own parser. A key must be an option's full name
("out" is refused, with "output" suggested): an abbreviation would pass for the option it starts, past
the path checks below. Relative paths in a job are relative
to the batch file's folder. Options that shape the model load (device, offload, weights...) apply to
the whole batch and are refused inside a job.

Each job's output is skipped when it exists with the same recipe (unless `--overwrite`), so a batch that
was interrupted continues where it stopped when run again. A failing job is reported and the others go
on; the result lists every job. Two failures stop the batch instead, because every later job would fail
the same way after its full load and denoise: a full disk, and running out of memory. Out of memory,
`--on-oom stop` (the default) reports the job with the plan used and the next one to try and marks the
rest "not_run" (exit 4); `--on-oom retry` reloads the model under the next more frugal plan
(memory.next_offload) and runs the job once more; the batch then goes on under that plan. Stop is the
default because a more frugal plan can be several times slower: the user decides, and the rerun skips
what is finished.

Both generation scripts run their batch through one Runner: resolve every job, load the model, then for each
job skip it when its output is up to date, else generate and write it under the output's lock. A script
subclasses Runner with its family's parts (resolving a job, checking and making its output, loading and
reloading its model).

Paths in a job are confined to the batch's production folder (producer.files.paths): no '..', no absolute
path or symlink elsewhere, unless `--allow-outside` is given beside --batch.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
from collections.abc import Callable, Iterable, Sized
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from producer.cli import naming_plan, unexpected_error
from producer.errors import CliError, ExitCode
from producer.files import locks, paths
from producer.files.held_signals import deliver_late_signal
from producer.runs.batchfile import (  # noqa: F401 - the batch file's reading, used through this module too
    MAX_JOBS,
    POLICY_OPTIONS,
    Job,
    job_error,
    job_to_argv,
    long_options,
    parse_jobs,
    read_batch_file,
)
from producer.runs.behind import Deferred

log = logging.getLogger("producer")

OOM_CHOICES = ("stop", "retry")


@dataclass
class BatchResult:
    jobs: list[dict] = field(default_factory=list)

    stopped: CliError | None = None  # the failure that stopped the batch (out of memory, disk full)
    on_result: Callable[[dict, BatchResult], None] | None = field(default=None, repr=False)  # see run_jobs

    @property
    def failed(self) -> int:
        return sum(1 for j in self.jobs if j["status"] == "error")

    def to_dict(self) -> dict:
        counts: dict[str, int] = {}
        for j in self.jobs:
            counts[j["status"]] = counts.get(j["status"], 0) + 1
        code = self.stopped.code if self.stopped else ExitCode.PARTIAL if self.failed else ExitCode.OK
        out = {"jobs": self.jobs, "counts": counts, "exit_code": int(code)}
        if self.stopped:
            out.update(stopped=self.stopped.message, fix=self.stopped.fix)
        elif self.jobs and self.failed == len(self.jobs) and len({j.get("exit_code") for j in self.jobs}) == 1:
            # Every job failed for the same reason (a missing model): that reason's exit code, as when one job fails.
            first = self.jobs[0]
            out.update(status="error", exit_code=int(first.get("exit_code") or ExitCode.FAILED),
                       error=f"every job failed: {first.get('error')}", fix=first.get("fix"))
        return out


def add_batch_policy_args(group) -> None:
    """--on-oom and --allow-outside, for a script's --batch (see the module doc)."""
    group.add_argument("--on-oom", choices=OOM_CHOICES, default="stop",
                       help="--batch out of memory: stop (default: report the job and the next plan to try, keep "
                            "what is finished) or retry (reload under the next more frugal plan, run the job again "
                            "once, go on under that plan)")
    group.add_argument(paths.ALLOW_FLAG, action="store_true",
                       help="--batch: let the batch file name files outside its production folder (its own folder, "
                            "or the production above .production/)")


def refuse_policy_without_batch(args: argparse.Namespace) -> None:
    for option in sorted(POLICY_OPTIONS):
        dest = option.replace("-", "_")
        if getattr(args, dest, None) not in (None, False, "stop"):
            raise CliError(f"--{option} applies to --batch runs only",
                           f"drop --{option}, or run the jobs with --batch FILE.json")


def refuse_job_options(parser: argparse.ArgumentParser, args: argparse.Namespace, batch_only: set[str]) -> None:
    """With --batch the command line carries only batch-wide options (`batch_only`, and --overwrite for every
    job); a job option there would otherwise be ignored without a word. One rule for both generation scripts."""
    batch_wide = {option.replace("-", "_") for option in batch_only} | {"help", "overwrite"}
    given = [a.option_strings[-1] for a in parser._actions
             if a.dest not in batch_wide and getattr(args, a.dest, a.default) != a.default]
    if given:
        raise CliError(f"{', '.join(given)} beside --batch would not reach the jobs",
                       'put it in the batch file, for every job: {"defaults": {"preset": "480p", ...}, "jobs": [...]}')


def read_jobs(build: Callable[[], argparse.ArgumentParser], args: argparse.Namespace, path_options: set[str],
              batch_only: set[str]) -> list[Job | CliError]:
    """The jobs of `args.batch`, each parsed by the script's parser (`build()`), after refusing job options
    beside --batch; --overwrite on the command line reaches every job."""
    refuse_job_options(build(), args, batch_only)
    entries = parse_jobs(build(), args.batch, path_options, batch_only, args.allow_outside)
    for entry in entries:
        if isinstance(entry, Job):
            entry.args.overwrite = entry.args.overwrite or args.overwrite
    return entries


def run_jobs(jobs: Iterable[Job | CliError], run_one: Callable[[Job], dict | Deferred],
             describe: Callable[[Job], str] = lambda job: f"job {job.index}",
             retry_oom: Callable[[Job], bool] | None = None,
             on_result: Callable[[dict, BatchResult], None] | None = None) -> BatchResult:
    """Run every job; one failure does not stop the others (Ctrl-C and SIGTERM still do).

    Out of memory or a full disk stops the batch (see the module doc): the job is reported and the jobs
    after it are "not_run". With `retry_oom` (see oom_retry), a job that ran out of memory runs once more
    when retry_oom(job) has reloaded the model under a more frugal plan. A job whose files are finished in the
    background (run_one returned a Deferred: runs/behind.py) has them put in place once the next job is made,
    or as the batch ends, stops or is interrupted. `on_result(outcome, result)` sees each job's final result as
    it is known (a scene worker records it for the others); `jobs` may be claimed lazily (an iterator).
    """
    result = BatchResult(on_result=on_result)
    pending: list[tuple[int, Job, int, Deferred]] = []  # a job made whose files are not in place yet (at most one)
    total = len(jobs) if isinstance(jobs, Sized) else "?"
    try:
        for n, job in enumerate(jobs, 1):
            if result.stopped is not None:
                _final({"status": "not_run", "job": index_of(job), "reason": result.stopped.message}, result)
                continue
            deliver_late_signal()  # Ctrl-C or SIGTERM during the last job's commit stops the batch here
            if isinstance(job, CliError):
                log.error("[%d/%s] %s", n, total, job.message)
                _final(job.to_dict(), result)
                continue
            log.info("[%d/%s] %s", n, total, describe(job))
            outcome = _attempt(job, run_one, retry_oom, result)
            _settle(pending, result, total)  # the previous job's files, now that this one is made
            if isinstance(outcome, Deferred):
                if result.stopped is None:
                    pending.append((n, job, len(result.jobs), outcome))
                    result.jobs.append({"status": "pending", "job": job.index})
                    continue
                outcome.abandon()  # the previous job's files met a full disk: this one's would too
                outcome = {"status": "not_run", "reason": result.stopped.message}
            _record(outcome, n, job, result, total)
    finally:
        _settle(pending, result, total)
    return result


def _record(outcome: dict, n: int, job: Job, result: BatchResult, total, slot: int | None = None) -> None:
    if outcome.get("status") == "error":
        log.error("[%d/%s] job %d failed: %s", n, total, job.index, outcome["error"])
    outcome.setdefault("job", job.index)
    _final(outcome, result, slot)


def _final(outcome: dict, result: BatchResult, slot: int | None = None) -> None:
    """A job's final result, in its place in the report (`slot`: where it waited as "pending")."""
    if slot is None:
        result.jobs.append(outcome)
    else:
        result.jobs[slot] = outcome
    if result.on_result is not None:
        result.on_result(outcome, result)


def _settle(pending: list, result: BatchResult, total) -> None:
    """Put the pending job's files in place (see run_jobs); its failure is recorded as the job's own."""
    if not pending:
        return
    n, job, slot, deferred = pending.pop()
    try:
        outcome = deferred.settle()
    except CliError as err:
        outcome = _failed(job, err, result, None)
    except Exception as exc:  # noqa: BLE001 - one job's failure must not lose the others
        outcome = _failed(job, _as_cli_error(exc), result, None)
    _record(outcome, n, job, result, total, slot)


def _attempt(job: Job, run_one: Callable[[Job], dict | Deferred], retry_oom, result: BatchResult) -> dict | Deferred:
    for attempt in (1, 2):
        try:
            return run_one(job)
        except CliError as err:
            failure = err
        except Exception as exc:  # noqa: BLE001 - one job's failure must not lose the others
            failure = _as_cli_error(exc)
        if failure.code == ExitCode.OUT_OF_MEMORY and attempt == 1 and retry_oom is not None and retry_oom(job):
            continue
        return _failed(job, failure, result, retry_oom)
    raise AssertionError("unreachable")


def _failed(job: Job, failure: CliError, result: BatchResult, retry_oom) -> dict:
    """The job's failure as its result; out of memory or a full disk stops the batch (result.stopped)."""
    oom = failure.code == ExitCode.OUT_OF_MEMORY
    if (oom or failure.details.get("disk_full")) and result.stopped is None:
        stop = f"the batch stopped at job {job.index}: {failure.message}"
        fix = failure.fix + ("" if retry_oom or not oom else "; or rerun the batch with --on-oom retry")
        result.stopped = CliError(stop, fix + " (finished jobs are skipped when the batch runs again)",
                                  failure.code)
        failure = CliError(failure.message, fix, failure.code, **failure.details)
    return failure.to_dict()


def _as_cli_error(exc: Exception) -> CliError:
    err = unexpected_error(exc)
    if err.fix.endswith("report it with that output"):  # a crash: the job alone shows it best
        err.fix = "rerun this job alone with --debug for details; if it persists, report it with that output"
    return err


def index_of(job: Job | CliError) -> int:
    return job.index if isinstance(job, Job) else job.details.get("job", -1)


def oom_retry(choice: str, current_plan: Callable[[], Any], reload: Callable[[str], None]) -> Callable[[Job], bool] | None:
    """`retry_oom` for run_jobs under `--on-oom CHOICE`: reload(offload) loads the model under the next more
    frugal plan after current_plan(); False when there is none (the batch then stops)."""
    if choice != "retry":
        return None
    from producer.sizing.memory import next_offload

    def retry(job: Job) -> bool:
        plan = current_plan()
        frugal = next_offload(plan) if plan is not None else None
        if frugal is None:
            log.error("job %d ran out of memory and no more frugal plan is left", job.index)
            return False
        log.warning("job %d ran out of memory with plan %s: reloading with --offload %s and running it again",
                    job.index, plan.name, frugal)
        try:
            reload(frugal)
        except CliError as err:  # e.g. the frugal plan is refused, or loading runs out of memory too
            log.error("reloading with --offload %s failed: %s", frugal, err.message)
            return False
        return True

    return retry


MADE_MEANWHILE = "made meanwhile by another run, with the same recipe"


class Runner:
    """One script's batch, in one shape: resolve every job (resolve_all), plan and load the model (the
    script's own step, or `start` at a job's turn), then for each job (run_one): skip it when its output is up
    to date, else generate and write it under the output's lock. The family's parts are the methods marked
    "hook"; runs.parallel.run_batch runs the jobs, here or in a scene worker."""

    up_to_date_reason = "up to date (same recipe)"  # a job skipped because its output was up to date when planned

    def __init__(self, args: argparse.Namespace):
        self.args = args
        self.requests: dict[int, Any] = {}  # job index -> the family's resolved request
        self.failed: dict[int, CliError] = {}  # resolved, but failed before its turn (the plan, loading, encoding)
        self.skipped: set[int] = set()  # up to date when the model was planned
        self.done: set[int] = set()  # made by this run
        self.plan = None  # the memory plan in use (producer.sizing.memory.MemoryPlan)

    # ---------------------------------------------------------------- the family's parts

    def resolve(self, job: Job) -> Any:
        """Hook: the job's request, from its parsed options; a CliError refuses the job."""
        raise NotImplementedError

    def output(self, request: Any) -> Path:
        """Hook: the file a request writes."""
        raise NotImplementedError

    def up_to_date(self, index: int) -> bool:
        """Hook: whether job `index`'s output exists with its recipe (raises for one made otherwise)."""
        raise NotImplementedError

    def make(self, job: Job) -> dict | Deferred:
        """Hook: generate and write the job's output (its lock is held); the job's result, or a Deferred whose
        files are finished in the background (runs/behind.py)."""
        raise NotImplementedError

    def reload(self, offload: str) -> None:
        """Hook, for --on-oom retry: the model again under --offload `offload`, for the jobs left."""
        raise NotImplementedError

    def start(self, job: Job) -> None:
        """Hook: at a job's turn, before anything else, load the model it needs if that is not done yet."""

    def describe(self, job: Job) -> str:
        """Hook: the job in the progress log."""
        return f"job {job.index}: {self.output(self.requests[job.index])}"

    def skip(self, job: Job, reason: str) -> dict:
        """Hook: the result of a job whose output is up to date."""
        return {"status": "skipped", "output": str(self.output(self.requests[job.index])), "reason": reason}

    def current_plan(self) -> Any:
        return self.plan

    # ---------------------------------------------------------------- the shared shape

    def resolve_all(self, entries: list[Job | CliError]) -> list[Job | CliError]:
        """Resolve each parsed job; a job that cannot be resolved becomes its error."""
        items: list[Job | CliError] = []
        for entry in entries:
            if isinstance(entry, Job):
                try:
                    self.requests[entry.index] = self.resolve(entry)
                except CliError as err:
                    entry = job_error(entry.index, err)
            items.append(entry)
        return items

    def clash(self, output: Path) -> int | None:
        """The job resolved so far that writes `output` too, if any."""
        return next((i for i, r in self.requests.items() if self.output(r).resolve() == output.resolve()), None)

    def sort_out(self, indices) -> dict[int, Any]:
        """The requests among `indices` to make: an up-to-date one is skipped, one made otherwise is failed."""
        todo = {}
        for index in indices:
            try:
                if self.up_to_date(index):
                    self.skipped.add(index)
                else:
                    todo[index] = self.requests[index]
            except CliError as err:
                self.failed[index] = err
        return todo

    def left(self) -> list:
        """The requests still to make."""
        return [r for i, r in self.requests.items() if i not in self.skipped and i not in self.failed
                and i not in self.done]

    def run_one(self, job: Job) -> dict | Deferred:
        with naming_plan(self.current_plan):  # out of memory names the plan in use
            self.start(job)
            if job.index in self.failed:
                raise self.failed[job.index]
            if job.index in self.skipped:
                return self.skip(job, self.up_to_date_reason)
            with contextlib.ExitStack() as held:
                # one writer per output: a second run on it stops (exit 5)
                held.enter_context(locks.output_lock(self.output(self.requests[job.index])))
                if self.up_to_date(job.index):  # another run made it since the batch was planned
                    return self.skip(job, MADE_MEANWHILE)
                result = self.make(job)
                if isinstance(result, Deferred):  # its files are finished in the background: the lock stays
                    return result.holding(held.pop_all(), lambda: self.done.add(job.index))
        self.done.add(job.index)
        return result

    def retry_oom(self) -> Callable[[Job], bool] | None:
        return oom_retry(self.args.on_oom, self.current_plan, self.reload)
