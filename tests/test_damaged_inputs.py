"""Damaged pictures, files that are not regular files, and file names that are not UTF-8: each ends in
a clear error naming the file (exit 2), in a batch fails only its own job, and never blocks or crashes
after the generation. The damaged pictures are made here, byte by byte, as described beside each."""

import contextlib
import faulthandler
import io
import json
import os
import shutil
import struct
import sys
import threading
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from producer.cli import CliError, ExitCode
from producer.commands import production
from producer.commands.demo import SAMPLE
from producer.files import media, provenance
from producer.makers import assemble_video, qwen_image, wan_video
from producer.testing import standin_loras

# ---------------------------------------------------------------- the damaged pictures


def _chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def _png(extra: bytes = b"", after_pixels: bool = False) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (16, 16), (200, 60, 40)).save(buffer, "PNG")
    raw = buffer.getvalue()
    at = raw.index(b"IEND" if after_pixels else b"IDAT") - 4  # the chunk's length field comes first
    return raw[:at] + extra + raw[at:]


def _two_page_tiff(page2: dict[int, int | None]) -> bytes:
    """A two-page TIFF whose second page has the given tags changed (a value) or removed (None)."""
    buffer = io.BytesIO()
    Image.new("RGB", (8, 8), (10, 200, 10)).save(
        buffer, "TIFF", save_all=True, append_images=[Image.new("RGB", (8, 8), (200, 10, 10))]
    )
    data = bytearray(buffer.getvalue())
    assert data[:2] == b"II"
    first = struct.unpack_from("<I", data, 4)[0]
    count = struct.unpack_from("<H", data, first)[0]
    second = struct.unpack_from("<I", data, first + 2 + 12 * count)[0]
    count = struct.unpack_from("<H", data, second)[0]
    for i in range(count):
        at = second + 2 + 12 * i
        tag = struct.unpack_from("<H", data, at)[0]
        if tag in page2:
            if page2[tag] is None:
                struct.pack_into("<H", data, at, 65000)  # an unknown private tag: the original is gone
            else:
                struct.pack_into("<I", data, at + 8, page2[tag])  # SHORT/LONG values sit in the entry
    return bytes(data)


