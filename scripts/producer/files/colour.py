"""Colour across frames: CIELAB, CIEDE2000, SSIM, and colour matching for continuity checks.

Implemented in numpy and checked in the tests against scikit-image, so that scikit-image is not a runtime
dependency.
"""

from __future__ import annotations

from typing import Any, Iterable, NamedTuple

import numpy as np
from PIL import Image

from producer.errors import CliError
from producer.files.video import frame_list, frame_to_uint8

# ================================================================ colour science

# sRGB (IEC 61966-2-1) primaries to CIE XYZ, D65 white; the same constants scikit-image uses.
_RGB_TO_XYZ = np.array([[0.412453, 0.357580, 0.180423],
                        [0.212671, 0.715160, 0.072169],
                        [0.019334, 0.119193, 0.950227]])
_XYZ_TO_RGB = np.linalg.inv(_RGB_TO_XYZ)
_D65_WHITE = np.array([0.95047, 1.0, 1.08883])
_LAB_EPSILON = 216 / 24389  # CIE: below this the cube root is replaced by a straight line
_LAB_KAPPA = 24389 / 27


def to_float_rgb(image: Any) -> np.ndarray:
    """PIL image or uint8/float array -> HxWx3 float64 in [0, 1], via 8 bits (what gets saved anyway)."""
    return frame_to_uint8(image).astype(np.float64) / 255.0


def rgb_to_lab(rgb: np.ndarray) -> np.ndarray:
    """sRGB float in [0, 1] (..., 3) -> CIELAB (D65, 2 degree observer): L 0..100, a and b about -128..127."""
    rgb = np.asarray(rgb, dtype=np.float64)
    linear = np.where(rgb > 0.04045, ((rgb + 0.055) / 1.055) ** 2.4, rgb / 12.92)
    xyz = linear @ _RGB_TO_XYZ.T / _D65_WHITE
    f = np.where(xyz > _LAB_EPSILON, np.cbrt(xyz), (_LAB_KAPPA * xyz + 16) / 116)
    return np.stack([116 * f[..., 1] - 16, 500 * (f[..., 0] - f[..., 1]), 200 * (f[..., 1] - f[..., 2])], axis=-1)


def lab_to_rgb(lab: np.ndarray) -> np.ndarray:
    """CIELAB (D65) -> sRGB float in [0, 1]; colours outside sRGB are clipped."""
    lab = np.asarray(lab, dtype=np.float64)
    fy = (lab[..., 0] + 16) / 116
    f = np.stack([fy + lab[..., 1] / 500, fy, fy - lab[..., 2] / 200], axis=-1)
    xyz = np.where(f ** 3 > _LAB_EPSILON, f ** 3, (116 * f - 16) / _LAB_KAPPA) * _D65_WHITE
    linear = np.clip(xyz @ _XYZ_TO_RGB.T, 0.0, 1.0)
    return np.where(linear > 0.0031308, 1.055 * linear ** (1 / 2.4) - 0.055, 12.92 * linear)


