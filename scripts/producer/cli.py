"""Conventions every script shares: exit codes, errors that name the fix, --json (output files: outputs.py).

Agents read stdout, people read stderr: with --json exactly one JSON object goes to stdout (also on
failure); logs and progress bars always go to stderr. No traceback reaches the user unless --debug.
"""

from __future__ import annotations

import argparse
import contextlib
import enum
import errno
import json
import logging
import math
import os
import secrets
import signal
import sys
import time
from typing import Any, Callable, Iterator

log = logging.getLogger("producer")


class ExitCode(enum.IntEnum):
    OK = 0
    FAILED = 1  # generation or an internal step failed
    USAGE = 2  # bad arguments or bad input files
    MISSING_MODEL = 3  # weights not installed: run setup_diffusers.py
    OUT_OF_MEMORY = 4  # GPU or host memory ran out: the message names the next plan to try
    BUSY = 5  # another run holds the lock on this output
    PARTIAL = 6  # a batch finished with some jobs failed (the JSON lists them)
    INTERRUPTED = 130  # Ctrl-C
    STDOUT_CLOSED = 141  # stdout was closed before the report was written (`... | head`): 128 + SIGPIPE
    TERMINATED = 143  # SIGTERM


EXIT_CODE_HELP = (
    "exit codes: 0 ok, 1 generation failed, 2 bad arguments or input, 3 model not installed, "
    "4 out of memory, 5 output locked by another run, 6 batch partly failed, 130 interrupted, "
    "141 stdout closed, 143 terminated"
)


class CliError(Exception):
    """A failure the user can fix: what went wrong, and what to do next."""

    def __init__(self, message: str, fix: str = "", code: ExitCode = ExitCode.USAGE, **details: Any):
        super().__init__(message)
        self.message = message
        self.fix = fix
        self.code = ExitCode(code)
        self.details = details

    def to_dict(self) -> dict:
        d = {"status": "error", "error": self.message, "fix": self.fix, "exit_code": int(self.code)}
        d.update(self.details)
        return d


class Terminated(BaseException):
    """SIGTERM, raised where the process is so that cleanup code (temp files, locks) runs."""


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
    from .memory import OFFLOAD_CHOICES, WEIGHT_CHOICES

    g = parser.add_argument_group("memory, device and speed")
    g.add_argument("--offload", choices=OFFLOAD_CHOICES, default="auto",
                   help="override the memory plan: none (all on GPU), model (one model on the GPU at a time), "
                        "group (block-level offload with prefetch, every block streamed; auto keeps the blocks that fit on "
                        "the card), sequential (layer by layer, slowest)")
    g.add_argument("--weights", choices=WEIGHT_CHOICES, default="auto",
                   help="override the weight form: bf16, fp8 (fp8 storage), gguf-q8, gguf-q4 (GGUF files)")
    g.add_argument("--device", default=None, help="cpu, cuda or cuda:N (default: the best available)")
    g.add_argument("--compile", choices=("auto", "on", "off"), default="auto",
                   help="compile the transformer blocks (same results; measured on an H200: 11%% faster per Wan "
                        "clip after a one-off ~15 s compile, 19%% per Qwen image after ~11 s). auto: on with the "
                        "weights on a CUDA GPU for runs of 8+ Wan clips or 32+ Qwen images")
    g.add_argument("--fp8-matmul", action="store_true",
                   help="fp8 matrix multiplies (torchao) on GPUs with fp8 tensor cores, weights resident: on an "
                        "H200 a Wan clip took 13.08 s against 14.55 s compiled; changes the numbers slightly "
                        "(4.5%% relative difference on one forward), so it is off unless asked for")
    g.add_argument("--attention", default=None, metavar="BACKEND",
                   help="a diffusers attention backend, e.g. _native_cudnn, flash, sage (when installed); "
                        "default: PyTorch's own choice")


def resolve_seed(seed: int | None) -> int:
    """A seed is always chosen, used, printed and stored. 0 is an ordinary seed, not 'random'."""
    return secrets.randbelow(2**32) if seed is None else seed


def not_text(value: str) -> str | None:
    """Why `value` cannot go to a text encoder or onto a picture, or None. Bytes that are not UTF-8 (a terminal
    or file in another encoding) arrive as lone surrogates, which no tokenizer accepts."""
    try:
        value.encode("utf-8")
    except UnicodeEncodeError as exc:
        return f"is not UTF-8 text (undecodable bytes at character {exc.start})"
    return None


def text_arg(value: str) -> str:
    """argparse type for prompts and card texts: refused, with the reason, when not_text says so."""
    problem = not_text(value)
    if problem:
        raise argparse.ArgumentTypeError(f"{value[:40]!r} {problem}; type or save it as UTF-8")
    return value


def seed_arg(value: str) -> int:
    try:
        seed = int(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"seed must be a whole number, not {value!r}") from None
    if not 0 <= seed < 2**64:
        raise argparse.ArgumentTypeError(f"seed must be between 0 and 2^64-1, not {seed}")
    return seed


def _bound(low: float | None, high: float | None, above: bool) -> str:
    if low is None:
        return f"at most {high:g}"
    if high is None:
        return f"above {low:g}" if above else f"at least {low:g}"
    return f"{'above ' if above else ''}{low:g} to {high:g}"


