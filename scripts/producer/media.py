"""Images and video files: load any image people have, fit it to a model size, save PNGs with their
generation metadata, write and read H.264 MP4s, draw contact sheets, and compare or match colours
across frames for continuity checks.

Only Pillow and numpy are needed for images; the video functions use the ffmpeg binary that
imageio-ffmpeg bundles (it has no ffprobe, so `probe_video` decodes the clip to count frames).
Colour science (sRGB <-> CIELAB, CIEDE2000, SSIM) is implemented here in numpy, checked in the tests
against scikit-image, so that scikit-image is not a runtime dependency.
"""

from __future__ import annotations

import contextlib
import io
import json
import math
import os
import re
import subprocess
import tempfile
import warnings
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import Any, Iterable, NamedTuple, Sequence

import numpy as np
from PIL import Image, ImageColor, ImageDraw, ImageFont, ImageOps, PngImagePlugin, UnidentifiedImageError

from .cli import CliError, ExitCode, atomic_output, disk_full, log, output_for

# 64 megapixels: an 8K x 8K image. Bigger inputs are almost certainly a mistake (or a decompression
# bomb: a few KB of PNG declaring gigapixels), and decoding one would take several GB of RAM.
DEFAULT_MAX_PIXELS = 64_000_000
# Transparent images are composited on white. In this workflow transparency comes from cut-out character
# and object layers used as references, and a subject on plain white is the conventional form of such a
# reference (product shot, character sheet; SKILL.md asks for a "clean background"), so the edit model
# has no backdrop to copy; grey would read as a wall in the scene. Dark-on-transparent logos also stay
# legible; for a white logo pass background=(128, 128, 128).
DEFAULT_BACKGROUND = (255, 255, 255)
PNG_METADATA_KEY = "producer"
VIDEO_SUFFIXES = {".mp4", ".mov", ".mkv", ".webm", ".avi"}  # named in the fix when one is given as an image

# ================================================================ loading images


def load_image(path: str | os.PathLike, max_pixels: int | None = DEFAULT_MAX_PIXELS,
               background: tuple[int, int, int] = DEFAULT_BACKGROUND) -> Image.Image:
    """Open any common image as 8-bit sRGB RGB, fully loaded and detached from the file.

    Handles: EXIF orientation (applied), animated GIF/WebP/APNG (the first frame, noted),
    transparency in RGBA, LA, P and tRNS images (composited on `background`, white by default),
    16-bit greyscale and RGB PNGs (scaled to 8 bits, not clipped), CMYK JPEGs including Adobe's
    inverted CMYK (via the embedded ICC profile when there is one), embedded ICC profiles such as
    Display P3 or Adobe RGB (converted to sRGB). What was done is logged and listed in
    `image.info["producer_notes"]` for a script's --json report.

    Refuses, with CliError: a missing or unreadable file, a non-image, a truncated image, and an image
    over `max_pixels` (checked from the header, before anything is decoded).
    """
    path = Path(path)
    notes: list[str] = []
    with _open_image(path, max_pixels) as im:
        try:
            rgb = _to_rgb(im, background, notes)
            if rgb is im:  # nothing to convert: copy, because `im` is closed when this block ends
                rgb = im.copy()
        except OSError as exc:  # truncated or corrupt data shows up only when pixels are decoded
            raise CliError(f"image {path} is damaged or truncated ({exc})",
                           "re-export or re-download the image; a file that stops early cannot be read") from None
    rgb.info = {"producer_notes": notes}
    for note in notes:
        log.info("%s: %s", path.name, note)
    return rgb


