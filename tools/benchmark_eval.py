#!/usr/bin/env python
"""
Time lip_det's size-bucketed COCO evaluation with the ``fast`` engine against a plain pycocotools
COCOeval (its 4 standard area ranges), on generated COCO-format data.

    python tools/benchmark_eval.py                       # 5000 images, 7 buckets
    python tools/benchmark_eval.py --images 20000 --repeat 3 --with-official-buckets

Both timings start from the same in-memory ground truth and detections and end with the summary
numbers: building the COCO index, loading the results, evaluate() and accumulate() (and, for
lip_det, checking the results and computing every bucket). JSON parsing is left out of both.

Then the paired bootstrap of the small-object report is timed (--bootstrap resamples, 0 to skip)
on a comparison of two runs (the detections above and a better second run): the fast evaluation
of both, the per-image matching, and the resampled accumulations, to the intervals.
"""

import argparse
import contextlib
import copy
import gc
import importlib.metadata
import io
import os
import platform
import time

import numpy as np

import lip_det  # noqa: F401  (first: detectron2 compatibility fixes)
from lip_det.evaluation import evaluate_by_size, get_engine
from lip_det.evaluation.bootstrap import evaluation_matches, paired_bootstrap
from lip_det.evaluation.simulated import make_synthetic_coco, make_synthetic_detections
from lip_det.evaluation.size_buckets import SizeBuckets
from lip_det.evaluation.size_evaluation import metric_names

# pycocotools' 12 summary stats, in COCOeval.stats order (the first 12 of our metric names)
COCO_STATS = metric_names(SizeBuckets(), (1, 10, 100))[:12]


def argument_parser():
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0].strip(),
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument("--images", type=int, default=5000, help="generated images")
    parser.add_argument("--categories", type=int, default=80)
    parser.add_argument(
        "--objects-per-image", type=int, nargs=2, default=(1, 15), metavar=("MIN", "MAX")
    )
    parser.add_argument(
        "--false-positives-per-image", type=float, default=20, help="mean clutter detections"
    )
    parser.add_argument(
        "--buckets",
        type=float,
        nargs="+",
        default=[0, 4, 8, 16, 32, 64, 128],
        metavar="EDGE",
        help="size-bucket edges of the lip_det evaluation (default: 7 buckets)",
    )
    parser.add_argument("--repeat", type=int, default=1, help="runs per timing; the best counts")
    parser.add_argument(
        "--with-official-buckets",
        action="store_true",
        help="also time lip_det's bucketed evaluation with the official (pycocotools) engine",
    )
    parser.add_argument(
        "--bootstrap",
        type=int,
        default=1000,
        help="resamples of the timed paired bootstrap of two runs (0: skip it)",
    )
    parser.add_argument("--seed", type=int, default=0)
    return parser


def plain_pycocotools(gt, results):
    """What detectron2's COCOEvaluator does with use_fast_impl=False: COCO's 4 area ranges."""
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    with contextlib.redirect_stdout(io.StringIO()):
        coco_gt = COCO()
        coco_gt.dataset = gt
        coco_gt.createIndex()
        coco_dt = coco_gt.loadRes(results)
        cocoeval = COCOeval(coco_gt, coco_dt, "bbox")
        cocoeval.evaluate()
        cocoeval.accumulate()
        cocoeval.summarize()
    return dict(zip(COCO_STATS, (float(s) * 100 for s in cocoeval.stats)))


def best_time(fn, gt, results, repeat):
    """Best wall time and best CPU time (this process) of ``fn(gt, results)`` over ``repeat``
    runs, each on fresh copies (the COCO API writes into both), and the last return value.
    CPU time is the steadier figure on a machine shared with other jobs."""
    wall, cpu = [], []
    for _ in range(repeat):
        gt_copy, results_copy = copy.deepcopy(gt), copy.deepcopy(results)
        gc.collect()
        start_wall, start_cpu = time.perf_counter(), time.process_time()
        value = fn(gt_copy, results_copy)
        wall.append(time.perf_counter() - start_wall)
        cpu.append(time.process_time() - start_cpu)
    return (min(wall), min(cpu)), value


def machine_description():
    cpu = platform.processor() or platform.machine()
    with contextlib.suppress(OSError), open("/proc/cpuinfo") as f:
        names = [line.split(":", 1)[1].strip() for line in f if line.startswith("model name")]
        cpu = names[0] if names else cpu
    usable = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    versions = ", ".join(
        f"{d} {importlib.metadata.version(d)}" for d in ("numpy", "pycocotools", "faster-coco-eval")
    )
    return (
        f"{cpu}, {usable} usable cores ({os.cpu_count()} logical), {platform.system()} "
        f"{platform.release()}, Python {platform.python_version()}; {versions}"
    )


