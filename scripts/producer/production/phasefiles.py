"""The Phase 1 files: philosophy.md (every section of SKILL.md's template, filled) and style.json.

philosophy.md must have the title line `# Production Philosophy: NAME` and, under four `##` sections,
every bullet of the template with a value of its own:

    Visual Identity      Art Style, Color Palette, Lighting, Composition
    Motion Language      Movement Quality, Pacing, Camera Style
    Subject Consistency  Characters/Products, Environment, Props/Elements
    Constraints          Avoid, Maintain

A value still in template form ("[e.g., cinematic realistic, ...]", anything in square brackets that is
not a link) counts as unfilled. Extra sections and bullets are welcome. style.json is checked by
producer.files.style (the scripts' own reader); its errors become problems with the line of the key.
"""

from __future__ import annotations

import re
from pathlib import Path

from producer.errors import CliError
from producer.files.layout import PHILOSOPHY, STYLE
from producer.production.assets import key_line
from producer.production.scenes import Problem

SECTIONS = {
    "Visual Identity": ("Art Style", "Color Palette", "Lighting", "Composition"),
    "Motion Language": ("Movement Quality", "Pacing", "Camera Style"),
    "Subject Consistency": ("Characters/Products", "Environment", "Props/Elements"),
    "Constraints": ("Avoid", "Maintain"),
}
TITLE = re.compile(r"^#\s+Production Philosophy\s*:\s*(.*)$", re.IGNORECASE)
HEADING = re.compile(r"^##\s+(.+?)\s*#*$")
BULLET = re.compile(r"^\s*[-*+]\s+(?:\*\*|__)?([^:*_]+?)(?:\*\*|__)?\s*:\s*(?:\*\*|__)?\s*(.*)$")
PLACEHOLDER = re.compile(r"\[[^\]]*\](?!\()")  # [like this], but not a [link](url)


def check_philosophy(root: Path) -> list[Problem]:
    path = Path(root) / PHILOSOPHY
    try:
        lines = path.read_text(encoding="utf-8-sig").splitlines()
    except FileNotFoundError:
        return [Problem(PHILOSOPHY, 1, "philosophy.md does not exist", "write it from SKILL.md's Phase 1 template")]
    except (OSError, UnicodeDecodeError) as exc:
        return [Problem(PHILOSOPHY, 1, f"philosophy.md cannot be read ({type(exc).__name__})", "save it as UTF-8")]
    problems = _title_problems(lines)
    found = _sections(lines)
    for section, fields in SECTIONS.items():
        if section.lower() not in found:
            problems.append(Problem(PHILOSOPHY, len(lines) or 1, f"the section '## {section}' is missing",
                                    f"add it with the bullets {', '.join(fields)}"))
            continue
        heading_line, bullets = found[section.lower()]
        for name in fields:
            problems += _field_problems(section, name, heading_line, bullets.get(_norm(name)))
    return problems


def _title_problems(lines: list[str]) -> list[Problem]:
    for n, line in enumerate(lines, 1):
        match = TITLE.match(line.strip())
        if match:
            name = match.group(1).strip()
            if not name or PLACEHOLDER.search(name):
                return [Problem(PHILOSOPHY, n, "the title still has no project name",
                                "write '# Production Philosophy: Your Project Name'")]
            return []
    return [Problem(PHILOSOPHY, 1, "there is no '# Production Philosophy: NAME' title",
                    "start the file with '# Production Philosophy: Your Project Name'")]


def _sections(lines: list[str]) -> dict[str, tuple[int, dict[str, tuple[int, str]]]]:
    """section name (lower case) -> (heading line, {bullet name: (line, value)})."""
    found: dict[str, tuple[int, dict[str, tuple[int, str]]]] = {}
    bullets: dict[str, tuple[int, str]] | None = None
    for n, line in enumerate(lines, 1):
        heading = HEADING.match(line.strip())
        if heading:
            bullets = {}
            found.setdefault(heading.group(1).strip().lower(), (n, bullets))
            continue
        bullet = BULLET.match(line)
        if bullet and bullets is not None:
            bullets.setdefault(_norm(bullet.group(1)), (n, bullet.group(2).strip()))
    return found


def _field_problems(section: str, name: str, heading_line: int, bullet: tuple[int, str] | None) -> list[Problem]:
    if bullet is None:
        return [Problem(PHILOSOPHY, heading_line, f"'{section}' has no '{name}' bullet",
                        f"add '- **{name}**: ...' under '## {section}'")]
    line, value = bullet
    value = value.strip(" *_")
    if not value:
        return [Problem(PHILOSOPHY, line, f"'{name}' is empty", f"describe the production's {name.lower()}")]
    if PLACEHOLDER.search(value):
        return [Problem(PHILOSOPHY, line, f"'{name}' still holds template text {PLACEHOLDER.search(value).group(0)!r}",
                        "replace the bracketed text with this production's own words")]
    return []


def _norm(label: str) -> str:
    return re.sub(r"\s+", " ", label.replace("*", "").replace("_", "")).strip().lower()


def check_style(root: Path):
    """(Style or None, problems, warnings) via producer.files.style.load_style, the reader the scripts use."""
    from producer.files.style import load_style

    path = Path(root) / STYLE
    if not path.is_file():
        return None, [Problem(STYLE, 1, "style.json does not exist", "write it from SKILL.md's Phase 1 template")], []
    try:
        style = load_style(path)
    except CliError as err:
        return None, _style_problems(path, err), []
    return style, [], list(style.warnings)


def _style_problems(path: Path, err: CliError) -> list[Problem]:
    try:
        lines = path.read_text(encoding="utf-8-sig").splitlines()
    except (OSError, UnicodeDecodeError):
        lines = []
    listed = err.details.get("problems") or [{"error": err.message.removeprefix(f"{path}: "), "fix": err.fix}]
    problems = []
    for item in listed:
        message = item["error"]
        at = re.search(r"line (\d+)", message)
        # messages start with the JSON path of the key ("visual_style.colour_palette is not ...")
        keys = re.match(r"^([A-Za-z_$][\w$]*(?:\.[A-Za-z_$][\w$]*)*)(?:\[\d+\])?\s", message)
        line = int(at.group(1)) if at else key_line(lines, keys.group(1).split(".")) if keys else 1
        problems.append(Problem(STYLE, line, message, item["fix"]))
    return problems