def number_arg(low: float | None = None, high: float | None = None, *, whole: bool = False,
               above: bool = False) -> Callable[[str], float | int]:
    """argparse type for a number every later step can compute with: finite, in [low, high] (`above`: low
    itself excluded), a whole number with `whole`. nan, inf and 1e308 are refused while the arguments are
    read, before anything loads, with the allowed range in the message."""
    kind = "a whole number" if whole else "a number"
    allowed = f"{kind} {_bound(low, high, above)}"

    def parse(text: str) -> float | int:
        try:
            value = int(text) if whole else float(text)
        except (ValueError, OverflowError):
            raise argparse.ArgumentTypeError(f"{text!r} is not {kind}; give {allowed}") from None
        inside = (low is None or (value > low if above else value >= low)) and (high is None or value <= high)
        if not (math.isfinite(value) and inside):
            raise argparse.ArgumentTypeError(f"{text!r} is out of range; give {allowed}")
        return value

    parse.__name__ = "whole number" if whole else "number"  # argparse names the type in some messages
    return parse


def load_json(text: str | bytes, **options) -> Any:
    """json.loads for files a user or another program wrote. Nesting too deep for Python's parser (thousands
    of '[') is a json.JSONDecodeError like any other malformed JSON, so every reader's message for bad JSON
    covers it, instead of a RecursionError."""
    try:
        return json.loads(text, **options)
    except RecursionError:
        text = text.decode("utf-8", "replace") if isinstance(text, bytes) else text
        raise json.JSONDecodeError("nested too deeply (arrays or objects inside each other thousands of "
                                   "levels deep)", text, 0) from None


# ---------------------------------------------------------------- timing and memory


class Stopwatch:
    """Seconds per stage, for the JSON report and the benchmark."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}

    @contextlib.contextmanager
    def stage(self, name: str) -> Iterator[None]:
        from . import faults, outputs

        outputs.deliver_late_signal()  # a signal held over the last commit stops the run before new work
        faults.at(f"stage:{name}")  # inert outside the reliability tests (see producer.faults)
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


# A file the system refused: what it means for the user, the fix, and whose fault it is.
FILE_ERRORS = {
    errno.ENAMETOOLONG: ("the name is too long", "use a shorter name (at most 255 bytes per file or folder name)",
                         ExitCode.USAGE),
    errno.ENOENT: ("no such file or folder", "check the path", ExitCode.USAGE),
    errno.ENOTDIR: ("a part of the path is a file, not a folder", "check the path", ExitCode.USAGE),
    errno.EISDIR: ("it is a folder, not a file", "give a file", ExitCode.USAGE),
    errno.ELOOP: ("a symbolic link leads in a circle", "check the links on the path", ExitCode.USAGE),
    errno.EACCES: ("permission denied", "check the permissions (ls -l), or use another folder", ExitCode.USAGE),
    errno.EPERM: ("operation not permitted", "check the permissions (ls -l), or use another folder", ExitCode.USAGE),
    errno.EROFS: ("the file system is read-only", "write to another folder", ExitCode.FAILED),
}


def missing(path: str | os.PathLike) -> str:
    """Why `path` is not there, for "FILE <reason>" messages: a symlink loop or a dangling link is not simply
    "does not exist", and a name holding a NUL character cannot exist at all."""
    text = os.fspath(path)
    if "\0" in text:
        return "cannot exist: its name contains a NUL character (\\0), which no file name can hold"
    try:
        os.stat(text)
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            return "cannot be reached: a symbolic link on its path leads in a circle (check the links with ls -l)"
        if exc.errno == errno.ENOTDIR:
            return "cannot exist: a part of its path is a file, not a folder"
        if os.path.islink(text):
            return f"is a symbolic link to {os.readlink(text)}, which does not exist"
    return "does not exist"


_plan_in_use: list = []  # this run's memory plan, once chosen (note_plan): out-of-memory messages name it


def note_plan(plan) -> None:
    """Scripts call this when their memory plan is chosen: running out of memory anywhere after that (loading,
    placing, a stage no handler wraps) is reported with the plan and the next more frugal one."""
    _plan_in_use[:] = [plan]


def out_of_memory_error(plan, where: str = "", smaller: str = "a smaller size or fewer frames") -> CliError:
    """Out of memory with a known plan: the plan that was used and the next more frugal --offload to try."""
    from .memory import next_offload

    frugal = next_offload(plan)
    return CliError(f"out of memory{' ' + where if where else ''} with {plan.summary()}",
                    (f"retry with --offload {frugal}" if frugal else "no more frugal plan is left") + f", or {smaller}",
                    ExitCode.OUT_OF_MEMORY, memory_plan=plan.to_dict(), next_offload=frugal)


def _out_of_memory(exc: BaseException) -> CliError:
    if not _plan_in_use:
        return CliError(f"out of memory: {_first_line(exc)}", "retry with a more frugal plan: --offload group "
                        "(or sequential), a smaller size, or fewer frames", ExitCode.OUT_OF_MEMORY)
    return out_of_memory_error(_plan_in_use[0], f"({_first_line(exc)})")


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
    if isinstance(exc, OSError) and exc.filename is not None:
        if exc.errno == errno.ENOSPC:
            from .outputs import disk_full, output_for  # outputs builds on this module's CliError

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
    _plan_in_use.clear()  # a plan noted by an earlier run in this process is not this run's
    from . import hardware, outputs  # outputs builds on this module's CliError

    hardware.configure_cuda_allocator()  # before anything touches CUDA
    try:
        with _sigterm_raises():
            try:
                args = parser.parse_args(argv)
            except SystemExit as exc:  # --help / --version
                return int(exc.code or 0)
            as_json, debug = getattr(args, "json", as_json), getattr(args, "debug", debug)  # "--json" may be a value
            setup_logging(args.quiet, args.debug)
            with outputs.one_run():
                try:
                    result = run(args)
                finally:
                    late = outputs.signal_after_commit()  # Ctrl-C or SIGTERM once the last outputs were in place
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
