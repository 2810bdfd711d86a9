"""producer.files.colour: CIELAB, CIEDE2000, SSIM and colour matching, against known values and scikit-image."""

import numpy as np
import pytest
from PIL import Image
from producer.cli import CliError
from producer.files import colour, video


def smooth_image(seed=0, width=96, height=64):
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:height, 0:width] / max(width, height)
    channels = [0.5 + 0.35 * np.sin(2 * np.pi * (rng.random() * 2 * x + rng.random() * 2 * y + rng.random()))
                for _ in range(3)]
    return video.frame_to_uint8(np.stack(channels, axis=-1))


def test_lab_known_values_and_round_trip():
    lab = colour.rgb_to_lab(np.array([[1.0, 1.0, 1.0], [0.0, 0.0, 0.0], [1.0, 0.0, 0.0]]))
    assert np.allclose(lab, [[100, 0, 0], [0, 0, 0], [53.2408, 80.0925, 67.2032]], atol=0.01)
    rgb = np.random.default_rng(0).random((20, 20, 3))
    assert np.allclose(colour.lab_to_rgb(colour.rgb_to_lab(rgb)), rgb, atol=1e-9)


@pytest.mark.parametrize("lab1, lab2, expected", [  # Sharma, Wu & Dalal (2005), table 1
    ((50, 2.6772, -79.7751), (50, 0, -82.7485), 2.0425),
    ((50, 0, 0), (50, -1, 2), 2.3669),
    ((50, 2.49, -0.001), (50, -2.49, 0.0009), 7.1792),
    ((50, 2.49, -0.001), (50, -2.49, 0.0011), 7.2195),
    ((50, -0.001, 2.49), (50, 0.0009, -2.49), 4.8045),
    ((50, 2.5, 0), (73, 25, -18), 27.1492),
])
def test_ciede2000_reference_pairs(lab1, lab2, expected):
    assert float(colour.delta_e_ciede2000(np.array(lab1, float), np.array(lab2, float))) == pytest.approx(
        expected, abs=1e-4)


def test_colour_science_matches_scikit_image():
    skcolor = pytest.importorskip("skimage.color")
    metrics = pytest.importorskip("skimage.metrics")
    rng = np.random.default_rng(1)
    rgb1, rgb2 = rng.random((30, 30, 3)), rng.random((30, 30, 3))
    assert np.allclose(colour.rgb_to_lab(rgb1), skcolor.rgb2lab(rgb1), atol=1e-3)
    lab1, lab2 = skcolor.rgb2lab(rgb1), skcolor.rgb2lab(rgb2)
    assert np.allclose(colour.delta_e_ciede2000(lab1, lab2), skcolor.deltaE_ciede2000(lab1, lab2), atol=1e-6)
    a, b = smooth_image(0), smooth_image(1)
    expected = metrics.structural_similarity(colour._luma(a), colour._luma(b), gaussian_weights=True, sigma=1.5,
                                             use_sample_covariance=False, data_range=255)
    assert colour.ssim(a, b) == pytest.approx(expected, abs=1e-9)


def test_color_difference():
    a = smooth_image()
    shifted = np.clip(a.astype(int) + [40, 0, -40], 0, 255).astype(np.uint8)
    assert colour.color_difference(a, a) == 0.0
    assert colour.color_difference(a, shifted) > 10
    assert colour.color_difference(a, shifted, mode="mean") > 10
    # "mean" ignores motion: the same picture moved has the same average colour
    assert colour.color_difference(a, np.roll(a, 20, axis=1), mode="mean") < 0.5
    # b is resized to a: a half-size copy of a is nearly identical
    half = Image.fromarray(a).resize((48, 32), Image.Resampling.BOX)
    assert colour.color_difference(a, half) < 2


def test_ssim():
    a = smooth_image()
    noisy = np.clip(a + np.random.default_rng(0).normal(0, 25, a.shape), 0, 255).astype(np.uint8)
    assert colour.ssim(a, a) == pytest.approx(1.0)
    assert colour.ssim(a, noisy) < 0.8
    assert colour.ssim(a, Image.fromarray(a).resize((192, 128), Image.Resampling.BICUBIC)) > 0.97
    with pytest.raises(CliError, match="too small"):
        colour.ssim(np.zeros((8, 8, 3), np.uint8), np.zeros((8, 8, 3), np.uint8))


def drifting_clip(base, n=9, per_frame=(5, 1, -5)):
    """A clip whose colours drift further from `base` every frame (FLF warm drift)."""
    return [np.clip(base.astype(int) + np.multiply(per_frame, i), 0, 255).astype(np.uint8) for i in range(n)]


def mean_drift(frames, refs):
    return float(np.mean([colour.color_difference(f, r, mode="mean") for f, r in zip(frames, refs)]))


def test_match_colors_reduces_drift():
    base = smooth_image()
    clip = drifting_clip(base)
    before = mean_drift(clip, [base] * len(clip))
    fixed = colour.match_colors(clip, base)
    after = mean_drift(fixed, [base] * len(clip))
    assert fixed.shape == (9, 64, 96, 3) and fixed.dtype == np.uint8
    assert before > 8 and after < before / 4
    half = mean_drift(colour.match_colors(clip, base, strength=0.5), [base] * len(clip))
    assert after < half < before
    assert np.array_equal(colour.match_colors(clip, base, strength=0.0), np.stack(clip))
    with pytest.raises(CliError, match="between 0 and 1"):
        colour.match_colors(clip, base, strength=2)


def test_fast_transfer_is_within_one_level_of_the_float64_colour_science():
    rng = np.random.default_rng(3)
    frame = rng.integers(0, 256, (96, 128, 3), dtype=np.uint8)
    reference = np.clip(frame.astype(int) + [25, -15, 10], 0, 255).astype(np.uint8)
    target = colour.lab_stats(reference)
    for strength in (1.0, 0.4):
        lab = colour.rgb_to_lab(colour.to_float_rgb(frame))
        flat = lab.reshape(-1, 3)
        ratio = np.clip(target.std / flat.std(axis=0), *colour.STD_RATIO_LIMITS)
        matched = (lab - flat.mean(axis=0)) * ratio + target.mean
        slow = np.round(colour.lab_to_rgb(lab + strength * (matched - lab)) * 255).astype(np.uint8)
        fast = colour._transfer(frame, target, strength)
        diff = np.abs(fast.astype(int) - slow.astype(int))
        assert diff.max() <= 1 and (diff > 0).mean() < 0.01


def test_match_colors_ramp_follows_both_keyframes():
    start = smooth_image()
    end = (start * 0.6).astype(np.uint8)  # the end keyframe is legitimately darker
    truth = [(start * (1 - 0.4 * i / 8)).astype(np.uint8) for i in range(9)]  # the fade we wanted
    clip = [np.clip(t.astype(int) + np.multiply((6, 0, -6), i), 0, 255).astype(np.uint8) for i, t in enumerate(truth)]
    fixed = colour.match_colors_ramp(clip, start, end)
    assert mean_drift(fixed, truth) < mean_drift(clip, truth) / 3
    assert colour.color_difference(fixed[0], start, mode="mean") < 1
    # 18.7 before; what remains comes from channels clipped at 0 and 255 by the drift
    assert colour.color_difference(fixed[-1], end, mode="mean") < 2
    # a single reference would have pulled the end of the fade back up to the start's brightness
    assert mean_drift(colour.match_colors(clip, start), truth) > mean_drift(fixed, truth)
