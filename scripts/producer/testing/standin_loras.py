"""Tiny LoRA files in the key formats published LoRAs use, shaped for the stand-in transformers.

Each builder reads the module shapes off a (tiny) transformer and returns a state dict in one
format; `save_lora` writes it as .safetensors. Formats, as the published files spell them:

- Wan, ComfyUI/Kijai/LightX2V (`wan_lightx2v_lora`): `diffusion_model.blocks.N.self_attn.q.lora_down.weight`,
  `lora_up.weight`, `alpha` (`alpha=None`: none, as in LightX2V's own files), `ffn.0`/`ffn.2`, plus the
  non-LoRA deltas LightX2V's distill LoRAs carry: `.diff_b` (biases), `.diff` (norms, all-zero ones too;
  `head.head.diff` in the Wan 2.2 distill files), `blocks.N.diff_m` (the modulation table;
  `modulation="modulation.diff"` spells it `blocks.N.modulation.diff`, as some ComfyUI extractors do).
  `pair=("lora_A", "lora_B")` gives Kijai's newer spelling; `wan21_image_keys=True` adds the Wan 2.1 I2V
  image-encoder keys (k_img, v_img, norm_k_img, img_emb) that the LightX2V Wan 2.1 LoRA holds and Wan 2.2
  has no module for.
- Wan, diffusers (`wan_diffusers_lora`): `transformer.blocks.N.attn1.to_q.lora_A.weight`.
- Wan, musubi-tuner (`wan_musubi_lora`): `lora_unet_blocks_N_self_attn_q.lora_down.weight` + `alpha`.
- Qwen, Lightning (`qwen_lightning_lora`): `transformer_blocks.N.attn.to_q.lora_down.weight`, `lora_up`,
  `alpha`, no prefix, attention + img/txt MLPs (12 modules a block, no img_mod/txt_mod), rank 64, alpha 8.
  Inferred, not read from the file: diffusers added alpha-key detection for lightx2v/Qwen-Image-Lightning
  (diffusers PR 12119); DiffSynth loads the 2511 file with alpha 8/64 (its loader ignores stored alpha);
  the 4-step file's 849,608,296 bytes are exactly 60 blocks x those 12 rank-64 bf16 pairs plus a header
  the size of ~2160 entries (A, B and alpha for 720 modules).
- Qwen, ComfyUI (`qwen_comfy_lora`): `diffusion_model.transformer_blocks.N.attn.to_q.lora_down.weight`;
  AnyPose's form is this with `pair=("lora_A", "lora_B")`, rank 16, no alpha, every block linear (img_mod
  and txt_mod included; inferred from its files' sizes, 295,146,208 / 295,146,216 bytes).
- Qwen, diffusers (`qwen_diffusers_lora`): `transformer.transformer_blocks.N.attn.to_q.lora_A.weight`.
- Another model (`other_model_lora`): Flux (kohya `lora_unet_double_blocks_...`) or SDXL key names.

`lora_writers()` gives standins' installer a writer per registry LoRA entry; `standins.install_standin_loras`
installs them into a Hugging Face cache under the real repo ids and file names, through that installer
(same cache layout, marker, manifest).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from pathlib import Path

from producer.facts import registry
from producer.testing import standin_gguf, standin_models

LORA_ENTRY_NAMES = ("wan-lightning", "wan21-lightx2v", "qwen-lightning", "qwen-anypose")
PAIR_DOWN_UP = ("lora_down", "lora_up")
PAIR_A_B = ("lora_A", "lora_B")
WAN21_IMAGE_DIM = 16  # the stand-in for CLIP's 1280 image features in Wan 2.1 I2V
LORA_STD = 0.1  # large enough that a tiny model's output visibly moves, small enough to stay finite
DELTA_STD = 0.01


# ---------------------------------------------------------------- building blocks


def _generator(seed: int, what: str):
    import torch

    return torch.Generator().manual_seed(standin_models.component_seed(seed, f"lora.{what}"))


def _randn(gen, *shape, std: float = LORA_STD, dtype=None):
    import torch

    return (torch.randn(*shape, generator=gen) * std).to(dtype or torch.float32)


def _linears(model, prefix: str = "") -> list[tuple[str, int, int]]:
    """(name, in_features, out_features) of the model's linear layers under `prefix`, in module order
    (through LoRA wrappers: a model that already holds an adapter has the same layers)."""
    import torch

    layers = []
    for name, module in model.named_modules():
        if ".base_layer" in name or ".lora_" in name or not name.startswith(prefix):
            continue
        base = module.get_base_layer() if hasattr(module, "get_base_layer") else module
        if isinstance(base, torch.nn.Linear):
            layers.append((name, base.in_features, base.out_features))
    return layers


def _add_pair(sd: dict, key: str, in_f: int, out_f: int, rank: int, gen, *, pair=PAIR_DOWN_UP,
              alpha: float | None = None, dtype=None) -> None:
    import torch

    down, up = pair
    sd[f"{key}.{down}.weight"] = _randn(gen, rank, in_f, dtype=dtype)
    sd[f"{key}.{up}.weight"] = _randn(gen, out_f, rank, dtype=dtype)
    if alpha is not None:
        sd[f"{key}.alpha"] = torch.tensor(float(alpha), dtype=dtype or torch.float32)


def save_lora(state_dict: dict, path: str | os.PathLike) -> Path:
    from safetensors.torch import save_file

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file({k: v.contiguous() for k, v in state_dict.items()}, str(path))
    return path


# ---------------------------------------------------------------- Wan


def _wan_original(name: str) -> str:
    """diffusers module name -> original Wan name (standins' inverse of diffusers' single-file renames)."""
    return standin_gguf.wan_key_to_original(f"{name}.weight").removesuffix(".weight")


def wan_lightx2v_lora(transformer, seed: int = 0, *, rank: int = 4, alpha: float | None = 4.0,
                      pair: tuple[str, str] = PAIR_DOWN_UP, deltas: bool = True, head: str = "lora",
                      wan21_image_keys: bool = False, modulation: str = "diff_m", dtype=None) -> dict:
    """The ComfyUI/Kijai/LightX2V format for `transformer` (a WanTransformer3DModel).

    head: "lora" (a head.head pair, as in the Wan 2.1 LightX2V LoRA) or "diff" (a full head.head.diff,
    as in the Wan 2.2 distill LoRAs). Deltas: non-zero .diff_b on every LoRA'd layer, .diff_m per
    block, norm3 .diff; zero .diff on the q/k norms and zero norm3 .diff_b (the "zeroed values")."""
    import torch

    gen = _generator(seed, f"wan.lightx2v.{head}.{wan21_image_keys}")
    sd: dict = {}
    p = "diffusion_model."
    for name, in_f, out_f in _linears(transformer):
        original = _wan_original(name)
        if original == "head.head" and head == "diff":
            continue
        _add_pair(sd, p + original, in_f, out_f, rank, gen, pair=pair, alpha=alpha, dtype=dtype)
        if deltas:
            sd[f"{p}{original}.diff_b"] = _randn(gen, out_f, std=DELTA_STD, dtype=dtype)
    if deltas:
        _add_wan_deltas(sd, transformer, gen, head, modulation)
    if wan21_image_keys:
        _add_wan21_image_keys(sd, transformer, gen, rank, pair, alpha, dtype)
    return {k: v.to(dtype or torch.float32) for k, v in sd.items()}


def _add_wan_deltas(sd: dict, transformer, gen, head: str, modulation: str) -> None:
    import torch

    p, dim = "diffusion_model.", transformer.config.num_attention_heads * transformer.config.attention_head_dim
    for i, _ in enumerate(transformer.blocks):
        for attn in ("self_attn", "cross_attn"):
            for norm in ("norm_q", "norm_k"):
                sd[f"{p}blocks.{i}.{attn}.{norm}.diff"] = torch.zeros(dim)
        sd[f"{p}blocks.{i}.norm3.diff"] = _randn(gen, dim, std=DELTA_STD)
        sd[f"{p}blocks.{i}.norm3.diff_b"] = torch.zeros(dim)
        sd[f"{p}blocks.{i}.{modulation}"] = _randn(gen, *transformer.blocks[i].scale_shift_table.shape, std=DELTA_STD)
    sd[f"{p}patch_embedding.diff_b"] = _randn(gen, dim, std=DELTA_STD)
    if head == "diff":
        out_f, in_f = transformer.proj_out.weight.shape
        sd[f"{p}head.head.diff"] = _randn(gen, out_f, in_f, std=DELTA_STD)
        sd[f"{p}head.head.diff_b"] = _randn(gen, out_f, std=DELTA_STD)


def _add_wan21_image_keys(sd: dict, transformer, gen, rank: int, pair, alpha, dtype) -> None:
    """Wan 2.1 I2V's image branch: k_img/v_img in every cross-attention, the img_emb MLP (CLIP -> dim)."""
    p, dim = "diffusion_model.", transformer.config.num_attention_heads * transformer.config.attention_head_dim
    for i, _ in enumerate(transformer.blocks):
        for proj in ("k_img", "v_img"):
            _add_pair(sd, f"{p}blocks.{i}.cross_attn.{proj}", dim, dim, rank, gen, pair=pair, alpha=alpha)
            sd[f"{p}blocks.{i}.cross_attn.{proj}.diff_b"] = _randn(gen, dim, std=DELTA_STD)
        sd[f"{p}blocks.{i}.cross_attn.norm_k_img.diff"] = _randn(gen, dim, std=DELTA_STD)
    _add_pair(sd, f"{p}img_emb.proj.1", WAN21_IMAGE_DIM, WAN21_IMAGE_DIM, rank, gen, pair=pair, alpha=alpha)
    _add_pair(sd, f"{p}img_emb.proj.3", WAN21_IMAGE_DIM, dim, rank, gen, pair=pair, alpha=alpha)
    for norm, width in (("img_emb.proj.0", WAN21_IMAGE_DIM), ("img_emb.proj.4", dim)):
        sd[f"{p}{norm}.diff"] = _randn(gen, width, std=DELTA_STD)
        sd[f"{p}{norm}.diff_b"] = _randn(gen, width, std=DELTA_STD)


