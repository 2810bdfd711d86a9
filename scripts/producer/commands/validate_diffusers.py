"""Prove that the install works: the software, the installed models, and the scripts end to end."""

from __future__ import annotations

import tempfile
from pathlib import Path

from producer import cli
from producer.cli import ExitCode, build_parser, log, run_main
from producer.commands import installcheck
from producer.facts import registry
from producer.modelfiles import install, models, needs

DESCRIPTION = """\
Validate the setup. Without options: Python, the imports and versions the scripts need (against
requirements.txt), torch's GPU build with a small bf16 matmul on the GPU, ffmpeg; each installed model:
complete against its install record, the pipeline class the scripts load it with, every component's
config naming a class this diffusers/transformers has; and the models this machine needs.

--detailed  the same with every version, device, component class, key config values and file sizes.
--test-load for each installed model, build it on the meta device from its config and check that the
            weight files cover every parameter with the right shapes (safetensors headers, GGUF tensor
            infos through diffusers' key converters), without loading the weights; load the tokenizers,
            schedulers and processors; and check that each installed LoRA applies fully to the
            transformer(s) it is for (the scripts' own LoRA report, against meta-device transformers).
            Catches a wrong config, a truncated file or a LoRA for another model before a 10-minute load.
--smoke     run qwen_image.py, wan_video.py (full and GGUF weights) and assemble_video.py end to end on
            tiny stand-in models (real classes, random weights) in a cache of their own: no download, a
            few seconds a step. The quickest proof that torch, diffusers, ffmpeg and the scripts work.
            On a GPU it also runs the 10 GB card's streamed plans (--offload group, GGUF weights),
            whose faults show only where weights live in two memories.
--smoke-dir DIR  like --smoke, but leave the stand-in cache in DIR (HF_HOME layout, with install records)
            and the outputs in DIR/smoke-outputs, so the scripts can be run against it by hand
            (--models-dir DIR).

Exits non-zero on any failure, naming the fix: 1 a check failed, 3 models are missing, 4 the models\nthis machine lacks cannot run here at all (its memory plan does not fit: the demo and rehearsals\nstill run; no download is proposed)."""

EPILOG = """\
examples:
  validate_diffusers.py
  validate_diffusers.py --detailed --json
  validate_diffusers.py --test-load
  validate_diffusers.py --smoke
  validate_diffusers.py --smoke-dir /tmp/standins && wan_video.py --models-dir /tmp/standins ..."""


def build():
    parser = build_parser("validate_diffusers.py", DESCRIPTION, EPILOG)
    parser.add_argument("--detailed", action="store_true", help="report everything, not only problems")
    parser.add_argument("--test-load", action="store_true",
                        help="check weights against configs and LoRAs against their transformers (no weights loaded)")
    parser.add_argument("--smoke", action="store_true", help="run every script end to end on tiny stand-ins")
    parser.add_argument("--smoke-dir", metavar="DIR", help="--smoke, keeping the stand-in cache in DIR")
    cli.add_models_dir_arg(parser)
    cli.add_output_args(parser, overwrite=False)
    return parser


def run(args) -> dict:
    models.use_models_dir(args.models_dir)
    smoke_only = (args.smoke or args.smoke_dir) and not args.test_load
    result = {"environment": environment_section(args.detailed)}
    failures = list(result["environment"]["failures"])
    if not smoke_only:
        result["models"] = models_section(args)
        failures += result["models"]["failures"]
    if args.smoke or args.smoke_dir:
        result["smoke"] = smoke_section(args)
        failures += result["smoke"]["failures"]
    code = _exit_code(failures)
    result.update(status="ok" if code == ExitCode.OK else "failed", exit_code=int(code), failures=failures,
                  next_command=failures[0]["fix"] if failures else _next_when_ok(args))
    return result


def _exit_code(failures: list[dict]) -> ExitCode:
    if not failures:
        return ExitCode.OK
    if any(f.get("does_not_fit") for f in failures) and all(
            f.get("missing_model") or f.get("does_not_fit") for f in failures):
        return ExitCode.OUT_OF_MEMORY
    if all(f.get("missing_model") for f in failures):
        return ExitCode.MISSING_MODEL
    return ExitCode.FAILED


def _next_when_ok(args) -> str:
    if not args.test_load and not (args.smoke or args.smoke_dir):
        return "python scripts/validate_diffusers.py --test-load --smoke"
    return "start the workflow (SKILL.md)"


def _failure(section: str, what: str, detail: str, fix: str, missing_model: bool = False,
             does_not_fit: bool = False) -> dict:
    return {"section": section, "what": what, "detail": detail, "fix": fix, "missing_model": missing_model,
            "does_not_fit": does_not_fit}


