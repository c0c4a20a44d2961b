"""tools/small_object_report.py and lip_det.evaluation.write_report."""

import json
import math
import runpy
from pathlib import Path

import pytest
from _eval_data import tiny_detections, tiny_gt

import lip_det  # noqa: F401  (detectron2 compatibility fixes first)
from lip_det.evaluation import evaluate_by_size, metric_names, write_report

TOOL = Path(__file__).resolve().parents[1] / "tools" / "small_object_report.py"
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def tool():
    return runpy.run_path(str(TOOL), run_name="small_object_report")["main"]


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    root = tmp_path_factory.mktemp("report_inputs")
    gt = tiny_gt(num_images=16)
    paths = {"gt": root / "gt.json"}
    paths["gt"].write_text(json.dumps(gt))
    for name, quality in (("baseline", 0.6), ("lip", 0.8)):
        paths[name] = root / f"{name}.json"
        paths[name].write_text(json.dumps(tiny_detections(gt, quality=quality, seed=3)))
    return paths


def test_two_runs_write_metrics_report_and_plots(tool, files, tmp_path):
    out = tmp_path / "report"
    tool(
        [
            "--gt", str(files["gt"]),
            "--results", f"baseline={files['baseline']}", f"LIP R-50={files['lip']}",
            "--out", str(out),
            "--no-progress",
        ]
    )  # fmt: skip

    metrics = json.loads((out / "metrics.json").read_text())
    assert list(metrics) == ["baseline", "LIP R-50"]
    expected_keys = metric_names([0, 8, 16, 32, 96], [1, 10, 100])
    expected_keys += ["AP-class_1", "AP-class_2", "AP-class_3"]
    for run in metrics.values():
        assert list(run) == expected_keys
    # Percent, like detectron2, and the same numbers as a direct evaluation.
    gt = json.loads(files["gt"].read_text())
    direct = evaluate_by_size(gt, json.loads(files["lip"].read_text())).results()
    assert metrics["LIP R-50"] == pytest.approx(direct, abs=1e-9)
    assert 1 < metrics["LIP R-50"]["AP"] <= 100

    report = (out / "report.md").read_text()
    delta = metrics["LIP R-50"]["AP[0,8)"] - metrics["baseline"]["AP[0,8)"]
    assert "## Side by side (Δ = run - baseline)" in report
    assert "| Δ LIP R-50" in report
    assert f"| AP[0,8)    | {metrics['baseline']['AP[0,8)']:.3f}" in report
    assert f"{delta:+.3f}" in report
    assert "## Ground truth per size bucket" in report and "| [96,inf)" in report
    assert "### Per-category AP" in report and "| class_2" in report
    assert "| AP     | AP50   | AP75   | APs" in report  # the standard COCO table

    pngs = sorted(p.name for p in out.glob("*.png"))
    assert pngs == [
        "ap_per_bucket.png",
        "gt_size_histogram.png",
        "pr_curves_LIP_R-50.png",
        "pr_curves_baseline.png",
    ]
    for name in pngs:
        assert (out / name).read_bytes()[:8] == PNG_SIGNATURE
        assert f"]({name})" in report


def test_single_run_has_no_comparison_and_nan_is_null(files, tmp_path):
    metrics = write_report(
        str(files["gt"]), {"model": str(files["lip"])}, tmp_path, bucket_edges=[0, 16, 5000]
    )
    assert math.isnan(metrics["model"]["AP[5000,inf)"])
    on_disk = json.loads((tmp_path / "metrics.json").read_text())
    assert on_disk["model"]["AP[5000,inf)"] is None  # valid JSON, unlike NaN
    report = (tmp_path / "report.md").read_text()
    assert "Side by side" not in report
    assert "AP[5000,inf)/AR[5000,inf) are NaN: no ground-truth objects" in report


def test_write_report_accepts_an_evaluation_already_computed(files, tmp_path):
    gt = json.loads(files["gt"].read_text())
    evaluation = evaluate_by_size(gt, json.loads(files["baseline"].read_text()), max_dets=[1, 300])
    metrics = write_report(gt, {"eval-only": evaluation}, tmp_path)
    assert metrics["eval-only"] == evaluation.results()
    assert "AR300" in metrics["eval-only"]


@pytest.mark.parametrize(
    "content, message",
    [
        (None, r"results file '.*bad.json' does not exist"),
        ("[{]", r"results file '.*bad.json' is not valid JSON"),
        ('{"image_id": 1}', r"results file '.*bad.json' must hold a JSON list"),
        ('[{"image_id": 1, "bbox": [0, 0, 1, 1]}]', r"results file '.*bad.json': detection #0"),
        (
            '[{"image_id": 99999, "category_id": 3, "bbox": [0, 0, 1, 1], "score": 1}]',
            r"results file '.*bad.json': image_id 99999 not in the ground truth",
        ),
    ],
)
def test_bad_results_file_is_one_clear_error(tool, files, tmp_path, capsys, content, message):
    bad = tmp_path / "bad.json"
    if content is not None:
        bad.write_text(content)
    argv = ["--gt", str(files["gt"]), "--results", f"a={files['lip']}", f"b={bad}"]
    with pytest.raises(SystemExit) as exit_info:
        tool(argv + ["--out", str(tmp_path / "out"), "--no-progress"])
    assert exit_info.value.code.startswith("error: ")
    assert exit_info.value.code.count("\n") == 0
    import re

    assert re.search(message, exit_info.value.code), exit_info.value.code


def test_duplicate_run_names_are_refused(tool, files, tmp_path, capsys):
    with pytest.raises(SystemExit):
        tool(["--gt", str(files["gt"]), "--results", f"a={files['lip']}", f"a={files['lip']}",
              "--out", str(tmp_path)])  # fmt: skip
    assert "run names must be unique" in capsys.readouterr().err
