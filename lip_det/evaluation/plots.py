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


def plot_ap_per_bucket(evaluations, path):
    """Grouped bars: AP per size bucket (and over all sizes), one bar per run."""
    first = next(iter(evaluations.values()))
    labels = ["all", *first.buckets.labels]
    figure, (ax,) = _new_figure(width=max(6.4, 1.2 * len(labels)))
    width = 0.8 / len(evaluations)
    x = np.arange(len(labels))
    for i, (name, evaluation) in enumerate(evaluations.items()):
        values = [evaluation.metrics["AP" if b == "all" else f"AP{b}"] for b in labels]
        bars = ax.bar(x + (i - (len(evaluations) - 1) / 2) * width, values, width, label=name)
        ax.bar_label(bars, labels=[_fmt(v) for v in values], fontsize="x-small", padding=2)
    ax.set_xticks(x, ["all sizes", *labels[1:]])
    ax.set(xlabel="sqrt(area) px", ylabel="AP (IoU .50:.95, %)")
    ax.set_title(f"{first.iou_type} AP per size bucket (maxDets {first.max_dets[-1]})")
    ax.legend()
    ax.grid(axis="y", alpha=0.3)
    figure.savefig(path, dpi=100)
    return path


def plot_gt_size_histogram(areas, buckets, path):
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
    summary = ", ".join(f"{b} {c}" for b, c in zip(buckets.labels, counts))
    ax.set(xlabel="sqrt(area) px (original image)", ylabel="ground-truth objects")
    ax.set_title(f"Ground-truth sizes; per bucket: {summary}", fontsize="small")
    figure.savefig(path, dpi=100)
    return path


def _fmt(value):
    return "n/a" if math.isnan(value) else f"{value:.1f}"
