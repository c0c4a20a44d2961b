"""Per-image COCO matching, computed once and kept, for the bootstrap and the error analysis.

Why this module is long: the matching is one algorithm (pycocotools'
evaluateImg, batched over area ranges and IoU thresholds) whose parts are only correct together;
splitting it would scatter one invariant over files.

COCOeval's ``evaluate()`` matches the detections of every (image, category) pair to its ground
truth, separately for every area range and IoU threshold, and ``accumulate()`` turns the matches
of all images into precision/recall. A bootstrap over images needs the matches of each image and
then many accumulations over resampled image sets; an error analysis needs to know *which*
ground truth a detection matched. Neither is readable from the C++ engines, so this module
redoes the matching in numpy, as pycocotools' ``COCOeval.evaluateImg`` does it:

- the detections of a pair sorted by descending score (stable), the first ``maxDets[-1]`` kept;
- IoU from ``pycocotools.mask.iou`` (crowd ground truth: intersection over detection area);
- per IoU threshold, greedily in score order, each detection takes the free (or crowd) ground
  truth of highest IoU >= threshold, ties going to the later one, and ground truth that is not
  ignored (crowd, or area outside the range) before ignored ground truth;
- a detection matched to ignored ground truth, or unmatched with its area outside the range,
  is ignored; one matched to ground truth of id 0 counts as unmatched (COCOeval stores ids).

The pairs are matched in batches of similar size, all area ranges and thresholds at once. The
tests compare the matches with pycocotools' ``evalImgs`` and the metrics with both engines.

Accumulation (:func:`weighted_sums`) takes per-image weights: all ones is the evaluation itself,
bootstrap counts are a resample. Two facts keep it exact and cheap: precision is only ever read
at positions where recall first reaches a level, which are true positives, and the envelope
(the running maximum from the right) over those positions equals the full one; so detections
that are a true positive at no threshold enter only as counts of false positives, summed per
stretch between true positives.
"""

import math
from collections import defaultdict
from dataclasses import dataclass

import numpy as np
import pycocotools.mask as mask_util

# COCOeval's default IoU and recall thresholds, written as pycocotools writes them.
IOU_THRESHOLDS = np.linspace(0.5, 0.95, int(np.round((0.95 - 0.5) / 0.05)) + 1, endpoint=True)
RECALL_THRESHOLDS = np.linspace(0.0, 1.00, int(np.round((1.00 - 0.0) / 0.01)) + 1, endpoint=True)


@dataclass
class MatchResult:
    """The matching of every (image, category) pair of one run.

    Detections are those COCOeval keeps (the first maxDets[-1] per pair by score), grouped by
    pair (pairs in (image, category) order) and score-sorted within a pair. Indices: ``image``
    into ``image_ids``, ``category`` into ``category_ids``, gt into ``gt["annotations"]``.
    """

    iou_type: str
    image_ids: list  # evaluated images, sorted (COCOeval's order)
    category_ids: list  # sorted
    area_labels: list
    area_ranges: list  # [[min_area, max_area]] (closed, as COCOeval's)
    iou_thresholds: np.ndarray
    max_dets: tuple
    # detections (N,)
    dt_index: np.ndarray  # into the results list
    dt_image: np.ndarray
    dt_category: np.ndarray
    dt_score: np.ndarray
    dt_position: np.ndarray  # rank within its pair
    match: np.ndarray  # (A, T, N) matched gt (index into gt["annotations"]) or -1
    dt_ignore: np.ndarray  # (A, T, N)
    tp: np.ndarray  # (A, T, N)
    # ground truth (every annotation of gt["annotations"])
    gt_area: np.ndarray
    gt_crowd: np.ndarray
    gt_image: np.ndarray  # -1: image not evaluated
    gt_category: np.ndarray  # -1: category not in the ground truth's categories

    @property
    def num_images(self):
        return len(self.image_ids)

    def gt_evaluated(self):
        return (self.gt_image >= 0) & (self.gt_category >= 0)

    def gt_ignore(self, a):
        """(num gt,) bool: ignored in area range ``a`` (crowd, or area outside the range)."""
        lo, hi = self.area_ranges[a]
        return self.gt_crowd | (self.gt_area < lo) | (self.gt_area > hi)


