"""assets.json (Phase 2.5): the reusable pictures every keyframe is made from.

    {
      "characters":  {"keeper": {"description": "an old woman in a yellow oilskin coat ...",
                                 "image": "assets/characters/keeper.png"}},
      "backgrounds": {"NAME": {"description": "...", "image": "assets/backgrounds/NAME.png"}},
      "poses":       {"NAME": {"description": "...", "image": "assets/poses/NAME.png"}},
      "styles":      {"NAME": {"description": "...", "image": "assets/styles/NAME.png"}},
      "objects":     {"NAME": {"description": "...", "image": "assets/objects/NAME.png"}}
    }

Every kind is optional except `styles` (the style asset is applied to every keyframe). An entry has a
`description` (what the picture shows: it becomes the text-to-image prompt) and an `image` path; the
seed template's `ref_image` / `identity_ref` are accepted for `image`. Keys starting with "_" are
comments. Names are letters, digits, "_" and "-" (they appear in file names and in the keyframe table).

Pictures: a generated asset is a PNG (its recipe is stored inside). A file that exists without a
recipe was made by the user and is used as it is, never regenerated or overwritten. A pose may be
OpenPose keypoints JSON, written by hand (never generated). Paths are relative to the production
folder and must stay inside it: no "..", no absolute path elsewhere, no symlink that leads out
(`allow_outside` lifts this for pictures the user keeps elsewhere).
"""

from __future__ import annotations

import difflib
import json
import re
from dataclasses import dataclass, field
from pathlib import Path

from producer.files import paths
from producer.files.layout import ASSET_KINDS, ASSETS
from producer.production.scenes import Problem
from producer.values import load_json, not_text

IMAGE_KEYS = ("image", "ref_image", "identity_ref")  # the seed template used the last two
ENTRY_KEYS = ("description", *IMAGE_KEYS)
PICTURE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp")
POSE_SUFFIXES = (*PICTURE_SUFFIXES, ".json")
NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]*$")
PLACEHOLDER = re.compile(r"^\[.*\]$|^(description|detailed description|todo|tbd)$", re.IGNORECASE)
# The text-to-image prompt of each kind of asset (the style's text is added by --style-ref).
SINGULAR = {"characters": "character", "backgrounds": "background", "poses": "pose", "styles": "style",
            "objects": "object"}


@dataclass(frozen=True)
class Asset:
    kind: str  # one of ASSET_KINDS
    name: str
    description: str
    image: str  # as written in assets.json
    path: Path  # resolved against the production folder
    line: int

    @property
    def id(self) -> str:
        return f"asset:{self.kind}/{self.name}"

    @property
    def hand_written(self) -> bool:
        """A keypoints JSON pose: written by hand, never generated."""
        return self.path.suffix.lower() == ".json"


@dataclass
class AssetPlan:
    assets: list[Asset]
    # Entries written in assets.json but refused (their problem is reported): a keyframe naming one is not told
    # again that assets.json lacks it.
    refused: set[tuple[str, str]] = field(default_factory=set)

    def get(self, kind: str, name: str) -> Asset | None:
        return next((a for a in self.assets if a.kind == kind and a.name == name), None)

    def of_kind(self, kind: str) -> list[Asset]:
        return [a for a in self.assets if a.kind == kind]

    @property
    def style(self) -> Asset | None:
        """The production's style asset: the first one listed (SKILL.md: one style, applied everywhere)."""
        styles = self.of_kind("styles")
        return styles[0] if styles else None


def load_assets(root: Path, allow_outside: bool = False) -> tuple[AssetPlan | None, list[Problem]]:
    """Read and check assets.json; (None, problems) when it cannot be read at all."""
    path = Path(root) / ASSETS
    try:
        text = path.read_text(encoding="utf-8-sig")
    except FileNotFoundError:
        return None, [Problem(ASSETS, 1, "assets.json does not exist", "write it as SKILL.md Phase 2.5 shows")]
    except (OSError, UnicodeDecodeError) as exc:
        return None, [Problem(ASSETS, 1, f"assets.json cannot be read ({type(exc).__name__})",
                              "save it as UTF-8 JSON")]
    try:
        data = load_json(text)
    except json.JSONDecodeError as exc:
        return None, [Problem(ASSETS, exc.lineno, f"invalid JSON: {exc.msg} (column {exc.colno})",
                              f"fix the JSON syntax there; check with `python -m json.tool {path}`")]
    if not isinstance(data, dict):
        return None, [Problem(ASSETS, 1, "the top level must be an object {\"characters\": {...}, ...}",
                              "write assets.json as SKILL.md Phase 2.5 shows")]
    return _Reader(Path(root), text, allow_outside).read(data)


