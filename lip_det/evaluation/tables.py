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


def gt_count_table(buckets, counts, thin=None):
    """A row per size bucket: ground-truth objects and their share of all bucketed objects;
    buckets in ``thin`` are marked "too few objects to compare"."""
    total = sum(counts.values())
    rows = [
        [label, counts[label], 100.0 * counts[label] / total if total else math.nan]
        for label in buckets.labels
    ]
    headers = ["sqrt(area) px", "GT objects", "% of objects"]
    if thin:
        rows = [row + [TOO_FEW if row[0] in thin else ""] for row in rows]
        headers.append("note")
    return _table(rows, headers, floatfmt=".1f")


def comparison_table(metrics_by_run, *, intervals=None, deltas=None, spread=None, notes=None):
    """Metrics side by side, with each later run's difference to the first run.

    Optional: ``intervals`` ({run: {metric: [low, high]}}) and ``deltas`` ({run: {metric:
    {"delta", "ci", "significant"}}}) of intervals.json, shown next to the values (a
    significant delta is marked *); ``spread`` ({run: {metric: std}}) shown as value ± std;
    ``notes`` ({metric: text}), a last column.
    """
    names = list(metrics_by_run)
    first = metrics_by_run[names[0]]
    headers = ["metric", names[0]]
    for name in names[1:]:
        headers += [name, f"Δ {name}"]
    plain = intervals is None and deltas is None and spread is None
    rows = []
    for metric in first:
        if plain:
            row = [metric, first[metric]]
        else:
            row = [metric, _cell(first[metric], _get(intervals, names[0], metric),
                                 _get(spread, names[0], metric))]  # fmt: skip
        for name in names[1:]:
            value = metrics_by_run[name].get(metric, math.nan)
            delta = value - first[metric]
            if plain:
                row += [value, _signed(delta)]
                continue
            row.append(_cell(value, _get(intervals, name, metric), _get(spread, name, metric)))
            entry = _get(deltas, name, metric)
            row.append(_signed(delta) if entry is None else _delta_cell(delta, entry))
        rows.append(row)
    if notes and any(notes.get(m) for m in first):
        headers.append("note")
        rows = [row + [notes.get(row[0], "")] for row in rows]
    if plain:
        # Keep the explicit "+" of the deltas: tabulate would re-parse them as plain numbers.
        return _table(rows, headers, disable_numparse=[3 + 2 * i for i in range(len(names) - 1)])
    return _table(rows, headers, disable_numparse=True)


def interval_table(values, *, intervals=None, spread=None, notes=None):
    """A row per metric: value (± std), interval and note."""
    rows = []
    for metric, value in values.items():
        value_text = _number(value, _get_one(spread, metric))
        bounds = _bounds(_get_one(intervals, metric))
        rows.append([metric, value_text, bounds, (notes or {}).get(metric, "")])
    headers = ["metric", "value", "interval", "note"]
    if not any(r[3] for r in rows):
        rows, headers = [r[:3] for r in rows], headers[:3]
    if intervals is None:
        rows, headers = [r[:2] + r[3:] for r in rows], headers[:2] + headers[3:]
    return _table(rows, headers, disable_numparse=True)


def interval_bucket_table(evaluation, values, *, intervals=None, spread=None, thin=None):
    """A row per size bucket: ground-truth count, AP and AR (at the last maxDets) with their
    intervals, and the thin-bucket note."""
    ar = f"AR{evaluation.max_dets[-1]}"
    rows = []
    for label in evaluation.buckets.labels:
        row = [label, str(evaluation.gt_counts[label])]
        for kind in ("AP", "AR"):
            metric = f"{kind}{label}"
            row.append(_number(values[metric], _get_one(spread, metric)))
            if intervals is not None:
                row.append(_bounds(intervals.get(metric)))
        row.append(TOO_FEW if thin and label in thin else "")
        rows.append(row)
    headers = ["sqrt(area) px", "GT objects", "AP"]
    headers += ["AP interval"] if intervals is not None else []
    headers += [ar] + ([f"{ar} interval"] if intervals is not None else []) + ["note"]
    if not any(r[-1] for r in rows):
        rows, headers = [r[:-1] for r in rows], headers[:-1]
    return _table(rows, headers, disable_numparse=True)


def error_table(errors, counts, *, thin=None):
    """A row per area range: AP at the error analysis' IoU, then per error type its AP cost
    and (in brackets) how many errors of the type there are."""
    from .errors import ERROR_TYPES

    rows = []
    for label, row in errors.items():
        cells = [label, str(counts.get(label, "")) if label != "all" else "", _number(row["AP"])]
        for name in ERROR_TYPES:
            cost = row["cost"][name]
            n = row["count"][name]
            n = str(int(n)) if float(n).is_integer() else f"{n:.1f}"
            cells.append(f"{_number(cost)} ({n})")
        cells.append(TOO_FEW if thin and label in thin else "")
        rows.append(cells)
    headers = ["range", "GT objects", "AP"] + [f"Δ{name}" for name in ERROR_TYPES] + ["note"]
    if not any(r[-1] for r in rows):
        rows, headers = [r[:-1] for r in rows], headers[:-1]
    return _table(rows, headers, disable_numparse=True)


TOO_FEW = "too few objects to compare"


def _get(table, run, metric):
    if table is None or run not in table:
        return None
    return table[run].get(metric)


def _get_one(table, metric):
    return None if table is None else table.get(metric)


def _number(value, std=None, digits=1):
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "nan"
    text = f"{value:.{digits}f}"
    if std is not None and not math.isnan(std):
        text += f" ± {std:.{digits}f}"
    return text


def _bounds(ci, digits=1):
    if ci is None or ci[0] is None:
        return "n/a" if ci is not None else ""
    return f"[{ci[0]:.{digits}f}, {ci[1]:.{digits}f}]"


def _cell(value, ci=None, std=None):
    text = _number(value, std)
    if ci is not None:
        text += f" {_bounds(ci)}"
    return text


def _delta_cell(delta, entry):
    if delta is None or (isinstance(delta, float) and math.isnan(delta)):
        return "nan"
    text = f"{delta:+.1f} {_bounds(entry['ci'])}"
    return text + " *" if entry.get("significant") else text


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
