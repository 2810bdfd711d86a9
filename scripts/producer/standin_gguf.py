"""GGUF files in the ComfyUI-GGUF format (original Wan key names), written from tiny stand-in weights.

The gguf package writes Q8_0, Q4_0, F16 and F32 but no K-quants, so Q4_K blocks are packed here by hand
(checked against the gguf package's own decoder in the tests).
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from .models import STANDIN_MARKER, matching_files, standin_facts  # noqa: F401 - one reader of the marker

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
