"""The per-image matching (lip_det.evaluation.matching) against pycocotools, and the paired
bootstrap (lip_det.evaluation.bootstrap) against independent computations."""

import contextlib
import copy
import io
import math

import numpy as np
import pytest
from _eval_data import reference_stats, tiny_detections, tiny_gt, tiny_segm_data
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

import lip_det  # noqa: F401  (detectron2 compatibility fixes first)
from lip_det.evaluation import evaluate_by_size
from lip_det.evaluation.bootstrap import (
    evaluation_matches,
    paired_bootstrap,
    replicate_metrics,
    resample_counts,
)


def distinct_scores(results):
    """The same detections with no two scores equal (ties make the order of an image drawn
    twice a matter of convention)."""
    results = copy.deepcopy(results)
    for i, r in enumerate(results):
        r["score"] = round(r["score"], 4) + i * 1e-8
    return results


@pytest.fixture(scope="module")
def data():
    gt = tiny_gt(num_images=20, seed=4)
    return gt, distinct_scores(tiny_detections(gt, quality=0.6, seed=8))


def pycocotools_eval(gt, results, iou_type="bbox", area_ranges=None, max_dets=None):
    results = copy.deepcopy(results)
    if iou_type == "segm":
        for r in results:
            r.pop("bbox", None)
    with contextlib.redirect_stdout(io.StringIO()):
        coco_gt = COCO()
        coco_gt.dataset = copy.deepcopy(gt)
        coco_gt.createIndex()
        cocoeval = COCOeval(coco_gt, coco_gt.loadRes(results), iou_type)
        if area_ranges is not None:
            cocoeval.params.areaRng = list(area_ranges.values())
            cocoeval.params.areaRngLbl = list(area_ranges)
        if max_dets is not None:
            cocoeval.params.maxDets = list(max_dets)
        cocoeval.evaluate()
    return cocoeval


@pytest.mark.parametrize("iou_type", ["bbox", "segm"])
def test_matches_equal_pycocotools_eval_imgs(data, iou_type):
    if iou_type == "bbox":
        gt, results = data
        edges = [0, 8, 16, 32, 96]
    else:
        gt, results = tiny_segm_data()
        edges = [0, 8, 32]
    evaluation = evaluate_by_size(gt, results, iou_type=iou_type, bucket_edges=edges,
                                  max_dets=[1, 10, 20])  # fmt: skip
    matches = evaluation_matches(evaluation)
    ranges = evaluation.inputs["area_ranges"]
    reference = pycocotools_eval(gt, results, iou_type, ranges, max_dets=[1, 10, 20])
    params = reference.params
    gt_ids = np.array([a["id"] for a in gt["annotations"]])
    num_areas, num_images = len(params.areaRng), len(params.imgIds)
    compared = 0
    for k, cat_id in enumerate(params.catIds):
        for a in range(num_areas):
            for i, img_id in enumerate(params.imgIds):
                e = reference.evalImgs[k * num_areas * num_images + a * num_images + i]
                image = matches.image_ids.index(img_id)
                category = matches.category_ids.index(cat_id)
                rows = np.flatnonzero(
                    (matches.dt_image == image) & (matches.dt_category == category)
                )
                rows = rows[np.argsort(matches.dt_position[rows])]
                if e is None:
                    assert rows.size == 0
                    continue
                assert list(matches.dt_index[rows] + 1) == list(e["dtIds"])  # loadRes ids
                m = matches.match[a][:, rows]
                ids = np.where(m >= 0, gt_ids[np.maximum(m, 0)], 0)
                np.testing.assert_array_equal(ids, e["dtMatches"])
                np.testing.assert_array_equal(matches.dt_ignore[a][:, rows], e["dtIgnore"])
                compared += len(rows)
    assert compared > 100


@pytest.mark.parametrize("engine", ["official", "fast"])
@pytest.mark.parametrize("max_dets", [(1, 10, 100), (1, 5, 10)])
def test_weighted_accumulation_with_all_weights_one_is_the_evaluation(data, engine, max_dets):
    gt, results = data
    evaluation = evaluate_by_size(gt, results, engine=engine, max_dets=max_dets)
    values = replicate_metrics(evaluation, np.ones((1, evaluation.num_images), dtype=np.int32))
    expected = evaluation.results()
    assert list(values) == list(expected)
    for name, value in expected.items():
        if math.isnan(value):
            assert math.isnan(values[name][0]), name
        else:
            assert values[name][0] == pytest.approx(
                value, abs=1e-9 if engine == "official" else 1e-4
            )