# ---------------------------------------------------------------- the software


def environment_section(detailed: bool) -> dict:
    from producer.modelfiles import environment as env

    python, torch = env.python_info(), env.torch_info()
    imports, packages, ffmpeg = env.import_report(), env.package_report(), env.ffmpeg_info()
    failures = []
    if not python["ok"]:
        failures.append(_failure("environment", "python", python["problem"], "use Python 3.10 or newer"))
    for item in imports:
        if not item["ok"]:
            failures.append(_failure("environment", f"import {item['module']}", item["error"],
                                     env.TORCH_FIX if item["module"] in ("torch", "torchvision") else env.PIP_FIX))
    for item in packages:
        if not item["ok"]:
            failures.append(_failure("environment", f"package {item['name']}", item["problem"], env.PIP_FIX))
    problem = env.torch_problem(torch)
    if problem and torch.get("ok"):
        failures.append(_failure("environment", "torch build", problem, env.TORCH_FIX))
    devices = ["cuda"] if torch.get("cuda_available") else ["mps"] if torch.get("mps_available") else []
    smokes = [env.device_smoke(d) for d in devices] if torch.get("ok") else []
    for item in smokes:
        if not item["ok"]:
            failures.append(_failure("environment", f"{item['device']} matmul", item["error"], item["fix"]))
    if not ffmpeg["ok"]:
        failures.append(_failure("environment", "ffmpeg", ffmpeg["error"], ffmpeg["fix"]))
    section = {"python": python, "torch": torch, "device_tests": smokes, "ffmpeg": ffmpeg, "failures": failures,
               "imports_ok": sum(i["ok"] for i in imports), "imports": len(imports),
               "packages_ok": sum(p["ok"] for p in packages), "packages": len(packages)}
    if detailed:
        section.update(import_report=imports, package_report=packages)
    return section


# ---------------------------------------------------------------- the models


def models_section(args) -> dict:
    from producer.facts import hardware

    statuses = install.statuses()
    complete = {n for n, s in statuses.items() if s.complete}
    config_snaps = {family: next((models.snapshot_dir(registry.get(n)) for n in names if n in complete), None)
                    for family, names in needs.CONFIG_ENTRIES.items()}
    reports, failures = [], []
    for name, status in statuses.items():
        if status.status == install.MISSING:
            continue
        report = _entry_report(registry.get(name), status, config_snaps, args)
        reports.append(report)
        for check in report.checks:
            if not check.ok:
                fix = install.status_fix(status, args.models_dir) if check.what == "install" else \
                    _fix_for_check(name, args)
                failures.append(_failure("models", f"{name}: {check.what}", check.detail, fix))
    hw = hardware.probe(str(models.hub_cache()))
    wanted = {family: needs.family_need(family, hw, complete) for family in needs.FAMILIES}
    lacking = list(dict.fromkeys(n for need in wanted.values() for n in need.names if n not in complete))
    reach = needs.reach(hw, complete, wanted)
    suffix = f" --models-dir {args.models_dir}" if args.models_dir else ""
    if lacking and not all(need.plan.fits for need in reach.values()):
        # No download can make this machine run the real models: say what runs here instead of proposing one.
        failures.append(_failure("models", "the real models on this machine", needs.cannot_run(hw, reach),
                                 needs.DEMO_COMMAND, does_not_fit=True))
    elif lacking:
        advice, command = needs.download_advice(hw, lacking, complete, suffix)
        for need in wanted.values():
            missing = [n for n in need.names if n not in complete]
            if missing:
                fix = models.setup_command(*missing) + suffix if command.endswith("--download" + suffix) else command
                failures.append(_failure("models", f"models {need.script} needs here ({need.form})",
                                         f"not complete: {', '.join(missing)}; {advice}", fix, missing_model=True))
    return {"models_dir": str(models.hub_cache()), "entries": [r.to_dict() for r in reports],
            "needed": {f: need.to_dict() for f, need in wanted.items()}, "failures": failures}


def _entry_report(entry, status, config_snaps, args) -> installcheck.EntryReport:
    report = installcheck.EntryReport(entry.name, status.status)
    if not status.complete:
        report.checks.append(installcheck.Check("install", False, status.describe()))
    snap = models.snapshot_dir(entry)
    if snap is None or status.status in (install.PARTIAL, install.CORRUPT, install.CHANGED):
        return report  # files known to be incomplete or altered: re-fetching them comes first
    report.checks += installcheck.structure(entry, snap, args.detailed)
    if args.test_load and report.ok:
        log.info(f"test-load {entry.name} ...")
        report.checks += installcheck.deep(entry, snap, config_snaps)
    return report