def wan_diffusers_lora(transformer, seed: int = 0, *, rank: int = 4, blocks_only: bool = True, dtype=None) -> dict:
    """`transformer.blocks.N.attn1.to_q.lora_A.weight`: what diffusers' own trainers save."""
    gen = _generator(seed, "wan.diffusers")
    sd: dict = {}
    for name, in_f, out_f in _linears(transformer, "blocks." if blocks_only else ""):
        _add_pair(sd, f"transformer.{name}", in_f, out_f, rank, gen, pair=PAIR_A_B, dtype=dtype)
    return sd


def wan_musubi_lora(transformer, seed: int = 0, *, rank: int = 4, alpha: float = 2.0, dtype=None) -> dict:
    """musubi-tuner / kohya: `lora_unet_blocks_0_self_attn_q.lora_down.weight` + `.alpha`."""
    gen = _generator(seed, "wan.musubi")
    sd: dict = {}
    for name, in_f, out_f in _linears(transformer, "blocks."):
        _add_pair(sd, "lora_unet_" + _wan_original(name).replace(".", "_"), in_f, out_f, rank, gen,
                  alpha=alpha, dtype=dtype)
    return sd


# ---------------------------------------------------------------- Qwen-Image

QWEN_LIGHTNING_MODULES = ("attn.to_q", "attn.to_k", "attn.to_v", "attn.add_q_proj", "attn.add_k_proj",
                          "attn.add_v_proj", "attn.to_out.0", "attn.to_add_out", "img_mlp.net.0.proj",
                          "img_mlp.net.2", "txt_mlp.net.0.proj", "txt_mlp.net.2")


