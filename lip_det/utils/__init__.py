"""Utilities that are not part of the model.

- ``benchmark``: measuring primitives (interleaved timing, peak memory, bytes saved for
  backward) that ``tools/benchmark.py`` is built from.
"""

from .benchmark import (
    fastest_ratio,
    median_ratio,
    peak_memory_bytes,
    quiet_profiler,
    saved_tensor_bytes,
    time_interleaved,
)

__all__ = [
    "fastest_ratio",
    "median_ratio",
    "peak_memory_bytes",
    "quiet_profiler",
    "saved_tensor_bytes",
    "time_interleaved",
]
