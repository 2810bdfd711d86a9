"""The rules a scene plan must keep, each broken rule a Problem with the file, the line and the fix.

1. Every scene has a type, a duration, a start keyframe, a motion description and a camera, and every
   scene but the last a transition; every keyframe a description. No text is left in the template's
   "[...]" form. Scenes are numbered 1, 2, 3... without gaps or repeats.
2. A scene is at most one clip long: Wan 2.2 makes 81 frames at 16 fps (MAX_SCENE_SECONDS = 5.06 s).
3. The seed's scene-count table: 1-5 s of film need 1 scene, 6-10 s 2, 11-15 s 3, 16-20 s 4, beyond
   that one per 5 s (the total is the larger of the Overview's and the scenes' sum, in whole seconds).
   The Overview's numbers must agree with the plan.
4. Boundaries: scene N's end keyframe is scene N+1's start keyframe when they are joined by a
   `continuous` transition (the shared-boundary-keyframe principle: one picture, generated once). A
   cut, fade or dissolve changes the shot, so the next scene may start on a keyframe of its own (or
   still share one). A continuous join needs an end keyframe to share.
5. Every keyframe of the table is used by a scene and every keyframe a scene uses is in the table,
   once; the "Used In" column agrees with the scenes.
6. Every character, pose, background and object a keyframe names exists in assets.json; every
   keyframe names a background (its set); a pose needs a character; at most MAX_OBJECTS objects (the
   edit model takes three pictures: character, object and pose for a character layer).
7. A landscape scene shows no character: its keyframes name none. A character scene has at least one
   keyframe with a character.
"""

from __future__ import annotations

import difflib
import math
import re
from itertools import pairwise
from pathlib import Path

from producer.facts import registry
from producer.files.layout import ASSETS, SCENE_BREAKDOWN
from producer.production.assets import AssetPlan
from producer.production.scenes import KeyframeRow, Problem, Scene, SceneBreakdown

MAX_SCENE_SECONDS = registry.WAN.frames / registry.WAN.fps  # 81 / 16 = 5.0625
SECONDS_PER_SCENE = 5  # the scene-count table's step
MAX_OBJECTS = 1
NEW_SHOT_TRANSITIONS = ("cut", "fade", "dissolve")
REQUIRED = {  # field -> what to write
    "type": "'**Type**: character' or 'landscape'",
    "duration": "'**Duration**: 5 seconds' (at most 5)",
    "start_keyframe": "'**Start Keyframe**: KF-A' (an id of the Unique Keyframes table)",
    "motion": "'**Motion Description**:' and what moves between the keyframes",
    "camera": "'**Camera**: static' (or tracking, pan, zoom - be specific)",
}
PLACEHOLDER = re.compile(r"\[[^\]]*\](?!\()")
_EMPTY = {"", "-", "—", "–", "none", "n/a", "na", "no", "nobody", "(none)"}


def minimum_scenes(total_seconds: float) -> int:
    """The seed's table: ceil(seconds / 5) counted in whole seconds, at least 1."""
    return max(1, math.ceil(round(total_seconds) / SECONDS_PER_SCENE))


def cell_names(text: str) -> list[str]:
    """Asset names in a table cell: 'keeper', 'keeper.png', 'assets/poses/standing.png', 'a, b'; '-' is none."""
    names = []
    for part in re.split(r"[,;+&]|\band\b", text):
        part = part.strip().strip("`")
        if part.lower() in _EMPTY:
            continue
        names.append(Path(part).stem if "/" in part or re.search(r"\.\w{2,4}$", part) else part)
    return names


def scene_problems(plan: SceneBreakdown) -> list[Problem]:
    """Rules 1-5: everything that needs only scene-breakdown.md."""
    out: list[Problem] = []
    scenes = sorted(plan.scenes, key=lambda s: s.number)
    out += _numbering(scenes)
    reported = {p.line for p in plan.problems}  # a value the parser could not read is reported once, there
    for i, scene in enumerate(scenes):
        out += _fields(scene, last=i == len(scenes) - 1, reported=reported)
    out += _counts(plan, scenes)
    for before, after in pairwise(scenes):
        out += _boundary(before, after) + _transition_length(before, after)
    out += _keyframe_use(plan, scenes)
    return out


def _p(line: int, message: str, fix: str) -> Problem:
    return Problem(SCENE_BREAKDOWN, line, message, fix)


def _numbering(scenes: list[Scene]) -> list[Problem]:
    out, seen = [], set()
    for expected, scene in enumerate(scenes, 1):
        if scene.number in seen:
            out.append(_p(scene.line, f"scene {scene.number} appears twice", "give each scene its own number"))
        elif scene.number != expected and not out:
            out.append(_p(scene.line, f"scene {scene.number} follows scene {expected - 1}: the numbers have a gap",
                          "number the scenes 1, 2, 3... in film order"))
        seen.add(scene.number)
    return out