@contextlib.contextmanager
def _open_image(path: Path, max_pixels: int | None):
    """Image.open (header only) with every way of failing turned into a CliError."""
    fix_path = "check the path (ls it), or give the image file itself"
    if not path.exists():
        raise CliError(f"image {path} does not exist", fix_path)
    if path.is_dir():
        raise CliError(f"image {path} is a directory", fix_path)
    try:
        with warnings.catch_warnings():
            # Pillow warns above its own limit (~89 MP); our max_pixels check below replaces that warning.
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            im = Image.open(path)
    except Image.DecompressionBombError:
        raise CliError(f"image {path} declares more than {2 * Image.MAX_IMAGE_PIXELS:,} pixels; refusing to "
                       "decode it", "downscale it first (a file this size may be a decompression bomb)") from None
    except UnidentifiedImageError:
        raise CliError(f"{path} is not an image Pillow can read", "give a PNG, JPEG or WebP file"
                       + ("; for a video, extract a frame first" if path.suffix.lower() in VIDEO_SUFFIXES else "")
                       ) from None
    except PermissionError:
        raise CliError(f"image {path} cannot be read (permission denied)",
                       f"make it readable: chmod u+r {path}") from None
    except (OSError, ValueError) as exc:  # ValueError: Pillow's limits on text and ICC chunk sizes
        raise CliError(f"image {path} cannot be read: {exc}", "re-export it as PNG or JPEG") from None
    try:
        pixels = im.width * im.height
        if max_pixels is not None and pixels > max_pixels:
            raise CliError(f"image {path} is {im.width}x{im.height} ({pixels / 1e6:.0f} MP), over the "
                           f"{max_pixels / 1e6:.0f} MP limit", "downscale it first (the models work at about "
                           "1 MP), or raise the limit if this is intended")
        yield im
    finally:
        im.close()


def _to_rgb(im: Image.Image, background: tuple[int, int, int], notes: list[str]) -> Image.Image:
    if getattr(im, "n_frames", 1) > 1:
        im.seek(0)
        notes.append(f"animated image with {im.n_frames} frames: using the first frame only")
    icc = im.info.get("icc_profile")
    im = _apply_exif_orientation(im, notes)
    im = _to_8bit(im, notes)
    if im.mode == "CMYK":
        return _cmyk_to_rgb(im, icc, notes)
    im = _composite_alpha(im, background, notes)
    if im.mode != "RGB":
        im = im.convert("RGB")
    return _icc_to_srgb(im, icc, notes)


def _apply_exif_orientation(im: Image.Image, notes: list[str]) -> Image.Image:
    orientation = im.getexif().get(0x0112, 1)  # EXIF Orientation tag
    if orientation in (None, 1):
        return im
    notes.append(f"applied EXIF orientation {orientation}")
    return ImageOps.exif_transpose(im)


def _to_8bit(im: Image.Image, notes: list[str]) -> Image.Image:
    """16- and 32-bit greyscale to 8 bits by scaling; Pillow's own convert("L") clips at 255.

    16-bit RGB(A) PNGs need nothing here: Pillow already keeps their high byte (v >> 8), which is the
    correct scaling to within one level.
    """
    if im.mode in ("I;16", "I;16L", "I;16B", "I;16N", "I"):
        # PNG and TIFF store 16-bit grey as 0..65535; mode "I" from a PNG is 16-bit data widened.
        values = np.asarray(im, dtype=np.float64)
        notes.append(f"{im.mode} greyscale scaled from 16 to 8 bits")
        return Image.fromarray(np.clip(np.round(values / 257.0), 0, 255).astype(np.uint8), "L")
    if im.mode == "F":
        values = np.asarray(im, dtype=np.float64)
        scale = 255.0 if values.max(initial=0.0) <= 1.0 else 1.0  # float TIFFs are 0..1 or 0..255
        notes.append("32-bit float greyscale converted to 8 bits")
        return Image.fromarray(np.clip(np.round(values * scale), 0, 255).astype(np.uint8), "L")
    return im


def _composite_alpha(im: Image.Image, background: tuple[int, int, int], notes: list[str]) -> Image.Image:
    has_alpha = im.mode in ("RGBA", "LA", "PA", "RGBa", "La") or "transparency" in im.info
    if not has_alpha:
        return im
    rgba = im.convert("RGBA")
    if rgba.getextrema()[3][0] == 255:
        return rgba.convert("RGB")  # an alpha channel that is opaque everywhere changes nothing
    notes.append(f"transparency composited on rgb{tuple(background)}")
    canvas = Image.new("RGBA", rgba.size, (*background, 255))
    return Image.alpha_composite(canvas, rgba).convert("RGB")


def _cmyk_to_rgb(im: Image.Image, icc: bytes | None, notes: list[str]) -> Image.Image:
    # Pillow reads Adobe's inverted CMYK JPEGs (APP14 marker) already un-inverted.
    converted = _convert_with_profile(im, icc)
    if converted is not None:
        notes.append("CMYK converted to sRGB with the embedded ICC profile")
        return converted
    notes.append("CMYK converted to RGB without a colour profile (colours are approximate)")
    return im.convert("RGB")


