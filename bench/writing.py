#!/usr/bin/env python3
"""What a finished item costs after generation: colour match, review files and MP4 for a clip, the PNG for
an image. This work runs on the CPU between two generations of a `--batch`, so it is the batch's overhead
per item; compare it with the generation times in docs/performance.md.

    python bench/writing.py --repeats 3 --out writing.json

The pictures are smooth gradients with fine grain, and the clip pans slowly across one of them; the same
clip as noise is encoded once more beside it (mp4_if_noise), as random weights make.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "scripts"))
sys.path.insert(0, str(HERE))


def canvas(width: int, height: int, seed: int = 0):
    """Smooth gradients with fine grain, like a photograph (pure noise would be slower to compress)."""
    import numpy as np

    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:height, 0:width]
    rgb = np.stack([x / 4 % 256, y / 4 % 256, (x + y) / 8 % 256], -1)
    return (rgb + rng.normal(0, 6, rgb.shape)).clip(0, 255).astype("uint8")


def clip_stages(width: int, height: int, frames: int, folder: Path) -> dict:
    """The steps wan_video.py runs after decoding, in its order, on one clip whose picture pans slowly."""
    import numpy as np
    from PIL import Image
    from producer.files import provenance, review, video

    wide = canvas(width + 2 * frames, height)
    clip = np.stack([wide[:, 2 * i: 2 * i + width] for i in range(frames)])
    start = Image.fromarray(clip[0])
    out, seconds = folder / "clip.mp4", {}
    begin = time.perf_counter()
    review.color_match(clip, start, None, "off")  # the continuity figures every clip reports
    seconds["continuity"] = time.perf_counter() - begin
    begin = time.perf_counter()
    review.color_match(clip, start, None, "on")  # only for clips whose colours drifted (auto) or --color-match on
    seconds["color_match_if_applied"] = time.perf_counter() - begin
    begin = time.perf_counter()
    review.write_review(clip, out, {"settings": {}}, 16, "bench")
    seconds["review_files"] = time.perf_counter() - begin
    begin = time.perf_counter()
    video.write_mp4(clip, out, fps=16)
    provenance.write_sidecar(out, {"settings": {}})
    seconds["mp4_and_recipe"] = time.perf_counter() - begin
    # What the benchmark's random-weight clips look like: independent noise, which x264 encodes far slower
    # (a GPU run's per-clip overhead is inflated by it; bench/batches.py measures those clips).
    noise = np.random.default_rng(0).integers(0, 256, clip.shape, dtype=np.uint8)
    begin = time.perf_counter()
    video.write_mp4(noise, folder / "noise.mp4", fps=16)
    seconds["mp4_if_noise"] = time.perf_counter() - begin
    return seconds


def image_stages(width: int, height: int, folder: Path) -> dict:
    from PIL import Image
    from producer.files import media

    image = Image.fromarray(canvas(width, height))
    begin = time.perf_counter()
    media.save_png(image, folder / "image.png", {"settings": {}})
    return {"png": time.perf_counter() - begin}


def measure(args) -> dict:
    runs: dict[str, list[dict]] = {"clip": [], "image": []}
    with tempfile.TemporaryDirectory() as tmp:
        for i in range(args.repeats):
            folder = Path(tmp) / str(i)
            folder.mkdir()
            runs["clip"].append(clip_stages(args.width, args.height, args.frames, folder))
            runs["image"].append(image_stages(args.image_size, args.image_size, folder))
    median = {kind: {stage: round(statistics.median(r[stage] for r in rs), 3) for stage in rs[0]}
              for kind, rs in runs.items()}
    # What every item pays; a colour match is paid only by the clips it is applied to, noise by none.
    median["clip"]["every_clip"] = round(sum(v for k, v in median["clip"].items() if not k.endswith("_if_applied")
                                             and k != "mp4_if_noise"), 3)
    return {"cpu_count": os.cpu_count(), "clip": f"{args.width}x{args.height}x{args.frames}",
            "image": f"{args.image_size}x{args.image_size}", "repeats": args.repeats, "median_seconds": median}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--width", type=int, default=832)
    p.add_argument("--height", type=int, default=480)
    p.add_argument("--frames", type=int, default=81)
    p.add_argument("--image-size", type=int, default=1024)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--out", type=Path, default=None, help="JSON results")
    args = p.parse_args(argv)
    result = measure(args)
    text = json.dumps(result, indent=1)
    if args.out:
        args.out.write_text(text + "\n")
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
