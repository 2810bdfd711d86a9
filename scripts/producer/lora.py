"""LoRAs for Wan 2.2 (two experts) and Qwen-Image-Edit, loaded exactly or not at all.

Users of these models fight "lora key not loaded" and loaders that apply part of a LoRA without a
word. This module loads every LoRA with diffusers' own mechanism (`load_lora_weights`, then
`set_adapters` with a strength per expert), then checks what actually got loaded and says so:
per LoRA and per expert, how many LoRA modules (A/B pairs) and weight deltas were applied, and
which keys were skipped and why. A LoRA that applies to nothing is always an error; one that
applies to only part of what it holds is an error unless `allow_partial=True`.

Command-line syntax (`parse_lora_spec`): Wan `FILE[:STRENGTH[:high|low|both]]` (default: both
experts), Qwen `FILE[:STRENGTH]`. Only `.safetensors` files are read: pickles (`.pt`, `.pth`,
`.ckpt`, `.bin`) can run code when loaded.

What diffusers 0.42.1 does with each kind of key, and what we do instead
------------------------------------------------------------------------
`lora_down`/`lora_up` (or `lora_A`/`lora_B`) + `alpha`:
    converted by `_convert_non_diffusers_wan_lora_to_diffusers` / `_convert_non_diffusers_qwen_lora_to_diffusers`,
    alpha/rank folded into the A and B matrices. We let diffusers convert and load them, then
    verify each module with a probe vector: loaded B·A·x must equal (alpha/rank)·up·down·x.
attention/FFN `.diff_b` (bias deltas):
    diffusers turns them into peft `lora_B.bias` (`lora_bias=True`). We add them to the bias
    directly instead (bias += strength * delta), like every other delta below.
norm `.diff` / `.diff_b`:
    diffusers drops them silently ("just zeroed values", a debug log). They are not always zero.
`.diff_m` (the per-block `modulation` tensor, diffusers' `blocks.N.scale_shift_table`), other `.diff`:
    diffusers drops them with an info log nobody sees.
Our rule: apply them or report them, never drop them silently. A non-zero delta is added to its
parameter (weight += strength * delta; names mapped with diffusers' own single-file Wan renames);
an all-zero one is reported as "all zeros (no effect)". A delta cannot be added to a GGUF-quantized
tensor: a weight delta of a linear layer then rides along as a LoRA pair with an identity factor
(rank min(out, in), e.g. 64 for Wan's head.head.diff; diffusers' converter does the same for that
key); anything else on a quantized tensor is reported as lost ("cannot add a delta to quantized
weights"), which makes the LoRA partial. (In GGUF files biases, norms and modulation tables stay
plain F32 tensors, so their deltas are added directly.)
Wan 2.1 I2V image-encoder keys (`k_img`, `v_img`, `norm_k_img`, `img_emb`) have no target in
Wan 2.2, which has no image encoder: they are reported as not applicable, not as lost.

Deltas are added to the weights at load time with that expert's strength, so a later strength
change needs a reload (`unload_loras` restores the original parameters exactly).

Strength and alpha
------------------
A LoRA file stores A (rank x in), B (out x rank) and usually `alpha`; the change to a weight is
strength * (alpha / rank) * B·A. Loaders that honour the stored alpha (diffusers, ComfyUI, this
module) use strength 1.0 for the published distill LoRAs: the alpha is already in the scale. Some
UIs ignore alpha and scale by the strength alone; there the same LoRA needs strength = alpha/rank
(e.g. 0.125 = 8/64 for an alpha-8, rank-64 file). A file without alpha means alpha = rank
(scale 1). Using 0.125 here as well would apply the LoRA at 1/64 of its trained size; we warn
when a strength equals the file's alpha/rank. The report lists rank, alpha and alpha/rank.

Step-distill LoRAs (`registry_lora_specs`): `wan-lightning` puts its high-noise file into
`transformer` and its low-noise file into `transformer_2`; `wan21-lightx2v` puts its one file into
both experts; `qwen-lightning` (4 or 8 steps) and `qwen-anypose` go into the Qwen transformer.

Traps in diffusers 0.42.1 this module steps around (see the tests):
- `WanLoraLoaderMixin.fuse_lora()` fuses only `components=["transformer"]` by default; a following
  `unload_lora_weights()` then throws the low-noise expert's LoRA away. We fuse each expert ourselves.
- keys without a target module load with only a logged warning ("unexpected keys"): partial, quietly.
- Qwen LoRA keys in diffusers naming without the `transformer.` prefix are filtered out by
  `load_lora_adapter(prefix="transformer")`: nothing loads, one warning. We add the prefix.
- diffusers-named Wan keys with `.alpha` are refused by `load_lora_weights` ("Invalid LoRA checkpoint");
  we fold alpha into lora_A first.
"""

from __future__ import annotations

import contextlib
import logging
import math
import re
import warnings
from collections import defaultdict
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Iterator

from .cli import CliError, ExitCode

log = logging.getLogger("producer")

FAMILIES = ("wan", "qwen")
MODEL_TITLES = {"wan": "Wan 2.2", "qwen": "Qwen-Image-Edit"}
EXPERT_ROLES = {"transformer": "high-noise expert", "transformer_2": "low-noise expert"}
WAN_TARGETS = {"high": ("transformer",), "low": ("transformer_2",), "both": ("transformer", "transformer_2")}
WAN_TARGET_NAMES = {"transformer": "high", "transformer_2": "low"}
PICKLE_SUFFIXES = (".pt", ".pth", ".ckpt", ".bin", ".pkl", ".pickle")
MAX_ABS_STRENGTH = 10.0  # beyond this a LoRA only produces noise; a typo like 08 for 0.8 is likelier

# Key suffixes. `.lora_B.bias` is what diffusers-format files call a bias delta (peft's lora_bias).
DOWN_SUFFIXES = (".lora_down.weight", ".lora_A.weight")
UP_SUFFIXES = (".lora_up.weight", ".lora_B.weight")
ALPHA_SUFFIX = ".alpha"
DELTA_SUFFIXES = {".diff_b": "bias", ".diff_m": "modulation", ".diff": "weight", ".lora_B.bias": "bias"}
KNOWN_PREFIXES = ("model.diffusion_model.", "diffusion_model.", "transformer.", "base_model.model.")

# Wan 2.1 I2V carries an image encoder branch (CLIP features into cross-attention); Wan 2.2 I2V has none.
# Matched against diffusers names: k_img -> add_k_proj, v_img -> add_v_proj, norm_k_img -> norm_added_k,
# img_emb -> condition_embedder.image_embedder.
WAN21_IMAGE_KEY = re.compile(r"(^|\.)(add_k_proj|add_v_proj|norm_added_k|image_embedder)(\.|$)")
WAN_ORIGINAL_NAMES = re.compile(r"self_attn|cross_attn|\bffn\.\d|head\.head|time_embedding|text_embedding|"
                                r"time_projection|img_emb|\.norm3\b|modulation")
