"""
A seeded, synthetic COCO-format detection dataset where small details decide the class.

Every object is a flat *tile* (a square or a disk, near black or near white) and its class is a
small *mark* inside it, in a contrasting colour: no mark ("plain"), a central dot ("dot"), a bar
through the centre ("bar") or two dots with a gap between them ("pair", a bar with a hole). The
tile's shape and colour carry no class information, so a detector has to resolve marks a fifth
of the object's size: 2 px on the smallest objects, where a bar and a pair differ by a 2-px gap.
The background is cluttered on purpose: a low-frequency colour field, stripes and pixel noise,
plus unannotated distractors that share the objects' local statistics (specks of the marks' size
and colours, thin lines, outlined squares and circles), so neither "a blob of extreme colour" nor
"a small speck" alone finds or classifies an object. This is where the choice of downsampling
matters.

Sizes are heavy in the small end, as in COCO: object sizes (the tile's side or diameter, which is
also the box's longer side) are drawn from size bins, by default 30 % in [8, 16) px, 30 % in
[16, 32) and 40 % in [32, 112], log-uniform within a bin. Large objects are placed first, so the
rejection sampling that keeps objects apart drops small ones only when an image is full.

Everything is a pure function of :class:`SyntheticSpec`, including the random seed, so two runs
with the same spec write byte-identical files, and a cached copy can be reused safely. The layout
is what detectron2's ``register_coco_instances`` expects::

    <root>/images/000000.png ...
    <root>/annotations.json      # COCO "instances" format; "info" holds the spec

The tile outline is the annotation's ``segmentation``, so the data also serves Mask R-CNN.
"""

import dataclasses
import json
import math
import os
import shutil

import numpy as np
from PIL import Image, ImageDraw

__all__ = ["MARKS", "SyntheticSpec", "generate_synthetic_coco", "size_fractions"]

ANNOTATION_FILE = "annotations.json"
IMAGE_DIR = "images"
# Bump when the drawing code changes, so that caches written by older code are not reused.
GENERATOR_VERSION = 2

# A mark is drawn in the tile's opposite colour; sizes are fractions of the tile's size, never
# below 2 px (a 1-px mark would vanish in the PNG's neighbours at the smallest sizes).
DOT_FRACTION = 0.24
BAR_FRACTIONS = (0.56, 0.16)  # (length, thickness)
PAIR_FRACTION = 0.18  # side of each dot, and the gap between them
MARK_CONTRAST = (0.3, 0.6)  # share of the way from the tile's colour to the opposite extreme
MARK_NOISE = 12.0  # std of the pixel noise added last, over objects and background alike


def _centred_rect(cx, cy, w, h):
    return [cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2]


def _no_mark(draw, cx, cy, size, colour, rng):
    pass


def _dot(draw, cx, cy, size, colour, rng):
    side = max(2.0, DOT_FRACTION * size)
    draw.rectangle(_centred_rect(cx, cy, side, side), fill=colour)


def _bar(draw, cx, cy, size, colour, rng):
    length, thickness = max(4.0, BAR_FRACTIONS[0] * size), max(2.0, BAR_FRACTIONS[1] * size)
    w, h = (length, thickness) if rng.random() < 0.5 else (thickness, length)
    draw.rectangle(_centred_rect(cx, cy, w, h), fill=colour)


def _pair(draw, cx, cy, size, colour, rng):
    """Two dots, one dot's side apart, along a random axis: a bar with a gap in the middle."""
    side = max(2.0, PAIR_FRACTION * size)
    dx, dy = (side, 0.0) if rng.random() < 0.5 else (0.0, side)
    for sign in (-1, 1):
        draw.rectangle(_centred_rect(cx + sign * dx, cy + sign * dy, side, side), fill=colour)


# Class name -> function drawing its mark. Category ids follow this order (1-based, as in COCO).
MARKS = {"plain": _no_mark, "dot": _dot, "bar": _bar, "pair": _pair}


