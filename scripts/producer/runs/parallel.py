"""Several GPUs: the scenes of a --batch side by side, or one clip split over GPUs (--context-parallel).

Scene-parallel (`--batch` on a machine with 2+ GPUs, or `--gpus 0,1,...` / `--workers N`)
  The script the user runs is the coordinator. It launches one worker per GPU with PyTorch's launcher
  (`python -m torch.distributed.run`; each worker narrows CUDA_VISIBLE_DEVICES to its own GPU, cuda:0),
  each running the same script with the same arguments plus `--parallel-worker RUN_FOLDER`. Every worker
  resolves the whole batch, loads the model once under the memory plan of one GPU and encodes every prompt
  (cheap beside a clip, and a worker cannot know in advance which jobs it will get), then takes jobs one at
  a time: a job is claimed with an atomic `add` on a c10d TCPStore hosted by the coordinator, so a worker
  that is free takes the next unclaimed job (a long scene does not hold up a queue of short ones). Each
  finished job's result is written at once, atomically, into the run folder. Workers share nothing else:
  no process group and no collective, so a worker that dies cannot hang the others.
  When torchrun returns, the coordinator merges the per-job results in job order into the one report. A
  job without a result is reported, never dropped: "error" when a worker had claimed it (that worker
  stopped while making it), "not_run" when no worker reached it (torchrun stops every worker as soon as one
  dies, and a batch stopped by running out of memory or disk stops every worker). Running the same command
  again skips the finished jobs. Host RAM is shared: each worker plans for the RAM the machine has, so
  plans that keep weights in host memory (group offload) need N times that RAM.

Context-parallel (`wan_video.py --context-parallel N`, one clip): see producer.engines.wan.context_parallel.

This module imports no torch at import time (`--help` stays instant); the coordinator imports it to count
GPUs and host the store.
"""

from __future__ import annotations

import argparse
import logging
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from producer.cli import naming_plan, peak_memory
from producer.errors import CliError, ExitCode
from producer.files.outputs import write_json_atomic
from producer.runs import batch, parallel_merge
from producer.runs.launch import Launch
from producer.values import number_arg, resolve_seed

log = logging.getLogger("producer")

WORKER_FLAG = "--parallel-worker"
WORKER_DEST = "parallel_worker"  # its argparse destination
STORE_ENV = "PRODUCER_PARALLEL_STORE"  # host:port of the coordinator's TCPStore, for the workers
# Options of the command line that belong beside --batch (scripts add them to their BATCH_ONLY set).
BATCH_OPTIONS = {"gpus", "workers", WORKER_FLAG.lstrip("-")}
STORE_TIMEOUT_S = 60  # a worker that cannot reach the coordinator's store within this gives up
STOP_GRACE_S = 60  # after Ctrl-C, how long torchrun gets to stop its workers before it is killed

HELP = """\
Several GPUs
  --batch runs on every visible GPU (one worker per GPU, each loading the model once and taking the next
  unfinished job when it is free); --gpus 0,2 picks GPUs, --workers N the first N (--workers 1: one
  process, one GPU). Each GPU gets the memory plan of one GPU; host RAM is shared by the workers. The report
  is one JSON with every job, and which worker made it; a job whose worker died is reported as failed, and
  rerunning the command makes only what is missing."""
CONTEXT_HELP = """
  --context-parallel N splits one clip over N GPUs (Ulysses attention, diffusers' context parallelism):
  for 720p and long clips. Every GPU holds both experts; N must divide the model's 40 attention heads
  (2, 4, 5 or 8) and the clip's token count."""


def add_args(parser: argparse.ArgumentParser, context_parallel: bool = False) -> None:
    g = parser.add_argument_group("several GPUs (see 'Several GPUs' above)")
    g.add_argument("--gpus", type=gpu_list, metavar="0,1,...",
                   help="the GPUs to use (numbered as this process sees them; default: every visible GPU)")
    g.add_argument("--workers", type=number_arg(1, whole=True), metavar="N",
                   help="--batch: this many worker processes (default: one per GPU); with --device cpu, N CPU "
                        "processes")
    if context_parallel:
        g.add_argument("--context-parallel", type=number_arg(1, whole=True), metavar="N",
                       help="split one clip over N GPUs (Ulysses attention); N divides 40, e.g. 2, 4 or 8")
    g.add_argument(WORKER_FLAG, type=Path, metavar="RUN_FOLDER", help=argparse.SUPPRESS)