def delta_e_ciede2000(lab1: np.ndarray, lab2: np.ndarray) -> np.ndarray:
    """CIEDE2000 colour difference (Sharma, Wu & Dalal 2005; kL = kC = kH = 1), elementwise.

    About 1 is the smallest difference people notice side by side; 2-3 is visible on a careful look;
    above 5 two colours read as different.
    """
    L1, a1, b1 = np.moveaxis(np.asarray(lab1, dtype=np.float64), -1, 0)
    L2, a2, b2 = np.moveaxis(np.asarray(lab2, dtype=np.float64), -1, 0)
    c_mean7 = ((np.hypot(a1, b1) + np.hypot(a2, b2)) / 2) ** 7
    g = 0.5 * (1 - np.sqrt(c_mean7 / (c_mean7 + 25.0 ** 7)))
    a1p, a2p = (1 + g) * a1, (1 + g) * a2
    c1p, c2p = np.hypot(a1p, b1), np.hypot(a2p, b2)
    h1p = np.degrees(np.arctan2(b1, a1p)) % 360
    h2p = np.degrees(np.arctan2(b2, a2p)) % 360
    chroma_zero = (c1p * c2p) == 0

    dh = h2p - h1p
    dh = np.where(dh > 180, dh - 360, np.where(dh < -180, dh + 360, dh))
    dh = np.where(chroma_zero, 0.0, dh)
    d_lp, d_cp = L2 - L1, c2p - c1p
    d_hp = 2 * np.sqrt(c1p * c2p) * np.sin(np.radians(dh / 2))

    l_mean, c_mean = (L1 + L2) / 2, (c1p + c2p) / 2
    h_sum = h1p + h2p
    h_mean = np.where(np.abs(h1p - h2p) <= 180, h_sum / 2, np.where(h_sum < 360, (h_sum + 360) / 2, (h_sum - 360) / 2))
    h_mean = np.where(chroma_zero, h_sum, h_mean)

    t = (1 - 0.17 * np.cos(np.radians(h_mean - 30)) + 0.24 * np.cos(np.radians(2 * h_mean))
         + 0.32 * np.cos(np.radians(3 * h_mean + 6)) - 0.20 * np.cos(np.radians(4 * h_mean - 63)))
    d_theta = 30 * np.exp(-(((h_mean - 275) / 25) ** 2))
    c_mean_p7 = c_mean ** 7
    r_c = 2 * np.sqrt(c_mean_p7 / (c_mean_p7 + 25.0 ** 7))
    s_l = 1 + 0.015 * (l_mean - 50) ** 2 / np.sqrt(20 + (l_mean - 50) ** 2)
    s_c = 1 + 0.045 * c_mean
    s_h = 1 + 0.015 * c_mean * t
    r_t = -np.sin(np.radians(2 * d_theta)) * r_c
    terms = (d_lp / s_l) ** 2 + (d_cp / s_c) ** 2 + (d_hp / s_h) ** 2 + r_t * (d_cp / s_c) * (d_hp / s_h)
    return np.sqrt(np.maximum(terms, 0.0))


def _same_size_pair(a: Any, b: Any, max_side: int | None) -> tuple[np.ndarray, np.ndarray]:
    """a and b as uint8 arrays of a's size (b resized if it differs), both shrunk to max_side if given."""
    a8, b8 = frame_to_uint8(a), frame_to_uint8(b)
    height, width = a8.shape[:2]
    if max_side and max(width, height) > max_side:
        scale = max_side / max(width, height)
        width, height = max(1, round(width * scale)), max(1, round(height * scale))
    return _resized(a8, width, height), _resized(b8, width, height)


def _resized(a: np.ndarray, width: int, height: int) -> np.ndarray:
    if a.shape[:2] == (height, width):
        return a
    return np.asarray(Image.fromarray(a).resize((width, height), Image.Resampling.BILINEAR))


def color_difference(a: Any, b: Any, mode: str = "pixel", max_side: int | None = 512) -> float:
    """Mean CIEDE2000 difference between two images (b is resized to a's size if they differ).

    mode "pixel": the mean over pixels, for frames that should be the same picture (a seam between two
        clips that share a keyframe, or the last frame of an FLF clip against its end keyframe).
    mode "mean": the difference between the two images' average colours, which ignores motion and
        measures only a colour cast (drift in exposure or white balance across a clip).
    Both images are first shrunk so the longer side is at most `max_side` (colour statistics do not
    need full resolution, and this keeps a per-frame check of a clip fast). Rough reading: < 1 the
    same, 1-3 a close look shows it, > 5 clearly different.
    """
    a8, b8 = _same_size_pair(a, b, max_side)
    lab_a, lab_b = rgb_to_lab(a8 / 255.0), rgb_to_lab(b8 / 255.0)
    if mode == "pixel":
        return float(delta_e_ciede2000(lab_a, lab_b).mean())
    if mode == "mean":
        return float(delta_e_ciede2000(lab_a.reshape(-1, 3).mean(0), lab_b.reshape(-1, 3).mean(0)))
    raise ValueError(f"mode must be 'pixel' or 'mean', not {mode!r}")


