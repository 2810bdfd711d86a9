import json
import struct
import subprocess
import sys
import zlib
from fractions import Fraction
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "scripts"))

import numpy as np  # noqa: E402
import pytest  # noqa: E402
from PIL import Image, ImageCms  # noqa: E402
from producer.cli import CliError, ExitCode  # noqa: E402
from producer.files import media, video  # noqa: E402

RED, GREEN, BLUE, WHITE = (255, 0, 0), (0, 255, 0), (0, 0, 255), (255, 255, 255)


def close(pixel, expected, tol=6):
    return all(abs(int(p) - int(e)) <= tol for p, e in zip(pixel, expected))


def png_bytes(width, height, bit_depth, color_type, raw_rows: bytes | None = None) -> bytes:
    """A PNG built by hand, for what Pillow cannot write (16-bit RGB) or must not allocate (a bomb)."""
    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", width, height, bit_depth, color_type, 0, 0, 0)
    data = zlib.compress(raw_rows if raw_rows is not None else b"\x00")
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", data) + chunk(b"IEND", b"")


def no_temp_files(folder: Path) -> bool:
    return not [p for p in folder.iterdir() if ".partial-" in p.name]


# ================================================================ load_image


def test_rgba_is_composited_on_white(tmp_path):
    img = Image.new("RGBA", (8, 8), (255, 0, 0, 128))
    img.putpixel((0, 0), (0, 0, 255, 0))
    img.save(tmp_path / "a.png")
    out = media.load_image(tmp_path / "a.png")
    assert out.mode == "RGB" and out.size == (8, 8)
    assert close(out.getpixel((4, 4)), (255, 127, 127), 2)  # half-transparent red over white
    assert out.getpixel((0, 0)) == WHITE  # fully transparent: the background, not the hidden blue
    assert any("composited" in n for n in out.info["producer_notes"])


def test_background_colour_can_be_chosen(tmp_path):
    Image.new("RGBA", (4, 4), (0, 0, 0, 0)).save(tmp_path / "a.png")
    assert media.load_image(tmp_path / "a.png", background=(128, 128, 128)).getpixel((1, 1)) == (128, 128, 128)


def test_opaque_alpha_is_just_dropped(tmp_path):
    Image.new("RGBA", (4, 4), (10, 20, 30, 255)).save(tmp_path / "a.png")
    out = media.load_image(tmp_path / "a.png")
    assert out.getpixel((0, 0)) == (10, 20, 30) and out.info["producer_notes"] == []


def test_la_image(tmp_path):
    img = Image.new("LA", (4, 4), (0, 255))
    img.putpixel((0, 0), (0, 0))
    img.save(tmp_path / "a.png")
    out = media.load_image(tmp_path / "a.png")
    assert out.getpixel((1, 1)) == (0, 0, 0) and out.getpixel((0, 0)) == WHITE


def test_palette_with_transparency(tmp_path):
    img = Image.new("P", (4, 4), 1)
    img.putpalette([255, 0, 255, 0, 255, 0] + [0] * 762)
    img.putpixel((0, 0), 0)
    img.save(tmp_path / "a.png", transparency=0)
    assert Image.open(tmp_path / "a.png").mode == "P"
    out = media.load_image(tmp_path / "a.png")
    assert out.getpixel((0, 0)) == WHITE and out.getpixel((2, 2)) == GREEN


def test_16_bit_greyscale_is_scaled_not_clipped(tmp_path):
    values = np.array([[0, 257 * 100, 60000, 65535]], dtype=np.uint16)
    Image.fromarray(values).save(tmp_path / "g16.png")
    assert Image.open(tmp_path / "g16.png").mode.startswith("I")
    out = np.asarray(media.load_image(tmp_path / "g16.png"))
    assert out[0, :, 0].tolist() == [0, 100, 233, 255]  # 60000 / 257 = 233.5, not clipped to 255


def test_16_bit_rgb_png(tmp_path):
    row = b"\x00" + struct.pack(">HHH", 65535, 128 * 257, 257) * 2
    (tmp_path / "rgb16.png").write_bytes(png_bytes(2, 1, 16, 2, row))
    out = media.load_image(tmp_path / "rgb16.png")
    assert close(out.getpixel((0, 0)), (255, 128, 1), 1)