def main(argv=None):
    args = argument_parser().parse_args(argv)
    buckets = SizeBuckets(args.buckets)
    fast = get_engine("fast")

    gt = make_synthetic_coco(
        args.images,
        num_categories=args.categories,
        objects_per_image=tuple(args.objects_per_image),
        seed=args.seed,
        progress=True,
    )
    results = make_synthetic_detections(
        gt,
        false_positives_per_image=args.false_positives_per_image,
        seed=args.seed,
        progress=True,
    )
    print(
        f"\ndata: {len(gt['images'])} images, {len(gt['annotations'])} ground-truth boxes, "
        f"{len(results)} detections, {args.categories} categories"
    )
    print(f"machine: {machine_description()}")

    def bucketed(engine):
        return lambda g, r: evaluate_by_size(g, r, bucket_edges=buckets, engine=engine).metrics

    plain_s, plain = best_time(plain_pycocotools, gt, results, args.repeat)
    fast_s, fast_metrics = best_time(bucketed("fast"), gt, results, args.repeat)
    rows = [
        ("pycocotools COCOeval, 4 area ranges (all/S/M/L)", plain_s),
        (f"lip_det fast ({fast.implementation}), {len(buckets)} buckets + all/S/M/L", fast_s),
    ]
    if args.with_official_buckets:
        official_s, _ = best_time(bucketed("official"), gt, results, args.repeat)
        rows.append(
            (f"lip_det official (pycocotools), {len(buckets)} buckets + all/S/M/L", official_s)
        )

    width = max(len(name) for name, _ in rows)
    print(f"\nbest of {args.repeat} run(s):{'':<{width - 17}}  wall s  speed-up    CPU s  speed-up")
    for name, (wall, cpu) in rows:
        print(
            f"  {name:<{width}}  {wall:6.2f}  {plain_s[0] / wall:7.1f}x  {cpu:7.2f}  "
            f"{plain_s[1] / cpu:7.1f}x"
        )
    difference = max(abs(fast_metrics[k] - plain[k]) for k in COCO_STATS if not np.isnan(plain[k]))
    print(f"\nlargest difference of AP..ARl between the two (percent points): {difference:.2e}")
    print(f"buckets: {', '.join(buckets.labels)}")
    if args.bootstrap:
        time_bootstrap(gt, results, buckets, args)
    return plain_s[0] / fast_s[0]


def time_bootstrap(gt, results, buckets, args):
    """Wall and CPU seconds of a 2-run comparison with intervals: fast evaluation of both runs,
    per-image matching, ``args.bootstrap`` paired resamples."""
    better = make_synthetic_detections(
        gt, quality=0.75, false_positives_per_image=args.false_positives_per_image,
        seed=args.seed + 1,
    )  # fmt: skip
    runs = {"a": (copy.deepcopy(gt), copy.deepcopy(results)), "b": (copy.deepcopy(gt), better)}
    gc.collect()
    marks = [(time.perf_counter(), time.process_time())]
    evaluations = {
        name: [evaluate_by_size(g, r, bucket_edges=buckets, engine="fast")]
        for name, (g, r) in runs.items()
    }
    marks.append((time.perf_counter(), time.process_time()))
    for (evaluation,) in evaluations.values():
        evaluation_matches(evaluation)
    marks.append((time.perf_counter(), time.process_time()))
    result = paired_bootstrap(evaluations, resamples=args.bootstrap, seed=args.seed)
    marks.append((time.perf_counter(), time.process_time()))
    steps = ["fast evaluation of 2 runs", "per-image matching", f"{args.bootstrap} resamples"]
    print(
        f"\npaired bootstrap, 2 runs, {args.bootstrap} resamples, "
        f"{len(buckets)} buckets + all/S/M/L, {len(gt['images'])} images:"
    )
    for name, (start, stop) in zip(steps, zip(marks, marks[1:])):
        print(f"  {name:<28} {stop[0] - start[0]:7.2f} s wall {stop[1] - start[1]:7.2f} s CPU")
    total_wall, total_cpu = marks[-1][0] - marks[0][0], marks[-1][1] - marks[0][1]
    print(f"  {'total':<28} {total_wall:7.2f} s wall {total_cpu:7.2f} s CPU")
    delta = result.intervals()["deltas"]["b"]["AP"]
    print(
        f"  AP delta b - a: {delta['delta']:+.2f} [{delta['ci'][0]:+.2f}, {delta['ci'][1]:+.2f}] "
        f"(95 % interval)"
    )
    return total_wall


if __name__ == "__main__":
    main()
