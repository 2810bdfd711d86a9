"""The model sessions: a model loaded once, many jobs. engines.wan, engines.qwen, engines.loras, and the
broken-output judge. Imports cli and below.
"""
