"""Size-bucketed COCO metrics (lip_det.evaluation.evaluate_by_size) against pycocotools."""

import json
import math
import sys

import numpy as np
import pytest
from _eval_data import (
    EDGE_SIZES,
    bucket_area_range,
    reference_stats,
    tiny_detections,
    tiny_gt,
    tiny_segm_data,
)

import lip_det  # noqa: F401  (detectron2 compatibility fixes first)
from lip_det.evaluation import (
    DEFAULT_BUCKET_EDGES,
    EvaluationInputError,
    SizeBuckets,
    evaluate_by_size,
    get_engine,
    load_ground_truth,
    load_results,
    metric_names,
)

ENGINES = ("official", "fast")
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
DEFAULT_BUCKET_LABELS = ["[0,8)", "[8,16)", "[16,32)", "[32,96)", "[96,inf)"]


def assert_same_metric(got, pycocotools_value, tolerance, what):
    """pycocotools' -1 (x100) means "no ground truth"; lip_det reports that as NaN."""
    if pycocotools_value == -100:
        assert math.isnan(got), what
    else:
        assert got == pytest.approx(pycocotools_value, abs=tolerance), what


@pytest.fixture(scope="module")
def gt():
    return tiny_gt()


@pytest.fixture(scope="module")
def detections(gt):
    return tiny_detections(gt)


@pytest.fixture(scope="module")
def evaluations(gt, detections):
    return {engine: evaluate_by_size(gt, detections, engine=engine) for engine in ENGINES}


def test_metric_names_follow_buckets_and_max_dets():
    names = metric_names(DEFAULT_BUCKET_EDGES, (1, 10, 100))
    assert names == COCO_STATS + [f"AP{b}" for b in DEFAULT_BUCKET_LABELS] + [
        f"AR{b}" for b in DEFAULT_BUCKET_LABELS
    ]
    assert "AR1500" in metric_names([0, 4.5], (10, 300, 1500))
    assert "AP[4.5,inf)" in metric_names([0, 4.5], (10, 300, 1500))


def test_every_bucket_has_ground_truth(evaluations):
    counts = evaluations["official"].gt_counts
    assert list(counts) == DEFAULT_BUCKET_LABELS
    assert min(counts.values()) >= 20, counts


@pytest.mark.parametrize("engine", ENGINES)
def test_coco_metrics_equal_pycocotools_summary(gt, detections, evaluations, engine):
    expected = reference_stats(gt, detections)
    got = evaluations[engine].metrics
    tolerance = 1e-12 if engine == "official" else 1e-4
    for name, value in zip(COCO_STATS, expected):
        assert_same_metric(got[name], value, tolerance, name)


@pytest.mark.parametrize("engine", ENGINES)
def test_bucket_metrics_equal_fresh_cocoeval_per_range(gt, detections, evaluations, engine):
    edges = list(DEFAULT_BUCKET_EDGES) + [math.inf]
    got = evaluations[engine].metrics
    for low, high, label in zip(edges, edges[1:], DEFAULT_BUCKET_LABELS):
        stats = reference_stats(gt, detections, area_range=bucket_area_range(low, high))
        assert got[f"AP{label}"] == pytest.approx(stats[0], abs=1e-4), label
        assert got[f"AR{label}"] == pytest.approx(stats[8], abs=1e-4), label  # AR at maxDets 100
        assert stats[0] > 0


def test_engines_agree_on_everything(evaluations):
    official, fast = evaluations["official"], evaluations["fast"]
    assert list(official.metrics) == list(fast.metrics)
    np.testing.assert_allclose(
        list(fast.metrics.values()), list(official.metrics.values()), atol=1e-4, rtol=0
    )
    for name, row in official.per_category.items():
        np.testing.assert_allclose(
            list(fast.per_category[name].values()), list(row.values()), atol=1e-4
        )
    for label, curves in official.pr_curves.items():
        for iou, curve in curves.items():
            np.testing.assert_allclose(fast.pr_curves[label][iou], curve, atol=1e-4)
    assert official.gt_counts == fast.gt_counts


def test_per_category_ap_matches_detectron2_convention(gt, detections, evaluations):
    # detectron2: AP-<name> = mean of precision[:, :, k, area "all", last maxDets] over valid.
    results = evaluations["official"].results()
    names = [c["name"] for c in sorted(gt["categories"], key=lambda c: c["id"])]
    assert [k for k in results if k.startswith("AP-")] == [f"AP-{n}" for n in names]
    per_category = [results[f"AP-{n}"] for n in names]
    assert np.mean(per_category) == pytest.approx(results["AP"], abs=1e-9)


