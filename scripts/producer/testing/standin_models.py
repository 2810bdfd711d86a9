"""The tiny stand-in models: the real diffusers / transformers classes with tiny widths.

Built from a seed in milliseconds, for the tests, `validate_diffusers.py --smoke` and the demo;
producer.testing.standins writes them into a Hugging Face cache under the real repo ids. Heavy libraries are
imported inside the builders.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
from collections.abc import Iterator
from typing import TYPE_CHECKING

from producer.modelfiles.models import STANDIN_MARKER, matching_files, standin_facts  # noqa: F401 - one reader of the marker

if TYPE_CHECKING:  # pragma: no cover - for annotations only; numpy is imported where it is used
    pass


# The Qwen edit pipeline resizes every reference to ~1024^2 pixels for the VAE and ~384^2 for the
# vision-language encoder (module constants VAE_IMAGE_SIZE / CONDITION_IMAGE_SIZE). With the tiny
# models that alone takes 20-40 s on a CPU; 64x64 and 32x32 references keep a run at ~0.1 s. The
# generation script applies these areas when it finds the marker.
QWEN_REFERENCE_AREA = 64 * 64
QWEN_CONDITION_AREA = 32 * 32

# ---------------------------------------------------------------- tiny configs
# The real structure (channel counts, norms, patch sizes, scheduler, token layout), tiny widths.
# Widths are multiples of 32 so GGUF Q8_0 / Q4_0 blocks fit; rows 256 wide (time embedding, the
# Wan FFN output) get real K-quant blocks.

WAN_TRANSFORMER_CONFIG = {
    "patch_size": (1, 2, 2),
    "num_attention_heads": 2,
    "attention_head_dim": 16,
    "in_channels": 36,  # 16 noise latents + 4 mask channels + 16 image latents (I2V)
    "out_channels": 16,
    "text_dim": 32,  # = the text encoder's d_model
    "freq_dim": 256,
    "ffn_dim": 256,
    "num_layers": 2,
    "cross_attn_norm": True,
    "qk_norm": "rms_norm_across_heads",
    "eps": 1e-6,
    "image_dim": None,  # Wan 2.2 I2V has no CLIP image encoder
    "added_kv_proj_dim": None,
    "rope_max_seq_len": 1024,
}
WAN_VAE_CONFIG = {
    "base_dim": 8,
    "z_dim": 16,
    "dim_mult": [1, 1, 1, 1],
    "num_res_blocks": 1,
    "temperal_downsample": [False, True, True],  # 4x temporal, 8x spatial like the real VAE
}
UMT5_CONFIG = {
    "d_model": 32,
    "d_kv": 8,
    "d_ff": 64,
    "num_layers": 2,
    "num_heads": 4,
    "relative_attention_num_buckets": 8,
    "relative_attention_max_distance": 16,
    "feed_forward_proj": "gated-gelu",
    "tie_word_embeddings": False,
    "pad_token_id": 0,
    "eos_token_id": 1,
    "decoder_start_token_id": 0,
}
WAN_BOUNDARY_RATIO = 0.9
# As the real repository ships it: flow_shift 3.0. The official I2V sampling uses 5, which the project sets
# itself (producer.engines.wan.wan.make_scheduler); tests/test_standins.py checks that the clip really samples at 5.
WAN_SCHEDULER_CONFIG = {"prediction_type": "flow_prediction", "use_flow_sigmas": True, "flow_shift": 3.0}

QWEN_TRANSFORMER_CONFIG = {
    "patch_size": 2,
    "in_channels": 64,  # 16 latent channels packed 2x2
    "out_channels": 16,
    "num_layers": 2,
    "attention_head_dim": 16,
    "num_attention_heads": 2,
    "joint_attention_dim": 32,  # = the text encoder's hidden size
    "guidance_embeds": False,
    "axes_dims_rope": (4, 6, 6),  # sums to attention_head_dim, like (16, 56, 56) sums to 128
}
QWEN_EDIT_TRANSFORMER_CONFIG = {**QWEN_TRANSFORMER_CONFIG, "zero_cond_t": True}  # 2511; 2509 has none
QWEN_CONTROLNET_CONFIG = {k: v for k, v in QWEN_TRANSFORMER_CONFIG.items() if k != "guidance_embeds"}
QWEN_CONTROLNET_CONFIG.update(num_layers=1, extra_condition_channels=0)  # fewer blocks than the base, as 5 vs 60
QWEN_VAE_CONFIG = {
    "base_dim": 8,
    "z_dim": 16,
    "dim_mult": [1, 1, 1, 1],
    "num_res_blocks": 1,
    "temperal_downsample": [False, True, True],
    "latents_mean": [0.0] * 16,
    "latents_std": [1.0] * 16,
}
QWEN_VL_TEXT_CONFIG = {
    "hidden_size": 32,
    "intermediate_size": 64,
    "num_hidden_layers": 2,
    "num_attention_heads": 2,
    "num_key_value_heads": 1,  # grouped-query attention like the real 28 / 4
    # mrope_section sums to half the head dim (16 / 2), as [16, 24, 24] does for 128
    "rope_parameters": {"rope_type": "default", "mrope_section": [2, 3, 3], "rope_theta": 1000000.0},
    "max_position_embeddings": 4096,
}
QWEN_VL_VISION_CONFIG = {
    "depth": 2,
    "hidden_size": 32,
    "intermediate_size": 64,
    "num_heads": 2,
    "out_hidden_size": 32,  # = the text hidden size
    "fullatt_block_indexes": [1],
}
QWEN_SCHEDULER_CONFIG = {  # the real Qwen-Image scheduler config
    "base_image_seq_len": 256,
    "base_shift": 0.5,
    "max_image_seq_len": 8192,
    "max_shift": 0.9,
    "num_train_timesteps": 1000,
    "shift": 1.0,
    "shift_terminal": 0.02,
    "time_shift_type": "exponential",
    "use_dynamic_shifting": True,
}
# Qwen2.5-VL's special tokens, in the order of the real ids 151643..151656.
QWEN_SPECIAL_TOKENS = (
    "<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|object_ref_start|>", "<|object_ref_end|>",
    "<|box_start|>", "<|box_end|>", "<|quad_start|>", "<|quad_end|>", "<|vision_start|>", "<|vision_end|>",
    "<|vision_pad|>", "<|image_pad|>", "<|video_pad|>",
)
# 256 byte symbols + 64 merges: words stay split into several tokens, so the prompt template's
# system part is longer than the 64 tokens the edit pipeline drops (34 for text-to-image).
QWEN_BPE_VOCAB_SIZE = 320
_TOKENIZER_CORPUS = (
    "a cat dancing on the moon", "the quick brown fox jumps over the lazy dog",
    "a woman walks through a forest at night", "describe the key features of the input image",
    "color shape size texture objects background", "keep the face and the clothes of the character",
    "a man turns his head and smiles", "slow camera pan over a city street in the rain",
)


# ---------------------------------------------------------------- seeding


def component_seed(seed: int, component: str) -> int:
    """Independent, stable seeds per component, so that e.g. the GGUF writer rebuilds the very experts
    that the diffusers repo holds without building anything else."""
    digest = hashlib.sha256(f"{seed}:{component}".encode()).hexdigest()
    return int(digest[:15], 16)


@contextlib.contextmanager
def _seeded(seed: int, component: str) -> Iterator[None]:
    """Model constructors draw from torch's global generator: seed it, and restore the caller's state."""
    import torch

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(component_seed(seed, component))
        yield


# ---------------------------------------------------------------- tokenizers


def build_t5_tokenizer():
    """A UMT5-style Unigram tokenizer built in memory: pad 0, eos 1, unk 2, then word pieces."""
    import string

    from transformers import T5TokenizerFast

    chars = string.ascii_letters + string.digits + string.punctuation
    pieces = [("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0), ("\u2581", -2.0)]
    pieces += [("\u2581" + c, -4.0) for c in chars]  # a character that starts a word
    pieces += [(c, -5.0) for c in chars]
    return T5TokenizerFast(vocab=pieces, extra_ids=0)


def build_qwen_tokenizer():
    """A byte-level BPE trained in-process, wrapped as the real class with Qwen2.5-VL's special tokens."""
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers
    from transformers import Qwen2Tokenizer

    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    trainer = trainers.BpeTrainer(vocab_size=QWEN_BPE_VOCAB_SIZE, show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    bpe.train_from_iterator(_TOKENIZER_CORPUS, trainer)
    model = json.loads(bpe.to_str())["model"]
    tokenizer = Qwen2Tokenizer(vocab=model["vocab"], merges=[tuple(m) for m in model["merges"]],
                               model_max_length=131072)
    tokenizer.add_special_tokens({"additional_special_tokens": list(QWEN_SPECIAL_TOKENS[1:])})
    return tokenizer


# ---------------------------------------------------------------- Wan 2.2 I2V


def build_wan_experts(seed: int = 0):
    """The high-noise (`transformer`) and low-noise (`transformer_2`) experts: one config, two seeds."""
    from diffusers import WanTransformer3DModel

    with _seeded(seed, "wan.transformer"):
        high = WanTransformer3DModel(**WAN_TRANSFORMER_CONFIG)
    with _seeded(seed, "wan.transformer_2"):
        low = WanTransformer3DModel(**WAN_TRANSFORMER_CONFIG)
    return high.eval(), low.eval()


def build_wan_pipeline(seed: int = 0):
    """Wan 2.2 I2V A14B in miniature: two experts, boundary 0.9, no image encoder."""
    from diffusers import AutoencoderKLWan, UniPCMultistepScheduler, WanImageToVideoPipeline
    from transformers import UMT5Config, UMT5EncoderModel

    tokenizer = build_t5_tokenizer()
    with _seeded(seed, "wan.text_encoder"):
        text_encoder = UMT5EncoderModel(UMT5Config(vocab_size=len(tokenizer), **UMT5_CONFIG))
    with _seeded(seed, "wan.vae"):
        vae = AutoencoderKLWan(**WAN_VAE_CONFIG)
    high, low = build_wan_experts(seed)
    return WanImageToVideoPipeline(
        tokenizer=tokenizer, text_encoder=text_encoder.eval(), vae=vae.eval(),
        scheduler=UniPCMultistepScheduler(**WAN_SCHEDULER_CONFIG), transformer=high, transformer_2=low,
        image_encoder=None, image_processor=None, boundary_ratio=WAN_BOUNDARY_RATIO,
    )


# ---------------------------------------------------------------- Qwen-Image


def build_qwen_text_encoder(tokenizer, seed: int = 0, component: str = "qwen.text_encoder"):
    """A tiny Qwen2.5-VL whose image/video/vision token ids are the tokenizer's ids."""
    from transformers import Qwen2_5_VLConfig, Qwen2_5_VLForConditionalGeneration

    ids = {token: tokenizer.convert_tokens_to_ids(token) for token in QWEN_SPECIAL_TOKENS}
    vocab_size = -(-len(tokenizer) // 64) * 64  # padded like the real 152064 > 151665 tokens
    text_config = {**QWEN_VL_TEXT_CONFIG, "vocab_size": vocab_size,
                   "bos_token_id": ids["<|endoftext|>"], "eos_token_id": ids["<|im_end|>"]}
    config = Qwen2_5_VLConfig(
        text_config=text_config, vision_config=dict(QWEN_VL_VISION_CONFIG),
        image_token_id=ids["<|image_pad|>"], video_token_id=ids["<|video_pad|>"],
        vision_start_token_id=ids["<|vision_start|>"], vision_end_token_id=ids["<|vision_end|>"],
    )
    with _seeded(seed, component):
        return Qwen2_5_VLForConditionalGeneration(config).eval()


def transformers4_text_encoder_config(config: dict) -> dict:
    """A Qwen2.5-VL config.json as transformers 5 writes it, in the transformers-4 layout the real
    Qwen-Image(-Edit-2511) `text_encoder/config.json` has: the text settings at the top level and again
    in `text_config`, `rope_scaling` {mrope_section, rope_type, type} beside `rope_theta` (transformers 5:
    `rope_parameters`), `torch_dtype` (5: `dtype`), no rope settings in the vision config. transformers 5
    reads it through its legacy path (the tests check the loaded model computes the same)."""
    text = dict(config["text_config"])
    rope = text.pop("rope_parameters")
    text.pop("layer_types", None)  # derived from the layer count; 4.x files do not list it
    text.update(rope_scaling={"mrope_section": list(rope["mrope_section"]), "rope_type": "default", "type": "default"},
                rope_theta=rope["rope_theta"], torch_dtype=config.get("dtype"))
    vision = {k: v for k, v in config["vision_config"].items() if k != "rope_parameters"}
    top = {k: v for k, v in config.items() if k not in ("text_config", "vision_config", "dtype")}
    return {**{k: v for k, v in text.items() if k != "model_type"}, **top, "text_config": text,
            "vision_config": vision}


def build_qwen_processor(tokenizer):
    """Image processor + tokenizer (+ the video processor transformers 5 requires, which needs torchvision)."""
    from transformers import Qwen2VLImageProcessor, Qwen2VLProcessor
    from transformers.models.qwen2_vl.video_processing_qwen2_vl import Qwen2VLVideoProcessor

    return Qwen2VLProcessor(image_processor=Qwen2VLImageProcessor(), tokenizer=tokenizer,
                            video_processor=Qwen2VLVideoProcessor())


def build_qwen_edit_transformer(seed: int = 0):
    from diffusers import QwenImageTransformer2DModel

    with _seeded(seed, "qwen_edit.transformer"):
        return QwenImageTransformer2DModel(**QWEN_EDIT_TRANSFORMER_CONFIG).eval()


def _qwen_vae_and_scheduler(seed: int, family: str):
    from diffusers import AutoencoderKLQwenImage, FlowMatchEulerDiscreteScheduler

    with _seeded(seed, f"{family}.vae"):
        vae = AutoencoderKLQwenImage(**QWEN_VAE_CONFIG).eval()
    return vae, FlowMatchEulerDiscreteScheduler(**QWEN_SCHEDULER_CONFIG)


def build_qwen_edit_pipeline(seed: int = 0):
    """Qwen-Image-Edit-2511 in miniature (QwenImageEditPlusPipeline, zero_cond_t transformer, processor).

    Run it with the pipeline module's VAE_IMAGE_SIZE / CONDITION_IMAGE_SIZE set to
    QWEN_REFERENCE_AREA / QWEN_CONDITION_AREA, or each reference costs seconds (see the marker)."""
    from diffusers import QwenImageEditPlusPipeline

    tokenizer = build_qwen_tokenizer()
    vae, scheduler = _qwen_vae_and_scheduler(seed, "qwen_edit")
    return QwenImageEditPlusPipeline(
        scheduler=scheduler, vae=vae, text_encoder=build_qwen_text_encoder(tokenizer, seed),
        tokenizer=tokenizer, processor=build_qwen_processor(tokenizer), transformer=build_qwen_edit_transformer(seed),
    )


def build_qwen_t2i_pipeline(seed: int = 0):
    """Qwen/Qwen-Image (text-to-image) in miniature: the base the ControlNet Union loads onto."""
    from diffusers import QwenImagePipeline, QwenImageTransformer2DModel

    tokenizer = build_qwen_tokenizer()
    vae, scheduler = _qwen_vae_and_scheduler(seed, "qwen_t2i")
    with _seeded(seed, "qwen_t2i.transformer"):
        transformer = QwenImageTransformer2DModel(**QWEN_TRANSFORMER_CONFIG).eval()
    return QwenImagePipeline(
        scheduler=scheduler, vae=vae, tokenizer=tokenizer, transformer=transformer,
        text_encoder=build_qwen_text_encoder(tokenizer, seed, component="qwen_t2i.text_encoder"),
    )


def build_qwen_controlnet(seed: int = 0):
    """InstantX's Qwen-Image ControlNet Union in miniature.

    The real class zero-initialises its output projections (a fresh ControlNet changes nothing);
    a trained one does not, so they get small random weights here: a test can see the control act."""
    import torch
    from diffusers import QwenImageControlNetModel

    with _seeded(seed, "qwen.controlnet"):
        controlnet = QwenImageControlNetModel(**QWEN_CONTROLNET_CONFIG)
        zero_initialised = [*controlnet.controlnet_blocks, controlnet.controlnet_x_embedder]
        with torch.no_grad():
            for layer in zero_initialised:
                layer.weight.normal_(0.0, 0.02)
                layer.bias.normal_(0.0, 0.02)
    return controlnet.eval()


# ---------------------------------------------------------------- the identity embedder

# facebook/dinov2-small's structure (patch 14, layer scale, CLS + patch tokens) at width 32, over 112x112 pictures.
# Random weights at transformers' default init (std 0.02) give every picture nearly the same CLS embedding
# (cosine 0.85-0.9 between unrelated pictures). This config and seed were chosen (a sweep of init std, width,
# depth and side) so that the synthetic pictures of tests/test_drift.py separate as a trained model's would:
# the same figure elsewhere measures >= 0.48 against its asset, another figure <= 0.05. A property of this
# seed, not of random ViTs: tests/test_drift.py checks it.
DINOV2_CONFIG = {"hidden_size": 32, "num_hidden_layers": 4, "num_attention_heads": 2, "intermediate_size": 64,
                 "image_size": 112, "patch_size": 14, "initializer_range": 0.5, "layerscale_value": 1.0}
DINOV2_SIDE = 112


def build_dinov2(seed: int = 0):
    """(Dinov2Model, BitImageProcessor): the real classes facebook/dinov2-small loads with, tiny."""
    from transformers import BitImageProcessor, Dinov2Config, Dinov2Model

    with _seeded(seed, "dinov2"):
        model = Dinov2Model(Dinov2Config(**DINOV2_CONFIG))
    processor = BitImageProcessor(size={"shortest_edge": DINOV2_SIDE},
                                  crop_size={"height": DINOV2_SIDE, "width": DINOV2_SIDE},
                                  image_mean=[0.485, 0.456, 0.406], image_std=[0.229, 0.224, 0.225])
    return model.eval(), processor
