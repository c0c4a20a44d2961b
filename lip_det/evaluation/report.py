"""The small-object report: metrics, confidence intervals, error analysis and plots for runs.

Why this module is long: it is the one place that writes a report's files
(metrics, intervals, errors, seeds, report.md, plots) and checks their output paths; each part
is short and they share the run/ground-truth loading.

Files written into the output folder:

- ``metrics.json``: ``{run: {metric: value}}`` in percent (the mean over a run's files), null
  where a metric is not computable;
- ``intervals.json``: paired-bootstrap intervals of every metric of metrics.json and of each
  run's difference to the first run (:mod:`.bootstrap`);
- ``errors.json``: per run and area range, AP at the error analysis' IoU and what each error
  type costs (:mod:`.errors`);
- ``seeds.json`` (runs of several files only): each file's metrics, the mean and the std;
- ``report.md`` with the tables, and PNG plots.
"""

import glob
import json
import math
import os
import re

import numpy as np

from .bootstrap import DEFAULT_LEVEL, DEFAULT_RESAMPLES, evaluation_matches, paired_bootstrap
from .coco_inputs import EvaluationInputError, check_ground_truth, load_ground_truth, load_results
from .engines import get_engine
from .errors import DEFAULT_BACKGROUND_IOU, DEFAULT_FOREGROUND_IOU, ERROR_TYPES, error_analysis
from .size_buckets import DEFAULT_BUCKET_EDGES, SizeBuckets
from .size_evaluation import COCO_AREA_RANGES, DEFAULT_MAX_DETS, SizeEvaluation, evaluate_by_size
from .tables import (
    category_table,
    comparison_table,
    error_table,
    gt_count_table,
    interval_bucket_table,
    interval_table,
)

METRICS_FILE = "metrics.json"
INTERVALS_FILE = "intervals.json"
ERRORS_FILE = "errors.json"
SEEDS_FILE = "seeds.json"
REPORT_FILE = "report.md"
AP_PLOT_FILE = "ap_per_bucket.png"
GT_HISTOGRAM_FILE = "gt_size_histogram.png"
ERROR_PLOT_FILE = "errors_per_bucket.png"
OUTPUT_FILES = (METRICS_FILE, INTERVALS_FILE, ERRORS_FILE, SEEDS_FILE, REPORT_FILE, AP_PLOT_FILE,
                GT_HISTOGRAM_FILE, ERROR_PLOT_FILE)  # fmt: skip
