"""What each kind of detection error costs in AP, per size bucket (TIDE's error types).

Bolya et al., *TIDE: A General Toolbox for Identifying Object Detection Errors* (ECCV 2020)
sort every false positive at the foreground IoU threshold t_f (default 0.5) into one type, by its
best IoU with the image's (non-crowd) ground truth, checked in this order:

- **Loc** (localisation): t_b <= IoU <= t_f with ground truth of its class;
- **Cls** (classification): IoU >= t_f with ground truth of another class;
- **Dupe** (duplicate): IoU >= t_f with ground truth of its class that a higher-scoring detection
  already matched;
- **Bkg** (background): IoU <= t_b with all ground truth (t_b, the background threshold: 0.1);
- **Both**: the rest (t_b < IoU < t_f with ground truth of another class);

and ground truth that no detection matched and no Cls or Loc error points at is **Miss**. The
cost of a type is the AP gained when an oracle fixes all errors of that type and nothing else:
Cls and Loc errors become true positives of the ground truth they point at (the highest-scoring
one per ground truth; the others, and those whose ground truth is already matched, are
removed), Dupe, Bkg and Both errors are removed, and Miss ground truth leaves the count.

Per size bucket, everything follows COCOeval's rules for an area range, so that the AP the
costs are measured against is the bucket's COCO AP at IoU t_f (AP50 of the bucket for the
default t_f): the bucket's matching, the bucket's detections (those COCOeval counts there), its
ground truth. A detection that COCOeval leaves out of the bucket (its box has another size) but
whose Cls or Loc error points at ground truth of the bucket is a Cls/Loc error of that bucket
too: fixed, it would be a true positive there. As in TIDE, the AP is the mean over the
categories with ground truth of the 101-point interpolated precision at one threshold.
"""

import math
from dataclasses import dataclass

import numpy as np
import pycocotools.mask as mask_util

from .matching import RECALL_THRESHOLDS, match_runs, to_rle

ERROR_TYPES = ("Cls", "Loc", "Both", "Dupe", "Bkg", "Miss")
ERROR_NAMES = {
    "Cls": "classification",
    "Loc": "localisation",
    "Both": "classification and localisation",
    "Dupe": "duplicate",
    "Bkg": "background",
    "Miss": "missed ground truth",
}
DEFAULT_FOREGROUND_IOU = 0.5
DEFAULT_BACKGROUND_IOU = 0.1
_TYPE_CODE = {name: i for i, name in enumerate(("Cls", "Loc", "Both", "Dupe", "Bkg"))}


@dataclass
class BucketErrors:
    """The error analysis of one area range: AP at t_f, and per error type its AP cost
    (percent points) and how many errors of the type there are."""

    ap: float  # percent; NaN without ground truth
    cost: dict  # error type -> dAP
    count: dict  # error type -> number of errors


def error_analysis(gt, results, *, iou_type, area_ranges, max_dets, img_ids=None,
                   foreground_iou=DEFAULT_FOREGROUND_IOU, background_iou=DEFAULT_BACKGROUND_IOU,
                   matches=None):  # fmt: skip
    """TIDE's error costs per area range: ``{label: BucketErrors}``.

    ``matches``: a :class:`~.matching.MatchResult` of these inputs that holds ``foreground_iou``
    among its thresholds (matched again otherwise).
    """
    if not 0 <= background_iou <= foreground_iou <= 1:
        raise ValueError(
            f"need 0 <= background IoU <= foreground IoU <= 1, got {background_iou!r} and "
            f"{foreground_iou!r}"
        )
    t = None
    if matches is not None:
        close = np.flatnonzero(np.isclose(matches.iou_thresholds, foreground_iou, atol=1e-12))
        t = int(close[0]) if close.size else None
    if t is None:
        matches = match_runs(
            gt, results, iou_type=iou_type, area_ranges=area_ranges, max_dets=max_dets,
            iou_thresholds=[foreground_iou], img_ids=img_ids,
        )  # fmt: skip
        t = 0
    dets = _flatten(matches, t)
    kind, target = _classify(gt, results, matches, dets, iou_type, foreground_iou, background_iou)
    return {
        label: _area_errors(matches, dets, kind, target, a)
        for a, label in enumerate(matches.area_labels)
    }


