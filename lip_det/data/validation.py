"""
Loading COCO-format datasets with checks: one clear error for a file that cannot be used, and a
counted warning for each kind of annotation that training skips or repairs.

detectron2's ``load_coco_json`` fails deep inside pycocotools or its own loop on a malformed file
(a bare ``KeyError: 'bbox'``, ``ValueError: min() arg is an empty sequence``, a JSON error
without the file name), and silently passes boxes of zero size or outside the image on to the
mapper, which drops them without a word. :func:`load_coco_dataset` wraps it:

- errors (:class:`DatasetError`, naming the file and the entry): invalid JSON (with the parser's
  line and column), no ``images`` or ``categories``, an entry without a required field, an
  annotation whose ``category_id`` is not in ``categories``, a repeated image, annotation or
  category id (pycocotools would silently keep the last, so one image would be trained and
  evaluated with another's boxes), image files that do not exist (all are looked up at load time,
  so a wrong IMAGE_ROOT fails at once), an image whose real size (read from its header, EXIF
  orientation applied, as detectron2 reads it) differs from its ``width``/``height``;
- counted skips (one warning each, with the count and a few annotation ids): boxes with zero,
  negative or non-finite width or height, boxes entirely outside their image; boxes partly
  outside are clipped to the image and counted; malformed polygon segmentations (fewer than 6
  numbers, an odd count, non-numbers) are dropped from their annotation, whose box stays, so a
  box-only model trains on it (a mask model's mapper leaves such annotations out);
- logged: images without annotations. Training leaves them out while
  ``DATALOADER.FILTER_EMPTY_ANNOTATIONS`` is True (detectron2's default, which logs how many it
  removed); evaluation keeps them.

The checks change only the dataset dicts that training reads. Evaluation reads the ground truth
from the json itself (pycocotools), as is.
"""

import contextlib
import json
import logging
import math
import os
from collections import Counter
from concurrent.futures import ThreadPoolExecutor

import pycocotools.coco
from detectron2.data.datasets import load_coco_json
from PIL import Image

__all__ = ["DatasetError", "load_coco_dataset", "find_coco_json_problem"]

logger = logging.getLogger(__name__)

# How many ids an error or warning quotes as examples.
EXAMPLES = 5


class DatasetError(ValueError):
    """A dataset that cannot be used as it is. The message names the file and the entry."""


def _examples(ids):
    shown = ", ".join(str(i) for i in ids[:EXAMPLES])
    return shown + (", ..." if len(ids) > EXAMPLES else "")


def find_coco_json_problem(coco):
    """The first thing in the parsed COCO instances json ``coco`` that detectron2 cannot load,
    as a sentence, or None. Checks the structure, the fields detectron2 reads, category ids and
    the uniqueness of annotation ids."""
    if not isinstance(coco, dict):
        return (
            f"the top level is a {type(coco).__name__}, expected an object with 'images', "
            "'annotations' and 'categories'"
        )
    for key in ("images", "categories"):
        if key not in coco:
            return (
                f"no {key!r} list (a COCO instances file has 'images', 'annotations' and "
                "'categories')"
            )
    for key in ("images", "annotations", "categories"):
        if key in coco and not isinstance(coco[key], list):
            return f"{key!r} is a {type(coco[key]).__name__}, expected a list"
    if not coco["categories"]:
        return "'categories' is empty"
    for i, category in enumerate(coco["categories"]):
        for field in ("id", "name"):
            if not isinstance(category, dict) or field not in category:
                return f"categories[{i}] has no {field!r}"
    for i, image in enumerate(coco["images"]):
        if not isinstance(image, dict) or "id" not in image:
            return f"images[{i}] has no 'id'"
        for field in ("file_name", "height", "width"):
            if field not in image:
                return f"image id {image['id']} has no {field!r}"
    category_ids = {category["id"] for category in coco["categories"]}
    seen = set()
    for i, ann in enumerate(coco.get("annotations", [])):
        if not isinstance(ann, dict) or "id" not in ann:
            return f"annotations[{i}] has no 'id'"
        if "image_id" not in ann:
            return f"annotation id {ann['id']} has no 'image_id'"
        where = f"annotation id {ann['id']} (image id {ann['image_id']})"
        for field in ("category_id", "bbox"):
            if field not in ann:
                return f"{where} has no {field!r}"
        if ann["category_id"] not in category_ids:
            return (
                f"{where} has category_id {ann['category_id']!r}, which is not in 'categories' "
                f"(ids {_examples(sorted(category_ids, key=str))})"
            )
        if not _is_box(ann["bbox"]):
            return f"{where} has bbox {ann['bbox']!r}; expected [x, y, width, height]"
        if ann["id"] in seen:
            return f"{where} repeats an annotation id; ids must be unique"
        seen.add(ann["id"])
    return None


