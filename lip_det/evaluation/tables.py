"""Text tables of a :class:`SizeEvaluation`, for the log and for report.md.

tabulate's "pipe" format is what detectron2 logs and is also valid Markdown, so one function
serves both.
"""

import math

from tabulate import tabulate

_FLOAT = ".3f"


def summary_table(evaluation):
    """One row: COCO's AP/AR metrics (AP..APl, AR<maxDets>.., ARs..ARl)."""
    bucketed = {f"{kind}{label}" for kind in ("AP", "AR") for label in evaluation.buckets.labels}
    names = [n for n in evaluation.metrics if n not in bucketed]
    return _table([[evaluation.metrics[n] for n in names]], names)


def bucket_table(evaluation):
    """A row per size bucket: ground-truth count, AP and AR at the last maxDets."""
    ar = f"AR{evaluation.max_dets[-1]}"
    m = evaluation.metrics
    rows = [
        [label, evaluation.gt_counts[label], m[f"AP{label}"], m[f"AR{label}"]]
        for label in evaluation.buckets.labels
    ]
    return _table(rows, ["sqrt(area) px", "GT objects", "AP", ar])


def category_table(evaluation):
    """A row per category: AP over all sizes, then AP per size bucket."""
    columns = ["AP"] + [f"AP{label}" for label in evaluation.buckets.labels]
    rows = [[name] + [v[c] for c in columns] for name, v in evaluation.per_category.items()]
    return _table(rows, ["category"] + columns)


def gt_count_table(buckets, counts):
    """A row per size bucket: ground-truth objects and their share of all bucketed objects."""
    total = sum(counts.values())
    rows = [
        [label, counts[label], 100.0 * counts[label] / total if total else math.nan]
        for label in buckets.labels
    ]
    return _table(rows, ["sqrt(area) px", "GT objects", "% of objects"], floatfmt=".1f")


def comparison_table(metrics_by_run):
    """Metrics side by side, with each later run's difference to the first run."""
    names = list(metrics_by_run)
    first = metrics_by_run[names[0]]
    headers = ["metric", names[0]]
    for name in names[1:]:
        headers += [name, f"Δ {name}"]
    rows = []
    delta_columns = [3 + 2 * i for i in range(len(names) - 1)]
    for metric in first:
        row = [metric, first[metric]]
        for name in names[1:]:
            value = metrics_by_run[name].get(metric, math.nan)
            row += [value, _signed(value - first[metric])]
        rows.append(row)
    # Keep the explicit "+" of the deltas: tabulate would re-parse them as plain numbers.
    return _table(rows, headers, disable_numparse=delta_columns)


def _signed(delta):
    return "nan" if math.isnan(delta) else f"{delta:+.3f}"


def _table(rows, headers, floatfmt=_FLOAT, disable_numparse=False):
    return tabulate(
        rows,
        headers=headers,
        tablefmt="pipe",
        floatfmt=floatfmt,
        numalign="left",
        disable_numparse=disable_numparse,
    )
