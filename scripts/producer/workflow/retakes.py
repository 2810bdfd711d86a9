"""Retakes within a budget: flagged keyframes and clips retaken by `next` by itself, every variant kept.

Off unless .production/settings.json says {"judge": {"retake_variants": N, "retake_budget": M}}: at the
keyframe or clip checkpoint, each item the judging flags (producer.workflow.drift) is kept as a variant and moved to
its next take (a new seed, as `production.py retake` does), until it has N variants (its first take
included) or M retakes have been made in all; `next` then makes the new takes. Nothing is approved by
itself: at the checkpoint the agent shows the user each item's variants, best first by their figures.

Every variant is kept under .production/variants/ITEM/take-K/ (the picture, or the clip with its review
PNGs and its recipe), recorded in .production/retakes.json with its flags. What counts is kept in files:
the retakes made are the items' takes beyond the first variant's (takes.json), so an interruption anywhere
neither loses a variant nor spends the budget twice (a variant is copied, then recorded, then the take
moves; a rerun finds the record and goes on from there).
"""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass
from pathlib import Path

from producer.errors import CliError
from producer.files import faults, layout, provenance, review
from producer.files.outputs import atomic_output, write_json_atomic
from producer.production.project import JUDGE, judge_value_problem
from producer.workflow import approvals

STATE = "retakes.json"
VARIANTS = layout.STATE_FOLDERS[1]  # .production/variants


@dataclass(frozen=True)
class Budget:
    variants: int = 0  # per item, its first take included (0 or 1: retakes off)
    total: int = 0  # retakes made by `next`, in all

    @property
    def on(self) -> bool:
        return self.variants > 1 and self.total > 0


def budget_from(settings: dict) -> Budget:
    given = settings.get(JUDGE) or {}

    def count(key: str) -> int:  # a value that is not a count is a problem `check` reports: retakes stay off
        return 0 if judge_value_problem(key, given.get(key, 0)) else given.get(key, 0)

    return Budget(count("retake_variants"), count("retake_budget"))


def badness(flags: list[dict]) -> float:
    """Lower is better: one per flag, plus how far each figure lies past its threshold (relative)."""
    return round(sum(1 + abs(f["figure"] - f["threshold"]) / max(abs(f["threshold"]), 1e-6) for f in flags), 4)


def read_state(root: Path) -> dict:
    path = layout.state_file(root, STATE)
    if not path.is_file():
        return {"items": {}}
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        items = dict(data["items"])
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise CliError(
            f"{path} cannot be read ({exc})",
            f"fix or delete it; it lists the kept variants (they stay in {layout.state_dir(root) / VARIANTS})",
        ) from None
    return {"items": items}


def spent(state: dict, takes: dict[str, int]) -> int:
    """Retakes made so far: each item's take beyond its first kept variant's."""
    return sum(max(0, takes.get(item, 0) - records[0]["take"]) for item, records in state["items"].items() if records)


def plan(root: Path, outputs: dict[str, Path], flagged: dict[str, list[dict]], budget: Budget) -> dict:
    """Keep each flagged item's output as a variant and move the item to its next take, within the budget.
    `outputs`: item id -> its output file. Returns the items retaken, those at their limit, and the spending."""
    root = Path(root)
    state, takes = read_state(root), approvals.read_takes(root)
    used = spent(state, takes)
    retaken, at_limit = [], []
    for item, flags in flagged.items():
        records = state["items"].setdefault(item, [])
        take = takes.get(item, 0)
        if not any(r["take"] == take for r in records):
            records.append(_keep(root, item, take, outputs[item], flags))
            write_json_atomic(layout.state_file(root, STATE), state)  # recorded before the take moves
        if len(records) >= budget.variants or used >= budget.total:
            at_limit.append(item)
            continue
        faults.at(f"retake:{item}")  # variant kept and recorded, the take not moved yet
        approvals.bump_take(root, item)
        used += 1
        retaken.append(item)
    return {"retaken": retaken, "at_limit": at_limit, "spent": used, "budget": budget.total}


def proposals(root: Path, current: dict[str, list[dict]], takes: dict[str, int] | None = None) -> dict[str, list]:
    """Per item with kept variants: every variant and the current take, best first by their figures.
    `current`: item id -> the current output's flags ([] when clean)."""
    root = Path(root)
    state = read_state(root)
    takes = approvals.read_takes(root) if takes is None else takes
    out = {}
    for item, records in state["items"].items():
        take = takes.get(item, 0)
        candidates = [{**r, "current": False} for r in records if r["take"] != take]
        if item in current:  # the output as it is now (a kept copy of it, if any, is in `folder`)
            folder = next((r["folder"] for r in records if r["take"] == take), None)
            flags = [{k: f[k] for k in ("reason", "frames", "figure", "threshold") if k in f} for f in current[item]]
            candidates.append(
                {"take": take, "folder": folder, "flags": flags, "badness": badness(flags), "current": True}
            )
        out[item] = sorted(candidates, key=lambda c: (c["badness"], -c["take"]))
    return out


def _keep(root: Path, item: str, take: int, output: Path, flags: list[dict]) -> dict:
    folder = layout.state_dir(root) / VARIANTS / item.replace(":", "-").replace("/", "-") / f"take-{take}"
    folder.mkdir(parents=True, exist_ok=True)
    for path in _files_of(output):
        with atomic_output(folder / path.name) as tmp:
            shutil.copy2(path, tmp)
    kept = [{k: f[k] for k in ("reason", "frames", "figure", "threshold") if k in f} for f in flags]
    return {"take": take, "folder": layout.relative(root, folder), "flags": kept, "badness": badness(flags)}


def _files_of(output: Path) -> list[Path]:
    """An item's files: a picture (its recipe inside), or a clip with its review PNGs and its recipe."""
    if output.suffix.lower() != ".mp4":
        return [output] if output.is_file() else []
    files = [output, *review.review_paths(output).values(), provenance.sidecar_path(output)]
    return [p for p in files if p.is_file()]
