"""style.json: load and check it, then turn it into prompt additions for Qwen stills and Wan clips.

The schema is the one in SKILL.md, Phase 1 (every value is a string unless said otherwise):

    project_name
    visual_style        art_style, color_palette, lighting, composition
    motion_language     movement_quality, pacing, camera_style
    subject_consistency main_subject, environment
    constraints         avoid: [strings], maintain: [strings]

What is required: the top level must be an object and at least one field that feeds a prompt must
have a value (otherwise the file is almost certainly the wrong one, e.g. assets.json). Every section
and field is optional, because a user may not care about, say, pacing. `null`, "" and [] mean "not
set" (empty strings are reported as warnings, since they are often forgotten placeholders).

What is an error: unknown keys (nearly always typos such as "colour_palette", which would otherwise be
silently ignored and the style would quietly not apply; the message suggests the nearest known key),
wrong types, duplicate keys, values copied unchanged from the SKILL.md template ("description",
["list", "of", "things"]), invalid JSON, non-UTF-8 text. Keys starting with "_" or "$" are comments
(e.g. "_notes", "$schema") and are ignored. All problems in a file are reported together.

What is capped: a string longer than MAX_TEXT_CHARS is cut at a word boundary and a list longer than
MAX_LIST_ITEMS is cut, each with a warning: the text encoders read a bounded number of tokens (Wan's
UMT5 512), and style additions must not crowd out the scene prompt itself.
"""

from __future__ import annotations

import difflib
import json
import re
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from producer.errors import CliError, missing
from producer.files.inputs import regular_file
from producer.values import load_json, log, not_text

# Wan's UMT5 encoder reads 512 tokens (~4 characters each in English). 600 characters (~150 tokens) per
# field leaves room for the scene prompt even when several style fields are appended.
MAX_TEXT_CHARS = 600
MAX_LIST_ITEMS = 30  # constraints.avoid / maintain: more than this is a list pasted by mistake
MAX_FILE_BYTES = 1_000_000  # a style.json is a few hundred bytes; anything this big is the wrong file

TEXT = "text"
TEXT_LIST = "list of strings"
SCHEMA: dict[str, Any] = {
    "project_name": TEXT,
    "visual_style": {"art_style": TEXT, "color_palette": TEXT, "lighting": TEXT, "composition": TEXT},
    "motion_language": {"movement_quality": TEXT, "pacing": TEXT, "camera_style": TEXT},
    "subject_consistency": {"main_subject": TEXT, "environment": TEXT},
    "constraints": {"avoid": TEXT_LIST, "maintain": TEXT_LIST},
}

# Values of the SKILL.md template that mean "not filled in yet".
TEMPLATE_PLACEHOLDERS = {"description", "detailed description", "project name here"}
TEMPLATE_LIST_PLACEHOLDER = ["list", "of", "things"]


@dataclass(frozen=True)
class VisualStyle:
    art_style: str = ""
    color_palette: str = ""
    lighting: str = ""
    composition: str = ""


@dataclass(frozen=True)
class MotionLanguage:
    movement_quality: str = ""
    pacing: str = ""
    camera_style: str = ""


@dataclass(frozen=True)
class SubjectConsistency:
    main_subject: str = ""
    environment: str = ""


@dataclass(frozen=True)
class Constraints:
    avoid: tuple[str, ...] = ()
    maintain: tuple[str, ...] = ()


@dataclass(frozen=True)
class Style:
    """A checked style.json. Unset fields are "" or (); `warnings` lists what was capped or ignored."""

    project_name: str = ""
    visual_style: VisualStyle = field(default_factory=VisualStyle)
    motion_language: MotionLanguage = field(default_factory=MotionLanguage)
    subject_consistency: SubjectConsistency = field(default_factory=SubjectConsistency)
    constraints: Constraints = field(default_factory=Constraints)
    source: str = ""
    warnings: tuple[str, ...] = ()

    def to_dict(self) -> dict:
        """The style as JSON-ready data, for generation metadata."""
        d = asdict(self)
        d["constraints"] = {k: list(v) for k, v in d["constraints"].items()}
        d["warnings"] = list(self.warnings)
        return d


@dataclass(frozen=True)
class StylePrompts:
    positive_suffix: str  # appended to the user's prompt
    negative: str  # appended after the user's own negative prompt


# ---------------------------------------------------------------- loading


