"""Tiny random stand-ins for every model the skill uses, built with the real classes.

No weights can be downloaded where the project is built and tested, so the tests and
`validate_diffusers.py --smoke` run the scripts' real code on tiny models instead: the same
diffusers / transformers classes and the same folder layouts as the real repositories, only with
a few thousand random parameters. `install_standins()` writes them into a Hugging Face cache under
the registry's real repo ids and revisions, so that with `HF_HUB_OFFLINE=1` and `HF_HOME=<dir>`
e.g. `WanImageToVideoPipeline.from_pretrained("Wan-AI/Wan2.2-I2V-A14B-Diffusers")` resolves
unchanged. GGUF expert files are written in the ComfyUI-GGUF format (original key names).

Every stand-in snapshot carries `producer_standin.json` (see `standin_facts`): facts in which the
tiny models differ from the real ones, e.g. the reference-image areas that keep a Qwen edit run fast.
Nothing here is ever committed as weights: everything is built from a seed in a second or two.

Heavy libraries (torch, diffusers, transformers, gguf) are imported inside the functions that need
them, so `standin_facts` costs nothing to import.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import os
import re
import shutil
import sys
import tempfile
from collections.abc import Callable, Iterable, Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from . import registry
from .models import STANDIN_MARKER, matching_files, standin_facts  # noqa: F401 - one reader of the marker

if TYPE_CHECKING:  # pragma: no cover - for annotations only; numpy is imported where it is used
    import numpy as np

MARKER_NAME = STANDIN_MARKER
MARKER_FORMAT = 1

# The Qwen edit pipeline resizes every reference to ~1024^2 pixels for the VAE and ~384^2 for the
# vision-language encoder (module constants VAE_IMAGE_SIZE / CONDITION_IMAGE_SIZE). With the tiny
# models that alone takes 20-40 s on a CPU; 64x64 and 32x32 references keep a run at ~0.1 s. The
# generation script applies these areas when it finds the marker.
QWEN_REFERENCE_AREA = 64 * 64
QWEN_CONDITION_AREA = 32 * 32

# LoRA stand-ins are written by producer.standin_loras (see _lora_writers).
LORA_KINDS = frozenset({"lora"})
# Built only on request: the real OpenPose networks hold ~127 M parameters (see write_openpose_annotators).
ON_REQUEST_KINDS = frozenset({"annotator"})

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
WAN_SCHEDULER_CONFIG = {"prediction_type": "flow_prediction", "use_flow_sigmas": True, "flow_shift": 5.0}

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


def _component_seed(seed: int, component: str) -> int:
    """Independent, stable seeds per component, so that e.g. the GGUF writer rebuilds the very experts
    that the diffusers repo holds without building anything else."""
    digest = hashlib.sha256(f"{seed}:{component}".encode()).hexdigest()
    return int(digest[:15], 16)


@contextlib.contextmanager
def _seeded(seed: int, component: str) -> Iterator[None]:
    """Model constructors draw from torch's global generator: seed it, and restore the caller's state."""
    import torch

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(_component_seed(seed, component))
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


# ---------------------------------------------------------------- GGUF (ComfyUI-GGUF format)

# diffusers' Wan single-file conversion (convert_wan_transformer_to_diffusers) renames original keys
# with plain substring replacements; these are its inverse for the Wan 2.2 I2V A14B keys, applied in
# order. diffusers' norm2 (cross-attention norm) is the original norm3 (the conversion swaps them).
_WAN_DIFFUSERS_TO_ORIGINAL = (
    ("condition_embedder.time_embedder.linear_1", "time_embedding.0"),
    ("condition_embedder.time_embedder.linear_2", "time_embedding.2"),
    ("condition_embedder.text_embedder.linear_1", "text_embedding.0"),
    ("condition_embedder.text_embedder.linear_2", "text_embedding.2"),
    ("condition_embedder.time_proj", "time_projection.1"),
    (".attn1.", ".self_attn."),
    (".attn2.", ".cross_attn."),
    (".to_out.0.", ".o."),
    (".to_q.", ".q."),
    (".to_k.", ".k."),
    (".to_v.", ".v."),
    (".ffn.net.0.proj.", ".ffn.0."),
    (".ffn.net.2.", ".ffn.2."),
    (".norm2.", ".norm3."),
)


def wan_key_to_original(key: str) -> str:
    """`blocks.0.attn1.to_q.weight` -> `blocks.0.self_attn.q.weight`, `proj_out.weight` -> `head.head.weight`."""
    if key == "scale_shift_table":
        return "head.modulation"
    if key.startswith("proj_out."):
        return "head.head." + key[len("proj_out."):]
    if key.endswith(".scale_shift_table"):
        return key[: -len("scale_shift_table")] + "modulation"
    for diffusers_part, original_part in _WAN_DIFFUSERS_TO_ORIGINAL:
        key = key.replace(diffusers_part, original_part)
    return key


def wan_state_dict_to_original(state_dict: dict) -> dict:
    return {wan_key_to_original(key): value for key, value in state_dict.items()}


# Per-file quant schemes: the K-quant a real file uses where a tensor's rows allow it (256-wide
# blocks), and the stand-in's substitute for the narrow tiny rows. Real Q4_K_M files are Q4_K (and
# Q6_K) throughout because every real row is a multiple of 256; ours mix Q4_K and Q4_0.
_SCHEMES = {
    "Q4_K_M": ("Q4_K", "Q4_0", "MOSTLY_Q4_K_M"),
    "Q8_0": (None, "Q8_0", "MOSTLY_Q8_0"),
}
_KEEP_F32 = (".modulation", "scale_shift_table")  # nn.Parameters that ComfyUI-GGUF keeps in full precision
QK_K = 256


def gguf_scheme_of(filename: str) -> str:
    """The quant scheme named in a registry file name, e.g. `...-Q4_K_M.gguf` -> `Q4_K_M`."""
    match = re.search(r"(Q4_K_M|Q8_0)\.gguf$", filename, flags=re.IGNORECASE)
    if not match:
        raise ValueError(f"no stand-in GGUF scheme for {filename}; known: {', '.join(_SCHEMES)}")
    return match.group(1).upper()


def gguf_tensor_type(name: str, shape: Sequence[int], scheme: str):
    """The GGML type a tensor gets, following ComfyUI-GGUF's convert.py + llama-quantize rules:
    1-D tensors, parameters that are not `.weight`, `modulation` tables and >4-D tensors (the 5-D
    patch embedding, added back in F32 by fix_5d_tensors.py) stay F32; weights whose rows do not
    fit the quant's block size fall back to F16."""
    from gguf import GGMLQuantizationType as T

    if len(shape) < 2 or len(shape) > 4 or not name.endswith(".weight") or any(k in name for k in _KEEP_F32):
        return T.F32
    k_quant, small_quant, _ = _SCHEMES[scheme]
    row = shape[-1]
    if k_quant and row % QK_K == 0:
        return T[k_quant]
    if row % 32 == 0:
        return T[small_quant]
    return T.F16


