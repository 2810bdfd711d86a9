"""A production's files and their rules: scenes, assets, phase files, the style rules, prompts, seams.
Imports runs and below.
"""
