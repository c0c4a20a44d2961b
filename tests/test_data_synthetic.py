"""The synthetic small-shape dataset: deterministic from its spec, cached, valid COCO."""

import json
import os

import numpy as np
import pytest
from detectron2.data.datasets import load_coco_json
from PIL import Image

from lip_det.data import SHAPES, SyntheticSpec, generate_synthetic_coco

SMALL = SyntheticSpec(num_images=6, height=64, width=80, min_size=6, max_size=14, seed=3)


def _files(root):
    """{relative path: bytes} of everything generated under root."""
    out = {}
    for dirpath, _, names in os.walk(root):
        for name in names:
            path = os.path.join(dirpath, name)
            with open(path, "rb") as f:
                out[os.path.relpath(path, root)] = f.read()
    return out


def test_same_spec_gives_byte_identical_datasets(tmp_path):
    generate_synthetic_coco(tmp_path / "a", SMALL)
    generate_synthetic_coco(tmp_path / "b", SMALL)
    a, b = _files(tmp_path / "a"), _files(tmp_path / "b")
    assert len(a) == SMALL.num_images + 1  # the PNGs and annotations.json
    assert a == b


def test_seed_and_index_decide_each_image(tmp_path):
    generate_synthetic_coco(tmp_path / "s3", SMALL)
    generate_synthetic_coco(tmp_path / "s4", SyntheticSpec(**{**SMALL.__dict__, "seed": 4}))
    generate_synthetic_coco(tmp_path / "more", SyntheticSpec(**{**SMALL.__dict__, "num_images": 8}))
    s3, s4, more = (_files(tmp_path / d) for d in ("s3", "s4", "more"))
    images = [f"images/{i:06d}.png" for i in range(SMALL.num_images)]
    assert all(s3[name] != s4[name] for name in images)  # another seed: other images
    assert all(s3[name] == more[name] for name in images)  # more images: the first unchanged
    # images within one dataset differ from each other
    assert len({s3[name] for name in images}) == len(images)


def test_annotations_are_valid_small_objects(tmp_path):
    json_file, image_root, classes = generate_synthetic_coco(tmp_path, SMALL)
    assert classes == list(SHAPES) == ["square", "triangle", "disk"]
    with open(json_file) as f:
        coco = json.load(f)
    assert [c["id"] for c in coco["categories"]] == [1, 2, 3]
    assert len(coco["images"]) == SMALL.num_images
    assert len({a["id"] for a in coco["annotations"]}) == len(coco["annotations"])
    per_image = np.bincount([a["image_id"] for a in coco["annotations"]], minlength=7)[1:]
    assert per_image.min() >= SMALL.min_objects and per_image.max() <= SMALL.max_objects
    for ann in coco["annotations"]:
        x, y, w, h = ann["bbox"]
        assert 0 <= x and 0 <= y and x + w <= SMALL.width and y + h <= SMALL.height
        assert 0 < ann["area"] <= w * h + 1e-6  # the polygon lies inside its box
        # "small" in COCO terms, and no smaller than the triangle of the smallest size allows
        assert 2 < np.sqrt(ann["area"]) < 32
        polygon = np.array(ann["segmentation"][0]).reshape(-1, 2)
        assert polygon.min(0) == pytest.approx([x, y], abs=0.01)
        assert ann["category_id"] in (1, 2, 3) and ann["iscrowd"] == 0
    for image in coco["images"]:
        with Image.open(os.path.join(image_root, image["file_name"])) as img:
            assert img.mode == "RGB" and img.size == (SMALL.width, SMALL.height)

    # What detectron2 reads: boxes in XYWH_ABS, contiguous class ids after mapping.
    dicts = load_coco_json(json_file, image_root, "lip_test_synthetic_validity")
    assert len(dicts) == SMALL.num_images
    assert sum(len(d["annotations"]) for d in dicts) == len(coco["annotations"])


def test_shapes_are_drawn_where_annotated(tmp_path):
    """Each annotated polygon holds a flat fill (every shape is one colour) while the textured
    background never is flat: annotations mark visible objects, not shifted boxes."""
    json_file, image_root, _ = generate_synthetic_coco(tmp_path, SMALL)
    with open(json_file) as f:
        coco = json.load(f)
    checked = 0
    for image in coco["images"]:
        pixels = np.asarray(Image.open(os.path.join(image_root, image["file_name"])), np.float32)
        for ann in (a for a in coco["annotations"] if a["image_id"] == image["id"]):
            if ann["area"] < 40:  # too thin to hold a 3x3 patch around its centroid
                continue
            cx, cy = np.array(ann["segmentation"][0]).reshape(-1, 2).mean(0).round().astype(int)
            patch = pixels[cy - 1 : cy + 2, cx - 1 : cx + 2].reshape(-1, 3)
            assert patch.std(0).max() == 0
            checked += 1
        corner = pixels[:4, :4].reshape(-1, 3)  # objects keep a margin from the border
        assert corner.std(0).max() > 3
    assert checked >= SMALL.num_images


def test_cache_is_reused_only_for_the_same_spec(tmp_path):
    json_file, _, _ = generate_synthetic_coco(tmp_path, SMALL)
    stamp = os.stat(json_file).st_mtime_ns
    generate_synthetic_coco(tmp_path, SMALL)
    assert os.stat(json_file).st_mtime_ns == stamp  # reused, not rewritten

    bigger = SyntheticSpec(**{**SMALL.__dict__, "num_images": 3})
    generate_synthetic_coco(tmp_path, bigger)
    with open(json_file) as f:
        assert len(json.load(f)["images"]) == 3
    assert sorted(os.listdir(tmp_path / "images")) == ["000000.png", "000001.png", "000002.png"]

    generate_synthetic_coco(tmp_path, bigger, overwrite=True)
    assert os.stat(json_file).st_mtime_ns != stamp


def test_classes_subset_and_invalid_specs():
    assert SyntheticSpec(classes=("disk",)).classes == ("disk",)
    with pytest.raises(ValueError, match=r"unknown shape classes \['star'\]"):
        SyntheticSpec(classes=("disk", "star"))
    with pytest.raises(ValueError, match="min_size <= max_size"):
        SyntheticSpec(min_size=20, max_size=10)
    with pytest.raises(ValueError, match="min_objects <= max_objects"):
        SyntheticSpec(min_objects=5, max_objects=2)
