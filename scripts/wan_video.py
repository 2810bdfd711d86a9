#!/usr/bin/env python3
"""Scene clips with Wan 2.2 I2V A14B: image-to-video and first-last-frame, with review images for agents."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from producer.makers.wan_video import main  # the code: scripts/producer/makers/wan_video.py

if __name__ == "__main__":
    sys.exit(main())
