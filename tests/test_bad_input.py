"""Bad input (issue #7, part 4): each case is one clear error naming the file, id, key or value,
or a documented skip with a warning count; never a traceback from deep inside detectron2.

Datasets: lip_det.data.validation (json) and lip_det.data.mapper (images); config values:
lip_det.config.validate_lip_config and the model build in check_setup; weights: lip_det.weights.
"""

import copy
import json
import logging
import math
import os
import subprocess

import numpy as np
import pytest
import torch
from conftest import CONFIGS, PYTHON, REPO, TINY_OVERRIDES, TRAIN_NET
from detectron2.data import DatasetCatalog, DatasetFromList, MapDataset
from detectron2.data.detection_utils import read_image as detectron2_read_image
from detectron2.modeling import build_model
from detectron2.structures import Boxes, Instances
from detectron2.utils.events import EventStorage
from PIL import Image

from lip_det.checkpoint.weights import WeightsError, check_weights_file, model_tensor_shapes
from lip_det.data import (
    DatasetError,
    DatasetMapper,
    check_datasets_content,
    load_coco_dataset,
    read_image,
    register_coco_dataset,
)
from lip_det.engine import SetupError, argument_parser, check_setup, load_config, run

DEMO = str(CONFIGS / "Demo/faster_rcnn_LIP_R_18_FPN_demo.yaml")
LIP_R50 = str(CONFIGS / "COCO-Detection/faster_rcnn_LIP_R_50_FPN_1x.yaml")
CATEGORIES = [{"id": 1, "name": "plain"}, {"id": 2, "name": "dot"}, {"id": 3, "name": "bar"}]
W, H = 40, 30  # size of the test images


@pytest.fixture
def lip_det_log(caplog, monkeypatch):
    """caplog for the "lip_det" loggers, also after engine.setup() made them stop propagating."""
    logger = logging.getLogger("lip_det")
    monkeypatch.setattr(logger, "propagate", False)
    logger.addHandler(caplog.handler)
    caplog.set_level(logging.INFO, logger="lip_det")
    yield caplog
    logger.removeHandler(caplog.handler)


def _noise_png(path, size=(W, H), seed=0):
    pixels = np.random.default_rng(seed).integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)
    Image.fromarray(pixels).save(path)


def _coco(tmp_path, annotations=(), *, images=None, categories=CATEGORIES, name="ann.json"):
    """Write images 1-3 (noise PNGs of W x H) and a COCO json; returns (json_file, image_root)."""
    root = tmp_path / "images"
    root.mkdir(exist_ok=True)
    if images is None:
        images = [{"id": i, "file_name": f"{i}.png", "width": W, "height": H} for i in (1, 2, 3)]
        for image in images:
            _noise_png(root / image["file_name"], seed=image["id"])
    coco = {"images": images, "annotations": list(annotations), "categories": categories}
    json_file = tmp_path / name
    json_file.write_text(json.dumps(coco, indent=1))
    return str(json_file), str(root)


def _ann(ann_id, image_id, bbox, category_id=1):
    return {"id": ann_id, "image_id": image_id, "category_id": category_id, "bbox": bbox,
            "area": abs(bbox[2] * bbox[3]), "iscrowd": 0}  # fmt: skip


def _load_error(json_file, image_root, name="lip_test_bad"):
    with pytest.raises(DatasetError) as info:
        load_coco_dataset(json_file, image_root, name)
    return str(info.value)


def _args(*argv):
    return argument_parser().parse_args([str(a) for a in argv])


def _setup_error(*argv):
    with pytest.raises(SetupError) as info:
        check_setup(_args(*argv))
    return str(info.value)


# ---- dataset json --------------------------------------------------------------------------------


def test_malformed_json_names_the_file_line_and_column(tmp_path):
    json_file = tmp_path / "broken.json"
    json_file.write_text('{"images": [\n  {"id": 1,, "file_name": "1.png"}\n]}')
    assert _load_error(str(json_file), str(tmp_path)) == (
        f"{json_file}: not valid JSON: Expecting property name enclosed in double quotes "
        "(line 2, column 12)"
    )


