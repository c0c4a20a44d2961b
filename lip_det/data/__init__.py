"""Datasets for lip_det: command-line registration of COCO-format data, and a synthetic set."""

from .builtin import SYNTHETIC_SPLITS, register_synthetic_dataset
from .datasets import check_datasets_exist, register_coco_dataset
from .synthetic import MARKS, SyntheticSpec, generate_synthetic_coco, size_fractions

__all__ = [
    "MARKS",
    "SYNTHETIC_SPLITS",
    "SyntheticSpec",
    "check_datasets_exist",
    "generate_synthetic_coco",
    "register_coco_dataset",
    "register_synthetic_dataset",
    "size_fractions",
]
