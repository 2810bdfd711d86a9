"""Each job's seed: fixed per production, item and take (approvals.derive_seed on a salted name).

A seed derived from the item's id alone gave every production's KF-A the same seed, so two productions of
similar pictures started from the same noise. A salt drawn once per production (stored in
.production/production.json the first time `next` or `retake` plans seeds) makes them differ, while a
production keeps its own seeds for good (planning twice gives the same commands).

Productions that made outputs before the salt existed keep the unsalted seeds (salt ""), so that none of
their files turns stale.
"""

from __future__ import annotations

import secrets
from pathlib import Path

from producer.files import layout, paths
from producer.files.outputs import write_json_atomic
from producer.values import load_json
from producer.workflow.approvals import derive_seed

SALT_FILE = "production.json"


def salt(root: Path, create: bool = False) -> str:
    """The production's seed salt; `create` stores it on first use (a fresh production gets a random one)."""
    path = layout.state_file(root, SALT_FILE)
    try:
        stored = load_json(path.read_text(encoding="utf-8")).get("seed_salt")
        if isinstance(stored, str):
            return stored
    except (OSError, ValueError, AttributeError):
        pass  # absent (or unreadable: recreated below, as on first use)
    value = "" if _made_before_salts(root) else secrets.token_hex(8)
    if create:
        paths.own_folder(root, layout.state_dir(root)).mkdir(parents=True, exist_ok=True)
        write_json_atomic(path, {"seed_salt": value, "_comment": "drawn once: every seed of this production "
                                 "derives from it (changing it remakes everything)"})
    return value if create else ""


def seed(salt_value: str, item: str, take: int = 0) -> int:
    return derive_seed(f"{salt_value}/{item}" if salt_value else item, take)


def _made_before_salts(root: Path) -> bool:
    """Outputs or takes exist already: a production from before salts, whose seeds must not move."""
    from producer.files.provenance import read_recipe

    if layout.state_file(root, "takes.json").is_file():  # a retake planned seeds already
        return True
    made = [*root.glob("assets/*/*.png"), *root.glob("keyframes/*.png"), *root.glob("scene-*/video.mp4")]
    return any(read_recipe(p) is not None for p in made)
