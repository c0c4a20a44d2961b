"""
lip_det's built-in datasets, registered in detectron2's catalogs when lip_det is imported:

- ``lip_synthetic_train`` / ``lip_synthetic_val``: the synthetic marked-tile dataset of
  :mod:`lip_det.data.synthetic` with the specs of ``make demo`` (256 / 64 images of 128 px). They
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

# name -> (folder under $DETECTRON2_DATASETS, spec). The validation seed is far from the training
# one, so that no validation image repeats a training image of a nearby seed.
SYNTHETIC_SPLITS = {
    "lip_synthetic_train": ("lip_synthetic/train", SyntheticSpec(num_images=256, seed=0)),
    "lip_synthetic_val": ("lip_synthetic/val", SyntheticSpec(num_images=64, seed=1_000_000)),
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
