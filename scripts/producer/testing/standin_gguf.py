"""GGUF files in the ComfyUI-GGUF format (original Wan key names), written from tiny stand-in weights.

Tensor types follow the published files (city96/ComfyUI-GGUF `tools/convert.py` + `tools/lcpp.patch`, from
which QuantStack's Wan files come; model-files.md "Real GGUF type maps"): embeddings, `time_projection`,
`head` and `patch_embedding` stay F16; biases, norms, `modulation` and the 5-D patch embedding F32; in
Q4_K_M files `*.v.weight` and `*.ffn.2.weight` are Q6_K, the other block linears Q4_K; Q8_0 files have
the same exclusions with Q8_0 block linears. Qwen-Image keys get the same rules under their names
(`img_in`, `txt_in`, `time_text_embed`, `norm_out`, `proj_out` F16; `to_v`/`add_v_proj` and the MLPs'
`net.2` Q6_K in Q4_K_M); for the Qwen file this mapping is inferred from the Wan rules, not read from one.
Rows narrower than a K-quant's 256-value block take llama-quantize's fallback (Q4_K -> Q5_0, Q6_K ->
Q8_0): real rows always fit, the stand-ins' 32-wide rows mostly do not.

The gguf package writes Q8_0, Q5_0, F16 and F32 but no K-quants, so Q4_K and Q6_K blocks are packed here
by hand (checked against the gguf package's own decoder in the tests).

`QWEN_TIMESTEP_MARKER` is the marker tensor Comfy-Org's 2511 repacks carry (`__index_timestep_zero__`);
`write_gguf(..., extra=...)` adds it to the stand-in Qwen file, so the weight check and loading meet it.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from producer.modelfiles.models import STANDIN_MARKER, matching_files, standin_facts  # noqa: F401 - one reader of the marker

if TYPE_CHECKING:  # pragma: no cover - for annotations only; numpy is imported where it is used
    import numpy as np


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


# Per-file schemes: (block linears, the Q6_K set, file type). The Q6_K set is `*.v.weight` and
# `*.ffn.2.weight` (Wan) and their Qwen-Image counterparts.
_SCHEMES = {
    "Q4_K_M": ("Q4_K", "Q6_K", "MOSTLY_Q4_K_M"),
    "Q8_0": ("Q8_0", "Q8_0", "MOSTLY_Q8_0"),
}
# llama-quantize's fallback when a row is not a whole number of 256-value K-quant blocks.
_K_FALLBACK = {"Q4_K": "Q5_0", "Q6_K": "Q8_0"}
_KEEP_F32 = (".modulation", "scale_shift_table")  # ComfyUI-GGUF keeps these in full precision (norms are 1-D)
# Non-block weights kept in F16 (convert.py's exclusions), Wan names and Qwen-Image names.
_KEEP_F16 = re.compile(r"^(text_embedding|time_embedding|time_projection|head|img_emb|patch_embedding|"
                       r"img_in|txt_in|time_text_embed|norm_out|proj_out)\.")
_HIGH_PRECISION = re.compile(r"(\.v|\.ffn\.2|\.attn\.to_v|\.attn\.add_v_proj|_mlp\.net\.2)\.weight$")
QWEN_TIMESTEP_MARKER = "__index_timestep_zero__"
QK_K = 256


def gguf_scheme_of(filename: str) -> str:
    """The quant scheme named in a registry file name, e.g. `...-Q4_K_M.gguf` -> `Q4_K_M`."""
    match = re.search(r"(Q4_K_M|Q8_0)\.gguf$", filename, flags=re.IGNORECASE)
    if not match:
        raise ValueError(f"no stand-in GGUF scheme for {filename}; known: {', '.join(_SCHEMES)}")
    return match.group(1).upper()


def gguf_tensor_type(name: str, shape: Sequence[int], scheme: str):
    """The GGML type a tensor gets in a published file (see the module docstring): 1-D tensors, anything
    that is not a `.weight`, norms, `modulation` tables and >4-D tensors (the 5-D patch embedding, added
    back in F32 by fix_5d_tensors.py) F32; embeddings, head, patch embedding F16; block linears by scheme,
    narrow rows by llama-quantize's fallback (F16 where even that does not fit)."""
    from gguf import GGMLQuantizationType as T

    if len(shape) < 2 or len(shape) > 4 or not name.endswith(".weight") or any(k in name for k in _KEEP_F32):
        return T.F32
    if _KEEP_F16.match(name):
        return T.F16
    linear, high, _ = _SCHEMES[scheme]
    wanted = high if _HIGH_PRECISION.search(name) else linear
    row = shape[-1]
    if wanted in _K_FALLBACK and row % QK_K:
        wanted = _K_FALLBACK[wanted]
    return T[wanted] if row % 32 == 0 else T.F16


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


