#!/usr/bin/env python3
"""Get the models this machine needs, and check that the machine is ready to run the scripts."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from producer.commands.setup_diffusers import main  # the code: scripts/producer/commands/setup_diffusers.py

if __name__ == "__main__":
    sys.exit(main())