@dataclass
class _Detections:
    """The detections of a MatchResult at one IoU threshold."""

    index: np.ndarray  # into the results list
    image: np.ndarray
    category: np.ndarray
    score: np.ndarray
    position: np.ndarray  # rank within its (image, category) pair
    matched_gt: np.ndarray  # (A, n): gt index or -1
    ignored: np.ndarray  # (A, n)
    tp: np.ndarray  # (A, n)


def _flatten(matches, t):
    return _Detections(
        index=matches.dt_index,
        image=matches.dt_image,
        category=matches.dt_category,
        score=matches.dt_score,
        position=matches.dt_position,
        matched_gt=matches.match[:, t, :],
        ignored=matches.dt_ignore[:, t, :],
        tp=matches.tp[:, t, :],
    )


def _classify(gt, results, matches, dets, iou_type, t_f, t_b):
    """Error type code (-1: none possible) and target gt (-1) of every detection, from its IoU
    with the non-crowd ground truth of its image (all categories and sizes)."""
    n = len(dets.index)
    kind = np.full(n, -1, dtype=np.int64)
    target = np.full(n, -1, dtype=np.int64)
    usable_gt = matches.gt_evaluated() & ~matches.gt_crowd
    gts_by_image = {}
    for g in np.flatnonzero(usable_gt):
        gts_by_image.setdefault(int(matches.gt_image[g]), []).append(g)
    order = np.argsort(dets.image, kind="stable")
    bounds = np.flatnonzero(np.diff(dets.image[order])) + 1
    images = {img["id"]: img for img in gt["images"]}
    for rows in np.split(order, bounds) if n else []:
        image = int(dets.image[rows[0]])
        g = np.array(gts_by_image.get(image, []), dtype=np.int64)
        if not g.size:
            kind[rows] = _TYPE_CODE["Bkg"]
            continue
        d = dets.index[rows]
        ious = _cross_iou(gt, results, d, g, iou_type, images)
        same = dets.category[rows][:, None] == matches.gt_category[g][None, :]
        iou_same = np.where(same, ious, 0.0)
        iou_other = np.where(~same, ious, 0.0)
        best_same, best_other = iou_same.max(axis=1), iou_other.max(axis=1)
        k = np.full(len(rows), _TYPE_CODE["Both"])
        k = np.where(ious.max(axis=1) <= t_b, _TYPE_CODE["Bkg"], k)
        k = np.where(best_same > t_f, _TYPE_CODE["Dupe"], k)
        k = np.where(best_other >= t_f, _TYPE_CODE["Cls"], k)
        loc = (t_b <= best_same) & (best_same <= t_f) & same.any(axis=1)
        k = np.where(loc, _TYPE_CODE["Loc"], k)
        kind[rows] = k
        tgt = np.where(loc, g[iou_same.argmax(axis=1)], -1)
        tgt = np.where(k == _TYPE_CODE["Cls"], g[iou_other.argmax(axis=1)], tgt)
        target[rows] = tgt
    return kind, target


def _cross_iou(gt, results, d, g, iou_type, images):
    if iou_type == "bbox":
        dts = np.array([results[i]["bbox"] for i in d], dtype=np.float64).reshape(-1, 4)
        gts = np.array([gt["annotations"][i]["bbox"] for i in g], dtype=np.float64).reshape(-1, 4)
    else:
        dts = [to_rle(results[i]["segmentation"], images[results[i]["image_id"]]) for i in d]
        anns = [gt["annotations"][i] for i in g]
        gts = [to_rle(a["segmentation"], images[a["image_id"]]) for a in anns]
    ious = mask_util.iou(dts, gts, [0] * len(g))
    return np.asarray(ious, dtype=np.float64).reshape(len(d), len(g))