def _qwen_block_linears(transformer, modules: Sequence[str] | None = None) -> list[tuple[str, int, int]]:
    layers = _linears(transformer, "transformer_blocks.")
    if modules is None:
        return layers
    return [(n, i, o) for n, i, o in layers if n.split(".", 2)[2] in modules]


def qwen_lightning_lora(transformer, seed: int = 0, *, rank: int = 64, alpha: float = 8.0, dtype=None) -> dict:
    """The lightx2v Qwen-Image-(Edit-)Lightning layout: bare names, lora_down/lora_up + alpha
    (rank 64, alpha 8 as in the real files)."""
    gen = _generator(seed, "qwen.lightning")
    sd: dict = {}
    for name, in_f, out_f in _qwen_block_linears(transformer, QWEN_LIGHTNING_MODULES):
        _add_pair(sd, name, in_f, out_f, rank, gen, alpha=alpha, dtype=dtype)
    return sd


def qwen_comfy_lora(transformer, seed: int = 0, *, rank: int = 4, pair: tuple[str, str] = PAIR_DOWN_UP,
                    alpha: float | None = None, dtype=None) -> dict:
    """ComfyUI naming: `diffusion_model.transformer_blocks.N.attn.to_q.lora_down.weight` (every block linear)."""
    gen = _generator(seed, f"qwen.comfy.{pair[0]}")
    sd: dict = {}
    for name, in_f, out_f in _qwen_block_linears(transformer):
        _add_pair(sd, f"diffusion_model.{name}", in_f, out_f, rank, gen, pair=pair, alpha=alpha, dtype=dtype)
    return sd


def qwen_diffusers_lora(transformer, seed: int = 0, *, rank: int = 4, prefix: str = "transformer.",
                        dtype=None) -> dict:
    """diffusers naming: `transformer.transformer_blocks.N.attn.to_q.lora_A.weight` (prefix="" drops the prefix)."""
    gen = _generator(seed, f"qwen.diffusers.{prefix}")
    sd: dict = {}
    for name, in_f, out_f in _qwen_block_linears(transformer):
        _add_pair(sd, f"{prefix}{name}", in_f, out_f, rank, gen, pair=PAIR_A_B, dtype=dtype)
    return sd


# ---------------------------------------------------------------- LoRAs for other models


