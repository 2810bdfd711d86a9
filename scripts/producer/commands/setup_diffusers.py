"""Get the models this machine needs, and check that the machine is ready to run the scripts."""

from __future__ import annotations

import textwrap
from dataclasses import dataclass

from producer import cli
from producer.cli import CliError, ExitCode, build_parser, log, run_main
from producer.facts import registry
from producer.modelfiles import install, models, needs
from producer.sizing.memory import WEIGHT_CHOICES

DESCRIPTION = """\
Check the machine (--check, the default), download what it needs (--download), or list the models (--info).

--check: Python, torch and its CUDA/MPS build, the packages of requirements.txt, the GPU and its free
  VRAM, RAM, free disk; every registry model present and complete (every file, with the size it arrived
  with; --verify also re-hashes them); the memory plan wan_video.py and qwen_image.py would use here with
  their predicted peak VRAM/RAM; the predicted seconds of one image and one clip here (the benchmark's
  measured speeds carried to this GPU); a verdict and the one command to run next.
--download: the Wan 2.2 and Qwen-Image-Edit models in the weight form the memory plan picks for this
  machine (full diffusers repos on big machines; GGUF experts plus the small components on small ones;
  fp8 is made from the bf16 files at load time), plus the step-distill LoRAs (wan-lightning,
  qwen-lightning). --weights FORM picks the form yourself (e.g. gguf-q4 to save disk).
--download-all: that, plus the optional models: the Wan 2.1 LightX2V LoRA, the AnyPose LoRA, Qwen-Image
  with the ControlNet Union (pose-guided text-to-image), the OpenPose annotators and DINOv2 small (the
  identity figures of production.py status, ~88 MB). Other weight forms
  are not included (they would add 40-180 GB): add them with --only NAME.
--only NAME...: just these registry entries (see --info for the names).

Downloads fetch only the files the registry names, check free disk before writing anything, continue an
interrupted file where it stopped, verify every file (size and the Hub's sha256 / git hash), and record
the commit that arrived in $HF_HOME/ai-video-producer/installs/. A model counts as present only when its
files match that record. Gated models need a token: HF_TOKEN, `hf auth login`, or --token."""

# The one rule for --check's exit code, in this order (the first that applies wins). SKILL.md and SETUP.md
# quote it; tests/test_setup_diffusers.py checks that they do.
CHECK_EXIT_RULE = ("--check exits 1 when the software is not ready (packages, torch build); else 4 when the "
                   "memory plan does not fit this machine (no download is proposed then: the demo and rehearsals "
                   "still run); else 3 when models it needs are missing or incomplete; else 0 (ready).")


EPILOG = """\
examples:
  setup_diffusers.py --check
  setup_diffusers.py --download
  setup_diffusers.py --download --weights gguf-q4 --models-dir /data/hf
  setup_diffusers.py --download --only qwen-anypose
  setup_diffusers.py --check --verify --json
  setup_diffusers.py --info

""" + textwrap.fill(CHECK_EXIT_RULE, 100)

RUN_NEXT_AFTER_READY = "python scripts/validate_diffusers.py"


def build() -> object:
    parser = build_parser("setup_diffusers.py", DESCRIPTION, EPILOG)
    action = parser.add_mutually_exclusive_group()
    action.add_argument("--check", action="store_true", help="check the machine and the models (the default)")
    action.add_argument("--download", action="store_true", help="download what this machine needs")
    action.add_argument("--download-all", action="store_true", help="--download plus the optional models")
    action.add_argument("--info", action="store_true", help="what each model is: size, license, gating, use")
    parser.add_argument("--only", nargs="+", metavar="NAME", help="just these registry entries")
    parser.add_argument("--verify", action="store_true",
                        help="with --check: re-hash every file (reads all of them: minutes for the real models)")
    parser.add_argument("--weights", choices=WEIGHT_CHOICES, default="auto",
                        help="with --download: the weight form to fetch instead of the memory plan's choice")
    cli.add_models_dir_arg(parser)
    parser.add_argument("--token", help="Hugging Face token for gated models (default: HF_TOKEN or `hf auth login`)")
    cli.add_output_args(parser, overwrite=False)
    return parser


def run(args) -> dict:
    models.use_models_dir(args.models_dir)
    _check_args(args)
    if args.info:
        return info(args)
    if args.download or args.download_all:
        return download(args)
    return check(args)


