"""The error analysis per size bucket (lip_det.evaluation.errors): each TIDE error type on a
hand-built case with that one error, the thresholds, and tidecv as an oracle on COCO's
small/medium/large where the two definitions coincide."""

import importlib.util
import sys
import types

import numpy as np
import pytest

import lip_det  # noqa: F401  (detectron2 compatibility fixes first)
from lip_det.evaluation import evaluate_by_size
from lip_det.evaluation.errors import ERROR_TYPES, ap_101, error_analysis
from lip_det.evaluation.size_evaluation import COCO_AREA_RANGES

RANGES = {"all": COCO_AREA_RANGES["all"], "small": COCO_AREA_RANGES["small"]}


def dataset(gts, categories=(1, 2)):
    """Ground truth on one 200x200 image: gts = [(category, [x, y, w, h])]."""
    return {
        "images": [{"id": 1, "height": 200, "width": 200, "file_name": "1.png"}],
        "categories": [{"id": c, "name": f"c{c}"} for c in categories],
        "annotations": [
            {
                "id": i + 1,
                "image_id": 1,
                "category_id": c,
                "bbox": box,
                "area": float(box[2] * box[3]),
                "iscrowd": 0,
            }
            for i, (c, box) in enumerate(gts)
        ],  # fmt: skip
    }


def dets(items):
    """items = [(category, [x, y, w, h], score)]."""
    return [{"image_id": 1, "category_id": c, "bbox": b, "score": s} for c, b, s in items]


def analyse(gt, results, ranges=RANGES, **kw):
    return error_analysis(gt, results, iou_type="bbox", area_ranges=ranges, max_dets=(100,), **kw)


# Objects far apart: A and B of class 1, C of class 2; the reference detections find all three
# (AP 100).
A, B, C = [10.0, 10.0, 20.0, 20.0], [120.0, 120.0, 20.0, 20.0], [120.0, 10.0, 20.0, 20.0]
GT = dataset([(1, A), (1, B), (2, C)])
PERFECT = [(1, A, 0.9), (1, B, 0.8), (2, C, 0.7)]


def only(result, label="all"):
    """{error type: (cost, count)} of the types that occur."""
    row = result[label]
    return {t: (row.cost[t], row.count[t]) for t in ERROR_TYPES if row.count[t]}


def test_perfect_detections_have_no_errors():
    result = analyse(GT, dets(PERFECT))
    assert result["all"].ap == pytest.approx(100)
    assert only(result) == {}
    assert all(v == 0 for v in result["all"].cost.values())


@pytest.mark.parametrize(
    "extra, kind",
    [
        ((2, A, 0.95), "Cls"),  # A's box (found), class 2, ranked before C
        ((1, [11.0, 10.0, 20.0, 20.0], 0.85), "Dupe"),  # a near-copy of A ranked before B's
    ],
)
def test_one_false_positive_ranked_high_costs_ap(extra, kind):
    result = analyse(GT, dets(PERFECT + [extra]))
    errors = only(result)
    assert list(errors) == [kind], errors
    cost, count = errors[kind]
    assert count == 1 and cost > 0
    assert result["all"].ap + cost == pytest.approx(100)


def test_classification_error_fixed_becomes_a_true_positive_of_the_other_class():
    # A found only as class 2: class 1 has recall 1/2, class 2 a false positive ranked first.
    result = analyse(GT, dets([(2, A, 0.9), (1, B, 0.8), (2, C, 0.7)]))
    errors = only(result)
    assert list(errors) == ["Cls"] and errors["Cls"][1] == 1
    assert result["all"].count["Miss"] == 0  # A is not missed: the Cls error points at it
    # fixed: the detection becomes class 1's true positive on A; both classes reach AP 100
    assert result["all"].ap + errors["Cls"][0] == pytest.approx(100)
    assert result["all"].ap < 80


def test_localisation_error():
    shifted = [18.0, 10.0, 20.0, 20.0]  # IoU 12*20 / (800 - 240) = .43 with A
    result = analyse(GT, dets([(1, shifted, 0.9), (1, B, 0.8), (2, C, 0.7)]))
    errors = only(result)
    assert set(errors) == {"Loc"} and errors["Loc"][1] == 1
    assert result["all"].ap + errors["Loc"][0] == pytest.approx(100)
    # not also counted as missed: the Loc error points at A
    assert result["all"].count["Miss"] == 0


def test_both_error():
    shifted = [18.0, 10.0, 20.0, 20.0]  # IoU .43 with A, of the wrong class
    result = analyse(GT, dets(PERFECT + [(2, shifted, 0.95)]))
    assert list(only(result)) == ["Both"]
    assert result["all"].ap + result["all"].cost["Both"] == pytest.approx(100)