def _template_text(text: str | None) -> str | None:
    """Bracketed template text ("[Specific actions and movements ...]"), not a markdown link."""
    match = PLACEHOLDER.search(text or "")
    return match.group(0) if match else None


def _fields(scene: Scene, last: bool, reported: set[int]) -> list[Problem]:
    out = []
    for name in ("motion", "camera", "purpose"):
        left = _template_text(getattr(scene, name))
        if left:
            out.append(_p(scene.line_of(name), f"scene {scene.number}: the {name} still holds template text {left!r}",
                          "replace it with this scene's own words"))
    for name, write in REQUIRED.items():
        if getattr(scene, name) is None and scene.lines.get(name) not in reported:
            label = name.replace("_", " ").replace("motion", "motion description")
            out.append(_p(scene.line_of(name), f"scene {scene.number} has no {label}", f"add {write}"))
    if not last and scene.transition is None and "transition" not in scene.lines:
        out.append(_p(scene.line, f"scene {scene.number} has no transition to the next scene",
                      "add '**Transition to Next**: cut' (or fade, dissolve, continuous)"))
    elif not last and scene.transition is None and scene.line_of("transition") not in reported:
        out.append(_p(scene.line_of("transition"), f"scene {scene.number} says there is no next scene, but there is",
                      "write cut, fade, dissolve or continuous"))
    if scene.duration is not None and scene.duration > MAX_SCENE_SECONDS + 1e-9:
        out.append(_p(scene.line_of("duration"), f"scene {scene.number} is {scene.duration:g} s; one clip is at most "
                      f"{registry.WAN.frames} frames at {registry.WAN.fps} fps ({MAX_SCENE_SECONDS:.2f} s)",
                      "split it into two scenes that share a keyframe, or shorten it to 5 seconds"))
    return out


def _counts(plan: SceneBreakdown, scenes: list[Scene]) -> list[Problem]:
    out = []
    overview = plan.overview
    total = sum(s.duration or 0 for s in scenes)
    stated = overview.total_duration if overview else None
    line = overview.lines.get("total_duration", overview.line) if overview else 1
    if stated is not None and abs(stated - total) > 0.5:
        out.append(_p(line, f"the Overview says {stated:g} s but the scenes add up to {total:g} s",
                      "make the Total Duration the sum of the scene durations"))
    needed = minimum_scenes(max(total, stated or 0))
    if len(scenes) < needed:
        out.append(_p(line, f"{max(total, stated or 0):g} s of film needs at least {needed} scenes (one 5-second clip "
                      f"each), the plan has {len(scenes)}", "split the film into more scenes"))
    if overview and overview.scene_count is not None and overview.scene_count != len(scenes):
        out.append(_p(overview.lines["scene_count"], f"the Overview says {overview.scene_count} scenes, the plan has "
                      f"{len(scenes)}", f"write '**Number of Scenes**: {len(scenes)}'"))
    unique = len({k.id for k in plan.keyframes})
    if overview and overview.keyframe_count is not None and overview.keyframe_count != unique:
        out.append(_p(overview.lines["keyframe_count"], f"the Overview says {overview.keyframe_count} unique "
                      f"keyframes, the table has {unique}", f"write '**Number of Unique Keyframes**: {unique}'"))
    return out


def _transition_length(before: Scene, after: Scene) -> list[Problem]:
    """A fade or dissolve spans the end of one clip and the start of the next: no longer than either (the
    assembler refuses it then, after every clip was made)."""
    seconds = before.transition.seconds if before.transition else None
    if seconds is None:
        return []
    shortest = min(d for d in (before.duration, after.duration, MAX_SCENE_SECONDS) if d is not None)
    if seconds <= shortest + 1e-9:
        return []
    return [_p(before.line_of("transition"), f"scene {before.number}'s {before.transition.kind} into scene "
               f"{after.number} lasts {seconds:g} s, longer than a clip it joins ({shortest:g} s)",
               f"shorten it, e.g. '{before.transition.kind} 0.5s'")]


def _boundary(before: Scene, after: Scene) -> list[Problem]:
    kind = before.transition.kind if before.transition else None
    start = after.start_keyframe
    if kind != "continuous" or start is None:
        return []
    if before.end_keyframe is None:
        return [_p(before.line_of("transition"), f"scene {before.number} flows continuously into scene {after.number}"
                   " but has no end keyframe to share", f"give scene {before.number} the end keyframe "
                   f"{start.id} (scene {after.number}'s start), or make the transition a cut")]
    if before.end_keyframe.id != start.id:
        return [_p(start.line, f"scene {after.number} starts on {start.id} but scene {before.number} ends on "
                   f"{before.end_keyframe.id}, and they are joined by a continuous transition",
                   f"start scene {after.number} on {before.end_keyframe.id} (adjacent scenes share their boundary "
                   "keyframe), or make the transition a cut")]
    return []