def _f16_at_least(values: np.ndarray) -> np.ndarray:
    """float16 values no smaller than `values` (a scale rounded down would clip the block's range)."""
    import numpy as np

    half = values.astype(np.float16)
    return np.where(half.astype(np.float32) < values, np.nextafter(half, np.float16(np.inf)), half)


def quantize_q4_k(weights: np.ndarray) -> np.ndarray:
    """Pack float rows (width a multiple of 256) as GGML Q4_K blocks; the gguf package cannot.

    A block of 256 values is 8 sub-blocks of 32, each `x = d*sc_j*q - dmin*m_j` with 4-bit q and
    6-bit sc_j, m_j; 144 bytes: d, dmin (float16), 12 bytes of packed scales/mins, 128 bytes of q.
    The scales are rounded up so every value is covered: the error stays within half a step."""
    import numpy as np

    rows = np.asarray(weights, dtype=np.float32)
    if rows.shape[-1] % QK_K:
        raise ValueError(f"Q4_K needs rows a multiple of {QK_K} wide, not {rows.shape[-1]}")
    x = rows.reshape(-1, 8, 32)
    offset = -np.minimum(x.min(axis=2), 0.0)  # how far each sub-block reaches below zero (>= 0)
    dmin = _f16_at_least(offset.max(axis=1) / 63.0)
    dmin32 = dmin.astype(np.float32)[:, None]
    m = np.clip(np.ceil(np.divide(offset, dmin32, out=np.zeros_like(offset), where=dmin32 > 0)), 0, 63)
    shift = dmin32 * m
    step_needed = (x.max(axis=2) + shift) / 15.0
    d = _f16_at_least(step_needed.max(axis=1) / 63.0)
    d32 = d.astype(np.float32)[:, None]
    sc = np.clip(np.ceil(np.divide(step_needed, d32, out=np.zeros_like(step_needed), where=d32 > 0)), 0, 63)
    step = (d32 * sc)[..., None]
    q = np.divide(x + shift[..., None], step, out=np.zeros_like(x), where=step > 0)
    q = np.clip(np.rint(q), 0, 15).astype(np.uint8)
    blocks = np.concatenate([d.view(np.uint8).reshape(-1, 2), dmin.view(np.uint8).reshape(-1, 2),
                             _pack_q4_k_scales(sc.astype(np.uint8), m.astype(np.uint8)),
                             (q[:, 0::2] | (q[:, 1::2] << 4)).reshape(-1, 128)], axis=1)
    return blocks.reshape(*rows.shape[:-1], rows.shape[-1] // QK_K * 144)


def _pack_q4_k_scales(sc: np.ndarray, m: np.ndarray) -> np.ndarray:
    """12 bytes per block: 6-bit scales/mins 0-3 in the low bits of bytes 0-7, 4-7 split over the
    high bits of bytes 0-7 and the nibbles of bytes 8-11 (ggml's get_scale_min_k4 layout)."""
    import numpy as np

    low = np.concatenate([(sc[:, :4] & 63) | ((sc[:, 4:] >> 4) << 6),
                          (m[:, :4] & 63) | ((m[:, 4:] >> 4) << 6)], axis=1)
    high = (sc[:, 4:] & 15) | ((m[:, 4:] & 15) << 4)
    return np.concatenate([low, high], axis=1).astype(np.uint8)


def _gguf_data(array: np.ndarray, qtype) -> np.ndarray:
    from gguf import GGMLQuantizationType as T
    from gguf import quants

    if qtype == T.Q4_K:
        return quantize_q4_k(array)
    return quants.quantize(array, qtype)


def write_gguf(path: Path, tensors: dict, arch: str, scheme: str) -> dict[str, str]:
    """Write `tensors` (name -> torch tensor) as a ComfyUI-GGUF file; returns name -> GGML type name.

    Metadata as ComfyUI-GGUF writes it: general.architecture (`wan`, `qwen_image`),
    general.quantization_version and general.file_type. diffusers' loader reads only the tensors."""
    import gguf
    import numpy as np

    writer = gguf.GGUFWriter(path=None, arch=arch)
    writer.add_quantization_version(gguf.GGML_QUANT_VERSION)
    writer.add_file_type(gguf.LlamaFileType[_SCHEMES[scheme][2]])
    types = {}
    for name, tensor in tensors.items():
        array = tensor.detach().to("cpu").float().numpy().astype(np.float32)
        qtype = gguf_tensor_type(name, array.shape, scheme)
        writer.add_tensor(name, _gguf_data(array, qtype), raw_dtype=qtype)
        types[name] = qtype.name
    path.parent.mkdir(parents=True, exist_ok=True)
    writer.write_header_to_file(path=path)
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return types


# ---------------------------------------------------------------- OpenPose annotators


def write_openpose_annotators(folder: Path, seed: int = 0) -> None:
    """Random weights with the real architectures of controlnet_aux's body, hand and face networks.

    They are big (52 M + 37 M + 38 M parameters): built on the meta device for the shapes, drawn in
    float16 (~255 MB instead of the real files' ~510 MB of float32; load_state_dict casts). Saved as
    plain tensor dicts with torch.save, which torch.load(weights_only=True) reads. Body and hand
    files use the real files' key names: controlnet_aux's `transfer` drops the module's first name."""
    import torch
    from controlnet_aux.open_pose.face import FaceNet
    from controlnet_aux.open_pose.model import bodypose_model, handpose_model

    for filename, model_class, strip_first_name in (("body_pose_model.pth", bodypose_model, True),
                                                    ("hand_pose_model.pth", handpose_model, True),
                                                    ("facenet.pth", FaceNet, False)):
        with torch.device("meta"):
            shapes = {name: tensor.shape for name, tensor in model_class().state_dict().items()}
        generator = torch.Generator().manual_seed(_component_seed(seed, filename))
        state = {}
        for name, shape in shapes.items():
            key = name.split(".", 1)[1] if strip_first_name else name
            fan_in = max(1, shape[1:].numel()) if len(shape) > 1 else 1
            std = (2.0 / fan_in) ** 0.5 if len(shape) > 1 else 0.01  # He init keeps deep VGG stacks finite
            state[key] = (torch.randn(shape, generator=generator) * std).to(torch.float16)
        torch.save(state, folder / filename)


# ---------------------------------------------------------------- repo writers
# A writer fills a folder with a repository's files for the given registry entries (entries that
# share a repo and a writer are handled in one call). The installer keeps only the files each
# entry's patterns select.

Writer = Callable[[Path, Sequence[registry.ModelEntry], int], None]


def _write_wan_repo(folder: Path, entries: Sequence[registry.ModelEntry], seed: int) -> None:
    build_wan_pipeline(seed).save_pretrained(folder)


def _write_qwen_edit_repo(folder: Path, entries: Sequence[registry.ModelEntry], seed: int) -> None:
    build_qwen_edit_pipeline(seed).save_pretrained(folder)


def _write_qwen_t2i_repo(folder: Path, entries: Sequence[registry.ModelEntry], seed: int) -> None:
    build_qwen_t2i_pipeline(seed).save_pretrained(folder)


def _write_qwen_controlnet_repo(folder: Path, entries: Sequence[registry.ModelEntry], seed: int) -> None:
    build_qwen_controlnet(seed).save_pretrained(folder)


def _write_wan_gguf(folder: Path, entries: Sequence[registry.ModelEntry], seed: int) -> None:
    experts = dict(zip(("transformer", "transformer_2"), build_wan_experts(seed)))
    for entry in entries:
        for role, relpath in entry.roles.items():
            write_gguf(folder / relpath, wan_state_dict_to_original(experts[role].state_dict()), "wan",
                       gguf_scheme_of(relpath))


def _write_qwen_gguf(folder: Path, entries: Sequence[registry.ModelEntry], seed: int) -> None:
    # ComfyUI's Qwen-Image keys are diffusers' own: diffusers maps them 1:1 (identity conversion).
    state_dict = build_qwen_edit_transformer(seed).state_dict()
    for entry in entries:
        relpath = entry.roles["transformer"]
        write_gguf(folder / relpath, state_dict, "qwen_image", gguf_scheme_of(relpath))


def _write_annotators(folder: Path, entries: Sequence[registry.ModelEntry], seed: int) -> None:
    write_openpose_annotators(folder, seed)


_WRITERS: dict[str, Writer] = {
    "wan-i2v": _write_wan_repo,
    "wan-i2v-components": _write_wan_repo,
    "wan-i2v-gguf-q4": _write_wan_gguf,
    "wan-i2v-gguf-q8": _write_wan_gguf,
    "qwen-edit": _write_qwen_edit_repo,
    "qwen-edit-components": _write_qwen_edit_repo,
    "qwen-edit-gguf-q4": _write_qwen_gguf,
    "qwen-edit-gguf-q8": _write_qwen_gguf,
    "qwen-image-t2i": _write_qwen_t2i_repo,
    "qwen-controlnet-union": _write_qwen_controlnet_repo,
    "openpose-annotators": _write_annotators,
}


def _lora_writers() -> dict[str, Writer]:
    """The one place where LoRA stand-ins join the installer: a writer per LoRA entry
    (`wan-lightning`, `wan21-lightx2v`, `qwen-lightning`, `qwen-anypose`). Imported here because
    standin_loras imports this module."""
    from . import standin_loras

    return standin_loras.lora_writers()


def writers() -> dict[str, Writer]:
    """Registry entry name -> the writer of its stand-in files."""
    return {**_WRITERS, **_lora_writers()}


# ---------------------------------------------------------------- the Hugging Face cache


def standin_revision(entry: registry.ModelEntry) -> str:
    """The snapshot hash: the registry's commit when pinned, else a stable fake one per repo
    (entries that share a repo and a branch share the snapshot)."""
    if entry.pinned:
        return entry.revision
    return hashlib.sha1(f"producer-standin:{entry.repo_id}@{entry.revision}".encode()).hexdigest()


def repo_cache_dir(hub_cache: Path, repo_id: str) -> Path:
    return Path(hub_cache) / ("models--" + repo_id.replace("/", "--"))


def default_entry_names(with_annotators: bool = False) -> list[str]:
    """Every entry that has a stand-in writer, without the on-request ones unless asked."""
    available = writers()
    return [e.name for e in registry.entries()
            if e.name in available and (with_annotators or e.kind not in ON_REQUEST_KINDS)]


def _resolve_entries(names: Iterable[str] | None, with_annotators: bool) -> list[registry.ModelEntry]:
    chosen = default_entry_names(with_annotators) if names is None else list(dict.fromkeys(names))
    available = writers()
    entries = [registry.get(name) for name in chosen]
    missing = [e.name for e in entries if e.name not in available]
    if missing:
        raise ValueError(f"no stand-in for {', '.join(missing)} (yet); stand-ins exist for "
                         f"{', '.join(sorted(available))}")
    return entries


def install_standins(hf_home: str | os.PathLike, names: Iterable[str] | None = None, seed: int = 0,
                     with_annotators: bool = False) -> dict[str, dict]:
    """Build the stand-ins and install them into `hf_home`/hub under the registry's repo ids.

    names: registry entry names; None means every entry with a stand-in except the on-request ones
    (the OpenPose annotators, added by `with_annotators=True` or by naming them).
    Returns a manifest per entry name: name, repo_id, revision (the snapshot hash),
    requested_revision (the registry's), snapshot (path), files (path in the repo -> bytes, exactly
    the files the entry's patterns select), total_bytes, marker (the stand-in marker's path in the repo).

    Each repository is written into a staging folder and swapped in whole, so a crashed install
    leaves either the previous snapshot or none, never a half-written one. A snapshot that is not a
    stand-in (no marker: real downloaded weights) is never touched."""
    hf_home = Path(hf_home)
    groups: dict[tuple[str, str], list[registry.ModelEntry]] = {}
    for entry in _resolve_entries(names, with_annotators):
        groups.setdefault((entry.repo_id, standin_revision(entry)), []).append(entry)
    manifest = {}
    for (repo_id, revision), entries in groups.items():
        snapshot = _install_repo(hf_home, repo_id, revision, entries, seed)
        for entry in entries:
            manifest[entry.name] = _entry_manifest(entry, revision, snapshot)
    return manifest


def _install_repo(hf_home: Path, repo_id: str, revision: str, entries: list[registry.ModelEntry],
                  seed: int) -> Path:
    repo_dir = repo_cache_dir(hf_home / "hub", repo_id)
    snapshot = repo_dir / "snapshots" / revision
    if snapshot.exists() and standin_facts(snapshot) is None:
        raise FileExistsError(f"{snapshot} holds a real download (no {MARKER_NAME}); refusing to overwrite it "
                              "with stand-ins: use an empty HF_HOME")
    staging_root = hf_home / ".standin-staging"  # outside hub/, where cache scanners look
    staging_root.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=repo_dir.name + "-", dir=staging_root))
    try:
        built, fresh = work / "built", work / "snapshot"
        built.mkdir()
        fresh.mkdir()
        _run_writers(built, entries, seed)
        for relpath in _select_files(built, entries):
            target = fresh / relpath
            target.parent.mkdir(parents=True, exist_ok=True)
            os.replace(built / relpath, target)
        _keep_previous_files(snapshot, fresh)
        _write_json(fresh / MARKER_NAME, _marker(repo_id, revision, seed))
        _swap_in(fresh, snapshot, work / "previous")
        _write_text_atomic(repo_dir / "refs" / "main", revision)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return snapshot


