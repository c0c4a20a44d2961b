"""Reading and checking COCO-format ground truth and results, with errors that name the input.

pycocotools reports a bad results file with a bare ``AssertionError: Results do not correspond
to current coco set`` (or silently drops unknown categories); these checks say which file, which
entry and which id is wrong before any evaluation starts.
"""

import json
import logging
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


def load_ground_truth(path, *, progress=False):
    """A COCO ground-truth dict from ``path``, checked; missing ``area``/``iscrowd`` are filled."""
    dataset = load_json(path, what="ground truth", progress=progress)
    if not isinstance(dataset, dict):
        raise EvaluationInputError(
            f"ground truth file {path!r} must hold a JSON object with 'images', 'annotations' and "
            f"'categories', not a {type(dataset).__name__}"
        )
    for key in ("images", "annotations", "categories"):
        if not isinstance(dataset.get(key), list):
            raise EvaluationInputError(f"ground truth file {path!r} has no '{key}' list")
    for i, ann in enumerate(dataset["annotations"]):
        missing = [k for k in ("id", "image_id", "category_id", "bbox") if k not in ann]
        if missing:
            raise EvaluationInputError(
                f"ground truth file {path!r}: annotation #{i} has no {', '.join(missing)}"
            )
    _fill_optional_fields(dataset["annotations"], path)
    return dataset


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
    ``coco_gt`` (a COCO API object): required fields present, image and category ids known.

    ``source`` names the results in messages (a file path, a run name).
    """
    if iou_type not in IOU_TYPES:
        raise ValueError(f"iou_type {iou_type!r} is not supported; choose one of {IOU_TYPES}")
    required = ("image_id", "category_id", "score", _GEOMETRY_FIELD[iou_type])
    for i, result in enumerate(results):
        if not isinstance(result, dict) or any(k not in result for k in required):
            raise EvaluationInputError(
                f"{source}: detection #{i} must be an object with {', '.join(required)} "
                f"for {iou_type} evaluation; got {_short(result)}"
            )
    _check_ids(results, "image_id", set(coco_gt.getImgIds()), "image", source)
    _check_ids(results, "category_id", set(coco_gt.getCatIds()), "category", source)


def _check_ids(results, field, known, kind, source):
    unknown = sorted({r[field] for r in results} - known, key=str)
    if unknown:
        shown = ", ".join(str(i) for i in unknown[:_MAX_IDS_IN_MESSAGE])
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
