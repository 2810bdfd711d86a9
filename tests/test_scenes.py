"""scene-breakdown.md parsing: the SKILL.md format with the variations agents write, and broken plans
reported as problems with line numbers (never exceptions)."""

import pytest
from producer.cli import CliError
from producer.production.scenes import (
    load_scene_breakdown,
    parse_scene_breakdown,
    parse_seconds,
    parse_transition,
    shared_keyframe,
)

GOOD = """\
# Scene Breakdown: Lantern Walk

## Overview
- **Total Duration**: ~14 seconds
- **Number of Scenes**: 3
- **Number of Unique Keyframes**: 3 (adjacent scenes share boundary keyframes)
- **Video Type**: narrative

---

## Unique Keyframes

| ID | Description | Pose Asset | Character | Background | Used In |
|----|-------------|------------|-----------|------------|---------|
| KF-A | Girl at the gate | standing.png | **girl** | `village_gate` | Scene 1 start |
| KF-B | Girl on the bridge | walking.png | girl | bridge | Scene 1 end, Scene 2 start |
| KF-C | Lanterns rise | - | - | river | Scene 3 start |

---

## Scenes

### Scene 1: The Gate

**Type**: character
**Duration:** 5 seconds (max 5 seconds per scene)
**Purpose**: Introduce the girl

**Start Keyframe**: KF-A
**End Keyframe**: `KF-B`

**Motion Description**:
She walks from the gate
towards the bridge: slowly.

**Camera**: tracking, slow

**Transition to Next**: continuous

---

### Scene 2 - On the Bridge

- **Type**: Character
- **Duration**: 4.5s
- **Start Keyframe**: KF-B (shared from Scene 1 end - do NOT regenerate)
- **End Keyframe**: None (I2V)
- **Motion Description**: She stops and looks up.
- **Camera**: static
- **Transition to Next**: Fade 0.5s
- **Mood**: quiet

### **Scene 3: Lanterns**
Type: landscape
Duration: ~4 s
Start Keyframe: keyframes/KF-C.png
Transition to Next: none

## Generation Strategy

| Scene | Start KF | End KF | Type | Notes |
|-------|----------|--------|------|-------|
| 1 | KF-A | KF-B | character | Generate KF-A and KF-B |
"""


def test_a_good_plan_with_variations():
    plan = parse_scene_breakdown(GOOD)
    assert plan.problems == []
    o = plan.overview
    assert (o.total_duration, o.scene_count, o.keyframe_count, o.video_type) == (14.0, 3, 3, "narrative")
    assert o.lines["total_duration"] == 4
    assert [k.id for k in plan.keyframes] == ["KF-A", "KF-B", "KF-C"]  # the strategy table is not keyframes
    kf_b = plan.keyframe("KF-B")
    assert kf_b.line == 16 and kf_b.used_in == [(1, "end"), (2, "start")] and kf_b.pose_asset == "walking.png"
    assert plan.keyframe("KF-A").character == "girl" and plan.keyframe("KF-A").background == "village_gate"
    s1, s2, s3 = plan.scenes
    assert (s1.number, s1.title, s1.line, s1.type, s1.duration) == (1, "The Gate", 23, "character", 5.0)
    assert s1.start_keyframe.id == "KF-A" and s1.end_keyframe.id == "KF-B" and s1.end_keyframe.line == 30
    assert s1.motion == "She walks from the gate towards the bridge: slowly."  # a colon in text is not a field
    assert s1.camera == "tracking, slow"
    assert (s1.transition.kind, s1.transition.seconds, s1.transition.line) == ("continuous", None, 38)
    assert (s2.title, s2.type, s2.duration) == ("On the Bridge", "character", 4.5)
    assert s2.start_keyframe.id == "KF-B" and "do NOT regenerate" in s2.start_keyframe.note
    assert s2.end_keyframe is None and s2.line_of("end_keyframe") == 47  # I2V: written as none
    assert (s2.transition.kind, s2.transition.seconds) == ("fade", 0.5)
    assert s2.extra == {"Mood": "quiet"}
    assert (s3.title, s3.type, s3.duration, s3.start_keyframe.id) == ("Lanterns", "landscape", 4.0, "KF-C")
    assert s3.transition is None and s3.line_of("camera") == s3.line == 53  # missing: the heading's line
    assert shared_keyframe(s1, s2) == "KF-B" and shared_keyframe(s2, s3) is None