PR_PLOT_PATTERN = "pr_curves_*.png"
DEFAULT_MIN_OBJECTS = 50
TOO_FEW = "too few objects to compare"
_COCO_KEYS = {"small": "s", "medium": "m", "large": "l"}


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
    bootstrap=DEFAULT_RESAMPLES,
    seed=0,
    level=DEFAULT_LEVEL,
    min_objects=DEFAULT_MIN_OBJECTS,
    foreground_iou=DEFAULT_FOREGROUND_IOU,
    background_iou=DEFAULT_BACKGROUND_IOU,
    overwrite=True,
):
    """Evaluate each run against ``gt`` and write the report files into ``out_dir``.

    Args:
        gt (str | dict): path of a COCO-format ground-truth JSON, or its loaded dict; checked
            like a dataset of ``tools/train_net.py --dataset``.
        runs (dict): run name -> results: a COCO results JSON path, a list of COCO-format
            detections, an already computed :class:`SizeEvaluation`, or a list or tuple of
            paths / evaluations (several result files of one run, e.g. training seeds: the run
            is their mean, shown with the std across them). The first run is the reference of
            the deltas.
        out_dir (str): created if needed.
        iou_type, bucket_edges, max_dets, engine: see :func:`evaluate_by_size`.
        progress (bool): tqdm progress bars while reading files and evaluating.
        bootstrap (int): paired-bootstrap resamples over images (0: no intervals).
        seed (int): seed of the resampling; the same seed gives the same intervals.
        level (float): confidence level of the intervals.
        min_objects (int): size buckets (and COCO's small/medium/large) with fewer ground-truth
            objects are marked "too few objects to compare".
        foreground_iou, background_iou: TIDE's thresholds t_f and t_b of the error analysis.
        overwrite (bool): replace a report already in ``out_dir``; False refuses a folder that
            holds one (what the report tool does without --overwrite).

    Returns:
        dict: ``{run: {metric: value}}``, the content of metrics.json (with NaN for null).
    """
    if not runs:
        raise ValueError("write_report needs at least one run")
    if isinstance(bootstrap, bool) or not isinstance(bootstrap, int) or bootstrap < 0:
        raise ValueError(f"bootstrap resamples must be an integer >= 0, got {bootstrap!r}")
    if isinstance(min_objects, bool) or not isinstance(min_objects, int) or min_objects < 0:
        raise ValueError(f"min_objects must be an integer >= 0, got {min_objects!r}")
    if not 0 < level < 1:
        raise ValueError(f"the interval level must be in (0, 1), got {level!r}")
    runs = {name: _files_of(run) for name, run in runs.items()}
    for name, items in runs.items():
        if not items:
            raise ValueError(f"run {name!r} has no results files")
    sources = [gt] if isinstance(gt, (str, os.PathLike)) else []
    sources += [f for items in runs.values() for f in items if isinstance(f, (str, os.PathLike))]
    _check_output(out_dir, sources, overwrite)
    for items in runs.values():  # before loading the ground truth, which can take a while
        for run in items:
            if isinstance(run, (str, os.PathLike)) and not os.path.isfile(run):
                raise EvaluationInputError(f"results file {os.fspath(run)!r} does not exist")
    gt_source = os.fspath(gt) if isinstance(gt, (str, os.PathLike)) else "ground truth"
    if isinstance(gt, (str, os.PathLike)):
        gt = load_ground_truth(gt, progress=progress, iou_type=iou_type)
    else:
        check_ground_truth(gt, "ground truth", iou_type=iou_type)
    buckets = SizeBuckets(bucket_edges)
    coco_gt = get_engine(engine).load_coco(gt)

    evaluations = {}
    total = sum(len(items) for items in runs.values())
    bar = _progress(total, progress)
    for name, items in runs.items():
        evaluations[name] = []
        for run in items:
            if not isinstance(run, SizeEvaluation):
                source = f"run {name!r}"
                if isinstance(run, (str, os.PathLike)):
                    source = f"results file {os.fspath(run)!r}"
                    run = load_results(run, progress=progress)
                run = evaluate_by_size(
                    coco_gt, run, iou_type=iou_type, bucket_edges=buckets, max_dets=max_dets,
                    engine=engine, source=source,
                )  # fmt: skip
            evaluations[name].append(run)
            if bar is not None:
                bar.update()
    if bar is not None:
        bar.close()

    files = {name: [_describe(f, i) for i, f in enumerate(items)] for name, items in runs.items()}
    summary = {name: _mean_results(evs) for name, evs in evaluations.items()}
    spread = {name: _std_results(evs) for name, evs in evaluations.items() if len(evs) > 1}
    first = next(iter(evaluations.values()))[0]
    counts = _range_counts(first, gt)
    thin = {label: n for label, n in counts.items() if n < min_objects}

    intervals = None
    if bootstrap:
        result = paired_bootstrap(evaluations, resamples=bootstrap, seed=seed, level=level,
                                  progress=progress)  # fmt: skip
        intervals = result.intervals()
        intervals["seed"] = seed
        intervals["min_objects"] = min_objects
        intervals["too_few_objects"] = sorted(thin, key=list(counts).index)

    area_ranges = dict(COCO_AREA_RANGES)
    area_ranges.update({b.label: b.area_range for b in buckets})
    errors = {}
    for name, evs in evaluations.items():
        per_file = [
            error_analysis(
                e.inputs["gt"], e.inputs["results"], iou_type=e.iou_type,
                area_ranges=e.inputs["area_ranges"], max_dets=e.max_dets,
                img_ids=e.inputs["img_ids"], foreground_iou=foreground_iou,
                background_iou=background_iou, matches=evaluation_matches(e),
            )
            for e in evs
        ]  # fmt: skip
        errors[name] = _mean_errors(per_file)

    os.makedirs(out_dir, exist_ok=True)
    if overwrite:
        _remove_previous_report(out_dir)
    _write_json(os.path.join(out_dir, METRICS_FILE), summary)
    if intervals is not None:
        _write_json(os.path.join(out_dir, INTERVALS_FILE), intervals)
    error_doc = {
        "foreground_iou": foreground_iou,
        "background_iou": background_iou,
        "ap": f"AP at IoU {foreground_iou:g} (percent); costs are AP gained when an oracle fixes "
        "the errors of that type (percent points)",
        "runs": errors,
    }
    _write_json(os.path.join(out_dir, ERRORS_FILE), error_doc)
    if spread:
        seeds = {
            name: {
                "files": files[name],
                "mean": summary[name],
                "std": spread[name],
                "per_file": [e.results() for e in evaluations[name]],
            }
            for name in spread
        }
        _write_json(os.path.join(out_dir, SEEDS_FILE), seeds)

    from . import plots  # matplotlib is needed for reports only

    gt_areas = [a["area"] for a in gt["annotations"] if not a.get("iscrowd", 0)]
    plots.plot_gt_size_histogram(gt_areas, buckets, os.path.join(out_dir, GT_HISTOGRAM_FILE),
                                 thin=thin)  # fmt: skip
    plots.plot_ap_per_bucket(
        summary, buckets.labels, os.path.join(out_dir, AP_PLOT_FILE),
        intervals=None if intervals is None else intervals["runs"], thin=thin,
        title=f"{first.iou_type} AP per size bucket (maxDets {first.max_dets[-1]})",
    )  # fmt: skip
    plots.plot_errors(errors, ["all", *buckets.labels], os.path.join(out_dir, ERROR_PLOT_FILE),
                      thin=thin, foreground_iou=foreground_iou)  # fmt: skip
    for name, evs in evaluations.items():
        plots.plot_pr_curves(evs[0], os.path.join(out_dir, pr_plot_file(name)), name)

    settings = {
        "bootstrap": bootstrap,
        "seed": seed,
        "level": level,
        "min_objects": min_objects,
        "foreground_iou": foreground_iou,
        "background_iou": background_iou,
    }
    text = _markdown(gt, gt_source, buckets, gt_areas, evaluations, summary, spread, files,
                     intervals, errors, counts, thin, settings)  # fmt: skip
    with open(os.path.join(out_dir, REPORT_FILE), "w", encoding="utf-8") as f:
        f.write(text)
    return summary