NOT_APPLICABLE = "Wan 2.1 image-encoder key: Wan 2.2 has no image encoder (not applicable)"
QUANTIZED = "cannot add a delta to quantized weights"
ZERO_DELTA = "all zeros (no effect)"


# ---------------------------------------------------------------- the command-line syntax


@dataclass(frozen=True)
class LoraSpec:
    """One LoRA file, its strength and the transformer(s) it goes into."""

    path: Path
    strength: float = 1.0
    components: tuple[str, ...] = ("transformer",)
    label: str = ""  # shown in reports (a registry name and role, or the file name)

    @property
    def name(self) -> str:
        return self.label or self.path.name


def parse_lora_spec(text: str, family: str, must_exist: bool = True) -> LoraSpec:
    """`FILE[:STRENGTH[:high|low|both]]` (Wan) or `FILE[:STRENGTH]` (Qwen) -> LoraSpec.

    Peeled from the right, so Windows paths (`C:\\loras\\x.safetensors:0.8`) keep their drive letter.
    Errors are CliErrors that show the syntax.
    """
    _check_family(family)
    syntax = "FILE[:STRENGTH[:high|low|both]]" if family == "wan" else "FILE[:STRENGTH]"
    rest, target = _peel_target(text.strip())
    rest, strength = _peel_strength(rest, text, syntax)
    if not rest:
        raise CliError(f"--lora {text!r} names no file", fix=f"use {syntax}, e.g. my_lora.safetensors:0.8")
    if target and family != "wan":
        raise CliError(f"--lora {text!r}: {MODEL_TITLES[family]} has one transformer, there is no {target!r} expert",
                       fix=f"drop ':{target}' ({syntax})")
    components = WAN_TARGETS[target or "both"] if family == "wan" else ("transformer",)
    path = Path(rest).expanduser()
    check_lora_file(path, must_exist=must_exist)
    return LoraSpec(path=path, strength=strength, components=components)


def _peel_target(text: str) -> tuple[str, str | None]:
    head, sep, tail = text.rpartition(":")
    if sep and tail.strip().lower() in WAN_TARGETS:
        return head, tail.strip().lower()
    return text, None


def _peel_strength(text: str, original: str, syntax: str) -> tuple[str, float]:
    head, sep, tail = text.rpartition(":")
    if not sep or _looks_like_path_part(tail):
        return text, 1.0
    try:
        strength = float(tail)
    except ValueError:
        what = "neither a strength nor an expert (high, low, both)" if tail.isalpha() else "not a number"
        raise CliError(f"--lora {original!r}: {tail!r} is {what}",
                       fix=f"use {syntax}, e.g. my_lora.safetensors:0.8:high") from None
    if not math.isfinite(strength) or abs(strength) > MAX_ABS_STRENGTH:
        raise CliError(f"--lora {original!r}: strength {tail} is outside -{MAX_ABS_STRENGTH:g}..{MAX_ABS_STRENGTH:g}",
                       fix="typical strengths are 0.5-1.5 (distill LoRAs: 1.0)")
    return head, strength


def _looks_like_path_part(tail: str) -> bool:
    """`C:` + `\\x.safetensors`: the part after a drive letter's colon is a path, not a strength."""
    return tail.startswith(("\\", "/")) or tail.lower().endswith(".safetensors")


def check_lora_file(path: Path, must_exist: bool = True) -> None:
    """Refuse anything but an existing .safetensors file, saying why."""
    suffix = path.suffix.lower()
    if suffix in PICKLE_SUFFIXES:
        raise CliError(f"{path.name} is a pickle file ({suffix}); pickles can run arbitrary code when loaded, "
                       "so LoRAs are read from .safetensors only",
                       fix="download the .safetensors version of this LoRA, or convert it once in a sandbox")
    if suffix == ".gguf":
        raise CliError(f"{path.name} is a GGUF file: GGUF holds quantized model weights, not LoRAs",
                       fix="pass GGUF experts with --weights gguf-q4/gguf-q8; LoRAs are .safetensors files")
    if suffix != ".safetensors":
        raise CliError(f"{path.name}: LoRAs are read from .safetensors files, not {suffix or 'files without a suffix'}",
                       fix="give the LoRA's .safetensors file")
    if must_exist and not path.is_file():
        raise CliError(f"LoRA file not found: {path}", fix="check the path (relative paths start in the current folder)")


def _check_family(family: str) -> None:
    if family not in FAMILIES:
        raise ValueError(f"family must be one of {FAMILIES}, not {family!r}")


# ---------------------------------------------------------------- the registry's LoRAs


def registry_lora_specs(name: str, steps: int | None = None,
                        strength: float | dict[str, float] | None = None) -> list[LoraSpec]:
    """Specs for a registry LoRA entry, found in the Hugging Face cache (never downloaded).

    wan-lightning: high file -> transformer, low file -> transformer_2. wan21-lightx2v: one file into
    both experts (a dict strength such as {"transformer": 3.0, "transformer_2": 1.5} gives one spec per
    expert). qwen-lightning: `steps` 4 (default) or 8. qwen-anypose: base + helper files.
    A missing file is a CliError (exit 3) that names the setup command.
    """
    from . import models, registry

    entry = registry.get(name)
    if entry.kind != "lora":
        raise ValueError(f"{name} is a {entry.kind}, not a LoRA")
    default = entry.strength
    if set(entry.roles) <= set(EXPERT_ROLES):  # Wan: the roles are the experts
        roles = _wan_roles(entry.roles)
    elif name == "qwen-lightning":  # the roles are step counts: one of them
        role = str(steps or 4)
        if role not in entry.roles:
            raise CliError(f"qwen-lightning has {'- and '.join(sorted(entry.roles))}-step LoRAs, not {steps}",
                           fix="use 4 or 8 steps")
        roles = {role: tuple(entry.targets)}
    else:  # every file (qwen-anypose: base + helper) into the entry's targets
        roles = {role: tuple(entry.targets) for role in entry.roles}
    specs = []
    for role, components in roles.items():
        path = models.locate_file(entry, role)
        label = name if len(roles) == 1 else f"{name}:{WAN_TARGET_NAMES.get(role, role)}"
        specs.extend(_specs_with_strength(path, components, strength, default, label))
    return specs


def _wan_roles(roles: dict) -> dict[str, tuple[str, ...]]:
    """Group the components that share one file (wan21-lightx2v names the same file for both)."""
    by_file: dict[str, list[str]] = defaultdict(list)
    for component, filename in roles.items():
        by_file[filename].append(component)
    return {components[0]: tuple(components) for components in by_file.values()}