def gpu_list(text: str) -> tuple[int, ...]:
    try:
        gpus = tuple(int(part) for part in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r}: give GPU numbers separated by commas, e.g. 0,1,3") from None
    if len(set(gpus)) != len(gpus) or min(gpus) < 0:
        raise argparse.ArgumentTypeError(f"{text!r}: each GPU once, numbers from 0")
    return gpus


# ---------------------------------------------------------------- what to launch (pure)


def decide(args: argparse.Namespace, visible: list[str], jobs: int | None) -> Launch | None:
    """How to run: None for one process here, else the workers to launch. `visible` is what
    CUDA_VISIBLE_DEVICES names for each GPU this process sees; `jobs` the batch's job count (None: not read
    yet, no limit)."""
    cp = getattr(args, "context_parallel", None)
    if cp is not None:
        return _decide_context(args, cp, visible)
    if not args.batch:
        if args.gpus or args.workers:
            extra = ", or --context-parallel N to split one clip" if hasattr(args, "context_parallel") else ""
            raise CliError("--gpus and --workers spread a --batch over several GPUs",
                           f"add --batch FILE.json{extra}; for one image or clip on one GPU use --device cuda:N")
        return None
    if args.workers is not None and args.workers < 1:
        raise CliError(f"--workers {args.workers}: give 1 or more", "e.g. --workers 2")
    if args.device == "cpu":
        if args.gpus:
            raise CliError("--gpus with --device cpu", "drop one of them (--workers N runs N CPU processes)")
        n = min(args.workers or 1, jobs if jobs is not None else args.workers or 1)
        return Launch("scenes", n) if n > 1 else None
    chosen = _chosen(args, visible)
    if args.device not in (None, "cuda") and (args.gpus or (args.workers or 0) > 1):
        raise CliError(f"--device {args.device} picks one device; --gpus and --workers pick several",
                       "give --gpus 0,1,... (or --workers N) without --device")
    if args.device not in (None, "cuda") or not chosen:
        return None  # one device, as asked (or no GPU: the plan decides what runs where)
    if args.workers is not None:
        if args.workers > len(chosen):
            raise CliError(f"--workers {args.workers}: only {len(chosen)} GPU(s) to use",
                           f"give --workers {len(chosen)} or fewer (one worker per GPU)")
        chosen = chosen[:args.workers]
    if jobs is not None:
        chosen = chosen[:max(1, jobs)]
    return Launch("scenes", len(chosen), tuple(chosen))


def _chosen(args: argparse.Namespace, visible: list[str]) -> list[str]:
    if not args.gpus:
        return list(visible)
    wrong = [g for g in args.gpus if g >= len(visible)]
    if wrong:
        raise CliError(f"--gpus {','.join(map(str, args.gpus))}: GPU {wrong[0]} does not exist here "
                       f"({len(visible)} visible)", f"use numbers from 0 to {len(visible) - 1}" if visible else
                       "this machine has no CUDA GPU: drop --gpus")
    return [visible[g] for g in args.gpus]


def _decide_context(args: argparse.Namespace, n: int, visible: list[str]) -> Launch:
    if args.batch:
        raise CliError("--context-parallel splits one clip; a --batch already runs on every GPU, one clip per GPU "
                       "(the GPUs need not talk to each other then)",
                       "drop --context-parallel for the batch, or run the clip alone with it")
    if args.workers is not None:
        raise CliError("--workers is for --batch; --context-parallel N sets the number of processes itself",
                       "drop --workers")
    if n < 2:
        raise CliError(f"--context-parallel {n}: give 2 or more GPUs", "e.g. --context-parallel 2")
    if args.device == "cpu":
        if args.gpus:
            raise CliError("--gpus with --device cpu", "drop one of them")
        return Launch("context", n)
    if args.device not in (None, "cuda"):
        raise CliError(f"--device {args.device} picks one device; --context-parallel {n} needs {n} GPUs",
                       f"drop --device (or give --gpus with {n} numbers)")
    if args.gpus and len(args.gpus) != n:
        raise CliError(f"--gpus lists {len(args.gpus)} GPU(s) for --context-parallel {n}", f"list exactly {n}")
    chosen = _chosen(args, visible)
    if len(chosen) < n:
        raise CliError(f"--context-parallel {n} needs {n} GPUs; {len(chosen)} visible here",
                       f"use --context-parallel {len(chosen)}" if len(chosen) >= 2 else
                       "run on one GPU (drop --context-parallel)")
    return Launch("context", n, tuple(chosen[:n]))