def test_background_error():
    result = analyse(GT, dets(PERFECT + [(1, [60.0, 60.0, 20.0, 20.0], 0.95)]))
    errors = only(result)
    assert list(errors) == ["Bkg"] and errors["Bkg"][1] == 1
    assert result["all"].ap + errors["Bkg"][0] == pytest.approx(100)


def test_missed_error():
    result = analyse(GT, dets([(1, A, 0.9), (2, C, 0.7)]))
    errors = only(result)
    assert list(errors) == ["Miss"] and errors["Miss"][1] == 1
    # class 1 at recall 1/2: precision 1 at 51 of 101 recall thresholds; class 2: 100
    assert result["all"].ap == pytest.approx((51 / 101 * 100 + 100) / 2)
    assert result["all"].ap + errors["Miss"][0] == pytest.approx(100)


def test_thresholds_are_configurable():
    shifted = [18.0, 10.0, 20.0, 20.0]  # IoU .43 with A
    loose = analyse(GT, dets([(1, shifted, 0.9), (1, B, 0.8), (2, C, 0.7)]), foreground_iou=0.4)
    assert only(loose) == {} and loose["all"].ap == pytest.approx(100)
    far = [27.0, 10.0, 20.0, 20.0]  # IoU 3*20 / (800 - 60) = .08 with A
    default = analyse(GT, dets([(1, far, 0.95)] + PERFECT))
    assert list(only(default)) == ["Bkg"]
    strict = analyse(GT, dets([(1, far, 0.95)] + PERFECT), background_iou=0.05)
    assert list(only(strict)) == ["Loc"]
    with pytest.raises(ValueError, match="background IoU <= foreground IoU"):
        analyse(GT, dets(PERFECT), foreground_iou=0.3, background_iou=0.4)


def test_per_bucket_ap_is_the_buckets_coco_ap50():
    from _eval_data import tiny_detections, tiny_gt

    gt = tiny_gt(num_images=16)
    results = tiny_detections(gt, quality=0.6, seed=2)
    evaluation = evaluate_by_size(gt, results)
    result = error_analysis(
        gt, results, iou_type="bbox", area_ranges=evaluation.inputs["area_ranges"],
        max_dets=(1, 10, 100), matches=None,
    )  # fmt: skip
    assert result["all"].ap == pytest.approx(evaluation.metrics["AP50"], abs=1e-9)
    for label in evaluation.buckets.labels:
        costs = result[label].cost
        assert all(v >= -1e-9 for v in costs.values()), (label, costs)
        # fixing every false positive and every miss at once reaches 100; each alone less
        assert result[label].ap + sum(costs.values()) > 0


def test_ap_101_matches_cocoeval_rules():
    assert ap_101([], 3) == 0
    assert ap_101([True, True], 2) == 1.0
    assert ap_101([False, True], 1) == pytest.approx(0.5)
    assert ap_101([True, False, True], 2) == pytest.approx((51 * 1 + 50 * 2 / 3) / 101)


# ---- tidecv as an oracle --------------------------------------------------------------------


class _PlottingStandIn(types.ModuleType):
    """A module whose every attribute is 0 (constants) or a function returning a palette of 10
    colours: at import tidecv reads ``cv2.FONT_HERSHEY_SIMPLEX`` and indexes
    ``seaborn.color_palette()``; its quantification uses none of them."""

    def __getattr__(self, attribute):
        if attribute.startswith("__"):
            raise AttributeError(attribute)
        return 0 if attribute.isupper() else (lambda *args, **kwargs: [(0.0, 0.0, 0.0)] * 10)


def _import_tidecv():
    """tidecv, or skip. Its plotting module imports cv2, seaborn and pandas, which the
    quantification does not use: stand-ins are put in place for whichever is missing."""
    if importlib.util.find_spec("tidecv") is None:
        pytest.skip("tidecv is not installed (pip install tidecv)")
    for name in ("cv2", "seaborn", "pandas"):
        try:
            __import__(name)
        except ImportError:
            sys.modules[name] = _PlottingStandIn(name)
    import tidecv

    return tidecv


