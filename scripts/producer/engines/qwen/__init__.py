"""Qwen-Image-Edit-2511: job resolution (qwen_jobs), loading (qwen_load), the session (qwen), pose pictures.
"""
