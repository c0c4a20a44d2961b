"""
Registering COCO-format datasets by name, and checking that a config's datasets can be loaded.

detectron2 registers its built-in datasets (coco_2017_train, ...) on import, under
``$DETECTRON2_DATASETS``; any other COCO-format dataset is registered here from a name, a json
file and an image folder (``tools/train_net.py --dataset NAME JSON_FILE IMAGE_ROOT``).
Registries are per process, so this runs in every worker, before the data loaders are built.
"""

import os

from detectron2.data import DatasetCatalog, MetadataCatalog

from .builtin import prepare_builtin_dataset
from .validation import DatasetError, load_coco_dataset

__all__ = ["register_coco_dataset", "check_datasets_exist", "check_datasets_content"]

# Names registered through register_coco_dataset (anything else came from detectron2's builtins
# or from user code); used to word the error when files are missing.
_REGISTERED_HERE = set()


def register_coco_dataset(name, json_file, image_root, thing_classes=None):
    """
    Register a COCO "instances" json + image folder as dataset ``name`` (with
    ``evaluator_type="coco"`` and the json as ``json_file`` metadata, as COCOEvaluator expects),
    as detectron2's ``register_coco_instances`` does, but loaded by
    :func:`lip_det.data.validation.load_coco_dataset`, which checks it.

    Registering the same name with the same files again is a no-op, so callers do not need to
    know whether this process already did it (the main process checks before ``launch``, which
    runs the workers in the same process when there is one). Registering a name that exists with
    other files is an error: silently keeping either would train on the wrong data.
    """
    json_file, image_root = os.path.abspath(json_file), os.path.abspath(image_root)
    if name in DatasetCatalog.list():
        meta = MetadataCatalog.get(name)
        if (meta.get("json_file"), meta.get("image_root")) == (json_file, image_root):
            return
        raise ValueError(
            f"dataset {name!r} is already registered with json_file={meta.get('json_file')!r}, "
            f"image_root={meta.get('image_root')!r}; give this one another name"
        )
    metadata = {"thing_classes": list(thing_classes)} if thing_classes else {}
    DatasetCatalog.register(name, lambda: load_coco_dataset(json_file, image_root, name))
    MetadataCatalog.get(name).set(
        json_file=json_file, image_root=image_root, evaluator_type="coco", **metadata
    )
    _REGISTERED_HERE.add(name)


def _missing_file_message(name, what, path):
    message = f"dataset {name!r}: {what} not found: {path}"
    if name in _REGISTERED_HERE:
        return message
    # detectron2's builtins read $DETECTRON2_DATASETS once, when detectron2.data is imported.
    root = os.environ.get("DETECTRON2_DATASETS")
    where = f"is {root!r}" if root is not None else "is not set, so it defaults to ./datasets"
    return (
        f"{message}\ndetectron2 looks for its built-in datasets under $DETECTRON2_DATASETS, which "
        f"{where} (from {os.getcwd()}). Set it to the folder that holds coco/ (the layout of "
        "detectron2's datasets/README.md), or register your copy with --dataset NAME JSON_FILE "
        "IMAGE_ROOT."
    )


def check_datasets_exist(names):
    """
    Raise FileNotFoundError (or KeyError for a name nobody registered) naming the dataset and the
    missing path, before any model is built, instead of deep inside the data loader.
    """
    registered = set(DatasetCatalog.list())
    for name in names:
        prepare_builtin_dataset(name)  # lip_det's synthetic sets are written on first use
        if name not in registered:
            raise KeyError(
                f"dataset {name!r} is not registered. Register a COCO-format dataset with "
                f"--dataset {name} JSON_FILE IMAGE_ROOT, or use one of detectron2's built-in "
                "names (e.g. coco_2017_train, coco_2017_val)."
            )
        meta = MetadataCatalog.get(name)
        for what, key, exists in (
            ("annotation file", "json_file", os.path.isfile),
            ("image folder", "image_root", os.path.isdir),
        ):
            path = meta.get(key)
            if path is not None and "://" not in path and not exists(path):
                raise FileNotFoundError(_missing_file_message(name, what, path))


def check_datasets_content(train_names, test_names=()):
    """
    Load the datasets registered by :func:`register_coco_dataset` among the given names with all
    their checks (see lip_det.data.validation), and make sure each training set has at least one
    annotated image. Raises DatasetError. Warnings about skipped annotations are left to the
    loads that follow in the training processes, which log them. Other datasets (detectron2's
    built-in ones) are not loaded here.
    """
    for name in dict.fromkeys([*train_names, *test_names]):  # in order, once each
        if name not in _REGISTERED_HERE:
            continue
        meta = MetadataCatalog.get(name)
        dicts = load_coco_dataset(meta.json_file, meta.image_root, name, log=False)
        if name in train_names and not any(record["annotations"] for record in dicts):
            raise DatasetError(
                f"{meta.json_file}: none of its {len(dicts)} images has a usable annotation, so "
                f"dataset {name!r} has nothing to train on"
            )
