"""Synthetic COCO-format ground truth and detections whose object sizes span every size bucket.

Used by the tests and by ``tools/benchmark_eval.py``: real datasets are too large to ship and
too slow to evaluate in a unit test, and COCO itself has few objects under 8 px.
"""

import math

import numpy as np


def make_synthetic_coco(
    num_images,
    *,
    num_categories=3,
    objects_per_image=(5, 25),
    min_size=2.0,
    max_size=300.0,
    image_size=(480, 640),
    crowd_fraction=0.02,
    seed=0,
    progress=False,
):
    """A COCO ground-truth dict with box-only annotations (``area`` = box area).

    Object sizes sqrt(w*h) are log-uniform in [min_size, max_size], so small and large objects
    are equally frequent on a log scale.

    Args:
        num_images (int): number of images (ids 1..num_images).
        objects_per_image (tuple[int, int]): inclusive range of annotations per image.
        image_size (tuple[int, int]): (height, width) of every image.
        progress (bool): show a tqdm progress bar over images.
    """
    rng = np.random.default_rng(seed)
    height, width = image_size
    images, annotations = [], []
    for image_id in _maybe_progress(range(1, num_images + 1), progress, "ground truth"):
        images.append(
            {"id": image_id, "height": height, "width": width, "file_name": f"{image_id}.jpg"}
        )
        n = int(rng.integers(objects_per_image[0], objects_per_image[1] + 1))
        sizes = np.exp(rng.uniform(math.log(min_size), math.log(max_size), n))
        aspect = np.exp(rng.uniform(math.log(0.5), math.log(2.0), n))
        w = np.minimum(sizes * np.sqrt(aspect), width - 1)
        h = np.minimum(sizes / np.sqrt(aspect), height - 1)
        x = rng.uniform(0, width - w)
        y = rng.uniform(0, height - h)
        categories = rng.integers(1, num_categories + 1, n)
        crowd = rng.random(n) < crowd_fraction
        for i in range(n):
            box = [round(float(v), 2) for v in (x[i], y[i], w[i], h[i])]
            annotations.append(
                {
                    "id": len(annotations) + 1,  # 0 would read as "unmatched" in faster-coco-eval
                    "image_id": image_id,
                    "category_id": int(categories[i]),
                    "bbox": box,
                    "area": box[2] * box[3],
                    "iscrowd": int(crowd[i]),
                }
            )
    categories = [{"id": c, "name": f"class_{c}"} for c in range(1, num_categories + 1)]
    return {"images": images, "annotations": annotations, "categories": categories}


def make_synthetic_detections(
    gt, *, quality=0.7, false_positives_per_image=5, seed=0, progress=False
):
    """COCO-format detections for ``gt``: noisy copies of some ground-truth boxes, plus clutter.

    ``quality`` in (0, 1] sets how often and how precisely an object is found; small objects are
    found less often and less precisely, as with real detectors, so every bucket gets a
    different, non-trivial AP.
    """
    rng = np.random.default_rng(seed)
    by_image = {}
    for ann in gt["annotations"]:
        by_image.setdefault(ann["image_id"], []).append(ann)
    category_ids = np.array([c["id"] for c in gt["categories"]])
    results = []
    for image in _maybe_progress(gt["images"], progress, "detections"):
        anns = by_image.get(image["id"], [])
        boxes = np.array([a["bbox"] for a in anns], dtype=np.float64).reshape(-1, 4)
        categories = np.array([a["category_id"] for a in anns], dtype=np.int64)
        n = len(anns)
        sizes = np.sqrt(boxes[:, 2] * boxes[:, 3])
        # Detection probability grows with size: ~quality/2 at 2 px, quality at 100+ px.
        found_p = quality * np.minimum(1.0, 0.4 + 0.3 * np.log10(np.maximum(sizes, 1.0)))
        found = rng.random(n) < found_p
        noise = (1.0 - quality) * 0.2 * boxes[:, [2, 3, 2, 3]] * rng.standard_normal((n, 4))
        found_boxes = boxes + noise
        found_boxes[:, 2:] = np.maximum(found_boxes[:, 2:], 1.0)
        confused = rng.random(n) >= 0.9  # one in ten found objects gets a random category
        categories = np.where(confused, rng.choice(category_ids, n), categories)
        scores = rng.uniform(0.3, 1.0, n)

        clutter = int(rng.poisson(false_positives_per_image))
        wh = np.exp(rng.uniform(math.log(2), math.log(200), (clutter, 2)))
        xy = rng.uniform(0, 1, (clutter, 2)) * (np.array([image["width"], image["height"]]) - wh)
        clutter_boxes = np.concatenate([xy, wh], axis=1)

        all_boxes = np.concatenate([found_boxes[found], clutter_boxes])
        all_categories = np.concatenate([categories[found], rng.choice(category_ids, clutter)])
        all_scores = np.concatenate([scores[found], rng.uniform(0.0, 0.6, clutter)])
        results += [
            {
                "image_id": image["id"],
                "category_id": int(c),
                "bbox": [round(float(v), 2) for v in box],
                "score": round(float(score), 4),
            }
            for box, c, score in zip(all_boxes, all_categories, all_scores)
        ]
    return results


def _maybe_progress(iterable, progress, desc):
    if not progress:
        return iterable
    from tqdm import tqdm

    return tqdm(iterable, desc=desc, unit="img")
