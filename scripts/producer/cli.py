"""Conventions every script shares: exit codes, errors that name the fix, --json (output files: outputs.py).

Agents read stdout, people read stderr: with --json exactly one JSON object goes to stdout (also on
failure); logs and progress bars always go to stderr. No traceback reaches the user unless --debug.
"""

from __future__ import annotations

import argparse
import contextlib
import errno
import json
import logging
import os
import signal
import sys
import time
from typing import Any, Callable, Iterator

# Re-exported: the scripts and tests know them as cli.CliError, cli.number_arg, ...; modules below cli import
# them from errors and values, so that nothing cli needs imports cli back.
from producer.errors import EXIT_CODE_HELP, FILE_ERRORS, CliError, ExitCode, Terminated, missing  # noqa: F401
from producer.values import device_arg, load_json, not_text, number_arg, resolve_seed, seed_arg, text_arg  # noqa: F401

log = logging.getLogger("producer")  # the same logger as values.log


class ArgumentParser(argparse.ArgumentParser):
    """argparse that raises CliError instead of exiting, so --json can report usage errors too.

    Options are never abbreviated (allow_abbrev=False): `--out` is not `--output`. A command an agent wrote
    must mean the same after an option is added, and a batch job's keys must be the options they name."""

    def __init__(self, *args, **kwargs):
        kwargs.setdefault("allow_abbrev", False)
        super().__init__(*args, **kwargs)

    def error(self, message: str):  # noqa: D401 - argparse API
        raise CliError(message, fix=f"see `{self.prog} --help`", code=ExitCode.USAGE)


def build_parser(prog: str, description: str, epilog: str = "") -> ArgumentParser:
    epilog = (epilog.rstrip() + "\n\n" if epilog else "") + EXIT_CODE_HELP
    return ArgumentParser(prog=prog, description=description, epilog=epilog,
                          formatter_class=argparse.RawDescriptionHelpFormatter)


def add_output_args(parser: argparse.ArgumentParser, overwrite: bool = True) -> None:
    """--json --quiet --debug, and --overwrite for scripts that write outputs."""
    g = parser.add_argument_group("output and logging")
    g.add_argument("--json", action="store_true", help="print one JSON object on stdout (logs stay on stderr)")
    if overwrite:
        g.add_argument("--overwrite", action="store_true", help="replace outputs that already exist")
    g.add_argument("--quiet", action="store_true", help="only warnings and errors on stderr")
    g.add_argument("--debug", action="store_true", help="show tracebacks and library logs")


def add_models_dir_arg(parser) -> None:
    parser.add_argument("--models-dir", metavar="DIR",
                        help="the Hugging Face home that holds the models (default: $HF_HOME or ~/.cache/huggingface)")


def add_memory_args(parser: argparse.ArgumentParser) -> None:
    from producer.sizing.memory import OFFLOAD_CHOICES, WEIGHT_CHOICES

    g = parser.add_argument_group("memory, device and speed")
    g.add_argument("--offload", choices=OFFLOAD_CHOICES, default="auto",
                   help="override the memory plan: none (all on GPU), model (one model on the GPU at a time), "
                        "group (block-level offload with prefetch, every block streamed; auto keeps the blocks that fit on "
                        "the card), sequential (layer by layer, slowest)")
    g.add_argument("--weights", choices=WEIGHT_CHOICES, default="auto",
                   help="override the weight form: bf16, fp8 (fp8 storage), gguf-q8, gguf-q4 (GGUF files)")
    g.add_argument("--device", type=device_arg, default=None, help="cpu, cuda or cuda:N (default: the best available)")
    g.add_argument("--compile", choices=("auto", "on", "off"), default="auto",
                   help="compile the transformer blocks (same results; measured on an H200: 11%% faster per Wan "
                        "clip after a one-off ~15 s compile, 19%% per Qwen image after ~11 s). auto: on with the "
                        "weights on a CUDA GPU for runs of 8+ Wan clips or 32+ Qwen images. Blocks are never "
                        "compiled while the plan streams them; there `on` compiles the GGUF weights' "
                        "dequantization instead (the same numbers bit for bit, checked on the GPU; 5-10 s once "
                        "per process, cached on disk; stated under `speed` in the JSON), and auto does so for runs "
                        "of 20+ Wan clips or 40+ Qwen images: with the host running ahead of streamed blocks it "
                        "made the 10 GB Wan clip 16.92 s against 17.54 s (H200) and the 10 GB Qwen edit 2.28 s "
                        "against 2.42 s (H100), after 10 s (Wan) or 5-7 s (Qwen) of compiling. off: nothing "
                        "compiled")
    g.add_argument("--fp8-matmul", action="store_true",
                   help="fp8 matrix multiplies (torchao) on GPUs with fp8 tensor cores, weights resident: on an "
                        "H200 a Wan clip took 13.08 s against 14.55 s compiled; changes the numbers slightly "
                        "(4.5%% relative difference on one forward), so it is off unless asked for")
    g.add_argument("--attention", default=None, metavar="BACKEND",
                   help="a diffusers attention backend, e.g. _native_cudnn, flash, sage (when installed); "
                        "default: PyTorch's own choice")