def _keyframe_use(plan: SceneBreakdown, scenes: list[Scene]) -> list[Problem]:
    out, rows = [], {}
    for row in plan.keyframes:
        if row.id in rows:
            out.append(_p(row.line, f"keyframe {row.id} is in the table twice (first on line {rows[row.id].line})",
                          "keep one row per keyframe"))
        rows.setdefault(row.id, row)
    uses: dict[str, list[tuple[int, str]]] = {}
    for scene in scenes:
        for where, ref in (("start", scene.start_keyframe), ("end", scene.end_keyframe)):
            if ref is None:
                continue
            uses.setdefault(ref.id, []).append((scene.number, where))
            if ref.id not in rows:
                close = difflib.get_close_matches(ref.id, list(rows), n=1)
                out.append(_p(ref.line, f"scene {scene.number}'s {where} keyframe {ref.id} is not in the Unique "
                              "Keyframes table", f"did you mean {close[0]}?" if close else f"add a row for {ref.id}"))
    for kf_id, row in rows.items():
        left = _template_text(row.description)
        if not row.description or left:
            out.append(_p(row.line, f"keyframe {kf_id} has no description" if not row.description else
                          f"keyframe {kf_id}: the description still holds template text {left!r}",
                          "describe the moment this keyframe shows (it becomes the prompt)"))
        if kf_id not in uses:
            out.append(_p(row.line, f"keyframe {kf_id} is not used by any scene",
                          "use it as a scene's start or end keyframe, or remove the row"))
        elif row.used_in and sorted(row.used_in) != sorted(uses[kf_id]):
            actual = ", ".join(f"Scene {n} {w}" for n, w in sorted(uses[kf_id]))
            out.append(_p(row.line, f"keyframe {kf_id}: 'Used In' says {row.used_in_text!r} but the scenes use it "
                          f"as {actual}", f"write '{actual}' in its Used In column"))
    return out


# ---------------------------------------------------------------- with assets.json


def asset_problems(plan: SceneBreakdown, assets: AssetPlan) -> list[Problem]:
    """Rules 6-7: the keyframe table against assets.json and the scene types."""
    out = []
    for row in plan.keyframes:
        out += _row_assets(row, assets)
    for scene in plan.scenes:
        out += _scene_type(plan, scene)
    return out


def _row_assets(row: KeyframeRow, assets: AssetPlan) -> list[Problem]:
    out = []
    characters, poses = cell_names(row.character), cell_names(row.pose_asset)
    backgrounds, objects = cell_names(row.background), cell_names(row.objects)
    for kind, names in (("characters", characters), ("poses", poses), ("backgrounds", backgrounds),
                        ("objects", objects)):
        for name in names:
            if assets.get(kind, name) is None and (kind, name) not in assets.refused:  # refused: reported there
                known = [a.name for a in assets.of_kind(kind)]
                close = difflib.get_close_matches(name, known, n=1)
                out.append(_p(row.line, f"keyframe {row.id} names the {kind[:-1]} {name!r}, which assets.json does "
                              "not have", f"did you mean {close[0]!r}?" if close else
                              f"add \"{name}\" to \"{kind}\" in {ASSETS}, or fix the name (known: "
                              f"{', '.join(known) or 'none'})"))
    for column, names in (("Character", characters), ("Pose Asset", poses), ("Background", backgrounds)):
        if len(names) > 1:
            out.append(_p(row.line, f"keyframe {row.id} names {len(names)} in its {column} column: one layer each",
                          "keep one (a second character needs a scene of its own, or a combined asset)"))
    if not backgrounds:
        out.append(_p(row.line, f"keyframe {row.id} names no background", "name its set from assets.json's backgrounds"))
    if poses and not characters:
        out.append(_p(row.line, f"keyframe {row.id} has a pose but no character", "name the character, or drop the pose"))
    if len(objects) > MAX_OBJECTS:
        out.append(_p(row.line, f"keyframe {row.id} names {len(objects)} objects; at most {MAX_OBJECTS} fits beside "
                      "the character and the pose (the edit model takes three pictures)",
                      "keep the one that matters, or make a combined object asset"))
    return out


def _scene_type(plan: SceneBreakdown, scene: Scene) -> list[Problem]:
    rows = [plan.keyframe(ref.id) for ref in (scene.start_keyframe, scene.end_keyframe) if ref]
    rows = [r for r in rows if r is not None]
    with_character = [r for r in rows if cell_names(r.character)]
    if scene.type == "landscape" and with_character:
        ids = ", ".join(r.id for r in with_character)
        return [_p(scene.line_of("type"), f"scene {scene.number} is a landscape scene but its keyframe {ids} names a "
                   "character", "make it a character scene, or take the character out of that keyframe")]
    if scene.type == "character" and rows and not with_character:
        return [_p(scene.line_of("type"), f"scene {scene.number} is a character scene but none of its keyframes names "
                   "a character", "name the character in its keyframe row, or make it a landscape scene")]
    return []
