"""Reading LoRA files: key formats, what model the keys point at, and diffusers names for each key.

Part of producer.engines.loras.lora (see its docstring for the rules); kept apart because it never touches a pipeline.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass, field
from pathlib import Path

from producer.errors import CliError, missing
from producer.facts.registry import WAN_DENOISERS
from producer.files.inputs import regular_file
from producer.modelfiles.lora_sizes import DOWN_SUFFIXES, UP_SUFFIXES, pair_params
from producer.values import not_text

log = logging.getLogger("producer")

FAMILIES = ("wan", "qwen")
MODEL_TITLES = {"wan": "Wan 2.2", "qwen": "Qwen-Image-Edit"}
EXPERT_ROLES = {"transformer": "high-noise expert", "transformer_2": "low-noise expert"}
WAN_TARGETS = {"high": WAN_DENOISERS[:1], "low": WAN_DENOISERS[1:], "both": WAN_DENOISERS}
WAN_TARGET_NAMES = {"transformer": "high", "transformer_2": "low"}
PICKLE_SUFFIXES = (".pt", ".pth", ".ckpt", ".bin", ".pkl", ".pickle")
MAX_ABS_STRENGTH = 10.0  # beyond this a LoRA only produces noise; a typo like 08 for 0.8 is likelier

# Key suffixes. `.lora_B.bias` is what diffusers-format files call a bias delta (peft's lora_bias).
ALPHA_SUFFIX = ".alpha"
DELTA_SUFFIXES = {".diff_b": "bias", ".diff_m": "modulation", ".diff": "weight", ".lora_B.bias": "bias"}
MODULATION_DIFF = ".modulation.diff"  # `blocks.N.modulation.diff`, another spelling of `blocks.N.diff_m`
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


# ---------------------------------------------------------------- reading a LoRA file


@dataclass
class LoraModule:
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
class LoraDelta:
    key: str  # the key in the file
    source: str
    kind: str  # weight | bias | modulation
    target: str = ""  # diffusers parameter path


@dataclass
class LoraFile:
    path: Path
    tensors: dict
    style: str  # wan-original | wan-diffusers | wan-musubi | qwen-dotted | qwen-musubi
    key_format: str
    modules: dict[str, LoraModule]
    deltas: list[LoraDelta]
    others: list[str]  # neither LoRA nor delta keys
    looks_like: str | None
    looks_like_family: str | None
    key_count: int = 0  # keys in the file (tensors may gain stand-in pairs for deltas on quantized layers)


def read_lora(path: Path, family: str) -> LoraFile:
    check_lora_file(path)
    tensors = _widen_float8(_read_safetensors(path))
    if not tensors:
        raise CliError(f"{path.name} holds no tensors", fix="the file is empty or truncated: download it again")
    prefixes, bare = _strip_prefixes(tensors)
    _refuse_malformed(path, tensors, bare)
    modules, deltas, others = _group_keys(bare)
    looks_like, looks_family = _guess_model(list(bare.values()))
    style = _style(family, prefixes, modules, deltas)
    lora = LoraFile(path, tensors, style, _describe_format(prefixes, bare), modules, deltas, others,
                     looks_like, looks_family, len(tensors))
    _map_targets(lora)
    return lora


def _read_safetensors(path: Path) -> dict:
    from safetensors import SafetensorError, safe_open

    try:
        if not_text(str(path)):
            # safetensors takes the path as UTF-8 text only ("Path ... is not valid UTF-8"): a name with other
            # bytes (allowed on Linux) is read here and parsed from memory, the same format checks included
            from safetensors.torch import load

            return load(path.read_bytes())
        with safe_open(str(path), framework="pt", device="cpu") as f:
            return {key: f.get_tensor(key) for key in f.keys()}
    except (SafetensorError, OSError) as exc:
        raise CliError(f"cannot read {path.name} as a safetensors file: {exc}",
                       fix="the file is damaged or not a safetensors file: download it again") from None


def _widen_float8(tensors: dict) -> dict:
    """float8 LoRA tensors as float32 (exact). torch has no CPU kernels for float8 arithmetic (isfinite, the
    alpha / rank scaling, peft's merge), so an fp8 LoRA crashed; it is small, so widening costs little."""
    import torch

    return {k: t.to(torch.float32) if t.is_floating_point() and t.element_size() == 1 else t
            for k, t in tensors.items()}


def _refuse_malformed(path: Path, tensors: dict, bare: dict[str, str]) -> None:
    """Every LoRA, alpha and delta tensor must be usable as it is, before anything is loaded: a NaN delta
    added to a weight gives black frames, an integer one crashes peft, a scalar pair crashes the planner."""
    for key, name in bare.items():
        role = _split_suffix(name)[1]
        if role is None:  # not a LoRA key: reported as skipped, never used
            continue
        problem = _tensor_problem(tensors[key], role)
        if problem:
            raise CliError(f"{path.name}: tensor {key} {problem}; nothing was loaded",
                           fix="the file is damaged or was written wrongly: download it again, or ask its author "
                               "for a fixed file (or drop this --lora)")


def _tensor_problem(tensor, role: str) -> str | None:
    import torch

    if role == "alpha":
        if tensor.dtype == torch.bool or tensor.is_complex():
            return f"is an alpha of type {tensor.dtype}, not a number"
        if tensor.numel() != 1:
            return f"is an alpha with {tensor.numel()} elements (shape {tuple(tensor.shape)}); an alpha is one number"
    elif not tensor.dtype.is_floating_point:
        return f"holds {tensor.dtype} values; LoRA weights and deltas are floating point"
    elif tensor.ndim == 0:
        return "is a scalar; LoRA weights and deltas are matrices or vectors"
    elif tensor.numel() == 0:
        return f"has no elements (shape {tuple(tensor.shape)})"
    elif role in ("down", "up") and tensor.ndim == 1:
        return f"has 1 dimension (shape {tuple(tensor.shape)}); a LoRA {role} weight is a matrix"
    if not _finite(tensor):
        return "holds NaN or infinite values"
    return None


def _finite(tensor) -> bool:
    """No NaN and no infinity anywhere: the extremes say so (aminmax propagates NaN), in one pass and without
    the bool copy of the whole tensor that `isfinite().all()` makes."""
    import torch

    try:
        low, high = torch.aminmax(tensor)
    except (RuntimeError, NotImplementedError):  # a dtype it does not take (fp8, which isfinite refuses too)
        low, high = torch.aminmax(tensor.float())
    return bool(torch.isfinite(low)) and bool(torch.isfinite(high))


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
    if bare.endswith(MODULATION_DIFF):  # the ComfyUI extractors' spelling of `.diff_m`: same tensor
        return bare[: -len(MODULATION_DIFF)], "delta:modulation"
    for suffix, kind in DELTA_SUFFIXES.items():
        if bare.endswith(suffix):
            return bare[: -len(suffix)], "delta:" + kind
    return bare, None


def _group_keys(bare: dict[str, str]) -> tuple[dict[str, LoraModule], list[LoraDelta], list[str]]:
    modules: dict[str, LoraModule] = {}
    deltas, others = [], []
    for key, name in bare.items():
        source, role = _split_suffix(name)
        if role is None:
            others.append(key)
        elif role.startswith("delta:"):
            deltas.append(LoraDelta(key, source, role.split(":", 1)[1]))
        else:
            modules.setdefault(source, LoraModule(source)).keys[role] = key
    return modules, deltas, others


def _style(family: str, prefixes: set[str], modules: dict, deltas: list) -> str:
    if "lora_unet_" in prefixes:
        return f"{family}-musubi"
    if family == "qwen":
        return "qwen-dotted"
    names = list(modules) + [d.source for d in deltas] + [d.key for d in deltas]  # d.key: `.modulation.diff`
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


def _map_targets(lora: LoraFile) -> None:
    """Fill in the diffusers module/parameter each LoRA pair and delta targets."""
    if lora.style.startswith("wan"):
        sources = {m.source: wan_dotted(m.source, lora.style) for m in lora.modules.values()}
        module_names = _wan_renamed({s: f"{d}.weight" for s, d in sources.items()}, lora.style)
        for m in lora.modules.values():
            m.target = module_names[m.source].removesuffix(".weight")
        params = _wan_renamed({d.key: _wan_param(wan_dotted(d.source, lora.style), d.kind, lora.style)
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


def wan_dotted(source: str, style: str) -> str:
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
    if must_exist and not path.exists() and not path.is_symlink():
        raise CliError(f"LoRA file {path} {missing(path)}",
                       fix="check the path (a relative path starts in the current folder; in a batch file, in "
                           "the batch file's folder)")
    if must_exist:
        regular_file(path, "LoRA file")


def adapter_params(specs) -> int:
    """The LoRA parameters that one denoiser keeps beside GGUF weights (folded, or as adapters) for `specs`:
    the largest over the denoisers they go into (producer.sizing.memory counts them in the plan)."""
    per_component: dict[str, int] = {}
    sizes = {spec.path: pair_params(spec.path) for spec in specs}
    for spec in specs:
        for component in spec.components:
            per_component[component] = per_component.get(component, 0) + sizes[spec.path]
    return max(per_component.values(), default=0)