class _Problems:
    """Collects errors and warnings with their JSON paths, so one run reports everything."""

    def __init__(self, name: str):
        self.name = name
        self.errors: list[tuple[str, str]] = []  # (message, fix)
        self.warnings: list[str] = []

    def error(self, where: str, message: str, fix: str) -> None:
        self.errors.append((f"{where} {message}" if where else message, fix))

    def warn(self, where: str, message: str) -> None:
        self.warnings.append(f"{self.name}: {where} {message}")

    def raise_if_any(self) -> None:
        if not self.errors:
            return
        if len(self.errors) == 1:
            message, fix = self.errors[0]
            raise CliError(f"{self.name}: {message}", fix)
        lines = "; ".join(m for m, _ in self.errors)
        fixes = "; ".join(dict.fromkeys(f for _, f in self.errors))  # unique, in order
        raise CliError(f"{self.name} has {len(self.errors)} problems: {lines}", fixes,
                       problems=[{"error": m, "fix": f} for m, f in self.errors])


def load_style(path: str | Path) -> Style:
    """Read and check a style.json. Raises CliError naming the file, the JSON path and the fix.

    Warnings (capped values, empty strings) are logged once and kept in `Style.warnings`, so a
    script can echo them in its --json result.
    """
    path = Path(path)
    data = _parse_json(path, _read_text(path))
    problems = _Problems(str(path))
    if not isinstance(data, dict):
        raise CliError(f"{path}: the top level must be a JSON object {{...}}, got {_json_type(data)}",
                       "write style.json in the form shown in SKILL.md, Phase 1 (step 1.2)")
    values = _check_section(data, SCHEMA, "", problems)
    problems.raise_if_any()
    style = _build_style(values, str(path), tuple(problems.warnings))
    if not _has_prompt_content(style):
        raise CliError(f"{path}: none of the style fields has a value, so it would change nothing",
                       "fill in at least visual_style.art_style (see SKILL.md, Phase 1), or check that "
                       "--style-ref points at style.json and not at another file")
    for warning in style.warnings:
        log.warning("warning: %s", warning)
    return style


def _read_text(path: Path) -> str:
    regular_file(path, "style file")
    try:
        size = path.stat().st_size
        if size > MAX_FILE_BYTES:
            raise CliError(f"{path} is {size:,} bytes; a style.json is a few hundred",
                           "check that --style-ref points at style.json")
        raw = path.read_bytes()
    except FileNotFoundError:
        raise CliError(f"style file {path} {missing(path)}",
                       "create it as in SKILL.md Phase 1, or fix the --style-ref path") from None
    except IsADirectoryError:
        raise CliError(f"style file {path} is a directory", f"give the file: {path / 'style.json'}") from None
    except PermissionError:
        raise CliError(f"style file {path} cannot be read (permission denied)",
                       f"make it readable: chmod u+r {path}") from None
    try:
        return raw.decode("utf-8-sig")  # -sig: accept the BOM Windows editors write
    except UnicodeDecodeError as exc:
        line = raw[: exc.start].count(b"\n") + 1
        raise CliError(f"{path} is not UTF-8 text (byte 0x{raw[exc.start]:02x} at line {line})",
                       "save the file as UTF-8 (most editors: 'Save with encoding' > UTF-8)") from None


def _parse_json(path: Path, text: str) -> Any:
    def refuse_duplicates(pairs: list[tuple[str, Any]]) -> dict:
        seen: dict[str, Any] = {}
        for key, value in pairs:
            if key in seen:
                # json keeps the last silently; the first one is then lost without a word
                raise CliError(f"{path}: the key {key!r} appears twice in one object",
                               "keep one of them (JSON keeps only the last)")
            seen[key] = value
        return seen

    if not text.strip():
        raise CliError(f"{path} is empty", "write style.json as in SKILL.md, Phase 1 (step 1.2)")
    try:
        return load_json(text, object_pairs_hook=refuse_duplicates)
    except json.JSONDecodeError as exc:
        hint = _json_hint(text, exc)
        raise CliError(f"{path}: invalid JSON at line {exc.lineno}, column {exc.colno}: {exc.msg}",
                       f"fix the JSON syntax there{hint}, then check it with "
                       f"`python -m json.tool {path}`") from None


def _json_hint(text: str, exc: json.JSONDecodeError) -> str:
    before = text[: exc.pos].rstrip()
    if before.endswith(",") and text[exc.pos: exc.pos + 1] in ("}", "]"):
        return " (JSON allows no comma before a closing } or ])"
    return ""


