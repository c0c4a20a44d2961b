"""Registering COCO-format datasets by name and the early checks on their files."""

import os

import pytest
from detectron2.data import DatasetCatalog, MetadataCatalog

from lip_det.data import (
    SyntheticSpec,
    check_datasets_exist,
    generate_synthetic_coco,
    register_coco_dataset,
)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    root = tmp_path_factory.mktemp("tiny")
    return generate_synthetic_coco(
        root, SyntheticSpec(num_images=2, height=48, width=48, max_size=12)
    )


def test_register_loads_the_json_with_metadata(tiny):
    json_file, image_root, classes = tiny
    register_coco_dataset("lip_test_reg", json_file, image_root)
    meta = MetadataCatalog.get("lip_test_reg")
    assert (meta.json_file, meta.image_root) == (
        os.path.abspath(json_file),
        os.path.abspath(image_root),
    )
    assert meta.evaluator_type == "coco"  # what COCOEvaluator and train_net expect
    dicts = DatasetCatalog.get("lip_test_reg")
    assert len(dicts) == 2 and dicts[0]["file_name"].startswith(os.path.abspath(image_root))
    assert meta.thing_classes == classes  # set by detectron2 when it read the json


def test_register_again_is_a_no_op_but_other_files_are_an_error(tiny):
    json_file, image_root, _ = tiny
    register_coco_dataset("lip_test_twice", json_file, image_root)
    register_coco_dataset("lip_test_twice", json_file, image_root)  # e.g. parent, then worker
    with pytest.raises(ValueError, match="'lip_test_twice' is already registered with json_file="):
        register_coco_dataset("lip_test_twice", json_file, os.path.dirname(image_root))
    with pytest.raises(ValueError, match="'coco_2017_train' is already registered"):
        register_coco_dataset("coco_2017_train", json_file, image_root)


def test_check_names_an_unregistered_dataset_and_the_flag():
    with pytest.raises(KeyError) as info:
        check_datasets_exist(["lip_test_nobody_registered_this"])
    message = info.value.args[0]
    assert "'lip_test_nobody_registered_this' is not registered" in message
    assert "--dataset lip_test_nobody_registered_this JSON_FILE IMAGE_ROOT" in message


def test_check_names_missing_files_of_our_datasets(tiny, tmp_path):
    json_file, image_root, _ = tiny
    register_coco_dataset("lip_test_nojson", tmp_path / "missing.json", image_root)
    with pytest.raises(FileNotFoundError) as info:
        check_datasets_exist(["lip_test_nojson"])
    assert str(info.value) == (
        f"dataset 'lip_test_nojson': annotation file not found: {tmp_path / 'missing.json'}"
    )
    register_coco_dataset("lip_test_noimages", json_file, tmp_path / "no_images")
    with pytest.raises(FileNotFoundError, match="'lip_test_noimages': image folder not found: "):
        check_datasets_exist(["lip_test_noimages"])
    register_coco_dataset("lip_test_complete", json_file, image_root)
    assert check_datasets_exist(["lip_test_complete"]) is None  # both files there: no error


def test_check_points_builtin_datasets_at_detectron2_datasets(monkeypatch):
    """detectron2 registered coco_2017_val under $DETECTRON2_DATASETS (default ./datasets) when
    it was imported; here that file does not exist."""
    path = MetadataCatalog.get("coco_2017_val").json_file
    if os.path.isfile(path):
        pytest.skip(f"COCO is installed here ({path})")
    monkeypatch.setenv("DETECTRON2_DATASETS", "/data/sets")
    with pytest.raises(FileNotFoundError) as info:
        check_datasets_exist(["coco_2017_val"])
    message = str(info.value)
    assert message.startswith(f"dataset 'coco_2017_val': annotation file not found: {path}\n")
    assert "$DETECTRON2_DATASETS, which is '/data/sets'" in message
    monkeypatch.delenv("DETECTRON2_DATASETS")
    with pytest.raises(FileNotFoundError, match="is not set, so it defaults to ./datasets"):
        check_datasets_exist(["coco_2017_val"])


def test_synthetic_datasets_are_registered_and_generated_on_first_use(tmp_path):
    from lip_det.data import SYNTHETIC_SPLITS, register_synthetic_dataset

    # lip_det's built-ins, registered on import (generated only when used)
    for name in ("lip_synthetic_train", "lip_synthetic_val"):
        assert name in DatasetCatalog.list() and name in SYNTHETIC_SPLITS
        assert MetadataCatalog.get(name).thing_classes == ["plain", "dot", "bar", "pair"]

    spec = SyntheticSpec(num_images=3, height=48, width=48, max_size=24, seed=2)
    register_synthetic_dataset("lip_test_synthetic_lazy", tmp_path / "lazy", spec)
    assert not (tmp_path / "lazy").exists()  # nothing written yet
    check_datasets_exist(["lip_test_synthetic_lazy"])  # what train_net runs before launch
    meta = MetadataCatalog.get("lip_test_synthetic_lazy")
    assert os.path.isfile(meta.json_file) and meta.evaluator_type == "coco"
    dicts = DatasetCatalog.get("lip_test_synthetic_lazy")
    assert [d["image_id"] for d in dicts] == [1, 2, 3]
    assert all(d["file_name"].startswith(meta.image_root) for d in dicts)