def test_missing_json_is_a_setup_error_naming_it(tmp_path):
    _, image_root = _coco(tmp_path)
    message = _setup_error(
        "--config-file", DEMO, "--dataset", "lip_test_nojson_bad", tmp_path / "nope.json",
        image_root, *TINY_OVERRIDES, "OUTPUT_DIR", tmp_path / "out",
        "DATASETS.TRAIN", "('lip_test_nojson_bad',)", "DATASETS.TEST", "()",
    )  # fmt: skip
    assert message == (
        f"dataset 'lip_test_nojson_bad': annotation file not found: {tmp_path / 'nope.json'}"
    )


@pytest.mark.parametrize(
    "change, problem",
    [
        (lambda c: c.pop("categories"), "no 'categories' list (a COCO instances file has"),
        (lambda c: c.pop("images"), "no images (its 'images' list is missing or empty)"),
        (lambda c: c.update(categories=[]), "'categories' is empty"),
        (lambda c: c["images"][1].pop("height"), "image id 2 has no 'height'"),
        (lambda c: c["annotations"][0].pop("bbox"), "annotation id 7 (image id 1) has no 'bbox'"),
        (lambda c: c["annotations"][0].pop("image_id"), "annotation id 7 has no 'image_id'"),
        (lambda c: c["annotations"].append(_ann(7, 2, [1, 1, 5, 5])), "annotation id 7 (image "
         "id 2) repeats an annotation id; ids must be unique"),
        (lambda c: c["annotations"][0].update(bbox=[1, 2, 3]), "annotation id 7 (image id 1) "
         "has bbox [1, 2, 3]; expected [x, y, width, height]"),
        (lambda c: c["annotations"][0].update(bbox=[]), "annotation id 7 (image id 1) has bbox "
         "[]; expected [x, y, width, height]"),
    ],
)  # fmt: skip
def test_malformed_coco_structure_names_the_entry(tmp_path, change, problem):
    json_file, image_root = _coco(tmp_path, [_ann(7, 1, [2, 2, 10, 10])])
    coco = json.loads(open(json_file).read())
    change(coco)
    open(json_file, "w").write(json.dumps(coco))
    assert _load_error(json_file, image_root).startswith(f"{json_file}: {problem}")


def test_unknown_category_id_names_annotation_image_and_category(tmp_path):
    """detectron2 raises a bare KeyError ("Encountered category_id=9 ...") without the entry."""
    json_file, image_root = _coco(tmp_path, [_ann(6, 1, [1, 1, 9, 9]), _ann(7, 2, [2, 2, 8, 8], 9)])
    assert _load_error(json_file, image_root) == (
        f"{json_file}: annotation id 7 (image id 2) has category_id 9, which is not in "
        "'categories' (ids 1, 2, 3)"
    )


def test_unknown_category_id_is_one_line_from_train_net(tmp_path):
    """The whole path: tools/train_net.py checks the dataset before anything is built."""
    json_file, image_root = _coco(tmp_path, [_ann(7, 2, [2, 2, 8, 8], 9)])
    result = subprocess.run(
        [PYTHON, str(TRAIN_NET), "--config-file", DEMO,
         "--dataset", "my_train", json_file, image_root, *TINY_OVERRIDES,
         "OUTPUT_DIR", str(tmp_path / "out"),
         "DATASETS.TRAIN", "('my_train',)", "DATASETS.TEST", "()"],
        capture_output=True, text=True, cwd=REPO, timeout=300,
    )  # fmt: skip
    assert result.returncode == 1 and "Traceback" not in result.stderr
    assert result.stderr.strip().splitlines()[-1] == (
        f"error: {json_file}: annotation id 7 (image id 2) has category_id 9, which is not in "
        "'categories' (ids 1, 2, 3)"
    )


