"""
Reading images for training and evaluation: images of any bit depth, and files that cannot be
decoded.

- :func:`read_image` is detectron2's ``read_image`` (EXIF orientation, then conversion to
  ``INPUT.FORMAT``) except for images with more than 8 bits per sample. detectron2 converts a
  16-bit grayscale PNG (Pillow mode ``I;16``) or a 32-bit integer image (``I``) to RGB by clipping
  every value to 255, so a 16-bit image comes out almost white. Here they are scaled to 8 bits by
  dropping the low byte (``value >> 8``; ``I`` is clipped to 16 bits first), which is what Pillow
  itself does with 16-bit RGB PNGs. The scale is fixed, not each image's own range, so that
  brightness means the same in every image. Grayscale, palette, RGBA (alpha dropped), CMYK and
  1-bit images are converted by Pillow, as in detectron2; 32-bit float images (``F``) are refused.
- :class:`DatasetMapper` is detectron2's ``DatasetMapper`` with that reader and a policy for
  unreadable images (truncated, not an image, deleted): in training it skips the image with a
  warning that counts them (detectron2's MapDataset then maps another image) and stops with an
  error once more than ``DATALOADER.MAX_UNREADABLE_FRACTION`` of the images a data-loader process
  read were unreadable; in evaluation it stops at the first, naming the file, because the result
  would otherwise not be on the whole dataset.
"""

import copy
import logging

import numpy as np
import torch
from detectron2.config import configurable
from detectron2.data import DatasetMapper as _DatasetMapper
from detectron2.data import detection_utils as utils
from detectron2.data import transforms as T
from detectron2.data.detection_utils import _apply_exif_orientation, convert_PIL_to_numpy
from detectron2.utils.file_io import PathManager
from PIL import Image

from .validation import DatasetError

__all__ = ["DatasetMapper", "read_image"]

logger = logging.getLogger(__name__)

# Pillow's modes with more than 8 bits per sample (16-bit PNGs and TIFFs open as I;16*; older
# Pillow and 32-bit TIFFs give I).
HIGH_BIT_DEPTH_MODES = ("I;16", "I;16L", "I;16B", "I;16N", "I")
# Reads before DATALOADER.MAX_UNREADABLE_FRACTION applies as a fraction: the first 1 % of
# 100 reads may be unreadable without stopping the run, however early they come.
MIN_READS = 100


def read_image(file_name, format=None):
    """
    Read an image file into an HWC uint8 array in ``format`` (``INPUT.FORMAT``: "RGB", "BGR",
    "L", ...), as detectron2's ``read_image`` does, with images of more than 8 bits per sample
    scaled to 8 bits (see the module docstring). Raises whatever Pillow raises for a file it
    cannot decode (OSError, ValueError, ...).
    """
    with PathManager.open(file_name, "rb") as f:
        image = _apply_exif_orientation(Image.open(f))
        if image.mode in HIGH_BIT_DEPTH_MODES:
            pixels = np.clip(np.asarray(image, dtype=np.int64), 0, 65535)
            image = Image.fromarray((pixels >> 8).astype(np.uint8))  # mode "L"
        elif image.mode == "F":
            raise ValueError("32-bit floating-point images are not supported; save 8 or 16 bits")
        return convert_PIL_to_numpy(image, format)


class DatasetMapper(_DatasetMapper):
    """detectron2's ``DatasetMapper`` with :func:`read_image` and the unreadable-image policy of
    the module docstring. Counts are per data-loader process (each worker has its own copy)."""

    @configurable
    def __init__(self, is_train, *, max_unreadable_fraction=0.01, **kwargs):
        super().__init__(is_train, **kwargs)
        self.max_unreadable_fraction = max_unreadable_fraction
        self.images_read = 0
        self.unreadable = 0

    @classmethod
    def from_config(cls, cfg, is_train=True):
        ret = super().from_config(cfg, is_train)
        ret["max_unreadable_fraction"] = cfg.DATALOADER.get("MAX_UNREADABLE_FRACTION", 0.01)
        return ret

    def __call__(self, dataset_dict):
        file_name = dataset_dict["file_name"]
        self.images_read += 1
        try:
            image = read_image(file_name, format=self.image_format)
        except Exception as e:  # any failure to decode this file, whatever Pillow raised
            return self._unreadable(file_name, e)
        return self._map(copy.deepcopy(dataset_dict), image)

    def _unreadable(self, file_name, error):
        reason = f"{type(error).__name__}: {error}"
        if not self.is_train:
            raise DatasetError(
                f"{file_name}: cannot read the image ({reason}); an evaluation needs every image, "
                "so replace the file or remove it from the dataset"
            ) from error
        self.unreadable += 1
        counts = (
            f"{self.unreadable} unreadable of {self.images_read} images read by this data-loader "
            "process"
        )
        allowed = self.max_unreadable_fraction * max(self.images_read, MIN_READS)
        if self.unreadable > allowed:
            raise DatasetError(
                f"{file_name}: cannot read the image ({reason}); {counts}, more than "
                f"DATALOADER.MAX_UNREADABLE_FRACTION = {self.max_unreadable_fraction}"
            ) from error
        logger.warning(f"Skipping unreadable image {file_name} ({reason}); {counts}")
        return None  # MapDataset maps another image instead

    def _map(self, dataset_dict, image):
        # detectron2's DatasetMapper.__call__ (v0.6 and later) from its read_image call on.
        utils.check_image_size(dataset_dict, image)
        if "sem_seg_file_name" in dataset_dict:
            sem_seg_gt = utils.read_image(dataset_dict.pop("sem_seg_file_name"), "L").squeeze(2)
        else:
            sem_seg_gt = None

        aug_input = T.AugInput(image, sem_seg=sem_seg_gt)
        transforms = self.augmentations(aug_input)
        image, sem_seg_gt = aug_input.image, aug_input.sem_seg

        image_shape = image.shape[:2]  # h, w
        dataset_dict["image"] = torch.as_tensor(np.ascontiguousarray(image.transpose(2, 0, 1)))
        if sem_seg_gt is not None:
            dataset_dict["sem_seg"] = torch.as_tensor(sem_seg_gt.astype("long"))

        if self.proposal_topk is not None:
            utils.transform_proposals(
                dataset_dict, image_shape, transforms, proposal_topk=self.proposal_topk
            )

        if not self.is_train:
            dataset_dict.pop("annotations", None)
            dataset_dict.pop("sem_seg_file_name", None)
            return dataset_dict

        if "annotations" in dataset_dict:
            if self.use_instance_mask:
                # annotations whose malformed polygons validation dropped have no mask to learn
                # (counted when the dataset was loaded); box-only models keep them
                dataset_dict["annotations"] = [
                    a for a in dataset_dict["annotations"] if "segmentation" in a
                ]
            self._transform_annotations(dataset_dict, transforms, image_shape)
        return dataset_dict