def _files_of(run):
    if (
        isinstance(run, (list, tuple))
        and run
        and all(isinstance(r, (str, os.PathLike, SizeEvaluation)) for r in run)
    ):
        return list(run)
    return [run]


def _describe(item, i):
    if isinstance(item, (str, os.PathLike)):
        return os.fspath(item)
    return f"#{i + 1} ({type(item).__name__})"


def _check_output(out_dir, sources, overwrite):
    """One clear error for an output folder that is a file, that holds a report (unless
    ``overwrite``), or whose report files would replace an input file."""
    out_dir = os.fspath(out_dir)
    if os.path.exists(out_dir) and not os.path.isdir(out_dir):
        raise EvaluationInputError(
            f"output folder {out_dir!r} is a file, not a folder; name a folder (it is created "
            "if needed)"
        )
    outputs = [os.path.join(out_dir, name) for name in OUTPUT_FILES]
    outputs += glob.glob(os.path.join(glob.escape(out_dir), PR_PLOT_PATTERN))
    for source in sources:
        source = os.fspath(source)
        for output in outputs:
            if os.path.realpath(source) == os.path.realpath(output) or (
                os.path.exists(source) and os.path.exists(output)
                and os.path.samefile(source, output)
            ):  # fmt: skip
                raise EvaluationInputError(
                    f"input file {source!r} is also where the report writes "
                    f"{os.path.basename(output)}; write the report into another folder"
                )
    existing = [os.path.basename(p) for p in outputs if os.path.isfile(p)]
    if existing and not overwrite:
        shown = ", ".join(sorted(existing)[:4]) + (", ..." if len(existing) > 4 else "")
        raise EvaluationInputError(
            f"output folder {out_dir!r} already holds a small-object report ({shown}); pass "
            "--overwrite to replace it, or name another folder"
        )


