"""SmallObjectCOCOEvaluator inside detectron2's evaluation protocol (reset/process/evaluate)."""

import json
import math
import uuid

import pytest
import torch
from _eval_data import reference_stats, tiny_detections, tiny_gt
from detectron2.config import get_cfg
from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.data.datasets import register_coco_instances
from detectron2.evaluation import DatasetEvaluators
from detectron2.structures import Boxes, Instances

import lip_det  # noqa: F401  (detectron2 compatibility fixes first)
from lip_det.config import add_lip_config
from lip_det.evaluation import (
    SmallObjectCOCOEvaluator,
    build_evaluator,
    evaluate_by_size,
    get_engine,
)

COCO_STATS = [
    "AP",
    "AP50",
    "AP75",
    "APs",
    "APm",
    "APl",
    "AR1",
    "AR10",
    "AR100",
    "ARs",
    "ARm",
    "ARl",
]


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    """A COCO-format dataset registered like any COCO dataset, and fake model outputs for it."""
    root = tmp_path_factory.mktemp("coco")
    gt = tiny_gt(num_images=12)
    (root / "gt.json").write_text(json.dumps(gt))
    name = f"lip_det_eval_test_{uuid.uuid4().hex[:8]}"
    register_coco_instances(name, {}, str(root / "gt.json"), str(root))
    # As the test data loader would: loading the dataset sets the category id mapping.
    dataset_dicts = DatasetCatalog.get(name)
    yield name, gt, dataset_dicts, tiny_detections(gt)
    DatasetCatalog.remove(name)
    MetadataCatalog.remove(name)


def fake_model_outputs(dataset_name, dataset_dicts, detections):
    """detectron2-style (inputs, outputs) pairs whose Instances hold ``detections``."""
    to_contiguous = MetadataCatalog.get(dataset_name).thing_dataset_id_to_contiguous_id
    pairs = []
    for record in dataset_dicts:
        mine = [d for d in detections if d["image_id"] == record["image_id"]]
        instances = Instances((record["height"], record["width"]))
        boxes = [[x, y, x + w, y + h] for x, y, w, h in (d["bbox"] for d in mine)]
        instances.pred_boxes = Boxes(torch.tensor(boxes, dtype=torch.float32).reshape(-1, 4))
        instances.scores = torch.tensor([d["score"] for d in mine], dtype=torch.float32)
        instances.pred_classes = torch.tensor(
            [to_contiguous[d["category_id"]] for d in mine], dtype=torch.int64
        )
        inputs = {"image_id": record["image_id"], "height": record["height"]}
        pairs.append(([inputs], [{"instances": instances}]))
    return pairs


def run_evaluator(evaluator, pairs):
    evaluator.reset()
    for inputs, outputs in pairs:
        evaluator.process(inputs, outputs)
    return evaluator.evaluate()


def test_evaluator_through_process_and_evaluate(dataset, tmp_path):
    name, gt, dataset_dicts, detections = dataset
    evaluator = SmallObjectCOCOEvaluator(name, distributed=False, output_dir=str(tmp_path))
    results = run_evaluator(evaluator, fake_model_outputs(name, dataset_dicts, detections))

    bbox = results["bbox"]
    buckets = ["[0,8)", "[8,16)", "[16,32)", "[32,96)", "[96,inf)"]
    assert list(bbox)[: len(COCO_STATS)] == COCO_STATS
    assert [k for k in bbox if "[" in k] == [f"AP{b}" for b in buckets] + [
        f"AR{b}" for b in buckets
    ]
    assert [k for k in bbox if k.startswith("AP-")] == ["AP-class_1", "AP-class_2", "AP-class_3"]

    # The evaluator saved what it evaluated, with the dataset's category ids restored ...
    saved = json.loads((tmp_path / "coco_instances_results.json").read_text())
    assert len(saved) == len(detections)
    assert {d["category_id"] for d in saved} <= {c["id"] for c in gt["categories"]}
    # ... and its numbers are pycocotools' on that file (boxes went through float32).
    for metric, value in zip(COCO_STATS, reference_stats(gt, saved)):
        assert bbox[metric] == pytest.approx(value, abs=1e-9), metric
    direct = evaluate_by_size(gt, saved).results()
    assert bbox == pytest.approx(direct, abs=1e-9)
    assert set(evaluator.evaluations) == {"bbox"}


