"""How many parameters a LoRA's factors hold, from its files' headers (nothing else is read), or from the
registry's file sizes before it is installed: what `ModelFootprint.adapter_params` counts, since GGUF weights
keep the factors beside them (producer.sizing.folded_lora). Used by the scripts' plans (through
producer.engines.loras.lora_files), `production.py estimate` and setup's download plan.
"""

from __future__ import annotations

import math
from pathlib import Path

from producer.facts import registry
from producer.modelfiles import models

DOWN_SUFFIXES = (".lora_down.weight", ".lora_A.weight")
UP_SUFFIXES = (".lora_up.weight", ".lora_B.weight")


def pair_params(path: Path) -> int:
    """Parameters of a LoRA file's down and up matrices, from its header (nothing else is read); 0 for a file
    that cannot be read here (loading reports that with its own message)."""
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(str(path), framework="pt", device="cpu") as f:
            return sum(math.prod(f.get_slice(k).get_shape()) for k in f.keys()  # noqa: SIM118 - a reader, not a dict
                       if k.endswith(DOWN_SUFFIXES + UP_SUFFIXES))
    except (SafetensorError, OSError, UnicodeError):
        return 0


def entry_params(name: str, steps: int | None = None) -> int:
    """The LoRA factors one denoiser keeps beside GGUF weights for a registry LoRA entry (what
    `ModelFootprint.adapter_params` counts), the largest over the denoisers its files go into: read from the
    files' headers where installed, else from the registry's file sizes at 2 bytes a parameter (bf16 files;
    an upper bound, since a file also holds alphas and biases). Entries whose roles are step counts
    (qwen-lightning) load one file: `steps`' (4 by default)."""
    entry = registry.get(name)
    if set(entry.roles) <= set(registry.WAN_DENOISERS):  # one file per expert
        per_denoiser = [[filename] for filename in entry.roles.values()]
    elif all(role.isdigit() for role in entry.roles):
        per_denoiser = [[entry.roles[str(steps or 4)]]]
    else:  # every file into the entry's targets
        per_denoiser = [list(entry.roles.values())]
    return max(sum(_lora_file_params(entry, f) for f in files) for files in per_denoiser)


def _lora_file_params(entry: registry.ModelEntry, filename: str) -> int:
    if models.is_present(entry) and (models.locate(entry) / filename).is_file():
        return pair_params(models.locate(entry) / filename)
    size = entry.file_sizes.get(filename) or entry.size_bytes // len(set(entry.roles.values()))
    return size // 2
