#!/usr/bin/env python
"""
Small-object report for COCO-format detections: COCO metrics, AP/AR per size bucket with paired
bootstrap confidence intervals, the significance of each run's difference to the first, an error
analysis per size bucket (TIDE's error types), per-category AP and plots.

    python tools/small_object_report.py --gt datasets/coco/annotations/instances_val2017.json \
        --results baseline=output/r50/inference/coco_instances_results.json \
                  LIP=output/lip_r50/inference/coco_instances_results.json \
        --out reports/r50_vs_lip
    # several result files per run (e.g. training seeds): mean ± std, files resampled too
    python tools/small_object_report.py --gt val.json --out reports/seeds \
        --results R18=r18_s0.json,r18_s1.json,r18_s2.json LIP=lip_s0.json,lip_s1.json,lip_s2.json

Writes OUT/metrics.json, OUT/intervals.json, OUT/errors.json (OUT/seeds.json for runs of several
files), OUT/report.md and PNG plots; the first run is the reference for the deltas. A folder
that already holds a report is refused unless --overwrite. Results may come from any framework
that writes COCO results JSON. The logic lives in lip_det.evaluation.write_report.
"""

import argparse
import json
import os
import sys

import lip_det  # noqa: F401  (first: detectron2 compatibility fixes)
from lip_det.evaluation import (
    DEFAULT_BUCKET_EDGES,
    DEFAULT_MAX_DETS,
    EvaluationInputError,
    write_report,
)
from lip_det.evaluation.bootstrap import DEFAULT_LEVEL, DEFAULT_RESAMPLES
from lip_det.evaluation.engines import EVAL_ENGINES
from lip_det.evaluation.errors import DEFAULT_BACKGROUND_IOU, DEFAULT_FOREGROUND_IOU
from lip_det.evaluation.report import (
    DEFAULT_MIN_OBJECTS,
    INTERVALS_FILE,
    REPORT_FILE,
    SEEDS_FILE,
    metric_range,
)
from lip_det.evaluation.tables import TOO_FEW, comparison_table


def parse_run(text):
    """NAME=RESULTS.json[,MORE.json...], or RESULTS.json (named after the file)."""
    name, sep, paths = text.partition("=")
    if not sep:
        name, paths = os.path.splitext(os.path.basename(text))[0], text
    files = paths.split(",")
    if not name or not paths or any(not p for p in files):
        raise argparse.ArgumentTypeError(
            f"expected NAME=RESULTS.json or NAME=A.json,B.json,..., got {text!r}"
        )
    return name, files


def _positive_int(text):
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be >= 0, got {text!r}")
    return value


def _fraction(text):
    value = float(text)
    if not 0 <= value <= 1:
        raise argparse.ArgumentTypeError(f"must be in [0, 1], got {text!r}")
    return value


def argument_parser():
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0].strip(),
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument("--gt", required=True, help="COCO-format ground-truth JSON")
    parser.add_argument(
        "--results",
        required=True,
        nargs="+",
        type=parse_run,
        metavar="NAME=RESULTS.json[,MORE.json]",
        help="COCO results JSON of each run (several, comma-separated: e.g. one per training "
        "seed; the run is their mean); the first run is the reference for the deltas",
    )
    parser.add_argument("--out", required=True, help="output folder")
    parser.add_argument("--iou-type", default="bbox", choices=("bbox", "segm"))
    parser.add_argument(
        "--buckets",
        "--bucket-edges",
        dest="buckets",
        nargs="+",
        type=float,
        default=list(DEFAULT_BUCKET_EDGES),
        metavar="EDGE",
        help="size-bucket edges in sqrt(area) pixels; the last bucket is open-ended",
    )
    parser.add_argument(
        "--max-dets",
        nargs="+",
        type=int,
        default=list(DEFAULT_MAX_DETS),
        metavar="N",
        help="COCOeval maxDets; AP and the buckets use the last one",
    )
    parser.add_argument("--engine", default="official", choices=EVAL_ENGINES)
    parser.add_argument(
        "--bootstrap",
        type=_positive_int,
        default=DEFAULT_RESAMPLES,
        metavar="N",
        help="paired-bootstrap resamples over images for the confidence intervals (0: none)",
    )
    parser.add_argument("--seed", type=int, default=0, help="seed of the bootstrap resampling")
    parser.add_argument("--level", type=float, default=DEFAULT_LEVEL, help="interval level")
    parser.add_argument(
        "--min-objects",
        type=_positive_int,
        default=DEFAULT_MIN_OBJECTS,
        metavar="N",
        help=f"buckets with fewer ground-truth objects are marked '{TOO_FEW}'",
    )
    parser.add_argument(
        "--error-iou",
        type=_fraction,
        default=DEFAULT_FOREGROUND_IOU,
        metavar="T_F",
        help="error analysis: IoU of a true positive (TIDE's foreground threshold)",
    )
    parser.add_argument(
        "--background-iou",
        type=_fraction,
        default=DEFAULT_BACKGROUND_IOU,
        metavar="T_B",
        help="error analysis: IoU under which a detection is on background",
    )
    parser.add_argument(
        "--overwrite", action="store_true", help="replace a report already in --out"
    )
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")
    return parser


def main(argv=None):
    parser = argument_parser()
    args = parser.parse_args(argv)
    runs = dict(args.results)
    if len(runs) != len(args.results):
        parser.error("run names must be unique")
    try:
        metrics = write_report(
            args.gt,
            {name: files if len(files) > 1 else files[0] for name, files in runs.items()},
            args.out,
            iou_type=args.iou_type,
            bucket_edges=args.buckets,
            max_dets=args.max_dets,
            engine=args.engine,
            progress=not args.no_progress,
            bootstrap=args.bootstrap,
            seed=args.seed,
            level=args.level,
            min_objects=args.min_objects,
            foreground_iou=args.error_iou,
            background_iou=args.background_iou,
            overwrite=args.overwrite,
        )
    except (EvaluationInputError, ValueError, ImportError, OSError) as e:
        sys.exit(f"error: {e}")
    summary = {
        run: {k: v for k, v in m.items() if not k.startswith("AP-")} for run, m in metrics.items()
    }
    intervals = {}
    if args.bootstrap:
        with open(os.path.join(args.out, INTERVALS_FILE), encoding="utf-8") as f:
            intervals = json.load(f)
    thin = set(intervals.get("too_few_objects", []))
    spread = None
    seeds_file = os.path.join(args.out, SEEDS_FILE)
    if any(len(files) > 1 for files in runs.values()) and os.path.isfile(seeds_file):
        with open(seeds_file, encoding="utf-8") as f:
            spread = {run: entry["std"] for run, entry in json.load(f).items()}
    print(
        comparison_table(
            summary,
            intervals=intervals.get("runs"),
            deltas=intervals.get("deltas"),
            spread=spread,
            notes={m: TOO_FEW for m in next(iter(summary.values())) if metric_range(m) in thin},
        )
    )
    if intervals:
        print(
            f"\n[a, b]: {round(intervals['level'] * 100)} % paired-bootstrap intervals "
            f"({intervals['resamples']} resamples); Δ marked * differs from 0 significantly."
        )
    print(f"\nReport: {os.path.join(args.out, REPORT_FILE)}")
    return metrics


if __name__ == "__main__":
    main()
