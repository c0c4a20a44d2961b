"""COCO AP/AR with a per-size-bucket breakdown, from one COCOeval run.

The size buckets are added to COCOeval's area ranges next to COCO's own all/small/medium/large.
COCOeval evaluates every area range independently, so the standard numbers are exactly those of
a plain COCOeval run, and the buckets cost one extra pass of the (cheap) matching step each
instead of a second evaluation.
"""

import contextlib
import io
import logging
import math
from collections import Counter
from dataclasses import dataclass, field

import numpy as np

from .coco_inputs import IOU_TYPES, check_results
from .engines import get_engine
from .size_buckets import DEFAULT_BUCKET_EDGES, SizeBuckets

logger = logging.getLogger(__name__)

DEFAULT_MAX_DETS = (1, 10, 100)
# COCO's own area ranges, as pycocotools defines them (closed ranges, "all" first).
COCO_AREA_RANGES = {
    "all": [0.0, 1e5**2],
    "small": [0.0, 32.0**2],
    "medium": [32.0**2, 96.0**2],
    "large": [96.0**2, 1e5**2],
}
_COCO_SUFFIX = {"small": "s", "medium": "m", "large": "l"}
PR_IOUS = ("0.50", "0.50:0.95")  # IoU settings of the stored precision-recall curves


def check_max_dets(max_dets):
    """``max_dets`` as a tuple of strictly increasing positive ints, or a ValueError."""
    max_dets = tuple(max_dets)
    if (
        not max_dets
        or any(int(m) != m or m < 1 for m in max_dets)
        or any(b <= a for a, b in zip(max_dets, max_dets[1:]))
    ):
        raise ValueError(
            f"maxDets must be strictly increasing positive integers, e.g. [1, 10, 100]; got "
            f"{list(max_dets)}"
        )
    return tuple(int(m) for m in max_dets)


def metric_names(buckets, max_dets):
    """Summary metric names, in the order they are reported."""
    buckets = buckets if isinstance(buckets, SizeBuckets) else SizeBuckets(buckets)
    names = ["AP", "AP50", "AP75", "APs", "APm", "APl"]
    names += [f"AR{m}" for m in max_dets] + ["ARs", "ARm", "ARl"]
    names += [f"AP{label}" for label in buckets.labels]
    names += [f"AR{label}" for label in buckets.labels]
    return names


@dataclass
class SizeEvaluation:
    """What :func:`evaluate_by_size` found. Metrics are in percent; NaN means "not computable"."""

    iou_type: str
    engine: str  # the implementation that ran
    buckets: SizeBuckets
    max_dets: tuple
    metrics: dict  # metric name -> value, ordered as metric_names()
    gt_counts: dict  # bucket label -> number of (non-crowd) ground-truth objects
    category_names: list
    per_category: dict  # category name -> {"AP": .., "AP[0,8)": .., ...}
    recall_thresholds: np.ndarray
    pr_curves: dict  # "all" or bucket label -> {"0.50" | "0.50:0.95": precision per recall thr}
    num_images: int
    num_detections: int
    notes: list = field(default_factory=list)  # one line per metric that is NaN, saying why
    # What was evaluated (ground-truth dict, prepared results, area ranges, image ids), kept for
    # the per-image matching that the bootstrap and the error analysis compute on demand, and
    # that matching once computed (lip_det.evaluation.matching.MatchResult).
    inputs: dict = field(default=None, repr=False, compare=False)
    matches: object = field(default=None, repr=False, compare=False)

    def results(self):
        """detectron2-style results dict: the summary metrics plus ``AP-<category>``."""
        results = dict(self.metrics)
        if len(self.category_names) > 1:  # detectron2 skips per-category AP for one class
            results.update({f"AP-{n}": v["AP"] for n, v in self.per_category.items()})
        return results


