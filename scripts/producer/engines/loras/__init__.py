"""LoRAs: files, what applies to which expert, loading with diffusers' loader, and the report.
"""
