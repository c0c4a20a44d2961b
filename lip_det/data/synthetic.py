"""
A small, seeded, synthetic COCO-format dataset of small shapes on a textured background.

It exists so that the whole pipeline (data loading, LIP backbone, training, COCO evaluation) can
be exercised in minutes on a CPU, without downloading COCO. Everything is a pure function of
:class:`SyntheticSpec`, including the random seed, so two runs with the same spec write the same
images and the same annotations, and a cached copy can be reused safely.

The layout is what detectron2's ``register_coco_instances`` expects::

    <root>/images/000000.png ...
    <root>/annotations.json      # COCO "instances" format; "info" holds the spec

Shapes are drawn as polygons, and the same polygon is the annotation's ``segmentation``, so the
data also serves Mask R-CNN. New shape classes are added to :data:`SHAPES` (a name -> polygon
function); the textured background is one function too, so either can be extended later.
"""

import dataclasses
import json
import math
import os
import shutil

import numpy as np
from PIL import Image, ImageDraw

__all__ = ["SHAPES", "SyntheticSpec", "generate_synthetic_coco"]

ANNOTATION_FILE = "annotations.json"
IMAGE_DIR = "images"
# Bump when the drawing code changes, so that caches written by older code are not reused.
GENERATOR_VERSION = 1


def _square(cx, cy, size, angle):
    return _regular_polygon(cx, cy, size / math.sqrt(2), 4, angle + math.pi / 4)


def _triangle(cx, cy, size, angle):
    return _regular_polygon(cx, cy, size / 2, 3, angle)


def _disk(cx, cy, size, angle):
    # 16 vertices: indistinguishable from a circle at these sizes, and a valid COCO polygon.
    return _regular_polygon(cx, cy, size / 2, 16, angle)


def _regular_polygon(cx, cy, radius, n, angle):
    return [
        (cx + radius * math.cos(angle + 2 * math.pi * k / n),
         cy + radius * math.sin(angle + 2 * math.pi * k / n))
        for k in range(n)
    ]  # fmt: skip


# Class name -> polygon(cx, cy, size, angle) with `size` the object's nominal extent in pixels.
# Category ids follow this order (1-based, as in COCO).
SHAPES = {"square": _square, "triangle": _triangle, "disk": _disk}


@dataclasses.dataclass(frozen=True)
class SyntheticSpec:
    """Everything the generated data depends on."""

    num_images: int = 64
    height: int = 128
    width: int = 128
    # Objects per image, drawn uniformly from [min_objects, max_objects].
    min_objects: int = 1
    max_objects: int = 6
    # Nominal object extent in pixels, drawn uniformly from [min_size, max_size]: "small" in
    # COCO terms (area < 32^2) by default, which is where LIP claims its gains.
    min_size: float = 8.0
    max_size: float = 20.0
    classes: tuple = tuple(SHAPES)
    seed: int = 0

    def __post_init__(self):
        unknown = [c for c in self.classes if c not in SHAPES]
        if unknown:
            raise ValueError(f"unknown shape classes {unknown}; choose from {list(SHAPES)}")
        if not 0 < self.min_size <= self.max_size < min(self.height, self.width):
            raise ValueError(
                f"need 0 < min_size <= max_size < image side, got {self.min_size}, "
                f"{self.max_size} for {self.height}x{self.width} images"
            )
        if not 0 <= self.min_objects <= self.max_objects:
            raise ValueError("need 0 <= min_objects <= max_objects")

    def to_dict(self):
        d = dataclasses.asdict(self)
        d["classes"] = list(self.classes)
        d["generator_version"] = GENERATOR_VERSION
        return d


def _background(rng, height, width):
    """Textured background: smooth low-frequency blobs + stripes + pixel noise, so the detector
    cannot find objects by simply looking for anything that is not flat."""
    # Low-frequency colour field: a coarse random grid upsampled bilinearly.
    coarse = rng.uniform(60, 190, size=(4, 4, 3)).astype(np.uint8)
    field = np.asarray(Image.fromarray(coarse).resize((width, height), Image.BILINEAR), np.float32)
    # Stripes of random frequency and direction.
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
    theta = rng.uniform(0, math.pi)
    freq = rng.uniform(0.05, 0.25)
    stripes = 20 * np.sin(freq * (xx * math.cos(theta) + yy * math.sin(theta)))
    noise = rng.normal(0, 12, size=(height, width, 3))
    img = field + stripes[..., None] + noise
    return np.clip(img, 0, 255).astype(np.uint8)