def _specs_with_strength(path: Path, components: tuple[str, ...], strength, default: float,
                         label: str) -> list[LoraSpec]:
    if not isinstance(strength, dict):
        value = default if strength is None else float(strength)
        return [LoraSpec(path, value, components, label)]
    values = {c: float(strength.get(c, default)) for c in components}
    if len(set(values.values())) == 1:
        return [LoraSpec(path, next(iter(values.values())), components, label)]
    return [LoraSpec(path, values[c], (c,), f"{label}:{WAN_TARGET_NAMES.get(c, c)}") for c in components]


# ---------------------------------------------------------------- the report


@dataclass
class Skipped:
    reason: str
    lost: bool  # True: it would have changed the model and did not; False: no effect or not applicable
    count: int = 0
    examples: list[str] = field(default_factory=list)


@dataclass
class ExpertReport:
    component: str  # transformer | transformer_2
    role: str  # high-noise expert | low-noise expert | transformer
    strength: float
    lora_modules: int  # A/B pairs in the file
    lora_modules_applied: int  # verified in the loaded adapter
    deltas: int  # .diff / .diff_b / .diff_m tensors in the file
    deltas_applied: int
    skipped: list[Skipped] = field(default_factory=list)
    fused: bool = False

    @property
    def lost(self) -> int:
        return sum(s.count for s in self.skipped if s.lost)

    @property
    def partial(self) -> bool:
        return self.lost > 0


@dataclass
class LoraFileReport:
    name: str
    path: str
    adapter_name: str | None  # None when the file holds deltas only
    key_format: str
    looks_like: str | None  # the model its key names point at
    ranks: list[int]
    alphas: list[float]  # stored alphas; empty when the file has none (alpha = rank)
    scales: list[float]  # alpha / rank, what a loader that honours alpha multiplies by
    experts: list[ExpertReport]


@dataclass
class LoraReport:
    family: str
    loras: list[LoraFileReport] = field(default_factory=list)
    # Originals of the parameters that deltas changed, to restore them exactly (not part of to_dict).
    _originals: list[tuple[Any, Any]] = field(default_factory=list, repr=False, compare=False)
    _adapters: list[str] = field(default_factory=list, repr=False, compare=False)

    @property
    def fused(self) -> bool:
        return any(e.fused for lora in self.loras for e in lora.experts)

    def to_dict(self) -> dict:
        out = {"family": self.family, "loras": []}
        for lora in self.loras:
            d = asdict(lora)
            for expert, data in zip(lora.experts, d["experts"]):
                data.update(partial=expert.partial, lost=expert.lost)
            out["loras"].append(d)
        return out

    def describe(self) -> str:
        return "\n".join(_describe_lora(lora) for lora in self.loras)


def _describe_lora(lora: LoraFileReport) -> str:
    scale = _describe_scale(lora)
    lines = [f"LoRA {lora.name}: {lora.key_format}; {scale}"]
    for e in lora.experts:
        fused = ", fused" if e.fused else ""
        where = e.role if e.role == e.component else f"{e.role} ({e.component})"
        lines.append(f"  {where} at strength {e.strength:g}{fused}: "
                     f"{e.lora_modules_applied}/{e.lora_modules} LoRA modules, "
                     f"{e.deltas_applied}/{e.deltas} weight deltas applied")
        for s in e.skipped:
            lines.append(f"    {'LOST' if s.lost else 'skipped'}: {s.count} key(s), {s.reason} "
                         f"(e.g. {', '.join(s.examples)})")
    return "\n".join(lines)


def _describe_scale(lora: LoraFileReport) -> str:
    ranks = "/".join(str(r) for r in lora.ranks) or "-"
    if not lora.ranks:
        return "no LoRA modules (weight deltas only)"
    if not lora.alphas:
        return f"rank {ranks}, no alpha stored (alpha = rank, scale 1)"
    alphas = "/".join(f"{a:g}" for a in lora.alphas)
    scales = "/".join(f"{s:g}" for s in lora.scales)
    return f"rank {ranks}, alpha {alphas} -> scale alpha/rank = {scales}"


# ---------------------------------------------------------------- reading a LoRA file


@dataclass
class _Module:
    """One LoRA pair in a file: its keys by role (down, up, alpha) and the module it targets."""

    source: str  # the module name in the file's own naming, prefix removed
    keys: dict[str, str] = field(default_factory=dict)
    target: str = ""  # diffusers module path in the transformer
    from_delta: str = ""  # set when this pair stands for a weight delta on a quantized layer (its key)

    def key_list(self) -> list[str]:
        if self.from_delta:
            return [self.from_delta]
        return [self.keys[role] for role in ("down", "up", "alpha") if role in self.keys]

    def rank(self, tensors: dict) -> int:
        return int(tensors[self.keys["down"]].shape[0])

    def alpha(self, tensors: dict) -> float | None:
        key = self.keys.get("alpha")
        return None if key is None else float(tensors[key].float().item())

    def scale(self, tensors: dict) -> float:
        alpha = self.alpha(tensors)
        return 1.0 if alpha is None else alpha / self.rank(tensors)


@dataclass
class _Delta:
    key: str  # the key in the file
    source: str
    kind: str  # weight | bias | modulation
    target: str = ""  # diffusers parameter path


@dataclass
class _LoraFile:
    path: Path
    tensors: dict
    style: str  # wan-original | wan-diffusers | wan-musubi | qwen-dotted | qwen-musubi
    key_format: str
    modules: dict[str, _Module]
    deltas: list[_Delta]
    others: list[str]  # neither LoRA nor delta keys
    looks_like: str | None
    looks_like_family: str | None
    key_count: int = 0  # keys in the file (tensors may gain stand-in pairs for deltas on quantized layers)


def _read_lora(path: Path, family: str) -> _LoraFile:
    check_lora_file(path)
    tensors = _read_safetensors(path)
    if not tensors:
        raise CliError(f"{path.name} holds no tensors", fix="the file is empty or truncated: download it again")
    prefixes, bare = _strip_prefixes(tensors)
    modules, deltas, others = _group_keys(bare)
    looks_like, looks_family = _guess_model(list(bare.values()))
    style = _style(family, prefixes, modules, deltas)
    lora = _LoraFile(path, tensors, style, _describe_format(prefixes, bare), modules, deltas, others,
                     looks_like, looks_family, len(tensors))
    _map_targets(lora)
    return lora


def _read_safetensors(path: Path) -> dict:
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(str(path), framework="pt", device="cpu") as f:
            return {key: f.get_tensor(key) for key in f.keys()}
    except (SafetensorError, OSError) as exc:
        raise CliError(f"cannot read {path.name} as a safetensors file: {exc}",
                       fix="the file is damaged or not a safetensors file: download it again") from None