def add_force_memory_arg(group) -> None:
    """--force-memory, for both generation scripts (see refuse_unless_fits)."""
    group.add_argument("--force-memory", action="store_true",
                       help="run even when the memory plan says the model will not fit")


def refuse_unless_fits(plan, force: bool, what: str) -> None:
    """The one memory check of both generation scripts: a plan predicted not to fit is refused before any
    weights load (exit 4, with what to change), unless --force-memory asks to try anyway."""
    if plan.fits:
        return
    if force:
        log.warning("--force-memory: trying a plan predicted not to fit (%s)", plan.reason)
        return
    raise CliError(f"{what}: {plan.reason}",
                   f"{plan.advice or 'use a machine with more memory'}; or --force-memory to try anyway",
                   ExitCode.OUT_OF_MEMORY, memory_plan=plan.to_dict())


# ---------------------------------------------------------------- timing and memory


class Stopwatch:
    """Seconds per stage, for the JSON report and the benchmark."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}

    @contextlib.contextmanager
    def stage(self, name: str) -> Iterator[None]:
        from producer.files import faults, held_signals

        held_signals.deliver_late_signal()  # a signal held over the last commit stops the run before new work
        faults.at(f"stage:{name}")  # inert outside the reliability tests (see producer.files.faults)
        start = time.perf_counter()
        try:
            yield
        finally:
            self.seconds[name] = round(self.seconds.get(name, 0.0) + time.perf_counter() - start, 3)


def peak_memory() -> dict:
    """Peak reserved VRAM (what a card must hold) and peak resident host RAM of this process, in GiB."""
    out = {"peak_vram_gib": None, "peak_ram_gib": None}
    torch = sys.modules.get("torch")  # a script that never imported torch used no VRAM
    if torch is not None and torch.cuda.is_available() and torch.cuda.is_initialized():
        out["peak_vram_gib"] = round(torch.cuda.max_memory_reserved() / 1024**3, 2)
    try:
        import resource

        # ru_maxrss is KiB on Linux, bytes on macOS
        scale = 1 if sys.platform == "darwin" else 1024
        out["peak_ram_gib"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * scale / 1024**3, 2)
    except ImportError:  # Windows
        import psutil

        out["peak_ram_gib"] = round(psutil.Process().memory_info().peak_wset / 1024**3, 2)
    return out


# ---------------------------------------------------------------- running a script


def setup_logging(quiet: bool = False, debug: bool = False) -> None:
    level = logging.DEBUG if debug else logging.WARNING if quiet else logging.INFO
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(message)s"))
    log.handlers[:] = [handler]
    log.setLevel(level)
    log.propagate = False
    if not debug:
        # Library chatter (deprecations, "Loading pipeline components") is not for the user. The libraries
        # read these variables when imported; setting them costs nothing when they never are.
        for name in ("diffusers", "transformers", "huggingface_hub", "accelerate", "peft"):
            logging.getLogger(name).setLevel(logging.ERROR)
        os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
        os.environ.setdefault("DIFFUSERS_VERBOSITY", "error")
        if "diffusers" in sys.modules:
            from diffusers.utils import logging as dlog

            dlog.set_verbosity_error()


@contextlib.contextmanager
def _sigterm_raises() -> Iterator[None]:
    def handler(signum, frame):
        raise Terminated()

    try:
        previous = signal.signal(signal.SIGTERM, handler)
    except ValueError:  # not the main thread (e.g. a test runner thread): leave signals alone
        yield
        return
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def is_out_of_memory(exc: BaseException) -> bool:
    """A GPU (torch.OutOfMemoryError) or host (MemoryError) out-of-memory error."""
    torch = sys.modules.get("torch")
    if torch is not None and isinstance(exc, torch.OutOfMemoryError):
        return True
    return isinstance(exc, MemoryError) or "out of memory" in str(exc).lower()


@contextlib.contextmanager
def naming_plan(plan_of: Callable[[], Any]) -> Iterator[None]:
    """Scripts run the work after choosing their memory plan inside this: running out of memory there (loading,
    placing, a stage no handler wraps) is reported with plan_of(), the plan in use then, and the next more
    frugal one. The exception itself carries the plan (`memory_plan`), so the report is unchanged wherever it
    is made (run_main, or a batch's report of that job), and --debug still shows its traceback."""
    try:
        yield
    except Exception as exc:
        plan = plan_of()
        if plan is not None and is_out_of_memory(exc) and not isinstance(exc, CliError):
            exc.memory_plan = plan
        raise


def out_of_memory_error(plan, where: str = "", smaller: str = "a smaller size or fewer frames") -> CliError:
    """Out of memory with a known plan: the plan that was used and the next more frugal --offload to try."""
    from producer.sizing.memory import next_offload

    frugal = next_offload(plan)
    return CliError(f"out of memory{' ' + where if where else ''} with {plan.summary()}",
                    (f"retry with --offload {frugal}" if frugal else "no more frugal plan is left") + f", or {smaller}",
                    ExitCode.OUT_OF_MEMORY, memory_plan=plan.to_dict(), next_offload=frugal)


def _out_of_memory(exc: BaseException) -> CliError:
    plan = getattr(exc, "memory_plan", None)  # set by naming_plan
    if plan is None:
        return CliError(f"out of memory: {_first_line(exc)}", "retry with a more frugal plan: --offload group "
                        "(or sequential), a smaller size, or fewer frames", ExitCode.OUT_OF_MEMORY)
    return out_of_memory_error(plan, f"({_first_line(exc)})")


def unexpected_error(exc: BaseException) -> CliError:
    """The message for an exception no code path turned into a CliError: out of memory, a file the system
    refused (named, with what to do), or a crash (the fix asks for a report)."""
    if is_out_of_memory(exc):
        return _out_of_memory(exc)
    if isinstance(exc, RuntimeError) and str(exc) == "Could not determine home directory.":
        return CliError("a path starts with ~NAME, but there is no user NAME (pathlib could not expand it)",
                        "write the folder itself, e.g. /home/me/models, or ~/models for your own home",
                        ExitCode.USAGE)
    if isinstance(exc, ValueError) and "null byte" in str(exc):  # os.stat and open refuse such a name
        return CliError("a file or folder name contains a NUL character (\\0), which no file name can hold",
                        "remove the \\0 from the names you gave (in JSON it is written \\u0000)", ExitCode.USAGE)
    if isinstance(exc, ModuleNotFoundError) and exc.name:  # a package of requirements.txt not installed here
        from producer.modelfiles.environment import IMPORTS, PIP_FIX

        module = exc.name.split(".")[0]
        package = dict(IMPORTS).get(module, module)
        return CliError(f"the Python package {package} is not installed for {sys.executable} (import {module})",
                        f"{PIP_FIX}, or pip install {package}; then validate_diffusers.py checks the rest",
                        ExitCode.FAILED)
    if isinstance(exc, OSError) and exc.filename is not None:
        if exc.errno == errno.ENOSPC:
            from producer.files.outputs import disk_full, output_for  # outputs builds on this module's CliError

            return disk_full(output_for(exc.filename))
        if exc.errno in FILE_ERRORS:
            what, fix, code = FILE_ERRORS[exc.errno]
            return CliError(f"{exc.filename}: {what}", fix, code)
    return CliError(f"{type(exc).__name__}: {_first_line(exc)}",
                    "rerun with --debug for details; if it persists, report it with that output", ExitCode.FAILED)


def run_main(parser: argparse.ArgumentParser, run: Callable[[argparse.Namespace], dict],
             argv: list[str] | None = None, describe: Callable[[dict], str] | None = None) -> int:
    """Parse, run, report. Returns the exit code (scripts call sys.exit(main())).

    A reader that closed stdout before the report came (`--json | head -c 5`) ends the run quietly with exit
    141, as a process killed by SIGPIPE would, not with a BrokenPipeError traceback (Python's documentation,
    "Note on SIGPIPE"): the work is done either way, only the report had no reader."""
    try:
        code = _run_main(parser, run, argv, describe)
        sys.stdout.flush()  # what is still buffered (--help into a pipe) fails here, not at exit
        return code
    except BrokenPipeError:
        _silence_closed_streams()
        return int(ExitCode.STDOUT_CLOSED)


def _silence_closed_streams() -> None:
    """Point a closed stdout or stderr at /dev/null, so that the flush at exit does not fail a second time."""
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):
            with contextlib.suppress(OSError, ValueError, AttributeError):
                devnull = os.open(os.devnull, os.O_WRONLY)
                os.dup2(devnull, stream.fileno())
                os.close(devnull)