class _CheckedCOCO(pycocotools.coco.COCO):
    """pycocotools' COCO that checks the raw json before indexing it: indexing keeps only the
    last of entries sharing an id, and detectron2 drops a whole annotation whose polygons are
    malformed (its box too). Used by :func:`load_coco_dataset` for detectron2's loader."""

    json_file = ""

    def createIndex(self):
        data = self.dataset
        # (repeated annotation ids: detectron2 refuses them itself, see _explain_load_error)
        for key, what in (("images", "image"), ("categories", "category")):
            entries = data.get(key, []) if isinstance(data, dict) else []
            counts = Counter(e["id"] for e in entries if isinstance(e, dict) and "id" in e)
            repeated = [(i, n) for i, n in counts.items() if n > 1]
            if repeated:
                first, times = repeated[0]
                more = f" ({len(repeated)} ids repeat)" if len(repeated) > 1 else ""
                raise DatasetError(
                    f"{self.json_file}: {what} id {first!r} appears {times} times in {key!r}; ids "
                    f"must be unique{more}"
                )
        self.malformed_segmentations = []
        for ann in data.get("annotations", []) if isinstance(data, dict) else []:
            polygons = ann.get("segmentation") if isinstance(ann, dict) else None
            if not isinstance(polygons, list):  # RLE (a dict) or none
                continue
            valid = [p for p in polygons if _is_polygon(p)]
            if len(valid) != len(polygons):
                self.malformed_segmentations.append(ann.get("id"))
                if valid:
                    ann["segmentation"] = valid
                else:
                    del ann["segmentation"]
        super().createIndex()


def _is_polygon(polygon):
    return (
        isinstance(polygon, list)
        and len(polygon) >= 6
        and len(polygon) % 2 == 0
        and all(isinstance(v, (int, float)) and math.isfinite(v) for v in polygon)
    )


@contextlib.contextmanager
def _checked_coco(json_file):
    """detectron2's load_coco_json with :class:`_CheckedCOCO` as its COCO class: it imports
    ``pycocotools.coco.COCO`` when called, so that name is swapped for the call and restored.
    Yields the list the instances are recorded in."""
    created = []

    class CheckedCOCO(_CheckedCOCO):
        def __init__(self, *args, **kwargs):
            created.append(self)
            super().__init__(*args, **kwargs)

    CheckedCOCO.json_file = json_file
    original = pycocotools.coco.COCO
    pycocotools.coco.COCO = CheckedCOCO
    try:
        yield created
    finally:
        pycocotools.coco.COCO = original


def _is_box(bbox):
    return (
        isinstance(bbox, (list, tuple))
        and len(bbox) == 4
        and all(isinstance(v, (int, float)) for v in bbox)
    )


def _explain_load_error(json_file, error):
    """One line saying what is wrong with ``json_file``, which detectron2 failed to load."""
    if isinstance(error, json.JSONDecodeError):
        return (
            f"{json_file}: not valid JSON: {error.msg} (line {error.lineno}, column {error.colno})"
        )
    if isinstance(error, (OSError, UnicodeDecodeError)):
        return f"{json_file}: cannot be read ({type(error).__name__}: {error})"
    try:
        with open(json_file, encoding="utf-8") as f:
            problem = find_coco_json_problem(json.load(f))
    except (OSError, ValueError):
        problem = None
    if problem is None:  # not one of the problems we know: pass detectron2's message on
        problem = f"detectron2 cannot load it ({type(error).__name__}: {error})"
    return f"{json_file}: {problem}"


def _clip_box(bbox, width, height):
    """(x, y, w, h) of the part of XYWH ``bbox`` inside the image, or None if nothing is."""
    x, y, w, h = bbox
    x0, y0 = max(x, 0.0), max(y, 0.0)
    x1, y1 = min(x + w, float(width)), min(y + h, float(height))
    if x1 <= x0 or y1 <= y0:
        return None
    return [x0, y0, x1 - x0, y1 - y0]


def _check_annotations(dicts, json_file):
    """Skip or clip bad boxes in place; returns {kind: [annotation ids]}."""
    found = {"non-positive size": [], "outside the image": [], "clipped": []}
    for record in dicts:
        kept = []
        for obj in record["annotations"]:
            ann_id = obj.pop("id", None)  # loaded only to name it here
            where = f"annotation id {ann_id} (image id {record['image_id']})"
            if "bbox" not in obj:
                raise DatasetError(f"{json_file}: {where} has no 'bbox'")
            bbox = obj["bbox"]
            if not _is_box(bbox):
                raise DatasetError(
                    f"{json_file}: {where} has bbox {bbox!r}; expected [x, y, width, height]"
                )
            x, y, w, h = (float(v) for v in bbox)
            if not all(math.isfinite(v) for v in (x, y, w, h)) or w <= 0 or h <= 0:
                found["non-positive size"].append(ann_id)
                continue
            width, height = record["width"], record["height"]
            if x < 0 or y < 0 or x + w > width or y + h > height:
                clipped = _clip_box((x, y, w, h), width, height)
                if clipped is None:
                    found["outside the image"].append(ann_id)
                    continue
                obj["bbox"] = clipped
                found["clipped"].append(ann_id)
            kept.append(obj)
        record["annotations"] = kept
    return found


