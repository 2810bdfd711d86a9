"""Many jobs: batch files and their runner (batch), several GPUs (parallel, parallel_merge).
Imports engines and below.
"""
