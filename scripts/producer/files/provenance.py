"""What every output was made from: its recipe.

A recipe records the script, the resolved settings (prompt, seed, steps, size, LoRAs...), the content
hash of every input file and the model revision. PNGs carry it inside (a tEXt chunk, see media.py);
other outputs carry it in a sidecar `<output>.provenance.json`. Two uses:
- `--batch` skips a job whose output exists with the same recipe;
- the project tool marks an output stale when anything it was made from changed.
The comparison key ignores input *paths* (only their content counts), so moving a production folder
does not make everything stale.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any

from producer.errors import CliError
from producer.files.inputs import regular_file
from producer.files.outputs import write_json_atomic
from producer.values import load_json

RECIPE_VERSION = 1
SIDECAR_SUFFIX = ".provenance.json"
PNG_KEY = "producer"  # the PNG text chunk that holds the recipe

_digest_cache: dict[tuple[str, int, int], str] = {}


def file_digest(path: str | os.PathLike) -> str:
    """sha256 of a file's content; cached per (path, size, mtime) for the life of the process."""
    p = regular_file(path)  # approve hashes what is at an output path: a FIFO there would block open()
    st = p.stat()
    key = (str(p.resolve()), st.st_size, st.st_mtime_ns)
    if key not in _digest_cache:
        h = hashlib.sha256()
        with open(p, "rb") as fh:
            for chunk in iter(lambda: fh.read(1 << 20), b""):
                h.update(chunk)
        _digest_cache[key] = h.hexdigest()
    return _digest_cache[key]


# A recipe made on stand-in models carries this key (True): it must never pass for a real output, and a real
# run must not skip it as up to date (producer.workflow.rehearsal reads it).
RECIPE_MARK = "standin_models"


def make_recipe(script: str, settings: dict[str, Any], inputs: dict[str, Any], model: dict[str, Any],
                standin: bool = False) -> dict:
    """inputs: role -> path or list of paths (references, frames, LoRA files, style.json). `standin`: made on
    stand-in models (modelfiles.models.made_on_standins(model)), marked with RECIPE_MARK."""
    recipe = {
        "recipe_version": RECIPE_VERSION,
        "script": script,
        "settings": settings,
        "inputs": {role: _describe_inputs(value) for role, value in inputs.items() if value},
        "model": model,
    }
    if standin:
        recipe[RECIPE_MARK] = True
    return recipe


def model_refs(model) -> list[tuple[str, str]]:
    """Every {"repo": ..., "commit" (or "revision"): ...} pair inside a recipe's model part, however nested."""
    found = []
    if isinstance(model, dict):
        commit = model.get("commit", model.get("revision"))
        if isinstance(model.get("repo"), str) and isinstance(commit, str):
            found.append((model["repo"], commit))
        for value in model.values():
            found += model_refs(value)
    elif isinstance(model, list):
        for value in model:
            found += model_refs(value)
    return list(dict.fromkeys(found))


def _describe_inputs(value):
    if isinstance(value, (list, tuple)):
        return [_describe_inputs(v) for v in value]
    return {"path": str(value), "sha256": file_digest(value)}


def recipe_key(recipe: dict, ignore_seed: bool = False) -> str:
    """A hash of what determines the output: settings, input contents and model revision."""
    settings = dict(recipe.get("settings", {}))
    if ignore_seed:
        settings.pop("seed", None)
    core = {
        "script": recipe.get("script"),
        "settings": settings,
        "inputs": _strip_paths(recipe.get("inputs", {})),
        "model": recipe.get("model", {}),
    }
    if recipe.get("standin_models"):  # only when marked, so that the keys of real recipes stay as they were
        core["standin_models"] = True
    return hashlib.sha256(json.dumps(core, sort_keys=True, default=str).encode()).hexdigest()