def evaluate_by_size(
    coco_gt,
    results,
    *,
    iou_type="bbox",
    bucket_edges=DEFAULT_BUCKET_EDGES,
    max_dets=DEFAULT_MAX_DETS,
    engine="official",
    img_ids=None,
    source="results",
):
    """Evaluate COCO-format ``results`` against ``coco_gt`` with COCO's metrics plus size buckets.

    Args:
        coco_gt: ground truth, a COCO-format dict or a pycocotools ``COCO`` object.
        results (list[dict]): COCO-format detections (not modified). May be empty.
        iou_type (str): "bbox" or "segm".
        bucket_edges (list[float]): edges of the size buckets, see :class:`SizeBuckets`.
        max_dets (list[int]): COCOeval maxDets. AP and all per-size numbers use the last one;
            there is one AR per entry (AR1, AR10, AR100 for COCO's [1, 10, 100]).
            Like pycocotools, the cap applies per image *and category*.
        engine (str): "official" (pycocotools) or "fast" (C++), see :func:`get_engine`.
        img_ids (list[int] | None): evaluate on these images only (default: all of coco_gt).
        source (str): names the results in error messages.

    Returns:
        SizeEvaluation
    """
    if iou_type not in IOU_TYPES:
        raise ValueError(f"iou_type {iou_type!r} is not supported; choose one of {IOU_TYPES}")
    buckets = bucket_edges if isinstance(bucket_edges, SizeBuckets) else SizeBuckets(bucket_edges)
    max_dets = check_max_dets(max_dets)
    eval_engine = get_engine(engine)
    gt_dataset = coco_gt if isinstance(coco_gt, dict) else coco_gt.dataset
    if isinstance(coco_gt, eval_engine.coco_class):
        gt = coco_gt
    else:
        gt = eval_engine.load_coco(gt_dataset)

    check_results(results, gt, iou_type, source=source)
    _warn_if_over_per_image_cap(results, max_dets[-1], source)
    results = _prepare_results(results, iou_type)
    dt = _load_results(gt, results, eval_engine)

    ranges = dict(COCO_AREA_RANGES)
    ranges.update({b.label: b.area_range for b in buckets})
    cocoeval = eval_engine.cocoeval_class(gt, dt, iou_type)
    cocoeval.params.areaRng = list(ranges.values())
    cocoeval.params.areaRngLbl = list(ranges)
    cocoeval.params.maxDets = list(max_dets)
    if img_ids is not None:
        cocoeval.params.imgIds = list(img_ids)
    with contextlib.redirect_stdout(io.StringIO()):  # pycocotools prints its progress
        cocoeval.evaluate()
        cocoeval.accumulate()

    evaluation = _summarize(cocoeval, gt, buckets, max_dets, eval_engine, len(results))
    evaluation.inputs = {
        "gt": gt_dataset,
        "results": results,
        "area_ranges": ranges,
        "img_ids": None if img_ids is None else list(img_ids),
    }
    return evaluation


def _warn_if_over_per_image_cap(results, max_det, source):
    # COCOeval caps detections per image *and category*; detectors cap them per image
    # (detectron2: TEST.DETECTIONS_PER_IMAGE). A run with more boxes per image than maxDets gets
    # more chances than one capped at maxDets, so runs compared side by side should share a cap.
    per_image = Counter(r["image_id"] for r in results)
    over = sum(1 for n in per_image.values() if n > max_det)
    if over:
        logger.warning(
            f"{source}: {over} images have more than {max_det} detections (at most "
            f"{max(per_image.values())}). COCOeval caps at {max_det} per image *and category*, so "
            f"more of them count than a detector capped at {max_det} per image could get; "
            f"compare runs made with the same per-image cap"
        )


def _prepare_results(results, iou_type):
    # Shallow copies: the COCO API adds fields ("area", "id", ...) to every detection.
    results = [dict(r) for r in results]
    if iou_type == "segm":
        # As detectron2 does: with a "bbox" present the COCO API sizes a detection by its box,
        # but mask AP must use mask area, like the ground truth's "area".
        for r in results:
            r.pop("bbox", None)
    return results


def _load_results(gt, results, eval_engine):
    if results:
        with contextlib.redirect_stdout(io.StringIO()):
            return gt.loadRes(results)
    # pycocotools' loadRes fails on an empty list, but "no detections" is a valid outcome
    # (AP 0 wherever there is ground truth): evaluate against an empty result set instead.
    empty = {
        "images": list(gt.dataset["images"]),
        "categories": list(gt.dataset["categories"]),
        "annotations": [],
    }
    return eval_engine.load_coco(empty)


def _mean_percent(values):
    """pycocotools' summary statistic: the mean over entries that are not -1 ("no ground truth"),
    in percent; NaN (rather than -1) when there is none."""
    valid = values[values > -1]
    return float(np.mean(valid)) * 100 if valid.size else math.nan


