"""Read scene-breakdown.md (the plan of Phase 2) into data, keeping the line of everything.

The format is the one SKILL.md asks for: an Overview list, a "Unique Keyframes" table (ID, Description,
Pose Asset, Character, Background, Used In, and optionally Objects) and one `### Scene N: Title` section per scene with
bold-labelled fields (Type, Duration, Purpose, Start Keyframe, End Keyframe, Motion Description,
Camera, Transition to Next). Agents write it with variations, all accepted here: `**Type:** x` and
`**Type**: x` and `- Type: x`; "5 seconds", "5s", "~5 s"; `KF-B (shared from Scene 1 end - do NOT
regenerate)`, `` `KF-B` `` and `keyframes/KF-B.png`; "fade 0.5s"; headings at level 2 to 4; the
whole file inside a code fence; CRLF line ends.

This module only parses. A value it cannot read becomes a `Problem(file, line, message, fix)` and the
field stays None; nothing is raised for content. Rules about a readable plan (missing fields, a
keyframe id absent from the table, durations over 5 s, shared keyframes...) belong to the project
tool, which gets every line number it needs from `Scene.line_of(field)` and `KeyframeRow.line`.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

from producer.errors import CliError
from producer.files import paths
from producer.files.inputs import regular_file

SCENE_TYPES = ("character", "landscape")
TRANSITIONS = ("cut", "fade", "dissolve", "continuous")
# Words agents use for the four transitions. "none" is not here on purpose: on the last scene it
# means "no next scene" (see NO_NEXT), elsewhere it is ambiguous between a cut and continuous motion.
TRANSITION_ALIASES = {
    "hard cut": "cut", "straight cut": "cut", "match cut": "cut", "jump cut": "cut",
    "fade to black": "fade", "fade through black": "fade", "fade out": "fade", "fade-out": "fade",
    "fade out/in": "fade", "dip to black": "fade",
    "crossfade": "dissolve", "cross-fade": "dissolve", "cross fade": "dissolve", "cross dissolve": "dissolve",
    "continue": "continuous", "seamless": "continuous", "continuous motion": "continuous",
}
NO_NEXT = ("none", "end", "n/a", "na", "-", "—", "final scene", "end of video", "(end)")
_NO_KEYFRAME = re.compile(r"^\(?(?:none|n/?a|i2v|no end keyframe)\b|^[-—]+$", re.I)

# Field labels as agents write them -> our attribute names
FIELD_NAMES = {
    "type": "type", "scene type": "type",
    "duration": "duration", "length": "duration",
    "purpose": "purpose",
    "start keyframe": "start_keyframe", "start frame": "start_keyframe", "first frame": "start_keyframe",
    "start kf": "start_keyframe", "starting keyframe": "start_keyframe",
    "end keyframe": "end_keyframe", "end frame": "end_keyframe", "last frame": "end_keyframe",
    "end kf": "end_keyframe", "ending keyframe": "end_keyframe",
    "motion description": "motion", "motion": "motion",
    "camera": "camera", "camera movement": "camera",
    "transition to next": "transition", "transition": "transition", "transition to next scene": "transition",
}
TEXT_FIELDS = ("purpose", "motion", "camera")  # free text: following lines continue them
OVERVIEW_FIELDS = {"total duration": "total_duration", "number of scenes": "scene_count",
                   "number of unique keyframes": "keyframe_count", "video type": "video_type"}
TABLE_COLUMNS = {"id": "id", "keyframe": "id", "kf": "id", "description": "description",
                 "pose asset": "pose_asset", "pose": "pose_asset", "character": "character",
                 "background": "background", "used in": "used_in", "used by": "used_in",
                 "objects": "objects", "object": "objects", "props": "objects"}

_HEADING = re.compile(r"^(#{1,6})\s+(.*?)\s*#*\s*$")
_SCENE_HEADING = re.compile(r"^scene\s+#?(\d+)(?![\w.])\s*[:.\-–—]?\s*(.*)$", re.I)
_FIELD = re.compile(r"^\s*(?:[-*+]\s+)?(\*\*|__)?\s*([A-Za-z][A-Za-z /]*?)\s*(?:\*\*|__)?\s*:\s*(.*)$")
_RULE = re.compile(r"^\s*(?:-{3,}|\*{3,}|_{3,})\s*$")
_SECONDS = re.compile(r"^(\d+(?:[.,]\d+)?)\s*(s|sec|secs|second|seconds|\")?(?![\w.])", re.I)
_APPROX = re.compile(r"^(?:~|≈|about|approx\.?|approximately|around|circa|ca\.)\s*", re.I)
_KF_ID = re.compile(r"^[A-Za-z0-9][\w.-]*")
_USED_IN = re.compile(r"(?:scenes?\s*)?#?(\d+)\s*(start|end|first|last|beginning|begin|ending)?", re.I)
# a number standing alone (not the end of "1e400", "-1" or "x2") with a unit of seconds
_SECONDS_ANYWHERE = re.compile(r"(?<![\w.,+-])(\d+(?:[.,]\d+)?)\s*(?:s|sec|secs|seconds?)(?![\w.])")
_SECONDS_UNREAD = re.compile(r"[\w.,+-]*\d[\w.,+-]*\s*(?:s|sec|secs|seconds?)(?![\w.])")


@dataclass(frozen=True)
class Problem:
    file: str
    line: int
    message: str
    fix: str

    def __str__(self) -> str:
        return f"{self.file}:{self.line}: {self.message} (fix: {self.fix})"


@dataclass(frozen=True)
class Transition:
    kind: str  # one of TRANSITIONS
    seconds: float | None  # None: the assembler's default for this kind
    line: int
    text: str  # as written


@dataclass(frozen=True)
class KeyframeRef:
    id: str
    note: str  # what followed the id, e.g. "(shared from Scene 1 end - do NOT regenerate)"
    line: int


@dataclass
class Scene:
    number: int
    title: str
    line: int  # the heading
    type: str | None = None
    duration: float | None = None  # seconds
    purpose: str | None = None
    start_keyframe: KeyframeRef | None = None
    end_keyframe: KeyframeRef | None = None  # None for I2V scenes
    motion: str | None = None
    camera: str | None = None
    transition: Transition | None = None  # None when absent or "none" (the last scene)
    lines: dict[str, int] = field(default_factory=dict)  # field name -> line it was given on
    extra: dict[str, str] = field(default_factory=dict)  # labelled fields we do not know

    def line_of(self, name: str) -> int:
        """The line of a field, or of the scene heading when the field is missing."""
        return self.lines.get(name, self.line)


@dataclass
class KeyframeRow:
    id: str
    description: str
    pose_asset: str
    character: str
    background: str
    used_in_text: str
    used_in: list[tuple[int, str]]  # (scene number, "start" | "end" | "")
    line: int
    objects: str = ""  # the optional Objects column: object assets in this keyframe, comma-separated


@dataclass
class Overview:
    line: int
    total_duration: float | None = None
    scene_count: int | None = None
    keyframe_count: int | None = None
    video_type: str | None = None
    lines: dict[str, int] = field(default_factory=dict)


@dataclass
class SceneBreakdown:
    file: str
    overview: Overview | None
    keyframes: list[KeyframeRow]
    scenes: list[Scene]
    problems: list[Problem]

    def keyframe(self, kf_id: str) -> KeyframeRow | None:
        return next((k for k in self.keyframes if k.id == kf_id), None)

    def scene(self, number: int) -> Scene | None:
        return next((s for s in self.scenes if s.number == number), None)


def shared_keyframe(before: Scene, after: Scene) -> str | None:
    """The keyframe id two consecutive scenes share at their boundary (before's end = after's start)."""
    if before.end_keyframe and after.start_keyframe and before.end_keyframe.id == after.start_keyframe.id:
        return before.end_keyframe.id
    return None


# ================================================================ reading


def load_scene_breakdown(path: str | Path) -> SceneBreakdown:
    """Parse a file. A missing or unreadable file raises CliError; everything else is a Problem."""
    path = Path(path)
    if path.is_dir():
        path = path / "scene-breakdown.md"
    if path.exists():  # a FIFO or device would block read_bytes; a missing file is reported below
        regular_file(path, "scene plan")
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise CliError(f"{path} does not exist", "write the scene plan first (SKILL.md Phase 2), or give "
                       "the production folder that holds scene-breakdown.md") from None
    except OSError as exc:
        raise CliError(f"{path} cannot be read: {exc.strerror}", f"check its permissions: ls -l {path}") from None
    problems: list[Problem] = []
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        text = data.decode("utf-8-sig", errors="replace")
        problems.append(Problem(str(path), data[:exc.start].count(b"\n") + 1, "the file is not valid UTF-8",
                                "save it as UTF-8 (the replaced characters show as U+FFFD)"))
    result = parse_scene_breakdown(text, str(path))
    result.problems[:0] = problems
    return result


def parse_scene_breakdown(text: str, file: str = "scene-breakdown.md") -> SceneBreakdown:
    return _Parser(file).parse(text)


class _Parser:
    def __init__(self, file: str):
        self.file = file
        self.problems: list[Problem] = []
        self.scenes: list[Scene] = []
        self.keyframes: list[KeyframeRow] = []
        self.overview: Overview | None = None
        self.section = ""  # the current "## ..." heading, lower case
        self.scene: Scene | None = None
        self.last_field: str | None = None  # for free text continued on the next lines
        self.table: dict[str, int] | None = None  # column name -> index, while inside a keyframe table

    def problem(self, line: int, message: str, fix: str) -> None:
        self.problems.append(Problem(self.file, line, message, fix))

    def parse(self, text: str) -> SceneBreakdown:
        for number, raw in enumerate(text.splitlines(), start=1):
            self.line(number, raw.rstrip())
        if not self.scenes:
            self.problem(max(1, text.count("\n")), "no scene sections found",
                         "add one '### Scene N: Title' section per scene, as in SKILL.md Phase 2")
        return SceneBreakdown(self.file, self.overview, self.keyframes, self.scenes, self.problems)

    def line(self, n: int, raw: str) -> None:
        stripped = raw.strip()
        if stripped.startswith("```"):  # an agent may fence the whole plan, as SKILL.md shows it
            return
        heading = _HEADING.match(stripped)
        if heading:
            self.heading(n, len(heading.group(1)), _clean(heading.group(2)))
            return
        if stripped.startswith("|"):
            self.table_row(n, stripped)
            return
        self.table = None
        if _RULE.match(stripped):
            self.last_field = None
            return
        if self.scene is not None:
            self.scene_line(n, stripped)
        elif self.section.startswith("overview"):
            self.overview_line(n, stripped)

    def heading(self, n: int, level: int, title: str) -> None:
        self.table, self.last_field, self.scene = None, None, None  # any heading ends a scene
        match = _SCENE_HEADING.match(title)
        if match:
            self.scene = Scene(number=int(match.group(1)), title=match.group(2).strip(), line=n)
            self.scenes.append(self.scene)
            return
        if level >= 3 and re.match(r"scene\b(?!s)", title, re.I):
            # "### Scene N: Title" left from the template, "### Scene One": not "# Scene Breakdown"
            self.problem(n, f"scene heading {title!r} has no scene number",
                         "write '### Scene 1: Title' (scenes are numbered 1, 2, 3...)")
        self.section = title.lower()
        if self.section.startswith("overview") and self.overview is None:
            self.overview = Overview(line=n)

    # ---------------------------------------------------------------- scenes

    def scene_line(self, n: int, stripped: str) -> None:
        match = _FIELD.match(stripped)
        name = FIELD_NAMES.get(_squash(match.group(2))) if match else None
        if name is None:
            if match and match.group(1):  # a bold label we do not know: kept, not an error
                self.scene.extra[match.group(2).strip()] = _clean(match.group(3))
                self.last_field = None
            elif stripped:  # plain text, even with a colon in it ("The camera: slow pan")
                self.continue_text(stripped)
            return
        if name in self.scene.lines:
            self.problem(n, f"scene {self.scene.number}: {name.replace('_', ' ')} is given twice "
                            f"(first on line {self.scene.lines[name]}); the later one is used",
                         "keep one")
        self.scene.lines[name] = n
        self.last_field = name
        self.set_field(name, _clean(match.group(3)), n)

    def continue_text(self, stripped: str) -> None:
        """A line after a field: more free text, or the value itself when the label stood alone."""
        name, scene = self.last_field, self.scene
        if name is None:
            return
        current = getattr(scene, name)
        if name in TEXT_FIELDS:
            setattr(scene, name, f"{current} {_clean(stripped)}".strip() if current else _clean(stripped))
        elif current is None:
            self.set_field(name, _clean(stripped), scene.lines[name])
            self.last_field = None

    def set_field(self, name: str, value: str, n: int) -> None:
        if name in TEXT_FIELDS:
            setattr(self.scene, name, value or None)
            return
        if not value:
            return  # the value may follow on the next line (continue_text)
        parse = {"type": self.parse_type, "duration": self.parse_duration, "transition": self.parse_transition,
                 "start_keyframe": self.parse_keyframe, "end_keyframe": self.parse_keyframe}[name]
        setattr(self.scene, name, parse(value, n))
        self.last_field = None

    def parse_type(self, value: str, n: int) -> str | None:
        words = [w for w in re.split(r"[^a-z]+", value.lower()) if w in SCENE_TYPES]
        if len(set(words)) == 1:
            return words[0]
        self.problem(n, f"scene {self.scene.number}: type {value!r} is not one of {', '.join(SCENE_TYPES)}"
                     + (" (pick one)" if len(set(words)) > 1 else ""),
                     "write 'character' (the 3-step composite) or 'landscape' (background only)")
        return None

    def parse_duration(self, value: str, n: int) -> float | None:
        seconds = parse_seconds(value)
        if seconds is None or seconds <= 0:
            self.problem(n, f"scene {self.scene.number}: duration {value!r} is not a number of seconds",
                         "write e.g. '5 seconds' or '4.5s'")
            return None
        return seconds

    def parse_keyframe(self, value: str, n: int) -> KeyframeRef | None:
        if _NO_KEYFRAME.match(value):
            return None
        first, _, note = value.partition(" ")
        if first.startswith("[") and first.endswith("]"):
            first = first[1:-1]  # "[KF-A]"; a placeholder "[Start keyframe]" has a space and fails below
        token = _KF_ID.match(Path(first).stem)  # "keyframes/KF-B.png" -> "KF-B"
        if paths.leaves_by_name(first):  # only the id is used: a path elsewhere would silently mean this one
            self.problem(n, f"scene {self.scene.number}: keyframe {first!r} leads outside the production folder",
                         "name the keyframe by its id (e.g. KF-A) or keyframes/KF-A.png; every keyframe lives in "
                         "this production's keyframes/ folder")
            return None
        if first.startswith(("[", "<")) or not token:
            self.problem(n, f"scene {self.scene.number}: keyframe {value!r} is not a keyframe id",
                         "use an id from the Unique Keyframes table, e.g. KF-A (or 'none' for an I2V end)")
            return None
        return KeyframeRef(id=token.group(0).rstrip(".,;:"), note=note.strip(), line=n)

    def parse_transition(self, value: str, n: int) -> Transition | None:
        result = parse_transition(value)
        if isinstance(result, str):
            if value.lower().strip(" .") in NO_NEXT or result == "none":
                return None
            self.problem(n, f"scene {self.scene.number}: {result}",
                         "write one of cut, fade, dissolve, continuous, optionally with seconds: 'fade 0.5s'")
            return None
        return Transition(result[0], result[1], n, value)

    # ---------------------------------------------------------------- overview and keyframe table

    def overview_line(self, n: int, stripped: str) -> None:
        match = _FIELD.match(stripped)
        key = OVERVIEW_FIELDS.get(_squash(match.group(2))) if match else None
        if key is None:
            return
        value = _clean(match.group(3))
        self.overview.lines[key] = n
        if key == "video_type":
            self.overview.video_type = value or None
            return
        number = parse_seconds(value)
        if number is None:
            self.problem(n, f"overview: {match.group(2).strip()} {value!r} is not a number",
                         "write a number, e.g. '10 seconds' or '3'")
        elif key == "total_duration":
            self.overview.total_duration = number
        else:
            setattr(self.overview, key, int(number))

    def table_row(self, n: int, stripped: str) -> None:
        cells = [_clean(c) for c in stripped.strip("|").split("|")]
        if self.table is None:
            self.table = self.table_header(n, cells)
            return
        if all(re.fullmatch(r":?-{2,}:?", c.replace(" ", "")) or not c for c in cells):
            return  # the |---|---| separator
        if "id" not in self.table:
            return  # another table (e.g. Generation Strategy)
        if len(cells) != self.table["_width"]:
            self.problem(n, f"keyframe table row has {len(cells)} cells, the header has {self.table['_width']}",
                         "give every row the same columns (a '|' inside a description breaks the row)")
        values = {name: cells[index] if index < len(cells) else "" for name, index in self.table.items()
                  if name != "_width"}
        get = values.get
        kf_id = (get("id") or "").split(" ")[0]
        if not kf_id:
            self.problem(n, "keyframe table row has no ID", "put an id such as KF-D in the first column")
            return
        used_text = get("used_in") or ""
        self.keyframes.append(KeyframeRow(kf_id, get("description") or "", get("pose_asset") or "",
                                          get("character") or "", get("background") or "", used_text,
                                          self.used_in(used_text, n), n, get("objects") or ""))

    def table_header(self, n: int, cells: list[str]) -> dict[str, int]:
        columns = {"_width": len(cells)}
        for index, cell in enumerate(cells):
            name = TABLE_COLUMNS.get(_squash(cell))
            if name and name not in columns:
                columns[name] = index
        # The table under "## Unique Keyframes", or one that looks like it wherever an agent put it
        in_keyframes = self.scene is None and ("keyframe" in self.section or {"id", "used_in"} <= columns.keys())
        if in_keyframes and "id" not in columns:
            self.problem(n, "the Unique Keyframes table has no ID column",
                         "use the header | ID | Description | Pose Asset | Character | Background | Used In |")
        if not in_keyframes:
            columns.pop("id", None)  # tables elsewhere (Generation Strategy) are not keyframe tables
        return columns

    def used_in(self, text: str, n: int) -> list[tuple[int, str]]:
        found = []
        for part in re.split(r"[,;&+/]|\band\b", text):
            if not part.strip():
                continue
            match = _USED_IN.search(part)
            if not match:
                self.problem(n, f"keyframe table: 'Used In' part {part.strip()!r} names no scene",
                             "write e.g. 'Scene 1 end, Scene 2 start'")
                continue
            where = (match.group(2) or "").lower()
            found.append((int(match.group(1)), {"first": "start", "begin": "start", "beginning": "start",
                                                 "last": "end", "ending": "end"}.get(where, where)))
        return found


# ================================================================ values (also used by the command lines)


def parse_seconds(text: str) -> float | None:
    """'5 seconds', '5s', '~5 s', '4,5 sec', '5 (max 5 seconds per scene)' -> 5.0; None if not a number."""
    value = _APPROX.sub("", _clean(text).lower().strip())
    match = _SECONDS.match(value)
    if not match:
        return None
    rest = value[match.end():].strip()
    if re.match(r"^(?:-|–|to)\s*\d", rest) or re.match(r"^(frames?|ms|min)", rest):
        return None  # a range "4-5 seconds" or another unit: not one number of seconds
    return float(match.group(1).replace(",", "."))


def parse_transition(text: str) -> tuple[str, float | None] | str:
    """'fade 0.5s' -> ('fade', 0.5); 'Cut' -> ('cut', None); 'none' -> 'none'; else an error message.

    A duration is a number with a unit of seconds anywhere ("dissolve (1 second)"), or a bare number
    right after the kind ("fade 0.5"); other numbers ("continuous into scene 3") are ignored.
    """
    value = _clean(text).lower().strip(" .")
    if value in NO_NEXT:
        return "none"
    number = _SECONDS_ANYWHERE.search(value) or re.search(
        r"(?:cut|fade|dissolve|continuous|crossfade|black)\s*\(?(\d+(?:[.,]\d+)?)\)?$", value)
    seconds = float(number.group(1).replace(",", ".")) if number else None
    if number is None and re.search(r"\d+\s*(frames?|ms)\b", value):
        return f"transition {text!r}: give the duration in seconds, e.g. 'fade 0.5s'"
    if number is None and _SECONDS_UNREAD.search(value):  # "fade -1s", "dissolve 1e400 s"
        return f"transition {text!r}: give the duration as a plain positive number of seconds, e.g. 'fade 0.5s'"
    kinds, rest = set(), value
    for alias in sorted(TRANSITION_ALIASES, key=len, reverse=True):  # "cross-fade" before "fade"
        pattern = rf"(?<![\w-]){re.escape(alias)}(?![\w-])"
        if re.search(pattern, rest):
            kinds.add(TRANSITION_ALIASES[alias])
            rest = re.sub(pattern, " ", rest)
    kinds |= {k for k in TRANSITIONS if re.search(rf"(?<![\w-]){k}(?![\w-])", rest)}
    if len(kinds) == 1:
        kind = kinds.pop()
        if seconds is not None and kind in ("cut", "continuous"):
            return f"transition {text!r}: a {kind} has no duration"
        return kind, seconds
    if len(kinds) > 1:
        return f"transition {text!r} names several kinds; pick one"
    return f"transition {text!r} is not one of {', '.join(TRANSITIONS)}"


def _clean(text: str) -> str:
    """Drop markdown emphasis and code marks around a value and squash spaces."""
    text = re.sub(r"(\*\*|__|`)", "", text)
    text = re.sub(r"^\*(\S.*?)\*$", r"\1", text.strip())
    return re.sub(r"\s+", " ", text).strip()


def _squash(label: str) -> str:
    return re.sub(r"\s+", " ", _clean(label).lower()).strip(" :")
