"""Do the installed weight files fit their configs? Checked without loading a single weight.

Each model is built on the meta device from its config (no memory, no weights), and its parameters are
compared with the tensors the files declare: safetensors headers (`safe_open`, which reads only the
header) or GGUF tensor infos (`gguf.GGUFReader`, memory-mapped; logical shapes are the reversed ggml
dims, as diffusers reads them). Key names go through the loaders' own renames first: transformers'
checkpoint conversion mapping (e.g. Qwen2.5-VL's `model.layers` -> `model.language_model.layers`) and
diffusers' single-file converters for GGUF experts (original Wan names -> diffusers names).

What it catches before a 10-minute load: a wrong config (parameters without weights, weights without
parameters, other shapes), a truncated or foreign weight file (its header does not parse), a missing
shard. Components without weights (tokenizer, scheduler, processor) are loaded for real: they are small.
"""

from __future__ import annotations

import json
import re
from dataclasses import asdict, dataclass, field
from pathlib import Path

SAMPLES = 3  # names listed per kind of problem


@dataclass
class Coverage:
    label: str  # e.g. "wan-i2v/transformer"
    model_class: str
    parameters: int = 0  # distinct parameter tensors the model has
    covered: int = 0  # of those, found in the files with the right shape
    missing: list[str] = field(default_factory=list)  # parameters no file holds
    unexpected: list[str] = field(default_factory=list)  # file tensors the model has no place for
    mismatched: list[str] = field(default_factory=list)  # "name: file (..) vs model (..)"
    files: list[str] = field(default_factory=list)
    error: str | None = None  # the config or a file could not be read at all

    @property
    def ok(self) -> bool:
        return self.error is None and not (self.missing or self.unexpected or self.mismatched)

    def to_dict(self) -> dict:
        d = asdict(self)
        for key in ("missing", "unexpected", "mismatched"):
            d[f"{key}_count"] = len(d[key])
            d[key] = d[key][:SAMPLES]
        d["ok"] = self.ok
        return d

    def describe(self) -> str:
        if self.error:
            return f"{self.label} ({self.model_class}): {self.error}"
        if self.ok:
            return f"{self.label} ({self.model_class}): all {self.parameters} parameter tensors covered"
        parts = [f"{len(v)} {k} (e.g. {', '.join(v[:SAMPLES])})" for k, v in
                 (("without weights", self.missing), ("unexpected in the files", self.unexpected),
                  ("of another shape", self.mismatched)) if v]
        return f"{self.label} ({self.model_class}): {self.covered}/{self.parameters} covered; " + "; ".join(parts)


# ---------------------------------------------------------------- models on the meta device


def read_config(folder: Path) -> dict:
    return json.loads((folder / "config.json").read_text(encoding="utf-8"))


def meta_model(folder: Path):
    """The model a component folder describes, built on the meta device from its config.json."""
    import torch

    cfg = read_config(folder)
    with torch.device("meta"):
        if "_class_name" in cfg:
            import diffusers

            cls = getattr(diffusers, cfg["_class_name"], None)
            if cls is None:
                raise ValueError(f"diffusers {diffusers.__version__} has no class {cfg['_class_name']}")
            return cls.from_config(cfg)
        import transformers

        archs = cfg.get("architectures") or []
        cls = getattr(transformers, archs[0], None) if archs else None
        if cls is None:
            raise ValueError(f"transformers {transformers.__version__} has no class {archs[:1] or '(none named)'}")
        return cls._from_config(transformers.AutoConfig.from_pretrained(folder))


def _parameter_groups(model) -> list[list[str]]:
    """Names of each distinct parameter (tied parameters share one tensor: any of their names will do)."""
    groups: dict[int, list[str]] = {}
    for name, param in model.named_parameters(remove_duplicate=False):
        groups.setdefault(id(param), []).append(name)
    # transformers 5: {target: source} of the ties this config asks for (made after loading, so not yet shared)
    tied = getattr(model, "all_tied_weights_keys", None)
    if isinstance(tied, dict):
        by_name = {n: g for g in groups.values() for n in g}
        for target, source in tied.items():
            if target in by_name and source in by_name and by_name[target] is not by_name[source]:
                by_name[source].extend(by_name[target])
                by_name[target].clear()
    return [g for g in groups.values() if g]


# ---------------------------------------------------------------- what the files declare


def safetensors_shapes(folder: Path) -> tuple[dict[str, tuple], list[str]]:
    """Tensor name -> shape from the headers of every .safetensors file of a component (index or not)."""
    from safetensors import safe_open

    shards = _shards(folder)
    shapes: dict[str, tuple] = {}
    for shard in shards:
        with safe_open(str(shard), framework="pt") as fh:
            for key in fh.keys():
                shapes[key] = tuple(fh.get_slice(key).get_shape())
    return shapes, [s.name for s in shards]


def _shards(folder: Path) -> list[Path]:
    indexes = sorted(folder.glob("*.safetensors.index.json"))
    if indexes:
        index = json.loads(indexes[0].read_text(encoding="utf-8"))
        names = sorted(set(index.get("weight_map", {}).values()))
        missing = [n for n in names if not (folder / n).is_file()]
        if missing:
            raise FileNotFoundError(f"{indexes[0].name} names shards that are missing: {', '.join(missing[:SAMPLES])}")
        return [folder / n for n in names]
    shards = sorted(folder.glob("*.safetensors"))
    if not shards:
        raise FileNotFoundError(f"no .safetensors weights in {folder.name}/")
    return shards


