"""Wan 2.2 I2V: settings and request resolution (wan_settings, wan_jobs), files and plan (wan_load),
the session (wan) and its split over GPUs (context_parallel).
"""