def _run_writers(folder: Path, entries: list[registry.ModelEntry], seed: int) -> None:
    by_writer: dict[Writer, list[registry.ModelEntry]] = {}
    available = writers()
    for entry in entries:
        by_writer.setdefault(available[entry.name], []).append(entry)
    for writer, its_entries in by_writer.items():
        writer(folder, its_entries, seed)


def _repo_files(folder: Path) -> list[str]:
    return sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file())


def _matching(files: Iterable[str], patterns: Sequence[str]) -> list[str]:
    return matching_files(list(files), patterns)


def _select_files(built: Path, entries: list[registry.ModelEntry]) -> list[str]:
    """The union of what the entries' patterns select; every literal file name must be there."""
    files = [f for f in _repo_files(built) if f != MARKER_NAME]
    selected: set[str] = set()
    for entry in entries:
        matched = _matching(files, entry.files)
        literal_missing = [p for p in entry.files if not any(c in p for c in "*?[") and p not in files]
        if not matched or literal_missing:
            raise RuntimeError(f"stand-in for {entry.name} lacks {literal_missing or entry.files}")
        selected.update(matched)
    return sorted(selected)


def _keep_previous_files(snapshot: Path, fresh: Path) -> None:
    """Files of entries installed earlier into the same snapshot stay (e.g. the full Wan repo after
    its components); files written now replace their old versions."""
    if not snapshot.is_dir():
        return
    for relpath in _repo_files(snapshot):
        target = fresh / relpath
        if not target.exists():
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(snapshot / relpath, target)


