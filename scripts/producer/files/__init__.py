"""Files: what the user gives and gets. Reading inputs safely, writing outputs whole (temp file, then rename), locks,
provenance (recipes), images, video, colour, clips, timelines, review images, style.json.
Imports only errors and values.
"""
