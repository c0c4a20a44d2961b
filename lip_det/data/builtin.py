"""
lip_det's built-in datasets, registered in detectron2's catalogs when lip_det is imported:

- ``lip_synthetic_train`` / ``lip_synthetic_val``: the synthetic marked-tile dataset of
  :mod:`lip_det.data.synthetic` with the specs of ``make demo`` (256 / 240 images of 128 px). They
  are generated on first use into ``$DETECTRON2_DATASETS/lip_synthetic/{train,val}`` (default
  ``./datasets``, as for detectron2's built-in datasets), with a progress bar, and reused later.

So ``tools/train_net.py --config-file configs/Demo/faster_rcnn_LIP_R_18_FPN_demo.yaml`` needs no
``--dataset`` option and no download.
"""

import os

from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.data.datasets import load_coco_json

from .synthetic import SyntheticSpec, generate_synthetic_coco

__all__ = ["SYNTHETIC_SPLITS", "prepare_builtin_dataset", "register_synthetic_dataset"]

# Object sizes (longer side, px) of both splits: from 6 to 120 px in bins at the edges of the
# default size buckets of the small-object evaluation (sqrt(area) [0,8) [8,16) [16,32) [32,96)
# [96,inf)). Training is heavy in the small end (52 % of its objects under 16 px, 75 % under
# 32); the validation split draws more objects at both ends, so that every default bucket holds
# at least 100 objects (146, 167, 132, 118, 127 in its 240 images) and its AP means something.
SIZE_BINS = {"min_size": 6.0, "max_size": 120.0, "size_edges": (8.0, 16.0, 32.0, 96.0)}
TRAIN_SPEC = SyntheticSpec(
    num_images=256, seed=0, max_objects=12, size_weights=(0.1, 0.3, 0.25, 0.28, 0.07), **SIZE_BINS
)
VAL_SPEC = SyntheticSpec(
    num_images=240, seed=1_000_000, max_objects=10, size_weights=(0.12, 0.18, 0.25, 0.3, 0.15),
    **SIZE_BINS,
)  # fmt: skip

# name -> (folder under $DETECTRON2_DATASETS, spec). The validation seed is far from the training
# one, so that no validation image repeats a training image of a nearby seed.
SYNTHETIC_SPLITS = {
    "lip_synthetic_train": ("lip_synthetic/train", TRAIN_SPEC),
    "lip_synthetic_val": ("lip_synthetic/val", VAL_SPEC),
}

# name -> (root, spec) of every synthetic dataset registered in this process
_SYNTHETIC = {}


def prepare_builtin_dataset(name):
    """Generate a registered synthetic dataset if its files are not there yet (a no-op for any
    other dataset); detectron2's loaders and evaluators then find its files."""
    if name in _SYNTHETIC:
        root, spec = _SYNTHETIC[name]
        generate_synthetic_coco(root, spec)


def register_synthetic_dataset(name, root, spec):
    """Register the synthetic dataset ``spec`` under ``name``, generated into ``root`` on first
    use, with the metadata COCOEvaluator needs."""
    root = os.path.abspath(root)
    _SYNTHETIC[name] = (root, spec)

    def load():
        json_file, image_root, _ = generate_synthetic_coco(root, spec)
        return load_coco_json(json_file, image_root, name)

    DatasetCatalog.register(name, load)
    MetadataCatalog.get(name).set(
        json_file=os.path.join(root, "annotations.json"),
        image_root=os.path.join(root, "images"),
        evaluator_type="coco",
        thing_classes=list(spec.classes),
    )


def _register_all():
    datasets_root = os.getenv("DETECTRON2_DATASETS", "datasets")
    for name, (folder, spec) in SYNTHETIC_SPLITS.items():
        if name not in DatasetCatalog.list():
            register_synthetic_dataset(name, os.path.join(datasets_root, folder), spec)


_register_all()