def _strip_prefixes(tensors: dict) -> tuple[set[str], dict[str, str]]:
    """-> (prefixes seen, {original key: key without its prefix}). `lora_unet_` stays: it marks underscored names."""
    prefixes, bare = set(), {}
    for key in tensors:
        stripped = key
        for prefix in KNOWN_PREFIXES:
            if key.startswith(prefix):
                prefixes.add(prefix)
                stripped = key[len(prefix):]
                break
        if stripped.startswith("lora_unet_"):
            prefixes.add("lora_unet_")
        bare[key] = stripped
    return prefixes, bare


def _split_suffix(bare: str) -> tuple[str, str | None]:
    """'blocks.0.self_attn.q.lora_down.weight' -> ('blocks.0.self_attn.q', 'down')."""
    for suffix in DOWN_SUFFIXES:
        if bare.endswith(suffix):
            return bare[: -len(suffix)], "down"
    for suffix in UP_SUFFIXES:
        if bare.endswith(suffix):
            return bare[: -len(suffix)], "up"
    if bare.endswith(ALPHA_SUFFIX):
        return bare[: -len(ALPHA_SUFFIX)], "alpha"
    for suffix, kind in DELTA_SUFFIXES.items():
        if bare.endswith(suffix):
            return bare[: -len(suffix)], "delta:" + kind
    return bare, None


def _group_keys(bare: dict[str, str]) -> tuple[dict[str, _Module], list[_Delta], list[str]]:
    modules: dict[str, _Module] = {}
    deltas, others = [], []
    for key, name in bare.items():
        source, role = _split_suffix(name)
        if role is None:
            others.append(key)
        elif role.startswith("delta:"):
            deltas.append(_Delta(key, source, role.split(":", 1)[1]))
        else:
            modules.setdefault(source, _Module(source)).keys[role] = key
    return modules, deltas, others


def _style(family: str, prefixes: set[str], modules: dict, deltas: list) -> str:
    if "lora_unet_" in prefixes:
        return f"{family}-musubi"
    if family == "qwen":
        return "qwen-dotted"
    names = list(modules) + [d.source for d in deltas]
    return "wan-original" if any(WAN_ORIGINAL_NAMES.search(n) for n in names) else "wan-diffusers"


def _describe_format(prefixes: set[str], bare: dict[str, str]) -> str:
    names = " ".join(bare.values())
    pair = "lora_down/lora_up" if ".lora_down." in names else "lora_A/lora_B"
    if "lora_unet_" in prefixes:
        where = "musubi/kohya keys (lora_unet_...)"
    elif "diffusion_model." in prefixes or "model.diffusion_model." in prefixes:
        where = "ComfyUI-style keys (diffusion_model....)"
    elif "transformer." in prefixes:
        where = "diffusers keys (transformer....)"
    else:
        where = "keys without prefix"
    extras = [s for s in (".alpha", ".diff_m", ".diff_b", ".diff") if any(k.endswith(s) for k in bare.values())]
    return f"{where}, {pair}" + (f", with {' '.join(extras)}" if extras else "")


# Key names that say which model a LoRA was made for, most specific first.
MODEL_SIGNATURES = (
    ("Wan 2.x", "wan", re.compile(r"^blocks[._]\d+[._](self_attn|cross_attn|attn1|attn2|ffn)")),
    ("Qwen-Image", "qwen", re.compile(r"^transformer_blocks[._]\d+[._](img_mlp|txt_mlp|img_mod|txt_mod)")),
    ("HunyuanVideo", "hunyuanvideo", re.compile(r"token_refiner|individual_token")),
    ("Flux", "flux", re.compile(r"double_blocks|single_blocks|single_transformer_blocks|ff_context|norm1_context")),
    ("Stable Diffusion 1.x/SDXL", "sd", re.compile(
        r"down_blocks|up_blocks|mid_block|input_blocks|output_blocks|middle_block|^lora_te\d?_|text_model")),
    ("LTX-Video", "ltx", re.compile(r"^transformer_blocks[._]\d+[._]attn[12]")),
    ("Lumina/Z-Image", "lumina", re.compile(r"^layers[._]\d+[._](attention|feed_forward)")),
)


def _guess_model(bare_keys: list[str]) -> tuple[str | None, str | None]:
    """The model whose key names most keys of the file carry, or (None, None)."""
    names = [k.removeprefix("lora_unet_") for k in bare_keys]
    counts = {label: sum(1 for n in names if rx.search(n)) for label, _, rx in MODEL_SIGNATURES}
    label = max(counts, key=counts.get)
    if counts[label] == 0:
        return None, None
    family = next(f for lbl, f, _ in MODEL_SIGNATURES if lbl == label)
    return label, family


# ---------------------------------------------------------------- key names -> diffusers names


def _map_targets(lora: _LoraFile) -> None:
    """Fill in the diffusers module/parameter each LoRA pair and delta targets."""
    if lora.style.startswith("wan"):
        sources = {m.source: _wan_dotted(m.source, lora.style) for m in lora.modules.values()}
        module_names = _wan_renamed({s: f"{d}.weight" for s, d in sources.items()}, lora.style)
        for m in lora.modules.values():
            m.target = module_names[m.source].removesuffix(".weight")
        params = _wan_renamed({d.key: _wan_param(_wan_dotted(d.source, lora.style), d.kind, lora.style)
                               for d in lora.deltas}, lora.style)
        for d in lora.deltas:
            d.target = params[d.key]
    elif lora.style == "qwen-musubi":
        for m in lora.modules.values():
            m.target = _qwen_musubi_target(m.source)
        for d in lora.deltas:
            d.target = _qwen_musubi_target(d.source) + "." + d.kind
    else:
        for m in lora.modules.values():
            m.target = m.source
        for d in lora.deltas:
            d.target = f"{d.source}.{d.kind}"


def _wan_dotted(source: str, style: str) -> str:
    """musubi names use underscores: lora_unet_blocks_0_self_attn_q -> blocks.0.self_attn.q."""
    if style != "wan-musubi":
        return source
    name = source.removeprefix("lora_unet_")
    for pattern, repl in (
        (r"^blocks_(\d+)_(self_attn|cross_attn)_(.+)$", r"blocks.\1.\2.\3"),
        (r"^blocks_(\d+)_ffn_(\d+)$", r"blocks.\1.ffn.\2"),
        (r"^blocks_(\d+)_(.+)$", r"blocks.\1.\2"),
        (r"^(text_embedding|time_embedding|time_projection)_(\d+)$", r"\1.\2"),
        (r"^img_emb_proj_(\d+)$", r"img_emb.proj.\1"),
        (r"^head_head$", "head.head"),
    ):
        if re.match(pattern, name):
            return re.sub(pattern, repl, name)
    return name