def _run_main(parser, run, argv, describe) -> int:
    as_json = "--json" in (argv if argv is not None else sys.argv[1:])
    debug = "--debug" in (argv if argv is not None else sys.argv[1:])
    started = time.perf_counter()
    from producer.facts import hardware
    from producer.files import held_signals

    hardware.configure_cuda_allocator()  # before anything touches CUDA
    try:
        with _sigterm_raises():
            try:
                args = parser.parse_args(argv)
            except SystemExit as exc:  # --help / --version
                return int(exc.code or 0)
            as_json, debug = getattr(args, "json", as_json), getattr(args, "debug", debug)  # "--json" may be a value
            setup_logging(args.quiet, args.debug)
            with held_signals.one_run():
                try:
                    result = run(args)
                finally:
                    late = held_signals.signal_after_commit()  # Ctrl-C or SIGTERM once the last outputs were in place
    except CliError as err:
        return _fail(err, as_json)
    except KeyboardInterrupt:
        return _fail(CliError("interrupted (Ctrl-C); no partial output was kept", "run the same command again; "
                              "--batch runs continue where they stopped", ExitCode.INTERRUPTED), as_json)
    except Terminated:
        return _fail(CliError("terminated (SIGTERM); no partial output was kept", "run the same command again",
                              ExitCode.TERMINATED), as_json)
    except Exception as exc:  # the last line of defence: a message, never a traceback
        if debug:
            log.exception("unexpected error")
        return _fail(unexpected_error(exc), as_json)
    if late is not None:  # the run had finished its work: the outputs are complete, so it succeeded
        log.warning("%s arrived after the outputs were complete; they are kept and the run's result stands",
                    signal.Signals(late).name)
    code = int(result.pop("exit_code", ExitCode.OK))
    result.setdefault("status", "ok" if code == 0 else "partial")
    if result["status"] == "error":  # a report that is a failure too (a batch whose every job failed): say so
        _emit(f"error: {result.get('error')}", sys.stderr)
        _emit(f"  fix: {result.get('fix')}", sys.stderr)
    result.setdefault("seconds_total", round(time.perf_counter() - started, 3))
    result.update({k: v for k, v in peak_memory().items() if k not in result})
    if as_json:
        _emit_json(result)
    elif describe is not None:
        _emit(describe(result))
    return code


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip() or type(exc).__name__
    return text.splitlines()[0][:500]


def _fail(err: CliError, as_json: bool) -> int:
    _emit(f"error: {err.message}", sys.stderr)
    if err.fix:
        _emit(f"  fix: {err.fix}", sys.stderr)
    if as_json:
        _emit_json(err.to_dict())
    return int(err.code)


def _emit_json(obj: dict) -> None:
    """One JSON object on stdout; \\u escapes where stdout cannot carry a character (a file name that is not
    valid UTF-8 on a strict stream): the JSON means the same."""
    try:
        print(json.dumps(obj, ensure_ascii=False, default=str), flush=True)
    except UnicodeEncodeError:
        print(json.dumps(obj, ensure_ascii=True, default=str), flush=True)


def _emit(text: str, stream=None) -> None:
    """A line for people; characters the stream cannot carry are shown as escapes rather than crashing."""
    stream = stream or sys.stdout
    try:
        print(text, file=stream, flush=True)
    except UnicodeEncodeError:
        print(text.encode("ascii", "backslashreplace").decode("ascii"), file=stream, flush=True)
