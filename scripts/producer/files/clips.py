"""Video clips and audio files as the assembler needs them: one decoding pass per clip that keeps only
what planning needs (frame count, rate, size, first and last frame), frame streams that never hold a
clip in memory, an audio probe, and the encoder that writes the film.

All of it runs the ffmpeg binary bundled by imageio-ffmpeg (no system ffmpeg, no ffprobe).
"""

from __future__ import annotations

import contextlib
import math
import re
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import Iterator

import numpy as np
from PIL import Image

from producer.errors import CliError, ExitCode, missing
from producer.files.inputs import regular_file
from producer.files.video import decode_log, decodes_to_end, ffmpeg_exe, ffmpeg_input, ffmpeg_stdin

# Rates within 1% are one rate: containers round 16 fps to 15.99 or 16.01 now and then.
FPS_TOLERANCE = 0.01


@dataclass
class ClipInfo:
    path: Path
    frames: int
    fps: float
    width: int
    height: int
    first: np.ndarray  # H x W x 3 uint8
    last: np.ndarray


def scan_clip(path: str | Path) -> ClipInfo:
    """Decode a clip once, keeping its count, rate, size and its first and last frames (not the rest)."""
    path = Path(path)
    first = last = None
    count = 0
    with _frames(path) as (meta, frames):
        for frame in frames:
            first = frame if first is None else first
            last = frame
            count += 1
    if first is None:
        raise CliError(f"clip {path} has no frames", "re-render it (wan_video.py) or leave it out")
    _refuse_cut_short(path, count, meta)
    width, height = meta["size"]
    return ClipInfo(path, count, float(meta["fps"]), width, height, first, last)


def _refuse_cut_short(path: Path, count: int, meta: dict) -> None:
    """A clip whose frames end before the duration its header gives is decoded once more, stopping at the first
    damaged packet: the frame reader ends quietly there, so a file cut short (a copy or download that stopped,
    its index at the front) would go into the film with its last frames missing."""
    duration, fps = meta.get("duration"), float(meta.get("fps") or 0)
    if not isinstance(duration, (int, float)) or not math.isfinite(duration) or count >= round(duration * fps):
        return  # a clip of other streams longer than its video is whole: only the strict decode below fails
    if not decodes_to_end(path):
        raise CliError(f"clip {path} is damaged or cut short: {count} frames could be read, but its header says "
                       f"{duration:g} s ({round(duration * fps)} frames)",
                       "re-render it (wan_video.py --overwrite), or copy or download it again")


def iter_clip(path: Path, size: tuple[int, int] | None = None) -> Iterator[np.ndarray]:
    """A clip's frames one at a time, letterboxed to `size` when it differs (see conform)."""
    with _frames(path) as (meta, frames):
        for frame in frames:
            yield frame if size is None or frame.shape[1::-1] == tuple(size) else conform(frame, size)


@contextlib.contextmanager
def _frames(path: Path):
    """(metadata, iterator of H x W x 3 uint8 frames), with unreadable files turned into CliError."""
    import imageio_ffmpeg

    if not path.exists() and not path.is_symlink():
        raise CliError(f"clip {path} {missing(path)}", "generate it first (wan_video.py), or check the path (ls it)")
    regular_file(path, "clip")
    reader = imageio_ffmpeg.read_frames(ffmpeg_input(path), pix_fmt="rgb24")
    try:
        try:
            meta = next(reader)
        except (OSError, RuntimeError, IndexError, AttributeError, StopIteration) as exc:
            raise _unreadable(path, str(exc)) from None
        width, height = meta["size"]

        def frames() -> Iterator[np.ndarray]:
            try:
                for raw in reader:
                    yield np.frombuffer(raw, np.uint8).reshape(height, width, 3)
            except (OSError, RuntimeError) as exc:  # ffmpeg stopped in the middle: a truncated or damaged file
                raise _unreadable(path, str(exc)) from None

        yield meta, frames()
    finally:
        reader.close()  # stops ffmpeg if we leave early


