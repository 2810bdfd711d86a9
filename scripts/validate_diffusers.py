#!/usr/bin/env python3
"""Prove that the install works: the software, the installed models, and the scripts end to end."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from producer.commands.validate_diffusers import main  # the code: scripts/producer/commands/validate_diffusers.py

if __name__ == "__main__":
    sys.exit(main())
