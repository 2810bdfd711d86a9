"""Is each installed model what the scripts expect? (validate_diffusers.py)

`structure` (always; cheap): the pipeline class in model_index.json is the one the scripts load it with
(an earlier attempt loaded Qwen with the wrong pipeline class), every component's config parses and
names a class this diffusers/transformers has, GGUF and LoRA files open.
`deep` (--test-load): every weight file covers every parameter of its model with the right shape
(producer.modelfiles.weightcheck, on the meta device), the small components (tokenizer, scheduler, processor) load,
and every installed LoRA applies fully to the transformer(s) it is for: the same planning and report
as the scripts' LoRA loader (producer.engines.loras.lora_plan), run against meta-device transformers built from the
installed configs, so no base weight is read.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from types import SimpleNamespace

from producer.errors import CliError
from producer.facts import registry
from producer.modelfiles import needs, weightcheck

# The pipeline class each repository must declare: what the scripts load it with.
EXPECTED_PIPELINES = {
    "wan-i2v": "WanImageToVideoPipeline", "wan-i2v-components": "WanImageToVideoPipeline",
    "qwen-edit": "QwenImageEditPlusPipeline", "qwen-edit-components": "QwenImageEditPlusPipeline",
    "qwen-image-t2i": "QwenImagePipeline",
}
CONFIG_FACTS = ("num_layers", "num_attention_heads", "attention_head_dim", "in_channels", "out_channels",
                "ffn_dim", "zero_cond_t", "z_dim", "d_model", "num_hidden_layers", "hidden_size", "vocab_size")
DENOISERS = registry.WAN_DENOISERS


@dataclass
class Check:
    what: str
    ok: bool
    detail: str = ""
    data: dict = field(default_factory=dict)  # for --json (coverage, LoRA report, component facts)
    skipped: bool = False  # could not be checked because of another finding (reported there)


@dataclass
class EntryReport:
    name: str
    status: str  # the install status (producer.modelfiles.install)
    checks: list[Check] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return all(c.ok for c in self.checks)

    def to_dict(self) -> dict:
        return {"name": self.name, "status": self.status, "ok": self.ok, "checks": [asdict(c) for c in self.checks]}


def family_of(entry: registry.ModelEntry) -> str:
    return "wan" if entry.name.startswith("wan") else "qwen"


# ---------------------------------------------------------------- structure (always)


def structure(entry: registry.ModelEntry, snap: Path, detailed: bool) -> list[Check]:
    if entry.kind in ("pipeline", "components"):
        return _pipeline_structure(entry, snap, detailed)
    if entry.kind == "controlnet":
        return [_component_check("controlnet", snap, detailed)]
    if entry.kind == "gguf":
        return [_gguf_structure(snap / rel, role, detailed) for role, rel in entry.roles.items()]
    if entry.kind == "lora":
        return [_lora_structure(snap / rel, detailed) for rel in dict.fromkeys(entry.roles.values())]
    if entry.kind == "embedder":
        return [Check(f"{rel} present", (snap / rel).is_file(), "") for rel in entry.files]
    return [Check(f"{rel} present", (snap / rel).is_file(), "a pickle: opened only by the pose detector, with "
                  "torch.load(weights_only=True)") for rel in entry.files]


def _pipeline_structure(entry: registry.ModelEntry, snap: Path, detailed: bool) -> list[Check]:
    try:
        index = json.loads((snap / "model_index.json").read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        return [Check("model_index.json", False, f"unreadable: {exc}")]
    expected = EXPECTED_PIPELINES.get(entry.name)
    found = index.get("_class_name")
    checks = [Check("pipeline class", found == expected, f"{found}" + ("" if found == expected else
                    f", but the scripts load this model with {expected}: wrong repository or revision"))]
    for name, spec in _components(index):
        folder = snap / name
        if (folder / "config.json").is_file():
            checks.append(_component_check(name, folder, detailed, spec[1]))
        elif _library_class(spec) is None:
            checks.append(Check(name, False, f"{spec[0]}.{spec[1]} does not exist in this {spec[0]} version"))
        elif any(folder.glob("*")):
            checks.append(Check(name, True, spec[1]))
        else:
            checks.append(Check(name, False, f"{name}/ is missing from the snapshot"))
    return checks


def _components(index: dict) -> list[tuple[str, list]]:
    return [(k, v) for k, v in index.items() if not k.startswith("_") and isinstance(v, list) and len(v) == 2
            and v[0] is not None and v[1] is not None]


def _library_class(spec: list):
    import importlib

    try:
        return getattr(importlib.import_module(spec[0]), spec[1], None)
    except ImportError:
        return None


def _component_check(name: str, folder: Path, detailed: bool, declared: str | None = None) -> Check:
    try:
        cfg = weightcheck.read_config(folder)
    except (OSError, ValueError) as exc:
        return Check(name, False, f"config.json unreadable: {exc}")
    cls_name = cfg.get("_class_name") or (cfg.get("architectures") or [declared])[0]
    library = "diffusers" if "_class_name" in cfg else "transformers"
    if _library_class([library, cls_name]) is None:
        return Check(name, False, f"{library} has no {cls_name}: upgrade it (pip install -r requirements.txt)")
    data = {"class": cls_name}
    if detailed:
        data["config"] = _facts(cfg)
        files = [p for p in folder.rglob("*") if p.is_file()]
        data.update(files=len(files), bytes=sum(p.stat().st_size for p in files))
    return Check(name, True, cls_name, data)


def _facts(cfg: dict) -> dict:
    facts = {k: cfg[k] for k in CONFIG_FACTS if k in cfg}
    for sub in ("text_config", "vision_config"):
        if isinstance(cfg.get(sub), dict):
            facts[sub] = {k: cfg[sub][k] for k in CONFIG_FACTS if k in cfg[sub]}
    return facts


def _gguf_structure(path: Path, role: str, detailed: bool) -> Check:
    try:
        shapes = weightcheck.gguf_shapes(path)
    except Exception as exc:  # gguf raises ValueError / IndexError / OSError on a damaged file
        return Check(f"{role} ({path.name})", False, f"GGUF unreadable: {exc}")
    data = {"tensors": len(shapes)}
    if detailed:
        data["types"] = _gguf_types(path)
    return Check(f"{role} ({path.name})", True, f"{len(shapes)} tensors", data)


def _gguf_types(path: Path) -> dict:
    import gguf

    counts: dict[str, int] = {}
    for tensor in gguf.GGUFReader(str(path)).tensors:
        counts[tensor.tensor_type.name] = counts.get(tensor.tensor_type.name, 0) + 1
    return counts


def _lora_structure(path: Path, detailed: bool) -> Check:
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt") as fh:
            keys = list(fh.keys())
    except Exception as exc:  # SafetensorError on a truncated or foreign file
        return Check(path.name, False, f"unreadable: {exc}")
    pairs = sum(1 for k in keys if k.endswith((".lora_down.weight", ".lora_A.weight")))
    data = {"keys": len(keys), "lora_pairs": pairs}
    if detailed:
        data["sample_keys"] = keys[:3]
    return Check(path.name, True, f"{len(keys)} keys, {pairs} LoRA pairs", data)


# ---------------------------------------------------------------- weights against configs (--test-load)


def deep(entry: registry.ModelEntry, snap: Path, config_snaps: dict[str, Path | None]) -> list[Check]:
    """config_snaps: family -> the snapshot holding that family's transformer configs (or None)."""
    if entry.kind in ("pipeline", "components"):
        return _pipeline_deep(entry, snap)
    if entry.kind == "controlnet":
        return [_coverage_check(weightcheck.check_folder(entry.name, snap))]
    config_snap = config_snaps.get(family_of(entry))
    if entry.kind in ("gguf", "lora") and config_snap is None:
        names = " or ".join(needs.CONFIG_ENTRIES[family_of(entry)])
        return [Check("checked against the configs", True, f"not checked: the transformer configs come from {names}, "
                      "and neither is complete", skipped=True)]
    if entry.kind == "gguf":
        return [_coverage_check(weightcheck.check_gguf(f"{entry.name}/{role}", snap / rel, config_snap / role))
                for role, rel in entry.roles.items()]
    if entry.kind == "lora":
        return lora_checks(entry, config_snap)
    return []


