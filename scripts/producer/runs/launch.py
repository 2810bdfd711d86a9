"""What a parallel run launches: decided by producer.runs.parallel, reported by producer.runs.parallel_merge."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Launch:
    mode: str  # "scenes" | "context"
    workers: int
    devices: tuple[str, ...] = ()  # CUDA_VISIBLE_DEVICES entries, one per worker; () for CPU processes