# Tensors that mark a file's variant and hold no weights: Comfy-Org's Qwen-Image-Edit-2511 repacks carry
# `__index_timestep_zero__` (ComfyUI registers it; stable-diffusion.cpp and musubi-tuner drop it by name).
# diffusers' from_single_file leaves it unused (a logged "weights not used" warning) and loads the rest.
GGUF_MARKER_TENSORS = frozenset({"__index_timestep_zero__"})


def gguf_shapes(path: Path) -> dict[str, tuple]:
    """Tensor name -> logical shape (numpy order) of a GGUF file, from its tensor infos only (marker
    tensors left out: they are not weights)."""
    import gguf

    reader = gguf.GGUFReader(str(path))
    return {t.name: tuple(int(d) for d in reversed(t.shape.tolist())) for t in reader.tensors
            if t.name not in GGUF_MARKER_TENSORS}


# ---------------------------------------------------------------- renames the loaders apply


def _transformers_renamer(model):
    """transformers 5's checkpoint key renames for this model (identity where there are none)."""
    try:
        from transformers.conversion_mapping import get_model_conversion_mapping
        from transformers.core_model_loading import WeightConverter, rename_source_key
    except ImportError:  # transformers < 5: checkpoints use the module names
        return lambda key: (key, False)
    transforms = get_model_conversion_mapping(model)
    converters = [t for t in transforms if isinstance(t, WeightConverter)]
    renamings = [t for t in transforms if not isinstance(t, WeightConverter)]
    meta_state = model.state_dict()

    def rename(key: str) -> tuple[str, bool]:
        new, converter = rename_source_key(key, renamings, converters, model.base_model_prefix, meta_state)
        return new, converter is not None  # a converter may reshape (merge/split): compare names only

    return rename


def gguf_to_diffusers(model, shapes: dict[str, tuple]) -> dict[str, tuple]:
    """Rename a GGUF file's keys as diffusers' from_single_file does for this model class."""
    import torch
    from diffusers.loaders.single_file_model import SINGLE_FILE_LOADABLE_CLASSES

    mapping = SINGLE_FILE_LOADABLE_CLASSES.get(type(model).__name__, {}).get("checkpoint_mapping_fn")
    if mapping is None:
        return shapes
    fake = {k: torch.empty(s, device="meta") for k, s in shapes.items()}
    converted = mapping(checkpoint=fake, config=dict(model.config))
    return {k: tuple(v.shape) for k, v in converted.items()}


# ---------------------------------------------------------------- comparing


def compare(label: str, model, shapes: dict[str, tuple], files: list[str], renamer=None) -> Coverage:
    cov = Coverage(label, type(model).__name__, files=files)
    expected = {n: tuple(t.shape) for n, t in model.state_dict(keep_vars=True).items()}
    found: dict[str, tuple | None] = {}  # model name -> shape from the file (None: converted, shape unknown)
    for key, shape in shapes.items():
        name, converted = renamer(key) if renamer else (key, False)
        if name in expected:
            found[name] = None if converted else shape
        elif not _ignored(model, name):
            cov.unexpected.append(key)
    groups = _parameter_groups(model)
    cov.parameters = len(groups)
    for names in groups:
        present = [n for n in names if n in found]
        if not present:
            cov.missing.append(names[0])
        elif found[present[0]] is not None and found[present[0]] != expected[present[0]]:
            cov.mismatched.append(f"{present[0]}: file {found[present[0]]} vs model {expected[present[0]]}")
        else:
            cov.covered += 1
    return cov


def _ignored(model, name: str) -> bool:
    patterns = getattr(model, "_keys_to_ignore_on_load_unexpected", None) or []
    return any(re.search(p, name) for p in patterns)


def check_folder(label: str, folder: Path) -> Coverage:
    """A diffusers or transformers component folder: config + safetensors weights."""
    try:
        model = meta_model(folder)
    except Exception as exc:  # a config the class rejects, a class the library lacks, unreadable JSON
        return Coverage(label, _class_name(folder), error=f"the config does not build: {short_error(exc)}")
    try:
        shapes, files = safetensors_shapes(folder)
    except Exception as exc:  # safetensors raises its own error types for a truncated or foreign file
        return Coverage(label, type(model).__name__, error=f"weights unreadable: {short_error(exc)}")
    renamer = _transformers_renamer(model) if "architectures" in read_config(folder) else None
    return compare(label, model, shapes, files, renamer)


def check_gguf(label: str, path: Path, config_folder: Path) -> Coverage:
    """A GGUF transformer file against the diffusers config it is loaded with."""
    try:
        model = meta_model(config_folder)
    except Exception as exc:
        return Coverage(label, _class_name(config_folder), error=f"the config does not build: {short_error(exc)}")
    try:
        shapes = gguf_to_diffusers(model, gguf_shapes(path))
    except Exception as exc:  # gguf raises ValueError/IndexError on a truncated file
        return Coverage(label, type(model).__name__, files=[path.name], error=f"GGUF unreadable: {short_error(exc)}")
    return compare(label, model, shapes, [path.name])


def _class_name(folder: Path) -> str:
    try:
        cfg = read_config(folder)
    except (OSError, ValueError):
        return "?"
    return cfg.get("_class_name") or (cfg.get("architectures") or ["?"])[0]


def short_error(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
    return f"{type(exc).__name__}: {text[:300]}"