def quantize_q6_k(weights: np.ndarray) -> np.ndarray:
    """Pack float rows (width a multiple of 256) as GGML Q6_K blocks; the gguf package cannot.

    A block of 256 values is 16 sub-blocks of 16, each `x = d * sc_j * (q - 32)` with 6-bit q and
    int8 sc_j; 210 bytes: ql (128 bytes, low 4 bits), qh (64 bytes, high 2 bits), the 16 scales, d
    (float16), in ggml's dequantize_row_q6_K order. Scales are rounded up so no value is clipped."""
    import numpy as np

    rows = np.asarray(weights, dtype=np.float32)
    if rows.shape[-1] % QK_K:
        raise ValueError(f"Q6_K needs rows a multiple of {QK_K} wide, not {rows.shape[-1]}")
    x = rows.reshape(-1, 16, 16)
    step_needed = np.abs(x).max(axis=2) / 31.0  # q - 32 in -31..31 covers every value
    d = _f16_at_least(step_needed.max(axis=1) / 127.0)
    d32 = d.astype(np.float32)[:, None]
    sc = np.clip(np.ceil(np.divide(step_needed, d32, out=np.zeros_like(step_needed), where=d32 > 0)), 0, 127)
    step = (d32 * sc)[..., None]
    q = np.divide(x, step, out=np.zeros_like(x), where=step > 0)
    q = (np.clip(np.rint(q), -32, 31) + 32).astype(np.uint8).reshape(-1, 2, 128)  # two halves of 128
    ql = (q[:, :, :64] & 15) | ((q[:, :, 64:] & 15) << 4)  # byte j: values j and j + 64 of the half
    hi = q >> 4
    qh = hi[:, :, 0:32] | (hi[:, :, 32:64] << 2) | (hi[:, :, 64:96] << 4) | (hi[:, :, 96:128] << 6)
    blocks = np.concatenate([ql.reshape(-1, 128), qh.reshape(-1, 64), sc.astype(np.int8).view(np.uint8),
                             d.view(np.uint8).reshape(-1, 2)], axis=1)
    return blocks.reshape(*rows.shape[:-1], rows.shape[-1] // QK_K * 210)


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
    if qtype == T.Q6_K:
        return quantize_q6_k(array)
    return quants.quantize(array, qtype)


def write_gguf(path: Path, tensors: dict, arch: str, scheme: str, extra: dict | None = None) -> dict[str, str]:
    """Write `tensors` (name -> torch tensor) as a ComfyUI-GGUF file; returns name -> GGML type name.

    Metadata as ComfyUI-GGUF writes it: general.architecture (`wan`, `qwen_image`),
    general.quantization_version and general.file_type. diffusers' loader reads only the tensors.
    `extra`: name -> numpy array written as it is (F32), e.g. QWEN_TIMESTEP_MARKER."""
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
    for name, array in (extra or {}).items():
        writer.add_tensor(name, np.asarray(array, dtype=np.float32))
        types[name] = "F32"
    path.parent.mkdir(parents=True, exist_ok=True)
    writer.write_header_to_file(path=path)
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return types
