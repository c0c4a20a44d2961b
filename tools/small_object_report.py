#!/usr/bin/env python
"""
Small-object report for COCO-format detections: COCO metrics, AP/AR per size bucket, per-category
AP, precision-recall plots, and a side-by-side comparison of several runs.

    python tools/small_object_report.py --gt datasets/coco/annotations/instances_val2017.json \
        --results baseline=output/r50/inference/coco_instances_results.json \
                  LIP=output/lip_r50/inference/coco_instances_results.json \
        --out reports/r50_vs_lip

Writes OUT/metrics.json, OUT/report.md and PNG plots; the first run is the reference for deltas.
Results may come from any framework that writes COCO results JSON. The logic lives in
lip_det.evaluation.write_report.
"""

import argparse
import os
import sys

import lip_det  # noqa: F401  (first: detectron2 compatibility fixes)
from lip_det.evaluation import (
    DEFAULT_BUCKET_EDGES,
    DEFAULT_MAX_DETS,
    EvaluationInputError,
    write_report,
)
from lip_det.evaluation.engines import EVAL_ENGINES
from lip_det.evaluation.report import REPORT_FILE
from lip_det.evaluation.tables import comparison_table


def parse_run(text):
    """NAME=RESULTS.json, or RESULTS.json (named after the file)."""
    name, sep, path = text.partition("=")
    if not sep:
        name, path = os.path.splitext(os.path.basename(text))[0], text
    if not name or not path:
        raise argparse.ArgumentTypeError(f"expected NAME=RESULTS.json, got {text!r}")
    return name, path


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
        metavar="NAME=RESULTS.json",
        help="COCO results JSON of each run; the first is the reference for the deltas",
    )
    parser.add_argument("--out", required=True, help="output directory")
    parser.add_argument("--iou-type", default="bbox", choices=("bbox", "segm"))
    parser.add_argument(
        "--buckets",
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
            runs,
            args.out,
            iou_type=args.iou_type,
            bucket_edges=args.buckets,
            max_dets=args.max_dets,
            engine=args.engine,
            progress=not args.no_progress,
        )
    except (EvaluationInputError, ValueError, ImportError) as e:
        sys.exit(f"error: {e}")
    summary = {
        run: {k: v for k, v in m.items() if not k.startswith("AP-")} for run, m in metrics.items()
    }
    print(comparison_table(summary))
    print(f"\nReport: {os.path.join(args.out, REPORT_FILE)}")
    return metrics


if __name__ == "__main__":
    main()
