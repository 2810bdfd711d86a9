"""Paces the speed model's assumptions take from runs that loaded models from disk (bench/speedmodel.py): how fast
a clip takes in its experts when RAM holds one, how fast a LoRA folds into GGUF experts, and how long compiling the
GGUF dequantization takes a process."""

from __future__ import annotations

import re
import statistics


def disk_reads(seconds: dict) -> float:
    return seconds.get("load_experts", 0.0) + seconds.get("expert_swap", 0.0)


# A one-reader read of the run's files at least this fast came from the page cache (this machine's drive gives
# 1.7-2.0 GB/s, bench/results/2026-12-07-h200/disk.json): the clip's reads then show the scripts' pace, not a disk's.
PAGE_CACHED_GB_S = 3.0


def expert_read_gb_s(runs: list[dict]) -> float | None:
    """Both experts' bytes over a clip's reads of them (its load and its swap), in runs whose files were in the
    page cache: the pace of reading, building and placing, not the disk's. None without such runs."""
    rates = []
    for run in runs:
        sec, disk = run.get("seconds", {}), run.get("disk_read") or {}
        if sec.get("load_experts") and sec.get("expert_swap") and disk.get("gb_per_s", 0) >= PAGE_CACHED_GB_S:
            rates.append(disk["bytes"] / 1e9 / disk_reads(sec))
    return round(statistics.median(rates), 2) if rates else None


def lora_fold_mparams_s(runs: list[dict]) -> float | None:
    """Millions of LoRA factors folded a second: a `-lora` run's load of both Wan experts (its `loras` stage)
    against the factors its plan counts for each (loras.plan_params). None without such runs."""
    import loras

    rates = [2 * loras.plan_params("wan", r["config"]) / 1e6 / r["load_stages_s"]["loras"] for r in runs
             if r.get("workload", "").startswith("wan") and r["config"].endswith("-lora")
             and (r.get("load_stages_s") or {}).get("loras") and "one expert in RAM" not in r.get("plan", "")]
    return round(statistics.median(rates), 1) if rates else None


def refold_share(result: dict) -> float:
    """bench/lora_load.py's fold again from a Refold against its whole load, medians (one machine, one run)."""
    return round(result["refold_median_s"] / result["median_s"], 2)


# compiled_dequant's note: "GGUF dequantization compiled (Q4_K, Q6_K: 10.0 s)"; "...: 0.0 s; ... compiled earlier in
# this process" is a second expert's, which found the code compiled (and, before the speed report kept each
# expert's first notes, replaced the first one's: those runs give no figure).
DEQUANT_COMPILED = re.compile(r"GGUF dequantization compiled \([^:)]*: ([0-9.]+) s")


def dequant_compile_s(runs: list[dict]) -> dict[str, float]:
    """Per family, the longest a process spent compiling the GGUF dequantization in these runs (at its load,
    outside the timed items, so no entry's cold_extra_s holds it); families without such a run are absent."""
    out: dict[str, float] = {}
    for run in runs:
        family = str(run.get("workload", "")).split("-")[0]
        for note in run.get("speed") or []:
            match = DEQUANT_COMPILED.search(note)
            if family in ("wan", "qwen") and match and float(match.group(1)) > 0:
                out[family] = max(out.get(family, 0.0), float(match.group(1)))
    return out