def _swap_in(fresh: Path, snapshot: Path, previous: Path) -> None:
    """Two renames: between them the snapshot is absent (a crash there reads as 'not installed')."""
    snapshot.parent.mkdir(parents=True, exist_ok=True)
    if snapshot.exists():
        os.replace(snapshot, previous)
    os.replace(fresh, snapshot)


def _marker(repo_id: str, revision: str, seed: int) -> dict:
    return {
        "standin": True,
        "format": MARKER_FORMAT,
        "repo_id": repo_id,
        "revision": revision,
        "seed": seed,
        "qwen_reference_area": QWEN_REFERENCE_AREA,
        "qwen_condition_area": QWEN_CONDITION_AREA,
    }


def _write_text_atomic(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def _write_json(path: Path, obj: dict) -> None:
    path.write_text(json.dumps(obj, indent=2, sort_keys=True) + "\n")


def _entry_manifest(entry: registry.ModelEntry, revision: str, snapshot: Path) -> dict:
    files = {relpath: (snapshot / relpath).stat().st_size
             for relpath in _matching([f for f in _repo_files(snapshot) if f != MARKER_NAME], entry.files)}
    return {
        "name": entry.name,
        "repo_id": entry.repo_id,
        "revision": revision,
        "requested_revision": entry.revision,
        "snapshot": str(snapshot),
        "files": files,
        "total_bytes": sum(files.values()),
        "marker": MARKER_NAME,
    }


# ---------------------------------------------------------------- command line


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m producer.standins",
        description="Install tiny random stand-ins of the registry's models into a Hugging Face cache "
                    "(for tests and smoke runs; never into the cache that holds real weights).")
    parser.add_argument("--hf-home", required=True, help="the HF_HOME folder to install into (hub/ inside it)")
    parser.add_argument("--only", nargs="+", metavar="NAME", choices=sorted(writers()),
                        help="registry entries to install (default: all but the on-request ones)")
    parser.add_argument("--with-annotators", action="store_true",
                        help="also write the OpenPose annotator weights (~255 MB, real architectures)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    manifest = install_standins(args.hf_home, args.only, seed=args.seed, with_annotators=args.with_annotators)
    print(json.dumps(manifest, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