# SSIM constants from Wang, Bovik, Sheikh & Simoncelli (2004): an 11-tap Gaussian window, sigma 1.5.
_SSIM_SIGMA, _SSIM_RADIUS, _SSIM_K1, _SSIM_K2 = 1.5, 5, 0.01, 0.03


def ssim(a: Any, b: Any) -> float:
    """Mean structural similarity of two images' luma (BT.601 weights, 0..255), b resized to a's size.

    The standard Gaussian-window SSIM of Wang et al. 2004 (no sample-covariance correction, statistics
    over the valid region only), equal to scikit-image's structural_similarity(gaussian_weights=True,
    sigma=1.5, use_sample_covariance=False, data_range=255). 1 means identical; structure, not colour:
    use color_difference for casts.
    """
    a8, b8 = _same_size_pair(a, b, None)
    if min(a8.shape[:2]) < 2 * _SSIM_RADIUS + 1:
        raise CliError(f"images of {a8.shape[1]}x{a8.shape[0]} are too small for SSIM (11x11 at least)",
                       "compare larger images")
    x, y = _luma(a8), _luma(b8)
    c1, c2 = (_SSIM_K1 * 255) ** 2, (_SSIM_K2 * 255) ** 2
    mu_x, mu_y = _gaussian_valid(x), _gaussian_valid(y)
    var_x = _gaussian_valid(x * x) - mu_x ** 2
    var_y = _gaussian_valid(y * y) - mu_y ** 2
    cov = _gaussian_valid(x * y) - mu_x * mu_y
    ssim_map = ((2 * mu_x * mu_y + c1) * (2 * cov + c2)) / ((mu_x ** 2 + mu_y ** 2 + c1) * (var_x + var_y + c2))
    return float(ssim_map.mean())


def _luma(rgb8: np.ndarray) -> np.ndarray:
    return rgb8.astype(np.float64) @ np.array([0.299, 0.587, 0.114])


def _gaussian_valid(image: np.ndarray) -> np.ndarray:
    """Separable Gaussian filter keeping only positions where the whole window fits."""
    offsets = np.arange(-_SSIM_RADIUS, _SSIM_RADIUS + 1)
    kernel = np.exp(-(offsets ** 2) / (2 * _SSIM_SIGMA ** 2))
    kernel /= kernel.sum()
    size = len(kernel)
    rows = sum(w * image[i: image.shape[0] - size + 1 + i] for i, w in enumerate(kernel))
    return sum(w * rows[:, i: rows.shape[1] - size + 1 + i] for i, w in enumerate(kernel))


# ================================================================ colour matching

# Reinhard transfer scales each Lab channel by std_target / std_frame. A frame whose content changed
# (the camera turned to the sky) can have a very different spread; capping the factor keeps such a
# frame from being blown out or flattened in the name of colour correction.
STD_RATIO_LIMITS = (0.5, 2.0)


class LabStats(NamedTuple):
    mean: np.ndarray  # (3,) L, a, b
    std: np.ndarray  # (3,)


def lab_stats(image: Any) -> LabStats:
    lab = rgb_to_lab(to_float_rgb(image)).reshape(-1, 3)
    return LabStats(lab.mean(axis=0), lab.std(axis=0))


def match_colors(frames: Iterable[Any], reference: Any, strength: float = 1.0) -> np.ndarray:
    """Pull every frame's colours towards `reference` (Reinhard et al. 2001: per-channel mean and
    standard deviation matched in CIELAB), blended with the original by `strength` (0 = unchanged,
    1 = fully matched). Returns N x H x W x 3 uint8.

    For drift in a clip that should keep one look (an I2V clip against its start keyframe). Each frame
    is matched on its own statistics, so intended changes (a light switching on) are also evened out:
    use a strength below 1 for such clips.
    """
    frames = frame_list(frames)
    _check_strength(strength)
    target = lab_stats(reference)
    return np.stack([_transfer(frame, target, strength) for frame in frames])