def _strip_paths(value):
    if isinstance(value, dict):
        if "sha256" in value:
            return value["sha256"]
        return {k: _strip_paths(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_strip_paths(v) for v in value]
    return value


def sidecar_path(output: str | os.PathLike) -> Path:
    return Path(str(output) + SIDECAR_SUFFIX)


def read_recipe(output: str | os.PathLike) -> dict | None:
    """The recipe stored with an output (inside a PNG, else in its sidecar), or None."""
    return recipe_or_damage(output)[0]


def recipe_or_damage(output: str | os.PathLike) -> tuple[dict | None, str | None]:
    """(the recipe stored with an output or None, why the output cannot be read or None).

    A picture that does not decode carries no recipe, whatever its text chunks say: it is never taken
    for a finished output; nor is a video whose file is no longer the one its sidecar recorded (`_as_made`)."""
    p = Path(output)
    if p.suffix.lower() == ".png" and p.is_file():
        from producer.errors import CliError
        from producer.files.media import read_png_metadata

        try:
            meta = read_png_metadata(p)
        except CliError as err:  # not a PNG we can read (someone else's file, a damaged one): no recipe
            return None, err.message
        if meta:
            return meta, None
    side = sidecar_path(p)
    if side.is_file():
        try:
            recipe = load_json(side.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return None, None
        return _as_made(p, recipe)
    return None, None


def with_output(recipe: dict, made: str | os.PathLike) -> dict:
    """The recipe of a sidecar output with what the finished file was (its size and sha256), so that a later
    look tells the file that was made from one cut short, damaged or changed since (`recipe_or_damage`)."""
    return {**recipe, "output": {"bytes": Path(made).stat().st_size, "sha256": file_digest(made)}}


def _as_made(p: Path, recipe) -> tuple[dict | None, str | None]:
    """A sidecar's recipe with the output it was written for, or the damage when that output is no longer the file
    that was made and does not decode to its end (cut short, or damaged). A whole file that changed keeps the
    recipe, as before outputs were recorded: a clip trimmed by hand is the user's business, and a clip renamed
    into place before its recipe (a run killed between the two) reads as stale against the plan."""
    made = recipe.get("output") if isinstance(recipe, dict) else None
    if not isinstance(made, dict) or not p.is_file():  # recorded before outputs were, or nothing there
        return recipe, None
    size = p.stat().st_size
    if size == made.get("bytes") and file_digest(p) == made.get("sha256"):
        return recipe, None
    if _decodes(p):
        return recipe, None
    return None, (f"{p} is not the file that was made ({made.get('bytes')} bytes then, {size} now) and does "
                  "not decode to its end (cut short or damaged)")


def _decodes(p: Path) -> bool:
    from producer.files import video

    try:
        return video.decodes_to_end(p)
    except CliError:  # too slow to tell: not the file that was made, and not known whole
        return False


def write_sidecar(output: str | os.PathLike, recipe: dict) -> Path:
    side = sidecar_path(output)
    write_json_atomic(side, recipe)
    return side


def up_to_date(output: str | os.PathLike, recipe: dict, seed_given: bool, overwrite: bool) -> bool:
    """The one up-to-date rule of both generation scripts' batches. True: skip it (the output exists, made
    from the same recipe); False: make it (no output yet, or overwrite). An output that exists but was made
    otherwise is refused (CliError) unless overwrite: making it would replace what someone else made."""
    if overwrite or not Path(output).exists():
        return False
    existing, damage = recipe_or_damage(output) if Path(output).is_file() else (None, None)
    if _same_recipe(existing, recipe, seed_given):
        return True
    if damage and sidecar_path(output).is_file():  # a video whose recipe is there but whose file is not the one made
        raise CliError(damage, "pass --overwrite (or \"overwrite\": true in the job) to make it again")
    raise CliError(f"{output} exists but was made with other settings or inputs",
                   "pass --overwrite (or \"overwrite\": true in the job) to remake it, or choose another output")


def is_up_to_date(output: str | os.PathLike, recipe: dict, seed_given: bool) -> bool:
    """The output exists and was made from the same recipe (any seed, when the job named none)."""
    return Path(output).is_file() and _same_recipe(read_recipe(output), recipe, seed_given)


def _same_recipe(existing: dict | None, recipe: dict, seed_given: bool) -> bool:
    return existing is not None and (recipe_key(existing, ignore_seed=not seed_given)
                                     == recipe_key(recipe, ignore_seed=not seed_given))