def _wan_param(dotted: str, kind: str, style: str) -> str:
    if kind == "modulation":  # the per-block adaLN table: `modulation` in Wan, `scale_shift_table` in diffusers
        return f"{dotted}.modulation" if style != "wan-diffusers" else f"{dotted}.scale_shift_table"
    return f"{dotted}.{kind}"


def _wan_renamed(names: dict[str, str], style: str) -> dict[str, str]:
    """Rename original Wan parameter names with diffusers' own single-file converter (one mapping, not two)."""
    if style == "wan-diffusers":
        return dict(names)
    from diffusers.loaders.single_file_utils import convert_wan_transformer_to_diffusers

    # The converter renames keys and carries values along: use the original name as the value.
    converted = convert_wan_transformer_to_diffusers({original: original for original in set(names.values())})
    new_by_original = {original: new for new, original in converted.items()}
    return {key: new_by_original[original] for key, original in names.items()}


def _qwen_musubi_target(source: str) -> str:
    """Ask diffusers' Qwen converter for the module name of one underscored key (it works key by key)."""
    import torch
    from diffusers.loaders.lora_conversion_utils import _convert_non_diffusers_qwen_lora_to_diffusers

    probe = {f"{source}.lora_down.weight": torch.zeros(1, 1), f"{source}.lora_up.weight": torch.zeros(1, 1)}
    converted = _convert_non_diffusers_qwen_lora_to_diffusers(probe)
    key = next(iter(converted))
    return key.removeprefix("transformer.").rsplit(".lora_", 1)[0]


# ---------------------------------------------------------------- loading


ALLOW_PARTIAL_HINT = "--allow-partial-lora"  # the scripts' flag that passes allow_partial=True


@dataclass
class _ExpertPlan:
    component: str
    model: Any = field(repr=False)
    strength: float
    modules: list[_Module]  # pairs that fit this transformer (after loading: the verified ones)
    deltas: list[tuple[_Delta, Any]]  # (delta, parameter) to add (after loading: the added ones)
    module_count: int
    delta_count: int
    skipped: dict[tuple[str, bool], list[str]] = field(default_factory=lambda: defaultdict(list))
    fused: bool = False

    @property
    def applies_anything(self) -> bool:
        return bool(self.modules or self.deltas)

    def lost(self) -> dict[str, list[str]]:
        return {reason: keys for (reason, lost), keys in self.skipped.items() if lost}


@dataclass
class _SpecPlan:
    spec: LoraSpec
    lora: _LoraFile
    adapter_name: str
    experts: list[_ExpertPlan]

    @property
    def has_modules(self) -> bool:
        return any(e.modules for e in self.experts)


def load_loras(pipe, specs, family: str, allow_partial: bool = False, fuse: bool = False) -> LoraReport:
    """Load each LoRA into its transformer(s), verify what got loaded, set per-expert strengths.

    Everything is checked before the pipeline is touched; a failure after that rolls back what was
    loaded. `fuse=True` merges the LoRAs into the weights (no per-step cost) except on quantized
    (GGUF) experts, which stay unfused. Call once per pipeline with all LoRAs; `unload_loras` undoes it.
    """
    _check_family(family)
    specs = list(specs)
    report = LoraReport(family)
    if not specs:
        return report
    _refuse_existing_adapters(pipe)
    files: dict[Path, _LoraFile] = {}
    for spec in specs:
        if spec.path not in files:
            files[spec.path] = _read_lora(spec.path, family)
    plans = [_plan_spec(pipe, spec, files[spec.path], family, i) for i, spec in enumerate(specs)]
    for plan in plans:
        _refuse_incomplete(plan, family, allow_partial)
    try:
        for plan in plans:
            _load_plan(pipe, plan, report)
            _refuse_incomplete(plan, family, allow_partial)  # again: now from what actually loaded
        _activate(pipe, plans)
        if fuse:
            _fuse(pipe, plans)
    except BaseException:
        _rollback(pipe, report)
        raise
    report.loras = [_file_report(plan, family) for plan in plans]
    for plan, lora in zip(plans, report.loras):
        _log_lora(lora)
        _warn_alpha_given_as_strength(plan)
    return report


def unload_loras(pipe, report: LoraReport) -> None:
    """Remove the adapters `load_loras` added and restore the parameters its deltas changed, exactly."""
    if report.fused:
        raise CliError("LoRAs fused into the weights cannot be taken out again",
                       fix="reload the model to change LoRAs (or load them unfused)", code=ExitCode.FAILED)
    _rollback(pipe, report)


def _refuse_existing_adapters(pipe) -> None:
    present = _present_adapters(pipe)
    if present:
        raise RuntimeError(f"the pipeline already has LoRA adapters {sorted(present)}: call unload_loras first "
                           "(set_adapters would otherwise switch them off)")


def _present_adapters(pipe) -> set[str]:
    return {name for names in pipe.get_list_adapters().values() for name in names}


# ---------------------------------------------------------------- planning: what goes where, before loading


def _plan_spec(pipe, spec: LoraSpec, lora: _LoraFile, family: str, index: int) -> _SpecPlan:
    experts = []
    for component in spec.components:
        model = getattr(pipe, component, None)
        if model is None:
            raise CliError(f"{spec.name}: this pipeline has no {component} ({_role(component, family)})",
                           fix="load Wan LoRAs with ':high' into a single-expert pipeline")
        experts.append(_plan_expert(model, lora, component, spec.strength, family))
    slug = re.sub(r"[^0-9A-Za-z]+", "_", spec.path.stem).strip("_")[:40]
    return _SpecPlan(spec, lora, f"lora{index}_{slug}", experts)


def _plan_expert(model, lora: _LoraFile, component: str, strength: float, family: str) -> _ExpertPlan:
    plan = _ExpertPlan(component, model, strength, [], [], len(lora.modules), len(lora.deltas))
    for module in lora.modules.values():
        problem = _module_problem(model, module, lora.tensors, family)
        if problem:
            plan.skipped[problem].extend(module.key_list())
        else:
            plan.modules.append(module)
    paired = {m.target for m in plan.modules}
    for delta in lora.deltas:
        problem, param = _delta_problem(model, delta, lora.tensors[delta.key], family)
        as_lora = _delta_as_lora(model, lora, delta, paired) if problem and problem[0].startswith(QUANTIZED) else None
        if as_lora:
            plan.modules.append(as_lora)
        elif problem:
            plan.skipped[problem].append(delta.key)
        else:
            plan.deltas.append((delta, param))
    for key in lora.others:
        plan.skipped[(_other_key_reason(key), True)].append(key)
    return plan