def test_missing_image_files_are_counted_and_named(tmp_path):
    json_file, image_root = _coco(tmp_path)
    os.remove(os.path.join(image_root, "2.png"))
    os.remove(os.path.join(image_root, "3.png"))
    assert _load_error(json_file, image_root) == (
        f"{json_file}: 2 of the 3 image files it lists do not exist under {image_root}, e.g. "
        f"{image_root}/2.png (image id 2), {image_root}/3.png (image id 3)"
    )


def test_bad_boxes_are_skipped_or_clipped_and_counted(tmp_path, lip_det_log):
    json_file, image_root = _coco(
        tmp_path,
        [
            _ann(1, 1, [5, 5, 10, 10]),  # fine
            _ann(2, 1, [5, 5, 0, 10]),  # zero width
            _ann(3, 1, [5, 5, 10, -4]),  # negative height
            _ann(4, 2, [30, 20, 20, 20]),  # partly outside: clipped to [30, 20, 10, 10]
            _ann(5, 2, [-3, 2, 5, 5]),  # partly outside: clipped to [0, 2, 2, 5]
            _ann(6, 2, [100, 100, 5, 5]),  # entirely outside
        ],
    )
    dicts = load_coco_dataset(json_file, image_root, "lip_test_boxes")
    boxes = {d["image_id"]: [a["bbox"] for a in d["annotations"]] for d in dicts}
    assert boxes == {
        1: [[5, 5, 10, 10]],
        2: [[30.0, 20.0, 10.0, 10.0], [0.0, 2.0, 2.0, 5.0]],
        3: [],
    }
    assert all("id" not in a for d in dicts for a in d["annotations"])  # as detectron2 has them
    messages = [r.getMessage() for r in lip_det_log.records if r.name.startswith("lip_det")]
    assert messages == [
        "Dataset 'lip_test_boxes': skipped 2 annotations with a non-positive (or non-finite) "
        f"width or height (annotation ids 2, 3) in {json_file}",
        "Dataset 'lip_test_boxes': skipped 1 annotations whose box lies entirely outside its "
        f"image (annotation ids 6) in {json_file}",
        "Dataset 'lip_test_boxes': clipped 2 boxes that extend beyond their image to the image "
        f"(annotation ids 4, 5) in {json_file}",
        "Dataset 'lip_test_boxes': 1 of 3 images have no annotations (image ids 3); training "
        "leaves them out while DATALOADER.FILTER_EMPTY_ANNOTATIONS is True, evaluation keeps them",
    ]


def test_images_without_annotations_fail_a_training_set_only(tmp_path):
    json_file, image_root = _coco(tmp_path, [_ann(1, 1, [5, 5, 0, 3])])  # skipped: none left
    register_coco_dataset("lip_test_empty", json_file, image_root)
    check_datasets_content([], ["lip_test_empty"])  # an evaluation set may be unannotated
    assert len(DatasetCatalog.get("lip_test_empty")) == 3  # evaluation keeps every image
    with pytest.raises(DatasetError) as info:
        check_datasets_content(["lip_test_empty"])
    assert str(info.value) == (
        f"{json_file}: none of its 3 images has a usable annotation, so dataset "
        "'lip_test_empty' has nothing to train on"
    )


# ---- image content -------------------------------------------------------------------------------


def _png16_rgb(path, rgb16):
    """A 16-bit RGB PNG (Pillow cannot write one), every pixel rgb16."""
    import struct
    import zlib

    def chunk(kind, data):
        return (
            struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
        )

    row = b"\0" + np.tile(np.array(rgb16, ">u2"), W).tobytes()
    header = struct.pack(">IIBBBBB", W, H, 16, 2, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header)
                     + chunk(b"IDAT", zlib.compress(row * H)) + chunk(b"IEND", b""))  # fmt: skip