def _check_args(args) -> None:
    downloading = args.download or args.download_all
    if args.only:
        unknown = [n for n in args.only if n not in registry.REGISTRY]
        if unknown:
            raise CliError(f"unknown model {', '.join(unknown)}", fix=f"use one of: {', '.join(registry.REGISTRY)} "
                           "(setup_diffusers.py --info describes them)")
        if args.download_all:
            raise CliError("--only and --download-all contradict each other",
                           fix="use --download --only NAME... for just those models")
    if args.verify and (downloading or args.info):
        raise CliError("--verify goes with --check", fix="setup_diffusers.py --check --verify "
                       "(downloads always verify what arrives)")
    if args.weights != "auto" and not downloading:
        raise CliError("--weights goes with --download", fix="setup_diffusers.py --download --weights FORM")
    if args.weights != "auto" and args.only:
        raise CliError("--weights and --only contradict each other", fix="name the entries of that form with "
                       "--only, or use --weights alone")


def _suffix(args) -> str:
    return f" --models-dir {args.models_dir}" if args.models_dir else ""


# ---------------------------------------------------------------- --info


def info(args) -> dict:
    names = args.only or list(registry.REGISTRY)
    rows = []
    for name in names:
        entry = registry.get(name)
        status = install.entry_status(entry)
        rows.append({"name": name, "title": entry.title, "kind": entry.kind, "repo_id": entry.repo_id,
                     "revision": entry.revision, "size_bytes": entry.size_bytes,
                     "size_approximate": entry.approximate_size, "license": entry.license, "gated": entry.gated,
                     "role": role_of(name), "loader": entry.loader, "notes": entry.notes, "files": list(entry.files),
                     "status": status.status})
    return {"models": rows, "models_dir": str(models.hub_cache())}


def _revision_label(revision: str | None) -> str:
    return revision[:12] if revision else "main (no public commit: the download records the one it gets)"


def role_of(name: str) -> str:
    if name in needs.DISTILL_LORAS.values():
        return "step-distill LoRA: always part of --download"
    if name in needs.OPTIONAL:
        return "optional: --download-all"
    forms = [f"{family} {form}" for family, table in models.FORMS.items() for form, names in table.items()
             if name in names]
    return "--download when the plan picks " + " / ".join(forms)


def describe_info(result: dict) -> str:
    lines = [f"Models (cache: {result['models_dir']})"]
    for m in result["models"]:
        size = ("~" if m["size_approximate"] else "") + install.human_bytes(m["size_bytes"])
        gated = "gated (accept the license on the model page)" if m["gated"] else "not gated"
        lines += [f"\n{m['name']}: {m['title']}  [{m['status']}]",
                  f"  {size}, license {m['license']}, {gated}",
                  f"  {m['repo_id']}@{_revision_label(m['revision'])}: {', '.join(m['files'])}",
                  f"  role: {m['role']}", f"  loaded by: {m['loader']}"]
        if m["notes"]:
            lines.append(f"  {m['notes']}")
    return "\n".join(lines)


# ---------------------------------------------------------------- --download


def download(args) -> dict:
    from producer.facts import hardware
    from producer.modelfiles import download as dl

    if args.quiet:
        from huggingface_hub.utils import disable_progress_bars

        disable_progress_bars()
    if args.only:
        names = list(dict.fromkeys(args.only))
    else:
        hw = hardware.probe(str(models.hub_cache()))
        names = needs.download_names(hw, args.weights, everything=args.download_all)
        log.info(f"This machine ({hw.describe()}) needs: {', '.join(names)}")
        _warn_if_too_small(hw, args.weights)
    current = install.statuses(names)
    todo = [n for n in names if not current[n].complete]
    for name in names:
        if current[name].complete:
            log.info(f"  {name}: already {current[name].describe()}")
    fetched = []
    if todo:
        remotes, infos = [], {}
        for name in todo:
            remotes.append(dl.remote_entry(registry.get(name), args.token, infos))
        need = dl.check_disk(remotes)
        total_files = sum(len(r.files) for r in remotes)
        log.info(f"Fetching {', '.join(todo)}: {total_files} files, {install.human_bytes(need)} still to download "
                 f"into {models.hub_cache()}")
        counter = [0]
        try:
            for remote in remotes:
                dl.fetch_entry(remote, args.token, counter, total_files)
                fetched.append({"name": remote.entry.name, "commit": remote.commit, "files": len(remote.files),
                                "bytes": remote.total_bytes})
                log.info(f"  {remote.entry.name}: complete (commit {remote.commit[:7]})")
        except KeyboardInterrupt:
            raise CliError(f"interrupted after {len(fetched)} of {len(remotes)} models; finished files are kept and "
                           "the file in progress continues where it stopped", fix="run the same command again",
                           code=ExitCode.INTERRUPTED) from None
    after = install.statuses(names)
    return {"requested": names, "downloaded": fetched, "already_complete": [n for n in names if n not in todo],
            "models": {n: s.to_dict() for n, s in after.items()}, "models_dir": str(models.hub_cache()),
            "next_command": "python scripts/setup_diffusers.py --check" + _suffix(args)}


