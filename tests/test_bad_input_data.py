"""Dataset files, round 2: repeated ids, image sizes that differ from the json, malformed
polygons. Each is found when the dataset is validated, before training or evaluation starts."""

import json
import subprocess

import numpy as np
from conftest import PYTHON, REPO, TINY_OVERRIDES, TRAIN_NET
from PIL import Image
from test_bad_input import (
    DEMO,
    H,
    W,
    _ann,
    _coco,
    _load_error,
    lip_det_log,  # noqa: F401  (a fixture)
)

from lip_det.data import load_coco_dataset


def _edit(json_file, change):
    with open(json_file) as f:
        coco = json.load(f)
    change(coco)
    with open(json_file, "w") as f:
        json.dump(coco, f)


def test_repeated_image_id_is_an_error_naming_it(tmp_path):
    """pycocotools keeps the last of two images with one id: the first image would be trained
    and evaluated with the other's boxes."""
    json_file, image_root = _coco(tmp_path, [_ann(7, 1, [2, 2, 10, 10])])
    _edit(json_file, lambda c: c["images"].append(dict(c["images"][0], file_name="2.png")))
    assert _load_error(json_file, image_root) == (
        f"{json_file}: image id 1 appears 2 times in 'images'; ids must be unique"
    )


def test_repeated_category_id_is_an_error_naming_it(tmp_path):
    json_file, image_root = _coco(tmp_path, [_ann(7, 1, [2, 2, 10, 10])])
    _edit(json_file, lambda c: c["categories"].append({"id": 2, "name": "again"}))
    assert _load_error(json_file, image_root) == (
        f"{json_file}: category id 2 appears 2 times in 'categories'; ids must be unique"
    )


def test_image_of_another_size_than_the_json_is_an_error_naming_file_and_sizes(tmp_path):
    json_file, image_root = _coco(tmp_path, [_ann(7, 1, [2, 2, 10, 10])])
    Image.fromarray(np.zeros((H + 5, W, 3), np.uint8)).save(f"{image_root}/2.png")
    assert _load_error(json_file, image_root) == (
        f"{json_file}: image id 2 ({image_root}/2.png) is {W}x{H + 5} pixels but the json says "
        f"width {W}, height {H}; 1 of 3 images differ (annotations are in the json's frame: fix "
        "the json or the images)"
    )


def test_exif_rotated_image_is_compared_as_detectron2_reads_it(tmp_path):
    """An image stored H x W with EXIF orientation 6 (turned by 90 degrees) is W x H once
    detectron2 applies the orientation: it matches a json that says W x H."""
    json_file, image_root = _coco(tmp_path, [_ann(7, 1, [2, 2, 10, 10])])
    exif = Image.Exif()
    exif[0x0112] = 6
    path = f"{image_root}/3.jpg"
    Image.fromarray(np.zeros((W, H, 3), np.uint8)).save(path, exif=exif)
    _edit(json_file, lambda c: c["images"][2].update(file_name="3.jpg"))
    assert len(load_coco_dataset(json_file, image_root, "lip_test_exif")) == 3


def test_malformed_polygons_are_dropped_counted_and_their_boxes_kept(tmp_path, lip_det_log):  # noqa: F811
    good = [[2, 2, 12, 2, 12, 12, 2, 12]]
    annotations = [
        dict(_ann(1, 1, [2, 2, 10, 10]), segmentation=good),
        dict(_ann(2, 1, [3, 3, 10, 10]), segmentation=[[3, 3, 13, 3]]),  # 4 numbers
        dict(_ann(3, 2, [4, 4, 10, 10]), segmentation=[[4, 4, 14, 4, 14]]),  # odd count
        dict(_ann(4, 2, [5, 5, 10, 10]), segmentation=[good[0], [1, 2]]),  # one of two bad
    ]
    json_file, image_root = _coco(tmp_path, annotations)
    dicts = load_coco_dataset(json_file, image_root, "lip_test_polygons")
    boxes = {a["bbox"][0]: a.get("segmentation") for d in dicts for a in d["annotations"]}
    # every box is kept (detectron2 alone drops annotations 2 and 3 whole); bad polygons go
    assert boxes == {2: good, 3: None, 4: None, 5: good}
    messages = [r.getMessage() for r in lip_det_log.records if r.name.startswith("lip_det")]
    assert any(
        "dropped the malformed polygon segmentation" in m
        and "of 3 annotations" in m
        and "annotation ids 2, 3, 4" in m
        for m in messages
    ), messages


def test_repeated_image_id_is_one_line_from_train_net(tmp_path):
    json_file, image_root = _coco(tmp_path, [_ann(7, 1, [2, 2, 10, 10])])
    _edit(json_file, lambda c: c["images"].append(dict(c["images"][0])))
    result = subprocess.run(
        [PYTHON, str(TRAIN_NET), "--config-file", DEMO,
         "--dataset", "my_train", json_file, image_root, *TINY_OVERRIDES,
         "OUTPUT_DIR", str(tmp_path / "out"),
         "DATASETS.TRAIN", "('my_train',)", "DATASETS.TEST", "()"],
        capture_output=True, text=True, cwd=REPO, timeout=300,
    )  # fmt: skip
    assert result.returncode == 1 and "Traceback" not in result.stderr
    assert result.stderr.strip().splitlines()[-1] == (
        f"error: {json_file}: image id 1 appears 2 times in 'images'; ids must be unique"
    )


def test_a_mask_model_leaves_out_annotations_without_a_polygon_a_box_model_keeps_them(tmp_path):
    from detectron2.data import transforms as T

    from lip_det.data import DatasetMapper

    good = [[2, 2, 12, 2, 12, 12, 2, 12]]
    annotations = [
        dict(_ann(1, 1, [2, 2, 10, 10]), segmentation=good),
        dict(_ann(2, 1, [3, 3, 10, 10]), segmentation=[[3, 3, 13, 3]]),
    ]
    json_file, image_root = _coco(tmp_path, annotations)
    (record,) = [
        d for d in load_coco_dataset(json_file, image_root, "lip_test_m") if d["image_id"] == 1
    ]
    common = {"is_train": True, "augmentations": [T.NoOpTransform()], "image_format": "RGB"}
    masks = DatasetMapper(**common, use_instance_mask=True, instance_mask_format="polygon")
    boxes = DatasetMapper(**common, use_instance_mask=False)
    assert len(masks(dict(record))["instances"]) == 1
    assert len(boxes(dict(record))["instances"]) == 2
