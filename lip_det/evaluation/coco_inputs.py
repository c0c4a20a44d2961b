"""Reading and checking COCO-format ground truth and results, with errors that name the input.

pycocotools reports a bad results file with a bare ``AssertionError: Results do not correspond
to current coco set`` (or silently drops unknown categories); these checks say which file, which
entry and which id is wrong before any evaluation starts.
"""

import json
import logging
import math
import numbers
import os

logger = logging.getLogger(__name__)

IOU_TYPES = ("bbox", "segm")
# The field each iou_type needs in a result; COCOeval reads nothing else besides ids and score.
_GEOMETRY_FIELD = {"bbox": "bbox", "segm": "segmentation"}
_MAX_IDS_IN_MESSAGE = 5


class EvaluationInputError(ValueError):
    """Ground truth or results that cannot be evaluated; the message names the file (or source)."""


def load_json(path, *, what="JSON", progress=False):
    """Parse the JSON file at ``path``; ``what`` ("results", "ground truth") goes into errors.

    With ``progress``, a tqdm bar follows the bytes read (annotation files reach gigabytes).
    """
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise EvaluationInputError(f"{what} file {path!r} does not exist")
    try:
        with open(path, "rb") as f:
            if not progress:
                return json.load(f)
            from tqdm import tqdm

            size = os.path.getsize(path)
            desc = f"reading {os.path.basename(path)}"
            bar = {"total": size, "desc": desc, "unit": "B", "unit_scale": True, "leave": False}
            with tqdm.wrapattr(f, "read", **bar) as g:
                return json.load(g)
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise EvaluationInputError(f"{what} file {path!r} is not valid JSON: {e}") from e


def load_ground_truth(path, *, progress=False, iou_type=None):
    """A COCO ground-truth dict from ``path``, checked as strictly as ``tools/train_net.py
    --dataset`` checks a dataset (:func:`check_ground_truth`); missing ``area``/``iscrowd``
    are filled in."""
    dataset = load_json(path, what="ground truth", progress=progress)
    check_ground_truth(dataset, f"ground truth file {os.fspath(path)!r}", iou_type=iou_type)
    _fill_optional_fields(dataset["annotations"], path)
    return dataset


def check_ground_truth(dataset, source="ground truth", *, iou_type=None):
    """Raise :class:`EvaluationInputError` (``source: problem``) unless ``dataset`` is a COCO
    instances dict that can be evaluated: the checks of lip_det.data.validation (structure,
    fields detectron2 reads, category ids, unique annotation ids) plus types and values (ids
    are integers, sizes and boxes finite numbers, no repeated image or category id, every
    annotation's image listed, masks present for ``iou_type="segm"``)."""
    from lip_det.data.validation import find_coco_json_problem

    problem = (
        _id_type_problem(dataset)
        or find_coco_json_problem(dataset)
        or _ground_truth_problem(dataset, iou_type)
    )
    if problem:
        raise EvaluationInputError(f"{source}: {problem}")


def _id_type_problem(dataset):
    """Ids that are not integers (checked first: the checks after this put ids in sets)."""
    if not isinstance(dataset, dict):
        return None
    for key, fields in (
        ("images", ("id",)),
        ("categories", ("id",)),
        ("annotations", ("id", "image_id", "category_id")),
    ):
        entries = dataset.get(key)
        for i, entry in enumerate(entries if isinstance(entries, list) else []):
            for field in fields:
                if isinstance(entry, dict) and field in entry and not _is_int(entry[field]):
                    return (
                        f"{key}[{i}] has {field} {entry[field]!r} (a "
                        f"{type(entry[field]).__name__}); ids are integers"
                    )
    return None


def _ground_truth_problem(dataset, iou_type):
    if "annotations" not in dataset:
        return "no 'annotations' list"
    image_ids = set()
    for image in dataset["images"]:
        if image["id"] in image_ids:
            return f"image id {image['id']!r} appears twice in 'images'"
        image_ids.add(image["id"])
        for field in ("height", "width"):
            if not _is_number(image[field]) or not image[field] > 0:
                return (
                    f"image id {image['id']!r} has {field} {image[field]!r}; expected a size in px"
                )
    category_ids = set()
    for category in dataset["categories"]:
        if category["id"] in category_ids:
            return f"category id {category['id']!r} appears twice in 'categories'"
        category_ids.add(category["id"])
    for ann in dataset["annotations"]:
        where = f"annotation id {ann['id']!r} (image id {ann['image_id']!r})"
        if ann["image_id"] not in image_ids:
            return f"{where}: image_id {ann['image_id']!r} is not an image id in 'images'"
        bbox = ann["bbox"]
        if not all(_is_number(v) and math.isfinite(v) for v in bbox) or bbox[2] < 0 or bbox[3] < 0:
            return (
                f"{where} has bbox {bbox!r}; expected [x, y, width, height] with finite "
                "numbers and width, height >= 0"
            )
        if "area" in ann and not (_is_number(ann["area"]) and math.isfinite(ann["area"])
                                  and ann["area"] >= 0):  # fmt: skip
            return f"{where} has area {ann['area']!r}; expected a finite number >= 0"
        if "iscrowd" in ann and ann["iscrowd"] not in (0, 1):
            return f"{where} has iscrowd {ann['iscrowd']!r}; expected 0 or 1"
        if iou_type == "segm" and not _is_segmentation(ann.get("segmentation")):
            return (
                f"{where} has segmentation {_short(ann.get('segmentation'))}; segm evaluation "
                "needs polygons ([[x1, y1, x2, y2, ...]]) or RLE ({'size': [h, w], 'counts': ...})"
            )
    return None