def _warn_if_too_small(hw, weights: str) -> None:
    for family in needs.FAMILIES:
        need = needs.family_need(family, hw, None, weights)
        if not need.plan.fits:
            log.warning(f"warning: {need.script} will not fit this machine even in this form: {need.plan.reason}"
                        f"{'; ' + need.plan.advice if need.plan.advice else ''}")


def describe_download(result: dict) -> str:
    got = ", ".join(d["name"] for d in result["downloaded"]) or "nothing (all complete)"
    return f"Downloaded: {got}\nNext: {result['next_command']}"


# ---------------------------------------------------------------- --check


def check(args) -> dict:
    from producer.facts import hardware
    from producer.modelfiles import environment
    from producer.workflow import forecast

    env = {"python": environment.python_info(), "torch": environment.torch_info(),
           "packages": environment.package_report(), "requirements": str(environment.REQUIREMENTS)}
    hw = hardware.probe(str(models.hub_cache()))
    names = args.only or list(registry.REGISTRY)
    current = install.statuses(names, verify=args.verify)
    complete = {n for n, s in install.statuses().items() if s.complete} if args.only else \
        {n for n, s in current.items() if s.complete}
    plans = {family: needs.family_need(family, hw, complete) for family in needs.FAMILIES}
    # What a download could give this machine at best: when even that does not fit, no download is proposed.
    reach = {} if args.only else needs.reach(hw, complete, plans)
    # With --only the question is whether those entries are complete; otherwise what the plans need here.
    needed = list(args.only) if args.only else list(dict.fromkeys(n for need in plans.values() for n in need.names))
    facts = _Facts(args, env, hw, current, complete, needed, plans, reach)
    code, verdict, next_command = _verdict(facts)
    return {"status": "ok" if code == ExitCode.OK else "not_ready", "exit_code": int(code), "ready": code == 0,
            "verdict": verdict, "next_command": next_command, "can_do": list(needs.WITHOUT_MODELS),
            "lacks": needs.shortfalls(hw, reach if any(n not in complete for n in needed) else plans), "environment": env, "hardware": hw.to_dict(),
            "models_dir": str(models.hub_cache()), "needed": needed,
            "download_bytes": needs.download_bytes(needed, complete),
            "models": {n: {**s.to_dict(), "title": registry.get(n).title, "needed": n in needed,
                           "fix": None if s.complete else install.status_fix(s, args.models_dir)}
                       for n, s in current.items()},
            "plans": {family: need.to_dict() for family, need in plans.items()},
            "predicted": forecast.one_of_each(hw, {f: need.plan for f, need in plans.items()})}


@dataclass
class _Facts:
    args: object
    env: dict
    hw: object
    current: dict
    complete: set
    needed: list
    plans: dict
    reach: dict


def _verdict(f: _Facts) -> tuple[ExitCode, str, str]:
    from producer.modelfiles import environment

    env, args = f.env, f.args
    if not env["python"]["ok"] or not env["torch"]["ok"]:
        what = env["python"]["problem"] or "torch does not import"
        return ExitCode.FAILED, f"not ready: {what}", environment.TORCH_FIX
    torch_problem = environment.torch_problem(env["torch"])
    if torch_problem:
        return ExitCode.FAILED, f"not ready: {torch_problem}", environment.TORCH_FIX
    bad = [p["name"] for p in env["packages"] if not p["ok"]]
    if bad:
        return ExitCode.FAILED, f"not ready: packages missing or at the wrong version: {', '.join(bad)}", \
            environment.PIP_FIX
    lacking = [n for n in f.needed if not f.current[n].complete]
    # Models to fetch: the plan that counts is the download's (any form); when even that does not fit, say so first.
    if lacking and any(not need.plan.fits for need in f.reach.values()):
        return ExitCode.OUT_OF_MEMORY, "not ready: " + needs.cannot_run(f.hw, f.reach), needs.DEMO_COMMAND
    if lacking:
        return _missing_verdict(f, lacking)
    too_big = [] if args.only else [need for need in f.plans.values() if not need.plan.fits]
    if too_big:
        need = too_big[0]
        return ExitCode.OUT_OF_MEMORY, f"not ready: {need.script}'s memory plan does not fit: {need.plan.reason}", \
            need.plan.advice or "use a machine with more memory"
    if args.only:
        return ExitCode.OK, f"complete: {', '.join(args.only)}", RUN_NEXT_AFTER_READY + _suffix(args)
    standin = [n for n in f.needed if f.current[n].source == "standin"]
    note = f" (tiny stand-ins for tests: {', '.join(standin)}; they run the code, not the real models)" \
        if standin else ""
    return ExitCode.OK, "ready: every model this machine needs is complete and the memory plans fit" + note, \
        RUN_NEXT_AFTER_READY + _suffix(args)


