"""Datasets for lip_det: command-line registration of COCO-format data, and a synthetic set."""

from .datasets import check_datasets_exist, register_coco_dataset
from .synthetic import SHAPES, SyntheticSpec, generate_synthetic_coco

__all__ = [
    "SHAPES",
    "SyntheticSpec",
    "check_datasets_exist",
    "generate_synthetic_coco",
    "register_coco_dataset",
]