def _pipeline_deep(entry: registry.ModelEntry, snap: Path) -> list[Check]:
    index = json.loads((snap / "model_index.json").read_text(encoding="utf-8"))
    checks = []
    for name, spec in _components(index):
        folder = snap / name
        weights = [p for p in folder.glob("*") if p.suffix == ".safetensors" or p.name.endswith(".index.json")]
        if (folder / "config.json").is_file() and weights:
            checks.append(_coverage_check(weightcheck.check_folder(f"{entry.name}/{name}", folder)))
        elif (folder / "config.json").is_file() and name in DENOISERS:
            continue  # components-only entry: the experts come as GGUF files, checked with their entry
        else:
            checks.append(_load_small(name, folder, spec))
    return checks


def _coverage_check(cov: weightcheck.Coverage) -> Check:
    return Check(f"{cov.label} weights", cov.ok, cov.describe(), cov.to_dict())


def _load_small(name: str, folder: Path, spec: list) -> Check:
    """Tokenizers, schedulers and processors are small: load them for real."""
    cls = _library_class(spec)
    if cls is None:
        return Check(f"{name} loads", False, f"{spec[0]}.{spec[1]} does not exist in this {spec[0]} version")
    try:
        cls.from_pretrained(folder)
    except Exception as exc:  # e.g. a processor that needs torchvision, a tokenizer file cut short
        return Check(f"{name} loads", False, f"{spec[1]}: {weightcheck.short_error(exc)}")
    return Check(f"{name} loads", True, spec[1])


