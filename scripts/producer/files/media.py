"""Images: load any image people have, fit it to a model size, save PNGs with their generation metadata.

Only Pillow and numpy. Video files are producer.files.video; colour comparison and matching producer.files.colour.
"""

from __future__ import annotations

import contextlib
import io
import json
import math
import os
import struct
import warnings
from pathlib import Path
from typing import NamedTuple

import numpy as np
from PIL import Image, ImageColor, ImageOps, PngImagePlugin, UnidentifiedImageError

from producer.errors import CliError, no_folder
from producer.files.inputs import regular_file
from producer.files.outputs import atomic_output, json_text
from producer.values import load_json, log

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
# Pillow reports damaged data with whatever its parser ran into, at open or later, when pixels, later pages
# or late text chunks are read: OSError (truncated, broken data stream), SyntaxError (a bad chunk, a TIFF
# page with an unknown mode), TypeError (a TIFF page without dimensions), ValueError, KeyError, IndexError
# and struct.error (damaged GIF and TIFF headers), EOFError. Found by flipping bytes of PNG, TIFF, GIF,
# JPEG and WebP files with Pillow 13 (tests/test_damaged_inputs.py keeps one of each kind).
DAMAGE_ERRORS = (OSError, SyntaxError, TypeError, ValueError, KeyError, IndexError, struct.error, EOFError)
DAMAGED_FIX = "re-export or re-download the image; a damaged or truncated file cannot be read"

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
    with _open_image(path, max_pixels) as im:  # damage found while decoding is a CliError there too
        rgb = _to_rgb(im, background, notes)
        if rgb is im:  # nothing to convert: copy, because `im` is closed when this block ends
            rgb = im.copy()
    rgb.info = {"producer_notes": notes}
    for note in notes:
        log.info("%s: %s", path.name, note)
    return rgb


@contextlib.contextmanager
def _open_image(path: Path, max_pixels: int | None):
    """Image.open (header only) with every way of failing turned into a CliError, and so is damage that
    shows only when the body of the `with` decodes (pixels, later pages, text chunks after the pixels).

    The one reader of pictures: every script and production.py reads them through here."""
    regular_file(path, "image")  # a FIFO or device would block Image.open forever
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
    except DAMAGE_ERRORS as exc:  # ValueError: Pillow's limits on text and ICC chunk sizes
        raise CliError(f"image {path} cannot be read: {_reason(exc)}", "re-export it as PNG or JPEG") from None
    try:
        pixels = im.width * im.height
        if max_pixels is not None and pixels > max_pixels:
            raise CliError(f"image {path} is {im.width}x{im.height} ({pixels / 1e6:.0f} MP), over the "
                           f"{max_pixels / 1e6:.0f} MP limit", "downscale it first (the models work at about "
                           "1 MP), or raise the limit if this is intended")
        try:
            yield im
        except DAMAGE_ERRORS as exc:
            raise CliError(f"image {path} is damaged or truncated ({_reason(exc)})", DAMAGED_FIX) from None
    finally:
        im.close()


def _reason(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}" if not isinstance(exc, OSError) else str(exc)


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
    w, h = (max(multiple, math.floor(v / multiple + 0.5) * multiple) for v in (width, height))
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
    return tuple(round(v) for v in ring.mean(axis=0))


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
        raise no_folder(path.parent, f"the folder for {path}")
    with atomic_output(path) as tmp:
        img.save(tmp, format="PNG", pnginfo=_png_info(metadata, key))
    return path


def png_bytes(img: Image.Image, metadata: dict | None = None, key: str = PNG_METADATA_KEY) -> bytes:
    """The PNG that save_png writes, in memory (a background thread encodes it; the caller writes it)."""
    buffer = io.BytesIO()
    img.save(buffer, format="PNG", pnginfo=_png_info(metadata, key))
    return buffer.getvalue()


def _png_info(metadata: dict | None, key: str) -> PngImagePlugin.PngInfo:
    info = PngImagePlugin.PngInfo()
    if metadata is not None:
        info.add_itxt(key, json_text(metadata))
    return info


def read_png_metadata(path: str | os.PathLike, key: str = PNG_METADATA_KEY) -> dict | None:
    """The JSON stored by `save_png`, or None when the file is not a PNG or has no such chunk.

    A PNG whose pixels do not decode (truncated, a bad checksum) is a CliError, not a recipe: `.text`
    decodes the whole image (it also reads text chunks placed after the pixels), so a damaged output is
    never taken for a finished one."""
    with _open_image(Path(path), max_pixels=None) as im:
        if im.format != "PNG":
            return None
        text = im.text.get(key)
    if text is None:
        return None
    try:
        value = load_json(text)
    except json.JSONDecodeError:
        log.warning("warning: %s has a %r text chunk that is not JSON; ignoring it", path, key)
        return None
    return value if isinstance(value, dict) else {"value": value}
