"""Small helpers shared by the benchmarks."""

import statistics

import torch

__all__ = ["mib", "summary", "synchronize"]


def summary(seconds):
    """The JSON summary of one callable's samples (seconds per call, one per round)."""
    return {
        "median_ms": 1e3 * statistics.median(seconds),
        "min_ms": 1e3 * min(seconds),
        "samples": len(seconds),
    }


def synchronize(device):
    device = torch.device(device)
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def mib(nbytes):
    return nbytes / 2**20