@pytest.mark.parametrize(
    "mode, write, rgb",
    [
        ("L", lambda p: Image.new("L", (W, H), 77).save(p), (77, 77, 77)),
        ("LA", lambda p: Image.new("LA", (W, H), (77, 0)).save(p), (77, 77, 77)),
        ("1", lambda p: Image.new("1", (W, H), 1).save(p), (255, 255, 255)),
        ("P", lambda p: _palette(p, (10, 200, 30)), (10, 200, 30)),
        ("RGBA", lambda p: Image.new("RGBA", (W, H), (10, 20, 30, 0)).save(p), (10, 20, 30)),
        ("I;16", lambda p: Image.fromarray(np.full((H, W), 0xAB12, np.uint16)).save(p),
         (0xAB, 0xAB, 0xAB)),
        ("I", lambda p: Image.fromarray(np.full((H, W), 0x1234, np.int32)).save(p, "TIFF"),
         (0x12, 0x12, 0x12)),
        ("RGB", lambda p: _png16_rgb(p, (60000, 30000, 1000)), (234, 117, 3)),
    ],
)  # fmt: skip
def test_every_image_mode_reads_as_three_channel_uint8(tmp_path, mode, write, rgb):
    path = tmp_path / "image.png"
    write(path)
    assert Image.open(path).mode == mode
    for fmt, expected in (("RGB", rgb), ("BGR", rgb[::-1])):
        image = read_image(str(path), fmt)
        assert image.dtype == np.uint8 and image.shape == (H, W, 3)
        assert (image == np.array(expected, np.uint8)).all(), (fmt, image[0, 0])


def _palette(path, colour):
    image = Image.new("P", (W, H), 3)
    image.putpalette([0, 0, 0] * 3 + list(colour) + [0, 0, 0] * 252)
    image.save(path)


def test_detectron2_reads_16_bit_grayscale_as_white(tmp_path):
    """Why lip_det reads images itself: detectron2 clips 16-bit values to 255."""
    path = tmp_path / "16.png"
    Image.fromarray(np.full((H, W), 0x0400, np.uint16)).save(path)  # dark: 4 of 255
    assert (detectron2_read_image(str(path), "RGB") == 255).all()
    assert (read_image(str(path), "RGB") == 4).all()


def test_float_images_are_refused(tmp_path):
    path = tmp_path / "float.tif"
    Image.fromarray(np.full((H, W), 0.5, np.float32)).save(path)
    with pytest.raises(ValueError, match="32-bit floating-point images are not supported"):
        read_image(str(path), "RGB")


def _truncated_png(path):
    _noise_png(path, size=(200, 150))
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


@pytest.fixture
def tiny_cfg():
    return load_config(DEMO, TINY_OVERRIDES)


def test_training_skips_unreadable_images_with_a_count(tmp_path, tiny_cfg, lip_det_log):
    json_file, image_root = _coco(tmp_path, [_ann(i, i, [5, 5, 10, 10]) for i in (1, 2, 3)])
    _truncated_png(tmp_path / "images/2.png")
    (tmp_path / "images/3.png").write_text("not an image")
    dicts = load_coco_dataset(json_file, image_root, "lip_test_unreadable")
    mapper = DatasetMapper(tiny_cfg, is_train=True)
    assert mapper.max_unreadable_fraction == 0.01  # DATALOADER.MAX_UNREADABLE_FRACTION
    assert mapper(dicts[0])["image"].shape[0] == 3
    assert mapper(dicts[1]) is None
    messages = [r.getMessage() for r in lip_det_log.records if r.name == "lip_det.data.mapper"]
    assert messages[-1].startswith(f"Skipping unreadable image {image_root}/2.png (OSError: ")
    assert messages[-1].endswith("; 1 unreadable of 2 images read by this data-loader process")

    # detectron2's MapDataset maps another image instead (with lip_det.compat's fix on 3.11+)
    lenient = DatasetMapper(tiny_cfg, is_train=True)
    mapped = MapDataset(DatasetFromList(dicts[:2], copy=False), lenient)[1]
    assert mapped["image_id"] == 1 and lenient.unreadable == 1

    # a second unreadable image in the first 100 reads is more than 1 %: training stops
    with pytest.raises(DatasetError) as info:
        mapper(dicts[2])
    assert str(info.value).startswith(
        f"{image_root}/3.png: cannot read the image (UnidentifiedImageError: "
    )
    assert str(info.value).endswith(
        "; 2 unreadable of 3 images read by this data-loader process, more than "
        "DATALOADER.MAX_UNREADABLE_FRACTION = 0.01"
    )


