"""A clip's files: its review pictures, the MP4 and its recipe, put in place together (outputs.atomic_outputs:
the whole old set or the whole new one). A single run makes them at once (write_outputs). A batch makes them in
two halves (runs/behind.py): prepare() in the background thread while the next clip generates (the colour
check and match, the pictures' PNG bytes, the x264 encode into the clip's own temp file), then put_in_place()
in the main thread (pictures and recipe written, the set committed, with its signal holding and fault points).
"""

from __future__ import annotations

import contextlib
import os
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from producer.engines.wan.wan_jobs import Request
from producer.errors import CliError
from producer.facts import registry
from producer.files import provenance, review, video
from producer.files.outputs import atomic_outputs, refuse_input_as_output, temp_path, write_json_atomic

FPS = registry.WAN.fps


def to_uint8(frames: np.ndarray) -> np.ndarray:
    return (frames.clip(0, 1) * 255).round().astype("uint8")


def check_paths(req: Request, script: str) -> None:
    """Before any work: the clip's other files (review pictures, recipe) must not be folders, whose rename fails
    only after the whole generation, nor review pictures another script made (unless --overwrite); and no file
    of the set may be one of the clip's own inputs: --overwrite would replace the keyframe it starts from (e.g.
    its own earlier last frame), and the recipe would name content that no longer exists (stale for good), the
    rule qwen_image.py and assemble_video.py follow too."""
    others = [*review.review_paths(req.output).values(), provenance.sidecar_path(req.output)]
    for path in others:
        if path.is_dir():
            raise CliError(f"{path} is a folder, where the clip {req.output} writes one of its files",
                           f"move the folder {path} out of the way, or choose another -o")
    example = f"e.g. -o {req.output.with_name(req.output.stem + '-2' + req.output.suffix)}"
    for path in (req.output, *others):
        what = "output" if path == req.output else "the clip's file"
        refuse_input_as_output(path, [req.start, req.end, req.style_ref], what, example)
    review.check_review_paths(req.output, req.overwrite, script)


def write_outputs(frames: np.ndarray, req: Request, recipe: dict) -> dict:
    """The clip's set: its review PNGs, the MP4 and its recipe, written to temp files and then put in place
    together (outputs.atomic_outputs): a full disk, an error or Ctrl-C leaves the old set whole (or nothing),
    never an old clip beside a new recipe or new pictures. The recipe is renamed last: it says the clip is done."""
    sidecar = provenance.sidecar_path(req.output)
    pictures = review.review_paths(req.output)
    with atomic_outputs(*pictures.values(), req.output, sidecar, output=req.output) as temps:
        *picture_temps, clip_tmp, recipe_tmp = temps
        review.write_review(frames, req.output, recipe, FPS, _title(req, frames), into=dict(zip(pictures, picture_temps)))
        video.write_mp4(frames, clip_tmp, fps=FPS)
        write_json_atomic(recipe_tmp, provenance.with_output(recipe, clip_tmp))
    return _named(req)


@dataclass
class Prepared:
    """What prepare() made: the clip's MP4, complete in its own temp file (outputs.temp_path of the clip, the name
    the set's commit takes it from), and everything else in memory."""

    frames: int
    matched: dict  # review.color_match's report
    pictures: dict[str, bytes] = field(default_factory=dict)  # PNG bytes by review_paths key
    seconds: dict[str, float] = field(default_factory=dict)


def prepare(frames: np.ndarray, req: Request, recipe: dict) -> Prepared:
    """The CPU half of a clip's files (see the module doc): only computes and fills the clip's own temp file (no
    rename, lock or signal handling), so it may run in a background thread. On failure nothing is left."""
    start = time.perf_counter()
    frames, matched = review.color_match(to_uint8(frames), req.image, req.last_image, req.color_match)
    checked = time.perf_counter()
    pictures = review.render_review(frames, req.output, recipe, FPS, _title(req, frames))
    video.encode_mp4(frames, temp_path(Path(req.output)), fps=FPS)
    # "video_encode", not "encode": in a run's seconds "encode" is the prompts' encoding
    seconds = {"color_match": round(checked - start, 3), "video_encode": round(time.perf_counter() - checked, 3)}
    return Prepared(len(frames), matched, pictures, seconds)


def put_in_place(prepared: Prepared, req: Request, recipe: dict) -> dict:
    """The set made by prepare(), committed as write_outputs commits its own; the paths for the result."""
    sidecar = provenance.sidecar_path(req.output)
    pictures = review.review_paths(req.output)
    try:
        with atomic_outputs(*pictures.values(), req.output, sidecar, output=req.output) as temps:
            *picture_temps, clip_made_by_prepare, recipe_tmp = temps
            for key, temp in zip(pictures, picture_temps):
                temp.write_bytes(prepared.pictures[key])
            write_json_atomic(recipe_tmp, provenance.with_output(recipe, clip_made_by_prepare))
    except BaseException:
        discard(req)
        raise
    return _named(req)


def discard(req: Request) -> None:
    """A prepared clip that will not be put in place (the batch stopped, or its commit failed)."""
    with contextlib.suppress(OSError):
        os.unlink(temp_path(Path(req.output)))


def _title(req: Request, frames: np.ndarray) -> str:
    return review.sheet_title(req.prompt, req.seed, len(frames), FPS)


def _named(req: Request) -> dict:
    named = review.review_paths(req.output)
    return {**{key: str(path) for key, path in named.items()}, "provenance": str(provenance.sidecar_path(req.output))}
