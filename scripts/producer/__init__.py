"""Shared core of the AI video producer scripts, in layers; imports only point down (docs/architecture.md).

Where to start reading: the script's module, producer/makers/ (qwen_image, wan_video, assemble_video) or
producer/commands/ (production, setup_diffusers, validate_diffusers): build() is its parser, run(args) its work.
From there, top to bottom:

    commands/    the top scripts, and demo, smoke, docgen, installcheck
    workflow/    where a production stands and what comes next (planner, status, nextstep, approvals, ...)
    makers/      the three scripts that make files
    production/  a production's files and their rules (project, scenes, assets, rules, prompts, seams)
    runs/        batches and several GPUs
    engines/     the model sessions: wan/, qwen/, loras/, judge
    cli.py       run_main, shared options, logging, signals, out-of-memory reports
    testing/     tiny real-class stand-ins
    modelfiles/  where the models are: locate, install, download, check
    sizing/      the pure memory plan (memory), its application (offload), speed, estimate
    facts/       registry (model facts), hardware (this machine)
    files/       inputs, outputs, locks, provenance, images, video, colour, review, style
    errors.py    CliError, ExitCode: what every layer may raise
    values.py    text, numbers, seeds and JSON read safely

tests/test_architecture.py keeps the direction: a module imports its own layer and those below it.
"""

import platform
import sys

# The oldest Python the package runs on (enum.StrEnum, sizing/placement.py; SETUP.md asks for the same). Checked
# here, before any module is read, so an older Python gets this message and not a traceback from an import.
MIN_PYTHON = (3, 11)

if sys.version_info < MIN_PYTHON:
    sys.stderr.write(f"error: these scripts need Python {'.'.join(map(str, MIN_PYTHON))} or newer; this is Python "
                     f"{platform.python_version()} ({sys.executable})\n  fix: install Python 3.11+ (SETUP.md), make "
                     "a virtual environment with it and install requirements.txt there\n")
    raise SystemExit(1)