def _area_errors(matches, dets, kind, target, a):
    num_categories = len(matches.category_ids)
    gt_in = matches.gt_evaluated() & ~matches.gt_ignore(a)
    npig = np.bincount(matches.gt_category[gt_in], minlength=num_categories)
    used = np.zeros(len(matches.gt_area), dtype=bool)
    matched = dets.matched_gt[a]
    used[matched[matched >= 0]] = True

    counted = ~dets.ignored[a]
    fp = counted & ~dets.tp[a]
    uncounted_free = dets.ignored[a] & (matched < 0)
    points = (kind == _TYPE_CODE["Cls"]) | (kind == _TYPE_CODE["Loc"])
    target_ok = points & (target >= 0)
    target_ok &= np.where(target >= 0, gt_in[np.maximum(target, 0)] & ~used[np.maximum(target, 0)],
                          False)  # fmt: skip
    # The errors of this range: its counted false positives, and uncounted detections whose
    # Cls/Loc error points at ground truth of this range that is still free.
    is_error = fp | (uncounted_free & target_ok)
    best = _best_per_target(dets, target, is_error & target_ok)
    usable = np.zeros(len(matches.gt_area), dtype=bool)
    usable[target[is_error & target_ok]] = True
    missed = gt_in & ~used & ~usable

    count = {name: int(np.count_nonzero(is_error & (kind == code)))
             for name, code in _TYPE_CODE.items()}  # fmt: skip
    count["Miss"] = int(np.count_nonzero(missed))
    valid = npig > 0
    if not valid.any():
        nan = dict.fromkeys(ERROR_TYPES, math.nan)
        return BucketErrors(math.nan, nan, count)

    base_entries = (dets.category, dets.score, dets.image, dets.position, dets.tp[a])
    base = _mean_ap(base_entries, counted, npig, valid)
    cost = {}
    for name, code in _TYPE_CODE.items():
        errors = is_error & (kind == code)
        keep = counted & ~errors
        if name in ("Cls", "Loc"):
            fixed = errors & best
            category = dets.category.copy()
            category[fixed] = matches.gt_category[target[fixed]]
            tp = dets.tp[a] | fixed
            entries = (category, dets.score, dets.image, dets.position, tp)
            value = _mean_ap(entries, keep | fixed, npig, valid)
        else:
            value = _mean_ap(base_entries, keep, npig, valid)
        cost[name] = value - base
    fixed_npig = npig - np.bincount(matches.gt_category[missed], minlength=num_categories)
    cost["Miss"] = _mean_ap(base_entries, counted, fixed_npig, valid) - base
    return BucketErrors(base, cost, count)


def _best_per_target(dets, target, candidates):
    """True for the highest-scoring candidate of each target; among equal scores the first that
    TIDE meets (images in order, a detection list sorted by score within an image)."""
    best = np.zeros(len(target), dtype=bool)
    rows = np.flatnonzero(candidates)
    if not rows.size:
        return best
    order = rows[np.lexsort((dets.index[rows], dets.image[rows], -dets.score[rows], target[rows]))]
    first = np.ones(len(order), dtype=bool)
    first[1:] = target[order][1:] != target[order][:-1]
    best[order[first]] = True
    return best


def _mean_ap(entries, keep, npig, valid):
    category, score, image, position, tp = (e[keep] for e in entries)
    order = np.lexsort((position, image, -score, category))
    category, tp = category[order], tp[order]
    starts = np.searchsorted(category, np.arange(len(npig)), side="left")
    stops = np.searchsorted(category, np.arange(len(npig)), side="right")
    aps = [ap_101(tp[starts[k] : stops[k]], npig[k]) for k in np.flatnonzero(valid)]
    return float(np.mean(aps)) * 100.0


def ap_101(tp, npig):
    """COCOeval's 101-point interpolated AP (a fraction) of score-sorted true/false positives
    against ``npig`` ground-truth objects; 0 without ground truth (as TIDE)."""
    if npig <= 0 or not len(tp):
        return 0.0
    tp = np.asarray(tp, dtype=bool)
    tps = np.cumsum(tp).astype(np.float64)
    fps = np.cumsum(~tp).astype(np.float64)
    recall = tps / npig
    precision = tps / (fps + tps + np.spacing(1))
    precision = np.maximum.accumulate(precision[::-1])[::-1]
    index = np.searchsorted(recall, RECALL_THRESHOLDS, side="left")
    q = np.where(index < len(tp), precision[np.minimum(index, len(tp) - 1)], 0.0)
    return float(q.mean())