def _summarize(cocoeval, gt, buckets, max_dets, eval_engine, num_detections):
    params = cocoeval.params
    precision = cocoeval.eval["precision"]  # [IoU, recall thr, category, area range, maxDets]
    recall = cocoeval.eval["recall"]  # [IoU, category, area range, maxDets]
    area = {label: i for i, label in enumerate(params.areaRngLbl)}
    iou50 = int(np.flatnonzero(np.isclose(params.iouThrs, 0.5))[0])
    iou75 = int(np.flatnonzero(np.isclose(params.iouThrs, 0.75))[0])
    last = len(params.maxDets) - 1

    metrics = {
        "AP": _mean_percent(precision[:, :, :, area["all"], last]),
        "AP50": _mean_percent(precision[iou50, :, :, area["all"], last]),
        "AP75": _mean_percent(precision[iou75, :, :, area["all"], last]),
    }
    for name, suffix in _COCO_SUFFIX.items():
        metrics[f"AP{suffix}"] = _mean_percent(precision[:, :, :, area[name], last])
    for m, max_det in enumerate(params.maxDets):
        metrics[f"AR{max_det}"] = _mean_percent(recall[:, :, area["all"], m])
    for name, suffix in _COCO_SUFFIX.items():
        metrics[f"AR{suffix}"] = _mean_percent(recall[:, :, area[name], last])
    for label in buckets.labels:
        metrics[f"AP{label}"] = _mean_percent(precision[:, :, :, area[label], last])
    for label in buckets.labels:
        metrics[f"AR{label}"] = _mean_percent(recall[:, :, area[label], last])

    gt_areas = _evaluated_gt_areas(gt, params)
    gt_counts = dict(zip(buckets.labels, buckets.count(gt_areas)))
    categories = gt.loadCats(params.catIds)
    names = [c.get("name", str(c["id"])) for c in categories]
    per_category = {}
    for k, name in enumerate(names):
        row = {"AP": _mean_percent(precision[:, :, k, area["all"], last])}
        for label in buckets.labels:
            row[f"AP{label}"] = _mean_percent(precision[:, :, k, area[label], last])
        per_category[name] = row

    return SizeEvaluation(
        iou_type=params.iouType,
        engine=eval_engine.implementation,
        buckets=buckets,
        max_dets=tuple(max_dets),
        metrics=metrics,
        gt_counts=gt_counts,
        category_names=names,
        per_category=per_category,
        recall_thresholds=np.asarray(params.recThrs),
        pr_curves=_pr_curves(precision, area, ["all", *buckets.labels], iou50, last),
        num_images=len(params.imgIds),
        num_detections=num_detections,
        notes=_nan_notes(metrics, gt_counts, gt_areas.size),
    )


def _evaluated_gt_areas(gt, params):
    """Areas of the ground truth COCOeval counts: evaluated images and categories, not crowd."""
    anns = gt.loadAnns(gt.getAnnIds(imgIds=params.imgIds, catIds=params.catIds))
    return np.array([a["area"] for a in anns if not a.get("iscrowd", 0)], dtype=np.float64)


def _pr_curves(precision, area, labels, iou50, last):
    curves = {}
    for label in labels:
        p = precision[:, :, :, area[label], last]  # [IoU, recall thr, category]
        curves[label] = {
            "0.50": _mean_over_valid(p[iou50][None]),
            "0.50:0.95": _mean_over_valid(p),
        }
    return curves


def _mean_over_valid(p):
    # Mean over IoUs and categories, per recall threshold, skipping -1 (no ground truth).
    valid = p > -1
    count = valid.sum(axis=(0, 2))
    total = np.where(valid, p, 0.0).sum(axis=(0, 2))
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(count > 0, total / np.maximum(count, 1), np.nan)


def _nan_notes(metrics, gt_counts, num_gt):
    notes = []
    if num_gt == 0:
        notes.append("all metrics are NaN: the evaluated images have no (non-crowd) ground truth")
        return notes
    for name, suffix in _COCO_SUFFIX.items():
        if math.isnan(metrics[f"AP{suffix}"]):
            notes.append(f"AP{suffix}/AR{suffix} are NaN: no {name} ground-truth objects")
    for label, count in gt_counts.items():
        if count == 0:
            notes.append(
                f"AP{label}/AR{label} are NaN: no ground-truth objects with sqrt(area) in {label}"
            )
    return notes
