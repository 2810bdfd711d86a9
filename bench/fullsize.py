"""Full-size architectures with random weights: the computation and memory of the real models.

The real weights cannot be downloaded where this project is built; the real *architectures* can be
built with random weights, which is how speed and memory are measured honestly. Configs come from the
public repositories (../shared/reference/full-size-models.md). `size="tiny"` builds the stand-in
configs instead, so the benchmark itself runs in the test suite on a CPU and cannot rot.

Models are built directly on the target device in bf16 (a 14 B expert takes ~0.4 s that way on an
H200, minutes on a CPU); `to_host=True` then moves them to the CPU for the offloading configurations.
"""

from __future__ import annotations

import contextlib

import torch

WAN_EXPERT = {
    "patch_size": [1, 2, 2], "num_attention_heads": 40, "attention_head_dim": 128, "in_channels": 36,
    "out_channels": 16, "text_dim": 4096, "freq_dim": 256, "ffn_dim": 13824, "num_layers": 40,
    "cross_attn_norm": True, "qk_norm": "rms_norm_across_heads", "eps": 1e-6, "image_dim": None,
    "added_kv_proj_dim": None, "rope_max_seq_len": 1024,
}
WAN_TEXT_TOKENS, WAN_TEXT_DIM = 512, 4096  # UMT5-XXL pads every prompt to 512 tokens
UMT5_XXL = {"vocab_size": 256384, "d_model": 4096, "d_kv": 64, "d_ff": 10240, "num_layers": 24, "num_heads": 64,
            "feed_forward_proj": "gated-gelu", "relative_attention_num_buckets": 32}

QWEN_TRANSFORMER = {
    "patch_size": 2, "in_channels": 64, "out_channels": 16, "num_layers": 60, "attention_head_dim": 128,
    "num_attention_heads": 24, "joint_attention_dim": 3584, "guidance_embeds": False,
    "axes_dims_rope": [16, 56, 56], "zero_cond_t": True,
}
QWEN_TEXT_DIM = 3584
# Qwen2.5-VL-7B-Instruct's config.json (the Qwen-Image text encoder): ~8.3 B parameters with the lm_head.
QWEN_VL_TEXT = {"hidden_size": 3584, "intermediate_size": 18944, "num_hidden_layers": 28, "num_attention_heads": 28,
                "num_key_value_heads": 4, "max_position_embeddings": 128000, "rms_norm_eps": 1e-6,
                "rope_parameters": {"rope_type": "default", "mrope_section": [16, 24, 24], "rope_theta": 1000000.0}}
QWEN_VL_VISION = {"depth": 32, "hidden_size": 1280, "intermediate_size": 3420, "num_heads": 16, "out_hidden_size": 3584,
                  "patch_size": 14, "spatial_merge_size": 2, "temporal_patch_size": 2, "window_size": 112,
                  "fullatt_block_indexes": [7, 15, 23, 31], "hidden_act": "silu"}
QWEN_VL_VOCAB = 152064
QWEN_PROMPT_TOKENS = 200  # a keyframe prompt plus the template; each reference adds its vision tokens


@contextlib.contextmanager
def _building(device: str, dtype: torch.dtype):
    previous = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        with torch.device(device):
            yield
    finally:
        torch.set_default_dtype(previous)


def _seeded(seed: int):
    torch.manual_seed(seed)
    if torch.cuda.is_available():
        torch.cuda.manual_seed_all(seed)


# K-quant blocks hold 256 values, wider than the stand-ins' rows: the tiny GGUF runs widen the blocks to 256.
_TINY_WIDE = {"wan": {"attention_head_dim": 128, "ffn_dim": 512},
              "qwen": {"attention_head_dim": 128, "axes_dims_rope": [16, 56, 56]}}


def wan_expert_config(size: str, wide: bool = False) -> dict:
    if size != "tiny":
        return WAN_EXPERT
    from producer.testing import standin_models

    cfg = standin_models.WAN_TRANSFORMER_CONFIG
    return {**cfg, **_TINY_WIDE["wan"]} if wide else cfg


def qwen_transformer_config(size: str, wide: bool = False) -> dict:
    if size != "tiny":
        return QWEN_TRANSFORMER
    from producer.testing import standin_models

    cfg = standin_models.QWEN_EDIT_TRANSFORMER_CONFIG
    return {**cfg, **_TINY_WIDE["qwen"]} if wide else cfg


