"""Keep a production on track: check its files, show where it stands, record approvals, plan the next step."""

from __future__ import annotations

import argparse
from pathlib import Path

from producer.cli import ArgumentParser, ExitCode, build_parser, run_main
from producer.commands.demo import DEMO_TIME

DESCRIPTION = """\
Work on a production folder (philosophy.md, style.json, scene-breakdown.md, assets.json, assets/,
keyframes/, scene-XX/video.mp4, final/film.mp4; state in .production/). All state lives in files,
so a fresh agent can pick a production up at any point: run `status`, then `next`.

  check DIR     validate the phase files; every problem with file, line and fix (exit 2 if any)
  status DIR    the phases, every asset, keyframe and clip (ok, missing, stale + why, provided),
                the approvals (and those dropped because a file changed), the seam review, and the
                judging: identity, colour drift and motion per scene with a chart each, every flag
                with its figure, threshold and fix (docs/judging.md)
  approve DIR WHAT
                record the user's yes: a phase (philosophy, scenes, assets, keyframes, clips, film)
                or one item (keyframe:KF-B, clip:scene-02), with the sha256 of every file approved
  estimate DIR  before generating: for everything still to make (what status calls missing or stale),
                the images and clips, predicted time per phase and in all on this machine (from the
                benchmark's measured speeds, carried to this GPU), disk for the outputs and for models
                not yet installed, peak VRAM and RAM, the slowest item; where something does not fit,
                which change would (480p, another weight form, fewer scenes, Lightning)
  next DIR      the next step of the current phase: what to write or fix, the batch file and
                command to run, or what to show the user for approval. Never beyond a phase
                that is not approved.
  retake DIR ITEM
                another variant of one item (a new seed): it turns stale and `next` makes it again
  rehearse DIR  your own production on tiny stand-in models, before (or without) the real ones: its
                plan is copied into DIR/.production/rehearsal (or --into FOLDER) and every phase runs
                there with the same checks, plans and approval steps, approved automatically; the
                folder and every output are marked as a rehearsal (never real, never approvable as
                real; a real run remakes them). DIR itself is only read.
  demo OUTDIR   the same for the sample production (examples/lighthouse), copied into OUTDIR

Rules the check enforces: every philosophy.md section filled; style.json valid; every scene has a
type, duration (at most 81 frames at 16 fps = 5.06 s), start keyframe, motion, camera and transition;
enough scenes for the length (1-5 s: 1, 6-10 s: 2, 11-15 s: 3, ...); scenes joined by a continuous
transition share their boundary keyframe (after a cut, fade or dissolve a new keyframe may start);
every keyframe used and defined once; every character, pose, background and object named exists in
assets.json; landscape scenes show no character; asset paths stay inside the folder."""

EPILOG = """\
examples:
  production.py demo /tmp/lighthouse                 # the whole sample film on stand-ins, DEMO_TIME
  production.py rehearse my-film                     # my-film's plan, every phase, on stand-ins
  production.py check my-film
  production.py status my-film --json
  production.py estimate my-film                     # time, disk and memory of what remains
  production.py next my-film --json                  # then run the command it prints
  production.py approve my-film scenes
  production.py approve my-film keyframe:KF-B
  production.py retake my-film keyframe:KF-C"""

EXIT_NOTE = "check exits 2 when it finds problems"


def build() -> argparse.ArgumentParser:
    p = build_parser("production.py", DESCRIPTION, EPILOG.replace("DEMO_TIME", DEMO_TIME))
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND", parser_class=ArgumentParser)
    for name, text in (("check", "validate the phase files"), ("status", "where the production stands"),
                       ("next", "the next step: commands to run, files to write, or an approval to ask for"),
                       ("estimate", "time, disk and memory of everything still to make, on this machine")):
        s = sub.add_parser(name, help=text, description=text)
        _folder(s)
        if name == "estimate":
            s.add_argument("--models-dir", help="where the models are (or will be) installed (default: HF_HOME)")
    s = sub.add_parser("approve", help="record the user's approval", description="record the user's approval of a "
                       "phase (philosophy, scenes, assets, keyframes, clips, film) or an item (keyframe:KF-B, "
                       "clip:scene-02), with the hashes of the files approved")
    _folder(s)
    s.add_argument("what", nargs="+", metavar="WHAT", help="e.g. philosophy, or keyframe:KF-B clip:scene-02")
    s = sub.add_parser("retake", help="another variant (a new seed) of one item",
                       description="move one item (e.g. keyframe:KF-C, character:KF-C, clip:scene-02, "
                                   "asset:characters/keeper) to its next seed")
    _folder(s)
    s.add_argument("item", help="a planned item, e.g. keyframe:KF-C")
    s = sub.add_parser("demo", help="the sample production end to end on stand-in models",
                       description="copy examples/lighthouse into OUTDIR and make the whole film on tiny random "
                                   f"stand-in models ({DEMO_TIME}; a 96x64 film of about 1.6 s, on purpose), "
                                   "approving every phase automatically; marked as a rehearsal")
    s.add_argument("outdir", type=Path, help="a new or empty folder, e.g. /tmp/lighthouse")
    _models_dir(s)
    s = sub.add_parser("rehearse", help="your production's plan end to end on stand-in models",
                       description="copy DIR's plan (phase files, the pictures you provided, settings) into "
                                   "DIR/.production/rehearsal (or --into) and run every phase there on tiny "
                                   "stand-in models, approving each automatically. A plan that is not whole (phase files "
                                   "through assets.json) or fails `check` is refused first (exit 2). Outputs and folder are marked as a rehearsal: "
                                   "never real, never approvable as real. Run it again after changing the plan.")
    s.add_argument("dir", type=Path, help="the production folder, e.g. my-film (only read)")
    s.add_argument("--into", type=Path, help="the rehearsal folder (default DIR/.production/rehearsal)")
    _models_dir(s)
    return p