def match_runs(gt, results, *, iou_type, area_ranges, max_dets, iou_thresholds=IOU_THRESHOLDS,
               img_ids=None):  # fmt: skip
    """Match ``results`` (COCO-format detections, checked) to ``gt`` (a COCO-format dict).

    Args:
        area_ranges (dict): label -> [min_area, max_area], COCOeval's closed ranges.
        max_dets (tuple): COCOeval maxDets; matching keeps the last (largest) per pair.
        img_ids (list | None): evaluate these images only (default: all of ``gt``).

    Returns:
        MatchResult
    """
    iou_thresholds = np.asarray(iou_thresholds, dtype=np.float64)
    labels = list(area_ranges)
    ranges = np.array([area_ranges[k] for k in labels], dtype=np.float64).reshape(-1, 2)
    image_ids = sorted({img["id"] for img in gt["images"]} if img_ids is None else set(img_ids))
    category_ids = sorted({c["id"] for c in gt["categories"]})
    image_pos = {image_id: i for i, image_id in enumerate(image_ids)}
    category_pos = {category_id: k for k, category_id in enumerate(category_ids)}
    images = {img["id"]: img for img in gt["images"]}

    anns = gt["annotations"]
    gt_area = np.array([float(a["area"]) for a in anns], dtype=np.float64)
    gt_crowd = np.array([bool(a.get("iscrowd", 0)) for a in anns], dtype=bool)
    gt_image = np.array([image_pos.get(a["image_id"], -1) for a in anns], dtype=np.int64)
    gt_category = np.array([category_pos.get(a["category_id"], -1) for a in anns], dtype=np.int64)
    gt_id_nonzero = np.array([a["id"] != 0 for a in anns], dtype=bool)
    all_image = np.array([image_pos.get(r["image_id"], -1) for r in results], dtype=np.int64)
    all_category = np.array(
        [category_pos.get(r["category_id"], -1) for r in results], dtype=np.int64
    )
    all_score = np.array([float(r["score"]) for r in results], dtype=np.float64)
    gt_geometry, dt_geometry, all_dt_area = _geometry(gt, results, iou_type, images)

    # Detections grouped by pair, score-sorted (stable: results order breaks ties), capped.
    evaluated = np.flatnonzero((all_image >= 0) & (all_category >= 0))
    order = evaluated[np.lexsort((evaluated, -all_score[evaluated], all_category[evaluated],
                                  all_image[evaluated]))]  # fmt: skip
    pair_key = all_image[order] * len(category_ids) + all_category[order]
    starts = np.r_[0, np.flatnonzero(np.diff(pair_key)) + 1] if order.size else np.zeros(0, int)
    position = np.arange(order.size) - np.repeat(starts, np.diff(np.r_[starts, order.size]))
    kept = position < max_dets[-1]
    dt_index, dt_position = order[kept], position[kept]
    dt_pair = pair_key[kept]

    gt_rows = np.flatnonzero((gt_image >= 0) & (gt_category >= 0))
    gt_rows = gt_rows[np.lexsort((gt_rows, gt_category[gt_rows], gt_image[gt_rows]))]
    gt_pair = gt_image[gt_rows] * len(category_ids) + gt_category[gt_rows]

    num_ranges, num_thresholds, num_dt = len(labels), len(iou_thresholds), len(dt_index)
    match = np.full((num_ranges, num_thresholds, num_dt), -1, dtype=np.int64)
    _match_all_pairs(
        dt_index, dt_pair, gt_rows, gt_pair, dt_geometry, gt_geometry, gt_crowd, gt_area,
        ranges, np.minimum(iou_thresholds, 1 - 1e-10), iou_type, match,
    )  # fmt: skip

    dt_area = all_dt_area[dt_index]
    dt_outside = (dt_area[None, :] < ranges[:, :1]) | (dt_area[None, :] > ranges[:, 1:])
    gt_ignore = (
        gt_crowd[None, :] | (gt_area[None, :] < ranges[:, :1]) | (gt_area[None, :] > ranges[:, 1:])
    )  # (A, num gt)
    matched = match >= 0
    safe = np.maximum(match, 0)
    if len(anns):
        matched_ignored = matched & np.take_along_axis(
            gt_ignore[:, None, :].repeat(num_thresholds, axis=1), safe, axis=2
        )
        counts_as_match = matched & gt_id_nonzero[safe]
    else:
        matched_ignored = counts_as_match = np.zeros_like(matched)
    dt_ignore = matched_ignored | (~counts_as_match & dt_outside[:, None, :])
    return MatchResult(
        iou_type=iou_type,
        image_ids=image_ids,
        category_ids=category_ids,
        area_labels=labels,
        area_ranges=ranges.tolist(),
        iou_thresholds=iou_thresholds,
        max_dets=tuple(max_dets),
        dt_index=dt_index,
        dt_image=all_image[dt_index],
        dt_category=all_category[dt_index],
        dt_score=all_score[dt_index],
        dt_position=dt_position,
        match=match,
        dt_ignore=dt_ignore,
        tp=counts_as_match & ~dt_ignore,
        gt_area=gt_area,
        gt_crowd=gt_crowd,
        gt_image=gt_image,
        gt_category=gt_category,
    )