def test_edge_sized_objects_go_to_the_bucket_starting_at_the_edge():
    buckets = SizeBuckets(DEFAULT_BUCKET_EDGES)
    areas = [float(s * s) for s in EDGE_SIZES]
    assert list(buckets.assign(areas)) == [1, 2, 3, 4]
    just_below = [float(np.nextafter(a, 0)) for a in areas]
    assert list(buckets.assign(just_below)) == [0, 1, 2, 3]
    for bucket, area in zip(list(buckets)[1:], areas):
        assert bucket.area_range[0] == area  # COCOeval includes it in this bucket ...
    for bucket, area in zip(buckets, areas):
        assert bucket.area_range[1] < area  # ... and not in the one before


def test_custom_max_dets_name_ar_keys_and_match_detectron2():
    # Dense data: more than 100 detections of one category in an image, so AR300 > AR100.
    from lip_det.evaluation.simulated import make_synthetic_coco, make_synthetic_detections

    dense = make_synthetic_coco(1, num_categories=1, objects_per_image=(170, 170), max_size=40)
    detections = make_synthetic_detections(dense, quality=1.0, seed=1)
    assert len(detections) > 120
    max_dets = (1, 100, 300)
    expected = reference_stats(dense, detections, max_dets=max_dets)  # COCOevalMaxDets
    for engine in ENGINES:
        metrics = evaluate_by_size(
            dense, detections, bucket_edges=[0, 16], max_dets=max_dets, engine=engine
        ).metrics
        ar_keys = [k for k in metrics if k.startswith("AR") and "[" not in k]
        assert ar_keys == ["AR1", "AR100", "AR300", "ARs", "ARm", "ARl"]
        for name, value in zip(
            ["AP", "AP50", "AP75", "APs", "APm", "APl", "AR1", "AR100", "AR300"], expected
        ):
            assert_same_metric(metrics[name], value, 1e-4, (engine, name))
        assert metrics["AR300"] > metrics["AR100"] + 5


def test_more_detections_per_image_than_max_dets_is_warned(gt, detections, caplog):
    evaluate_by_size(gt, detections, max_dets=[1, 10], source="run.json")
    assert "run.json: " in caplog.text and "images have more than 10 detections" in caplog.text
    caplog.clear()
    evaluate_by_size(gt, detections, source="run.json")
    assert "more than" not in caplog.text


@pytest.mark.parametrize("engine", ENGINES)
def test_empty_results_give_zero_not_nan_where_there_is_ground_truth(gt, engine):
    evaluation = evaluate_by_size(gt, [], engine=engine)
    assert evaluation.num_detections == 0
    assert all(v == 0.0 for v in evaluation.metrics.values()), evaluation.metrics


@pytest.mark.parametrize("engine", ENGINES)
def test_bucket_without_ground_truth_is_nan_with_explanation(gt, detections, engine):
    evaluation = evaluate_by_size(gt, detections, bucket_edges=[0, 8, 1000], engine=engine)
    assert math.isnan(evaluation.metrics["AP[1000,inf)"])
    assert math.isnan(evaluation.metrics["AR[1000,inf)"])
    assert evaluation.gt_counts["[1000,inf)"] == 0
    assert evaluation.notes == [
        "AP[1000,inf)/AR[1000,inf) are NaN: no ground-truth objects with sqrt(area) in [1000,inf)"
    ]
    finite = [v for v in evaluation.metrics.values() if not math.isnan(v)]
    assert len(finite) == len(evaluation.metrics) - 2 and min(finite) >= 0  # never -1 or -100


@pytest.mark.parametrize("engine", ENGINES)
def test_segm_uses_mask_area_and_matches_pycocotools(engine):
    gt, results = tiny_segm_data()
    evaluation = evaluate_by_size(
        gt, results, iou_type="segm", bucket_edges=[0, 8, 32], engine=engine
    )
    expected = reference_stats(gt, results, iou_type="segm")
    for name, value in zip(COCO_STATS, expected):
        assert_same_metric(evaluation.metrics[name], value, 1e-4, name)
    mask_areas = [a["area"] for a in gt["annotations"]]
    assert list(evaluation.gt_counts.values()) == SizeBuckets([0, 8, 32]).count(mask_areas)
    stats = reference_stats(gt, results, iou_type="segm", area_range=bucket_area_range(8, 32))
    assert evaluation.metrics["AP[8,32)"] == pytest.approx(stats[0], abs=1e-4)