def other_model_lora(model: str = "flux", seed: int = 0, *, rank: int = 4, blocks: int = 2) -> dict:
    """Key names of a LoRA for another model: 'flux' (kohya: lora_unet_double_blocks_N_img_attn_qkv)
    or 'sdxl' (lora_unet_down_blocks_..., lora_te1_...). Widths are arbitrary: the names give it away."""
    gen = _generator(seed, f"other.{model}")
    sd: dict = {}
    if model == "flux":
        modules = [f"lora_unet_double_blocks_{i}_{part}" for i in range(blocks)
                   for part in ("img_attn_qkv", "img_attn_proj", "txt_attn_qkv", "img_mlp_0", "txt_mlp_2")]
        modules += [f"lora_unet_single_blocks_{i}_linear1" for i in range(blocks)]
    elif model == "sdxl":
        modules = [f"lora_unet_down_blocks_1_attentions_0_transformer_blocks_{i}_attn1_to_{p}"
                   for i in range(blocks) for p in "qkv"]
        modules += [f"lora_te1_text_model_encoder_layers_{i}_self_attn_q_proj" for i in range(blocks)]
    else:
        raise ValueError(f"model must be 'flux' or 'sdxl', not {model!r}")
    for key in modules:
        _add_pair(sd, key, 32, 32, rank, gen, alpha=rank)
    return sd


# ---------------------------------------------------------------- the registry's LoRA entries


def _write_wan_lightning(folder: Path, entries: Sequence[registry.ModelEntry], seed: int) -> None:
    """Wan 2.2 distill LoRAs (1022): a high-noise file for `transformer`, a low-noise one for
    `transformer_2`, as published: no `.alpha` keys (ComfyUI issue 10222, WanVideoWrapper issue 909 list
    only lora_down/lora_up/diff_b/diff), a full head.head.diff, `.diff_m`; the low-noise file (739 MB)
    carries Wan 2.1's image-encoder keys (k_img, v_img, norm_k_img, img_emb), the high-noise one (635 MB)
    does not (LightX2V issue 1246)."""
    import torch

    experts = dict(zip(registry.WAN_DENOISERS, standin_models.build_wan_experts(seed)))
    for entry in entries:
        for component, relpath in entry.roles.items():
            sd = wan_lightx2v_lora(experts[component], seed=standin_models.component_seed(seed, relpath), rank=8,
                                   alpha=None, head="diff", wan21_image_keys=component == "transformer_2",
                                   dtype=torch.bfloat16)
            save_lora(sd, folder / relpath)


def _write_wan21_lightx2v(folder: Path, entries: Sequence[registry.ModelEntry], seed: int) -> None:
    """The Wan 2.1 I2V LightX2V LoRA: one file for both experts, with Wan 2.1's image-encoder keys and,
    like LightX2V's files, no `.alpha` keys."""
    import torch

    high, _ = standin_models.build_wan_experts(seed)
    for entry in entries:
        for relpath in dict.fromkeys(entry.roles.values()):
            sd = wan_lightx2v_lora(high, seed=standin_models.component_seed(seed, relpath), rank=8, alpha=None,
                                   head="lora", wan21_image_keys=True, dtype=torch.bfloat16)
            save_lora(sd, folder / relpath)


def _write_qwen_lightning(folder: Path, entries: Sequence[registry.ModelEntry], seed: int) -> None:
    import torch

    transformer = standin_models.build_qwen_edit_transformer(seed)
    for entry in entries:
        for relpath in entry.roles.values():
            sd = qwen_lightning_lora(transformer, seed=standin_models.component_seed(seed, relpath), rank=64,
                                     alpha=8.0, dtype=torch.bfloat16)
            save_lora(sd, folder / relpath)


def _write_qwen_anypose(folder: Path, entries: Sequence[registry.ModelEntry], seed: int) -> None:
    """AnyPose base + helper: `diffusion_model.` + lora_A/lora_B, rank 16, no alpha, every block linear
    including img_mod/txt_mod (inferred from the files' sizes; ai-toolkit writes Qwen LoRAs this way)."""
    import torch

    transformer = standin_models.build_qwen_edit_transformer(seed)
    for entry in entries:
        for relpath in entry.roles.values():
            sd = qwen_comfy_lora(transformer, seed=standin_models.component_seed(seed, relpath), rank=16, pair=PAIR_A_B,
                                 dtype=torch.bfloat16)
            save_lora(sd, folder / relpath)


def lora_writers() -> dict[str, Callable[[Path, Sequence[registry.ModelEntry], int], None]]:
    """Writers for standins' installer (standins.Writer), one per registry LoRA entry."""
    return {
        "wan-lightning": _write_wan_lightning,
        "wan21-lightx2v": _write_wan21_lightx2v,
        "qwen-lightning": _write_qwen_lightning,
        "qwen-anypose": _write_qwen_anypose,
    }