def visible_gpus() -> list[str]:
    """CUDA_VISIBLE_DEVICES entries for the GPUs this process sees (what a worker's variable must name)."""
    import torch

    count = torch.cuda.device_count() if torch.cuda.is_available() else 0
    named = os.environ.get("CUDA_VISIBLE_DEVICES")
    if named is None:
        return [str(i) for i in range(count)]
    return [entry.strip() for entry in named.split(",")][:count]


# ---------------------------------------------------------------- the entry point a script uses


def entry(run: Callable[[argparse.Namespace], dict], script: str | Path,
          argv: list[str] | None) -> Callable[[argparse.Namespace], dict]:
    """The `run` to give cli.run_main: a worker runs its share, a coordinator launches workers and merges
    their results, anything else runs here as before. `argv` is what run_main parses (None: sys.argv)."""
    argv = list(sys.argv[1:] if argv is None else argv)

    def dispatch(args: argparse.Namespace) -> dict:
        if getattr(args, WORKER_DEST):
            return _as_worker(run, args)
        needs_gpus = args.device != "cpu" and (getattr(args, "context_parallel", None) or args.batch)
        visible = visible_gpus() if needs_gpus else []
        launch, jobs = decide(args, visible, None), None
        if launch is not None and launch.mode == "scenes":  # no more workers than jobs
            jobs = len(batch.read_batch_file(args.batch))
            launch = decide(args, visible, jobs)
        if launch is None:
            return run(args)
        if launch.workers == 1:  # one GPU picked with --gpus: run here on it
            args.device = f"cuda:{args.gpus[0]}" if args.gpus else args.device
            return run(args)
        return Coordinator(launch, Path(script).resolve(), argv, jobs).run(args)

    return dispatch


# ---------------------------------------------------------------- the coordinator


class Coordinator:
    def __init__(self, launch: Launch, script: Path, argv: list[str], jobs: int | None):
        self.launch, self.script, self.argv, self.jobs = launch, script, argv, jobs

    def run(self, args: argparse.Namespace) -> dict:
        extra = []
        if self.launch.mode == "context":
            _check_clip_output(args)
            extra = ["--seed", str(resolve_seed(args.seed))]  # every rank must draw the same noise
        run_dir = Path(tempfile.mkdtemp(prefix=f"{self.script.stem}-parallel-"))
        store = start_store()
        what = f"{self.jobs} jobs" if self.launch.mode == "scenes" else "one clip"
        log.info("%s over %d %s: %s (run folder %s)", what, self.launch.workers,
                 "GPUs" if self.launch.devices else "CPU processes", ", ".join(self.launch.devices) or "cpu", run_dir)
        started = time.perf_counter()
        try:
            code = self._torchrun(run_dir, store.port, extra)
            seconds = round(time.perf_counter() - started, 3)
            if self.launch.mode == "context":
                return parallel_merge.merge_context(run_dir, self.launch, code, seconds)
            return parallel_merge.merge_scenes(run_dir, self.launch, self.jobs or 0, StoreView(store), code, seconds)
        finally:
            shutil.rmtree(run_dir, ignore_errors=True)

    def _torchrun(self, run_dir: Path, port: int, extra: list[str]) -> int:
        worker_argv = [a for a in self.argv if a != "--json"]  # the workers' reports go to files
        return torchrun(self.script, [*worker_argv, WORKER_FLAG, str(run_dir), *extra], self.launch,
                        {STORE_ENV: f"127.0.0.1:{port}"})