_META_CACHE: dict[Path, object] = {}


def _meta_transformers(config_snap: Path) -> SimpleNamespace:
    found = {}
    for name in DENOISERS:
        folder = config_snap / name
        if (folder / "config.json").is_file():
            if folder not in _META_CACHE:
                _META_CACHE[folder] = weightcheck.meta_model(folder)
            found[name] = _META_CACHE[folder]
    return SimpleNamespace(**found)


def lora_checks(entry: registry.ModelEntry, config_snap: Path) -> list[Check]:
    """Plan each of the entry's LoRA files exactly as the scripts' loader would, on meta-device transformers."""
    from producer.engines.loras.lora import registry_lora_specs
    from producer.engines.loras.lora_files import read_lora
    from producer.engines.loras.lora_plan import plan_spec, refuse_incomplete
    from producer.engines.loras.lora_report import LoraReport, file_report

    family = family_of(entry)
    pipe = _meta_transformers(config_snap)
    checks = []
    for steps in ((4, 8) if entry.name == "qwen-lightning" else (None,)):
        for index, spec in enumerate(registry_lora_specs(entry.name, steps=steps)):
            what = f"LoRA {spec.path.name} -> {', '.join(spec.components)}"
            try:
                plan = plan_spec(pipe, spec, read_lora(spec.path, family), family, index)
                report = LoraReport(family, [file_report(plan, family)])
                refuse_incomplete(plan, family, allow_partial=False)
            except CliError as err:
                checks.append(Check(what, False, f"{err.message} (fix: {err.fix})"))
                continue
            except Exception as exc:  # a damaged file: safetensors raises its own error types
                checks.append(Check(what, False, f"unreadable: {weightcheck.short_error(exc)}"))
                continue
            checks.append(Check(what, True, report.describe(), report.to_dict()))
    return checks