def _is_int(value):
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def _is_number(value):
    return isinstance(value, numbers.Real) and not isinstance(value, bool)


def _is_segmentation(segm):
    if isinstance(segm, list):
        return bool(segm) and all(
            isinstance(p, list)
            and len(p) >= 6
            and all(_is_number(v) and math.isfinite(v) for v in p)  # fmt: skip
            for p in segm
        )
    if isinstance(segm, dict):
        size = segm.get("size")
        return (
            isinstance(size, list)
            and len(size) == 2
            and all(_is_int(v) and v >= 0 for v in size)
            and isinstance(segm.get("counts"), (str, bytes, list))
        )
    return False


def _fill_optional_fields(annotations, path):
    # COCOeval reads "area" (size ranges) and "iscrowd" unconditionally; some exporters omit them.
    no_area = [a for a in annotations if "area" not in a]
    for ann in no_area:
        ann["area"] = float(ann["bbox"][2] * ann["bbox"][3])
    if no_area:
        logger.warning(
            f"{path}: {len(no_area)} annotations have no 'area'; using their box area (w*h)"
        )
    for ann in annotations:
        ann.setdefault("iscrowd", 0)


def load_results(path, *, progress=False):
    """The list of detections in a COCO results file.

    Accepts a JSON list of detections (detectron2's ``coco_instances_results.json``, mmdetection's
    ``*.bbox.json``) or a COCO-style object whose ``annotations`` carry scores.
    """
    results = load_json(path, what="results", progress=progress)
    if isinstance(results, dict) and isinstance(results.get("annotations"), list):
        results = results["annotations"]
    if not isinstance(results, list):
        raise EvaluationInputError(
            f"results file {path!r} must hold a JSON list of detections (or an object with an "
            f"'annotations' list), not a {type(results).__name__}"
        )
    return results


def check_results(results, coco_gt, iou_type, *, source="results"):
    """Raise :class:`EvaluationInputError` unless every detection can be evaluated against
    ``coco_gt`` (a COCO API object): required fields present and of the right type (integer
    ids, a finite score, a box of four finite numbers with width and height >= 0, a mask for
    segm), image and category ids known.

    ``source`` names the results in messages (a file path, a run name); values are shown with
    ``repr``, so that ``'2'`` and ``2`` differ.
    """
    if iou_type not in IOU_TYPES:
        raise ValueError(f"iou_type {iou_type!r} is not supported; choose one of {IOU_TYPES}")
    if not isinstance(results, list):
        raise EvaluationInputError(
            f"{source}: expected a list of detections, not a {type(results).__name__}"
        )
    required = ("image_id", "category_id", "score", _GEOMETRY_FIELD[iou_type])
    for i, result in enumerate(results):
        if not isinstance(result, dict) or any(k not in result for k in required):
            raise EvaluationInputError(
                f"{source}: detection #{i} must be an object with {', '.join(required)} "
                f"for {iou_type} evaluation; got {_short(result)}"
            )
        problem = _detection_problem(result, iou_type)
        if problem:
            raise EvaluationInputError(f"{source}: detection #{i} {problem}")
    _check_ids(results, "image_id", set(coco_gt.getImgIds()), "image", source)
    _check_ids(results, "category_id", set(coco_gt.getCatIds()), "category", source)


def _detection_problem(result, iou_type):
    for field in ("image_id", "category_id"):
        if not _is_int(result[field]):
            return (
                f"has {field} {result[field]!r} (a {type(result[field]).__name__}); ids are "
                "integers"
            )
    score = result["score"]
    if not _is_number(score) or not math.isfinite(score):
        return f"has score {score!r}; expected a finite number"
    if iou_type == "bbox":
        bbox = result["bbox"]
        if (
            not isinstance(bbox, (list, tuple))
            or len(bbox) != 4
            or not all(_is_number(v) and math.isfinite(v) for v in bbox)
            or bbox[2] < 0
            or bbox[3] < 0
        ):
            return (
                f"has bbox {_short(bbox)}; expected [x, y, width, height] with finite numbers "
                "and width, height >= 0"
            )
    elif not _is_segmentation(result["segmentation"]):
        return (
            f"has segmentation {_short(result['segmentation'])}; expected RLE "
            "({'size': [h, w], 'counts': ...}) or polygons"
        )
    return None


def _check_ids(results, field, known, kind, source):
    unknown = sorted({r[field] for r in results} - known, key=str)
    if unknown:
        shown = ", ".join(repr(i) for i in unknown[:_MAX_IDS_IN_MESSAGE])
        hidden = len(unknown) - _MAX_IDS_IN_MESSAGE
        more = f" and {hidden} more" if hidden > 0 else ""
        raise EvaluationInputError(
            f"{source}: {field} {shown}{more} not in the ground truth "
            f"({len(known)} {kind} ids there) - are results and ground truth from the same "
            f"dataset split, and are category ids the dataset's (not contiguous 0..K-1)?"
        )


def _short(value, limit=120):
    try:
        text = json.dumps(value)
    except TypeError:
        text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."