@dataclasses.dataclass(frozen=True)
class SyntheticSpec:
    """Everything the generated data depends on."""

    num_images: int = 64
    height: int = 128
    width: int = 128
    # Objects per image, drawn uniformly from [min_objects, max_objects] (fewer when an image
    # has no room left).
    min_objects: int = 3
    max_objects: int = 10
    # Object size (longer box side, px) range, split into bins at size_edges; a bin is chosen
    # with size_weights (one weight per bin), then the size log-uniformly within it.
    min_size: float = 8.0
    max_size: float = 112.0
    size_edges: tuple = (16.0, 32.0)
    size_weights: tuple = (0.3, 0.3, 0.4)
    # Unannotated distractors per image, drawn uniformly from [0, max_distractors].
    max_distractors: int = 24
    classes: tuple = tuple(MARKS)
    seed: int = 0

    def __post_init__(self):
        # Specs come from JSON caches and command lines: normalise sequences to tuples.
        for name in ("size_edges", "size_weights", "classes"):
            object.__setattr__(self, name, tuple(getattr(self, name)))
        unknown = [c for c in self.classes if c not in MARKS]
        if unknown:
            raise ValueError(f"unknown classes {unknown}; choose from {list(MARKS)}")
        if self.num_images < 0 or self.height < 16 or self.width < 16:
            raise ValueError(
                f"need num_images >= 0 and images of at least 16x16 px, got {self.num_images} "
                f"images of {self.height}x{self.width}"
            )
        if not 4 <= self.min_size <= self.max_size <= min(self.height, self.width) - 4:
            raise ValueError(
                f"need 4 <= min_size <= max_size <= image side - 4, got {self.min_size}, "
                f"{self.max_size} for {self.height}x{self.width} images"
            )
        if not 0 <= self.min_objects <= self.max_objects:
            raise ValueError("need 0 <= min_objects <= max_objects")
        if list(self.size_edges) != sorted(self.size_edges):
            raise ValueError(f"size_edges must increase, got {list(self.size_edges)}")
        if len(self.size_weights) != len(self.size_edges) + 1 or min(self.size_weights) < 0:
            raise ValueError(
                f"need {len(self.size_edges) + 1} non-negative size_weights (one per bin of "
                f"size_edges {list(self.size_edges)}), got {list(self.size_weights)}"
            )
        if not self._size_bins():
            raise ValueError(
                f"no size bin of positive weight lies in [{self.min_size}, {self.max_size}]"
            )

    def _size_bins(self):
        """[(low, high, probability)] of the bins inside [min_size, max_size]."""
        edges = [self.min_size, *self.size_edges, self.max_size]
        bins = []
        for (low, high), weight in zip(zip(edges, edges[1:]), self.size_weights):
            low, high = max(low, self.min_size), min(high, self.max_size)
            if weight > 0 and low < high:
                bins.append((low, high, weight))
        total = sum(w for _, _, w in bins)
        return [(low, high, w / total) for low, high, w in bins]

    def to_dict(self):
        d = dataclasses.asdict(self)
        for name in ("size_edges", "size_weights", "classes"):
            d[name] = list(d[name])
        d["generator_version"] = GENERATOR_VERSION
        return d


# ---- drawing -------------------------------------------------------------------------------------


def _background(rng, height, width):
    """Textured background: smooth low-frequency colour field + stripes + pixel noise, so the
    detector cannot find objects by looking for anything that is not flat."""
    coarse = rng.uniform(60, 190, size=(4, 4, 3)).astype(np.uint8)
    field = np.asarray(Image.fromarray(coarse).resize((width, height), Image.BILINEAR), np.float32)
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
    theta = rng.uniform(0, math.pi)
    freq = rng.uniform(0.05, 0.25)
    stripes = 20 * np.sin(freq * (xx * math.cos(theta) + yy * math.sin(theta)))
    noise = rng.normal(0, 12, size=(height, width, 3))
    img = field + stripes[..., None] + noise
    return np.clip(img, 0, 255).astype(np.uint8)


def _extreme_colour(rng, bright):
    """A colour near black or near white (the tiles' and marks' colours, and the specks')."""
    base = rng.uniform(215, 255) if bright else rng.uniform(0, 40)
    return tuple(int(np.clip(base + rng.normal(0, 12), 0, 255)) for _ in range(3))


def _mark_colour(rng, tile):
    """Part of the way from the tile's colour to the opposite extreme: visible, but of lower
    contrast than the tile's edge against most backgrounds."""
    towards = 255.0 if np.mean(tile) < 128 else 0.0
    share = rng.uniform(*MARK_CONTRAST)
    return tuple(int(round(c + share * (towards - c))) for c in tile)


def _draw_distractors(draw, rng, spec):
    """Unannotated clutter: specks of a mark's size and colours, thin lines, and outlined squares
    and circles of an object's size (outlines only: a filled tile is always an object)."""
    for _ in range(int(rng.integers(0, spec.max_distractors + 1))):
        kind = rng.choice(["speck", "speck", "line", "outline"])
        colour = _extreme_colour(rng, bright=rng.random() < 0.5)
        x, y = rng.uniform(0, spec.width), rng.uniform(0, spec.height)
        if kind == "speck":
            side = rng.uniform(2, 5)
            draw.rectangle(_centred_rect(x, y, side, side), fill=colour)
        elif kind == "line":
            length, angle = rng.uniform(8, 40), rng.uniform(0, math.pi)
            end = (x + length * math.cos(angle), y + length * math.sin(angle))
            draw.line([(x, y), end], fill=colour, width=1)
        else:
            size = rng.uniform(spec.min_size, min(48.0, spec.max_size))
            box = _centred_rect(x, y, size, size)
            shape = draw.rectangle if rng.random() < 0.5 else draw.ellipse
            shape(box, outline=colour, width=1)


