"""Compiled against eager: LIP-R{depth}-FPN and R{depth}-FPN Faster R-CNN with the backbone
``torch.compile``'d in place, as ``MODEL.COMPILE.ENABLED`` does in tools/train_net.py, timed in
the same interleaved rounds as the eager models (train step and inference).

The first call of each compiled model (the warm-up round) includes compilation and is not
timed; its wall time is reported as the compile time (train and eval are compiled separately).
"""

import time

import torch

from lip_det.utils.benchmark import median_ratio, time_interleaved

from .common import summary, synchronize
from .models import build_detectors, model_names

__all__ = ["benchmark_compiled"]


def benchmark_compiled(depth, *, backend="inductor", device="cpu", image_size, rounds=3,
                       light_heads=False, log=print):  # fmt: skip
    device = torch.device(device)
    eager = build_detectors(depth, device, image_size, light_heads)
    compiled = build_detectors(depth, device, image_size, light_heads)
    names = model_names(depth)
    detectors = {}
    for name in names:
        detectors[name] = eager[name]
        detectors[f"{name} compiled"] = compiled[name]
        compiled[name].model.backbone.compile(fullgraph=True, backend=backend)
    results = {"backend": backend, "depth": depth, "models": {n: {} for n in detectors}}
    ratios = {}
    for kind in ("train_step", "inference"):
        fns = {name: getattr(det, kind) for name, det in detectors.items()}
        for name in names:  # compile outside the timed rounds, and say how long it took
            synchronize(device)
            start = time.perf_counter()
            fns[f"{name} compiled"]()
            synchronize(device)
            seconds = time.perf_counter() - start
            results["models"][f"{name} compiled"][f"compile_s_{kind}"] = seconds
            log(f"  {name} compiled ({backend}): first {kind} (compiling) {seconds:.1f} s")

        def on_round(index, seconds, kind=kind):
            log(
                f"  {kind} round {index + 1}/{rounds}: "
                + ", ".join(f"{n} {1e3 * s:.0f} ms" for n, s in seconds.items())
            )

        samples = time_interleaved(fns, rounds=rounds, device=device, warmup=1, on_round=on_round)
        for name in detectors:
            results["models"][name][kind] = summary(samples[name])
        for name in names:
            ratios[f"{name} {kind} compiled / eager"] = median_ratio(
                samples, f"{name} compiled", name
            )
        lip, plain = names
        ratios[f"{kind} LIP / plain, eager"] = median_ratio(samples, lip, plain)
        ratios[f"{kind} LIP / plain, compiled"] = median_ratio(
            samples, f"{lip} compiled", f"{plain} compiled"
        )
    results["ratios"] = ratios
    torch._dynamo.reset()
    return results