def _remove_previous_report(out_dir):
    # Only the files a report writes: a stale plot of a run no longer compared must not stay.
    for path in glob.glob(os.path.join(glob.escape(out_dir), PR_PLOT_PATTERN)):
        os.remove(path)
    for name in OUTPUT_FILES:
        path = os.path.join(out_dir, name)
        if os.path.isfile(path):
            os.remove(path)


def _mean_results(evaluations):
    keys = evaluations[0].results()
    return {k: float(np.mean([e.results()[k] for e in evaluations])) for k in keys}


def _std_results(evaluations):
    keys = evaluations[0].results()
    return {k: float(np.std([e.results()[k] for e in evaluations], ddof=1)) for k in keys}


def _range_counts(evaluation, gt):
    """Ground-truth objects (evaluated, not crowd) per size bucket and COCO range."""
    counts = dict(evaluation.gt_counts)
    image_ids = {img["id"] for img in gt["images"]}
    if evaluation.inputs and evaluation.inputs.get("img_ids") is not None:
        image_ids = set(evaluation.inputs["img_ids"])
    areas = np.array(
        [a["area"] for a in gt["annotations"]
         if not a.get("iscrowd", 0) and a["image_id"] in image_ids],
        dtype=np.float64,
    )  # fmt: skip
    for name in _COCO_KEYS:
        lo, hi = COCO_AREA_RANGES[name]
        counts[name] = int(np.count_nonzero((areas >= lo) & (areas <= hi)))
    return counts


def _mean_errors(per_file):
    out = {}
    for label in per_file[0]:
        rows = [f[label] for f in per_file]
        out[label] = {
            "AP": _null(np.mean([r.ap for r in rows])),
            "cost": {t: _null(np.mean([r.cost[t] for r in rows])) for t in ERROR_TYPES},
            "count": {t: float(np.mean([r.count[t] for r in rows])) for t in ERROR_TYPES},
        }
    return out


def _null(value):
    value = float(value)
    return None if math.isnan(value) else value


def metric_range(metric):
    """The size bucket label (or COCO range name) a metric belongs to, or None."""
    match = re.fullmatch(r"A[PR](\[.*\))", metric)
    if match:
        return match.group(1)
    match = re.fullmatch(r"A[PR]([sml])", metric)
    if match:
        return {v: k for k, v in _COCO_KEYS.items()}[match.group(1)]
    return None