def damaged_pictures() -> dict[str, bytes]:
    good = _png()
    idat = good.index(b"IDAT")
    ihdr = struct.pack(">IIBBBBB", 100_000, 100_000, 8, 2, 0, 0, 0)  # declares 10 gigapixels
    return {
        "truncated.png": good[: len(good) // 2],  # stops inside the pixel data
        "bad-crc.png": good[: idat + 8] + bytes([good[idat + 8] ^ 0xFF]) + good[idat + 9 :],  # one pixel byte flipped
        "bad-ztxt.png": _png(_chunk(b"zTXt", b"producer\x00\x00" + b"not zlib data")),
        "bad-itxt-after-pixels.png": _png(_chunk(b"iTXt", b"producer\x00\x01\x00\x00\x00not zlib"), True),
        "tiff-unknown-mode-on-page-2.tif": _two_page_tiff({262: 99}),  # PhotometricInterpretation 99
        "tiff-no-width-on-page-2.tif": _two_page_tiff({256: None}),  # ImageWidth removed
        "empty.png": b"",
        "text.png": b"a text file named like a picture\n",
        "bomb.png": b"\x89PNG\r\n\x1a\n"
        + _chunk(b"IHDR", ihdr)
        + _chunk(b"IDAT", zlib.compress(b""))
        + _chunk(b"IEND", b""),
    }


UNREADABLE = [
    "truncated.png",
    "bad-crc.png",
    "tiff-unknown-mode-on-page-2.tif",
    "tiff-no-width-on-page-2.tif",
    "empty.png",
    "text.png",
    "bomb.png",
]
READABLE = ["bad-ztxt.png", "bad-itxt-after-pixels.png"]  # a damaged text chunk is skipped; the pixels are fine


@pytest.fixture
def damaged(tmp_path) -> Path:
    folder = tmp_path / "damaged"
    folder.mkdir()
    for name, data in damaged_pictures().items():
        (folder / name).write_bytes(data)
    return folder


@pytest.mark.parametrize("name", UNREADABLE)
def test_every_damaged_picture_is_a_usage_error_naming_the_file(damaged, name):
    with pytest.raises(CliError) as err:
        media.load_image(damaged / name)
    assert str(damaged / name) in err.value.message and err.value.code == ExitCode.USAGE and err.value.fix


@pytest.mark.parametrize("name", READABLE)
def test_a_damaged_text_chunk_leaves_the_picture_readable(damaged, name):
    assert media.load_image(damaged / name).size == (16, 16)
    assert media.read_png_metadata(damaged / name) is None


@pytest.mark.parametrize("name", UNREADABLE + READABLE)
def test_reading_a_recipe_from_a_damaged_picture_never_crashes(damaged, name):
    try:
        assert media.read_png_metadata(damaged / name) is None
    except CliError as err:
        assert str(damaged / name) in err.message
    assert provenance.read_recipe(damaged / name) is None
    assert not provenance.is_up_to_date(damaged / name, {"prompt": "x"}, seed_given=False)


# ---------------------------------------------------------------- through the scripts


def run_script(capsys, module, *argv) -> tuple[int, dict]:
    code = module.main([str(a) for a in argv] + ["--json"])
    captured = capsys.readouterr()
    assert "Traceback" not in captured.err and "report it" not in captured.out
    return code, json.loads(captured.out.strip().splitlines()[-1])


def good_picture(path: Path) -> Path:
    Image.new("RGB", (64, 64), (120, 90, 200)).save(path)
    return path


QWEN_FAST = ["--lightning", "off", "--cfg", "1", "--steps", "2", "--size", "64x64", "--quiet"]
WAN_FAST = ["--size", "64x64", "--frames", "9", "--steps", "2", "--quiet"]


@pytest.mark.usefixtures("standin_hf_home")
def test_each_script_refuses_each_damaged_picture_naming_it(damaged, capsys):
    out = damaged.parent / "out"
    out.mkdir()
    for name in UNREADABLE:
        bad = damaged / name
        for module, argv in [
            (qwen_image, ["-p", "x", "-r", bad, "-o", out / "q.png", *QWEN_FAST]),
            (qwen_image, ["-p", "x", "--pose", bad, "-o", out / "q.png", *QWEN_FAST]),
            (wan_video, ["--start-frame", bad, "--prompt", "x", "-o", out / "w.mp4", *WAN_FAST]),
            (
                wan_video,
                [
                    "--start-frame",
                    good_picture(out.parent / "ok.png"),
                    "--end-frame",
                    bad,
                    "--prompt",
                    "x",
                    "-o",
                    out / "w.mp4",
                    *WAN_FAST,
                ],
            ),
        ]:
            code, result = run_script(capsys, module, *argv)
            assert code == ExitCode.USAGE and name in result["error"] and result["fix"], (name, argv, result)
    assert list(out.iterdir()) == []


@pytest.mark.usefixtures("standin_hf_home")
def test_a_damaged_picture_in_a_batch_fails_only_its_own_job(damaged, capsys):
    ok = good_picture(damaged.parent / "ok.png")
    jobs = [
        {"prompt": "fox", "reference": str(damaged / name), "output": f"q{i}.png"} for i, name in enumerate(UNREADABLE)
    ] + [{"prompt": "fox", "reference": str(ok), "output": "good.png"}]
    batch = damaged.parent / "stills.json"
    batch.write_text(
        json.dumps({"defaults": {"size": "64x64", "steps": 2, "cfg": 1, "lightning": "off"}, "jobs": jobs})
    )
    code, result = run_script(capsys, qwen_image, "--batch", batch, "--allow-outside", "--quiet")
    assert code == ExitCode.PARTIAL and [j["status"] for j in result["jobs"]] == ["error"] * len(UNREADABLE) + ["ok"]
    assert all(name in job["error"] for name, job in zip(UNREADABLE, result["jobs"], strict=False))

    clips = [
        {"start_frame": str(damaged / name), "prompt": "x", "output": f"w{i}.mp4"}
        for i, name in enumerate(UNREADABLE[:2])
    ] + [{"start_frame": str(ok), "prompt": "x", "output": "w.mp4"}]
    batch = damaged.parent / "clips.json"
    batch.write_text(json.dumps({"defaults": {"size": "64x64", "frames": 9, "steps": 2}, "jobs": clips}))
    code, result = run_script(capsys, wan_video, "--batch", batch, "--allow-outside", "--quiet")
    assert code == ExitCode.PARTIAL and [j["status"] for j in result["jobs"]] == ["error", "error", "ok"]


@pytest.mark.usefixtures("standin_hf_home")
def test_a_truncated_picture_at_an_output_path_is_reported_not_taken_for_finished(damaged, capsys):
    ok = good_picture(damaged.parent / "ok.png")
    target = damaged.parent / "made.png"
    target.write_bytes(damaged_pictures()["truncated.png"])
    code, result = run_script(capsys, qwen_image, "-p", "x", "-r", ok, "-o", target, *QWEN_FAST)
    assert code == ExitCode.USAGE and str(target) in result["error"] and "--overwrite" in result["fix"]
    batch = damaged.parent / "stills.json"
    batch.write_text(
        json.dumps(
            {
                "defaults": {"size": "64x64", "steps": 2, "cfg": 1, "lightning": "off"},
                "jobs": [{"prompt": "x", "reference": str(ok), "output": str(target)}],
            }
        )
    )
    code, result = run_script(capsys, qwen_image, "--batch", batch, "--quiet")
    assert code == ExitCode.USAGE and result["jobs"][0]["status"] == "error" and "overwrite" in result["jobs"][0]["fix"]
    code, result = run_script(capsys, qwen_image, "-p", "x", "-r", ok, "-o", target, "--overwrite", *QWEN_FAST)
    assert code == 0 and media.read_png_metadata(target)["script"] == "qwen_image.py"


def production_run(*argv) -> tuple[int, dict]:
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        code = production.main([*map(str, argv), "--json"])
    return code, json.loads(out.getvalue().strip().splitlines()[-1])


@pytest.fixture
def sample(tmp_path) -> Path:
    root = tmp_path / "film"
    shutil.copytree(SAMPLE, root)
    return root


@pytest.mark.parametrize("name", ["truncated.png", "bad-crc.png", "empty.png", "text.png"])
def test_status_and_next_report_a_damaged_output_and_plan_to_remake_it(sample, name):
    keeper = sample / "assets" / "characters" / "keeper.png"
    keeper.parent.mkdir(parents=True)
    keeper.write_bytes(damaged_pictures()[name])
    code, report = production_run("status", sample)
    assert code == 0
    item = next(i for i in report["items"] if i["id"] == "asset:characters/keeper")
    assert item["state"] == "stale" and "keeper.png" in " ".join(item["reasons"]), item
    assert production_run("approve", sample, "philosophy", "scenes")[0] == 0
    code, nxt = production_run("next", sample)
    assert code == 0 and nxt["action"] == "generate", nxt
    job = next(j for j in nxt["jobs"] if j["id"] == "asset:characters/keeper")
    assert "--overwrite" in job["argv"], job
    code, refused = production_run("approve", sample, "assets")
    assert code == ExitCode.USAGE and "characters/keeper (stale)" in refused["error"], refused


# ---------------------------------------------------------------- files that are not regular files


def refused_without_blocking(fifo: Path, call):
    """call() must return (or raise) without opening the FIFO for reading. If it blocks there, a writer
    opening the FIFO lets it go on (it then reads an empty file), and the test fails: it blocked."""
    result = {}

    def target():
        try:
            result["value"] = call()
        except BaseException as exc:  # noqa: BLE001 - reported below, in the test's thread
            result["raised"] = exc

    thread = threading.Thread(target=target, daemon=True)
    thread.start()
    thread.join(10)
    blocked = thread.is_alive()
    if blocked:
        faulthandler.dump_traceback(sys.__stderr__)  # where it blocked
    while thread.is_alive():
        with contextlib.suppress(OSError):  # ENXIO until a reader has the FIFO open
            os.close(os.open(fifo, os.O_WRONLY | os.O_NONBLOCK))
        thread.join(0.1)
    assert not blocked, f"{call} blocked reading {fifo}"
    if "raised" in result:
        raise result["raised"]
    return result["value"]


@pytest.fixture
def pipes(tmp_path) -> Path:
    folder = tmp_path / "pipes"
    folder.mkdir()
    for name in (
        "pic.png",
        "style.safetensors",
        "jobs.json",
        "style.json",
        "pose.json",
        "clip.mp4",
        "music.mp3",
        "scene-breakdown.md",
    ):
        os.mkfifo(folder / name)
    good_picture(tmp_path / "ok.png")
    (tmp_path / "out").mkdir()
    return folder


@pytest.mark.usefixtures("standin_hf_home")
def test_a_fifo_given_as_any_input_file_is_refused_at_once(pipes, capsys):
    ok, out = pipes.parent / "ok.png", pipes.parent / "out"
    cases = [
        (qwen_image, ["-p", "x", "-r", pipes / "pic.png", "-o", out / "q.png", *QWEN_FAST]),
        (qwen_image, ["-p", "x", "--style-image", pipes / "pic.png", "-o", out / "q.png", *QWEN_FAST]),
        (qwen_image, ["-p", "x", "--pose", pipes / "pic.png", "-o", out / "q.png", *QWEN_FAST]),
        (qwen_image, ["-p", "x", "--pose", pipes / "pose.json", "-o", out / "q.png", *QWEN_FAST]),
        (qwen_image, ["-p", "x", "--style-ref", pipes / "style.json", "-o", out / "q.png", *QWEN_FAST]),
        (qwen_image, ["-p", "x", "-r", ok, "--lora", pipes / "style.safetensors", "-o", out / "q.png", *QWEN_FAST]),
        (qwen_image, ["--batch", pipes / "jobs.json"]),
        (wan_video, ["--start-frame", pipes / "pic.png", "--prompt", "x", "-o", out / "w.mp4", *WAN_FAST]),
        (
            wan_video,
            ["--start-frame", ok, "--end-frame", pipes / "pic.png", "--prompt", "x", "-o", out / "w.mp4", *WAN_FAST],
        ),
        (
            wan_video,
            [
                "--start-frame",
                ok,
                "--prompt",
                "x",
                "--lora",
                pipes / "style.safetensors",
                "-o",
                out / "w.mp4",
                *WAN_FAST,
            ],
        ),
        (wan_video, ["--batch", pipes / "jobs.json"]),
        (assemble_video, ["--clips", pipes / "clip.mp4", "-o", out / "film.mp4"]),
    ]
    for module, argv in cases:
        fifo = next(Path(a) for a in argv if str(a).startswith(str(pipes)))
        code, result = refused_without_blocking(fifo, lambda m=module, a=argv: run_script(capsys, m, *a))
        assert code == ExitCode.USAGE and fifo.name in result["error"] and "pipe" in result["error"], (argv, result)
    assert list(out.iterdir()) == []


def test_approve_refuses_a_fifo_where_an_output_should_be(sample):
    keeper = sample / "assets" / "characters" / "keeper.png"
    keeper.parent.mkdir(parents=True)
    os.mkfifo(keeper)
    assert production_run("approve", sample, "philosophy", "scenes")[0] == 0
    for item in production_run("status", sample)[1]["items"]:
        if item["phase"] == "assets" and item["id"] != "asset:characters/keeper":
            (sample / item["output"]).parent.mkdir(parents=True, exist_ok=True)
            good_picture(sample / item["output"])
    code, result = refused_without_blocking(keeper, lambda: production_run("approve", sample, "assets"))
    assert code == ExitCode.USAGE and "keeper.png" in result["error"], result


@pytest.mark.parametrize("name", ["scene-breakdown.md", "assets.json", "style.json"])
def test_a_fifo_in_place_of_a_production_file_is_reported(sample, name):
    (sample / name).unlink()
    os.mkfifo(sample / name)
    _, result = refused_without_blocking(sample / name, lambda: production_run("check", sample))
    assert name in json.dumps(result) and "pipe" in json.dumps(result), result


@pytest.mark.parametrize("kind", ["fifo", "folder", "device"])
def test_the_picture_reader_names_what_a_non_regular_file_is(tmp_path, kind):
    path = {"fifo": tmp_path / "p.png", "folder": tmp_path, "device": Path("/dev/zero")}[kind]
    if kind == "fifo":
        os.mkfifo(path)
    with pytest.raises(
        CliError, match={"fifo": "named pipe", "folder": "directory", "device": "character device"}[kind]
    ):
        refused_without_blocking(path, lambda: media.load_image(path))


# ---------------------------------------------------------------- file names that are not UTF-8

NOT_UTF8 = os.fsdecode(b"take-\xff\xfe")  # Python holds the bytes as lone surrogates


@pytest.mark.usefixtures("standin_hf_home")
def test_names_that_are_not_utf8_go_through_every_script_and_their_recipes(tmp_path, capsys, tiny_qwen_edit_pipeline):
    folder = tmp_path / NOT_UTF8
    folder.mkdir()
    reference = good_picture(folder / f"{NOT_UTF8}.png")
    still = folder / f"{NOT_UTF8}-out.png"
    lora = folder / f"{NOT_UTF8}.safetensors"
    standin_loras.save_lora(standin_loras.qwen_comfy_lora(tiny_qwen_edit_pipeline.transformer), lora)
    style = folder / f"{NOT_UTF8}-style.json"
    style.write_text(json.dumps({"visual_style": {"lighting": "soft dusk light"}}))
    code, result = run_script(
        capsys, qwen_image, "-p", "x", "-r", reference, "-o", still, "--lora", lora, "--style-ref", style, *QWEN_FAST
    )
    assert code == 0, result
    assert provenance.read_recipe(still)["script"] == "qwen_image.py"
    clip = folder / f"{NOT_UTF8}.mp4"
    code, result = run_script(capsys, wan_video, "--start-frame", still, "--prompt", "x", "-o", clip, *WAN_FAST)
    assert code == 0, result
    assert provenance.read_recipe(clip)["script"] == "wan_video.py"
    film = folder / f"{NOT_UTF8}-film.mp4"
    code, result = run_script(capsys, assemble_video, "--clips", clip, clip, "-o", film, "--quiet")
    assert code == 0, result
    assert provenance.read_recipe(film) is not None
    batch = folder / f"{NOT_UTF8}.json"
    batch.write_text(
        json.dumps(
            {
                "defaults": {"size": "64x64", "steps": 2, "cfg": 1, "lightning": "off"},
                "jobs": [{"prompt": "y", "reference": reference.name, "output": f"{NOT_UTF8}-2.png"}],
            },
            ensure_ascii=True,
        )
    )
    code, result = run_script(capsys, qwen_image, "--batch", batch, "--quiet")
    assert code == 0 and (folder / f"{NOT_UTF8}-2.png").is_file(), result


def test_assemble_refuses_a_fifo_as_audio_or_scene_plan(pipes, capsys):
    from producer.files import video

    clip = pipes.parent / "clip.mp4"
    video.write_mp4(np.full((9, 64, 64, 3), 90, dtype=np.uint8), clip, fps=16)
    out = pipes.parent / "out"
    for fifo, argv in [
        (pipes / "music.mp3", ["--clips", clip, "--audio", pipes / "music.mp3", "-o", out / "f.mp4"]),
        (pipes / "scene-breakdown.md", [pipes, "-o", out / "f.mp4"]),
    ]:
        code, result = refused_without_blocking(fifo, lambda a=argv: run_script(capsys, assemble_video, *a))
        assert code == ExitCode.USAGE and fifo.name in result["error"] and "pipe" in result["error"], result
    assert list(out.iterdir()) == []


def test_a_models_folder_whose_path_is_not_utf8_is_refused_before_loading(tmp_path, capsys):
    """safetensors and tokenizers (Rust) open UTF-8 paths only: writing the stand-ins there already fails."""
    folder = tmp_path / NOT_UTF8
    folder.mkdir()
    code, result = run_script(capsys, qwen_image, "-p", "x", "-o", tmp_path / "q.png", "--models-dir", folder)
    assert code == ExitCode.USAGE and "not valid UTF-8" in result["error"] and "symlink" in result["fix"]


def test_byte_flipped_pictures_of_every_format_end_in_a_picture_or_a_clear_error(tmp_path):
    """One to four random bytes changed (and a fifth cut short) in a PNG with text chunks, a three-page
    TIFF, an animated GIF, a JPEG and a WebP. With seed 0 and 1,500 files per format, 684 of them escaped
    as SyntaxError, TypeError, KeyError, IndexError, ValueError, struct.error or OSError before the reader
    caught every decoding error; here 100 per format, the same every run."""
    import random

    from PIL import PngImagePlugin

    info = PngImagePlugin.PngInfo()
    info.add_itxt("producer", '{"a": 1}')
    info.add_text("x", "y", zip=True)
    frames = [Image.new("RGB", (8, 8), (200, 0, 0)), Image.new("L", (4, 4)), Image.new("CMYK", (5, 5))]
    originals = []
    for fmt, options in [
        ("PNG", {"pnginfo": info}),
        ("TIFF", {"save_all": True, "append_images": frames[1:]}),
        ("GIF", {"save_all": True, "append_images": frames[:1]}),
        ("JPEG", {}),
        ("WEBP", {}),
    ]:
        buffer = io.BytesIO()
        Image.new("RGB", (16, 16), (9, 90, 9)).save(buffer, fmt, **options)
        originals.append(buffer.getvalue())
    rng = random.Random(0)
    path = tmp_path / "flipped"
    for original in originals:
        for _ in range(100):
            data = bytearray(original)
            for _ in range(rng.randint(1, 4)):
                data[rng.randrange(len(data))] = rng.randrange(256)
            path.write_bytes(data[: rng.randrange(len(data))] if rng.random() < 0.2 else data)
            for read in (media.load_image, media.read_png_metadata):
                with contextlib.suppress(CliError):
                    read(path)