def _geometry(gt, results, iou_type, images):
    """What pycocotools' IoU reads (boxes, or RLEs), and detection areas as loadRes sets them."""
    if iou_type == "bbox":
        gt_boxes = np.array([a["bbox"] for a in gt["annotations"]], dtype=np.float64).reshape(-1, 4)
        dt_boxes = np.array([r["bbox"] for r in results], dtype=np.float64).reshape(-1, 4)
        return gt_boxes, dt_boxes, dt_boxes[:, 2] * dt_boxes[:, 3]
    gt_rles = [to_rle(a["segmentation"], images.get(a["image_id"])) for a in gt["annotations"]]
    dt_rles = [to_rle(r["segmentation"], images.get(r["image_id"])) for r in results]
    dt_area = np.array([float(mask_util.area(r)) for r in dt_rles], dtype=np.float64)
    return gt_rles, dt_rles, dt_area


def to_rle(segm, image):
    """pycocotools' COCO.annToRLE: polygons and uncompressed RLE to compressed RLE."""
    if isinstance(segm, list):
        return mask_util.merge(mask_util.frPyObjects(segm, image["height"], image["width"]))
    if isinstance(segm.get("counts"), list):
        return mask_util.frPyObjects(segm, *segm["size"])
    return segm


def iou_matrix(dt_geometry, gt_geometry, d, g, crowd, iou_type):
    """pycocotools' IoU of detections ``d`` with ground truth ``g`` (indices), (len(d), len(g))."""
    if iou_type == "bbox":
        dts, gts = dt_geometry[d], gt_geometry[g]
    else:
        dts, gts = [dt_geometry[i] for i in d], [gt_geometry[i] for i in g]
    ious = mask_util.iou(dts, gts, [int(c) for c in crowd])
    return np.asarray(ious, dtype=np.float64).reshape(len(d), len(g))


def _size_class(n):
    return 1 << max(0, int(n - 1).bit_length())


