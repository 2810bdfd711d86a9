"""The coordinator's report of a parallel run: every job of the batch in order (its result, or why it has
none), or the clip rank 0 wrote, with where each part ran. Reads the run folder the workers wrote
(producer.runs.parallel): RUN/jobs/INDEX.json per finished job, RUN/ranks/RANK.json per worker that finished its
share (or the error that stopped it)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from producer.errors import CliError, ExitCode
from producer.runs import batch
from producer.runs.launch import Launch
from producer.values import load_json


def _read_json(path: Path) -> dict | None:
    try:
        return load_json(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def _ranks(run_dir: Path, workers: int) -> list[dict | None]:
    return [_read_json(run_dir / "ranks" / f"{rank}.json") for rank in range(workers)]


def _run_error(ranks: list[dict | None]) -> CliError | None:
    """The error that stopped a worker before it made anything (the same on every worker, e.g. a model that
    is not installed): reported as the run's own error, as one process would."""
    failed = next((r for r in ranks if r and r.get("status") == "error"), None)
    if failed is None:
        return None
    details = {k: v for k, v in failed.items() if k not in ("status", "error", "fix", "exit_code", "worker")}
    return CliError(failed["error"], failed.get("fix", ""), ExitCode(failed.get("exit_code", ExitCode.FAILED)),
                    **details)


def merge_scenes(run_dir: Path, launch: Launch, jobs: int, store: Any, torchrun_code: int, seconds: float) -> dict:
    """Every job of the batch, in order: its result, or why it has none."""
    ranks = _ranks(run_dir, launch.workers)
    stop = store.get("stop")
    merged = []
    for index in range(jobs):
        outcome = _read_json(run_dir / "jobs" / f"{index}.json") or _from_rank_reports(ranks, index)
        merged.append(outcome or _missing(index, store.get(f"owner/{index}"), launch, stop, torchrun_code))
    error = _run_error(ranks)
    if error is not None and not any((run_dir / "jobs").glob("*.json")):
        raise error  # every worker stopped before its first job: the run's own error, as one process reports it
    result = batch.BatchResult(merged).to_dict()
    failed = any(j["status"] in ("error", "not_run") for j in merged)
    result["exit_code"] = int(ExitCode.PARTIAL if failed else ExitCode.OK)
    if stop:
        result["stopped"] = stop
    # The run-wide facts (plan, model, LoRA reports) from a worker that made something: one that claimed no job
    # never brought its experts in, so it has no LoRA report (the split is dynamic).
    finished = [r for r in ranks if r and r.get("status") != "error"]
    summary = next((r for r in finished if r.get("jobs")), finished[0] if finished else {})
    result.update({k: v for k, v in summary.items() if k not in result and k not in _PER_WORKER})
    result["parallel"] = _parallel_report(launch, ranks, merged, torchrun_code, seconds)
    result.update(_peaks(ranks))
    return result


_PER_WORKER = {"jobs", "counts", "exit_code", "status", "worker", "device", "peak_vram_gib", "peak_ram_gib",
               "stopped", "fix"}


def _from_rank_reports(ranks: list[dict | None], index: int) -> dict | None:
    """A job reported in a worker's own result but not claimed through the store (a batch with nothing to
    make reports its invalid jobs without a model, on every worker alike)."""
    for report in ranks:
        for job in (report or {}).get("jobs", []):
            if isinstance(job, dict) and job.get("job") == index:
                return job
    return None


def _missing(index: int, owner: str | None, launch: Launch, stop: str | None, code: int) -> dict:
    rerun = "run the same command again: finished jobs are skipped"
    if owner is not None:
        where = f"worker {owner}" + (f" (GPU {launch.devices[int(owner)]})" if launch.devices else "")
        return {"status": "error", "job": index, "worker": int(owner), "exit_code": int(ExitCode.FAILED),
                "error": f"job {index}: {where} stopped while making it (killed or crashed; its log is above)",
                "fix": rerun}
    reason = stop or ("the workers stopped before reaching it (torchrun stops them all when one fails, exit "
                      f"code {code})")
    return {"status": "not_run", "job": index, "reason": reason, "fix": rerun}


def _parallel_report(launch: Launch, ranks: list[dict | None], merged: list[dict], code: int,
                     seconds: float) -> dict:
    workers = []
    for rank, report in enumerate(ranks):
        entry = {"worker": rank, "device": f"GPU {launch.devices[rank]}" if launch.devices else "cpu",
                 "jobs": [j["job"] for j in merged if j.get("worker") == rank]}
        if report is None:
            entry["status"] = "stopped (no report: killed, crashed or stopped by torchrun)"
        else:
            entry["status"] = report.get("status", "ok")
            entry.update({k: report[k] for k in ("peak_vram_gib", "peak_ram_gib", "error") if k in report})
        workers.append(entry)
    return {"mode": launch.mode, "workers": workers, "torchrun_exit_code": code, "seconds": seconds}


def _peaks(ranks: list[dict | None]) -> dict:
    """Peak VRAM: the most any one GPU held (what each card must have). Peak RAM: the workers' peaks added up
    (the host holds them all; an upper bound)."""
    vram = [r["peak_vram_gib"] for r in ranks if r and r.get("peak_vram_gib") is not None]
    ram = [r["peak_ram_gib"] for r in ranks if r and r.get("peak_ram_gib") is not None]
    return {"peak_vram_gib": max(vram) if vram else None, "peak_ram_gib": round(sum(ram), 2) if ram else None}


def merge_context(run_dir: Path, launch: Launch, code: int, seconds: float) -> dict:
    """Rank 0 wrote the clip; its report is the run's, with the parallel layout added."""
    ranks = _ranks(run_dir, launch.workers)
    lead = ranks[0]
    if lead is None or lead.get("status") == "error":
        error = _run_error(ranks)
        if error is not None:
            raise error
        raise CliError(f"the {launch.workers} context-parallel processes stopped before the clip was written "
                       f"(torchrun exit code {code}; the log above says why)",
                       "run again with --debug; if a process was killed for memory, use fewer frames or a smaller "
                       "size", ExitCode.FAILED)
    result = dict(lead)
    result.pop("worker", None)
    result["parallel"] = {"mode": "context", "attention": "ulysses", "degree": launch.workers,
                          "devices": [f"GPU {d}" for d in launch.devices] or ["cpu"] * launch.workers,
                          "torchrun_exit_code": code, "seconds": seconds}
    result.update(_peaks(ranks))
    return result
