"""A production folder read as a whole: its phase files, checked, with every problem located.

Phases, in the order SKILL.md runs them (each one approved by the user before the next is planned):

    philosophy  1    philosophy.md, style.json
    scenes      2    scene-breakdown.md
    assets      2.5  assets.json and the asset pictures
    keyframes   3    keyframes/KF-*.png (character keyframes through their layers)
    clips       4    scene-XX/video.mp4
    film        5    final/film.mp4

`load_production` never raises for content: a file that is missing or wrong becomes a Problem of its
phase. Missing files count as problems only up to the latest phase that has a file (a folder in
Phase 1 is not wrong for lacking scene-breakdown.md; one with assets.json but no philosophy.md is).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path

from producer.errors import CliError
from producer.files import paths
from producer.files.inputs import regular_file
from producer.files.layout import ASSETS, PHILOSOPHY, SCENE_BREAKDOWN, STATE, STYLE
from producer.production import rules
from producer.production.assets import AssetPlan, load_assets
from producer.production.phasefiles import check_philosophy, check_style
from producer.production.scenes import Problem, SceneBreakdown, parse_scene_breakdown
from producer.values import load_json

PHASES = ("philosophy", "scenes", "assets", "keyframes", "clips", "film")
PHASE_NUMBERS = {"philosophy": "1", "scenes": "2", "assets": "2.5", "keyframes": "3", "clips": "4", "film": "5"}
PHASE_FILES = {"philosophy": (PHILOSOPHY, STYLE), "scenes": (SCENE_BREAKDOWN,), "assets": (ASSETS,)}
SETTINGS = "settings.json"
JUDGE = "judge"  # settings.json: {"judge": {NAME: VALUE}}, the thresholds of the judging (workflow.drift,
# the scripts' --judge) and the retake budget (workflow.retakes)
RETAKE_KEYS = ("retake_variants", "retake_budget")


@dataclass
class Production:
    root: Path
    style: object | None = None  # producer.files.style.Style
    plan: SceneBreakdown | None = None
    assets: AssetPlan | None = None
    settings: dict = field(default_factory=dict)  # .production/settings.json: script -> extra options
    problems: dict[str, list[Problem]] = field(default_factory=lambda: {p: [] for p in PHASES})
    warnings: list[str] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)  # phase files not written yet (not problems)
    settings_problems: list[Problem] = field(default_factory=list)  # they concern every generating phase
    folder_problems: list[Problem] = field(default_factory=list)  # its own folders leading elsewhere: every phase
    allow_outside: bool = False  # the user's --allow-outside: asset pictures may be kept elsewhere

    def all_problems(self) -> list[Problem]:
        return self.folder_problems + [p for phase in PHASES for p in self.problems[phase]] + self.settings_problems

    def ok_through(self, phase: str) -> bool:
        """No problem in this phase's files or any earlier phase's, and the files are there."""
        upto = PHASES[:PHASES.index(phase) + 1]
        files = [f for p in upto for f in PHASE_FILES.get(p, ())]
        generating = PHASES.index(phase) >= PHASES.index("assets")
        return (not self.folder_problems and not any(self.problems[p] for p in upto)
                and not any(f in self.missing for f in files) and not (generating and self.settings_problems))


def load_production(root: str | Path, allow_outside: bool = False, asset_files_due: bool = False) -> Production:
    """asset_files_due: the assets phase has been approved once, so every asset picture must exist."""
    root = Path(root)
    prod = Production(root, allow_outside=allow_outside)
    prod.folder_problems = [Problem(name, 1, f"the folder {name} {why}", "make it a real folder inside the "
                                    "production (move what it holds there): the tools write into it, and never "
                                    "through a link to somewhere else")
                            for name, why in paths.folder_problems(root, allow_outside)]
    present = [f for files in PHASE_FILES.values() for f in files if (root / f).is_file()]
    if not present:
        prod.problems["philosophy"].append(Problem(PHILOSOPHY, 1, f"no production files in {root}",
                                                   "start with philosophy.md and style.json (SKILL.md Phase 1)"))
        prod.missing = [f for files in PHASE_FILES.values() for f in files]
        return prod
    last = max(i for i, p in enumerate(PHASE_FILES) if any(f in present for f in PHASE_FILES[p]))
    for i, (phase, files) in enumerate(PHASE_FILES.items()):
        for name in files:
            if name in present:
                continue
            prod.missing.append(name)
            if (root / name).exists():  # there, but a FIFO, a device or a folder: never opened
                try:
                    regular_file(root / name, name)
                except CliError as err:
                    prod.problems[phase].append(Problem(name, 1, err.message, err.fix))
            elif i < last:
                prod.problems[phase].append(Problem(name, 1, f"{name} is missing but a later phase's file exists",
                                                    f"write {name} (phases go in order: SKILL.md)"))
    _read_phase_files(prod, present, allow_outside, asset_files_due)
    _read_settings(prod)
    return prod


def _read_phase_files(prod: Production, present: list[str], allow_outside: bool, asset_files_due: bool) -> None:
    root = prod.root
    if PHILOSOPHY in present:
        prod.problems["philosophy"] += check_philosophy(root)
    if STYLE in present:
        prod.style, problems, prod.warnings = check_style(root)
        prod.problems["philosophy"] += problems
    if SCENE_BREAKDOWN in present:
        prod.plan = _read_plan(root / SCENE_BREAKDOWN)
        prod.problems["scenes"] += prod.plan.problems + rules.scene_problems(prod.plan)
    if ASSETS in present:
        prod.assets, problems = load_assets(root, allow_outside)
        prod.problems["assets"] += problems
        if prod.assets is not None:
            prod.problems["assets"] += _asset_file_problems(prod.root, prod.assets, asset_files_due)
            if prod.plan is not None:
                prod.problems["assets"] += rules.asset_problems(prod.plan, prod.assets)


def _read_plan(path: Path) -> SceneBreakdown:
    data = path.read_bytes()
    try:
        text = data.decode("utf-8-sig")
        problems = []
    except UnicodeDecodeError as exc:
        text = data.decode("utf-8-sig", errors="replace")
        problems = [Problem(SCENE_BREAKDOWN, data[:exc.start].count(b"\n") + 1, "the file is not valid UTF-8",
                            "save it as UTF-8")]
    plan = parse_scene_breakdown(text, SCENE_BREAKDOWN)
    plan.problems[:0] = problems
    return plan


def _asset_file_problems(root: Path, assets: AssetPlan, due: bool) -> list[Problem]:
    out = []
    for asset in assets.assets:
        if asset.path.is_file():
            continue
        if asset.hand_written:
            out.append(Problem(ASSETS, asset.line, f"{asset.kind}.{asset.name}: {asset.image} does not exist (keypoints "
                               "JSON is written by hand, never generated)", "write the OpenPose keypoints file, or "
                               "point the pose at a picture (a PNG path is generated from the description)"))
        elif due:
            out.append(Problem(ASSETS, asset.line, f"{asset.kind}.{asset.name}: {asset.image} does not exist, but the "
                               "assets were approved", f"generate it (`production.py next {root}`) or restore the file"))
    return out


def _read_settings(prod: Production) -> None:
    path = prod.root / STATE / SETTINGS
    if not path.is_file():
        return
    where = f"{STATE}/{SETTINGS}"
    try:
        data = load_json(path.read_text(encoding="utf-8-sig"))  # a BOM (Notepad) is welcome, as in style.json
    except (OSError, ValueError) as exc:
        prod.settings_problems.append(Problem(where, 1, f"cannot be read: {exc}", "fix the JSON or delete the file"))
        return
    if not isinstance(data, dict) or not all(isinstance(v, dict) for k, v in data.items() if not k.startswith("_")):
        prod.settings_problems.append(Problem(where, 1, "must map script names to objects of options",
                                              '{"qwen_image.py": {"preset": "720p"}, "wan_video.py": {"steps": 6}}'))
        return
    prod.settings = {k: v for k, v in data.items() if not k.startswith("_")}
    for key, value in (prod.settings.get(JUDGE) or {}).items():
        why = judge_value_problem(key, value)
        if why:
            prod.settings_problems.append(Problem(where, 1, why, f'e.g. {{"{JUDGE}": {{"retake_variants": 3, '
                                                  '"flicker_ratio": 8}}: plain numbers, no NaN or Infinity'))


def judge_value_problem(key: str, value) -> str | None:
    """Why a value under settings.json's "judge" cannot be used, or None. Checked here so that `check` says it:
    a NaN threshold silently turned its flag off (every comparison with NaN is false) and reached every job's
    --judge, and a number too large for a float, or a budget that is not a count, crashed `status` and `next`."""
    if key.startswith("_"):
        return None
    if key in RETAKE_KEYS:
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            return f"{JUDGE}.{key}: {_short(value)} must be a whole number >= 0"
        return None
    try:
        number = float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else math.nan
    except OverflowError:  # an integer of hundreds of digits
        number = math.nan
    if not math.isfinite(number) or number < 0:
        return f"{JUDGE}.{key}: {_short(value)} must be a number >= 0"
    return None


def _short(value) -> str:
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."
