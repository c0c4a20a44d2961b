"""Small generated COCO data for the evaluation tests, and an independent pycocotools reference.

The reference deliberately does not use lip_det.evaluation: it builds fresh COCOeval objects,
sets their area ranges here, and reads pycocotools' (or detectron2's) own summary statistics.
"""

import contextlib
import copy
import io
import math

import numpy as np
import pycocotools.mask as mask_util
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from lip_det.evaluation.simulated import make_synthetic_coco, make_synthetic_detections

# Non-contiguous category ids, as in COCO, so that id mapping mistakes show.
CATEGORY_IDS = {1: 3, 2: 7, 3: 11}
# sqrt(area) exactly on a bucket edge: each belongs to the bucket that starts there.
EDGE_SIZES = (8, 16, 32, 96)


def tiny_gt(num_images=24, seed=0):
    """Box ground truth covering every default bucket, with crowd boxes and edge-sized boxes."""
    gt = make_synthetic_coco(
        num_images, num_categories=3, objects_per_image=(4, 14), crowd_fraction=0.05, seed=seed
    )
    for ann in gt["annotations"]:
        ann["category_id"] = CATEGORY_IDS[ann["category_id"]]
    for cat in gt["categories"]:
        cat["id"] = CATEGORY_IDS[cat["id"]]
    for size in EDGE_SIZES:  # square boxes of area size², one per edge, on image 1
        gt["annotations"].append(
            {
                "id": len(gt["annotations"]) + 1,
                "image_id": 1,
                "category_id": 3,
                "bbox": [10.0, 10.0, float(size), float(size)],
                "area": float(size * size),
                "iscrowd": 0,
            }
        )
    return gt


def tiny_detections(gt, quality=0.7, seed=0):
    return make_synthetic_detections(gt, quality=quality, false_positives_per_image=3, seed=seed)


def tiny_segm_data(num_images=10, seed=0):
    """Ground truth and detections with RLE masks (ellipses, so mask area != box area)."""
    rng = np.random.default_rng(seed)
    height, width = 96, 128
    yy, xx = np.mgrid[:height, :width]
    gt = {"images": [], "annotations": [], "categories": [{"id": 5, "name": "blob"}]}
    results = []
    for image_id in range(1, num_images + 1):
        gt["images"].append({"id": image_id, "height": height, "width": width})
        for _ in range(int(rng.integers(3, 8))):
            radius = float(np.exp(rng.uniform(math.log(2), math.log(40))))
            cx, cy = rng.uniform(radius, width - radius), rng.uniform(radius, height - radius)
            rle = _ellipse_rle(xx, yy, cx, cy, radius, radius * 0.8)
            gt["annotations"].append(
                {
                    "id": len(gt["annotations"]) + 1,
                    "image_id": image_id,
                    "category_id": 5,
                    "segmentation": rle,
                    "area": float(mask_util.area(rle)),
                    "bbox": [float(v) for v in mask_util.toBbox(rle)],
                    "iscrowd": 0,
                }
            )
            if rng.random() < 0.8:
                shift = rng.normal(0, radius * 0.15, 2)
                found = _ellipse_rle(xx, yy, cx + shift[0], cy + shift[1], radius, radius * 0.8)
                results.append(
                    {
                        "image_id": image_id,
                        "category_id": 5,
                        "segmentation": found,
                        "bbox": [float(v) for v in mask_util.toBbox(found)],
                        "score": float(rng.uniform(0.2, 1.0)),
                    }
                )
    return gt, results


def _ellipse_rle(xx, yy, cx, cy, rx, ry):
    mask = (((xx - cx) / rx) ** 2 + ((yy - cy) / ry) ** 2 <= 1).astype(np.uint8)
    if not mask.any():  # keep at least one pixel so that every object has an area
        mask[int(np.clip(cy, 0, mask.shape[0] - 1)), int(np.clip(cx, 0, mask.shape[1] - 1))] = 1
    rle = mask_util.encode(np.asfortranarray(mask))
    rle["counts"] = rle["counts"].decode("ascii")
    return rle


def reference_stats(gt, results, iou_type="bbox", area_range=None, max_dets=None):
    """pycocotools' own 12 summary stats (in percent, -100 kept as pycocotools' -1 x 100).

    ``area_range`` replaces *every* area range of a fresh COCOeval, so stats[0] (AP) and stats[8]
    (AR at maxDets[2]) are AP and AR over that range. With ``max_dets`` not ending in 100 the
    summary is detectron2's COCOevalMaxDets (pycocotools' own summary hard-codes 100 for AP).
    """
    from detectron2.evaluation.coco_evaluation import COCOevalMaxDets

    results = copy.deepcopy(results)
    if iou_type == "segm":
        for r in results:
            r.pop("bbox", None)
    with contextlib.redirect_stdout(io.StringIO()):
        coco_gt = COCO()
        coco_gt.dataset = copy.deepcopy(gt)
        coco_gt.createIndex()
        coco_dt = coco_gt.loadRes(results)
        cls = COCOeval if max_dets is None or max_dets[-1] == 100 else COCOevalMaxDets
        cocoeval = cls(coco_gt, coco_dt, iou_type)
        if area_range is not None:
            cocoeval.params.areaRng = [list(area_range)] * 4
        if max_dets is not None:
            cocoeval.params.maxDets = list(max_dets)
        cocoeval.evaluate()
        cocoeval.accumulate()
        cocoeval.summarize()
    return [float(s) * 100 for s in cocoeval.stats]


def bucket_area_range(low, high):
    """COCOeval's closed [low², high²) for sqrt(area) in [low, high), written out independently."""
    upper = math.inf if math.isinf(high) else np.nextafter(float(high) ** 2, -math.inf)
    return [float(low) ** 2, float(upper)]
