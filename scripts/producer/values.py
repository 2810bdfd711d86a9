"""Values a user or another program gave: text, numbers, seeds and JSON, checked where they are read.

The bottom of the package beside errors.py: argparse types and readers that any layer may use, and the
shared logger (people read stderr)."""

from __future__ import annotations

import argparse
import json
import logging
import math
import os
import re
import secrets
import unicodedata
from collections.abc import Callable
from typing import Any

log = logging.getLogger("producer")


ON, OFF = ("1", "true", "yes", "on"), ("0", "false", "no", "off")


def env_switch(name: str, default: bool) -> bool:
    """A switch set in the environment: 1/true/yes/on or 0/false/no/off (any case); `default` when unset or
    anything else."""
    setting = os.environ.get(name, "").strip().lower()
    return True if setting in ON else False if setting in OFF else default


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


def blank(text: str) -> bool:
    """No letter, mark, digit, punctuation or symbol in `text`: only spaces, line breaks and invisible format
    characters (a zero-width space, a byte-order mark), which give a text encoder nothing to follow."""
    return not any(unicodedata.category(c)[0] in "LMNPS" for c in text)


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


def device_arg(value: str) -> str:
    """argparse type for --device: cpu, cuda, cuda:N or mps, lower-cased. Anything else reached torch.device (or
    torch.cuda with an index that is not a number) only after the model files were found: a crash, not a message."""
    text = value.strip().lower()
    if not re.fullmatch(r"cpu|mps|cuda(:[0-9]{1,3})?", text):
        raise argparse.ArgumentTypeError(f"{value!r} is not a device; give cpu, cuda, cuda:N (a GPU's index, e.g. "
                                         "cuda:1) or mps")
    return text


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