def test_cmyk_jpeg_adobe_inverted(tmp_path):
    Image.new("CMYK", (16, 16), (0, 255, 255, 0)).save(tmp_path / "c.jpg", quality=95)
    assert "adobe" in Image.open(tmp_path / "c.jpg").info  # Pillow writes Adobe (inverted) CMYK
    out = media.load_image(tmp_path / "c.jpg")
    assert out.mode == "RGB" and close(out.getpixel((8, 8)), RED, 8)
    assert any("CMYK" in n for n in out.info["producer_notes"])


def test_exif_orientation_is_applied(tmp_path):
    img = Image.new("RGB", (40, 20), RED)
    img.paste(BLUE, (20, 0, 40, 20))  # stored: red left, blue right
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 degrees clockwise to display"
    img.save(tmp_path / "o.jpg", exif=exif, quality=95)
    out = media.load_image(tmp_path / "o.jpg")
    assert out.size == (20, 40)
    assert close(out.getpixel((10, 5)), RED, 12) and close(out.getpixel((10, 35)), BLUE, 12)


def test_greyscale_becomes_rgb(tmp_path):
    Image.new("L", (4, 4), 77).save(tmp_path / "l.png")
    Image.new("1", (4, 4), 1).save(tmp_path / "b.png")
    assert media.load_image(tmp_path / "l.png").getpixel((0, 0)) == (77, 77, 77)
    assert media.load_image(tmp_path / "b.png").getpixel((0, 0)) == WHITE


@pytest.mark.parametrize("suffix", [".gif", ".webp"])
def test_animation_gives_the_first_frame_and_says_so(tmp_path, suffix):
    frames = [Image.new("RGB", (8, 8), RED), Image.new("RGB", (8, 8), BLUE)]
    frames[0].save(tmp_path / f"a{suffix}", save_all=True, append_images=frames[1:], duration=100, loop=0,
                   **({"lossless": True} if suffix == ".webp" else {}))
    out = media.load_image(tmp_path / f"a{suffix}")
    assert close(out.getpixel((4, 4)), RED, 4)
    assert any("animated image with 2 frames" in n for n in out.info["producer_notes"])


def test_srgb_profile_leaves_colours_alone(tmp_path):
    srgb = ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes()
    Image.new("RGB", (4, 4), (200, 100, 50)).save(tmp_path / "p.png", icc_profile=srgb)
    out = media.load_image(tmp_path / "p.png")
    assert close(out.getpixel((0, 0)), (200, 100, 50), 1) and out.info["producer_notes"] == []


def test_result_is_detached_from_the_file(tmp_path):
    Image.new("RGB", (4, 4), RED).save(tmp_path / "a.png")
    out = media.load_image(tmp_path / "a.png")
    (tmp_path / "a.png").unlink()
    assert out.getpixel((0, 0)) == RED


def test_bomb_declared_in_the_header_is_refused_before_decoding(tmp_path):
    (tmp_path / "bomb.png").write_bytes(png_bytes(100_000, 100_000, 8, 2))  # 10 gigapixels declared
    with pytest.raises(CliError, match="refusing to decode"):
        media.load_image(tmp_path / "bomb.png")
    (tmp_path / "big.png").write_bytes(png_bytes(10_000, 7_000, 8, 2))  # 70 MP: under Pillow's limit, over ours
    with pytest.raises(CliError, match=r"10000x7000 \(70 MP\), over the 64 MP limit"):
        media.load_image(tmp_path / "big.png")


def test_max_pixels_is_honoured(tmp_path):
    Image.new("RGB", (20, 20)).save(tmp_path / "a.png")
    with pytest.raises(CliError, match="over the"):
        media.load_image(tmp_path / "a.png", max_pixels=100)


