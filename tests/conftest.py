"""Fixtures shared by the config, training and data tests: a tiny synthetic COCO dataset on disk,
the overrides that shrink any shipped config to a CPU smoke test, and a LIP backbone config."""

import sys
from pathlib import Path

import pytest

import lip_det  # noqa: F401  (compat fixes and backbone registration before detectron2 imports)
from lip_det.data import SyntheticSpec, generate_synthetic_coco, register_coco_dataset
from lip_det.engine import get_lip_cfg

REPO = Path(__file__).resolve().parents[1]
CONFIGS = REPO / "configs"
TRAIN_NET = REPO / "tools" / "train_net.py"
PYTHON = sys.executable

# Any shipped R-CNN / RetinaNet config becomes seconds of CPU work: 64-96 px images, a few
# proposals and RoIs, in-process data loading, from scratch, 3 classes (of the synthetic marks).
TINY_OVERRIDES = [
    "MODEL.DEVICE", "cpu",
    "MODEL.WEIGHTS", "",
    "MODEL.ROI_HEADS.NUM_CLASSES", "3",
    "MODEL.RETINANET.NUM_CLASSES", "3",
    "MODEL.RPN.BATCH_SIZE_PER_IMAGE", "32",
    "MODEL.RPN.PRE_NMS_TOPK_TRAIN", "200",
    "MODEL.RPN.POST_NMS_TOPK_TRAIN", "50",
    "MODEL.RPN.PRE_NMS_TOPK_TEST", "100",
    "MODEL.RPN.POST_NMS_TOPK_TEST", "50",
    "MODEL.ROI_HEADS.BATCH_SIZE_PER_IMAGE", "16",
    "INPUT.MIN_SIZE_TRAIN", "(64,)",
    "INPUT.MAX_SIZE_TRAIN", "96",
    "INPUT.MIN_SIZE_TEST", "64",
    "INPUT.MAX_SIZE_TEST", "96",
    "SOLVER.IMS_PER_BATCH", "2",
    "DATALOADER.NUM_WORKERS", "0",
]  # fmt: skip


def lip_cfg(depth=50, name="build_lip_resnet_backbone", norm="BN", **lip):
    """A config for a LIP backbone builder: all four stages out, nothing frozen, MODEL.LIP keys
    from ``lip``."""
    cfg = get_lip_cfg()
    cfg.MODEL.BACKBONE.NAME = name
    cfg.MODEL.BACKBONE.FREEZE_AT = 0
    cfg.MODEL.RESNETS.DEPTH = depth
    cfg.MODEL.RESNETS.NORM = norm
    cfg.MODEL.RESNETS.OUT_FEATURES = ["res2", "res3", "res4", "res5"]
    cfg.MODEL.RESNETS.RES2_OUT_CHANNELS = 64 if depth < 50 else 256
    for key, value in lip.items():
        cfg.MODEL.LIP[key] = value
    return cfg


SYNTHETIC_TRAIN = "lip_test_synthetic_train"
SYNTHETIC_VAL = "lip_test_synthetic_val"


@pytest.fixture(scope="session")
def synthetic_coco(tmp_path_factory):
    """Two tiny generated splits, registered as SYNTHETIC_TRAIN / SYNTHETIC_VAL. Returns
    {split: (json_file, image_root, thing_classes)}."""
    root = tmp_path_factory.mktemp("lip_synthetic")
    spec = {"height": 96, "width": 96, "min_size": 8, "max_size": 32, "min_objects": 2,
            "classes": ("plain", "dot", "bar")}  # fmt: skip
    splits = {
        "train": generate_synthetic_coco(
            root / "train", SyntheticSpec(num_images=4, seed=0, **spec)
        ),
        "val": generate_synthetic_coco(root / "val", SyntheticSpec(num_images=2, seed=1, **spec)),
    }
    for name, split in ((SYNTHETIC_TRAIN, "train"), (SYNTHETIC_VAL, "val")):
        json_file, image_root, _ = splits[split]
        register_coco_dataset(name, json_file, image_root)
    return splits