def test_evaluation_stops_at_an_unreadable_image(tmp_path, tiny_cfg):
    json_file, image_root = _coco(tmp_path)
    _truncated_png(tmp_path / "images/1.png")
    (record, *_) = load_coco_dataset(json_file, image_root, "lip_test_unreadable_eval")
    with pytest.raises(DatasetError) as info:
        DatasetMapper(tiny_cfg, is_train=False)(record)
    message = str(info.value)
    assert message.startswith(f"{image_root}/1.png: cannot read the image (OSError: ")
    assert message.endswith(
        "an evaluation needs every image, so replace the file or remove it from the dataset"
    )


def test_training_runs_on_gray_16_bit_and_rgba_images_skipping_bad_data(tmp_path):
    """Two iterations through run(), as tools/train_net.py does: a 16-bit, a grayscale and an
    RGBA image, a zero-size box, a box to clip and a corrupt image in the training set."""
    root = tmp_path / "images"
    root.mkdir()
    Image.fromarray(np.random.default_rng(0).integers(0, 65536, (64, 80), np.uint16)).save(
        root / "16.png"
    )
    Image.new("L", (80, 64), 90).save(root / "gray.png")
    Image.new("RGBA", (80, 64), (200, 10, 10, 128)).save(root / "rgba.png")
    _truncated_png(root / "corrupt.png")
    names = ["16.png", "gray.png", "rgba.png", "corrupt.png"]
    images = [{"id": i, "file_name": n, "width": 80, "height": 64} for i, n in enumerate(names, 1)]
    annotations = [_ann(i, i, [10, 10, 20, 20], 1 + i % 3) for i in (1, 2, 3, 4)]
    annotations += [_ann(5, 1, [10, 10, 0, 5]), _ann(6, 2, [70, 50, 30, 30])]
    train_json, _ = _coco(tmp_path, annotations, images=images, name="train.json")
    val_json, _ = _coco(tmp_path, annotations[:2], images=images[:2], name="val.json")
    out = tmp_path / "out"
    results = run(
        _args("--config-file", DEMO,
              "--dataset", "lip_test_mixed_train", train_json, root,
              "--dataset", "lip_test_mixed_val", val_json, root,
              *TINY_OVERRIDES, "SOLVER.MAX_ITER", "2",
              "SOLVER.IMS_PER_BATCH", "4", "DATALOADER.MAX_UNREADABLE_FRACTION", "0.5",
              "DATASETS.TRAIN", "('lip_test_mixed_train',)",
              "DATASETS.TEST", "('lip_test_mixed_val',)", "OUTPUT_DIR", out)
    )  # fmt: skip
    assert 0 <= results["bbox"]["AP50"] <= 100 or math.isnan(results["bbox"]["AP50"])
    log = (out / "log.txt").read_text()
    assert "skipped 1 annotations with a non-positive (or non-finite) width or height" in log
    assert "clipped 1 boxes that extend beyond their image to the image" in log
    assert f"Skipping unreadable image {root}/corrupt.png (OSError: " in log
    losses = [json.loads(line) for line in (out / "metrics.json").read_text().splitlines()]
    assert math.isfinite([m for m in losses if "total_loss" in m][-1]["total_loss"])


# ---- images smaller than the backbone's stride ---------------------------------------------------


@pytest.mark.parametrize("height, width", [(8, 8), (20, 5), (1, 1)])
def test_images_smaller_than_the_stride_train_and_infer(tiny_cfg, height, width):
    """Smaller than the FPN's stride 64 (and than P6's 1 px): detectron2 pads every batch to
    MODEL.FPN's size divisibility (32) before the backbone, and LIP 3x3/2 with padding 1 pools
    even a 1x1 map, so tiny images need no special case. (The mapper resizes them to
    INPUT.MIN_SIZE_* first anyway; here they go in as they are.)"""
    torch.manual_seed(0)
    model = build_model(tiny_cfg)
    image = torch.rand(3, height, width) * 255
    box = torch.tensor([[0.0, 0.0, width * 0.8, height * 0.8]])
    instances = Instances((height, width), gt_boxes=Boxes(box), gt_classes=torch.tensor([1]))
    with EventStorage(0):
        losses = model([{"image": image, "instances": instances}])
    assert all(torch.isfinite(v) for v in losses.values()), losses
    model.eval()
    with torch.no_grad():
        (output,) = model([{"image": image, "height": height, "width": width}])
    boxes = output["instances"].pred_boxes.tensor
    assert torch.isfinite(boxes).all() and (boxes[:, 2:] <= torch.tensor([width, height])).all()