def test_unreadable_inputs_are_cli_errors(tmp_path):
    (tmp_path / "notes.txt").write_text("not an image")
    (tmp_path / "clip.mp4").write_bytes(b"\x00" * 64)
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 255, (64, 64, 3), dtype=np.uint8)).save(tmp_path / "full.png")
    data = (tmp_path / "full.png").read_bytes()
    (tmp_path / "cut.png").write_bytes(data[: len(data) // 2])
    cases = {"missing.png": "does not exist", "notes.txt": "not an image", "clip.mp4": "not an image",
             "cut.png": "damaged or truncated", ".": "is a directory"}
    for name, expected in cases.items():
        with pytest.raises(CliError) as info:
            media.load_image(tmp_path / name)
        assert expected in info.value.message and str(tmp_path) in info.value.message
        assert info.value.fix and info.value.code == ExitCode.USAGE
    with pytest.raises(CliError) as info:
        media.load_image(tmp_path / "clip.mp4")
    assert "extract a frame" in info.value.fix


# ================================================================ sizes


def test_crop_covers_then_keeps_the_centre():
    img = Image.new("RGB", (200, 100), RED)
    img.paste(GREEN, (50, 0, 150, 100))  # the middle half is green
    out = media.fit_image(img, 96, 96, "crop")
    assert out.size == (96, 96)
    for xy in [(0, 0), (95, 95), (48, 48), (2, 50), (93, 50)]:
        assert close(out.getpixel(xy), GREEN, 10), xy


def test_crop_of_a_portrait_image_keeps_the_vertical_middle():
    img = Image.new("RGB", (100, 400), RED)
    img.paste(BLUE, (0, 150, 100, 250))
    out = media.fit_image(img, 160, 160, "crop")  # upscales 1.6x, keeps rows 150..250
    assert out.size == (160, 160) and close(out.getpixel((80, 80)), BLUE, 10)
    assert close(out.getpixel((80, 3)), BLUE, 10) and close(out.getpixel((80, 156)), BLUE, 10)


def test_pad_fits_then_centres_with_bars():
    img = Image.new("RGB", (200, 100), GREEN)
    out = media.fit_image(img, 96, 96, "pad", pad_color="black")
    assert out.size == (96, 96)
    assert out.getpixel((48, 10)) == (0, 0, 0) and out.getpixel((48, 85)) == (0, 0, 0)  # bars, 24 rows each
    assert close(out.getpixel((48, 48)), GREEN, 2) and close(out.getpixel((0, 30)), GREEN, 2)


def test_pad_uses_the_edge_colour_by_default():
    img = Image.new("RGB", (200, 100), (30, 60, 90))
    img.paste(WHITE, (80, 30, 120, 70))  # an interior detail must not tint the bars
    out = media.fit_image(img, 96, 96, "pad")
    assert close(out.getpixel((48, 2)), (30, 60, 90), 1)


def test_fit_checks_the_multiple_and_mode():
    img = Image.new("RGB", (64, 64))
    with pytest.raises(CliError, match="not a multiple of 16") as info:
        media.fit_image(img, 100, 64)
    assert "use 96x64" in info.value.fix
    with pytest.raises(ValueError):
        media.fit_image(img, 64, 64 + 16, "stretch")
    assert media.fit_image(img, 64, 64).size == (64, 64)


@pytest.mark.parametrize("size, expected, changed", [
    ((832, 480), (832, 480), False),
    ((1080, 1920), (1088, 1920), True),
    ((1000, 562), (1008, 560), True),
    ((5, 5), (16, 16), True),
])
def test_snap_size(size, expected, changed):
    snapped = media.snap_size(*size)
    assert (snapped.width, snapped.height) == expected
    assert bool(snapped.note) == changed
    if changed:
        assert f"{size[0]}x{size[1]}" in snapped.note and f"{expected[0]}x{expected[1]}" in snapped.note


@pytest.mark.parametrize("preset, image, expected", [
    ((832, 480), (1920, 1080), (832, 480)),
    ((832, 480), (1080, 1920), (480, 832)),
    ((832, 480), (1024, 1024), (480, 480)),
    ((832, 480), (1000, 900), (480, 480)),  # near square: a square crops the least
    ((832, 480), (1600, 1200), (832, 480)),  # 4:3 is closer to the landscape preset
    ((480, 832), (1920, 1080), (832, 480)),  # a preset given as portrait is normalised
    ((1280, 720), (720, 1280), (720, 1280)),
    ((850, 490), (512, 512), (496, 496)),  # snapped to 16
])
def test_orient_preset(preset, image, expected):
    assert media.orient_preset(preset, image) == expected


# ================================================================ PNG metadata


def test_png_metadata_round_trip(tmp_path):
    meta = {"prompt": "a samurai — 桜 under cherry blossoms", "seed": 42, "model": "qwen-image-edit-2511",
            "revision": "abc123", "settings": {"steps": 4, "cfg": 1.0}, "path": tmp_path}
    path = media.save_png(Image.new("RGB", (8, 8), RED), tmp_path / "k.png", meta)
    back = media.read_png_metadata(path)
    assert back == {**meta, "path": str(tmp_path)}
    assert media.load_image(path).getpixel((0, 0)) == RED
    assert no_temp_files(tmp_path)


def test_png_without_metadata_and_other_formats_give_none(tmp_path):
    Image.new("RGB", (4, 4)).save(tmp_path / "plain.png")
    Image.new("RGB", (4, 4)).save(tmp_path / "x.jpg")
    assert media.read_png_metadata(tmp_path / "plain.png") is None
    assert media.read_png_metadata(tmp_path / "x.jpg") is None


def test_failed_png_write_leaves_nothing(tmp_path, monkeypatch):
    def explode(self, fp, *args, **kwargs):
        Path(fp).write_bytes(b"\x89PNG partial")
        raise RuntimeError("disk went away")

    monkeypatch.setattr(Image.Image, "save", explode)
    with pytest.raises(RuntimeError):
        media.save_png(Image.new("RGB", (4, 4)), tmp_path / "k.png", {"seed": 1})
    assert list(tmp_path.iterdir()) == []


def test_save_png_needs_the_folder(tmp_path):
    with pytest.raises(CliError, match="does not exist"):
        media.save_png(Image.new("RGB", (4, 4)), tmp_path / "no" / "k.png", {})


# ================================================================ MP4


def gradient_frames(n=9, width=64, height=48):
    """Smooth moving gradients: compress well, so decoded pixels stay close to the originals."""
    y, x = np.mgrid[0:height, 0:width].astype(np.float64)
    return [np.stack([(x / width + i / n) % 1.0, y / height, np.full_like(x, 0.5)], axis=-1) for i in range(n)]


def test_mp4_round_trip(tmp_path):
    floats = gradient_frames()
    frames = [floats[0], Image.fromarray(video.frame_to_uint8(floats[1]))] + [video.frame_to_uint8(f) for f in floats[2:]]
    comment = json.dumps({"seed": 7, "prompt": "a cat, slow pan"})
    written = video.write_mp4(frames, tmp_path / "clip.mp4", fps=16, comment=comment, title="scene 1")
    assert (written.frames, written.width, written.height, written.fps) == (9, 64, 48, 16.0)

    info = video.probe_video(tmp_path / "clip.mp4")
    assert info["frames"] == 9 and info["fps"] == 16.0
    assert (info["width"], info["height"]) == (64, 48)
    assert info["codec"] == "h264" and info["pix_fmt"] == "yuv420p"
    assert info["duration"] == pytest.approx(9 / 16)
    assert json.loads(info["comment"]) == {"seed": 7, "prompt": "a cat, slow pan"} and info["title"] == "scene 1"

    decoded, fps = video.read_video(tmp_path / "clip.mp4")
    assert decoded.shape == (9, 48, 64, 3) and decoded.dtype == np.uint8 and fps == 16.0
    original = np.stack([video.frame_to_uint8(f) for f in floats]).astype(int)
    # BT.709 tags round-trip: only compression error remains (no 601/709 colour shift)
    assert np.abs(decoded.astype(int) - original).mean() < 3
    assert video.read_video(tmp_path / "clip.mp4", max_frames=4)[0].shape[0] == 4
    assert no_temp_files(tmp_path)


def test_mp4_from_an_array_at_a_fractional_rate(tmp_path):
    frames = np.stack([video.frame_to_uint8(f) for f in gradient_frames(5)])
    video.write_mp4(frames, tmp_path / "ntsc.mp4", fps=Fraction(24000, 1001))
    info = video.probe_video(tmp_path / "ntsc.mp4")
    assert info["frames"] == 5 and info["fps"] == pytest.approx(23.98, abs=0.01)


def test_mp4_needs_even_sizes_and_frames(tmp_path):
    with pytest.raises(CliError, match="63x48.*even width and height"):
        video.write_mp4([np.zeros((48, 63, 3), np.uint8)], tmp_path / "odd.mp4")
    with pytest.raises(CliError, match="no frames"):
        video.write_mp4([], tmp_path / "empty.mp4")
    with pytest.raises(ValueError, match=r"float frames must be in \[0, 1\]"):
        video.write_mp4([np.full((48, 64, 3), -1.0)], tmp_path / "neg.mp4")
    with pytest.raises(ValueError, match="frame 1 is 32x32"):
        video.write_mp4([np.zeros((48, 64, 3), np.uint8), np.zeros((32, 32, 3), np.uint8)], tmp_path / "mixed.mp4")
    assert list(tmp_path.iterdir()) == []


class RecordingPopen(subprocess.Popen):
    started: list = []

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        RecordingPopen.started.append(self)


@pytest.mark.parametrize("failure", [RuntimeError, KeyboardInterrupt])
def test_failed_mp4_write_leaves_no_file_and_no_ffmpeg(tmp_path, monkeypatch, failure):
    video.ffmpeg_exe()  # imageio_ffmpeg checks the binary once a process (`ffmpeg -version`): not the encoder
    RecordingPopen.started = []
    monkeypatch.setattr(video.subprocess, "Popen", RecordingPopen)
    good = [video.frame_to_uint8(f) for f in gradient_frames(3)]

    def frames():
        yield from good
        raise failure("generation died mid-clip")

    with pytest.raises(failure):
        video.write_mp4(frames(), tmp_path / "clip.mp4")
    assert list(tmp_path.iterdir()) == []
    (proc,) = RecordingPopen.started
    assert proc.poll() is not None  # ffmpeg was stopped, not left running


def test_ffmpeg_failure_is_reported(tmp_path):
    with pytest.raises(CliError) as info:
        video.write_mp4([np.zeros((48, 64, 3), np.uint8)], tmp_path / "clip.mp4", preset="no-such-preset")
    assert "ffmpeg could not write" in info.value.message and info.value.code == ExitCode.FAILED
    assert list(tmp_path.iterdir()) == []


def test_probe_and_read_refuse_non_videos(tmp_path):
    (tmp_path / "x.mp4").write_text("not a video")
    for call in (video.probe_video, video.read_video):
        with pytest.raises(CliError, match="not a video"):
            call(tmp_path / "x.mp4")
        with pytest.raises(CliError, match="does not exist"):
            call(tmp_path / "missing.mp4")


# ================================================================ contact sheet


def test_contact_sheet_layout_and_frame_choice():
    frames = [np.full((48, 64, 3), i * 10, np.uint8) for i in range(17)]
    sheet = video.contact_sheet(frames, n=8, columns=4, labels=None)
    assert sheet.size == (4 * 64 + 5 * 4, 2 * 48 + 3 * 4)
    # evenly spaced, first and last included: tile 0 is frame 0, tile 7 (bottom right) is frame 16
    assert sheet.getpixel((4 + 32, 4 + 24)) == (0, 0, 0)
    assert sheet.getpixel((4 + 3 * 68 + 32, 4 + 52 + 24)) == (160, 160, 160)


def test_contact_sheet_labels_and_title():
    frames = np.zeros((9, 48, 64, 3), np.uint8)
    labelled = video.contact_sheet(frames, n=4, columns=2, labels="both", fps=16, title="clip.mp4")
    assert labelled.size == (2 * 64 + 3 * 4, 18 + 2 * 48 + 3 * 4)
    assert np.asarray(labelled)[18:30, 4:40].max() > 150  # light (antialiased) label text on the first tile
    assert video.contact_sheet(frames, n=20, columns=4).size[0] == 4 * 64 + 5 * 4  # n capped at the clip
    with pytest.raises(ValueError, match="needs fps"):
        video.contact_sheet(frames, labels="time")
    with pytest.raises(ValueError, match="3 labels for 4 tiles"):
        video.contact_sheet(frames, n=4, labels=["a", "b", "c"])