class _Reader:
    def __init__(self, root: Path, text: str, allow_outside: bool):
        self.root, self.lines, self.allow_outside = root, text.splitlines(), allow_outside
        self.problems: list[Problem] = []
        self.assets: list[Asset] = []

    def problem(self, line: int, message: str, fix: str) -> None:
        self.problems.append(Problem(ASSETS, line, message, fix))

    def read(self, data: dict) -> tuple[AssetPlan, list[Problem]]:
        for kind, entries in data.items():
            if kind.startswith("_"):
                continue
            line = key_line(self.lines, [kind])
            if kind not in ASSET_KINDS:
                self.problem(line, f"{kind!r} is not a kind of asset", _suggest(kind, ASSET_KINDS))
            elif not isinstance(entries, dict):
                self.problem(line, f"{kind} must be an object of named entries",
                             f'write "{kind}": {{"name": {{"description": "...", "image": "assets/{kind}/name.png"}}}}')
            else:
                for name, entry in entries.items():
                    if not name.startswith("_"):
                        self.entry(kind, name, entry)
        if not any(a.kind == "styles" for a in self.assets):
            self.problem(key_line(self.lines, ["styles"]), "there is no style asset",
                         'add one: "styles": {"NAME": {"description": "...", "image": "assets/styles/NAME.png"}} '
                         "(it is applied to every keyframe)")
        self.check_shared_pictures()
        named = {(kind, name) for kind, entries in data.items() if isinstance(entries, dict) for name in entries}
        return AssetPlan(self.assets, named - {(a.kind, a.name) for a in self.assets}), self.problems

    def entry(self, kind: str, name: str, entry) -> None:
        line = key_line(self.lines, [kind, name])
        where = f"{kind}.{name}"
        if not NAME.match(name):
            self.problem(line, f"asset name {name!r} has characters a file name or table cell cannot carry",
                         "use letters, digits, '_' and '-', e.g. old_keeper")
            return
        if not isinstance(entry, dict):
            self.problem(line, f"{where} must be an object with a description and an image path",
                         f'write "{name}": {{"description": "...", "image": "assets/{kind}/{name}.png"}}')
            return
        for key in entry:
            if key not in ENTRY_KEYS and not key.startswith("_"):
                self.problem(key_line(self.lines, [kind, name, key]), f"{where}: unknown key {key!r}",
                             _suggest(key, ("description", "image")))
        description = self.description(kind, name, entry, line)
        image_keys = [k for k in IMAGE_KEYS if k in entry]
        if len(image_keys) != 1:
            self.problem(line, f"{where} needs one image path ({'none' if not image_keys else ' and '.join(image_keys)}"
                               " given)", f'give "image": "assets/{kind}/{name}.png"')
            return
        image = entry[image_keys[0]]
        image_line = key_line(self.lines, [kind, name, image_keys[0]])
        path = self.image_path(kind, where, image, image_line)
        if description is not None and path is not None:
            self.assets.append(Asset(kind, name, description, image, path, line))

    def description(self, kind: str, name: str, entry: dict, line: int) -> str | None:
        value = entry.get("description")
        where = f"{kind}.{name}"
        if not isinstance(value, str) or not value.strip():
            self.problem(line, f"{where} has no description",
                         f'add "description": what the {SINGULAR[kind]} looks like (it becomes the prompt)')
            return None
        if not_text(value):  # it becomes a prompt
            self.problem(key_line(self.lines, [kind, name, "description"]),
                         f"{where}: the description {not_text(value)}", "write it as plain UTF-8 text")
            return None
        if PLACEHOLDER.match(value.strip()):
            self.problem(key_line(self.lines, [kind, name, "description"]),
                         f"{where}: the description is still the template's {value.strip()!r}",
                         "describe the asset in your own words")
            return None
        return " ".join(value.split())

    def image_path(self, kind: str, where: str, image, line: int) -> Path | None:
        if not isinstance(image, str) or not image.strip():
            self.problem(line, f"{where}: the image path must be a non-empty string",
                         f'e.g. "image": "assets/{kind}/{where.split(".", 1)[1]}.png"')
            return None
        suffixes = POSE_SUFFIXES if kind == "poses" else PICTURE_SUFFIXES
        if Path(image).suffix.lower() not in suffixes:
            self.problem(line, f"{where}: {image!r} is not a picture ({', '.join(suffixes)})",
                         f"name it e.g. assets/{kind}/{where.split('.', 1)[1]}.png")
            return None
        path = Path(image) if Path(image).is_absolute() else self.root / image
        if not self.allow_outside and not paths.inside(self.root, path):  # the shared rule (producer.files.paths)
            self.problem(line, f"{where}: {image!r} leads outside the production folder",
                         f"keep asset pictures inside it (e.g. assets/{kind}/...), or run with --allow-outside "
                         "to use pictures kept elsewhere")
            return None
        return path

    def check_shared_pictures(self) -> None:
        seen: dict[Path, Asset] = {}
        for asset in self.assets:
            key = asset.path.resolve()
            if key in seen:
                other = seen[key]
                self.problem(asset.line, f"{asset.kind}.{asset.name} and {other.kind}.{other.name} use the same "
                             f"picture {asset.image}", "give each asset its own file")
            seen.setdefault(key, asset)


def _suggest(word: str, known) -> str:
    close = difflib.get_close_matches(word, list(known), n=1, cutoff=0.6)
    return f"did you mean {close[0]!r}? (known: {', '.join(known)})" if close else f"use one of: {', '.join(known)}"


def key_line(lines: list[str], keys: list[str]) -> int:
    """The line of a nested key ("characters" -> "keeper" -> "image"): each key searched after the last.

    A light look-up rather than a JSON parser with positions: keys are found in document order, which is
    how they nest in a hand-written file. Falls back to the last line found (1 at worst)."""
    line = 0
    for key in keys:
        pattern = re.compile(r'"' + re.escape(key) + r'"\s*:')
        found = next((i for i in range(line, len(lines)) if pattern.search(lines[i])), None)
        if found is None:
            break
        line = found
    return line + 1