def _check_section(data: dict, schema: dict, prefix: str, problems: _Problems) -> dict:
    """Check one object against its schema; return {key: cleaned value} for keys that have a value."""
    values: dict[str, Any] = {}
    for key, value in data.items():
        where = f"{prefix}{key}"
        if key.startswith(("_", "$")):
            continue  # a comment key
        if key not in schema:
            problems.error(where, "is not a style.json field", _unknown_key_fix(key, schema, prefix))
            continue
        if value is None:
            continue
        kind = schema[key]
        if isinstance(kind, dict):
            if not isinstance(value, dict):
                fields = ", ".join(f'"{k}": ...' for k in kind)
                problems.error(where, f"must be an object {{...}}, got {_json_type(value)}",
                               f'write it as "{key}": {{{fields}}}')
                continue
            values[key] = _check_section(value, kind, where + ".", problems)
        elif kind == TEXT:
            text = _check_text(value, where, problems)
            if text:
                values[key] = text
        else:
            items = _check_text_list(value, where, problems)
            if items:
                values[key] = items
    return values


def _unknown_key_fix(key: str, schema: dict, prefix: str) -> str:
    known = list(schema)
    close = difflib.get_close_matches(key, known, n=1, cutoff=0.6)
    # A field put in the wrong section ("lighting" at the top level) is another common slip.
    home = next((f"{section}.{key}" for section, sub in SCHEMA.items()
                 if isinstance(sub, dict) and key in sub), None)
    if close:
        return f"did you mean {prefix + close[0]!r}? (known here: {', '.join(known)})"
    if home:
        return f"move it to {home}"
    return f"remove it, or rename it to one of: {', '.join(known)} (keys starting with _ are comments)"


def _check_text(value: Any, where: str, problems: _Problems) -> str:
    if not isinstance(value, str):
        problems.error(where, f"must be a string, got {_json_type(value)}",
                       f'write it in double quotes, e.g. "{where.split(".")[-1]}": "..."')
        return ""
    if not_text(value):
        problems.error(where, not_text(value), "write it as plain UTF-8 text")
        return ""
    text = " ".join(value.split())  # newlines and runs of spaces mean nothing to a text encoder
    if not text:
        problems.warn(where, "is empty and is ignored")
        return ""
    if text.lower() in TEMPLATE_PLACEHOLDERS:
        problems.error(where, f"still holds the template placeholder {value!r}",
                       "replace it with your own description (or remove the field)")
        return ""
    return _cap_text(text, where, problems)


def _cap_text(text: str, where: str, problems: _Problems) -> str:
    if len(text) <= MAX_TEXT_CHARS:
        return text
    cut = text[:MAX_TEXT_CHARS].rsplit(" ", 1)[0].rstrip(" ,;")
    problems.warn(where, f"is {len(text)} characters; kept the first {len(cut)} (the cap is {MAX_TEXT_CHARS}, "
                         "so that the scene prompt still fits the text encoder)")
    return cut


def _check_text_list(value: Any, where: str, problems: _Problems) -> tuple[str, ...]:
    if isinstance(value, str):
        suggestion = json.dumps([p.strip() for p in value.split(",") if p.strip()], ensure_ascii=False)
        problems.error(where, "must be a list of strings, got a string", f"write it as a list: {suggestion}")
        return ()
    if not isinstance(value, list):
        problems.error(where, f"must be a list of strings, got {_json_type(value)}",
                       f'write it as a list, e.g. "{where.split(".")[-1]}": ["blurry", "text"]')
        return ()
    if value == TEMPLATE_LIST_PLACEHOLDER:
        problems.error(where, 'still holds the template placeholder ["list", "of", "things"]',
                       "replace it with your own items, or use [] for none")
        return ()
    items = []
    for i, item in enumerate(value):
        text = _check_text(item, f"{where}[{i}]", problems)
        if text and text.lower() not in (seen.lower() for seen in items):
            items.append(text)
    if len(items) > MAX_LIST_ITEMS:
        problems.warn(where, f"has {len(items)} items; kept the first {MAX_LIST_ITEMS}")
        items = items[:MAX_LIST_ITEMS]
    return tuple(items)


def _json_type(value: Any) -> str:
    if isinstance(value, bool):
        return f"a boolean ({json.dumps(value)})"
    if isinstance(value, (int, float)):
        return f"a number ({value})"
    return {str: "a string", list: "a list", dict: "an object", type(None): "null"}[type(value)]