def test_segm_accumulation_is_the_evaluation():
    gt, results = tiny_segm_data()
    evaluation = evaluate_by_size(gt, results, iou_type="segm", bucket_edges=[0, 8, 32])
    values = replicate_metrics(evaluation, np.ones((1, evaluation.num_images), dtype=np.int32))
    for name, value in evaluation.results().items():
        assert values[name][0] == pytest.approx(value, abs=1e-9, nan_ok=True), name


def resampled_dataset(gt, results, counts):
    """The images drawn ``counts[i]`` times each, as a new dataset: copy c of image i gets id
    1000 * (i + 1) + c, so that copies follow each other in COCOeval's (sorted) image order."""
    images = sorted(gt["images"], key=lambda im: im["id"])
    new_gt = {"images": [], "annotations": [], "categories": gt["categories"]}
    new_results = []
    for i, image in enumerate(images):
        for c in range(counts[i]):
            new_id = 1000 * (i + 1) + c
            new_gt["images"].append(dict(image, id=new_id))
            for ann in gt["annotations"]:
                if ann["image_id"] == image["id"]:
                    new_gt["annotations"].append(
                        dict(ann, id=len(new_gt["annotations"]) + 1, image_id=new_id)
                    )
            new_results += [
                dict(r, image_id=new_id) for r in results if r["image_id"] == image["id"]
            ]
    return new_gt, new_results


def test_each_resample_is_cocoeval_on_the_resampled_image_set(data):
    gt, results = data
    evaluation = evaluate_by_size(gt, results)
    counts = resample_counts(evaluation.num_images, 4, seed=3)
    values = replicate_metrics(evaluation, counts)
    names = ["AP", "AP50", "AP75", "APs", "APm", "APl", "AR1", "AR10", "AR100", "ARs", "ARm", "ARl"]
    for b in range(len(counts)):
        stats = reference_stats(*resampled_dataset(gt, results, counts[b]))
        for name, value in zip(names, stats):
            if value == -100:
                assert math.isnan(values[name][b])
            else:
                assert values[name][b] == pytest.approx(value, abs=1e-9), (b, name)


def test_resample_counts_follow_the_documented_draws():
    counts = resample_counts(7, 5, seed=11)
    draws = np.random.default_rng(11).integers(0, 7, size=(5, 7))
    for b in range(5):
        assert list(counts[b]) == list(np.bincount(draws[b], minlength=7))
    assert (counts.sum(axis=1) == 7).all()


def test_identical_runs_have_delta_zero_with_interval_zero(data):
    gt, results = data
    a = evaluate_by_size(gt, results)
    b = evaluate_by_size(gt, copy.deepcopy(results))
    intervals = paired_bootstrap({"a": [a], "b": [b]}, resamples=200, seed=0).intervals()
    deltas = intervals["deltas"]["b"]
    assert set(deltas) == set(a.results())
    for metric, entry in deltas.items():
        assert entry["delta"] == 0 or entry["delta"] is None, metric
        if entry["delta"] is not None:
            assert entry["ci"] == [0.0, 0.0], metric
        assert entry["significant"] is False


def test_bootstrap_is_deterministic_under_a_seed(data):
    gt, results = data
    runs = {
        "weak": [evaluate_by_size(gt, results)],
        "strong": [evaluate_by_size(gt, distinct_scores(tiny_detections(gt, quality=0.9, seed=8)))],
    }
    first = paired_bootstrap(runs, resamples=150, seed=5).intervals()
    again = paired_bootstrap(runs, resamples=150, seed=5).intervals()
    other = paired_bootstrap(runs, resamples=150, seed=6).intervals()
    assert first == again
    assert first["runs"]["weak"]["AP"] != other["runs"]["weak"]["AP"]
    assert first["level"] == 0.95 and first["resamples"] == 150
    low, high = first["runs"]["weak"]["AP"]
    assert low < runs["weak"][0].metrics["AP"] < high
    assert first["deltas"]["strong"]["AP"]["significant"] is True
    assert first["deltas"]["strong"]["AP"]["ci"][0] > 0


def outcome_case():
    """One category; per image some objects (20x20 squares far apart) and detections that are
    either exactly on an object (a true positive at every IoU) or on empty background (a false
    positive), all scores distinct."""
    rng = np.random.default_rng(0)
    gt = {"images": [], "annotations": [], "categories": [{"id": 1, "name": "thing"}]}
    results, outcomes = [], []  # outcomes[i] = (number of objects, [(score, is_tp)])
    scores = iter(rng.permutation(np.linspace(0.001, 0.999, 2000)))
    for image_id in range(1, 31):
        gt["images"].append({"id": image_id, "height": 400, "width": 400, "file_name": "x"})
        n = int(rng.integers(1, 5))
        found = []
        for j in range(n):
            box = [10.0 + 60 * j, 10.0, 20.0, 20.0]
            gt["annotations"].append({"id": len(gt["annotations"]) + 1, "image_id": image_id,
                                      "category_id": 1, "bbox": box, "area": 400.0,
                                      "iscrowd": 0})  # fmt: skip
            if rng.random() < 0.7:
                found.append((float(next(scores)), True, box))
        for _ in range(int(rng.integers(0, 4))):
            found.append((float(next(scores)), False, [300.0, 300.0, 20.0, 20.0]))
        results += [{"image_id": image_id, "category_id": 1, "bbox": box, "score": s}
                    for s, _, box in found]  # fmt: skip
        outcomes.append((n, [(s, tp) for s, tp, _ in found]))
    return gt, results, outcomes