def _module_problem(model, module: _Module, tensors: dict, family: str) -> tuple[str, bool] | None:
    import torch

    if "down" not in module.keys or "up" not in module.keys:
        return "incomplete LoRA pair (needs both lora_down/lora_A and lora_up/lora_B)", True
    layer = _submodule(model, module.target)
    if layer is None:
        if _is_wan21_image_key(family, model, module.target):
            return NOT_APPLICABLE, False
        return f"no such module in the {MODEL_TITLES[family]} transformer", True
    base = _base_layer(layer)
    if not isinstance(base, torch.nn.Linear):
        return f"targets a {type(base).__name__}, not a linear layer (unsupported)", True
    down, up = tensors[module.keys["down"]], tensors[module.keys["up"]]
    fits = (down.ndim == 2 and up.ndim == 2 and up.shape[1] == down.shape[0]
            and down.shape[1] == base.in_features and up.shape[0] == base.out_features)
    return None if fits else ("shape mismatch: made for a model of another size", True)


def _delta_problem(model, delta: _Delta, tensor, family: str) -> tuple[tuple[str, bool] | None, Any]:
    import torch

    param = _find_parameter(model, delta.target)
    if param is None:
        if _is_wan21_image_key(family, model, delta.target):
            return (NOT_APPLICABLE, False), None
        return (f"no such parameter in the {MODEL_TITLES[family]} transformer", True), None
    if not torch.count_nonzero(tensor):
        return (ZERO_DELTA, False), None
    quantized = _quantized_kind(param)
    if quantized:
        return (f"{QUANTIZED} ({quantized})", True), None
    if tuple(tensor.shape) != tuple(param.shape):
        return ("shape mismatch: made for a model of another size", True), None
    return None, param


def _delta_as_lora(model, lora: _LoraFile, delta: _Delta, paired: set[str]) -> _Module | None:
    """A weight delta D (out x in) for a quantized linear layer, as a LoRA pair with an identity factor.

    B = I, A = D when out <= in (else A = I, B = D): rank min(out, in), e.g. 64 for Wan's head.head.diff
    (64 x 5120). It is loaded and scaled like any LoRA and never merged into the quantized weight;
    diffusers' converter does the same for head.head.diff. Not possible when the layer already takes a
    LoRA pair from this file (one adapter, one pair per layer)."""
    import torch

    module_path = delta.target.rpartition(".")[0]
    layer = _submodule(model, module_path)
    tensor = lora.tensors[delta.key]
    if delta.kind != "weight" or module_path in paired or not isinstance(_base_layer(layer), torch.nn.Linear):
        return None
    base = _base_layer(layer)
    if tuple(tensor.shape) != (base.out_features, base.in_features):
        return None
    out_f, in_f = tensor.shape
    down, up = (tensor, torch.eye(out_f, dtype=tensor.dtype)) if out_f <= in_f else \
        (torch.eye(in_f, dtype=tensor.dtype), tensor)
    keys = {"down": f"{delta.key}#as_lora_down", "up": f"{delta.key}#as_lora_up"}
    lora.tensors.setdefault(keys["down"], down)
    lora.tensors.setdefault(keys["up"], up)
    return _Module(delta.source, keys, target=module_path, from_delta=delta.key)


def _other_key_reason(key: str) -> str:
    if "dora_scale" in key:
        return "DoRA magnitude key (DoRA LoRAs are not supported)"
    if re.search(r"lora_te\d?_|text_encoder|text_model", key):
        return "text-encoder key (LoRAs apply to the transformer only)"
    return "not a LoRA key (no lora_down/lora_up, lora_A/lora_B, alpha or .diff suffix)"


def _is_wan21_image_key(family: str, model, target: str) -> bool:
    no_image_branch = getattr(model.config, "image_dim", None) is None
    return family == "wan" and no_image_branch and bool(WAN21_IMAGE_KEY.search(target))


def _submodule(model, path: str):
    try:
        return model.get_submodule(path)
    except AttributeError:
        return None


def _base_layer(module):
    from peft.tuners.tuners_utils import BaseTunerLayer

    return module.get_base_layer() if isinstance(module, BaseTunerLayer) else module


def _find_parameter(model, target: str):
    """The tensor `target` names (e.g. blocks.0.scale_shift_table), looking through LoRA wrappers."""
    import torch

    module_path, _, attr = target.rpartition(".")
    module = _submodule(model, module_path) if module_path else model
    if module is None:
        return None
    param = getattr(_base_layer(module), attr, None)
    return param if isinstance(param, torch.Tensor) else None


def _quantized_kind(param) -> str | None:
    """Why a delta cannot be added to this tensor, or None for a plain float tensor."""
    import torch

    quant_type = getattr(param, "quant_type", None)  # diffusers' GGUFParameter
    if quant_type is not None:
        return f"GGUF {getattr(quant_type, 'name', quant_type)}"
    if type(param) not in (torch.nn.Parameter, torch.Tensor) or not param.dtype.is_floating_point:
        return f"{type(param).__name__} {param.dtype}"
    return None


def _is_quantized_model(model) -> bool:
    return getattr(model, "hf_quantizer", None) is not None or any(_quantized_kind(p) for p in model.parameters())


def _refuse_incomplete(plan: _SpecPlan, family: str, allow_partial: bool) -> None:
    """Nothing applied, or a LoRA for another model: always an error. Partly applied: unless allow_partial."""
    if plan.lora.looks_like_family not in (None, family):
        raise _wrong_model(plan, family)
    for expert in plan.experts:
        if not expert.applies_anything:
            raise _applies_to_nothing(plan, expert, family)
    for expert in plan.experts:
        lost = expert.lost()
        if lost and not allow_partial:
            raise _partial(plan, expert, family, lost)


def _applies_to_nothing(plan: _SpecPlan, expert: _ExpertPlan, family: str) -> CliError:
    lora, title = plan.lora, MODEL_TITLES[family]
    n = len(lora.modules)
    fix = _fix_for(family)
    if n == 0 and lora.deltas and all(r == ZERO_DELTA for (r, _) in expert.skipped):
        return CliError(f"{plan.spec.name} has no effect: it holds no LoRA modules and all its "
                        f"{len(lora.deltas)} weight deltas are zero", fix=fix)
    width, hidden = _lora_width(lora), _model_width(expert.model)
    if width and hidden and width != hidden:
        return CliError(f"{plan.spec.name} was made for a model of another size: its layers are {width} wide, "
                        f"the {title} transformer's are {hidden} (none of its {n} modules fit)", fix=fix)
    examples = ", ".join(k for keys in expert.skipped.values() for k in keys[:1])[:300]
    return CliError(f"{plan.spec.name} applies to nothing in the {_role(expert.component, family)}: none of its "
                    f"{n} modules match the {title} transformer (e.g. {examples or 'no keys'})", fix=fix)


