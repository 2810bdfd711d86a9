"""Where the models are: locating installed snapshots (models), install records, downloads, weight checks,
the environment check and which entries a machine needs. Imports sizing and below.
"""