def match_colors_ramp(frames: Iterable[Any], start_ref: Any, end_ref: Any, strength: float = 1.0) -> np.ndarray:
    """Like match_colors, but the target moves linearly from start_ref's statistics (first frame) to
    end_ref's (last frame): for FLF clips, whose two keyframes may legitimately differ in colour while
    the frames between drift away from both. The statistics are interpolated, not the images.
    """
    frames = frame_list(frames)
    _check_strength(strength)
    start, end = lab_stats(start_ref), lab_stats(end_ref)
    last = max(1, len(frames) - 1)
    return np.stack([
        _transfer(frame, LabStats(start.mean + (end.mean - start.mean) * i / last,
                                  start.std + (end.std - start.std) * i / last), strength)
        for i, frame in enumerate(frames)])


def _check_strength(strength: float) -> None:
    if not 0.0 <= strength <= 1.0:
        raise CliError(f"colour-match strength must be between 0 and 1, got {strength}", "use e.g. 0.5 or 1")


def _transfer(frame: Any, target: LabStats, strength: float) -> np.ndarray:
    """One frame matched to `target`: in float32 with the sRGB decoding from a 256-entry table, twice as
    fast as rgb_to_lab/lab_to_rgb in float64 (an 81-frame 480p clip: 3.5 s on 2 cores, bench/writing.py) and
    within one level of them (tests/test_media.py)."""
    rgb8 = frame_to_uint8(frame)
    if strength == 0:
        return rgb8.copy()  # exactly unchanged, not a float32 round trip
    lab = _lab32(rgb8)
    flat = lab.reshape(-1, 3)
    mean, std = flat.mean(axis=0, dtype=np.float64), flat.std(axis=0, dtype=np.float64)
    ratio = np.clip(target.std / np.maximum(std, 1e-6), *STD_RATIO_LIMITS)
    # lab + strength * ((lab - mean) * ratio + target - lab), as one scale and offset per channel
    scale = (1 + strength * (ratio - 1)).astype(np.float32)
    offset = (strength * (target.mean - mean * ratio)).astype(np.float32)
    return _rgb8_from_lab32(lab * scale + offset)


_LEVELS = np.arange(256) / 255
_SRGB_TO_LINEAR = np.where(_LEVELS > 0.04045, ((_LEVELS + 0.055) / 1.055) ** 2.4, _LEVELS / 12.92).astype(np.float32)
_TO_XYZ_WHITE = (_RGB_TO_XYZ / _D65_WHITE[:, None]).T.astype(np.float32)  # the white point folded in
_FROM_XYZ_WHITE = (_XYZ_TO_RGB * _D65_WHITE[None, :]).T.astype(np.float32)


def _lab32(rgb8: np.ndarray) -> np.ndarray:
    xyz = _SRGB_TO_LINEAR[rgb8] @ _TO_XYZ_WHITE
    f = np.where(xyz > np.float32(_LAB_EPSILON), np.cbrt(xyz), (np.float32(_LAB_KAPPA) * xyz + 16) / 116)
    return np.stack([116 * f[..., 1] - 16, 500 * (f[..., 0] - f[..., 1]), 200 * (f[..., 1] - f[..., 2])], axis=-1)


def _rgb8_from_lab32(lab: np.ndarray) -> np.ndarray:
    fy = (lab[..., 0] + 16) / 116
    f = np.stack([fy + lab[..., 1] / 500, fy, fy - lab[..., 2] / 200], axis=-1)
    cubed = f * f * f
    xyz = np.where(cubed > np.float32(_LAB_EPSILON), cubed, (116 * f - 16) / np.float32(_LAB_KAPPA))
    linear = np.clip(xyz @ _FROM_XYZ_WHITE, 0, 1)
    srgb = np.where(linear > np.float32(0.0031308), np.float32(1.055) * linear ** np.float32(1 / 2.4) - np.float32(0.055),
                    np.float32(12.92) * linear)
    return np.rint(srgb * 255).astype(np.uint8)
