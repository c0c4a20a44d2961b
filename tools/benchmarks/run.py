"""The whole run: op level, model level and the profile, and the machine it ran on."""

import contextlib
import os
import platform
import time

import torch

from .compiled import benchmark_compiled
from .models import (
    FLOP_SIZES,
    IMAGE_SIZE,
    QUICK_FLOP_SIZES,
    QUICK_IMAGE_SIZE,
    benchmark_models,
    model_names,
)
from .op import (
    KERNEL_SIZE,
    OP_SHAPES,
    PADDING,
    QUICK_OP_SHAPES,
    STRIDE,
    benchmark_op,
    op_implementations,
)
from .profile import profile_models
from .report import GOALS, PUBLISHED_R50_FLOP_INCREASE

__all__ = ["machine_info", "run_benchmark"]


def machine_info(device):
    """What the numbers were measured on."""
    device = torch.device(device)
    cpu = platform.processor() or platform.machine()
    with contextlib.suppress(OSError), open("/proc/cpuinfo") as f:
        cpu = next((ln.split(":", 1)[1].strip() for ln in f if ln.startswith("model name")), cpu)
    info = {
        "cpu": cpu,
        "cpu_count": os.cpu_count(),
        "cpus_usable": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None,
        "torch_threads": torch.get_num_threads(),
        "load_average": [round(v, 2) for v in os.getloadavg()],
        "python": platform.python_version(),
        "torch": torch.__version__,
        "device": str(device),
        "lip2d_implementations": op_implementations(device),
    }
    if device.type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(device)
    return info


def run_benchmark(*, device="cpu", quick=False, op_shapes=None, dtype=torch.float32, depths=None,
                  image_size=None, flop_sizes=None, op_rounds=None, model_rounds=None,
                  profile=False, profile_depth=None, profile_steps=2, skip_op=False,
                  skip_models=False, compile_backend=None, log=print):  # fmt: skip
    """Run the op-level and model-level benchmarks (and optionally the profile); returns the
    JSON-serialisable results. ``quick`` picks small shapes, R18 only and few rounds (tests/CI);
    explicit arguments override its choices."""
    device = torch.device(device)
    op_shapes = op_shapes or (QUICK_OP_SHAPES if quick else OP_SHAPES)
    depths = depths or ((18,) if quick else (18, 50))
    image_size = tuple(image_size or (QUICK_IMAGE_SIZE if quick else IMAGE_SIZE))
    flop_sizes = flop_sizes or (QUICK_FLOP_SIZES if quick else FLOP_SIZES)
    op_rounds = op_rounds or (3 if quick else 7)
    model_rounds = model_rounds or (2 if quick else 5)
    profile_depth = profile_depth or max(depths)

    results = {
        "machine": machine_info(device),
        "settings": {
            "quick": quick,
            "op_shapes": [list(s) for s in op_shapes],
            "dtype": str(dtype).replace("torch.", ""),
            "kernel_size_stride_padding": [KERNEL_SIZE, STRIDE, PADDING],
            "depths": list(depths),
            "image_size": list(image_size),
            "flop_sizes": [list(s) for s in flop_sizes],
            "op_rounds": op_rounds,
            "model_rounds": model_rounds,
            "light_heads": quick,
            "compile_backend": compile_backend,
        },
        "goals": GOALS,
        "published": {"r50_flop_increase": PUBLISHED_R50_FLOP_INCREASE},
    }
    m = results["machine"]
    log(
        f"machine: {m['cpu']}, {m['cpus_usable']}/{m['cpu_count']} CPUs usable, "
        f"torch {m['torch']} with {m['torch_threads']} threads, load average {m['load_average']}"
        + (f", {m['gpu']}" if "gpu" in m else "")
    )
    start = time.perf_counter()
    if not skip_op:
        results["op"] = []
        for shape in op_shapes:
            log(f"op level {tuple(shape)} ({op_rounds} interleaved rounds) ...")
            results["op"].append(
                benchmark_op(
                    shape,
                    device=device,
                    dtype=dtype,
                    rounds=op_rounds,
                    min_sample_s=0.02 if quick else 0.05,
                    log=log,
                )  # fmt: skip
            )
    if not skip_models:
        results["models"] = {}
        for depth in depths:
            log(f"model level R{depth} ({model_rounds} interleaved rounds) ...")
            results["models"][model_names(depth)[1].removesuffix("-FPN")] = benchmark_models(
                depth, device=device, image_size=image_size, flop_sizes=flop_sizes,
                rounds=model_rounds, light_heads=quick, log=log,
            )  # fmt: skip
    if compile_backend and not skip_models:
        results["compiled"] = {}
        for depth in depths:
            log(f"compiled vs eager R{depth} ({compile_backend}, {model_rounds} rounds) ...")
            results["compiled"][model_names(depth)[1].removesuffix("-FPN")] = benchmark_compiled(
                depth, backend=compile_backend, device=device, image_size=image_size,
                rounds=model_rounds, light_heads=quick, log=log,
            )  # fmt: skip
    if profile:
        log(f"profile R{profile_depth} ...")
        results["profile"] = profile_models(
            profile_depth, device=device, image_size=image_size, steps=profile_steps,
            light_heads=quick, log=log,
        )  # fmt: skip
    m["load_average_end"] = [round(v, 2) for v in os.getloadavg()]
    results["seconds"] = time.perf_counter() - start
    return results