def _build_style(values: dict, source: str, warnings: tuple[str, ...]) -> Style:
    constraints = values.get("constraints", {})
    return Style(
        project_name=values.get("project_name", ""),
        visual_style=VisualStyle(**values.get("visual_style", {})),
        motion_language=MotionLanguage(**values.get("motion_language", {})),
        subject_consistency=SubjectConsistency(**values.get("subject_consistency", {})),
        constraints=Constraints(avoid=constraints.get("avoid", ()), maintain=constraints.get("maintain", ())),
        source=source,
        warnings=warnings,
    )


def _has_prompt_content(style: Style) -> bool:
    sections = (style.visual_style, style.motion_language, style.subject_consistency, style.constraints)
    return any(any(asdict(section).values()) for section in sections)


# ---------------------------------------------------------------- prompts


def style_prompts(style: Style, target: str, include_maintain: bool = True) -> StylePrompts:
    """What a style adds to a prompt, for `target` "image" (Qwen stills) or "video" (Wan motion).

    image: art style, colour palette, lighting, composition, then each `constraints.maintain` item.
        A still is where the look is decided, so it gets the whole visual identity. Maintain items are
        often about the subject ("red armor"): pass include_maintain=False for a background plate,
        where they would invite the subject into an empty scene.
    video: movement quality, pacing, camera style, then art style. Wan I2V takes colour, lighting and
        composition from the keyframe itself; repeating them only spends tokens, while the motion
        fields are what the keyframe cannot carry. Art style stays so that the text does not pull a
        stylised keyframe towards another look as it moves.
    negative (both): `constraints.avoid`, in order.

    `subject_consistency` is never added: a background plate must not contain the main subject, and a
    character layer must not contain the environment, so the agent writes those descriptions into the
    prompts where they belong. `project_name` is a label, not a description.

    Values are split at commas and joined with ", " in the order above, repeats (ignoring case) dropped;
    this is deterministic: the same style always gives the same text, so a seed reproduces a result.
    """
    if target == "image":
        vs = style.visual_style
        parts = [vs.art_style, vs.color_palette, vs.lighting, vs.composition]
        parts += list(style.constraints.maintain) if include_maintain else []
    elif target == "video":
        ml = style.motion_language
        parts = [ml.movement_quality, ml.pacing, ml.camera_style, style.visual_style.art_style]
    else:
        raise ValueError(f"target must be 'image' or 'video', not {target!r}")
    return StylePrompts(positive_suffix=_join_terms(parts), negative=_join_terms(style.constraints.avoid))


def apply_style(prompt: str, negative_prompt: str | None, prompts: StylePrompts) -> tuple[str, str]:
    """The user's prompt and negative prompt with the style's additions; the user's text comes first.

    Returns (prompt, negative_prompt); the negative is "" when neither side has one.
    """
    return join_prompt(prompt, prompts.positive_suffix), join_negative(negative_prompt, prompts.negative)


def join_prompt(prompt: str, suffix: str) -> str:
    """`prompt, suffix` with tidy punctuation; style terms the prompt already contains are not repeated.

    The prompt is prose and is kept as written (only its whitespace is collapsed). A trailing comma
    or semicolon is dropped; after a sentence end (. ! ?) the suffix follows a space instead of a comma.
    """
    prompt = _squash(prompt).rstrip(" ,;")
    terms = [t for t in _split_terms(suffix) if not _contains_phrase(prompt, t)]
    addition = ", ".join(terms)
    if not prompt or not addition:
        return prompt or addition
    separator = " " if prompt.endswith((".", "!", "?")) else ", "
    return prompt + separator + addition


def join_negative(user_negative: str | None, style_negative: str) -> str:
    """A comma list: the user's terms first, then the style's; duplicates (ignoring case) dropped."""
    return _join_terms([user_negative or "", style_negative])


def _contains_phrase(text: str, phrase: str) -> bool:
    """Whole-word, case-insensitive: "red" is not found in "shredded"."""
    return re.search(rf"(?<!\w){re.escape(phrase)}(?!\w)", text, re.IGNORECASE) is not None


def _squash(text: str) -> str:
    return " ".join(text.split())


def _split_terms(text: str) -> list[str]:
    return [t for t in (_squash(p).strip(" ;") for p in text.split(",")) if t]


def _join_terms(parts) -> str:
    """Comma-join the terms of several fields, dropping repeats (ignoring case), first one kept."""
    terms: dict[str, str] = {}
    for part in parts:
        for term in _split_terms(part):
            terms.setdefault(term.lower(), term)
    return ", ".join(terms.values())