def test_unknown_image_id_is_named(gt, detections):
    bad = detections + [dict(detections[0], image_id=987654)]
    with pytest.raises(EvaluationInputError, match=r"image_id 987654 not in the ground truth"):
        evaluate_by_size(gt, bad, source="run.json")


def test_unknown_category_id_is_named(gt, detections):
    # e.g. contiguous 0-based ids from a model instead of the dataset's ids
    bad = detections + [dict(detections[0], category_id=0)]
    with pytest.raises(EvaluationInputError, match=r"^run.json: category_id 0 not in the ground"):
        evaluate_by_size(gt, bad, source="run.json")


def test_detection_without_required_field_is_named(gt, detections):
    bad = [dict(d) for d in detections[:3]]
    del bad[2]["score"]
    with pytest.raises(
        EvaluationInputError, match=r"run.json: detection #2 must be an object with"
    ):
        evaluate_by_size(gt, bad, source="run.json")


def test_results_file_errors_name_the_file(tmp_path):
    missing = tmp_path / "missing.json"
    with pytest.raises(EvaluationInputError, match=r"results file .*missing.json.* does not exist"):
        load_results(missing)
    broken = tmp_path / "broken.json"
    broken.write_text('[{"image_id": 1,')
    with pytest.raises(
        EvaluationInputError, match=r"results file .*broken.json.* is not valid JSON"
    ):
        load_results(broken)
    wrong = tmp_path / "wrong.json"
    wrong.write_text('{"image_id": 1}')
    with pytest.raises(EvaluationInputError, match=r"wrong.json.* must hold a JSON list"):
        load_results(wrong)
    coco_style = tmp_path / "coco_style.json"
    coco_style.write_text(json.dumps({"annotations": [{"image_id": 1}]}))
    assert load_results(coco_style) == [{"image_id": 1}]


def test_ground_truth_without_area_uses_box_area(tmp_path):
    path = tmp_path / "gt.json"
    gt = tiny_gt(num_images=2)
    for ann in gt["annotations"]:
        del ann["area"], ann["iscrowd"]
    path.write_text(json.dumps(gt))
    loaded = load_ground_truth(path)
    ann = loaded["annotations"][0]
    assert ann["area"] == ann["bbox"][2] * ann["bbox"][3] and ann["iscrowd"] == 0
    with pytest.raises(EvaluationInputError, match=r"gt.json.*: no 'categories' list"):
        path.write_text(json.dumps({"images": [], "annotations": []}))
        load_ground_truth(path)


@pytest.mark.parametrize(
    "edges, message",
    [([], "must not be empty"), ([0, 16, 8], "strictly increasing"), ([-1, 8], ">= 0")],
)
def test_invalid_bucket_edges(edges, message):
    with pytest.raises(ValueError, match=message):
        SizeBuckets(edges)


@pytest.mark.parametrize("max_dets", [[], [10, 1], [0, 10], [1.5, 10]])
def test_invalid_max_dets(gt, detections, max_dets):
    with pytest.raises(ValueError, match="maxDets must be strictly increasing positive integers"):
        evaluate_by_size(gt, detections, max_dets=max_dets)


def test_unknown_engine_lists_choices():
    with pytest.raises(
        ValueError, match=r"'turbo' is not valid; choose one of \['official', 'fast'\]"
    ):
        get_engine("turbo")


def test_fast_engine_without_any_implementation_says_what_to_install(monkeypatch):
    import lip_det.evaluation.engines as engines

    monkeypatch.setattr(engines, "has_c_extension", lambda: False)
    monkeypatch.setitem(sys.modules, "faster_coco_eval", None)  # import now raises ImportError
    with pytest.raises(ImportError, match=r"pip install faster-coco-eval"):
        get_engine("fast")


def test_fast_engine_prefers_detectron2_extension(monkeypatch):
    import lip_det.evaluation.engines as engines

    monkeypatch.setattr(engines, "has_c_extension", lambda: False)  # (HEAD has it)
    assert "faster-coco-eval" in get_engine("fast").implementation
    monkeypatch.setattr(engines, "has_c_extension", lambda: True)
    assert get_engine("fast").cocoeval_class.__name__ == "COCOeval_opt"