def _missing_verdict(f: _Facts, lacking: list[str]) -> tuple[ExitCode, str, str]:
    """Models missing: the download that fits this machine's memory plan and its disk, or why none does."""
    args, current = f.args, f.current
    states = ", ".join(f"{n} ({current[n].status})" for n in lacking)
    verdict = f"not ready: models this machine needs are not complete: {states}"
    if all(current[n].status == install.CHANGED for n in lacking):
        return ExitCode.MISSING_MODEL, verdict, install.status_fix(current[lacking[0]], args.models_dir)
    if args.only:
        return ExitCode.MISSING_MODEL, verdict, models.setup_command(*lacking) + _suffix(args)
    advice, command = needs.download_advice(f.hw, lacking, f.complete, _suffix(args))
    return ExitCode.MISSING_MODEL, f"{verdict}; {advice}", command


def describe_check(r: dict) -> str:
    env, hw = r["environment"], r["hardware"]
    torch = env["torch"]
    lines = ["Environment", f"  Python {env['python']['version']} ({env['python']['executable']})"]
    if torch["ok"]:
        lines.append(f"  torch {torch['version']} ({torch['build']} build); CUDA available: {torch['cuda_available']},"
                     f" MPS available: {torch['mps_available']}")
    else:
        lines.append(f"  torch: {torch['error']}")
    gib = 1024**3
    gpu = (f"{hw['gpu_name']}, {hw['vram_total'] / gib:.1f} GiB ({hw['vram_free'] / gib:.1f} GiB free)"
           if hw["device"] != "cpu" else "none (everything would run on the CPU)")
    ram = (f"  RAM: {hw['ram_total'] / gib:.1f} GiB ({hw['ram_available'] / gib:.1f} GiB available); "
           f"disk: {hw['disk_free'] / gib:.1f} GiB free for {r['models_dir']}")
    lines += [f"  GPU: {gpu}", ram]
    packages = env["packages"]
    bad = [p for p in packages if not p["ok"]]
    lines.append(f"Packages ({env['requirements']}): {len(packages) - len(bad)} of {len(packages)} ok"
                 if packages else "Packages: requirements.txt not found beside the scripts")
    lines += [f"  {p['name']} {p['wanted']}: {p['problem']}" for p in bad]
    lines.append(f"Models ({r['models_dir']})")
    for name, m in r["models"].items():
        mark = "ok" if m["status"] == install.COMPLETE else "!!" if m["needed"] else "--"
        need = " [needed]" if m["needed"] else ""
        lines.append(f"  [{mark}] {name}{need}: {install.EntryStatus(**_status_fields(m)).describe()}")
    lines.append("Memory plans on this machine")
    for need in r["plans"].values():
        lines.append(f"  {need['script']} ({need['workload']}): {need['plan']['summary']}")
    lines.append("Predicted time on this machine (measured speeds carried to this GPU; a whole production: "
                 "production.py estimate DIR)")
    for p in r["predicted"].values():
        lines.append(f"  {p['what']}: " + (f"~{p['seconds']:.0f} s" if p["seconds"] is not None else "no estimate")
                     + "".join(f"; {n}" for n in p["notes"]))
    if not r["ready"]:
        lines.append("Runs here without any download:")
        lines += [f"  {line}" for line in r["can_do"]]
    lines += [f"Verdict: {r['verdict']}", f"Next: {r['next_command']}"]
    return "\n".join(lines)


def _status_fields(m: dict) -> dict:
    return {k: m[k] for k in ("name", "status", "commit", "files", "bytes", "problems", "snapshot", "source")}


def describe(result: dict) -> str:
    if "verdict" in result:
        return describe_check(result)
    if "downloaded" in result:
        return describe_download(result)
    return describe_info(result)


def main(argv: list[str] | None = None) -> int:
    return run_main(build(), run, argv, describe)

