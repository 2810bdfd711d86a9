"""Assemble the scene clips of a production into one film, with transitions, cards and audio."""

from __future__ import annotations

import argparse
from dataclasses import dataclass
from pathlib import Path

from producer.cli import CliError, add_output_args, build_parser, log, missing, number_arg, run_main, text_arg
from producer.files import clips as clipio
from producer.files import locks, media, provenance, timeline, video
from producer.files.outputs import atomic_outputs, check_output, refuse_input_as_output, write_json_atomic
from producer.production import seams
from producer.production.scenes import TRANSITIONS, SceneBreakdown, load_scene_breakdown, shared_keyframe

DESCRIPTION = """\
Join the scene clips into one H.264 MP4 (AAC audio when given) and write a contact sheet of the whole
film (one frame per second, with timestamps) beside it for review.

Clips come from a production folder (scene-breakdown.md gives the order, scene-XX/video.mp4 the clips,
"Transition to Next" the transitions) or from --clips. Rules:
- continuous: the next clip's first frame is dropped when it repeats the last one (production folder:
  the two scenes share their boundary keyframe; --clips: the frames match, cast < 1.0 and SSIM > 0.95).
  A cut never drops a frame; the report notes a shared frame held at a cut.
- fade (default 1.0 s): through black, half out, half in, over the clips' own frames (same length).
- dissolve (default 0.5 s): cross-fade; the film gets shorter by the overlap.
- clips of another size are scaled (Lanczos) into the first clip's size and letterboxed, never cropped;
  clips of another frame rate are refused.
- --audio: starts with the film; longer audio is cut at the film's end with a fade-out (--audio-fade),
  shorter audio is followed by silence.
- --title/--end-card: white text on black for --card-seconds (default 2 s), joined to the film by cuts.
- --review: every seam is measured (colour cast, SSIM) against the shared keyframe and flagged with
  advice above the limits; without -o it only reports.
The output is written atomically: nothing under its name until it is complete."""

MAX_CRF = 51  # x264's scale for 8-bit video: 0 lossless .. 51 worst
MAX_CARD_OR_FADE = 30  # seconds: a title card or an audio fade-out longer than this is a mistake

EPILOG = """\
examples:
  assemble_video.py my-film -o my-film/final.mp4
  assemble_video.py my-film --review                       # seam report only
  assemble_video.py my-film -o final.mp4 --audio music.mp3 --title "Lantern Walk" --end-card "The End"
  assemble_video.py --clips a.mp4 b.mp4 c.mp4 --transition fade:0.5 -o out.mp4
  assemble_video.py --clips a.mp4 b.mp4 c.mp4 --transition continuous --transition dissolve:1 -o out.mp4
  assemble_video.py my-film -o final-24.mp4 --fps 24 --upscale 2 --json"""


def transition_arg(value: str) -> tuple[str, float | None]:
    kind, _, seconds = value.partition(":")
    kind = kind.strip().lower()
    if kind not in TRANSITIONS:
        raise argparse.ArgumentTypeError(f"{value!r}: the kind must be one of {', '.join(TRANSITIONS)}")
    if not seconds:
        return kind, None
    try:
        number = float(seconds)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{value!r}: the duration must be seconds, e.g. fade:0.5") from None
    if kind in ("cut", "continuous"):
        raise argparse.ArgumentTypeError(f"{value!r}: a {kind} has no duration")
    if not 0 < number <= 5:
        raise argparse.ArgumentTypeError(f"{value!r}: the duration must be between 0 and 5 seconds")
    return kind, number