def torchrun(script: Path, argv: list[str], launch: Launch, env: dict[str, str]) -> int:
    """Run `script argv` in launch.workers processes under torchrun, their output on our stderr; the exit code."""
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={launch.workers}",
           "--max-restarts=0"]
    env = dict(os.environ, PYTHONUNBUFFERED="1", **env)
    if launch.devices:
        env["CUDA_VISIBLE_DEVICES"] = ",".join(launch.devices)
    # torchrun would give every worker one thread; the CPU-side stages (colour matching, encoding) want more.
    env.setdefault("OMP_NUM_THREADS", str(max(1, (os.cpu_count() or 1) // launch.workers)))
    proc = subprocess.Popen([*cmd, str(script), *argv], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=env)
    try:
        for chunk in iter(lambda: proc.stdout.read1(1 << 16), b""):  # the workers' logs, on our stderr
            sys.stderr.write(chunk.decode("utf-8", errors="replace"))
            sys.stderr.flush()
        return proc.wait()
    except BaseException:  # Ctrl-C or SIGTERM: torchrun stops its workers (their temp files go with them)
        proc.terminate()
        try:
            proc.wait(STOP_GRACE_S)
        except subprocess.TimeoutExpired:
            proc.kill()
        raise


def start_store():
    """The job counter the workers share: a c10d TCPStore served by this process on a free port."""
    from datetime import timedelta

    from torch.distributed import TCPStore

    return TCPStore("127.0.0.1", 0, is_master=True, wait_for_workers=False,
                    timeout=timedelta(seconds=STORE_TIMEOUT_S))


def _check_clip_output(args: argparse.Namespace) -> None:
    from producer.files.outputs import check_output

    if args.output is not None:  # a missing --output is reported by the script itself, in the workers
        check_output(args.output, args.overwrite, "output")


class StoreView:
    """What the coordinator reads back from its store after the workers are gone."""

    def __init__(self, store):
        self.store = store

    def get(self, key: str) -> str | None:
        return self.store.get(key).decode() if self.store.check([key]) else None


# ---------------------------------------------------------------- the workers


def worker_rank() -> int:
    return int(os.environ.get("RANK", "0"))


def _as_worker(run: Callable[[argparse.Namespace], dict], args: argparse.Namespace) -> dict:
    """Run this worker's share; its report (or the error that stopped it) goes to RUN/ranks/RANK.json. The
    process exits 0 once its share is done, failed jobs or not: a non-zero exit would make torchrun stop the
    other workers."""
    run_dir = Path(getattr(args, WORKER_DEST))
    if "TORCHELASTIC_RUN_ID" not in os.environ or not run_dir.is_dir():
        raise CliError(f"{WORKER_FLAG} is how the coordinator starts its workers under torchrun, not an option",
                       "drop it: --batch (or --context-parallel N) starts the workers itself")
    rank = worker_rank()
    _prefix_logs(rank)
    if not getattr(args, "context_parallel", None):
        pin_gpu()
    report_path = run_dir / "ranks" / f"{rank}.json"
    report_path.parent.mkdir(exist_ok=True)
    context = None
    try:
        if getattr(args, "context_parallel", None):
            from producer.engines.wan import context_parallel

            context = context_parallel.join(args, run_dir)
        result = run(args)
    except CliError as err:
        write_json_atomic(report_path, {**err.to_dict(), "worker": rank})
        raise
    except Exception as exc:
        first = (str(exc).strip().splitlines() or [""])[0]
        write_json_atomic(report_path, {"status": "error", "worker": rank, "exit_code": int(ExitCode.FAILED),
                                  "error": f"{type(exc).__name__}: {first}", "fix": "rerun with --debug for details"})
        raise
    finally:
        if context is not None:
            context.close()
    # The worker did its share. A share whose jobs all failed alike is not a failed worker (which one it is
    # depends on how the jobs happened to be claimed): its jobs say why, and the merge judges the whole batch.
    share = {k: v for k, v in result.items() if k not in ("status", "error", "fix", "exit_code")}
    report = {**share, **peak_memory(), "worker": rank, "status": "ok"}
    write_json_atomic(report_path, report)
    return {**result, "exit_code": int(ExitCode.OK)}


def pin_gpu() -> None:
    """A scene worker sees only its own GPU, as cuda:0, so that nothing in the model code can reach another
    worker's GPU: CUDA_VISIBLE_DEVICES narrowed to the LOCAL_RANK-th entry torchrun passed down (what
    torchrun's own --virtual-local-rank does, which older PyTorch releases lack). Before CUDA starts."""
    torch = sys.modules.get("torch")
    if torch is not None and torch.cuda.is_initialized():
        raise RuntimeError("pin_gpu() must run before CUDA is initialized")
    devices = os.environ.get("CUDA_VISIBLE_DEVICES")
    local = int(os.environ.get("LOCAL_RANK", "0"))
    if devices:
        os.environ["CUDA_VISIBLE_DEVICES"] = devices.split(",")[local]


def _prefix_logs(rank: int) -> None:
    for handler in log.handlers:
        handler.setFormatter(logging.Formatter(f"[worker {rank}] %(message)s"))


class Share:
    """A scene worker's side of the job queue: claim a job, record its result, stop the batch."""

    def __init__(self, rank: int, run_dir: Path, store):
        self.rank, self.run_dir, self.store = rank, run_dir, store

    @classmethod
    def connect(cls, run_dir: Path) -> Share:
        from datetime import timedelta

        from torch.distributed import TCPStore

        host, _, port = os.environ[STORE_ENV].rpartition(":")
        store = TCPStore(host, int(port), is_master=False, timeout=timedelta(seconds=STORE_TIMEOUT_S))
        return cls(worker_rank(), run_dir, store)

    def claim(self, index: int) -> bool:
        """True for exactly one worker per job: the first to add to its counter."""
        if self.store.add(f"claim/{index}", 1) != 1:
            return False
        self.store.set(f"owner/{index}", str(self.rank))
        return True

    def stopped(self) -> str | None:
        return self.store.get("stop").decode() if self.store.check(["stop"]) else None

    def stop(self, reason: str) -> None:
        self.store.set("stop", reason)

    def record(self, index: int, outcome: dict) -> None:
        path = self.run_dir / "jobs" / f"{index}.json"
        path.parent.mkdir(parents=True, exist_ok=True)
        write_json_atomic(path, outcome)


def run_jobs(jobs: list, run_one: Callable, describe: Callable = lambda job: f"job {job.index}", *options,
             worker_dir: Path | None = None, **named) -> batch.BatchResult:
    """batch.run_jobs (same arguments), or in a scene worker (`worker_dir`: the script's --parallel-worker)
    the jobs this worker claims, each recorded in the run folder as soon as it is done."""
    if worker_dir is None:
        return batch.run_jobs(jobs, run_one, describe, *options, **named)
    share = Share.connect(Path(worker_dir))

    def claimed():  # the jobs this worker takes, one at a time, until a worker stops the batch
        for job in jobs:
            reason = share.stopped()
            if reason:
                log.info("the batch was stopped: %s", reason)
                return
            if share.claim(batch.index_of(job)):
                yield job

    def record(outcome: dict, result: batch.BatchResult) -> None:  # as soon as it is final (files in place)
        outcome["worker"] = share.rank
        share.record(outcome["job"], outcome)
        if result.stopped is not None and not share.stopped():  # out of memory or a full disk: every worker
            share.stop(result.stopped.message)

    return batch.run_jobs(claimed(), run_one, describe, *options, on_result=record, **named)


def wan_session_class(args: argparse.Namespace):
    """The session class for wan_video.py: split over the ranks in a context-parallel worker."""
    if getattr(args, "context_parallel", None) and getattr(args, WORKER_DEST, None):
        from producer.engines.wan.context_parallel import ContextParallelWanSession

        return ContextParallelWanSession
    from producer.engines.wan.wan import WanSession

    return WanSession


def run_batch(runner: batch.Runner, items: list) -> dict:
    """A script's batch (batch.Runner) over `items` (its jobs in running order), here or in a scene worker
    (the script's --parallel-worker); the report as a dict."""
    with naming_plan(runner.current_plan):  # reloading under --on-oom retry names the plan
        return run_jobs(items, runner.run_one, runner.describe, runner.retry_oom(),
                        worker_dir=runner.args.parallel_worker).to_dict()