def _fix_for_check(name: str, args) -> str:
    suffix = f" --models-dir {args.models_dir}" if args.models_dir else ""
    return (f"python scripts/setup_diffusers.py --check --verify --only {name}{suffix} (damaged files then show as "
            f"corrupt, and --download --only {name} replaces them); files that are intact and still fail do not fit "
            "the model they are for: report it")


# ---------------------------------------------------------------- the scripts, end to end


def smoke_section(args) -> dict:
    from producer.commands import smoke

    if args.smoke_dir:
        hf_home = Path(args.smoke_dir).expanduser().resolve()
        smoke.check_smoke_dir(hf_home)
        steps = smoke.run_smoke(hf_home, hf_home / "smoke-outputs", args.quiet, args.debug)
    else:
        with tempfile.TemporaryDirectory(prefix="producer-smoke-") as tmp:
            hf_home = Path(tmp)
            steps = smoke.run_smoke(hf_home / "hf-home", hf_home / "outputs", args.quiet, args.debug)
    failures = [_failure("smoke", s.name, s.detail, s.fix) for s in steps if not s.ok]
    return {"steps": [s.to_dict() for s in steps], "failures": failures,
            "standin_dir": str(hf_home) if args.smoke_dir else None}


# ---------------------------------------------------------------- the report


def describe(r: dict) -> str:
    if r.get("status") == "error":
        return ""
    lines = _describe_environment(r["environment"])
    if "models" in r:
        lines += _describe_models(r["models"])
    if "smoke" in r:
        lines.append("Scripts on stand-in models (--smoke)")
        for s in r["smoke"]["steps"]:
            lines.append(f"  [{'ok' if s['ok'] else 'FAIL'}] {s['name']} ({s['seconds']:.1f} s): {s['detail']}")
            lines += [f"      {'log' if not s['ok'] else 'note'}: {line}" for line in s["log"][:3]]
        if r["smoke"]["standin_dir"]:
            lines.append(f"  stand-in cache kept in {r['smoke']['standin_dir']} (use --models-dir with it)")
    if r["failures"]:
        lines.append(f"FAILED: {len(r['failures'])} problem(s)")
        lines += [f"  {f['what']}: {f['detail']}\n    fix: {f['fix']}" for f in r["failures"]]
    else:
        lines.append("All checks passed.")
    lines.append(f"Next: {r['next_command']}")
    return "\n".join(lines)


def _describe_environment(e: dict) -> list[str]:
    torch = e["torch"]
    summary = (f"  Python {e['python']['version']}; imports {e['imports_ok']}/{e['imports']} ok; requirements "
               f"{e['packages_ok']}/{e['packages']} ok; ffmpeg {'ok' if e['ffmpeg']['ok'] else 'MISSING'}")
    lines = ["Environment", summary]
    if torch.get("ok"):
        lines.append(f"  torch {torch['version']} ({torch['build']} build); devices: "
                     + (", ".join(f"{d['name']} ({d['total_gib']} GiB, sm {d['capability']})" for d in torch["devices"])
                        or ("Apple MPS" if torch["mps_available"] else "CPU only")))
    lines += [f"  {t['device']} bf16 matmul: {'ok' if t['ok'] else 'FAILED'}" for t in e["device_tests"]]
    for item in e.get("import_report", []):
        lines.append(f"    {item['module']} {item['version'] or ''}: {'ok' if item['ok'] else item['error']}")
    for item in e.get("package_report", []):
        lines.append(f"    {item['name']} {item['installed']} ({item['wanted']}): {'ok' if item['ok'] else item['problem']}")
    return lines


def _describe_models(m: dict) -> list[str]:
    lines = [f"Models ({m['models_dir']})"]
    if not m["entries"]:
        lines.append("  none installed")
    for entry in m["entries"]:
        bad = [c for c in entry["checks"] if not c["ok"]]
        lines.append(f"  [{'ok' if entry['ok'] else 'FAIL'}] {entry['name']} ({entry['status']}): "
                     f"{len(entry['checks']) - len(bad)}/{len(entry['checks'])} checks passed")
        for check in entry["checks"]:
            if not check["ok"] or check["skipped"] or _show(check):
                text = check["detail"].replace("\n", "\n      ")
                mark = "skip" if check["skipped"] else "ok" if check["ok"] else "FAIL"
                lines.append(f"    {mark} {check['what']}: {text}")
    for need in m["needed"].values():
        lines.append(f"  {need['script']} here: {need['plan']['summary']}")
    return lines


def _show(check: dict) -> bool:
    """Passing checks worth a line: weight coverage and LoRA reports (the --test-load results)."""
    return check["what"].endswith(" weights") or check["what"].startswith("LoRA ") or "config" in check["data"]


def main(argv: list[str] | None = None) -> int:
    return run_main(build(), run, argv, describe)

