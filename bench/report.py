"""Markdown tables from benchmark results: one table per workload, plain diffusers beside each figure."""

from __future__ import annotations

STAGES = ("encode", "load_experts", "high_expert", "low_expert", "expert_swap", "denoise", "decode")


def markdown(results: dict) -> str:
    env = results["environment"]
    lines = [f"Measured {env.get('date')} on {env.get('gpu', 'CPU')} ({env.get('gpu_memory_gib', '-')} GiB), "
             f"torch {env.get('torch')}, diffusers {env.get('diffusers')}, Python {env.get('python')}"
             + (f", host to GPU {env['host_to_gpu_gb_s']} GB/s pinned" if "host_to_gpu_gb_s" in env else "") + ".",
             ""] + [f"Command: `{c}`" for c in results.get("commands", [results.get("command", "")])] + [""]
    by_workload: dict[str, list[dict]] = {}
    for run in results["runs"]:
        by_workload.setdefault(run["workload"], []).append(run)
    for workload, runs in by_workload.items():
        lines += (_batch_table(workload, runs) if any("phases" in r for r in runs) else _table(workload, runs)) + [""]
    return "\n".join(lines)


def _table(workload: str, runs: list[dict]) -> list[str]:
    plain = next((r for r in runs if r["config"] == "plain" and not r.get("error")), None)
    stages = [s for s in STAGES if any(s in r.get("seconds", {}) for r in runs)]
    head = ["config", "total s", "vs plain", "cold s"] + [f"{s} s" for s in stages] + ["peak VRAM GiB",
                                                                                    "peak RAM GiB", "plan"]
    out = [f"### {workload}", "", "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in runs:
        if r.get("error"):
            out.append(f"| {r['config']} | failed: {r['error'][:120]} |" + " |" * (len(head) - 2))
            continue
        total = r["seconds"]["total"]
        ratio = f"{total / plain['seconds']['total']:.2f}x" if plain else "-"
        cells = [r["config"], f"{total:.2f}", ratio, f"{r['cold_total']:.2f}"]
        cells += [f"{r['seconds'][s]:.2f}" if s in r["seconds"] else "" for s in stages]
        before = r.get("peak_vram_before_decode_gib", {}).get("gib")
        vram = f"{r['peak_vram_gib']} ({before} before decode)" if before is not None else str(r["peak_vram_gib"])
        cells += [vram, str(r["peak_ram_gib"]), r.get("plan", "")[:90]]
        out.append("| " + " | ".join(cells) + " |")
    out += _plan_rows(runs, plain)
    for r in runs:
        if "fp8_vs_bf16" in r:
            d = r["fp8_vs_bf16"]
            out += ["", (f"{r['config']}: one forward of the high-noise expert against bf16 on the same weights: "
                         f"relative L2 error {d['relative_l2']}, cosine {d['cosine']}, largest difference "
                         f"{d['max_abs']}.")]
    note = next((r for r in runs if r.get("measured_steps", 0) != r.get("steps", 0)), None)
    if note:
        out += ["", f"Denoising measured over {note['measured_steps']} of {note['steps']} steps and scaled to "
                    f"{note['steps']} (per-step cost is constant within a schedule); decode measured as is."]
    return out


def _plan_rows(runs: list[dict], plain: dict | None) -> list[str]:
    """The planVxR runs as the machines they stand for: measured peaks beside the plan's prediction and the
    machine's budget (VRAM is capped; host RAM cannot be, so it is measured against the machine's RAM)."""
    rows = [r for r in runs if "machine_gb" in r and not r.get("error")]
    if not rows:
        return []
    out = ["", "| machine (VRAM / RAM GB) | weights | total s | vs plain | peak VRAM GiB (predicted for generating; "
               "the plan's peak) | peak RAM GiB: anonymous, and all resident (predicted: in the process without the "
               "OS reserve, for generating; the plan's peak) "
               "| fits the machine | load to first step s (read floor s) |",
           "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        vram, ram = r["machine_gb"]["vram"], r["machine_gb"]["ram"]
        ratio = f"{r['seconds']['total'] / plain['seconds']['total']:.2f}x" if plain else "-"
        # Mapped file pages are page cache the kernel reclaims: what must fit is anonymous + shared memory.
        must_fit = r.get("peak_ram_anon_gib", r["peak_ram_gib"])
        fits = r["peak_vram_gib"] <= vram and must_fit <= ram
        if "text_encoder" in r:
            out.append(f"| {vram} / {ram} | text encoder {r['text_encoder']} | {r['seconds']['total']:.2f} | "
                       f"{ratio} | {r['peak_vram_gib']} | {r['peak_ram_gib']} | - | - |")
            continue
        load = (f"{r['load_to_first_step_s']:.1f} ({r['load_floor_s']:.1f} at "
                f"{r['disk_read']['gb_per_s']} GB/s)") if "load_to_first_step_s" in r else "-"
        out.append(f"| {vram} / {ram} | {r['weights']} | {r['seconds']['total']:.2f} | {ratio} | "
                   f"{r['peak_vram_gib']} ({_predicted(r, 'vram')}) | {_ram(r)} ({_predicted(r, 'ram')}) | "
                   f"{'yes' if fits else 'no'} | {load} |")
    return out


def _predicted(run: dict, what: str) -> str:
    """The plan's prediction for the stages the run has; results from before 2026-12-07 hold the plan's peak."""
    generating, peak = run[f"predicted_{what}_gib"], run.get("plan_peak_gib", {}).get(what)
    process = f"{run['predicted_ram_process_gib']} in the process, " if what == "ram" and \
        "predicted_ram_process_gib" in run else ""
    return f"{process}{generating}; {peak}" if peak is not None else str(generating)


def _ram(run: dict) -> str:
    if "peak_ram_anon_gib" not in run:
        return str(run["peak_ram_gib"])
    return f"{run['peak_ram_anon_gib']}, {run['peak_ram_gib']}"


def _all_items(phase: dict) -> str:
    """The whole batch's ratio where it is known (results before it have only the median)."""
    return f" ({phase['items_ratio']:.3f}x all items)" if "items_ratio" in phase else ""


def _batch_table(workload: str, runs: list[dict]) -> list[str]:
    """The scripts' --batch (bench/batches.py): each phase's measured time against the estimate's prediction,
    and per item the time against pure generation (denoise + decode)."""
    out = [f"### {workload} (the scripts' own --batch, models read from disk)", "",
           ("| config | phase | items | measured s | predicted s | error | load + prompts s (predicted) | "
            "items s (predicted) | per item / pure generation | overhead per item s | peak VRAM GiB (planned) | "
            "peak RAM GiB anonymous (planned) | plan |"),
           "|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in runs:
        if r.get("error"):
            out.append(f"| {r['config']} | failed: {r['error'][:120]} |" + " |" * 11)
            continue
        for p in r["phases"]:
            pred, err = p["predicted"], p["errors"]["total"]
            out.append(f"| {r['config']} | {p['phase']} | {p['items']} | {p['total_s']:.1f} | {pred['total_s']} | "
                       f"{'-' if err is None else f'{err:+.1%}'} | {p['load_text_s']:.1f} ({pred['load_text_s']}) | "
                       f"{p['items_s']:.1f} ({pred['items_s']}) | {p['item_ratio_median']:.3f}x"
                       f"{_all_items(p)} | "
                       f"{p['overhead_median_s']:.2f} | {p['peak_vram_gib']} ({p.get('predicted_vram_gib', '-')}) | "
                       f"{p.get('peak_ram_anon_gib', '-')} ({p.get('predicted_ram_gib', '-')}) | {p['plan'][:70]} |")
        whole = r["production"]
        if len(r["phases"]) > 1:
            err = whole["error"]
            out.append(f"| {r['config']} | all | | {whole['measured_s']:.1f} | {whole['predicted_s']} | "
                       f"{'-' if err is None else f'{err:+.1%}'} | | | | | | | |")
    out += ["", "Per item / pure generation: the median over the items after the first of (item - load) / "
                "(denoise + decode), and (all items) the same over the whole batch; the first item also reads the "
                "denoisers. Weights: " +
            next((r["weights_made"] for r in runs if "weights_made" in r), "-") + "."]
    return out