def test_crlf_bom_and_a_fenced_plan(tmp_path):
    path = tmp_path / "scene-breakdown.md"
    path.write_bytes(b"\xef\xbb\xbf```markdown\r\n" + GOOD.replace("\n", "\r\n").encode() + b"```\r\n")
    plan = load_scene_breakdown(tmp_path)  # a folder means its scene-breakdown.md
    assert plan.problems == [] and len(plan.scenes) == 3 and plan.scenes[0].line == 24


BROKEN = """\
# Scene Breakdown: Broken
## Overview
- **Total Duration**: [X seconds]
## Unique Keyframes
| ID | Description | Used In |
|----|-------------|---------|
| KF-A | a | b | c |
| | no id | Scene 1 start |
| KF-B | y | somewhere |
### Scene N: [Title]
**Type**: character | landscape
### Scene 2: Bad values
**Type**: cartoon
**Duration**: 4-5 seconds
**Start Keyframe**: KF-A
**Start Keyframe**: KF-B
**End Keyframe**: [End keyframe id]
**Transition to Next**: [cut/fade/continuous]
### Scene 3: More
**Duration**: 81 frames
**Transition to Next**: wipe
### Scene 4: Last
**Transition to Next**: cut 1s
"""


def test_broken_plan_gives_problems_with_lines_and_fixes():
    plan = parse_scene_breakdown(BROKEN, "plan.md")
    by_line = {}
    for p in plan.problems:
        assert p.fix and p.file == "plan.md"
        by_line[p.line] = by_line.get(p.line, "") + p.message + " | "
    expected = {3: "Total Duration", 7: "4 cells", 8: "no ID", 9: "names no scene", 10: "no scene number",
                13: "cartoon", 14: "4-5 seconds", 16: "given twice", 17: "not a keyframe id", 18: "pick one",
                20: "81 frames", 21: "wipe", 23: "has no duration"}
    for line, words in expected.items():
        assert line in by_line, f"no problem on line {line} ({words}): {plan.problems}"
        assert words in by_line[line]
    s2 = plan.scene(2)
    assert s2.type is None and s2.duration is None and s2.start_keyframe.id == "KF-B"  # the later one
    assert s2.end_keyframe is None and s2.transition is None and s2.line_of("transition") == 18
    assert [s.number for s in plan.scenes] == [2, 3, 4]  # "Scene N" is reported, not invented


def test_no_scenes_and_not_utf8(tmp_path):
    assert "no scene sections" in parse_scene_breakdown("# Plan\n\nnothing here\n").problems[0].message
    path = tmp_path / "scene-breakdown.md"
    path.write_bytes(GOOD.encode().replace(b"Girl on the bridge", b"Girl on the br\xffdge"))
    plan = load_scene_breakdown(path)
    assert plan.problems[0].line == 16 and "UTF-8" in plan.problems[0].message and len(plan.scenes) == 3


def test_missing_file_is_a_cli_error(tmp_path):
    with pytest.raises(CliError, match="does not exist"):
        load_scene_breakdown(tmp_path / "scene-breakdown.md")


@pytest.mark.parametrize("text, seconds", [
    ("5 seconds", 5.0), ("5s", 5.0), ("~5 s", 5.0), ("4,5 sec", 4.5), ("about 3", 3.0),
    ("5 (max 5 seconds per scene)", 5.0), ("4-5 seconds", None), ("[X seconds]", None), ("81 frames", None)])
def test_parse_seconds(text, seconds):
    assert parse_seconds(text) == seconds


@pytest.mark.parametrize("text, expected", [
    ("cut", ("cut", None)), ("Fade 0.5s", ("fade", 0.5)), ("fade (0.5)", ("fade", 0.5)),
    ("Dissolve (1 second)", ("dissolve", 1.0)), ("cross-fade", ("dissolve", None)),
    ("crossfade 0.75", ("dissolve", 0.75)), ("Fade to black (1s)", ("fade", 1.0)), ("hard cut", ("cut", None)),
    ("**continuous** into scene 3", ("continuous", None)), ("none", "none")])
def test_parse_transition(text, expected):
    assert parse_transition(text) == expected


@pytest.mark.parametrize("text", ["cut/fade/continuous", "wipe", "cut 1s", "fade 12 frames"])
def test_parse_transition_errors(text):
    assert isinstance(parse_transition(text), str) and parse_transition(text) != "none"