def independent_ap(outcomes, draw):
    """COCO's 101-point AP (percent) of the images ``draw`` (indices, with repetition), written
    out with loops from the per-image outcomes."""
    num_gt = sum(outcomes[i][0] for i in draw)
    detections = sorted((d for i in draw for d in outcomes[i][1]), key=lambda d: -d[0])
    precisions, recalls, tp = [], [], 0
    for n, (_, is_tp) in enumerate(detections, start=1):
        tp += is_tp
        precisions.append(tp / n)
        recalls.append(tp / num_gt)
    total = 0.0
    for r in range(101):
        threshold = np.linspace(0, 1, 101)[r]
        reached = [p for p, rc in zip(precisions, recalls) if rc >= threshold]
        total += max(reached) if reached else 0.0
    return 100 * total / 101


def test_interval_equals_independent_resampling_of_per_image_outcomes():
    gt, results, outcomes = outcome_case()
    evaluation = evaluate_by_size(gt, results, bucket_edges=[0, 32])
    resamples, seed = 300, 2
    intervals = paired_bootstrap({"run": [evaluation]}, resamples=resamples, seed=seed).intervals()
    draws = np.random.default_rng(seed).integers(0, len(outcomes), size=(resamples, len(outcomes)))
    ap = [independent_ap(outcomes, draw) for draw in draws]
    recall = [
        100
        * sum(sum(tp for _, tp in outcomes[i][1]) for i in draw)
        / sum(outcomes[i][0] for i in draw)
        for draw in draws
    ]
    point_ap = independent_ap(outcomes, range(30))
    point_recall = (
        100 * sum(sum(tp for _, tp in o[1]) for o in outcomes) / sum(o[0] for o in outcomes)
    )
    assert evaluation.metrics["AP"] == pytest.approx(point_ap, abs=1e-9)
    for metric, values, point in (
        ("AP", ap, point_ap),
        ("AP50", ap, point_ap),
        ("AP[0,32)", ap, point_ap),
        ("AR100", recall, point_recall),
    ):
        # the 2.5 / 97.5 percentiles, moved so that the replicates' median is the point estimate
        low, median, high = np.percentile(values, [2.5, 50, 97.5])
        expected = [low + point - median, high + point - median]
        assert intervals["runs"]["run"][metric] == pytest.approx(expected, abs=1e-9), metric


def test_runs_of_several_files_average_them_and_resample_them(data):
    gt, results = data
    one = evaluate_by_size(gt, results)
    other = evaluate_by_size(gt, distinct_scores(tiny_detections(gt, quality=0.9, seed=8)))
    same = paired_bootstrap({"one": [one], "twice": [one, one]}, resamples=100, seed=1)
    assert all(e["ci"] == [0.0, 0.0] for e in same.intervals()["deltas"]["twice"].values()
               if e["delta"] is not None)  # fmt: skip
    mixed = paired_bootstrap({"one": [one], "mixed": [one, other]}, resamples=100, seed=1)
    assert mixed.point["mixed"]["AP"] == pytest.approx(
        (one.metrics["AP"] + other.metrics["AP"]) / 2
    )
    # each resample draws the files again: some resamples use one file twice
    values = mixed.values["mixed"]["AP"]
    single = {
        "one": replicate_metrics(one, resample_counts(one.num_images, 100, 1))["AP"],
        "other": replicate_metrics(other, resample_counts(one.num_images, 100, 1))["AP"],
    }
    assert np.isclose(values, single["one"]).any() and np.isclose(values, single["other"]).any()
    assert np.isclose(values, (single["one"] + single["other"]) / 2).any()


def test_bootstrap_needs_the_same_images(data):
    gt, results = data
    a = evaluate_by_size(gt, results)
    b = evaluate_by_size(gt, results, img_ids=[img["id"] for img in gt["images"]][:10])
    with pytest.raises(ValueError, match="evaluated on other images"):
        paired_bootstrap({"a": [a], "b": [b]}, resamples=10)