# ---- config --------------------------------------------------------------------------------------


def test_misspelled_lip_key_is_one_line():
    assert _setup_error("--config-file", LIP_R50, "MODEL.LIP.PLACE", "['stem']") == (
        "command-line overrides: Non-existent key: MODEL.LIP.PLACE"
    )


@pytest.mark.parametrize(
    "key, value, message",
    [
        ("MODEL.LIP.PLACES", "['stem', 'res3.mian']", "MODEL.LIP.PLACES entry = 'res3.mian' is not "
         "valid; choose one of ['stem', 'res3.main', 'res3.shortcut', 'res4.main', "
         "'res4.shortcut', 'res5.main', 'res5.shortcut']; did you mean 'res3.main'?"),
        ("MODEL.LIP.STEM_LOGIT", "bottleneck", "MODEL.LIP.STEM_LOGIT = 'bottleneck' is not valid; "
         "choose one of ['simplified', 'projection']"),
        ("MODEL.LIP.BLOCK_LOGIT", "botleneck", "MODEL.LIP.BLOCK_LOGIT = 'botleneck' is not valid; "
         "choose one of ['simplified', 'projection', 'bottleneck']; did you mean 'bottleneck'?"),
        ("MODEL.LIP.IMPL", "cuda", "MODEL.LIP.IMPL = 'cuda' is not valid; choose one of "
         "['auto', 'cpu', 'triton', 'aten', 'reference']"),
        ("MODEL.LIP.BOTTLENECK_WIDTH", "0", "MODEL.LIP.BOTTLENECK_WIDTH = 0 must be >= 1"),
        ("MODEL.LIP.GATE_COEFF", "-1.0", "MODEL.LIP.GATE_COEFF = -1.0 must be > 0 and finite"),
        ("MODEL.LIP.GATE_COEFF", "float('nan')", None),  # yacs reads it as a string: type error
        ("TEST.SMALL_OBJECT.BUCKET_EDGES", "[0, 16, 8]", "TEST.SMALL_OBJECT.BUCKET_EDGES: bucket "
         "edges must be strictly increasing, got [0.0, 16.0, 8.0]"),
        ("TEST.SMALL_OBJECT.ENGINE", "fastest", "TEST.SMALL_OBJECT.ENGINE = 'fastest' is not "
         "valid; choose one of ['official', 'fast']; did you mean 'fast'?"),
        ("TEST.SMALL_OBJECT.MAX_DETS", "[1, 10, 300]", "TEST.SMALL_OBJECT.MAX_DETS ends with 300, "
         "but TEST.DETECTIONS_PER_IMAGE = 100 keeps fewer detections per image"),
        ("MODEL.RESNETS.DEPTH", "42", "cannot build the model: MODEL.RESNETS.DEPTH = 42 is not "
         "valid; choose one of [18, 34, 50, 101, 152]"),
        ("MODEL.BACKBONE.NAME", "build_lip_resnet_fpn_backbon", "cannot build the model: No "
         "object named 'build_lip_resnet_fpn_backbon' found in 'BACKBONE' registry!"),
    ],
)  # fmt: skip
def test_invalid_values_are_one_setup_error_before_anything_is_built(tmp_path, key, value, message):
    error = _setup_error(
        "--config-file", LIP_R50, "MODEL.DEVICE", "cpu", "MODEL.WEIGHTS", "",
        "OUTPUT_DIR", tmp_path, key, value,
    )  # fmt: skip
    if message is None:
        assert error.startswith("command-line overrides: Type mismatch") and key in error
    else:
        assert error.startswith(message)