def size_arg(value: str) -> tuple[int, int]:
    try:
        w, h = (int(v) for v in value.lower().split("x"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"{value!r}: give WIDTHxHEIGHT, e.g. 1664x960") from None
    if w <= 0 or h <= 0 or w % 2 or h % 2 or w > 7680 or h > 4320:
        raise argparse.ArgumentTypeError(f"{value!r}: width and height must be even, at most 7680x4320")
    return w, h


def build() -> argparse.ArgumentParser:
    p = build_parser("assemble_video.py", DESCRIPTION, EPILOG)
    p.add_argument("production_dir", nargs="?", type=Path,
                   help="production folder with scene-breakdown.md and scene-XX/video.mp4, e.g. my-film")
    p.add_argument("--clips", nargs="+", type=Path, metavar="MP4",
                   help="assemble these clips in this order instead, e.g. --clips a.mp4 b.mp4")
    p.add_argument("-o", "--output", type=Path, help="the film to write, e.g. my-film/final.mp4 (needed "
                   "unless --review); the contact sheet goes beside it as final.contact.png")
    p.add_argument("--transition", action="append", type=transition_arg, metavar="KIND[:SECONDS]",
                   help="cut, fade, dissolve or continuous, with seconds for fade/dissolve: once for every "
                        "boundary or once per boundary in order; overrides the plan. e.g. --transition fade:0.5")
    p.add_argument("--trim-end", action="append", type=trim_arg, default=[], metavar="CLIP:FRAMES",
                   help="cut frames off the end of a clip, where a first-last-frame clip morphs into its end "
                        "keyframe (the seam review says when), e.g. --trim-end scene-02:6 or --trim-end 2:6 "
                        "(clip number); repeatable. A trimmed clip no longer ends on the shared keyframe, so the "
                        "next clip's first frame is kept")
    g = p.add_argument_group("audio and cards")
    g.add_argument("--audio", type=Path, help="music or narration for the film, e.g. --audio music.mp3")
    g.add_argument("--audio-fade", type=number_arg(0, MAX_CARD_OR_FADE), default=1.0, metavar="SECONDS",
                   help="fade-out when the audio is cut at the film's end (default 1.0; 0 = none), e.g. 2")
    g.add_argument("--title", type=text_arg,
                   help='a title card before the film, e.g. --title "Lantern Walk" ("\\n" breaks lines)')
    g.add_argument("--end-card", type=text_arg, help='a card after the film, e.g. --end-card "Made with Wan 2.2"')
    g.add_argument("--card-seconds", type=number_arg(0, MAX_CARD_OR_FADE, above=True), default=timeline.CARD_SECONDS,
                   help=f"how long each card shows (default {timeline.CARD_SECONDS}), e.g. 3")
    g = p.add_argument_group("conversions (off by default)")
    g.add_argument("--fps", type=int, choices=(24, 30), help="convert to this rate by motion interpolation "
                   "(ffmpeg minterpolate; slow: about twice the film's length at 832x480 on 2 CPU cores), "
                   "e.g. --fps 24")
    g.add_argument("--upscale", type=int, choices=(2,), help="scale the film 2x with Lanczos, e.g. --upscale 2")
    g.add_argument("--size", type=size_arg, metavar="WxH",
                   help="scale to this size with Lanczos, letterboxed if the aspect differs, e.g. --size 1920x1080")
    g.add_argument("--crf", type=number_arg(0, MAX_CRF, whole=True), default=18,
                   help=f"H.264 quality 0-{MAX_CRF}, lower is better (default 18), e.g. 20")
    g = p.add_argument_group("review")
    g.add_argument("--review", action="store_true", help="measure every seam against its keyframe and flag "
                   "jumps with advice; alone it only reports, with -o it also assembles. e.g. my-film --review")
    add_output_args(p)
    return p


@dataclass
class Inputs:
    names: list[str]
    paths: list[Path]
    kinds: list[tuple[str, float | None]]  # one per boundary
    shared: list[str | None]  # the keyframe each boundary shares (production folder), else None
    notes: list[str]
    root: Path | None = None
    plan: SceneBreakdown | None = None


def resolve_inputs(args) -> Inputs:
    if (args.production_dir is None) == (args.clips is None):
        raise CliError("give a production folder or --clips, not both or neither",
                       "e.g. assemble_video.py my-film -o final.mp4, or --clips a.mp4 b.mp4 -o out.mp4")
    inputs = _from_production(args.production_dir) if args.clips is None else Inputs(
        [f"clip {n}" for n in range(1, len(args.clips) + 1)], list(args.clips), [("cut", None)] * (len(args.clips) - 1),
        [None] * (len(args.clips) - 1), [])
    if args.transition:
        want = len(inputs.paths) - 1
        if len(args.transition) not in (1, want):
            raise CliError(f"{len(args.transition)} --transition given for {want} boundaries",
                           "give one for all boundaries, or exactly one per boundary")
        inputs.kinds = list(args.transition) * want if len(args.transition) == 1 else list(args.transition)
    return inputs


def _from_production(root: Path) -> Inputs:
    if not root.is_dir():
        raise CliError(f"production folder {root} {missing(root)}" if not root.exists() else f"{root} is not a folder",
                       "check the path, or use --clips")
    plan = load_scene_breakdown(root / "scene-breakdown.md")
    scenes = sorted(plan.scenes, key=lambda s: s.number)
    numbers = [s.number for s in scenes]
    if not scenes or len(set(numbers)) != len(numbers):
        detail = "; ".join(str(p) for p in plan.problems[:5]) or f"scene numbers {numbers}"
        raise CliError(f"cannot tell the scene order from {root / 'scene-breakdown.md'}: {detail}",
                       "give each scene one '### Scene N: Title' section with a unique number")
    notes = [f"plan: {p}" for p in plan.problems]
    kinds = []
    for scene in scenes[:-1]:
        t = scene.transition
        if t is None:
            notes.append(f"scene {scene.number} has no readable 'Transition to Next'; using a cut")
        kinds.append((t.kind, t.seconds) if t else ("cut", None))
    if scenes[-1].transition and scenes[-1].transition.kind != "cut":
        notes.append(f"scene {scenes[-1].number} is the last; its '{scenes[-1].transition.kind}' is not used")
    shared = [shared_keyframe(a, b) for a, b in zip(scenes, scenes[1:])]
    return Inputs([f"scene {s.number}" for s in scenes], [seams.clip_path(root, s.number) for s in scenes],
                  kinds, shared, notes, root, plan)


def scan_all(inputs: Inputs) -> tuple[list[clipio.ClipInfo], tuple[int, int], list[str]]:
    infos = []
    for name, path in zip(inputs.names, inputs.paths):
        log.info("reading %s (%s)", name, path)
        infos.append(clipio.scan_clip(path))
    fps, size = infos[0].fps, (infos[0].width, infos[0].height)
    conformed = []
    for name, info in zip(inputs.names, infos):
        if not clipio.same_fps(info.fps, fps):
            raise CliError(f"{name} ({info.path}) is {info.fps:g} fps, the first clip is {fps:g} fps",
                           f"re-render it at {fps:g} fps, or convert it first: ffmpeg -i {info.path} "
                           f"-filter:v minterpolate=fps={fps:g} fixed.mp4")
        if (info.width, info.height) != size:
            conformed.append(f"{name}: {info.width}x{info.height} scaled into {size[0]}x{size[1]} and letterboxed")
            info.first, info.last = clipio.conform(info.first, size), clipio.conform(info.last, size)
    return infos, size, conformed


def trim_arg(text: str) -> tuple[str, int]:
    clip, sep, frames = text.rpartition(":")
    if not sep or not clip or not frames.isdigit() or int(frames) < 1:
        raise argparse.ArgumentTypeError(f"{text!r}: give CLIP:FRAMES, e.g. scene-02:6 or 2:6")
    return clip, int(frames)


def resolve_trims(args, inputs: Inputs, infos) -> dict[str, int]:
    """--trim-end CLIP:FRAMES -> clip name -> frames, checked against the clips."""
    trims: dict[str, int] = {}
    for clip, frames in args.trim_end:
        name = inputs.names[int(clip) - 1] if clip.isdigit() and 0 < int(clip) <= len(inputs.names) else clip
        if name not in inputs.names:
            raise CliError(f"--trim-end {clip}:{frames}: no clip {clip!r} in this film",
                           f"use a clip number 1-{len(inputs.names)} or one of: {', '.join(inputs.names)}")
        length = infos[inputs.names.index(name)].frames
        if frames >= length:
            raise CliError(f"--trim-end {clip}:{frames}: {name} has only {length} frames", "trim fewer frames")
        trims[name] = frames
    return trims


def decide_boundaries(inputs: Inputs, infos: list[clipio.ClipInfo], fps: float,
                      trims: dict[str, int] | None = None) -> list[timeline.Boundary]:
    result = []
    for i, (kind, seconds) in enumerate(inputs.kinds):
        seconds = timeline.DEFAULT_SECONDS[kind] if seconds is None else seconds
        before, after = inputs.names[i], inputs.names[i + 1]
        if inputs.root is not None:  # the plan decides: a shared boundary keyframe is a repeated frame
            same = inputs.shared[i] is not None
            why = (f"{after}'s first frame is {inputs.shared[i]}, which {before} ends on" if same
                   else f"{before} and {after} share no keyframe")
        else:  # no plan: the frames decide
            c = seams.compare(infos[i].last, infos[i + 1].first)
            same = seams.is_duplicate(c)
            why = (f"{after}'s first frame {'matches' if same else 'differs from'} {before}'s last "
                   f"(cast {c.cast:.2f}, ssim {c.ssim:.3f})")
        if same and (trims or {}).get(before):
            same, why = False, f"{before}'s end is trimmed, so {after}'s first frame is no longer a repeat"
        drop = same and kind == "continuous"
        if kind == "continuous":
            reason = why if same else f"{why}: nothing dropped"
        else:
            reason = f"{why}; a cut keeps it (the frame shows twice), use continuous to drop it" \
                if same and kind == "cut" else ""
        result.append(timeline.Boundary(kind, seconds, drop, reason))
    return result


def build_timeline(args, inputs: Inputs, infos, boundaries, fps, size):
    names, lengths, sources = list(inputs.names), [i.frames for i in infos], list(inputs.paths)
    cards = []
    for kind, text in (("title", args.title), ("end card", args.end_card)):
        if text:
            cards.append((kind, text, timeline.render_card(text, *size), max(1, round(args.card_seconds * fps))))
    for kind, text, image, count in cards:
        at = 0 if kind == "title" else len(names)
        names.insert(at, kind)
        lengths.insert(at, count)
        sources.insert(at, image)
        boundaries.insert(at if kind == "title" else len(boundaries), timeline.Boundary("cut", 0.0))
    trims = resolve_trims(args, inputs, infos)
    return timeline.plan_timeline(names, lengths, boundaries, fps, trims), sources, cards


def run(args) -> dict:
    if args.output is None and not args.review:
        raise CliError("no output given", "add -o final.mp4, or --review to only check the seams")
    if args.upscale and args.size:
        raise CliError("--upscale and --size both given", "choose one")
    if args.output is None:
        return assemble(args)
    if args.output.suffix.lower() != ".mp4":  # the film is H.264 in MP4, whatever its name says
        raise CliError(f"film {args.output} must be an .mp4 file", f"e.g. -o {args.output.with_suffix('.mp4')}")
    check_output(args.output, args.overwrite, "film")
    with locks.output_lock(args.output):  # one writer per film: a second run on it stops at once (exit 5)
        return assemble(args)


def assemble(args) -> dict:
    if args.output is not None:  # under the lock: a film another run just finished is seen
        check_output(args.output, args.overwrite, "film")
        check_output(sheet_path(args.output), args.overwrite, "contact sheet")
    inputs = resolve_inputs(args)
    if args.output is None:
        return review_only(inputs)
    refuse_input_as_output(args.output, [*inputs.paths, args.audio], "the film", "e.g. final/film.mp4")
    infos, size, conformed = scan_all(inputs)
    if (size[0] % 2 or size[1] % 2) and not (args.size or args.upscale):  # yuv420p halves both sides
        even = f"{size[0] // 2 * 2}x{size[1] // 2 * 2}"
        raise CliError(f"{inputs.names[0]} ({infos[0].path}) is {size[0]}x{size[1]}, and the film takes the first "
                       "clip's size, but H.264 (yuv420p) needs an even width and height",
                       f"add --size {even} (the clips are scaled into it), or --upscale 2")
    fps = infos[0].fps
    audio = clipio.probe_audio(args.audio) if args.audio else None
    boundaries = decide_boundaries(inputs, infos, fps, resolve_trims(args, inputs, infos))
    plan, sources, cards = build_timeline(args, inputs, infos, list(boundaries), fps, size)
    result = report(inputs, infos, plan, cards, boundaries, size)
    result["conversions"] = {"conformed_clips": conformed, "fps": None, "scale": None}
    result["notes"] = inputs.notes
    if args.review:  # before the encode, so flags show up before the long part
        reports = review(inputs, infos)
        result["seams"] = [r.to_dict() for r in reports]
        result["seams_flagged"] = sum(r.status == "flagged" for r in reports)
    result.update(write_film(args, inputs, plan, sources, size, audio, result))
    return result


def review_only(inputs: Inputs) -> dict:
    """--review without -o: a missing or unreadable clip skips its seams instead of stopping the review,
    so the seams can be checked while later scenes are still being generated."""
    infos, listed = [], []
    for name, path in zip(inputs.names, inputs.paths):
        try:
            infos.append(clipio.scan_clip(path))
            listed.append({"name": name, "path": str(path), "source_frames": infos[-1].frames})
        except CliError as err:
            infos.append(None)
            listed.append({"name": name, "path": str(path), "error": err.message})
    reports = review(inputs, infos)
    flagged = sum(r.status == "flagged" for r in reports)
    return {"mode": "review", "clips": listed, "seams": [r.to_dict() for r in reports], "seams_flagged": flagged,
            "notes": inputs.notes}


def review(inputs: Inputs, infos) -> list[seams.SeamReport]:
    if inputs.root is not None:
        by_number = {s.number: info for s, info in zip(sorted(inputs.plan.scenes, key=lambda s: s.number), infos)}
        items = seams.production_inputs(inputs.root, inputs.plan, by_number, [k for k, _ in inputs.kinds])
    else:
        items = [seams.SeamInput(a, b, str(pa), str(pb), kind, ia and ia.last, ib and ib.first,
                                 continuity_expected=kind == "continuous")
                 for a, b, pa, pb, (kind, _), ia, ib in zip(inputs.names, inputs.names[1:], inputs.paths,
                                                             inputs.paths[1:], inputs.kinds, infos, infos[1:])]
    reports = [seams.review_boundary(item) for item in items]
    for r in reports:
        for flag in r.flags:
            log.warning("seam %s -> %s: %s", r.before, r.after, flag)
    return reports


def report(inputs: Inputs, infos, plan: timeline.Timeline, cards, boundaries, size) -> dict:
    fps = plan.fps
    first = 1 if any(kind == "title" for kind, *_ in cards) else 0  # the clips' segments follow the title's
    clips, dropped = [], []
    for n, (name, path, info, b) in enumerate(zip(inputs.names, inputs.paths, infos, [None] + boundaries)):
        seg = plan.segments[first + n]
        clips.append({"name": name, "path": str(path), "source_frames": info.frames,
                      "source_in": seg.source_start, "source_out": seg.frames - seg.trim_end,
                      "trimmed_end_frames": seg.trim_end,
                      "film_in": seg.film_in, "film_out": seg.film_out,
                      "in_seconds": round(seg.film_in / fps, 4), "out_seconds": round(seg.film_out / fps, 4)})
        if b is not None and b.drop_first:
            dropped.append({"clip": str(path), "name": name, "source_frame": 0, "reason": b.reason})
    return {"mode": "production" if inputs.root else "clips", "fps": fps, "frames": plan.frames,
            "duration_seconds": round(plan.seconds, 4), "width": size[0], "height": size[1],
            "clips": clips, "transitions": plan.transitions, "dropped_frames": dropped,
            "cards": [_card(plan.segments[0 if kind == "title" else -1], text, fps) for kind, text, *_ in cards]}


def _card(seg: timeline.Segment, text: str, fps: float) -> dict:
    return {"kind": seg.name, "text": text, "film_in": seg.film_in, "film_out": seg.film_out,
            "seconds": round(seg.kept / fps, 4)}


def sheet_path(output: Path) -> Path:
    return output.with_name(output.stem + ".contact.png")


def write_film(args, inputs: Inputs, plan, sources, size, audio, result) -> dict:
    out_fps = args.fps if args.fps and not clipio.same_fps(args.fps, plan.fps) else None
    if args.fps and out_fps is None:
        inputs.notes.append(f"--fps {args.fps}: the clips are already {plan.fps:g} fps; nothing converted")
    settings = clipio.EncodeSettings(size[0], size[1], plan.fps, plan.seconds, out_fps=out_fps, crf=args.crf,
                                     title=args.title)
    if args.upscale or args.size:
        settings.out_size = args.size or (size[0] * args.upscale, size[1] * args.upscale)
    extra = {"audio": None}
    if audio is not None:
        settings.audio = audio.path
        settings.audio_filter, extra["audio"] = clipio.audio_filter(audio.seconds, plan.seconds, args.audio_fade)
        extra["audio"]["path"] = str(audio.path)
    sheet = timeline.ContactSheet(plan)

    def open_source(i: int):
        src = sources[i]
        if isinstance(src, Path):
            return clipio.iter_clip(src, size)
        return timeline.card_frames(src, plan.segments[i].frames)

    log.info("encoding %d frames (%.2f s) to %s", plan.frames, plan.seconds, args.output)
    recipe = provenance.make_recipe("assemble_video.py", {
        "transitions": plan.transitions, "fps": args.fps, "size": settings.out_size, "crf": args.crf,
        "title": args.title, "end_card": args.end_card, "card_seconds": args.card_seconds,
        "audio_fade": args.audio_fade}, {"clips": list(inputs.paths), "audio": args.audio}, {})
    # The contact sheet, the film and its recipe: the whole set or none of it (an orphan contact sheet would
    # block the rerun; a film without its recipe would look stale). The recipe goes last: it says "done".
    files = (sheet_path(args.output), args.output, provenance.sidecar_path(args.output))
    with atomic_outputs(*files, output=args.output) as (sheet_tmp, tmp, recipe_tmp):
        clipio.encode_film(timeline.compose(plan, open_source, sheet.add), settings, tmp)
        probe = video.probe_video(tmp)
        media.save_png(sheet.render(args.output.name), sheet_tmp)
        write_json_atomic(recipe_tmp, provenance.with_output(recipe, tmp))
    conversions = result["conversions"]
    if out_fps:
        conversions["fps"] = {"from": plan.fps, "to": args.fps, "method": clipio.MINTERPOLATE.format(fps=out_fps)}
    if settings.out_size:
        conversions["scale"] = {"from": list(size), "to": list(settings.out_size), "method": "lanczos"}
    extra.update({"output": str(args.output), "contact_sheet": str(sheet_path(args.output)),
                  "provenance": str(provenance.sidecar_path(args.output)),
                  "output_frames": probe["frames"], "output_fps": probe["fps"],
                  "output_duration_seconds": probe["duration"], "output_width": probe["width"],
                  "output_height": probe["height"], "conversions": conversions})
    return extra


def describe(r: dict) -> str:
    lines = []
    if r["mode"] == "review":
        lines.append(f"seams: {len(r['seams'])} reviewed, {r['seams_flagged']} flagged")
        lines += [f"  {c['name']}: {c['error']}" for c in r["clips"] if "error" in c]
    else:
        lines.append(f"wrote {r['output']}: {r['output_duration_seconds']} s, {r['output_frames']} frames at "
                     f"{r['output_fps']:g} fps, {r['output_width']}x{r['output_height']}"
                     + (" with audio" if r.get("audio") else ""))
        lines.append(f"contact sheet: {r['contact_sheet']}")
    for c in r["clips"] if r["mode"] != "review" else []:
        lines.append(f"  {c['name']:>10}  {c['in_seconds']:7.2f} - {c['out_seconds']:7.2f} s  {c['path']}")
    for t in r.get("transitions", []):
        lines.append(f"  {t['kind']} {' -> '.join(t['between'])} at {t['start_seconds']} s ({t['frames']} frames)"
                     + (f"; {t['note']}" if t.get("note") else ""))
    for d in r.get("dropped_frames", []):
        lines.append(f"  dropped frame 0 of {d['clip']}: {d['reason']}")
    if r.get("audio"):
        lines.append(f"  audio: {r['audio']['handling']}")
    for s in r.get("seams", []):
        lines.append(f"  seam {s['before']} -> {s['after']}: {s['status']}" +
                     "".join(f"\n    {f}" for f in s["flags"]) + "".join(f"\n    advice: {a}" for a in s["advice"]))
    lines += [f"  note: {n}" for n in r.get("notes", [])]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    return run_main(build(), run, argv, describe)

