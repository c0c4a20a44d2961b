"""PNG figures for the small-object report.

Figures are drawn on matplotlib ``Figure`` objects with the Agg canvas, without pyplot: no
display is needed and the caller's global matplotlib backend is left alone.
"""

import math

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from .size_evaluation import PR_IOUS


def _new_figure(ncols=1, width=6.4):
    figure = Figure(figsize=(width * ncols, 4.8), layout="constrained")
    FigureCanvasAgg(figure)
    return figure, figure.subplots(1, ncols, squeeze=False)[0]


def plot_pr_curves(evaluation, path, title):
    """Precision-recall curves of every size bucket (and all sizes) at IoU .50 and .50:.95;
    precision is averaged over the categories with ground truth in the bucket."""
    figure, axes = _new_figure(ncols=len(PR_IOUS))
    recall = evaluation.recall_thresholds
    for ax, iou in zip(axes, PR_IOUS):
        for label, curves in evaluation.pr_curves.items():
            ap_key = "AP" if label == "all" else f"AP{label}"
            ap = evaluation.metrics[ap_key]  # AP over .50:.95 for the legend
            style = {"color": "black", "linestyle": "--"} if label == "all" else {}
            name = "all sizes" if label == "all" else label
            ax.plot(recall, curves[iou], label=f"{name} (AP {_fmt(ap)})", **style)
        ax.set(xlim=(0, 1), ylim=(0, 1.02), xlabel="recall", ylabel="precision")
        ax.set_title(f"IoU {iou}")
        ax.grid(alpha=0.3)
    axes[-1].legend(title="sqrt(area) px", fontsize="small")
    figure.suptitle(f"{title}: {evaluation.iou_type} precision-recall per size bucket")
    figure.savefig(path, dpi=100)
    return path


def plot_ap_per_bucket(
    metrics, labels, path, *, intervals=None, thin=None, title="AP per size bucket"
):
    """Grouped bars: AP per size bucket (and over all sizes), one bar per run, with the
    bootstrap interval as error bars; buckets in ``thin`` are hatched and labelled "too few
    objects to compare"."""
    from .tables import TOO_FEW

    thin = thin or {}
    columns = ["all", *labels]
    figure, (ax,) = _new_figure(width=max(6.4, 1.3 * len(columns)))
    width = 0.8 / len(metrics)
    x = np.arange(len(columns))
    for i, (name, values) in enumerate(metrics.items()):
        keys = ["AP" if b == "all" else f"AP{b}" for b in columns]
        heights = [values[k] for k in keys]
        yerr = None
        if intervals is not None:
            bounds = [intervals[name].get(k) or [None, None] for k in keys]
            yerr = np.array(
                [
                    [h - lo if lo is not None and not math.isnan(h) else 0.0 for h, (lo, _) in
                     zip(heights, bounds)],
                    [hi - h if hi is not None and not math.isnan(h) else 0.0 for h, (_, hi) in
                     zip(heights, bounds)],
                ]
            )  # fmt: skip
            yerr = np.maximum(yerr, 0.0)
        bars = ax.bar(x + (i - (len(metrics) - 1) / 2) * width, heights, width, label=name,
                      yerr=yerr, capsize=3, error_kw={"elinewidth": 1})  # fmt: skip
        for bar, column in zip(bars, columns):
            if column in thin:
                bar.set_hatch("//")
                bar.set_alpha(0.5)
        ax.bar_label(bars, labels=[_fmt(v) for v in heights], fontsize="x-small", padding=2)
    thin_text = TOO_FEW.replace("objects to", "objects\nto")
    ticks = ["all sizes"] + [
        f"{b}\n({thin_text}:\n{thin[b]} objects)" if b in thin else b for b in labels
    ]
    ax.set_xticks(x, ticks, fontsize="small")
    ax.set(xlabel="sqrt(area) px", ylabel="AP (IoU .50:.95, %)")
    suffix = " - error bars: bootstrap interval" if intervals is not None else ""
    ax.set_title(title + suffix, fontsize="medium")
    ax.legend()
    ax.grid(axis="y", alpha=0.3)
    figure.savefig(path, dpi=100)
    return path


def plot_errors(errors, labels, path, *, thin=None, foreground_iou=0.5):
    """Per run, grouped bars: the AP points each error type costs in each area range."""
    from .errors import ERROR_TYPES
    from .tables import TOO_FEW

    thin = thin or {}
    figure = Figure(figsize=(max(6.4, 1.2 * len(labels)), 3.6 * len(errors)), layout="constrained")
    FigureCanvasAgg(figure)
    axes = figure.subplots(len(errors), 1, squeeze=False, sharey=True)[:, 0]
    x = np.arange(len(labels))
    width = 0.8 / len(ERROR_TYPES)
    for ax, (name, rows) in zip(axes, errors.items()):
        for i, error in enumerate(ERROR_TYPES):
            costs = [rows[b]["cost"][error] if b in rows else None for b in labels]
            costs = [math.nan if c is None else c for c in costs]
            ax.bar(x + (i - (len(ERROR_TYPES) - 1) / 2) * width, costs, width, label=error)
        thin_text = TOO_FEW.replace("objects to", "objects\nto")
        ticks = [
            "all sizes" if b == "all" else (f"{b}\n({thin_text})" if b in thin else b)
            for b in labels
        ]
        ax.set_xticks(x, ticks, fontsize="small")
        for tick, b in zip(ax.get_xticklabels(), labels):
            if b in thin:
                tick.set_color("tab:gray")
        ax.set(xlabel="sqrt(area) px", ylabel=f"AP{round(foreground_iou * 100)} lost (points)")
        ax.set_title(f"{name}: what each error type costs", fontsize="medium")
        ax.grid(axis="y", alpha=0.3)
    axes[0].legend(title="error type", fontsize="small", ncols=2)
    figure.savefig(path, dpi=100)
    return path


def plot_gt_size_histogram(areas, buckets, path, thin=None):
    """Histogram of ground-truth sqrt(area) on a log axis, with the bucket edges marked."""
    figure, (ax,) = _new_figure()
    sizes = np.sqrt(np.asarray(areas, dtype=np.float64))
    sizes = sizes[sizes > 0]  # zero-area boxes cannot sit on a log axis
    if sizes.size:
        bins = np.geomspace(sizes.min(), sizes.max() * 1.0001, 60)
        ax.hist(sizes, bins=bins, color="tab:blue", alpha=0.8)
    ax.set_xscale("log")
    for edge in buckets.edges:
        if edge > 0:
            ax.axvline(edge, color="tab:red", linestyle=":", linewidth=1)
    counts = buckets.count(areas)
    summary = ", ".join(
        f"{b} {c}" + (" (too few)" if thin and b in thin else "")
        for b, c in zip(buckets.labels, counts)
    )
    ax.set(xlabel="sqrt(area) px (original image)", ylabel="ground-truth objects")
    ax.set_title(f"Ground-truth sizes; per bucket: {summary}", fontsize="small")
    figure.savefig(path, dpi=100)
    return path


def _fmt(value):
    return "n/a" if math.isnan(value) else f"{value:.1f}"
