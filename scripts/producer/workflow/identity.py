"""Identity: does a keyframe, or a frame of a clip, still show the character (or object) of its asset?

Each picture and each asset picture becomes an image embedding (DINOv2 small through transformers: the CLS
token after the final layer norm, `pooler_output`), and the figure is their cosine similarity (1 the same
picture, about 0 unrelated). DINOv2 is trained without captions and keeps shape and texture, not only the
subject's category, which is what "the same character" needs. The whole frame is compared (padded to a
square, so the model's centre crop loses nothing): the production
records no box for a character (the layered keyframes keep the character layer as a picture, not a
position), so a small figure in a wide shot measures lower than a close-up; the thresholds say so.

Flags (`check`):
- `identity` on a keyframe: similarity to the asset below `identity_min`.
- `identity` on a clip frame: similarity below `identity_min`, or more than `identity_drop` below the clip's
  start keyframe's own similarity (the approved keyframe is the baseline: a frame that loses the character
  the keyframe had is the drift users see).

Calibration: on the tiny stand-in embedder (random weights, producer.testing.standin_models.DINOV2_CONFIG) and
synthetic pictures only (tests/test_drift.py): the same figure at other places and on another background
measures 0.48 or more against its asset, another figure 0.05 or less. IDENTITY_MIN and IDENTITY_DROP sit between. They have not been measured with the real DINOv2
weights; a user overrides them in .production/settings.json ({"judge": {"identity_min": 0.3}}).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

import numpy as np

from producer.facts import registry
from producer.files import media
from producer.modelfiles import models

log = logging.getLogger("producer")

EMBEDDER = "dinov2-small"  # the registry entry
IDENTITY_MIN = 0.25  # stand-in: the same figure >= 0.48, another figure <= 0.05
IDENTITY_DROP = 0.2  # a clip frame this far below its start keyframe's similarity has lost the character
SAMPLES = 5  # frames sampled from each clip (evenly spaced, the first and the last included)
SQUARE = 224  # pictures are padded to a square this size first: the processor's centre crop would cut the sides


@dataclass(frozen=True)
class IdentityLimits:
    identity_min: float = IDENTITY_MIN
    identity_drop: float = IDENTITY_DROP


class Embedder:
    """The image-embedding model, loaded once from the installed registry entry."""

    def __init__(self, model, processor):
        self.model, self.processor = model, processor

    @classmethod
    def load(cls) -> Embedder | None:
        """The installed embedder, or None (not installed: the identity figures are skipped and said to be)."""
        entry = registry.get(EMBEDDER)
        if not models.is_present(entry):
            return None
        from transformers import BitImageProcessor, Dinov2Model  # facebook/dinov2-small's processor class

        snap = models.locate(entry)
        models.refuse_pickled_weights(snap)
        model = Dinov2Model.from_pretrained(snap, use_safetensors=True).eval()
        return cls(model, BitImageProcessor.from_pretrained(snap))

    def embed(self, pictures: list[Any]) -> np.ndarray:
        """Pictures (PIL or H x W x 3 uint8) -> N x D unit vectors."""
        import torch
        from PIL import Image

        images = [p if isinstance(p, Image.Image) else Image.fromarray(np.asarray(p, dtype=np.uint8)) for p in pictures]
        squares = [media.fit_image(im.convert("RGB"), SQUARE, SQUARE, mode="pad") for im in images]
        with torch.no_grad():
            out = self.model(**self.processor(squares, return_tensors="pt"))
        vectors = out.pooler_output.float().numpy()
        return vectors / np.maximum(np.linalg.norm(vectors, axis=1, keepdims=True), 1e-12)

    def similarity(self, pictures: list[Any], asset: Any) -> list[float]:
        """Cosine similarity of each picture to the asset picture."""
        vectors = self.embed([*pictures, asset])
        return [round(float(v), 4) for v in vectors[:-1] @ vectors[-1]]


def sample_frames(count: int, samples: int = SAMPLES) -> list[int]:
    """Evenly spaced frame numbers, first and last included."""
    if count <= 0:
        return []
    n = min(samples, count)
    return sorted({round(i * (count - 1) / max(1, n - 1)) for i in range(n)})


def keyframe_flags(similarity: float, limits: IdentityLimits) -> list[dict]:
    if similarity >= limits.identity_min:
        return []
    return [{"reason": "identity", "figure": similarity, "threshold": limits.identity_min}]


def clip_threshold(keyframe: float | None, limits: IdentityLimits) -> float:
    """A clip frame's floor: identity_min, raised to identity_drop below the start keyframe's similarity."""
    return (
        limits.identity_min if keyframe is None else round(max(limits.identity_min, keyframe - limits.identity_drop), 4)
    )


def clip_flags(
    frames: list[int], similarities: list[float], keyframe: float | None, limits: IdentityLimits
) -> list[dict]:
    """The sampled frames that lost the character (below clip_threshold)."""
    threshold = clip_threshold(keyframe, limits)
    lost = [(f, s) for f, s in zip(frames, similarities) if s < threshold]
    if not lost:
        return []
    return [
        {
            "reason": "identity",
            "frames": [f for f, _ in lost],
            "figure": min(s for _, s in lost),
            "threshold": threshold,
        }
    ]