def wan_components(size: str, device: str, dtype: torch.dtype = torch.bfloat16, seed: int = 0,
                   wide: bool = False) -> dict:
    """Two experts, VAE and scheduler of Wan 2.2 I2V A14B (no text encoder: embeddings are given).
    `wide` widens the tiny stand-in to rows of 256 values, so that K-quant GGUF blocks fit it."""
    from diffusers import UniPCMultistepScheduler, WanTransformer3DModel

    cfg = wan_expert_config(size, wide)
    _seeded(seed)
    with _building(device, dtype):
        high = WanTransformer3DModel(**cfg)
        low = WanTransformer3DModel(**cfg)
    vae = wan_vae(size, device, dtype, seed=None)
    scheduler = UniPCMultistepScheduler(prediction_type="flow_prediction", use_flow_sigmas=True, flow_shift=5.0)
    return {"transformer": high.eval(), "transformer_2": low.eval(), "vae": vae.eval(), "scheduler": scheduler,
            "text_dim": cfg["text_dim"]}


def wan_vae(size: str, device: str, dtype: torch.dtype = torch.bfloat16, seed: int | None = 0):
    """Wan 2.2 I2V A14B's VAE (diffusers' default AutoencoderKLWan config; the stand-in's at tiny size, in fp32
    there); `seed=None` goes on from the random state as it is."""
    from diffusers import AutoencoderKLWan

    vae_cfg = {}
    if size == "tiny":
        from producer.testing import standin_models

        vae_cfg = standin_models.WAN_VAE_CONFIG
    if seed is not None:
        _seeded(seed)
    with _building(device, dtype):
        vae = AutoencoderKLWan(**vae_cfg)
    if size == "tiny" and dtype != torch.float32:
        vae.to(torch.float32)
    return vae.eval()


def wan_prompt_embeds(size: str, device: str, dtype: torch.dtype, seed: int = 1) -> torch.Tensor:
    dim = 32 if size == "tiny" else WAN_TEXT_DIM
    gen = torch.Generator(device="cpu").manual_seed(seed)
    return torch.randn(1, WAN_TEXT_TOKENS, dim, generator=gen).to(device, dtype)


def qwen_components(size: str, device: str, dtype: torch.dtype = torch.bfloat16, seed: int = 0,
                    wide: bool = False) -> dict:
    """Transformer, VAE and scheduler of Qwen-Image-Edit-2511 (no text encoder: embeddings are given)."""
    from diffusers import AutoencoderKLQwenImage, FlowMatchEulerDiscreteScheduler, QwenImageTransformer2DModel
    from producer.testing import standin_models

    cfg, scheduler_cfg = qwen_transformer_config(size, wide), standin_models.QWEN_SCHEDULER_CONFIG
    vae_cfg = standin_models.QWEN_VAE_CONFIG if size == "tiny" else {}
    _seeded(seed)
    with _building(device, dtype):
        transformer = QwenImageTransformer2DModel(**cfg)
        vae = AutoencoderKLQwenImage(**vae_cfg)
    vae.to(torch.float32 if size == "tiny" else dtype)
    return {"transformer": transformer.eval(), "vae": vae.eval(),
            "scheduler": FlowMatchEulerDiscreteScheduler.from_config(scheduler_cfg),
            "text_dim": cfg["joint_attention_dim"]}


def qwen_prompt_embeds(size: str, references: int, device: str, dtype: torch.dtype, seed: int = 1):
    """Embeddings of a prompt with `references` pictures: the VL encoder's output grows with them."""
    dim = 32 if size == "tiny" else QWEN_TEXT_DIM
    # Each 384^2 condition image becomes (384/28)^2 ~ 188 vision tokens after the 2x2 merge.
    tokens = QWEN_PROMPT_TOKENS + references * (8 if size == "tiny" else 188)
    gen = torch.Generator(device="cpu").manual_seed(seed)
    embeds = torch.randn(1, tokens, dim, generator=gen).to(device, dtype)
    return embeds, torch.ones(1, tokens, dtype=torch.long, device=device)


def umt5_encoder(size: str, device: str, dtype: torch.dtype = torch.bfloat16):
    """UMT5-XXL (the Wan text encoder), to time prompt encoding on its own."""
    from transformers import UMT5Config, UMT5EncoderModel

    if size == "tiny":
        from producer.testing import standin_models

        config = UMT5Config(**standin_models.UMT5_CONFIG)
    else:
        config = UMT5Config(**UMT5_XXL)
    with _building(device, dtype):
        return UMT5EncoderModel(config).eval()