def _sample_size(rng, spec):
    bins = spec._size_bins()
    low, high, _ = bins[int(rng.choice(len(bins), p=[p for _, _, p in bins]))]
    return float(math.exp(rng.uniform(math.log(low), math.log(high))))


def _place_objects(rng, spec):
    """[(size, cx, cy)] of non-overlapping tiles fully inside the image, largest first."""
    count = int(rng.integers(spec.min_objects, spec.max_objects + 1))
    sizes = sorted((_sample_size(rng, spec) for _ in range(count)), reverse=True)
    gap = 2.0  # px between tiles, so that every box is separable
    placed = []
    for size in sizes:
        for _attempt in range(30):  # rejection sampling; drop this object if there is no room
            half = size / 2
            cx = rng.uniform(half + 1, spec.width - half - 1)
            cy = rng.uniform(half + 1, spec.height - half - 1)
            if all(
                abs(cx - ox) >= half + os_ / 2 + gap or abs(cy - oy) >= half + os_ / 2 + gap
                for os_, ox, oy in placed
            ):
                placed.append((size, cx, cy))
                break
    return placed


def _tile_polygon(cx, cy, size, disk):
    if not disk:
        h = size / 2
        return [(cx - h, cy - h), (cx + h, cy - h), (cx + h, cy + h), (cx - h, cy + h)]
    # 24 vertices: indistinguishable from PIL's ellipse at these sizes, and a valid COCO polygon.
    r = size / 2
    return [
        (cx + r * math.cos(2 * math.pi * k / 24), cy + r * math.sin(2 * math.pi * k / 24))
        for k in range(24)
    ]


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
    _draw_distractors(draw, rng, spec)
    annotations = []
    for size, cx, cy in _place_objects(rng, spec):
        cls = int(rng.integers(len(spec.classes)))
        bright = rng.random() < 0.5
        polygon = _tile_polygon(cx, cy, size, disk=rng.random() < 0.5)
        tile = _extreme_colour(rng, bright)
        draw.polygon(polygon, fill=tile)
        MARKS[spec.classes[cls]](draw, cx, cy, size, _mark_colour(rng, tile), rng)
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
    # Sensor noise over everything, marks included: a mark of 2-3 px is then a few noisy pixels.
    pixels = np.asarray(img, np.float32) + rng.normal(
        0, MARK_NOISE, size=(spec.height, spec.width, 3)
    )
    return np.clip(pixels, 0, 255).astype(np.uint8), annotations


# ---- files ---------------------------------------------------------------------------------------


def _read_cached_spec(root):
    path = os.path.join(root, ANNOTATION_FILE)
    if not os.path.isfile(path):
        return None
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f).get("info", {}).get("lip_det_synthetic")
    except (OSError, ValueError):
        return None  # a partial or corrupt file: regenerate


def generate_synthetic_coco(root, spec=None, *, overwrite=False, progress=True):
    """
    Write the dataset described by ``spec`` under ``root``, unless ``root`` already holds exactly
    that dataset (same spec, same generator version) and ``overwrite`` is False. Shows a progress
    bar while writing when ``progress``.

    Returns:
        (json_file, image_root, thing_classes): what ``register_coco_instances`` needs.
    """
    from tqdm import tqdm

    spec = spec or SyntheticSpec()
    root = os.fspath(root)
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
    bar = tqdm(
        range(spec.num_images),
        desc=f"generating {root}",
        unit="img",
        disable=not progress,
        leave=False,
    )
    for index in bar:
        pixels, anns = _render(spec, index)
        file_name = f"{index:06d}.png"
        Image.fromarray(pixels).save(os.path.join(image_root, file_name))
        images.append(
            {"id": index + 1, "file_name": file_name, "height": spec.height, "width": spec.width}
        )
        for ann in anns:
            annotations.append({"id": len(annotations) + 1, "image_id": index + 1, **ann})

    coco = {
        "info": {"description": "lip_det synthetic marks", "lip_det_synthetic": spec.to_dict()},
        "images": images,
        "annotations": annotations,
        "categories": [
            {"id": i + 1, "name": name, "supercategory": "tile"}
            for i, name in enumerate(thing_classes)
        ],
    }
    # Write the json last and atomically: its presence marks a complete dataset for the cache.
    tmp = json_file + ".tmp"
    with open(tmp, "w", encoding="utf-8") as f:
        json.dump(coco, f)
    os.replace(tmp, json_file)
    return json_file, image_root, thing_classes


def size_fractions(json_file, edges=(16, 32)):
    """Fraction of the annotations whose longer box side is under each edge (px)."""
    with open(json_file, encoding="utf-8") as f:
        longer = np.array([max(a["bbox"][2:]) for a in json.load(f)["annotations"]])
    return {edge: float((longer < edge).mean()) if len(longer) else 0.0 for edge in edges}