def _check_images(dicts, json_file, image_root):
    for record in dicts:
        for field in ("height", "width"):
            size = record[field]
            if not isinstance(size, (int, float)) or not size > 0:
                raise DatasetError(
                    f"{json_file}: image id {record['image_id']} has {field} {size!r}; expected "
                    "the image's size in pixels"
                )
    if "://" in os.fspath(image_root):
        return  # remote images: their reader reports them
    missing = [r for r in dicts if not os.path.isfile(r["file_name"])]
    if missing:
        shown = ", ".join(f"{r['file_name']} (image id {r['image_id']})" for r in missing[:3])
        raise DatasetError(
            f"{json_file}: {len(missing)} of the {len(dicts)} image files it lists do not exist "
            f"under {image_root}, e.g. {shown}"
        )
    _check_image_sizes(dicts, json_file)


# EXIF orientations that turn the stored image by 90 degrees (detectron2 applies them on reading)
_TRANSPOSING_ORIENTATIONS = {5, 6, 7, 8}


def _real_size(path):
    """(width, height) of the image at ``path`` as detectron2 reads it, from its header alone;
    None if the header cannot be read (the mapper then reports the file when it reads it)."""
    try:
        with Image.open(path) as image:
            width, height = image.size
            if image.getexif().get(0x0112) in _TRANSPOSING_ORIENTATIONS:
                width, height = height, width
            return width, height
    except Exception:  # any decoder failure: the image's own error comes later, counted
        return None


def _check_image_sizes(dicts, json_file):
    """detectron2 checks each image's size against the json when it reads it, mid-run
    (SizeMismatchError): check them all now. Only headers are read, on a few threads (disk
    bound): about 10 s for COCO's 118k training images on a local disk."""
    with ThreadPoolExecutor(max_workers=8) as pool:
        sizes = list(pool.map(_real_size, (r["file_name"] for r in dicts)))
    wrong = [
        (r, size)
        for r, size in zip(dicts, sizes)
        if size is not None and tuple(size) != (r["width"], r["height"])
    ]
    if wrong:
        record, (width, height) = wrong[0]
        raise DatasetError(
            f"{json_file}: image id {record['image_id']} ({record['file_name']}) is "
            f"{width}x{height} pixels but the json says width {record['width']!r}, height "
            f"{record['height']!r}; {len(wrong)} of {len(dicts)} images differ (annotations are "
            "in the json's frame: fix the json or the images)"
        )


def _log_summary(name, json_file, dicts, found):
    messages = {
        "non-positive size": "skipped {n} annotations with a non-positive (or non-finite) width "
        "or height",
        "outside the image": "skipped {n} annotations whose box lies entirely outside its image",
        "clipped": "clipped {n} boxes that extend beyond their image to the image",
        "malformed segmentation": "dropped the malformed polygon segmentation (fewer than 6 "
        "numbers, an odd count or non-numbers) of {n} annotations, keeping their boxes (a mask "
        "model leaves them out)",
    }
    for kind, message in messages.items():
        ids = found[kind]
        if ids:
            text = message.format(n=len(ids))
            logger.warning(
                f"Dataset {name!r}: {text} (annotation ids {_examples(ids)}) in {json_file}"
            )
    empty = [r["image_id"] for r in dicts if not r["annotations"]]
    if empty:
        logger.info(
            f"Dataset {name!r}: {len(empty)} of {len(dicts)} images have no annotations (image "
            f"ids {_examples(empty)}); training leaves them out while "
            "DATALOADER.FILTER_EMPTY_ANNOTATIONS is True, evaluation keeps them"
        )


def load_coco_dataset(json_file, image_root, dataset_name, *, log=True):
    """
    detectron2's ``load_coco_json(json_file, image_root, dataset_name)`` with the checks of this
    module. Raises :class:`DatasetError`; logs what it skipped and clipped (unless not ``log``).

    Returns:
        list[dict]: detectron2's dataset dicts, without the skipped annotations.
    """
    if not os.path.isfile(json_file):
        raise DatasetError(f"{json_file}: annotation file not found")
    try:
        with _checked_coco(json_file) as cocos:
            dicts = load_coco_json(
                json_file, image_root, dataset_name, extra_annotation_keys=["id"]
            )
    except DatasetError:
        raise
    except Exception as e:  # wherever detectron2 or pycocotools stumbled, say what is wrong
        raise DatasetError(_explain_load_error(json_file, e)) from e
    if not dicts:
        raise DatasetError(f"{json_file}: no images (its 'images' list is missing or empty)")
    _check_images(dicts, json_file, image_root)
    found = _check_annotations(dicts, json_file)
    found["malformed segmentation"] = [
        i for coco in cocos for i in getattr(coco, "malformed_segmentations", [])
    ]
    if log:
        _log_summary(dataset_name, json_file, dicts, found)
    return dicts
