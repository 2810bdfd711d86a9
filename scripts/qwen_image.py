#!/usr/bin/env python3
"""Make the stills of a production with Qwen-Image-Edit-2511: assets, layers and keyframes."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from producer.makers.qwen_image import main  # the code: scripts/producer/makers/qwen_image.py

if __name__ == "__main__":
    sys.exit(main())