def _wrong_model(plan: _SpecPlan, family: str) -> CliError:
    n, title = len(plan.lora.modules), MODEL_TITLES[family]
    matched = max(len(e.modules) for e in plan.experts)
    how_many = f"none of its {n} modules match" if matched == 0 else f"only {matched} of its {n} modules match"
    return CliError(f"{plan.spec.name} looks like a LoRA for {plan.lora.looks_like}, not {title}: {how_many} "
                    f"the {title} transformer", fix=_fix_for(family))


def _partial(plan: _SpecPlan, expert: _ExpertPlan, family: str, lost: dict[str, list[str]]) -> CliError:
    count = sum(len(keys) for keys in lost.values())
    total = plan.lora.key_count
    reasons = "; ".join(f"{len(keys)} {reason} (e.g. {keys[0]})" for reason, keys in lost.items())
    return CliError(f"{plan.spec.name} would apply only in part to the {_role(expert.component, family)}: "
                    f"{count} of its {total} keys cannot be applied: {reasons}",
                    fix=f"use a LoRA made for {MODEL_TITLES[family]}, or load the rest anyway with "
                        f"{ALLOW_PARTIAL_HINT}")


def _fix_for(family: str) -> str:
    if family == "wan":
        return "use a LoRA made for Wan 2.2 I2V A14B (Wan 2.1 14B LoRAs also fit), or drop this --lora"
    return "use a LoRA made for Qwen-Image-Edit (2509/2511) or Qwen-Image, or drop this --lora"


def _lora_width(lora: _LoraFile) -> int | None:
    widths = [int(lora.tensors[m.keys["down"]].shape[-1]) for m in lora.modules.values() if "down" in m.keys]
    return max(set(widths), key=widths.count) if widths else None


def _model_width(model) -> int | None:
    config = getattr(model, "config", None)
    if config is None:
        return None
    heads, dim = getattr(config, "num_attention_heads", None), getattr(config, "attention_head_dim", None)
    return heads * dim if heads and dim else None


def _role(component: str, family: str) -> str:
    return EXPERT_ROLES.get(component, component) if family == "wan" else "transformer"


# ---------------------------------------------------------------- loading, then checking what got loaded


def _load_plan(pipe, plan: _SpecPlan, report: LoraReport) -> None:
    state_dicts: dict[frozenset, dict] = {}  # both experts usually take the same modules: convert once
    for expert in plan.experts:
        if expert.modules:
            wanted = frozenset(m.source for m in expert.modules)
            if wanted not in state_dicts:
                state_dicts[wanted] = _adapter_state_dict(pipe, plan, expert.modules)
            _load_adapter(pipe, expert.component, state_dicts[wanted], plan.adapter_name, report)
            _keep_verified(expert, plan)
        _add_deltas(expert, plan.lora.tensors, report)


def _adapter_state_dict(pipe, plan: _SpecPlan, modules: list[_Module]) -> dict:
    """The pairs in the naming diffusers' converter expects, alpha/rank folded into lora_down, converted
    by diffusers (`lora_state_dict`), then checked against the modules we predicted."""
    lora = plan.lora
    canonical = {}
    for module in modules:
        down, up = lora.tensors[module.keys["down"]], lora.tensors[module.keys["up"]]
        scale = module.scale(lora.tensors)
        # Folding alpha ourselves: diffusers' Wan converter ignores alpha outside the blocks (head, embeddings)
        # and refuses diffusers-named keys with alpha. scale * (B @ A) == B @ (scale * A).
        down = down if scale == 1.0 else (down.float() * scale).to(down.dtype)
        canonical[_canonical_key(lora.style, module, "down")] = down
        canonical[_canonical_key(lora.style, module, "up")] = up
    try:
        converted = type(pipe).lora_state_dict(canonical)
    except (ValueError, KeyError, IndexError) as exc:
        raise CliError(f"diffusers could not convert {plan.spec.name}: {type(exc).__name__}: {exc}",
                       fix="report this LoRA's key names (python -c \"from safetensors import safe_open; "
                           "print(list(safe_open('FILE','pt').keys())[:20])\")", code=ExitCode.FAILED) from None
    # Qwen keys in diffusers naming come back without the prefix that load_lora_adapter filters on.
    converted = {k if k.startswith("transformer.") else f"transformer.{k}": v for k, v in converted.items()}
    _check_conversion(plan, modules, converted)
    return converted


def _canonical_key(style: str, module: _Module, role: str) -> str:
    if style == "wan-diffusers":
        return f"transformer.{module.source}.{'lora_A' if role == 'down' else 'lora_B'}.weight"
    suffix = "lora_down.weight" if role == "down" else "lora_up.weight"
    if style == "qwen-musubi":
        return f"{module.source}.{suffix}"  # lora_unet_..., converted by diffusers' Qwen converter
    return f"diffusion_model.{_wan_dotted(module.source, style)}.{suffix}"


def _check_conversion(plan: _SpecPlan, modules: list[_Module], converted: dict) -> None:
    got = {k.removeprefix("transformer.").rsplit(".lora_", 1)[0] for k in converted}
    expected = {m.target for m in modules}
    if got != expected:
        raise CliError(f"diffusers converted {plan.spec.name} to other module names than expected: "
                       f"unexpected {sorted(got - expected)[:3]}, missing {sorted(expected - got)[:3]}",
                       fix="report this with the LoRA's name; loading it would apply it only in part",
                       code=ExitCode.FAILED)


def _load_adapter(pipe, component: str, state_dict: dict, adapter_name: str, report: LoraReport) -> None:
    kwargs = {"load_into_transformer_2": True} if component == "transformer_2" else {}
    if adapter_name not in report._adapters:
        report._adapters.append(adapter_name)
    with _library_warnings_to_log():
        pipe.load_lora_weights(dict(state_dict), adapter_name=adapter_name, **kwargs)


def _keep_verified(expert: _ExpertPlan, plan: _SpecPlan) -> None:
    """Count as applied only the modules whose loaded adapter reproduces the file's (alpha/rank)·B·A."""
    verified = []
    for module in expert.modules:
        problem = _loaded_problem(expert.model, plan.adapter_name, module, plan.lora.tensors)
        if problem:
            expert.skipped[(problem, True)].extend(module.key_list())
        else:
            verified.append(module)
    expert.modules = verified


