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


def wan_components(size: str, device: str, dtype: torch.dtype = torch.bfloat16, seed: int = 0) -> dict:
    """Two experts, VAE and scheduler of Wan 2.2 I2V A14B (no text encoder: embeddings are given)."""
    from diffusers import AutoencoderKLWan, UniPCMultistepScheduler, WanTransformer3DModel

    if size == "tiny":
        from producer import standin_models

        cfg, vae_cfg = standin_models.WAN_TRANSFORMER_CONFIG, standin_models.WAN_VAE_CONFIG
    else:
        cfg, vae_cfg = WAN_EXPERT, {}
    _seeded(seed)
    with _building(device, dtype):
        high = WanTransformer3DModel(**cfg)
        low = WanTransformer3DModel(**cfg)
        vae = AutoencoderKLWan(**vae_cfg)
    vae.to(torch.float32 if size == "tiny" else dtype)
    scheduler = UniPCMultistepScheduler(prediction_type="flow_prediction", use_flow_sigmas=True, flow_shift=5.0)
    return {"transformer": high.eval(), "transformer_2": low.eval(), "vae": vae.eval(), "scheduler": scheduler,
            "text_dim": cfg["text_dim"]}


def wan_prompt_embeds(size: str, device: str, dtype: torch.dtype, seed: int = 1) -> torch.Tensor:
    dim = 32 if size == "tiny" else WAN_TEXT_DIM
    gen = torch.Generator(device="cpu").manual_seed(seed)
    return torch.randn(1, WAN_TEXT_TOKENS, dim, generator=gen).to(device, dtype)


def qwen_components(size: str, device: str, dtype: torch.dtype = torch.bfloat16, seed: int = 0) -> dict:
    """Transformer, VAE and scheduler of Qwen-Image-Edit-2511 (no text encoder: embeddings are given)."""
    from diffusers import AutoencoderKLQwenImage, FlowMatchEulerDiscreteScheduler, QwenImageTransformer2DModel

    if size == "tiny":
        from producer import standin_models

        cfg, vae_cfg = standin_models.QWEN_EDIT_TRANSFORMER_CONFIG, standin_models.QWEN_VAE_CONFIG
        scheduler_cfg = standin_models.QWEN_SCHEDULER_CONFIG
    else:
        from producer import standin_models

        cfg, vae_cfg, scheduler_cfg = QWEN_TRANSFORMER, {}, standin_models.QWEN_SCHEDULER_CONFIG
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
        from producer import standin_models

        config = UMT5Config(**standin_models.UMT5_CONFIG)
    else:
        config = UMT5Config(**UMT5_XXL)
    with _building(device, dtype):
        return UMT5EncoderModel(config).eval()


def move_to_host(module: torch.nn.Module) -> torch.nn.Module:
    """Offloading configurations start with the weights in host RAM, as after a real load."""
    module.to("cpu")
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
    return module
