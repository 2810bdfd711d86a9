"""Facts before anything runs: every model (registry) and this machine (hardware).
Imports only errors, values and files.
"""