def tide_oracle_case(seed=0):
    """Images with objects on a grid (far apart), sizes well inside COCO's small/medium/large,
    every class present in every range, and detections with every kind of error: correct,
    wrong class, shifted (localisation), shifted and wrong class, duplicates, background,
    missed. Fewer than 100 detections per image and distinct scores, so that TIDE's and
    COCO's conventions agree."""
    rng = np.random.default_rng(seed)
    ranges = {"small": (10, 24), "medium": (40, 80), "large": (110, 180)}
    images, anns, results = [], [], []
    scores = iter(float(s) for s in rng.permutation(np.linspace(0.01, 0.99, 5000)))
    for image_id in range(1, 31):
        images.append({"id": image_id, "height": 1200, "width": 1200, "file_name": f"{image_id}"})
        for cell in range(9):
            label = list(ranges)[cell % 3]
            lo, hi = ranges[label]
            size = float(rng.uniform(lo, hi))
            x0, y0 = 20 + 380 * (cell % 3), 20 + 380 * (cell // 3)
            box = [x0, y0, size, size]
            category = int(rng.integers(1, 4)) if image_id > 1 else 1 + cell // 3
            anns.append({"id": len(anns) + 1, "image_id": image_id, "category_id": category,
                         "bbox": box, "area": size * size, "iscrowd": 0})  # fmt: skip
            kind = rng.choice(["tp", "tp", "tp", "cls", "loc", "both", "dupe", "miss", "tp_bkg"])
            other = category % 3 + 1

            def det(c, b, image_id=image_id):
                box = [float(v) for v in b]
                results.append(
                    {"image_id": image_id, "category_id": c, "bbox": box, "score": next(scores)}
                )

            jitter = [x0 + 0.05 * size * rng.uniform(-1, 1), y0, size, size]
            shift = [x0 + 0.55 * size, y0, size, size]  # IoU .29
            if kind in ("tp", "dupe", "tp_bkg"):
                det(category, jitter)
            if kind == "dupe":
                det(category, [x0 - 0.08 * size, y0, size, size])
            if kind == "cls":
                det(other, jitter)
            if kind == "loc":
                det(category, shift)
            if kind == "both":
                det(other, shift)
            if kind == "tp_bkg":  # background: in the empty corner of the object's cell
                det(category, [x0 + size + 10, y0 + size + 10, size, size])
    gt = {"images": images, "annotations": anns,
          "categories": [{"id": c, "name": f"c{c}"} for c in (1, 2, 3)]}  # fmt: skip
    return gt, results


def _ap_with_cocos_recall_thresholds(tidecv):
    """TIDE's AP integration, but at COCO's 101 recall thresholds: TIDE writes them as x / 100,
    COCOeval as np.linspace(0, 1, 101), and the two differ in the last bit for some x (0.07,
    ...), which moves AP by a few thousandths of a point when a recall lands exactly there. The
    rest (error types, fixes, matching) stays TIDE's."""
    from lip_det.evaluation.matching import RECALL_THRESHOLDS

    def get_ap(self):
        if self.num_gt_positives == 0 or not self.data_points:
            return 0
        points = sorted(self.data_points.values(), key=lambda x: -x[0])
        tp = np.cumsum([p[1] for p in points]).astype(np.float64)
        precision = tp / np.arange(1, len(points) + 1)
        recall = tp / self.num_gt_positives
        precision = np.maximum.accumulate(precision[::-1])[::-1]
        index = np.searchsorted(recall, RECALL_THRESHOLDS, side="left")
        q = np.where(index < len(points), precision[np.minimum(index, len(points) - 1)], 0.0)
        return float(q.mean() * 100)

    return get_ap


@pytest.mark.parametrize("recall_thresholds", ["coco", "tide"])
def test_error_costs_agree_with_tidecv_on_small_medium_large(recall_thresholds, monkeypatch):
    tidecv = _import_tidecv()
    if recall_thresholds == "coco":
        monkeypatch.setattr(tidecv.ap.APDataObject, "get_ap",
                            _ap_with_cocos_recall_thresholds(tidecv))  # fmt: skip
    # with TIDE's own thresholds a recall exactly at k/100 may count one threshold more or less
    tolerance = 1e-9 if recall_thresholds == "coco" else 0.5
    gt, results = tide_oracle_case()
    ranges = {name: COCO_AREA_RANGES[name] for name in ("all", "small", "medium", "large")}
    ours = error_analysis(gt, results, iou_type="bbox", area_ranges=ranges, max_dets=(100,))
    for label, (lo, hi) in ranges.items():
        # TIDE has no size ranges: give it the range's ground truth and detections only
        gt_data, det_data = tidecv.Data("gt"), tidecv.Data("dets")
        for ann in gt["annotations"]:
            if lo <= ann["area"] <= hi:
                gt_data.add_ground_truth(ann["image_id"], ann["category_id"], ann["bbox"])
        for r in results:
            if lo <= r["bbox"][2] * r["bbox"][3] <= hi:
                det_data.add_detection(r["image_id"], r["category_id"], r["score"], r["bbox"])
        tide = tidecv.TIDE()
        run = tide.evaluate(gt_data, det_data, mode=tidecv.TIDE.BOX, name=label)
        errors = tide.get_main_errors()[label]
        counts = {e.short_name: n for e, n in run.count_errors().items()}
        assert ours[label].ap == pytest.approx(run.ap, abs=tolerance), label
        for name in ERROR_TYPES:
            assert ours[label].cost[name] == pytest.approx(errors[name], abs=tolerance), (
                label, name,
            )  # fmt: skip
            assert ours[label].count[name] == counts[name], (label, name)
    # the case exercises every error type in every range
    assert all(ours[label].count[t] >= 4 for label in ranges for t in ERROR_TYPES), ours
