#!/usr/bin/env python
"""
Benchmark LIP: the lip2d op against avg_pool2d and the authors' primitive formula, and
LIP-ResNet-FPN Faster R-CNN against the plain ResNet-FPN one, every ratio measured side by side.

    python tools/benchmark.py --json bench.json            # op + R18/R50 models (several minutes)
    python tools/benchmark.py --quick --json quick.json    # small shapes, R18 only (tests, CI)
    python tools/benchmark.py --skip-op --depths 50 --profile   # where LIP-R50's extra time goes

How each number is measured is in tools/benchmarks/__init__.py's docstring; the measuring
primitives are lip_det.utils.benchmark's, the lip2d FLOP handle lip_det.layers.flops's.
"""

import argparse
import json
import shlex
import sys
from pathlib import Path

import torch

# tools/ is not installed with lip_det: import the benchmarks package next to this file
TOOLS = str(Path(__file__).resolve().parent)
if TOOLS not in sys.path:
    sys.path.insert(0, TOOLS)

from benchmarks import models, op, report, run  # noqa: E402  (needs TOOLS on sys.path)


def _size(text):
    h, _, w = text.lower().partition("x")
    return int(h), int(w or h)


def _shape(text):
    return tuple(int(v) for v in text.split(","))


def argument_parser():
    parser = argparse.ArgumentParser(
        description=__doc__.strip().split("\n\n")[0],
    )
    parser.add_argument("--device", default="cpu", help="cpu (default) or cuda[:index]")
    parser.add_argument("--json", metavar="PATH", help="write the results here")
    parser.add_argument(
        "--quick", action="store_true", help="small op shapes, R18 only, tiny images, few rounds"
    )
    parser.add_argument(
        "--shapes", type=_shape, nargs="+", metavar="N,C,H,W",
        help=f"op-level input shapes (default {op.OP_SHAPES}; --quick: "
        f"{op.QUICK_OP_SHAPES})",
    )  # fmt: skip
    parser.add_argument(
        "--dtype", default="float32", choices=["float32", "float64", "float16", "bfloat16"],
        help="op-level dtype (default float32)",
    )  # fmt: skip
    parser.add_argument(
        "--depths", type=int, nargs="+", choices=[18, 34, 50, 101, 152, 121, 169, 201],
        help="model-level depths: ResNet 18-152, DenseNet 121/169/201 (default 18 50; --quick: "
        "18)",
    )  # fmt: skip
    parser.add_argument(
        "--image-size", type=_size, metavar="HxW",
        help=f"train/inference image size (default {'x'.join(map(str, models.IMAGE_SIZE))}; "
        f"--quick: {'x'.join(map(str, models.QUICK_IMAGE_SIZE))})",
    )  # fmt: skip
    parser.add_argument(
        "--flop-sizes", type=_size, nargs="+", metavar="HxW",
        help="bottom-up FLOP count sizes (default 224x224 800x1333; --quick: 224x224)",
    )  # fmt: skip
    parser.add_argument("--op-rounds", type=int, help="interleaved rounds per shape (default 7)")
    parser.add_argument("--model-rounds", type=int, help="interleaved rounds per model (default 5)")
    parser.add_argument("--skip-op", action="store_true", help="no op-level benchmark")
    parser.add_argument("--skip-models", action="store_true", help="no model-level benchmark")
    parser.add_argument(
        "--profile", action="store_true",
        help="also profile a train step and inference of LIP vs plain, grouped by part",
    )  # fmt: skip
    parser.add_argument("--profile-depth", type=int, help="default: the largest of --depths")
    parser.add_argument(
        "--profile-steps", type=int, default=2, help="profiled calls per model (default 2)"
    )
    parser.add_argument(
        "--compile", metavar="BACKEND", dest="compile_backend",
        help="also time each model with its backbone torch.compile'd by BACKEND (e.g. inductor; "
        "MODEL.COMPILE), side by side with eager",
    )  # fmt: skip
    parser.add_argument("--threads", type=int, help="torch.set_num_threads (default: torch's)")
    return parser


def main(argv=None):
    args = argument_parser().parse_args(argv)
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        sys.exit("--device cuda: no CUDA device is available here")
    threads = torch.get_num_threads()
    if args.threads:
        torch.set_num_threads(args.threads)
    try:
        results = _run(args)
    finally:  # main() is also called in-process (tests)
        torch.set_num_threads(threads)
    results["command"] = shlex.join(["python", "tools/benchmark.py", *(argv or sys.argv[1:])])
    print()
    print(report.format_report(results), flush=True)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=1)
        print(f"\nwrote {args.json}")
    return results


def _run(args):
    return run.run_benchmark(
        device=args.device,
        quick=args.quick,
        op_shapes=args.shapes,
        dtype=getattr(torch, args.dtype),
        depths=args.depths,
        image_size=args.image_size,
        flop_sizes=args.flop_sizes,
        op_rounds=args.op_rounds,
        model_rounds=args.model_rounds,
        profile=args.profile,
        profile_depth=args.profile_depth,
        profile_steps=args.profile_steps,
        skip_op=args.skip_op,
        skip_models=args.skip_models,
        compile_backend=args.compile_backend,
        log=lambda line: print(line, flush=True),
    )


if __name__ == "__main__":
    main()