def qwen_vl_encoder(size: str, tokenizer, device: str, dtype: torch.dtype = torch.bfloat16):
    """Qwen2.5-VL (the Qwen-Image text encoder) whose image and vision token ids are `tokenizer`'s (the stand-in
    tokenizer: the real one cannot be downloaded here; ids only pick embedding rows, so the cost is the same)."""
    from producer.testing import standin_models as tiny
    from transformers import Qwen2_5_VLConfig, Qwen2_5_VLForConditionalGeneration

    ids = {token: tokenizer.convert_tokens_to_ids(token) for token in tiny.QWEN_SPECIAL_TOKENS}
    if size == "tiny":
        text, vision, vocab = tiny.QWEN_VL_TEXT_CONFIG, tiny.QWEN_VL_VISION_CONFIG, -(-len(tokenizer) // 64) * 64
    else:
        text, vision, vocab = QWEN_VL_TEXT, QWEN_VL_VISION, QWEN_VL_VOCAB
    config = Qwen2_5_VLConfig(
        text_config={**text, "vocab_size": vocab, "bos_token_id": ids["<|endoftext|>"], "eos_token_id": ids["<|im_end|>"]},
        vision_config=dict(vision), image_token_id=ids["<|image_pad|>"], video_token_id=ids["<|video_pad|>"],
        vision_start_token_id=ids["<|vision_start|>"], vision_end_token_id=ids["<|vision_end|>"])
    with _building(device, dtype):
        return Qwen2_5_VLForConditionalGeneration(config).eval()


def move_to_host(module: torch.nn.Module) -> torch.nn.Module:
    """Offloading configurations start with the weights in host RAM, as after a real load."""
    module.to("cpu")
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
    return module


# ---------------------------------------------------------------- GGUF experts with the published type maps

# The forms the memory plan can choose for a denoiser, besides bf16 and fp8 storage (which the scripts make
# from bf16 weights with diffusers' layerwise casting, so the benchmark builds bf16 for those).
GGUF_FORMS = ("gguf-q4", "gguf-q8")

# Published type maps (city96/ComfyUI-GGUF tools/convert.py and tools/lcpp.patch, which QuantStack's Wan
# 2.2 files come from; ../shared/reference/model-files.md): in Q4_K_M files the value projections and the
# second FFN matrix of every block are Q6_K and the other block linears Q4_K; Q8_0 files quantize every
# block linear to Q8_0. Embeddings, time projection, head and patch embedding stay F16 and biases, norms
# and modulation F32 in the files; diffusers computes those in the compute dtype, so they stay bf16 here.
# For Qwen the same rule is applied to its names (value projections of both streams, the MLPs' second
# matrix): inferred from Wan's map, since unsloth's own map for the Qwen files was not published.
_Q6_IN_Q4_K_M = ("attn1.to_v", "attn2.to_v", "ffn.net.2", "attn.to_v", "attn.add_v_proj", "img_mlp.net.2",
                 "txt_mlp.net.2")


def gguf_type(name: str, form: str):
    """The GGML type a block linear `name` has in a file of `form` (gguf-q4 = Q4_K_M, gguf-q8 = Q8_0)."""
    import gguf

    if form == "gguf-q8":
        return gguf.GGMLQuantizationType.Q8_0
    if any(name.endswith(suffix) for suffix in _Q6_IN_Q4_K_M):
        return gguf.GGMLQuantizationType.Q6_K
    return gguf.GGMLQuantizationType.Q4_K


# Where each type keeps its fp16 scale(s) in a block, and the scale that gives weights of about the spread
# of a trained model's (std ~0.02) from uniformly random quant bytes: Q8_0 y = d*q (q int8, std ~74);
# Q4_K y = d*sc*q - dmin*m (sc, m 6-bit, q 4-bit); Q6_K y = d*sc*(q-32) (sc int8, q 6-bit).
_SCALES = {"Q8_0": ((0, 2.7e-4),), "Q4_K": ((0, 7.8e-5), (2, 5.9e-4)), "Q6_K": ((208, 1.5e-5),)}


def random_gguf_weight(rows: int, cols: int, qtype, device, generator: torch.Generator):
    """Random but well-formed GGUF blocks for a (rows, cols) weight: random quants, fixed finite scales.

    They cost the bytes and the dequantization work of real ones, and dequantize to finite values of a
    trained model's spread, so activations stay sane through 40 blocks.
    """
    from diffusers.quantizers.gguf.utils import GGUFParameter
    from gguf import GGML_QUANT_SIZES

    block_size, type_size = GGML_QUANT_SIZES[qtype]
    if cols % block_size:
        raise ValueError(f"{qtype.name} needs rows of a multiple of {block_size} values, not {cols}")
    blocks = torch.randint(0, 256, (rows * cols // block_size, type_size), dtype=torch.uint8, device=device,
                           generator=generator)
    for offset, scale in _SCALES[qtype.name]:
        blocks[:, offset:offset + 2] = torch.tensor([scale], dtype=torch.float16).view(torch.uint8).to(device)
    return GGUFParameter(blocks.view(rows, cols // block_size * type_size), quant_type=qtype)


def quantize_like_gguf(model: torch.nn.Module, form: str, compute_dtype: torch.dtype, seed: int = 0):
    """Replace every block linear of `model` by diffusers' GGUFLinear holding random blocks of the type the
    published `form` file has (what `from_single_file` with GGUFQuantizationConfig builds); returns the
    model and the bytes of each type, so the sizes can be checked against the published files."""
    from diffusers.quantizers.gguf.utils import GGUFLinear

    blocks = model.blocks if hasattr(model, "blocks") else model.transformer_blocks
    device = next(model.parameters()).device
    generator = torch.Generator(device=device).manual_seed(seed)
    sizes: dict[str, int] = {}
    for block in blocks:
        for name, linear in list(block.named_modules()):
            if type(linear) is not torch.nn.Linear:
                continue
            qtype = gguf_type(name, form)
            quantized = GGUFLinear(linear.in_features, linear.out_features, linear.bias is not None,
                                   compute_dtype=compute_dtype, device="meta")
            quantized.weight = random_gguf_weight(linear.out_features, linear.in_features, qtype, device, generator)
            if linear.bias is not None:
                quantized.bias = linear.bias
            quantized.requires_grad_(False)
            parent = block.get_submodule(name.rpartition(".")[0]) if "." in name else block
            setattr(parent, name.rpartition(".")[2], quantized)
            sizes[qtype.name] = sizes.get(qtype.name, 0) + quantized.weight.numel()
    if device.type == "cuda":
        torch.cuda.empty_cache()
    return model, sizes


def write_gguf_expert(module: torch.nn.Module, path, form: str, arch: str = "wan") -> int:
    """Write a GGUF denoiser built by quantize_like_gguf as a ComfyUI-GGUF file, the form QuantStack (Wan,
    original key names) and unsloth (Qwen-Image, diffusers' key names) publish, so the scripts' own loader
    reads it; returns the file's bytes. Quantized
    blocks are written as they are; the rest as the published files keep them (F32 for 1-D tensors,
    modulation and the 5-D patch embedding, F16 otherwise)."""
    import gguf
    import numpy as np
    from diffusers.quantizers.gguf.utils import GGUFParameter
    from producer.testing.standin_gguf import QWEN_TIMESTEP_MARKER, wan_key_to_original

    rename = wan_key_to_original if arch == "wan" else str
    writer = gguf.GGUFWriter(path=None, arch=arch)
    writer.add_quantization_version(gguf.GGML_QUANT_VERSION)
    writer.add_file_type(gguf.LlamaFileType.MOSTLY_Q4_K_M if form == "gguf-q4" else gguf.LlamaFileType.MOSTLY_Q8_0)
    for key, tensor in module.state_dict().items():
        name = rename(key)
        if isinstance(tensor, GGUFParameter):
            writer.add_tensor(name, tensor.as_tensor().cpu().numpy(), raw_dtype=tensor.quant_type)
            continue
        array = tensor.detach().float().cpu().numpy()
        keep_f32 = array.ndim < 2 or array.ndim > 4 or "modulation" in name
        writer.add_tensor(name, array if keep_f32 else array.astype(np.float16))
    if arch != "wan":  # Comfy-Org's 2511 repacks carry this marker (producer.testing.standin_gguf); the loader drops it
        writer.add_tensor(QWEN_TIMESTEP_MARKER, np.zeros(1, dtype=np.float32))
    path.parent.mkdir(parents=True, exist_ok=True)
    writer.write_header_to_file(path=path)
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path.stat().st_size


def read_speed(paths) -> dict:
    """Seconds and GB/s to read `paths` whole (warm page cache after writing them): the floor of any load. Read
    into one buffer made once (disk_read.read_serial): a fresh 64 MiB object at every read, as before 2026-12-07
    (third session), also timed its page faults, which made the floor slower than the disk."""
    import time

    from disk_read import read_serial

    start = time.perf_counter()
    total = sum(read_serial(path) for path in paths)
    seconds = time.perf_counter() - start
    return {"bytes": total, "seconds": round(seconds, 3), "gb_per_s": round(total / seconds / 1e9, 2)}


def numerical_difference(changed: torch.Tensor, reference: torch.Tensor) -> dict:
    """Relative L2 error, largest absolute difference and cosine similarity of `changed` against `reference`,
    in float64: over a clip's ~10^8 values float32's sums drift (a cosine of 1.022 came back from an H100)."""
    changed, reference = changed.flatten().double(), reference.flatten().double()
    diff = changed - reference
    return {"relative_l2": round(float(diff.norm() / reference.norm().clamp_min(1e-12)), 5),
            "max_abs": round(float(diff.abs().max()), 5),
            "cosine": round(float(torch.nn.functional.cosine_similarity(changed, reference, dim=0)), 6)}
