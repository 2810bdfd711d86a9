"""Rehearsals: a production made on tiny stand-in models, marked so that it can never pass for the real one.

`production.py rehearse DIR` copies DIR's plan (phase files, the pictures the user provided, settings)
into a rehearsal folder (DIR/.production/rehearsal by default) and runs every phase there, with the
same checks, plans and approval steps as the real run, on stand-ins (producer.testing.standins) at a tiny size.
`production.py demo` is the rehearsal of the sample production.

Two marks keep a rehearsal apart from real work:
- the folder: `.production/rehearsal.json` (what it rehearses, where its stand-ins live). `status` and
  `next` there say REHEARSAL, and every command `next` prints finds the stand-ins (--models-dir).
- every output: a script that ran on a stand-in model writes `"standin_models": true` into the recipe
  (provenance.make_recipe). In a folder that is not a rehearsal such an output is stale (the real run
  makes it again) and `approve` refuses it.
"""

from __future__ import annotations

from pathlib import Path

from producer.files import layout
from producer.files.provenance import RECIPE_MARK
from producer.modelfiles.needs import DEMO_TIME  # noqa: F401 (defined where setup's verdicts quote it)
from producer.values import load_json

MARKER = "rehearsal.json"
STANDINS = "standins"  # the stand-in cache inside the rehearsal's .production/ (about 5 MB)
DEFAULT_FOLDER = "rehearsal"  # DIR/.production/rehearsal
# Every picture 96x64 and every clip 9 frames: a whole 3-scene film in about 15 s on 2 CPU cores.
TINY_SETTINGS = {"qwen_image.py": {"size": "96x64"}, "wan_video.py": {"size": "96x64", "frames": 9}}
STALE_REASON = ("made on stand-in models (a rehearsal or the demo), not the real ones: the real run makes it again")


def marker_path(root: Path) -> Path:
    return layout.state_file(root, MARKER)


def read_marker(root: Path) -> dict | None:
    """The rehearsal's marker, or None when the folder is a real production."""
    path = marker_path(Path(root))
    if not path.is_file():
        return None
    try:
        marker = load_json(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {"rehearsal_of": None, "models_dir": None}  # damaged, but still a rehearsal: never real
    return marker if isinstance(marker, dict) else {"rehearsal_of": None, "models_dir": None}


def models_dir(root: Path) -> Path:
    return layout.state_dir(root) / STANDINS


def is_standin_recipe(recipe: dict | None) -> bool:
    return bool(recipe) and recipe.get(RECIPE_MARK) is True