def _icc_to_srgb(im: Image.Image, icc: bytes | None, notes: list[str]) -> Image.Image:
    if not icc:
        return im
    converted = _convert_with_profile(im, icc)
    if converted is None:
        return im
    name = _profile_name(icc)
    if "srgb" not in name.lower():
        notes.append(f"converted from the embedded colour profile {name!r} to sRGB")
    return converted


def _convert_with_profile(im: Image.Image, icc: bytes | None) -> Image.Image | None:
    """im (RGB or CMYK) with its embedded profile -> sRGB RGB, or None when that is not possible."""
    if not icc:
        return None
    try:
        from PIL import ImageCms

        source = ImageCms.ImageCmsProfile(io.BytesIO(icc))
        if _profile_space(source) != im.mode:
            return None  # e.g. a grey profile on an image we have already made RGB
        srgb = ImageCms.createProfile("sRGB")
        return ImageCms.profileToProfile(im, source, srgb, outputMode="RGB")
    except (ImportError, OSError, ValueError) as exc:  # ImageCms.PyCMSError subclasses OSError
        log.info("could not apply the embedded colour profile (%s); using the values as sRGB", exc)
        return None


def _profile_space(profile) -> str:
    return {"RGB ": "RGB", "CMYK": "CMYK", "GRAY": "L"}.get(profile.profile.xcolor_space, "?")


def _profile_name(icc: bytes) -> str:
    try:
        from PIL import ImageCms

        return ImageCms.getProfileDescription(ImageCms.ImageCmsProfile(io.BytesIO(icc))).strip()
    except (ImportError, OSError, ValueError):
        return "unknown"


# ================================================================ sizes


class SnappedSize(NamedTuple):
    width: int
    height: int
    note: str  # "" when nothing changed, else what changed, for a warning


def snap_size(width: int, height: int, multiple: int = 16) -> SnappedSize:
    """Round each side to the nearest multiple (halves round up; at least one multiple).

    Nearest, not floor, so the aspect ratio moves as little as possible: 1080 -> 1088, 1000 -> 1008,
    990 -> 992.
    """
    if width <= 0 or height <= 0:
        raise CliError(f"size {width}x{height} must be positive", "give a size such as 832x480")
    w, h = (max(multiple, int(math.floor(v / multiple + 0.5)) * multiple) for v in (width, height))
    note = "" if (w, h) == (width, height) else (
        f"{width}x{height} is not a multiple of {multiple}; using {w}x{h}")
    return SnappedSize(w, h, note)


def orient_preset(preset_wh: tuple[int, int], image_wh: tuple[int, int], multiple: int = 16) -> tuple[int, int]:
    """A landscape preset such as (832, 480) turned to match a keyframe of size image_wh.

    The result is the preset as landscape, as portrait (swapped) or as a square of its shorter side,
    whichever aspect ratio is nearest the keyframe's (compared as log ratios, i.e. the one that crops
    the least). For 832x480 (1.73:1) the square wins between 1.32:1 and 1:1.32, so a 1024x1024 keyframe
    gives 480x480, 1920x1080 gives 832x480 and 1080x1920 gives 480x832.
    """
    long_side, short_side = max(preset_wh), min(preset_wh)
    image_ratio = math.log(image_wh[0] / image_wh[1])
    candidates = [(long_side, short_side), (short_side, long_side), (short_side, short_side)]
    w, h = min(candidates, key=lambda c: abs(math.log(c[0] / c[1]) - image_ratio))
    snapped = snap_size(w, h, multiple)
    return snapped.width, snapped.height


def fit_image(img: Image.Image, width: int, height: int, mode: str = "crop",
              pad_color: str | tuple[int, int, int] = "edge", multiple: int = 16) -> Image.Image:
    """Resize to exactly width x height without distorting it.

    crop: scale so the image covers the box, then cut the overflow equally from both sides (centre
        crop). Nothing is stretched; the edges of the longer dimension are lost.
    pad: scale so the image fits inside the box, centre it, and fill the bars with `pad_color`:
        "edge" (default) = the mean colour of the scaled image's outermost pixels, so the bars blend
        in and a model is less tempted to draw a frame; or any colour Pillow knows ("black", "#808080",
        (r, g, b)). Nothing is lost; the bars become part of the picture.
    Both sides must be multiples of `multiple` (16 for Wan and Qwen), checked here because a pipeline
    would otherwise floor them silently. Resampling is Lanczos.
    """
    if width % multiple or height % multiple or width <= 0 or height <= 0:
        snapped = snap_size(max(width, 1), max(height, 1), multiple)
        raise CliError(f"target size {width}x{height} is not a multiple of {multiple}",
                       f"use {snapped.width}x{snapped.height}")
    img = img if img.mode == "RGB" else img.convert("RGB")
    if img.size == (width, height):
        return img.copy()
    if mode == "crop":
        return _cover_and_crop(img, width, height)
    if mode == "pad":
        return _fit_and_pad(img, width, height, pad_color)
    raise ValueError(f"mode must be 'crop' or 'pad', not {mode!r}")