def test_unknown_compile_backend_is_one_setup_error(tmp_path):
    error = _setup_error(
        "--config-file", LIP_R50, "MODEL.DEVICE", "cpu", "MODEL.WEIGHTS", "",
        "OUTPUT_DIR", tmp_path, "MODEL.COMPILE.ENABLED", "True",
        "MODEL.COMPILE.BACKEND", "indcutor",
    )  # fmt: skip
    assert error.startswith("MODEL.COMPILE.BACKEND = 'indcutor' is not valid; choose one of [")
    assert error.endswith("did you mean 'inductor'?")


def test_non_finite_gate_coeff_in_a_yaml(tmp_path):
    config = tmp_path / "mine.yaml"
    config.write_text(f'_BASE_: "{LIP_R50}"\nMODEL:\n  LIP:\n    GATE_COEFF: .inf\n')
    error = _setup_error(
        "--config-file", config, "MODEL.DEVICE", "cpu", "MODEL.WEIGHTS", "", "OUTPUT_DIR", tmp_path
    )
    assert error == "MODEL.LIP.GATE_COEFF = inf must be > 0 and finite"


def test_every_shipped_config_builds_on_the_meta_device():
    """check_setup builds the model on the meta device; it must work for every config."""
    from lip_det.engine import load_lazy_config

    for path in sorted(CONFIGS.rglob("*.yaml")) + sorted(CONFIGS.rglob("*.py")):
        if path.name.startswith("Base-"):
            continue
        if path.suffix == ".py":
            cfg = load_lazy_config(str(path))
        else:
            cfg = load_config(str(path))
        shapes = model_tensor_shapes(cfg)
        assert shapes and any(k.startswith("backbone.bottom_up.") for k in shapes), path


# ---- weights -------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def demo_shapes():
    return model_tensor_shapes(load_config(DEMO, TINY_OVERRIDES))


def _weights_error(path, shapes, **kwargs):
    with pytest.raises(WeightsError) as info:
        check_weights_file(path, shapes, **kwargs)
    return str(info.value)


def test_weights_that_are_not_a_checkpoint(tmp_path, demo_shapes):
    text = tmp_path / "notes.pth"
    text.write_text("hello world, this is not a checkpoint")
    assert _weights_error(text, demo_shapes) == (
        f"MODEL.WEIGHTS: {text}: not a checkpoint (neither a torch.save file nor a pickle; it "
        "starts with b'hello wo')"
    )
    truncated = tmp_path / "model.pth"
    torch.save({"model": {"w": torch.zeros(1000)}}, truncated)
    truncated.write_bytes(truncated.read_bytes()[:300])
    assert _weights_error(truncated, demo_shapes).startswith(
        f"MODEL.WEIGHTS: {truncated}: cannot be read, the file is truncated or corrupt"
    )
    misnamed = tmp_path / "model.pkl"
    torch.save({"model": {}}, misnamed)
    assert _weights_error(misnamed, demo_shapes) == (
        f"MODEL.WEIGHTS: {misnamed}: a torch.save file named .pkl; detectron2 reads .pkl files "
        "with pickle, which cannot read it: rename it to .pth"
    )


def _torchvision_resnet18_state():
    import torchvision

    with torch.device("meta"):
        names = list(torchvision.models.resnet18().state_dict())
    return {name: torch.zeros(1) for name in names}  # names are what tells the layout


@pytest.mark.parametrize(
    "state, title",
    [
        (_torchvision_resnet18_state(), "a plain torchvision ResNet"),
        ({"conv1.weight": torch.zeros(1), "maxpool.logit.conv.weight": torch.zeros(1),
          "layer2.0.bottleneck_shared.logit.conv1.weight": torch.zeros(1)},
         "a published LIP-ResNet"),
    ],
)  # fmt: skip
def test_imagenet_classification_checkpoints_need_converting(tmp_path, demo_shapes, state, title):
    path = tmp_path / "resnet.pth"
    torch.save(state, path)
    assert _weights_error(path, demo_shapes) == (
        f"MODEL.WEIGHTS: {path} is an ImageNet classification checkpoint ({title}), not a "
        "detectron2 one, so detectron2 would load none of it; convert it first (README.md, "
        f'section "Pretrained weights"): python tools/convert_lip_to_d2.py {path} '
        "weights/NAME.pkl"
    )


