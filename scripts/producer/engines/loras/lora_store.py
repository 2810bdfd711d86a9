"""LoRA folds kept between runs: a later process folds the same LoRAs into the same GGUF model without peft.

lora_refold folds a LoRA again into an expert read again within one process; the first load of each expert in a
process still went the whole way (diffusers' conversion, peft's adapters, the check, the fold: 3.70 s for both Wan
experts on an H100, bench/results/2026-12-07-h100-late/lora.json). A whole-way load whose folds were all captured
(each Refold checked against the fold's own factors, bit for bit, on sampled layers) is written here with its
report, under a key of everything its result depends on: the family, each LoRA's path, strength and components,
each file's size and modification time, a fingerprint of each model's parameters (names, shapes, dtypes, GGUF
types), allow_partial, this package's source and the versions of torch, diffusers and peft. A later load under
the same key folds from the files with the kept Refolds (lora_refold; H100: 1.0-1.3 s for both Wan experts
against 3.70 s the whole way) and reports what the first load reported. Nothing here ever fails a load: a missing,
unreadable or different entry means the whole way, and a store that cannot be written is only logged.

The entries live in huggingface_hub's assets folder ($HF_ASSETS_CACHE, by default $HF_HOME/assets), under
ai-video-producer/lora-folds, one small JSON file each; the oldest beyond KEPT are removed.
PRODUCER_LORA_STORE=0 (or false, no, off) turns the store off (every load the whole way, nothing written).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path

import torch

from producer.engines.loras import lora_refold
from producer.engines.loras.lora_files import LoraSpec
from producer.engines.loras.lora_report import LoraReport, log_lora, report_from_dict, warn_alpha_given_as_strength
from producer.errors import CliError
from producer.files.outputs import write_json_atomic
from producer.values import env_switch

log = logging.getLogger("producer")

ENV = "PRODUCER_LORA_STORE"
FORMAT = 1
KEPT = 32  # entries; each is a few hundred KB at most (layer names and scales, no tensors)
_SOURCES = [Path(__file__).parent, Path(__file__).parents[2] / "sizing" / "folded_lora.py"]


def store_dir() -> Path:
    from huggingface_hub import constants

    assets = os.environ.get("HF_ASSETS_CACHE") or Path(constants.HF_HOME) / "assets"
    return Path(assets) / "ai-video-producer" / "lora-folds"


@dataclass
class Entry:
    """One load's place in the store: its key, and the file the key names."""

    key: dict
    path: Path

    @classmethod
    def for_load(cls, pipe, specs: list[LoraSpec], family: str, allow_partial: bool) -> Entry | None:
        """The entry of this load, taken before anything is loaded (a fold adds parameters); None when the store
        is off or a file cannot be looked at (the load then reports that itself)."""
        if not env_switch(ENV, True):
            return None
        if any(getattr(pipe, c, None) is None for s in specs for c in s.components):
            return None  # the whole way says which expert is missing
        try:
            key = _key(pipe, specs, family, allow_partial)
        except OSError:
            return None
        digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:32]
        return cls(key, store_dir() / f"{digest}.json")

    def recall(self, pipe) -> LoraReport | None:
        """Fold the kept LoRAs into `pipe` and give the kept report; None, with nothing changed, where there is no
        entry or it does not hold this load."""
        try:
            data = json.loads(self.path.read_text())
            if data.get("key") != self.key:
                return None
            refolds = {c: _refold_from(r) for c, r in data["refolds"].items()}
            report, folded = report_from_dict(data["report"]), dict(data["folded"])
            if not all(_named(s, self.key["specs"]) for r in refolds.values() for s in r.specs):
                raise ValueError("the entry folds other files than its key names")
            # refold_all changes nothing until every factor is made, so an error here leaves the model as it was
            plans = lora_refold.refold_all(pipe, list(refolds.values()))
        except (OSError, ValueError, KeyError, IndexError, TypeError, AttributeError, RuntimeError, CliError) as exc:
            log.debug("LoRA store entry %s not used (%s: %s)", self.path.name, type(exc).__name__, exc)
            return None  # the whole way, which reports a file's problem in its own words
        if plans is None:
            return None
        report._refolds, report._folded = refolds, folded
        for lora in report.loras:
            log_lora(lora)
        for plan in plans:
            warn_alpha_given_as_strength(plan)
        log.info("LoRAs folded from the store (%s), as their first load with these files folded them",
                 self.path.name)
        with contextlib.suppress(OSError):  # the oldest-used entries go first (_prune)
            os.utime(self.path)
        return report

    def keep(self, report: LoraReport) -> None:
        """Write a whole-way load whose every folded component has a Refold; never fails the load."""
        components = sorted(self.key["models"])
        if sorted(report._folded) != components or any(report._refolds.get(c) is None for c in components):
            return
        data = {"key": self.key, "report": report.to_dict(), "folded": report._folded,
                "refolds": {c: _refold_to(report._refolds[c]) for c in components}}
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            write_json_atomic(self.path, data)
            _prune(self.path.parent)
        except (OSError, CliError) as exc:  # a full disk is a CliError there
            log.info("the LoRA fold was not kept for later runs (%s); the next run loads it the whole way", exc)