def _match_all_pairs(dt_index, dt_pair, gt_rows, gt_pair, dt_geometry, gt_geometry, gt_crowd,
                     gt_area, ranges, thresholds, iou_type, match):  # fmt: skip
    """Fill ``match`` (A, T, N) for every pair that has detections and ground truth."""
    if not len(dt_pair) or not len(gt_pair):
        return
    dt_start = np.r_[0, np.flatnonzero(np.diff(dt_pair)) + 1]
    gt_start = np.r_[0, np.flatnonzero(np.diff(gt_pair)) + 1]
    dt_keys, gt_keys = dt_pair[dt_start], gt_pair[gt_start]
    dt_end = np.r_[dt_start[1:], len(dt_pair)]
    gt_end = np.r_[gt_start[1:], len(gt_pair)]
    common, di, gi = np.intersect1d(dt_keys, gt_keys, assume_unique=True, return_indices=True)
    batches = defaultdict(list)
    for p in range(len(common)):
        d0, d1 = dt_start[di[p]], dt_end[di[p]]
        g0, g1 = gt_start[gi[p]], gt_end[gi[p]]
        batches[_size_class(d1 - d0), _size_class(g1 - g0)].append((d0, d1, g0, g1))
    gt_ignore = (
        gt_crowd[None, :] | (gt_area[None, :] < ranges[:, :1]) | (gt_area[None, :] > ranges[:, 1:])
    )
    # at most ~4M booleans per step of a batch
    per_pair = len(ranges) * len(thresholds)
    for (dp, gp), items in batches.items():
        chunk = max(1, 4_000_000 // (per_pair * gp))
        for c in range(0, len(items), chunk):
            part = items[c : c + chunk]
            ious = np.full((len(part), dp, gp), -1.0)
            ignore = np.ones((len(part), len(ranges), gp), dtype=bool)
            crowd = np.zeros((len(part), gp), dtype=bool)
            for p, (d0, d1, g0, g1) in enumerate(part):
                g = gt_rows[g0:g1]
                ious[p, : d1 - d0, : g1 - g0] = iou_matrix(
                    dt_geometry, gt_geometry, dt_index[d0:d1], g, gt_crowd[g], iou_type
                )
                ignore[p, :, : g1 - g0] = gt_ignore[:, g]
                crowd[p, : g1 - g0] = gt_crowd[g]
            best = _greedy_match(ious, thresholds, ignore, crowd)  # (P, A, T, dp) local index
            for p, (d0, d1, g0, g1) in enumerate(part):
                local = best[p, :, :, : d1 - d0]
                match[:, :, d0:d1] = np.where(local >= 0, gt_rows[g0:g1][np.maximum(local, 0)], -1)


def _greedy_match(ious, thresholds, gt_ignore, crowd):
    """COCOeval.evaluateImg's matching loop for a batch of pairs, all area ranges and thresholds.

    ious (P, D, G), padded with -1; gt_ignore (P, A, G); crowd (P, G). For a detection (in score
    order), COCOeval scans the ground truth, the not-ignored first, and keeps the last of those
    with the highest IoU >= threshold; only when no not-ignored ground truth qualifies does it
    take an ignored one, the same way. Matched ground truth is taken, except crowd.
    Returns (P, A, T, D): the matched ground truth (0..G-1) or -1.
    """
    num_pairs, num_dt, num_gt = ious.shape
    num_ranges, num_thresholds = gt_ignore.shape[1], len(thresholds)
    shape = (num_pairs, num_ranges, num_thresholds, num_gt)
    taken = np.zeros(shape, dtype=bool)
    ignored = gt_ignore[:, :, None, :]
    reusable = crowd[:, None, None, :]
    best = np.full((num_pairs, num_ranges, num_thresholds, num_dt), -1, dtype=np.int64)
    thr = thresholds[None, None, :, None]
    for d in range(num_dt):
        row = ious[:, d, :][:, None, None, :]  # (P, 1, 1, G)
        candidate = (row >= thr) & (~taken | reusable)
        if not candidate.any():
            continue
        preferred = candidate & ~ignored
        group = np.where(preferred.any(axis=3, keepdims=True), preferred, candidate & ignored)
        found = group.any(axis=3)
        values = np.where(group, row, -1.0)
        choice = num_gt - 1 - np.argmax(values[..., ::-1], axis=3)
        best[..., d] = np.where(found, choice, -1)
        p, a, t = np.nonzero(found)
        taken[p, a, t, choice[p, a, t]] = True
    return best


# ---- accumulation -------------------------------------------------------------------------------


@dataclass
class AccumulationTable:
    """The per-image numbers that COCO's AP and AR are accumulated from, for weighted sums."""

    num_images: int
    num_categories: int
    area_labels: list
    num_thresholds: int
    max_dets: tuple
    npig: np.ndarray  # (I, K, A): ground truth that is not ignored
    tp_sum: np.ndarray  # (I, K, A): true positives summed over thresholds, maxDets[-1]
    tp_sum_all: np.ndarray  # (I, K, M): the same for area "all" at each maxDets
    # (k, a) -> (image (n,), tp (T, n), fp (T, n), fp_image (f,), fp_segment (f,)): the positions
    # that are a true positive at some threshold (or a false positive at only some), in
    # COCOeval's order, and the detections that are a false positive at every threshold, with
    # the number of positions before them.
    groups: dict


def accumulation_table(matches, *, all_label="all"):
    """The :class:`AccumulationTable` of a :class:`MatchResult`."""
    num_images, num_categories = matches.num_images, len(matches.category_ids)
    num_ranges, max_dets = len(matches.area_labels), matches.max_dets
    all_index = matches.area_labels.index(all_label)
    cells = num_images * num_categories

    def per_cell(image, category, weights=None):
        counts = np.bincount(image * num_categories + category, weights=weights, minlength=cells)
        return np.rint(counts).astype(np.int64).reshape(num_images, num_categories)

    gt_ok = matches.gt_evaluated()
    npig = np.zeros((num_images, num_categories, num_ranges), dtype=np.int64)
    tp_sum = np.zeros_like(npig)
    for a in range(num_ranges):
        rows = gt_ok & ~matches.gt_ignore(a)
        npig[:, :, a] = per_cell(matches.gt_image[rows], matches.gt_category[rows])
        tp_sum[:, :, a] = per_cell(matches.dt_image, matches.dt_category, matches.tp[a].sum(0))
    tp_sum_all = np.zeros((num_images, num_categories, len(max_dets)), dtype=np.int64)
    for m, max_det in enumerate(max_dets):
        weights = matches.tp[all_index].sum(0) * (matches.dt_position < max_det)
        tp_sum_all[:, :, m] = per_cell(matches.dt_image, matches.dt_category, weights)

    groups = {}
    fp_all = ~matches.tp & ~matches.dt_ignore
    for a in range(num_ranges):
        keep = np.flatnonzero(~matches.dt_ignore[a].all(axis=0))
        # COCOeval concatenates the images' detections in image order, then sorts stably by
        # descending score: ties go by image, then by rank within the image's pair.
        order = keep[np.lexsort((matches.dt_position[keep], matches.dt_image[keep],
                                 -matches.dt_score[keep], matches.dt_category[keep]))]  # fmt: skip
        category = matches.dt_category[order]
        bounds = np.r_[0, np.flatnonzero(np.diff(category)) + 1, len(order)]
        for s, e in zip(bounds[:-1], bounds[1:]):
            rows = order[s:e]
            tp, fp = matches.tp[a][:, rows], fp_all[a][:, rows]
            positions = tp.any(axis=0)
            if not positions.any():
                continue
            last = int(np.flatnonzero(positions)[-1]) + 1
            rows, tp, fp, positions = rows[:last], tp[:, :last], fp[:, :last], positions[:last]
            always_fp = fp.all(axis=0)
            positions |= ~always_fp & fp.any(axis=0)
            segment = np.cumsum(positions) - positions  # positions before each row
            image = matches.dt_image[rows]
            groups[int(category[s]), a] = (
                image[positions],
                tp[:, positions],
                fp[:, positions],
                image[always_fp],
                segment[always_fp],
            )
    return AccumulationTable(
        num_images=num_images,
        num_categories=num_categories,
        area_labels=list(matches.area_labels),
        num_thresholds=len(matches.iou_thresholds),
        max_dets=tuple(max_dets),
        npig=npig,
        tp_sum=tp_sum,
        tp_sum_all=tp_sum_all,
        groups=groups,
    )


@dataclass
class WeightedSums:
    """For each weight vector, what COCO's summary metrics are means of."""

    precision_sum: np.ndarray  # (B, T, K, A): interpolated precision summed over recall thresholds
    npig: np.ndarray  # (B, K, A)
    tp_sum: np.ndarray  # (B, K, A), summed over thresholds, maxDets[-1]
    tp_sum_all: np.ndarray  # (B, K, M), area "all"


def weighted_sums(table, weights, *, max_elements=2_000_000, threads=None):
    """:class:`WeightedSums` for each row of ``weights`` ((B, I) image counts; ones: the plain
    evaluation). Counts are exact; precision is computed as COCOeval computes it, in float64.
    ``threads``: worker threads over the (category, area) groups (default: the usable cores,
    at most 4; numpy releases the GIL in its loops)."""
    weights = np.asarray(weights)
    num_weights = weights.shape[0]
    shape = (num_weights, table.num_categories, len(table.area_labels))
    w = weights.astype(np.float64)

    def total(x):
        return np.rint(w @ x.reshape(table.num_images, -1)).astype(np.int64)

    npig = total(table.npig).reshape(shape)
    tp_sum = total(table.tp_sum).reshape(shape)
    tp_sum_all = total(table.tp_sum_all).reshape(num_weights, table.num_categories, -1)
    precision_sum = np.zeros((num_weights, table.num_thresholds) + shape[1:], dtype=np.float64)
    weights = weights.astype(np.int32)
    tasks = []
    for (k, a), group in table.groups.items():
        n = len(group[0]) * table.num_thresholds + len(group[3])
        block = max(1, min(num_weights, max_elements // max(1, n)))
        tasks += [(k, a, group, start, min(num_weights, start + block))
                  for start in range(0, num_weights, block)]  # fmt: skip

    def run(task):
        k, a, group, start, stop = task
        precision_sum[start:stop, :, k, a] = _precision_sums(
            weights[start:stop], group, npig[start:stop, k, a]
        )

    threads = _default_threads() if threads is None else threads
    if threads > 1 and len(tasks) > 1:
        from concurrent.futures import ThreadPoolExecutor

        # the largest tasks first, so that no thread is left with a big one at the end
        tasks.sort(key=lambda t: -(len(t[2][0]) * (t[4] - t[3])))
        with ThreadPoolExecutor(max_workers=threads) as pool:
            list(pool.map(run, tasks))
    else:
        for task in tasks:
            run(task)
    return WeightedSums(precision_sum, npig, tp_sum, tp_sum_all)


def _default_threads():
    import os

    usable = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return max(1, min(4, usable or 1))


def _precision_sums(weights, group, npig):
    """Sum over recall thresholds of COCOeval's interpolated precision, (B, T), of one
    (category, area) group under each row of ``weights``."""
    image, tp, fp, fp_image, fp_segment = group
    num_weights, n = weights.shape[0], len(image)
    w = weights[:, image]  # (B, n)
    tp_cum = np.cumsum(w[:, None, :] * tp[None], axis=2, dtype=np.int32)  # (B, T, n)
    counted = tp | fp  # not ignored
    if (counted == counted[:1]).all():  # the usual case: ignored at no threshold or at all
        # detections counted so far, true or false positives: the same at every threshold
        seen = np.cumsum(w * counted[0], axis=1, dtype=np.int32)[:, None, :]
    else:
        seen = np.cumsum(w[:, None, :] * counted[None], axis=2, dtype=np.int32)
    if len(fp_image):
        # false positives at every threshold, counted once per stretch between positions
        starts = np.r_[0, np.flatnonzero(np.diff(fp_segment)) + 1]
        stretch = np.zeros((num_weights, n), dtype=np.int32)
        stretch[:, fp_segment[starts]] = np.add.reduceat(weights[:, fp_image], starts, axis=1)
        seen = seen + np.cumsum(stretch, axis=1, dtype=np.int32)[:, None, :]
    # COCOeval reads the envelope at the first position whose recall tp / npig reaches each
    # recall threshold: count the thresholds reached at each position (a table over the
    # integer tp values, with COCOeval's float division) and difference the counts.
    top = int(tp_cum[:, :, -1].max()) + 1
    with np.errstate(divide="ignore", invalid="ignore"):
        recall = np.arange(top, dtype=np.float64)[None, :] / npig[:, None]
    reached_at = np.searchsorted(RECALL_THRESHOLDS, recall, side="right").astype(np.int32)
    offsets = (np.arange(num_weights, dtype=np.int32) * top)[:, None, None]
    reached = np.take(reached_at, tp_cum + offsets)  # (B, T, n)
    first = np.diff(reached, axis=2, prepend=np.int32(0))
    # COCOeval: tp / (fp + tp + eps), with fp + tp the counted detections
    precision = tp_cum / (seen + np.spacing(1))
    precision = np.maximum.accumulate(precision[:, :, ::-1], axis=2)[:, :, ::-1]
    return np.einsum("btn,btn->bt", precision, first.astype(np.float64))


def summary_metrics(sums, table, *, area_keys, bucket_labels, category_names, iou_50, iou_75):
    """COCO's summary metrics (in percent) from :class:`WeightedSums`, one value per weight row:
    ``{metric: (B,) array}``, NaN where COCO has -1 (no ground truth)."""
    num_thresholds = table.num_thresholds
    num_recall = len(RECALL_THRESHOLDS)
    valid = sums.npig > 0  # (B, K, A)
    area = {label: i for i, label in enumerate(table.area_labels)}

    def ap(a, thresholds=None):
        p = sums.precision_sum[:, :, :, a]  # (B, T, K)
        count = num_thresholds
        if thresholds is not None:
            p, count = p[:, thresholds], len(thresholds)
        total = np.where(valid[:, None, :, a], p, 0.0).sum(axis=(1, 2))
        return _percent(total, valid[:, :, a].sum(axis=1) * count * num_recall)

    def ar(a, tp):
        recall = np.where(valid[:, :, a], tp / np.maximum(sums.npig[:, :, a], 1), 0.0)
        return _percent(recall.sum(axis=1), valid[:, :, a].sum(axis=1) * num_thresholds)

    out = {
        "AP": ap(area["all"]),
        "AP50": ap(area["all"], [iou_50]),
        "AP75": ap(area["all"], [iou_75]),
    }
    for name, key in area_keys.items():
        out[f"AP{key}"] = ap(area[name])
    for m, max_det in enumerate(table.max_dets):
        out[f"AR{max_det}"] = ar(area["all"], sums.tp_sum_all[:, :, m])
    for name, key in area_keys.items():
        out[f"AR{key}"] = ar(area[name], sums.tp_sum[:, :, area[name]])
    for label in bucket_labels:
        out[f"AP{label}"] = ap(area[label])
    for label in bucket_labels:
        out[f"AR{label}"] = ar(area[label], sums.tp_sum[:, :, area[label]])
    if len(category_names) > 1:
        a = area["all"]
        for k, name in enumerate(category_names):
            total = sums.precision_sum[:, :, k, a].sum(axis=1)
            out[f"AP-{name}"] = _percent(total, valid[:, k, a] * num_thresholds * num_recall)
    return out


def _percent(total, count):
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(count > 0, total / np.maximum(count, 1) * 100.0, math.nan)