def _cover_and_crop(img: Image.Image, width: int, height: int) -> Image.Image:
    scale = max(width / img.width, height / img.height)
    crop_w, crop_h = width / scale, height / scale  # the kept region, in source pixels
    left, top = (img.width - crop_w) / 2, (img.height - crop_h) / 2
    kept = (crop_w * crop_h) / (img.width * img.height)
    if kept < 0.999:
        log.info("fit %dx%d -> %dx%d by centre crop: %.0f%% of the picture kept",
                 img.width, img.height, width, height, 100 * kept)
    # resize(box=...) crops (at sub-pixel precision) while resizing: one resampling pass, not two
    return img.resize((width, height), Image.Resampling.LANCZOS, box=(left, top, left + crop_w, top + crop_h))


def _fit_and_pad(img: Image.Image, width: int, height: int, pad_color) -> Image.Image:
    scale = min(width / img.width, height / img.height)
    scaled = img.resize((min(width, max(1, round(img.width * scale))), min(height, max(1, round(img.height * scale)))),
                        Image.Resampling.LANCZOS)
    color = _edge_color(scaled) if pad_color == "edge" else _parse_color(pad_color)
    canvas = Image.new("RGB", (width, height), color)
    canvas.paste(scaled, ((width - scaled.width) // 2, (height - scaled.height) // 2))
    return canvas


def _edge_color(img: Image.Image) -> tuple[int, int, int]:
    a = np.asarray(img, dtype=np.float64)
    ring = np.concatenate([a[0], a[-1], a[:, 0], a[:, -1]])
    return tuple(int(round(v)) for v in ring.mean(axis=0))


def _parse_color(color) -> tuple[int, int, int]:
    if isinstance(color, str):
        try:
            return ImageColor.getrgb(color)[:3]
        except ValueError:
            raise CliError(f"unknown pad colour {color!r}", 'use "edge", a name such as "black", or "#rrggbb"') from None
    return tuple(int(c) for c in color)[:3]


# ================================================================ PNG with metadata


def save_png(img: Image.Image, path: str | os.PathLike, metadata: dict | None = None,
             key: str = PNG_METADATA_KEY) -> Path:
    """Write a PNG atomically, with `metadata` as JSON in an iTXt chunk named `key`.

    iTXt (not tEXt) because prompts are UTF-8; uncompressed so `strings`/exiftool can read it. The chunk
    goes before the image data, so readers find it without decoding pixels.
    """
    path = Path(path)
    if not path.parent.is_dir():
        raise CliError(f"the folder for {path} does not exist", f"create it: mkdir -p {path.parent}")
    info = PngImagePlugin.PngInfo()
    if metadata is not None:
        info.add_itxt(key, json.dumps(metadata, ensure_ascii=False, default=str))
    with atomic_output(path) as tmp:
        img.save(tmp, format="PNG", pnginfo=info)
    return path


def read_png_metadata(path: str | os.PathLike, key: str = PNG_METADATA_KEY) -> dict | None:
    """The JSON stored by `save_png`, or None when the file is not a PNG or has no such chunk."""
    with _open_image(Path(path), max_pixels=None) as im:
        if im.format != "PNG":
            return None
        text = im.text.get(key)  # .text also reads chunks placed after the image data
    if text is None:
        return None
    try:
        value = json.loads(text)
    except json.JSONDecodeError:
        log.warning("warning: %s has a %r text chunk that is not JSON; ignoring it", path, key)
        return None
    return value if isinstance(value, dict) else {"value": value}


# ================================================================ frames


def frame_to_uint8(frame: Any) -> np.ndarray:
    """One frame (PIL image, HxWx3 uint8, or HxWx3 float in [0, 1]) as a contiguous HxWx3 uint8 array.

    Greyscale (HxW or HxWx1) is repeated to RGB. Floats are rounded, not truncated.
    """
    if isinstance(frame, Image.Image):
        return np.asarray(frame if frame.mode == "RGB" else frame.convert("RGB"))
    a = np.asarray(frame)
    if a.ndim == 2:
        a = a[:, :, None]
    if a.ndim != 3 or a.shape[2] not in (1, 3):
        raise ValueError(f"a frame must be HxWx3 (RGB), got shape {a.shape}")
    if a.shape[2] == 1:
        a = np.repeat(a, 3, axis=2)
    if a.dtype == np.uint8:
        return np.ascontiguousarray(a)
    if np.issubdtype(a.dtype, np.floating):
        lo, hi = float(a.min()), float(a.max())
        if lo < -0.01 or hi > 1.01:  # a little overshoot from a VAE decoder is normal; more is a bug
            raise ValueError(f"float frames must be in [0, 1], got {lo:.3f}..{hi:.3f} "
                             "(a [-1, 1] tensor needs (x + 1) / 2 first)")
        return np.round(np.clip(a, 0.0, 1.0) * 255.0).astype(np.uint8)
    raise ValueError(f"frames must be uint8 or float arrays, got {a.dtype}")


def _frame_list(frames: Iterable[Any]) -> list:
    if isinstance(frames, np.ndarray) and frames.ndim == 3 and frames.shape[-1] == 3:
        raise ValueError("got one HxWx3 frame where a list of frames was expected; wrap it: [frame]")
    return list(frames)


# ================================================================ MP4


@dataclass(frozen=True)
class VideoWritten:
    path: str
    frames: int
    width: int
    height: int
    fps: float
    codec: str = "h264"
    pix_fmt: str = "yuv420p"


def write_mp4(frames: Iterable[Any], path: str | os.PathLike, fps: float | Fraction = 16, crf: int = 18,
              preset: str = "medium", comment: str | None = None, title: str | None = None) -> VideoWritten:
    """Encode frames to an H.264 MP4 (libx264, yuv420p, BT.709 tagged) at exactly `fps`, atomically.

    frames: an iterable of PIL images or HxWx3 uint8 / float [0, 1] arrays (or an NxHxWx3 array), all
        the same size, with even width and height (4:2:0 chroma needs pairs of pixels). Each frame is
        converted as it is sent, so a float clip is never held twice in memory.
    crf: 18 by default, visually lossless for generated footage; the clips are re-encoded again when
        edited, so generation loss here should be small. Lower is bigger and better, 23 is x264's default.
    comment/title: MP4 metadata tags (e.g. the generation settings as compact JSON; see `probe_video`).

    The file appears under `path` only when ffmpeg has finished and exited 0; on any error, Ctrl-C or
    SIGTERM the ffmpeg process is killed and the temp file removed. The bundled ffmpeg is run directly
    rather than through imageio_ffmpeg.write_frames, which ignores ffmpeg's exit status (a failed
    encode would look like success) and silently rescales sizes that are not multiples of 16.
    """
    if isinstance(frames, np.ndarray) and frames.ndim != 4:
        raise ValueError(f"a frame array must be N x H x W x 3, got shape {frames.shape}")
    iterator = iter(frames)
    first = next(iterator, None)
    if first is None:
        raise CliError(f"no frames to write to {path}", "the generation produced no frames; run it again")
    first = frame_to_uint8(first)
    height, width = first.shape[:2]
    if width % 2 or height % 2:
        raise CliError(f"video frames are {width}x{height}; H.264 in yuv420p needs even width and height",
                       "fit the frames to an even size first (media.fit_image, e.g. to multiples of 16)")
    rate = _check_fps(fps)
    count = 0
    with atomic_output(path) as tmp:
        with _ffmpeg_encoder(tmp, width, height, rate, crf, preset, comment, title) as send:
            send(first)
            count = 1
            for frame in iterator:
                send(_checked_frame(frame, count, width, height))
                count += 1
    return VideoWritten(str(path), count, width, height, float(rate))


def _check_fps(fps: float | Fraction) -> Fraction:
    rate = Fraction(fps).limit_denominator(1001) if not isinstance(fps, Fraction) else fps
    if not 0 < rate <= 240:
        raise CliError(f"fps must be between 0 and 240, got {fps}", "Wan 2.2 clips are 16 fps")
    return rate


def _checked_frame(frame: Any, index: int, width: int, height: int) -> np.ndarray:
    a = frame_to_uint8(frame)
    if a.shape[:2] != (height, width):
        raise ValueError(f"frame {index} is {a.shape[1]}x{a.shape[0]}, but frame 0 is {width}x{height}")
    return a


@contextlib.contextmanager
def _ffmpeg_encoder(out: Path, width: int, height: int, fps: Fraction, crf: int, preset: str,
                    comment: str | None, title: str | None):
    """Yield send(frame_uint8); on normal exit wait for ffmpeg and check it, on any exception kill it."""
    cmd = [_ffmpeg_exe(), "-hide_banner", "-nostats", "-loglevel", "error", "-y",
           "-f", "rawvideo", "-pix_fmt", "rgb24", "-s", f"{width}x{height}", "-r", str(fps), "-i", "-", "-an",
           # Tag BT.709 explicitly: players guess 601 or 709 from the height when a file is untagged,
           # which shifts colours between a 480p and a 720p clip of the same scene.
           "-vf", "scale=out_color_matrix=bt709:out_range=tv,format=yuv420p,"
                  "setparams=color_primaries=bt709:color_trc=bt709:colorspace=bt709:range=tv",
           "-c:v", "libx264", "-preset", preset, "-crf", str(crf), "-movflags", "+faststart"]
    for tag, value in (("comment", comment), ("title", title)):
        if value is not None:
            cmd += ["-metadata", f"{tag}={value}"]
    cmd += ["-f", "mp4", str(out)]
    with tempfile.TemporaryFile() as errors:  # a file, not a pipe: a full stderr pipe would deadlock us
        proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.DEVNULL, stderr=errors,
                                **_own_process_group())

        def send(frame: np.ndarray) -> None:
            try:
                proc.stdin.write(frame.tobytes())
            except BrokenPipeError:
                raise _ffmpeg_failed(proc.wait(), errors, out) from None

        try:
            yield send
            with contextlib.suppress(BrokenPipeError):  # ffmpeg already gone: its exit status says why
                proc.stdin.close()
            code = proc.wait()
        except BaseException:
            _kill(proc)
            raise
        if code != 0:
            raise _ffmpeg_failed(code, errors, out)


def _own_process_group() -> dict:
    """Start ffmpeg outside our process group so Ctrl-C reaches only us; we then kill it ourselves."""
    if os.name == "nt":
        return {"creationflags": subprocess.CREATE_NEW_PROCESS_GROUP}
    return {"start_new_session": True}


def _kill(proc: subprocess.Popen) -> None:
    with contextlib.suppress(OSError):
        proc.stdin.close()
    if proc.poll() is None:
        proc.kill()
    proc.wait()


def _ffmpeg_failed(code: int, errors, out: Path) -> CliError:
    errors.seek(0)
    text = errors.read().decode("utf-8", "replace").strip()
    last = text.splitlines()[-1] if text else f"exit status {code}"
    if "No space left on device" in text:
        return disk_full(output_for(out))
    return CliError(f"ffmpeg could not write {output_for(out).name}: {last}",
                    "check free disk space and the frame size; "
                    "rerun with --debug for ffmpeg's full message", ExitCode.FAILED, ffmpeg_log=text[-2000:])


def ffmpeg_input(path: str | os.PathLike) -> str:
    """A local file as ffmpeg's -i argument. ffmpeg reads "-" as stdin and "http:...", "concat:...",
    "pipe:..." as protocols; "file:" plus the absolute path always means this file and nothing else."""
    return "file:" + os.path.abspath(path)


def _ffmpeg_exe() -> str:
    try:
        import imageio_ffmpeg
    except ImportError:
        raise CliError("imageio-ffmpeg is not installed", "pip install imageio-ffmpeg", ExitCode.FAILED) from None
    return imageio_ffmpeg.get_ffmpeg_exe()


def probe_video(path: str | os.PathLike) -> dict:
    """Facts about a video's first video stream: frames (exact: counted by decoding), fps, width,
    height, duration (frames / fps), codec, pix_fmt, and the title/comment tags when present.

    The bundled ffmpeg has no ffprobe, so this runs `ffmpeg -i path -f null -` and reads its log.
    """
    path = _existing_video(path)
    cmd = [_ffmpeg_exe(), "-hide_banner", "-nostdin", "-i", ffmpeg_input(path), "-map", "0:v:0", "-f", "null", "-"]
    try:
        result = subprocess.run(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, timeout=600)
    except subprocess.TimeoutExpired:
        raise CliError(f"reading {path} took over 10 minutes", "is it a very long video? trim it first") from None
    log_text = result.stderr.decode("utf-8", "replace")
    if result.returncode != 0:
        raise _not_a_video(path, log_text)
    info = _parse_stream(path, log_text)
    frames = re.findall(r"frame=\s*(\d+)", log_text)
    info["frames"] = int(frames[-1]) if frames else 0
    info["duration"] = round(info["frames"] / info["fps"], 4) if info["fps"] else None
    info.update(_parse_tags(log_text))
    return info


def _existing_video(path: str | os.PathLike) -> Path:
    path = Path(path)
    if not path.is_file():
        raise CliError(f"video {path} does not exist" if not path.exists() else f"{path} is not a file",
                       "check the path (ls it)")
    return path


def _not_a_video(path: Path, log_text: str) -> CliError:
    lines = [l for l in log_text.strip().splitlines() if l.strip()]
    return CliError(f"{path} is not a video ffmpeg can read: {lines[-1] if lines else 'no output'}",
                    "give an MP4 (or another video file); re-download or re-render it if it is damaged")


def _parse_stream(path: Path, log_text: str) -> dict:
    input_part = log_text.split("Stream mapping:")[0]
    stream = next((l for l in input_part.splitlines() if "Stream #" in l and " Video: " in l), None)
    if stream is None:
        raise _not_a_video(path, log_text)
    description = stream.split(" Video: ", 1)[1]
    # split at commas that are not inside parentheses: "yuv420p(tv, bt709, progressive)" is one field
    fields = [f.strip() for f in re.split(r",\s*(?![^()]*\))", description)]
    size = re.search(r"(?<![\w#])(\d{2,5})x(\d{2,5})\b", description)
    fps = re.search(r"([\d.]+) fps", description) or re.search(r"([\d.]+) tbr", description)
    return {
        "codec": fields[0].split(" ")[0],
        "pix_fmt": fields[1].split("(")[0] if len(fields) > 1 else None,
        "width": int(size.group(1)) if size else None,
        "height": int(size.group(2)) if size else None,
        "fps": float(fps.group(1)) if fps else None,
    }


def _parse_tags(log_text: str) -> dict:
    """title and comment from the container's Metadata block (before the first stream)."""
    header = log_text.split("Input #0", 1)[-1].split("Stream #", 1)[0]
    tags = {}
    for line in header.splitlines():
        match = re.match(r"^ {4}(title|comment)\s*: ?(.*)$", line)
        if match:
            tags[match.group(1)] = match.group(2)
    return tags


MAX_DECODED_BYTES = 8 * 1024**3  # read_video holds the whole clip in RAM; 8 GiB is ~10 min of 832x480


def read_video(path: str | os.PathLike, max_frames: int | None = None) -> tuple[np.ndarray, float]:
    """Decode a video to (frames, fps): frames is an N x H x W x 3 uint8 RGB array.

    `max_frames` stops early (for a quick look at a long clip). Decoding honours the file's colour tags,
    so a clip written by `write_mp4` comes back within a level or two of what was written.
    """
    import imageio_ffmpeg

    path = _existing_video(path)
    reader = imageio_ffmpeg.read_frames(ffmpeg_input(path), pix_fmt="rgb24")
    try:
        meta = next(reader)
    except (OSError, RuntimeError, IndexError, AttributeError) as exc:  # imageio's header parser, on junk
        reader.close()
        raise _not_a_video(path, str(exc)) from None
    width, height = meta["size"]
    frames = []
    try:
        for raw in reader:
            frames.append(np.frombuffer(raw, np.uint8).reshape(height, width, 3))
            if max_frames is not None and len(frames) >= max_frames:
                break
            if len(frames) * width * height * 3 > MAX_DECODED_BYTES:
                raise CliError(f"{path} is too long to load whole ({len(frames)} frames read so far)",
                               "read part of it (max_frames) or trim it first")
    except RuntimeError as exc:
        raise CliError(f"{path} is damaged: {str(exc).splitlines()[0]}", "re-render or re-download it") from None
    finally:
        reader.close()
    if not frames:
        raise CliError(f"{path} has no frames", "re-render it")
    return np.stack(frames), float(meta["fps"])


# ================================================================ contact sheet


def contact_sheet(frames: Sequence[Any], n: int = 8, labels: str | Sequence[str] | None = "frame",
                  columns: int = 4, fps: float | None = None, tile_width: int = 320,
                  title: str | None = None) -> Image.Image:
    """A grid of `n` evenly spaced frames, first and last included, each labelled, so an agent can
    review a clip from one image.

    labels: "frame" (#index), "time" (seconds, needs fps), "both", a list of strings (one per tile),
        or None. Tiles are `tile_width` wide (never upscaled) in `columns` columns, 4 px apart on dark
        grey; `title`, if given, is a line of text above the grid.
    """
    frames = _frame_list(frames)
    if not frames:
        raise ValueError("contact_sheet needs at least one frame")
    indices = sorted(set(np.round(np.linspace(0, len(frames) - 1, min(n, len(frames)))).astype(int).tolist()))
    texts = _tile_labels(labels, indices, fps)
    first = frame_to_uint8(frames[indices[0]])
    tile_w = min(tile_width, first.shape[1])
    tile_h = max(1, round(first.shape[0] * tile_w / first.shape[1]))
    font_size = max(10, tile_h // 12)
    font = ImageFont.load_default(size=font_size)
    gap, columns = 4, max(1, min(columns, len(indices)))
    rows = math.ceil(len(indices) / columns)
    title_h = (font_size + 2 * gap) if title else 0
    sheet = Image.new("RGB", (columns * tile_w + (columns + 1) * gap, title_h + rows * tile_h + (rows + 1) * gap),
                      (32, 32, 32))
    draw = ImageDraw.Draw(sheet)
    if title:
        draw.text((gap, gap), title, fill=(235, 235, 235), font=font)
    for slot, (index, text) in enumerate(zip(indices, texts)):
        x = gap + (slot % columns) * (tile_w + gap)
        y = title_h + gap + (slot // columns) * (tile_h + gap)
        tile = Image.fromarray(frame_to_uint8(frames[index])).resize((tile_w, tile_h), Image.Resampling.LANCZOS)
        sheet.paste(tile, (x, y))
        if text:
            _draw_label(draw, (x, y), text, font)
    return sheet


def _tile_labels(labels, indices: list[int], fps: float | None) -> list[str]:
    if labels is None:
        return [""] * len(indices)
    if not isinstance(labels, str):
        labels = list(labels)
        if len(labels) != len(indices):
            raise ValueError(f"got {len(labels)} labels for {len(indices)} tiles")
        return [str(l) for l in labels]
    if labels in ("time", "both") and not fps:
        raise ValueError(f"labels={labels!r} needs fps")
    make = {"frame": lambda i: f"#{i}", "time": lambda i: f"{i / fps:.2f}s",
            "both": lambda i: f"#{i}  {i / fps:.2f}s"}
    if labels not in make:
        raise ValueError(f"labels must be 'frame', 'time', 'both', a list or None, not {labels!r}")
    return [make[labels](i) for i in indices]


def _draw_label(draw: ImageDraw.ImageDraw, xy: tuple[int, int], text: str, font) -> None:
    pad = 3
    left, top, right, bottom = draw.textbbox((xy[0] + pad, xy[1] + pad), text, font=font)
    draw.rectangle((xy[0], xy[1], right + pad, bottom + pad), fill=(0, 0, 0))  # legible on any frame
    draw.text((xy[0] + pad, xy[1] + pad), text, fill=(255, 255, 255), font=font)


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
    frames = _frame_list(frames)
    _check_strength(strength)
    target = lab_stats(reference)
    return np.stack([_transfer(frame, target, strength) for frame in frames])


def match_colors_ramp(frames: Iterable[Any], start_ref: Any, end_ref: Any, strength: float = 1.0) -> np.ndarray:
    """Like match_colors, but the target moves linearly from start_ref's statistics (first frame) to
    end_ref's (last frame): for FLF clips, whose two keyframes may legitimately differ in colour while
    the frames between drift away from both. The statistics are interpolated, not the images.
    """
    frames = _frame_list(frames)
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
    lab = rgb_to_lab(to_float_rgb(frame))
    flat = lab.reshape(-1, 3)
    mean, std = flat.mean(axis=0), flat.std(axis=0)
    ratio = np.clip(target.std / np.maximum(std, 1e-6), *STD_RATIO_LIMITS)
    matched = (lab - mean) * ratio + target.mean
    blended = lab + strength * (matched - lab)
    return np.round(lab_to_rgb(blended) * 255.0).astype(np.uint8)
