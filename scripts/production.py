#!/usr/bin/env python3
"""Keep a production on track: check its files, show where it stands, record approvals, plan the next step."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from producer.commands.production import main  # the code: scripts/producer/commands/production.py

if __name__ == "__main__":
    sys.exit(main())
