"""Shared core of the AI video producer scripts (qwen_image.py, wan_video.py, setup and validation).

Modules: registry (model facts), hardware (probe), memory (the pure memory plan), offload (applies a
plan), cli (exit codes, --json, safe outputs), style (style.json), media (images and video files),
standins (tiny real-class pipelines for tests and smoke runs).
"""
