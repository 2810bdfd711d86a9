"""What fits and how fast: the pure memory plan (memory), carrying it out (offload), speed levers (speed),
predicted seconds (estimate). Imports facts and below.
"""