def _loaded_problem(model, adapter: str, module: _Module, tensors: dict) -> str | None:
    import torch
    from peft.tuners.tuners_utils import BaseTunerLayer

    layer = _submodule(model, module.target)
    if not isinstance(layer, BaseTunerLayer) or adapter not in getattr(layer, "lora_A", {}):
        return "not loaded by diffusers"
    a, b = layer.lora_A[adapter].weight, layer.lora_B[adapter].weight
    if a.device.type == "meta":
        return "loaded onto the meta device (offloading was active): cannot be checked"
    # A random probe: B·A·x against the file's (alpha/rank)·up·down·x, cheap even at rank 64 x 5120.
    x = torch.randn(a.shape[1], generator=torch.Generator().manual_seed(0))
    loaded = b.detach().float().cpu() @ (a.detach().float().cpu() @ x) * layer.scaling[adapter]
    down, up = tensors[module.keys["down"]].float(), tensors[module.keys["up"]].float()
    expected = up @ (down @ x) * module.scale(tensors)
    tolerance = 1e-2 * float(expected.norm()) + 1e-6  # bf16 storage rounds; a wrong load is off by ~100 %
    return None if float((loaded - expected).norm()) <= tolerance else "loaded with other values than the file's"


def _add_deltas(expert: _ExpertPlan, tensors: dict, report: LoraReport) -> None:
    """weight += strength * delta, keeping the original to restore it exactly."""
    import torch

    for delta, param in expert.deltas:
        report._originals.append((param, param.detach().clone()))
        with torch.no_grad():
            change = tensors[delta.key].to(device=param.device, dtype=torch.float32)
            param.copy_((param.float() + expert.strength * change).to(param.dtype))


def _activate(pipe, plans: list[_SpecPlan]) -> None:
    """One set_adapters call with every adapter and a strength per expert, then check the scales took."""
    names, weights = [], []
    for plan in plans:
        if plan.has_modules:
            names.append(plan.adapter_name)
            weights.append({e.component: e.strength for e in plan.experts if e.modules})
    if not names:
        return
    with _library_warnings_to_log():
        pipe.set_adapters(names, adapter_weights=weights)
    for plan in plans:
        for expert in plan.experts:
            _check_scales(plan, expert)


def _check_scales(plan: _SpecPlan, expert: _ExpertPlan) -> None:
    for module in expert.modules:
        layer = _submodule(expert.model, module.target)
        name = plan.adapter_name
        wanted = expert.strength * layer.lora_alpha[name] / layer.r[name]
        if name not in layer.active_adapters or not math.isclose(layer.scaling[name], wanted, rel_tol=1e-6,
                                                                  abs_tol=1e-12):
            raise CliError(f"{plan.spec.name}: the {expert.component} layer {module.target} runs at scale "
                           f"{layer.scaling[name]} with adapters {layer.active_adapters}, expected {wanted} with "
                           f"{name}", fix="report this (diffusers set_adapters)", code=ExitCode.FAILED)


def _fuse(pipe, plans: list[_SpecPlan]) -> None:
    """Merge each expert's adapters into its weights and drop the LoRA layers.

    Per expert on purpose: WanLoraLoaderMixin.fuse_lora() fuses only `transformer` unless told otherwise.
    """
    components = dict.fromkeys(e.component for p in plans for e in p.experts if e.modules)
    for component in components:
        model = getattr(pipe, component)
        if _is_quantized_model(model):
            log.warning(f"LoRAs stay unfused on the quantized {component}: a delta cannot be merged into GGUF "
                        "weights (same images, a little slower per step)")
            continue
        names = [p.adapter_name for p in plans if any(e.component == component and e.modules for e in p.experts)]
        with _library_warnings_to_log():
            model.fuse_lora(adapter_names=names)
            model.unload_lora()
        for plan in plans:
            for expert in plan.experts:
                expert.fused = expert.fused or (expert.component == component and bool(expert.modules))


def _rollback(pipe, report: LoraReport) -> None:
    ours = [name for name in report._adapters if name in _present_adapters(pipe)]
    if ours:
        with _library_warnings_to_log():
            if set(ours) == _present_adapters(pipe):
                pipe.unload_lora_weights()
            else:
                pipe.delete_adapters(ours)
    import torch

    with torch.no_grad():
        for param, original in reversed(report._originals):
            param.copy_(original)
    report._originals.clear()
    report._adapters.clear()


# Warnings peft raises on normal use (a second adapter in one model); anything else is passed on.
EXPECTED_LIBRARY_WARNINGS = ("Already found a `peft_config` attribute in the model",)


@contextlib.contextmanager
def _library_warnings_to_log() -> Iterator[None]:
    """Route Python warnings raised while loading to our logger, at debug level for the known harmless ones."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        yield
    for warning in caught:
        text = str(warning.message)
        level = logging.DEBUG if text.startswith(EXPECTED_LIBRARY_WARNINGS) else logging.WARNING
        log.log(level, f"{warning.category.__name__}: {text}")


# ---------------------------------------------------------------- the report


def _file_report(plan: _SpecPlan, family: str) -> LoraFileReport:
    lora, tensors = plan.lora, plan.lora.tensors
    pairs = [m for m in lora.modules.values() if "down" in m.keys and "up" in m.keys]
    alphas = sorted({a for m in pairs if (a := m.alpha(tensors)) is not None})
    experts = [ExpertReport(
        component=e.component, role=_role(e.component, family), strength=e.strength,
        lora_modules=e.module_count, lora_modules_applied=sum(1 for m in e.modules if not m.from_delta),
        deltas=e.delta_count, deltas_applied=len(e.deltas) + sum(1 for m in e.modules if m.from_delta),
        fused=e.fused,
        skipped=[Skipped(reason, lost, len(keys), keys[:3]) for (reason, lost), keys in e.skipped.items()],
    ) for e in plan.experts]
    return LoraFileReport(
        name=plan.spec.name, path=str(plan.spec.path), adapter_name=plan.adapter_name if plan.has_modules else None,
        key_format=lora.key_format, looks_like=lora.looks_like, ranks=sorted({m.rank(tensors) for m in pairs}),
        alphas=alphas, scales=sorted({round(m.scale(tensors), 6) for m in pairs}), experts=experts)


def _log_lora(lora: LoraFileReport) -> None:
    for line in _describe_lora(lora).splitlines():
        log.log(logging.WARNING if line.lstrip().startswith("LOST") else logging.INFO, line)


def _warn_alpha_given_as_strength(plan: _SpecPlan) -> None:
    scales = {m.scale(plan.lora.tensors) for e in plan.experts for m in e.modules if not m.from_delta}
    if len(scales) != 1 or math.isclose(next(iter(scales)), 1.0):
        return
    scale = next(iter(scales))
    for expert in plan.experts:
        if math.isclose(expert.strength, scale, rel_tol=1e-3):
            log.warning(f"{plan.spec.name}: strength {expert.strength:g} equals the file's alpha/rank ({scale:g}); "
                        f"this loader already applies alpha/rank, so the LoRA acts at {expert.strength * scale:g}. "
                        f"Use 1.0 here; {scale:g} is the value for tools that ignore alpha.")
