"""Tiny real-class stand-ins of every model, for tests, smoke runs, the demo and rehearsals.
Imports modelfiles and below.
"""