def _markdown(gt, gt_source, buckets, gt_areas, evaluations, summary, spread, files, intervals,
              errors, counts, thin, settings):  # fmt: skip
    first = next(iter(evaluations.values()))[0]
    last_max_dets = first.max_dets[-1]
    names = list(evaluations)
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
    ]
    for name in names:
        if len(files[name]) > 1:
            lines.append(
                f"- run {name}: the mean ± std over {len(files[name])} result files "
                f"({', '.join(f'`{f}`' for f in files[name])})"
            )
    if intervals is not None:
        level = round(settings["level"] * 100)
        lines.append(
            f"- [a, b]: {level} % paired-bootstrap interval over images ({settings['bootstrap']} "
            f"resamples, seed {settings['seed']}): every run is scored on the same resampled "
            "image sets"
            + (", and a run of several files also on resampled files" if spread else "")
            + " (percentile intervals of the resampled values, centred on the point estimate: "
            "lip_det/evaluation/bootstrap.py says why)"
            + f". A Δ marked * has an interval that excludes 0 (significant at {level} %); "
            "an unmarked Δ is indistinguishable from noise on this dataset."
        )
    else:
        lines.append("- no bootstrap intervals (--bootstrap 0)")
    lines.append(
        f"- {TOO_FEW}: buckets with fewer than {settings['min_objects']} ground-truth objects; "
        "their numbers move by many points between runs and say little."
    )
    lines += [
        "",
        "## Ground truth per size bucket",
        "",
        gt_count_table(buckets, dict(zip(buckets.labels, buckets.count(gt_areas))), thin=thin),
        "",
        f"![ground-truth sizes]({GT_HISTOGRAM_FILE})",
        "",
    ]
    run_intervals = None if intervals is None else intervals["runs"]
    if len(evaluations) > 1:
        lines += [
            f"## Side by side (Δ = run - {names[0]})",
            "",
            comparison_table(
                {n: _no_category(summary[n]) for n in names},
                intervals=run_intervals,
                deltas=None if intervals is None else intervals["deltas"],
                spread=spread,
                notes={m: _thin_note(m, thin, counts) for m in summary[names[0]]},
            ),
            "",
        ]
    lines += [f"![AP per size bucket]({AP_PLOT_FILE})", ""]
    lines += [
        f"## Error analysis (TIDE error types, IoU {settings['foreground_iou']:g}, background "
        f"{settings['background_iou']:g})",
        "",
        f"AP at IoU {settings['foreground_iou']:g} per area range, and the AP points each error "
        "type costs: what an oracle that fixes only the errors of that type would gain "
        "(Bolya et al., ECCV 2020; lip_det/evaluation/errors.py). Cls: right box, wrong class; "
        "Loc: right class, box off (IoU between the two thresholds); Both: both wrong; Dupe: a "
        "second detection of an object already found; Bkg: detection on background; Miss: "
        "ground truth no detection came near. In brackets: how many errors of the type.",
        "",
    ]
    for name in names:
        lines += [
            f"### {name}",
            "",
            error_table(errors[name], counts, thin=thin),
            "",
        ]
    lines += [f"![error costs per size bucket]({ERROR_PLOT_FILE})", ""]
    for name, evs in evaluations.items():
        evaluation = evs[0]
        values = _no_category(summary[name])
        ci = None if run_intervals is None else run_intervals[name]
        lines += [
            f"## {name}",
            "",
            f"{evaluation.num_detections} detections on {evaluation.num_images} images"
            + (f" (first of {len(evs)} files)" if len(evs) > 1 else "")
            + ".",
            "",
            "### COCO metrics",
            "",
            interval_table(
                {
                    k: v
                    for k, v in values.items()
                    if metric_range(k) is None or metric_range(k) in _COCO_KEYS
                },
                intervals=ci,
                spread=spread.get(name),
                notes={m: _thin_note(m, thin, counts) for m in values},
            ),  # fmt: skip
            "",
            "### Size buckets",
            "",
            interval_bucket_table(
                evaluation, values, intervals=ci, spread=spread.get(name), thin=thin
            ),  # fmt: skip
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


def _no_category(metrics):
    return {k: v for k, v in metrics.items() if not k.startswith("AP-")}


def _thin_note(metric, thin, counts):
    label = metric_range(metric)
    if label is None or label not in thin:
        return ""
    return f"{TOO_FEW} ({counts[label]} objects)"


def _write_json(path, content):
    with open(path, "w", encoding="utf-8") as f:
        json.dump(_nan_to_null(content), f, indent=2)


def _nan_to_null(value):
    # NaN is not JSON; null is, and reads back as None in Python and null in other languages.
    if isinstance(value, dict):
        return {k: _nan_to_null(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_nan_to_null(v) for v in value]
    if isinstance(value, float) and math.isnan(value):
        return None
    return value


def _progress(total, enabled):
    if not enabled or total < 2:
        return None
    from tqdm import tqdm

    return tqdm(total=total, desc="evaluating runs", unit="file")
