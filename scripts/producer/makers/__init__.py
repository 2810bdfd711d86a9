"""The three scripts that make files: qwen_image (stills), wan_video (clips), assemble_video (the film).

One module per script: build() returns its parser, run(args) does the work, main(argv) parses, runs and
prints. scripts/NAME.py only puts the package on the path and calls main(). They sit below the production
layer, which parses every planned job with its maker's own parser (planner.parse_job).
"""

from __future__ import annotations

from pathlib import Path

SCRIPTS_DIR = Path(__file__).resolve().parents[2]  # scripts/, where each script's door is
NAMES = ("qwen_image", "wan_video", "assemble_video")


def script_path(name: str) -> Path:
    """scripts/NAME.py: what a worker process runs (producer.runs.parallel) and what messages tell people to run."""
    return SCRIPTS_DIR / f"{Path(name).stem}.py"


def module(script: str):
    """The maker's module for a script name ("wan_video.py" or "wan_video"): its build(), run(), main()."""
    import importlib

    stem = Path(script).stem
    if stem not in NAMES:
        raise ValueError(f"{script!r} is not one of the makers: {', '.join(NAMES)}")
    return importlib.import_module(f"{__name__}.{stem}")