def _unreadable(path: Path, detail: str) -> CliError:
    """ffmpeg's log, read for the reason a person can act on."""
    if "does not contain any stream" in detail or "matches no streams" in detail:
        reason = "it has no video track"
    elif "Invalid data found" in detail:
        reason = "it is not a video file, or it is damaged"
    elif "Nothing was written" in detail or "moov atom not found" in detail:
        reason = "it is damaged or cut short"
    else:
        lines = [line for line in detail.strip().splitlines() if line.strip()]
        reason = lines[-1][:200] if lines else "no detail"
    return CliError(f"clip {path} is not a video ffmpeg can read: {reason}",
                    "re-render it with wan_video.py, or re-download it; a file cut short cannot be read")


def conform(frame: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Fit a frame inside size (W, H) keeping its aspect (Lanczos) and centre it on black: letterbox
    or pillarbox, never crop, so nothing the scene shows is lost."""
    width, height = size
    h, w = frame.shape[:2]
    scale = min(width / w, height / h)
    new = (max(1, round(w * scale)), max(1, round(h * scale)))
    scaled = Image.fromarray(frame).resize(new, Image.Resampling.LANCZOS)
    canvas = Image.new("RGB", (width, height), (0, 0, 0))
    canvas.paste(scaled, ((width - new[0]) // 2, (height - new[1]) // 2))
    return np.asarray(canvas)


def same_fps(a: float, b: float) -> bool:
    return abs(a - b) <= FPS_TOLERANCE * max(a, b)


# ================================================================ audio


@dataclass
class AudioInfo:
    path: Path
    seconds: float
    codec: str
    sample_rate: int | None
    channels: str | None


def probe_audio(path: str | Path) -> AudioInfo:
    """Decode the first audio stream to nowhere and read its exact length from ffmpeg's log."""
    path = regular_file(path, "audio")
    code, text = decode_log(path, "0:a:0", 300, CliError(f"reading audio {path} took over 5 minutes",
                                                          "trim it to the film's length first"))
    stream = re.search(r"Stream #\S+.*?: Audio: ([^,\s]+)[^,]*(?:, (\d+) Hz)?(?:, ([^,]+))?", text)
    times = re.findall(r"time=(\d+):(\d+):(\d+(?:\.\d+)?)", text)
    if code == 0 and stream is not None and not times and "time=N/A" in text:  # a track with no samples
        raise CliError(f"audio {path} is empty (its audio track has no sound in it)", "give an audio file with sound in it")
    if code != 0 or stream is None or not times:
        last = [line for line in text.strip().splitlines() if line.strip()]
        reason = "it has no audio track" if "matches no streams" in text else (last[-1] if last else "no output")
        raise CliError(f"audio {path} cannot be read: {reason}",
                       "give an audio file ffmpeg reads (WAV, MP3, AAC/M4A, FLAC, OGG), or leave out --audio")
    h, m, s = times[-1]
    seconds = int(h) * 3600 + int(m) * 60 + float(s)
    if seconds <= 0:
        raise CliError(f"audio {path} is empty (0 seconds)", "give an audio file with sound in it")
    return AudioInfo(path, seconds, stream.group(1), int(stream.group(2)) if stream.group(2) else None,
                     stream.group(3))


def audio_filter(audio_seconds: float, film_seconds: float, fade_out: float) -> tuple[str, dict]:
    """The ffmpeg audio filter and a report of what it does.

    Longer audio is cut at the film's end with a fade-out of `fade_out` seconds (so it does not stop
    mid-note); shorter audio plays once from the start and the rest of the film is silence (no loop:
    a loop would restart mid-film at a point nobody chose). Audio always starts with the film.
    """
    report = {"audio_seconds": round(audio_seconds, 3), "film_seconds": round(film_seconds, 3)}
    parts = [f"apad=whole_dur={film_seconds:.6f}", f"atrim=duration={film_seconds:.6f}"]
    if audio_seconds > film_seconds + 1e-3:
        fade = min(fade_out, film_seconds)
        report.update(handling="trimmed", trimmed_seconds=round(audio_seconds - film_seconds, 3),
                      fade_out_seconds=round(fade, 3))
        if fade > 0:
            parts.append(f"afade=t=out:st={film_seconds - fade:.6f}:d={fade:.6f}")
    elif audio_seconds < film_seconds - 1e-3:
        report.update(handling="padded", silence_seconds=round(film_seconds - audio_seconds, 3))
    else:
        report.update(handling="as is")
    return ",".join(parts), report


# ================================================================ encoding the film


@dataclass
class EncodeSettings:
    width: int
    height: int
    fps: float  # the rate frames are sent at
    seconds: float  # the film's length: frames / fps
    out_fps: int | None = None  # motion-interpolated output rate, or None
    out_size: tuple[int, int] | None = None  # Lanczos-scaled output size, or None
    audio: Path | None = None
    audio_filter: str | None = None
    crf: int = 18
    preset: str = "medium"
    title: str | None = None


MINTERPOLATE = "minterpolate=fps={fps}:mi_mode=mci:mc_mode=aobmc:me_mode=bidir:vsbmc=1"
# minterpolate needs frames after the one it makes and stops about two source frames early at the end
# of a stream; cloning the last frame 4 times and trimming to the film's length keeps the duration
# (ceil(seconds x fps) frames out), so the audio still ends with the picture.
END_PAD = "tpad=stop_mode=clone:stop=4"


def video_filter(s: EncodeSettings) -> str:
    """Interpolation first (at the source size: cheaper, and the motion search sees real pixels), then
    Lanczos scaling letterboxed into out_size, then the BT.709 tagging write_mp4 also uses."""
    parts = []
    if s.out_fps:
        parts += [END_PAD, MINTERPOLATE.format(fps=s.out_fps), f"trim=duration={s.seconds:.6f}"]
    if s.out_size:
        w, h = s.out_size
        parts.append(f"scale={w}:{h}:flags=lanczos:force_original_aspect_ratio=decrease")
        parts.append(f"pad={w}:{h}:(ow-iw)/2:(oh-ih)/2:black")
    parts.append("scale=out_color_matrix=bt709:out_range=tv,format=yuv420p,"
                 "setparams=color_primaries=bt709:color_trc=bt709:colorspace=bt709:range=tv")
    return ",".join(parts)


def encoder_command(s: EncodeSettings, out: Path) -> list[str]:
    rate = Fraction(s.fps).limit_denominator(1001)
    cmd = [ffmpeg_exe(), "-hide_banner", "-nostats", "-loglevel", "error", "-y",
           "-f", "rawvideo", "-pix_fmt", "rgb24", "-s", f"{s.width}x{s.height}", "-r", str(rate), "-i", "-"]
    if s.audio is not None:
        cmd += ["-i", ffmpeg_input(s.audio)]
    cmd += ["-map", "0:v:0", "-vf", video_filter(s), "-c:v", "libx264", "-preset", s.preset, "-crf", str(s.crf)]
    if s.audio is not None:
        cmd += ["-map", "1:a:0", "-af", s.audio_filter, "-c:a", "aac", "-b:a", "192k"]
    if s.title:
        cmd += ["-metadata", f"title={s.title}"]
    return cmd + ["-movflags", "+faststart", "-f", "mp4", str(out)]


def encode_film(frames: Iterator[np.ndarray], settings: EncodeSettings, out: Path) -> int:
    """Pipe frames into ffmpeg as they come (nothing is collected) and wait for it; returns the count
    sent. On any error or interruption ffmpeg is killed; the caller's atomic_output removes the file."""
    count = 0
    with ffmpeg_stdin(encoder_command(settings, out), out) as send:
        for frame in frames:
            send(frame)
            count += 1
    if count == 0:
        raise CliError("no frames to encode", "give at least one clip with frames", ExitCode.USAGE)
    return count