def _models_dir(p: argparse.ArgumentParser) -> None:
    p.add_argument("--models-dir", help="a Hugging Face cache that already holds the stand-ins "
                   "(default: install them, about 5 MB, into the rehearsal's own .production/standins)")
    _output(p)


def _folder(p: argparse.ArgumentParser) -> None:
    p.add_argument("dir", type=Path, help="the production folder, e.g. my-film")
    p.add_argument("--allow-outside", action="store_true",
                   help="allow asset pictures outside the folder (absolute paths, '..', symlinks)")
    _output(p)


def _output(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("output and logging")
    g.add_argument("--json", action="store_true", help="print one JSON object on stdout (logs stay on stderr)")
    g.add_argument("--quiet", action="store_true", help="only warnings and errors on stderr")
    g.add_argument("--debug", action="store_true", help="show tracebacks")


def run(args: argparse.Namespace) -> dict:
    if args.command == "demo":
        from producer.commands.demo import run_demo

        return run_demo(args.outdir, args.models_dir, quiet=args.quiet)
    if args.command == "rehearse":
        from producer.commands.demo import run_rehearsal

        return run_rehearsal(args.dir, args.into, args.models_dir, quiet=args.quiet)
    from producer.workflow import checkpoints, nextstep, status

    snap = status.snapshot(args.dir, args.allow_outside, with_states=args.command != "check",
                           plan_seeds=args.command in ("next", "retake"))
    if args.command == "check":
        return _check(snap)
    if args.command == "status":
        return {"command": "status", **status.status_report(snap)}
    if args.command == "next":
        return {"command": "next", **nextstep.next_step(snap)}
    if args.command == "estimate":
        return {"command": "estimate", **_estimate(snap, args.models_dir)}
    if args.command == "retake":
        return {"command": "retake", **checkpoints.retake(snap, args.item)}
    from producer.workflow.approvals import all_or_none

    done = []
    with all_or_none(args.dir):  # "approve DIR a b": both or, if b is refused, neither
        for what in args.what:
            done.append(checkpoints.approve(snap, what))
            snap = status.snapshot(args.dir, args.allow_outside)
    return {"command": "approve", "approved": done, "current_phase": snap.current_phase()}


def _estimate(snap, models_dir: str | None) -> dict:
    from producer.facts import hardware
    from producer.modelfiles import install, models
    from producer.workflow import forecast

    models.use_models_dir(models_dir)
    complete = {n for n, s in install.statuses().items() if s.complete}
    return forecast.estimate_production(snap, hardware.probe(str(models.hub_cache())), complete)


def _check(snap) -> dict:
    problems = snap.prod.all_problems()
    return {"command": "check", "root": str(snap.root), "problems": [
        {"file": p.file, "line": p.line, "message": p.message, "fix": p.fix} for p in problems],
        "missing_files": snap.prod.missing, "warnings": snap.prod.warnings,
        "exit_code": int(ExitCode.USAGE if problems else ExitCode.OK)}


# ---------------------------------------------------------------- what people read


def describe(r: dict) -> str:
    return {"check": _describe_check, "status": _describe_status, "next": _describe_next,
            "estimate": _describe_estimate,
            "approve": _describe_approve, "retake": lambda r: r["message"],
            "demo": _describe_demo, "rehearse": _describe_demo}[r["command"]](r)


def _describe_check(r: dict) -> str:
    lines = [f"{p['file']}:{p['line']}: {p['message']}\n    fix: {p['fix']}" for p in r["problems"]]
    lines += [f"warning: {w}" for w in r["warnings"]]
    if r["missing_files"]:
        lines.append("not written yet: " + ", ".join(r["missing_files"]))
    lines.append(f"{len(r['problems'])} problem(s)" if r["problems"] else "check passed")
    return "\n".join(lines)


def _describe_status(r: dict) -> str:
    lines = [f"production {r['root']}: current phase {r['current_phase'] or 'none (finished)'}"]
    if r["rehearsal"]:
        lines.insert(0, f"{r['rehearsal']['message']} (a rehearsal of {r['rehearsal']['rehearsal_of']})")
    for p in r["phases"]:
        lines.append(f"  {p['number']:>3} {p['phase']:<11} {'complete' if p['complete'] else 'incomplete':<10} "
                     f"{'approved' if p['approved'] else 'not approved'}")
    for item in r["items"]:
        why = f" - {'; '.join(item['reasons'])}" if item["reasons"] and item["state"] != "provided" else ""
        lines.append(f"  {item['state']:<8} {item['id']:<28} {item['output']}{why}")
    lines += [f"  approval dropped: {d['name']}: {d['reason']}" for d in r["dropped_approvals"]]
    lines += [f"  approved: {a['name']} ({a['approved_at']})" for a in r["approvals"]]
    for s in r["seams"]:
        lines.append(f"  seam {s['before']} -> {s['after']}: {s['status']}"
                     + "".join(f"\n    {f}\n    advice: {a}" for f, a in zip(s["flags"], s["advice"])))
        lines += [f"    try: {c}" for c in s.get("commands", [])]
    judging = r.get("judging") or {}
    for f in judging.get("flags", []):
        where = f" frames {', '.join(map(str, f['frames'][:8]))}" if f.get("frames") else ""
        lines.append(f"  flagged {f['item']}: {f['reason']}{where} (figure {f['figure']}, threshold {f['threshold']})"
                     f"\n    fix: {f['fix']}" + (f"\n    chart: {f['chart']}" if f.get("chart") else ""))
    lines += [f"  judging: {n}" for n in judging.get("notes", []) + judging.get("problems", [])]
    lines += [f"  problem: {p['file']}:{p['line']}: {p['message']} (fix: {p['fix']})" for p in r["problems"]]
    lines += [f"  note: {n} (items marked unchecked could not be compared here)" for n in r["notes"]]
    return "\n".join(lines)


def _describe_next(r: dict) -> str:
    lines = [f"phase {r['phase_number'] or '-'} ({r['phase'] or 'finished'}): {r['action']}", r["message"]]
    lines += [f"  {p['file']}:{p['line']}: {p['message']}\n    fix: {p['fix']}" for p in r.get("problems", [])]
    lines += [f"  {j['state']:<8} {j['id']:<28} {j['output']}" for j in r.get("jobs", [])]
    lines += [f"  waiting  {j['id']:<28} {'; '.join(j['reasons'])}" for j in r.get("waiting", [])]
    lines += [f"  error    {j['id']:<28} {'; '.join(j['reasons'])}" for j in r.get("errors", [])]
    if r.get("commands"):
        lines += ["run:"] + [f"  {c}" for c in r["commands"]]
    if r.get("approve_commands"):
        lines += ["when the user approves:"] + [f"  {c}" for c in r["approve_commands"]]
    return "\n".join(lines)


def _describe_estimate(r: dict) -> str:
    c, d = r["counts"], r["disk"]
    lines = [f"to make: {c['images']} image(s), {c['clips']} clip(s)" + (", the film" if c["film"] else "")
             + f" on {r['machine']}"]
    for p in r["phases"]:
        lines.append(f"  {p['phase']:<10} {p['items']:>3} item(s)  {p['time'] or 'no estimate'}"
                     + (f" (load {p['load_seconds']:.0f} s)" if p["load_seconds"] is not None else "")
                     + f"  {p['plan']}")
    lines.append(f"total: {r['total'] or 'no estimate'}; peak ~{r['peak_vram_gib']} GiB VRAM, ~{r['peak_ram_gib']} GiB RAM")
    if r["slowest"]:
        lines.append(f"slowest: {r['slowest']['id']} ({r['slowest']['seconds']:.0f} s)")
    lines.append(f"disk: outputs ~{d['outputs']}" + (f", models to download ~{d['download']} "
                                                     f"({', '.join(d['models_to_download'])})" if d["download_bytes"] else ""))
    for p in r["problems"]:
        lines += [f"DOES NOT FIT: {p['message']}"] + [f"  would fit: {f}" for f in p["fixes"]]
    lines += [f"faster: {f['phase']} in {f['time']} with {f['how']}" for f in r["faster"]]
    lines += [f"  error    {e['id']}: {'; '.join(e['reasons'])}" for e in r["errors"]]
    return "\n".join(lines + [f"note: {n}" for n in r["notes"]])


def _describe_approve(r: dict) -> str:
    lines = [f"approved {a['approved']} ({len(a['files'])} file(s))" for a in r["approved"]]
    return "\n".join(lines + [f"current phase: {r['current_phase'] or 'none (finished)'}"])


def _describe_demo(r: dict) -> str:
    lines = [f"{'demo' if r['command'] == 'demo' else 'REHEARSAL'} production (on stand-in models): {r['root']} "
             f"({r['seconds']:.0f} s)", "files:"]
    lines += [f"  {kind:<14} {path}" for kind, paths in r["files"].items() for path in paths]
    return "\n".join(lines + [r["message"]])


def main(argv: list[str] | None = None) -> int:
    return run_main(build(), run, argv, describe)

