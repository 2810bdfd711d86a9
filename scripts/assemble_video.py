#!/usr/bin/env python3
"""Assemble the scene clips of a production into one film, with transitions, cards and audio."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from producer.makers.assemble_video import main  # the code: scripts/producer/makers/assemble_video.py

if __name__ == "__main__":
    sys.exit(main())
