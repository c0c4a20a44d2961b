"""Datasets for lip_det: command-line registration of COCO-format data with checks, reading
images of any bit depth, and a synthetic set."""

from .builtin import SYNTHETIC_SPLITS, register_synthetic_dataset
from .datasets import check_datasets_content, check_datasets_exist, register_coco_dataset
from .mapper import DatasetMapper, read_image
from .synthetic import MARKS, SyntheticSpec, generate_synthetic_coco, size_fractions
from .validation import DatasetError, load_coco_dataset

__all__ = [
    "MARKS",
    "SYNTHETIC_SPLITS",
    "DatasetError",
    "DatasetMapper",
    "SyntheticSpec",
    "check_datasets_content",
    "check_datasets_exist",
    "generate_synthetic_coco",
    "load_coco_dataset",
    "read_image",
    "register_coco_dataset",
    "register_synthetic_dataset",
    "size_fractions",
]