def _key(pipe, specs: list[LoraSpec], family: str, allow_partial: bool) -> dict:
    import diffusers
    import peft

    paths = sorted({Path(s.path).resolve() for s in specs})
    return {
        "format": FORMAT, "family": family, "allow_partial": allow_partial,
        "specs": [_spec_key(s) for s in specs],
        "files": {str(p): [p.stat().st_size, p.stat().st_mtime_ns] for p in paths},
        "models": {c: fingerprint(getattr(pipe, c)) for c in sorted({c for s in specs for c in s.components})},
        "versions": [torch.__version__, diffusers.__version__, peft.__version__],
        "code": _code_digest(),
    }


def _spec_key(spec: LoraSpec) -> list:
    return [str(Path(spec.path).resolve()), spec.strength, list(spec.components), spec.label]


def _named(spec: LoraSpec, keyed: list) -> bool:
    """Is `spec` (a Refold's: one component) part of one of the key's specs?"""
    path, strength, components, label = _spec_key(spec)
    return any(path == p and strength == s and label == lbl and set(components) <= set(c) for p, s, c, lbl in keyed)


def fingerprint(model: torch.nn.Module) -> str:
    """What a fold depends on in a model: each parameter's name, shape, dtype and GGUF type (not its values)."""
    h = hashlib.sha256()
    for name, p in model.named_parameters():
        h.update(f"{name}|{tuple(p.shape)}|{p.dtype}|{getattr(p, 'quant_type', '')};".encode())
    return h.hexdigest()


def _code_digest() -> str:
    h = hashlib.sha256()
    for source in _SOURCES:
        for f in sorted(source.glob("*.py")) if source.is_dir() else [source]:
            h.update(f.read_bytes())
    return h.hexdigest()


def _refold_to(refold: lora_refold.Refold) -> dict:
    return {"family": refold.family,
            "specs": [_spec_key(s) for s in refold.specs],  # resolved: a later run may start in another folder
            "layers": {name: [[[list(names), rank] for names, rank in parts],
                              [[i, scale, str(a).removeprefix("torch."), str(b).removeprefix("torch.")]
                               for i, scale, a, b in order]]
                       for name, (parts, order) in refold.layers.items()}}


def _refold_from(data: dict) -> lora_refold.Refold:
    def dtype(name: str) -> torch.dtype:
        value = getattr(torch, name)
        if not isinstance(value, torch.dtype):
            raise TypeError(f"{name} is not a dtype")
        return value

    specs = [LoraSpec(Path(path), float(strength), tuple(components), label)
             for path, strength, components, label in data["specs"]]
    layers = {name: ([(tuple(names), int(rank)) for names, rank in parts],
                     [(int(i), float(scale), dtype(a), dtype(b)) for i, scale, a, b in order])
              for name, (parts, order) in data["layers"].items()}
    return lora_refold.Refold(specs, data["family"], layers)


def _prune(folder: Path) -> None:
    """Remove the least recently used entries beyond KEPT (not another process's temp files, named '.*')."""
    entries = sorted((p for p in folder.glob("*.json") if not p.name.startswith(".")),
                     key=lambda p: p.stat().st_mtime_ns, reverse=True)
    for old in entries[KEPT:]:
        old.unlink(missing_ok=True)
