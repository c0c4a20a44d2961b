"""The small-object report: metrics.json, report.md and PNG plots for one or more runs."""

import json
import math
import os
import re

from .coco_inputs import EvaluationInputError, load_ground_truth, load_results
from .engines import get_engine
from .size_buckets import DEFAULT_BUCKET_EDGES, SizeBuckets
from .size_evaluation import DEFAULT_MAX_DETS, SizeEvaluation, evaluate_by_size
from .tables import bucket_table, category_table, comparison_table, gt_count_table, summary_table

METRICS_FILE = "metrics.json"
REPORT_FILE = "report.md"
AP_PLOT_FILE = "ap_per_bucket.png"
GT_HISTOGRAM_FILE = "gt_size_histogram.png"


def pr_plot_file(run_name):
    """File name of a run's precision-recall plot."""
    return f"pr_curves_{re.sub(r'[^A-Za-z0-9._-]+', '_', run_name)}.png"


def write_report(
    gt,
    runs,
    out_dir,
    *,
    iou_type="bbox",
    bucket_edges=DEFAULT_BUCKET_EDGES,
    max_dets=DEFAULT_MAX_DETS,
    engine="official",
    progress=False,
):
    """Evaluate each run against ``gt`` and write the report files into ``out_dir``.

    Args:
        gt (str | dict): path of a COCO-format ground-truth JSON, or its loaded dict.
        runs (dict): run name -> results (a COCO results JSON path, a list of COCO-format
            detections, or an already computed :class:`SizeEvaluation`). The first run is the
            reference for the deltas of the others.
        out_dir (str): created if needed. Receives metrics.json (``{run: {metric: value}}``, in
            percent, null where a metric is not computable), report.md, ap_per_bucket.png,
            gt_size_histogram.png and pr_curves_<run>.png.
        iou_type, bucket_edges, max_dets, engine: see :func:`evaluate_by_size`.
        progress (bool): tqdm progress bars while reading files and evaluating.

    Returns:
        dict: ``{run: {metric: value}}``, the content of metrics.json (with NaN for null).
    """
    if not runs:
        raise ValueError("write_report needs at least one run")
    for run in runs.values():  # before loading the ground truth, which can take a while
        if isinstance(run, (str, os.PathLike)) and not os.path.isfile(run):
            raise EvaluationInputError(f"results file {os.fspath(run)!r} does not exist")
    gt_source = gt if isinstance(gt, (str, os.PathLike)) else "ground truth"
    if isinstance(gt, (str, os.PathLike)):
        gt = load_ground_truth(gt, progress=progress)
    buckets = SizeBuckets(bucket_edges)
    coco_gt = get_engine(engine).load_coco(gt)

    evaluations = {}
    for name, run in _progress(runs.items(), progress, len(runs)):
        if not isinstance(run, SizeEvaluation):
            source = f"run {name!r}"
            if isinstance(run, (str, os.PathLike)):
                source = f"results file {os.fspath(run)!r}"
                run = load_results(run, progress=progress)
            run = evaluate_by_size(
                coco_gt,
                run,
                iou_type=iou_type,
                bucket_edges=buckets,
                max_dets=max_dets,
                engine=engine,
                source=source,
            )
        evaluations[name] = run

    os.makedirs(out_dir, exist_ok=True)
    metrics = {name: e.results() for name, e in evaluations.items()}
    with open(os.path.join(out_dir, METRICS_FILE), "w") as f:
        json.dump(_nan_to_null(metrics), f, indent=2)

    from . import plots  # matplotlib is needed for reports only

    gt_areas = [a["area"] for a in gt["annotations"] if not a.get("iscrowd", 0)]
    plots.plot_gt_size_histogram(gt_areas, buckets, os.path.join(out_dir, GT_HISTOGRAM_FILE))
    plots.plot_ap_per_bucket(evaluations, os.path.join(out_dir, AP_PLOT_FILE))
    for name, evaluation in evaluations.items():
        plots.plot_pr_curves(evaluation, os.path.join(out_dir, pr_plot_file(name)), name)

    with open(os.path.join(out_dir, REPORT_FILE), "w") as f:
        f.write(_markdown(gt, gt_source, buckets, gt_areas, evaluations))
    return metrics


def _markdown(gt, gt_source, buckets, gt_areas, evaluations):
    first = next(iter(evaluations.values()))
    last_max_dets = first.max_dets[-1]
    lines = [
        "# Small-object detection report",
        "",
        f"- ground truth: `{gt_source}` ({len(gt['images'])} images, {len(gt_areas)} non-crowd "
        f"objects, {len(gt['categories'])} categories)",
        f"- task: {first.iou_type}; evaluation engine: {first.engine}; maxDets "
        f"{list(first.max_dets)}",
        "- metrics in percent. AP: mean over IoU .50:.95 and categories at maxDets "
        f"{last_max_dets}; AR<N>: recall with at most N detections per image and category. "
        "Size = sqrt(annotation area) in original-image pixels; bucket [a,b) holds a <= size < b. "
        "NaN: no ground truth to compute the metric from.",
        "",
        "## Ground truth per size bucket",
        "",
        gt_count_table(buckets, dict(zip(buckets.labels, buckets.count(gt_areas)))),
        "",
        f"![ground-truth sizes]({GT_HISTOGRAM_FILE})",
        "",
    ]
    if len(evaluations) > 1:
        names = list(evaluations)
        lines += [
            f"## Side by side (Δ = run - {names[0]})",
            "",
            comparison_table({n: e.metrics for n, e in evaluations.items()}),
            "",
        ]
    lines += [f"![AP per size bucket]({AP_PLOT_FILE})", ""]
    for name, evaluation in evaluations.items():
        lines += [
            f"## {name}",
            "",
            f"{evaluation.num_detections} detections on {evaluation.num_images} images.",
            "",
            "### COCO metrics",
            "",
            summary_table(evaluation),
            "",
            "### Size buckets",
            "",
            bucket_table(evaluation),
            "",
        ]
        lines += [f"- {note}" for note in evaluation.notes]
        lines += [
            "",
            "### Per-category AP",
            "",
            category_table(evaluation),
            "",
            f"![precision-recall per size bucket]({pr_plot_file(name)})",
            "",
        ]
    return "\n".join(lines)


def _nan_to_null(metrics):
    # NaN is not JSON; null is, and reads back as None in Python and null in other languages.
    return {
        run: {k: None if isinstance(v, float) and math.isnan(v) else v for k, v in m.items()}
        for run, m in metrics.items()
    }


def _progress(items, enabled, total):
    if not enabled or total < 2:
        return items
    from tqdm import tqdm

    return tqdm(items, total=total, desc="evaluating runs", unit="run")