def test_evaluator_logs_bucket_counts_and_per_category_table(dataset, caplog):
    name, _, dataset_dicts, detections = dataset
    evaluator = SmallObjectCOCOEvaluator(name, distributed=False, engine="fast")
    with caplog.at_level("INFO"):
        run_evaluator(evaluator, fake_model_outputs(name, dataset_dicts, detections))
    log = caplog.text
    counts = evaluator.evaluations["bbox"].gt_counts
    assert "GT objects" in log and "| [0,8)  " in log
    assert str(counts["[0,8)"]) in log
    assert "Per-category bbox AP" in log and "AP[96,inf)" in log
    assert get_engine("fast").implementation in log  # faster-coco-eval, or detectron2's _C


def test_evaluator_with_empty_outputs_reports_zero(dataset):
    name, _, dataset_dicts, _ = dataset
    evaluator = SmallObjectCOCOEvaluator(name, distributed=False)
    results = run_evaluator(evaluator, fake_model_outputs(name, dataset_dicts, []))
    assert results["bbox"]["AP"] == 0.0 and results["bbox"]["AR[0,8)"] == 0.0


def make_cfg(**small_object):
    cfg = get_cfg()
    add_lip_config(cfg)
    for key, value in small_object.items():
        cfg.TEST.SMALL_OBJECT[key] = value
    return cfg


def test_build_evaluator_reads_config(dataset):
    name, _, dataset_dicts, detections = dataset
    cfg = make_cfg(BUCKET_EDGES=[0, 12, 1000], MAX_DETS=[5, 50, 300], ENGINE="fast")
    cfg.TEST.DETECTIONS_PER_IMAGE = 300
    evaluator = build_evaluator(cfg, name, distributed=False)
    assert isinstance(evaluator, SmallObjectCOCOEvaluator)
    bbox = run_evaluator(evaluator, fake_model_outputs(name, dataset_dicts, detections))["bbox"]
    assert {"AR5", "AR50", "AR300", "AP[0,12)", "AR[12,1000)", "AP[1000,inf)"} <= set(bbox)
    assert "AR100" not in bbox
    assert math.isnan(bbox["AP[1000,inf)"])


def test_build_evaluator_refuses_max_dets_above_detections_per_image(dataset):
    cfg = make_cfg(MAX_DETS=[1, 10, 300])
    assert cfg.TEST.DETECTIONS_PER_IMAGE == 100
    with pytest.raises(ValueError, match=r"TEST.DETECTIONS_PER_IMAGE = 100 keeps fewer"):
        build_evaluator(cfg, dataset[0])


@pytest.mark.parametrize(
    "key, value, message",
    [
        ("ENGINE", "turbo", r"TEST.SMALL_OBJECT.ENGINE = 'turbo' is not valid"),
        ("BUCKET_EDGES", [0, 32, 16], r"TEST.SMALL_OBJECT.BUCKET_EDGES: .*strictly increasing"),
        ("MAX_DETS", [100, 10], r"TEST.SMALL_OBJECT.MAX_DETS: maxDets must be"),
    ],
)
def test_build_evaluator_rejects_bad_config(dataset, key, value, message):
    with pytest.raises(ValueError, match=message):
        build_evaluator(make_cfg(**{key: value}), dataset[0])


def test_build_evaluator_adds_detectron2_keypoint_evaluator(dataset):
    cfg = make_cfg()
    cfg.MODEL.KEYPOINT_ON = True
    evaluator = build_evaluator(cfg, dataset[0], distributed=False)
    assert isinstance(evaluator, DatasetEvaluators)
    assert isinstance(evaluator._evaluators[0], SmallObjectCOCOEvaluator)


def test_keypoint_task_is_refused_with_pointer(dataset):
    with pytest.raises(ValueError, match="use detectron2's COCOEvaluator for keypoints"):
        SmallObjectCOCOEvaluator(dataset[0], tasks=("bbox", "keypoints"))