def test_imagenet_checkpoint_is_one_setup_error_from_check_setup(tmp_path):
    path = tmp_path / "resnet18.pth"
    torch.save(_torchvision_resnet18_state(), path)
    error = _setup_error(
        "--config-file", DEMO, *TINY_OVERRIDES, "MODEL.WEIGHTS", path, "OUTPUT_DIR", tmp_path
    )
    assert error.startswith(f"MODEL.WEIGHTS: {path} is an ImageNet classification checkpoint")


def test_weights_of_another_model(tmp_path, demo_shapes):
    # LIP-ResNet weights converted with the --prefix of a bare backbone, for a FPN model
    bare = {k.replace("backbone.bottom_up.", "backbone."): torch.zeros(s) for k, s in
            demo_shapes.items() if k.startswith("backbone.bottom_up.")}  # fmt: skip
    path = tmp_path / "bare.pth"
    torch.save({"model": bare}, path)
    assert _weights_error(path, demo_shapes) == (
        f"MODEL.WEIGHTS: none of the {len(bare)} tensors in {path} fits the model's backbone by "
        "name and shape (the file has e.g. 'backbone.res2.0.conv1.norm.bias', the model e.g. "
        "'backbone.bottom_up.res2.0.conv1.norm.bias'); it was written for another model. "
        "Backbone weights converted by tools/convert_lip_to_d2.py must have the --prefix of the "
        "model (backbone.bottom_up. under a FPN)"
    )
    # the right names with other shapes (e.g. another depth or width)
    wide = {k: torch.zeros(*s[:-1], s[-1] + 1) if s else torch.zeros(2) for k, s in
            demo_shapes.items() if k.startswith("backbone.")}  # fmt: skip
    torch.save({"model": wide}, path)
    assert "fits the model's backbone by name and shape (" in _weights_error(path, demo_shapes)


def test_partial_weights_are_fine_for_training_not_for_eval_only(tmp_path, demo_shapes):
    """Plain-ResNet weights for a LIP model: the LIP modules and the heads start fresh."""
    plain = {k: torch.zeros(s) for k, s in demo_shapes.items()
             if k.startswith("backbone.") and ".lip." not in k and "logit" not in k}  # fmt: skip
    path = tmp_path / "plain.pth"
    torch.save({"model": plain}, path)
    check_weights_file(path, demo_shapes)  # no error
    error = _weights_error(path, demo_shapes, eval_only=True)
    assert error.startswith(f"MODEL.WEIGHTS: {path} lacks ")
    assert error.endswith(
        "; --eval-only would evaluate untrained weights. Evaluate the checkpoint of a training "
        "run of this config"
    )
    # a trained model with another number of classes
    trained = {k: torch.zeros(s) for k, s in demo_shapes.items()}
    trained["roi_heads.box_predictor.cls_score.bias"] = torch.zeros(6)
    torch.save({"model": trained, "iteration": 9}, path)
    check_weights_file(path, demo_shapes)
    assert _weights_error(path, demo_shapes, eval_only=True) == (
        f"MODEL.WEIGHTS: {path} has other shapes for 1 ('roi_heads.box_predictor.cls_score.bias': "
        "(6,) in the file, (4,) in the model); --eval-only would evaluate untrained weights. "
        "Evaluate the checkpoint of a training run of this config"
    )


def test_checkpoints_with_python_objects_are_left_to_detectron2(tmp_path, demo_shapes):
    path = tmp_path / "pickled.pth"
    torch.save({"model": {}, "extra": copy.Error("x")}, path)  # any class: not weights_only
    assert check_weights_file(path, demo_shapes) is None
