"""Video files and frames: write and read H.264 MP4s, probe them, draw contact sheets.

The ffmpeg binary is the one imageio-ffmpeg bundles (it has no ffprobe, so `probe_video` decodes the clip
to count frames); no system ffmpeg is needed.
"""

from __future__ import annotations

import contextlib
import math
import os
import re
import subprocess
import tempfile
from dataclasses import dataclass, replace
from fractions import Fraction
from pathlib import Path
from typing import Any, Iterable, Sequence

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from producer.errors import CliError, ExitCode
from producer.files.inputs import regular_file
from producer.files.outputs import atomic_output, disk_full, output_for

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


def frame_list(frames: Iterable[Any]) -> list:
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
    with atomic_output(path) as tmp:
        written = encode_mp4(frames, tmp, fps, crf, preset, comment, title)
    return replace(written, path=str(path))


def encode_mp4(frames: Iterable[Any], path: str | os.PathLike, fps: float | Fraction = 16, crf: int = 18,
               preset: str = "medium", comment: str | None = None, title: str | None = None) -> VideoWritten:
    """write_mp4's encoding into `path` itself, a temp file the caller owns (no rename, no signal handling, so
    it may run in a background thread: runs/behind.py); on any error `path` is removed."""
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
    try:
        with _ffmpeg_encoder(Path(path), width, height, rate, crf, preset, comment, title) as send:
            send(first)
            count = 1
            for frame in iterator:
                send(_checked_frame(frame, count, width, height))
                count += 1
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(path)
        raise
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
    cmd = [ffmpeg_exe(), "-hide_banner", "-nostats", "-loglevel", "error", "-y",
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
    with ffmpeg_stdin(cmd, out) as send:
        yield send


@contextlib.contextmanager
def ffmpeg_stdin(cmd: list[str], out: Path):
    """Run an ffmpeg command that reads raw frames on stdin; yield send(frame_uint8).

    On normal exit wait for ffmpeg and check its exit status; on any exception (Ctrl-C included) kill it.
    Errors name `out`, the file being written."""
    with tempfile.TemporaryFile() as errors:  # a file, not a pipe: a full stderr pipe would deadlock us
        proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.DEVNULL, stderr=errors,
                                **own_process_group())

        def send(frame: np.ndarray) -> None:
            try:
                proc.stdin.write(np.ascontiguousarray(frame).tobytes())
            except BrokenPipeError:
                raise ffmpeg_failed(proc.wait(), errors, out) from None

        try:
            yield send
            with contextlib.suppress(BrokenPipeError):  # ffmpeg already gone: its exit status says why
                proc.stdin.close()
            code = proc.wait()
        except BaseException:
            kill_ffmpeg(proc)
            raise
        if code != 0:
            raise ffmpeg_failed(code, errors, out)


def own_process_group() -> dict:
    """Start ffmpeg outside our process group so Ctrl-C reaches only us; we then kill it ourselves."""
    if os.name == "nt":
        return {"creationflags": subprocess.CREATE_NEW_PROCESS_GROUP}
    return {"start_new_session": True}


def kill_ffmpeg(proc: subprocess.Popen) -> None:
    with contextlib.suppress(OSError):
        proc.stdin.close()
    if proc.poll() is None:
        proc.kill()
    proc.wait()


def ffmpeg_failed(code: int, errors, out: Path) -> CliError:
    errors.seek(0)
    text = errors.read().decode("utf-8", "replace").strip()
    last = text.splitlines()[-1] if text else f"exit status {code}"
    if "No space left on device" in text:
        return disk_full(output_for(out))
    # A full disk is recognised above: guessing it here sent people to `df` for a bad setting (a negative CRF).
    return CliError(f"ffmpeg could not write {output_for(out).name}: {last}",
                    "the line above is ffmpeg's own reason (a setting or frame size it refuses); "
                    "rerun with --debug for its full message", ExitCode.FAILED, ffmpeg_log=text[-2000:])


def ffmpeg_input(path: str | os.PathLike) -> str:
    """A local file as ffmpeg's -i argument. ffmpeg reads "-" as stdin and "http:...", "concat:...",
    "pipe:..." as protocols; "file:" plus the absolute path always means this file and nothing else."""
    return "file:" + os.path.abspath(path)


def ffmpeg_exe() -> str:
    try:
        import imageio_ffmpeg
    except ImportError:
        raise CliError("imageio-ffmpeg is not installed", "pip install imageio-ffmpeg", ExitCode.FAILED) from None
    return imageio_ffmpeg.get_ffmpeg_exe()


def decode_log(path: Path, stream: str, timeout_s: int, too_slow: CliError, strict: bool = False) -> tuple[int, str]:
    """Decode one stream of a media file to nothing (`ffmpeg -map STREAM -f null`): ffmpeg's exit code and
    log, which name the stream and count what was decoded. The bundled ffmpeg has no ffprobe. `strict`: the
    first damaged packet fails the run (-xerror), where ffmpeg would otherwise skip it and exit 0."""
    cmd = [ffmpeg_exe(), "-hide_banner", "-nostdin", *(["-xerror"] if strict else []), "-i", ffmpeg_input(path),
           "-map", stream, "-f", "null", "-"]
    try:
        result = subprocess.run(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, timeout=timeout_s)
    except subprocess.TimeoutExpired:
        raise too_slow from None
    return result.returncode, result.stderr.decode("utf-8", "replace")


def decodes_to_end(path: Path) -> bool:
    """Whether a video's first video stream decodes to its end without a damaged packet (a file cut short, or
    damaged, fails; ffmpeg's frame reader would end quietly at the damage)."""
    too_slow = CliError(f"reading {path} took over 10 minutes", "is it a very long video? trim it first")
    return decode_log(path, "0:v:0", 600, too_slow, strict=True)[0] == 0


def probe_video(path: str | os.PathLike) -> dict:
    """Facts about a video's first video stream: frames (exact: counted by decoding), fps, width,
    height, duration (frames / fps), codec, pix_fmt, and the title/comment tags when present.

    Read from the log of decoding it to nothing (decode_log).
    """
    path = _existing_video(path)
    code, log_text = decode_log(path, "0:v:0", 600, CliError(f"reading {path} took over 10 minutes",
                                                              "is it a very long video? trim it first"))
    if code != 0:
        raise _not_a_video(path, log_text)
    info = _parse_stream(path, log_text)
    frames = re.findall(r"frame=\s*(\d+)", log_text)
    info["frames"] = int(frames[-1]) if frames else 0
    info["duration"] = round(info["frames"] / info["fps"], 4) if info["fps"] else None
    info.update(_parse_tags(log_text))
    return info


def _existing_video(path: str | os.PathLike) -> Path:
    return regular_file(path, "video")


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
    size = re.search(r"(?<![\w#])(?!0x)(\d{1,5})x(\d{1,5})\b", description)  # not a codec tag "0x3163..."
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
    frames = frame_list(frames)
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