def _place_objects(rng, spec):
    """Non-overlapping (class index, polygon) pairs, fully inside the image."""
    count = int(rng.integers(spec.min_objects, spec.max_objects + 1))
    boxes, objects = [], []
    for _ in range(count):
        for _attempt in range(20):  # rejection sampling; give up on this object if crowded
            size = rng.uniform(spec.min_size, spec.max_size)
            cx = rng.uniform(size, spec.width - size)
            cy = rng.uniform(size, spec.height - size)
            box = (cx - size, cy - size, cx + size, cy + size)  # generous: shapes + a margin
            if all(box[2] <= b[0] or b[2] <= box[0] or box[3] <= b[1] or b[3] <= box[1]
                   for b in boxes):  # fmt: skip
                break
        else:
            continue
        boxes.append(box)
        cls = int(rng.integers(len(spec.classes)))
        polygon = SHAPES[spec.classes[cls]](cx, cy, size, rng.uniform(0, 2 * math.pi))
        objects.append((cls, polygon))
    return objects


def _polygon_area(polygon):
    xs, ys = np.array(polygon).T
    return float(0.5 * abs(np.dot(xs, np.roll(ys, 1)) - np.dot(ys, np.roll(xs, 1))))


def _render(spec, index):
    """Image (H, W, 3 uint8) and its annotations for image `index` of the dataset."""
    # One generator per image, seeded from (seed, index): images do not depend on each other, so
    # changing num_images keeps the first images unchanged.
    rng = np.random.default_rng([spec.seed, index])
    img = Image.fromarray(_background(rng, spec.height, spec.width))
    draw = ImageDraw.Draw(img)
    annotations = []
    for cls, polygon in _place_objects(rng, spec):
        # Bright or dark colour, far from the background's mid-range, so shapes stay visible.
        base = rng.choice([rng.uniform(0, 40), rng.uniform(215, 255)])
        colour = tuple(int(np.clip(base + rng.normal(0, 15), 0, 255)) for _ in range(3))
        draw.polygon(polygon, fill=colour)
        xs, ys = [p[0] for p in polygon], [p[1] for p in polygon]
        x0, y0, x1, y1 = min(xs), min(ys), max(xs), max(ys)
        annotations.append(
            {
                "category_id": cls + 1,
                "bbox": [round(v, 2) for v in (x0, y0, x1 - x0, y1 - y0)],
                "segmentation": [[round(v, 2) for point in polygon for v in point]],
                "area": round(_polygon_area(polygon), 2),
                "iscrowd": 0,
            }
        )
    return np.asarray(img), annotations


def _read_cached_spec(root):
    path = os.path.join(root, ANNOTATION_FILE)
    if not os.path.isfile(path):
        return None
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f).get("info", {}).get("lip_det_synthetic")
    except (OSError, ValueError):
        return None  # a partial or corrupt file: regenerate


def generate_synthetic_coco(root, spec=None, *, overwrite=False):
    """
    Write the dataset described by ``spec`` under ``root``, unless ``root`` already holds exactly
    that dataset (same spec, same generator version) and ``overwrite`` is False.

    Returns:
        (json_file, image_root, thing_classes): what ``register_coco_instances`` needs.
    """
    spec = spec or SyntheticSpec()
    json_file = os.path.join(root, ANNOTATION_FILE)
    image_root = os.path.join(root, IMAGE_DIR)
    thing_classes = list(spec.classes)
    if not overwrite and _read_cached_spec(root) == spec.to_dict():
        return json_file, image_root, thing_classes

    if os.path.exists(json_file):
        os.remove(json_file)  # first: a run that dies below must not leave a "valid" cache
    if os.path.isdir(image_root):
        shutil.rmtree(image_root)  # images of an older spec would otherwise linger
    os.makedirs(image_root)
    images, annotations = [], []
    for index in range(spec.num_images):
        pixels, anns = _render(spec, index)
        file_name = f"{index:06d}.png"
        Image.fromarray(pixels).save(os.path.join(image_root, file_name))
        images.append(
            {"id": index + 1, "file_name": file_name, "height": spec.height, "width": spec.width}
        )
        for ann in anns:
            annotations.append({"id": len(annotations) + 1, "image_id": index + 1, **ann})

    coco = {
        "info": {"description": "lip_det synthetic shapes", "lip_det_synthetic": spec.to_dict()},
        "images": images,
        "annotations": annotations,
        "categories": [
            {"id": i + 1, "name": name, "supercategory": "shape"}
            for i, name in enumerate(thing_classes)
        ],
    }
    # Write the json last and atomically: its presence marks a complete dataset for the cache.
    tmp = json_file + ".tmp"
    with open(tmp, "w", encoding="utf-8") as f:
        json.dump(coco, f)
    os.replace(tmp, json_file)
    return json_file, image_root, thing_classes
