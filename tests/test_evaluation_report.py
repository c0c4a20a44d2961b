"""tools/small_object_report.py and lip_det.evaluation.write_report."""

import json
import math
import re
import runpy
from pathlib import Path

import numpy as np
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


def run_tool(tool, files, out, *runs, extra=()):
    argv = ["--gt", str(files["gt"]), "--results", *runs, "--out", str(out), "--no-progress"]
    return tool(argv + list(extra))


def test_two_runs_write_metrics_report_and_plots(tool, files, tmp_path):
    out = tmp_path / "report"
    run_tool(tool, files, out, f"baseline={files['baseline']}", f"LIP R-50={files['lip']}")

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

    # intervals.json: every metric of metrics.json, for each run and for the delta to the first
    intervals = json.loads((out / "intervals.json").read_text())
    assert intervals["level"] == 0.95 and intervals["resamples"] == 1000
    assert list(intervals["runs"]) == ["baseline", "LIP R-50"]
    assert list(intervals["deltas"]) == ["LIP R-50"]
    for run, values in metrics.items():
        assert list(intervals["runs"][run]) == expected_keys
        low, high = intervals["runs"][run]["AP"]
        assert low <= values["AP"] <= high
    delta = intervals["deltas"]["LIP R-50"]["AP"]
    assert set(delta) == {"delta", "ci", "significant"}
    assert delta["delta"] == pytest.approx(metrics["LIP R-50"]["AP"] - metrics["baseline"]["AP"])
    assert delta["significant"] is True and delta["ci"][0] > 0  # quality 0.8 against 0.6

    report = (out / "report.md").read_text()
    assert "## Side by side (Δ = run - baseline)" in report
    assert "| Δ LIP R-50" in report
    ci = intervals["runs"]["baseline"]["AP[0,8)"]
    assert f"| {metrics['baseline']['AP[0,8)']:.1f} [{ci[0]:.1f}, {ci[1]:.1f}]" in report
    assert f"| {delta['delta']:+.1f} [{delta['ci'][0]:.1f}, {delta['ci'][1]:.1f}] * |" in report
    assert "paired-bootstrap interval over images (1000 resamples, seed 0)" in report
    assert "## Ground truth per size bucket" in report and "| [96,inf)" in report
    assert "### Per-category AP" in report and "| class_2" in report
    assert "## Error analysis" in report and "| ΔCls" in report and "| ΔMiss" in report
    assert (out / "errors.json").is_file()
    errors = json.loads((out / "errors.json").read_text())
    assert errors["foreground_iou"] == 0.5 and errors["background_iou"] == 0.1
    row = errors["runs"]["baseline"]["[0,8)"]
    assert set(row["cost"]) == {"Cls", "Loc", "Both", "Dupe", "Bkg", "Miss"}
    assert errors["runs"]["baseline"]["all"]["AP"] == pytest.approx(metrics["baseline"]["AP50"])

    pngs = sorted(p.name for p in out.glob("*.png"))
    assert pngs == [
        "ap_per_bucket.png",
        "errors_per_bucket.png",
        "gt_size_histogram.png",
        "pr_curves_LIP_R-50.png",
        "pr_curves_baseline.png",
    ]
    for name in pngs:
        assert (out / name).read_bytes()[:8] == PNG_SIGNATURE
        assert f"]({name})" in report


def test_thin_buckets_are_marked_in_tables_plots_and_intervals(tool, files, tmp_path, capsys):
    gt = json.loads(files["gt"].read_text())
    counts = evaluate_by_size(gt, []).gt_counts
    threshold = sorted(counts.values())[2]  # the two smallest buckets are thin
    out = tmp_path / "thin"
    run_tool(tool, files, out, f"a={files['baseline']}", f"b={files['lip']}",
             extra=["--min-objects", str(threshold), "--bootstrap", "50"])  # fmt: skip
    thin = [label for label, n in counts.items() if n < threshold]
    assert len(thin) == 2
    intervals = json.loads((out / "intervals.json").read_text())
    assert [b for b in intervals["too_few_objects"] if b.startswith("[")] == thin
    assert intervals["min_objects"] == threshold
    report = (out / "report.md").read_text()
    for label in counts:
        row = next(line for line in report.splitlines() if line.startswith(f"| AP{label} "))
        assert ("too few objects to compare" in row) == (label in thin), row
    printed = capsys.readouterr().out
    assert printed.count("too few objects to compare") >= 2 * len(thin)  # AP and AR rows
    run_tool(tool, files, tmp_path / "none", f"a={files['baseline']}",
             extra=["--min-objects", "0", "--bootstrap", "0"])  # fmt: skip
    report = (tmp_path / "none" / "report.md").read_text()
    assert "| too few objects to compare" not in report
    assert not (tmp_path / "none" / "intervals.json").exists()
    assert "no bootstrap intervals" in report


def test_same_seed_same_intervals(tool, files, tmp_path):
    runs = (f"a={files['baseline']}", f"b={files['lip']}")
    for name, seed in (("one", "3"), ("two", "3"), ("three", "4")):
        run_tool(tool, files, tmp_path / name, *runs, extra=["--bootstrap", "60", "--seed", seed])
    one, two, three = (json.loads((tmp_path / n / "intervals.json").read_text())
                       for n in ("one", "two", "three"))  # fmt: skip
    assert one == two and one["seed"] == 3
    assert one["runs"] != three["runs"]


def test_several_files_per_run_give_mean_and_std(tool, files, tmp_path):
    gt = json.loads(files["gt"].read_text())
    seeds = []
    for seed in range(3):
        path = tmp_path / f"seed{seed}.json"
        path.write_text(json.dumps(tiny_detections(gt, quality=0.7, seed=10 + seed)))
        seeds.append(str(path))
    out = tmp_path / "seeds"
    run_tool(tool, files, out, f"base={files['baseline']}", "three=" + ",".join(seeds),
             extra=["--bootstrap", "80"])  # fmt: skip
    per_file = [evaluate_by_size(gt, json.loads(open(p).read())).results() for p in seeds]
    metrics = json.loads((out / "metrics.json").read_text())
    mean = np.mean([r["AP"] for r in per_file])
    std = np.std([r["AP"] for r in per_file], ddof=1)
    assert metrics["three"]["AP"] == pytest.approx(mean)
    summary = json.loads((out / "seeds.json").read_text())["three"]
    assert summary["files"] == seeds and summary["std"]["AP"] == pytest.approx(std)
    assert len(summary["per_file"]) == 3
    report = (out / "report.md").read_text()
    assert f"{mean:.1f} ± {std:.1f} [" in report
    assert "mean ± std over 3 result files" in report


def test_bucket_edges_is_an_alias_of_buckets(tool, files, tmp_path):
    run_tool(tool, files, tmp_path / "r", f"a={files['lip']}",
             extra=["--bucket-edges", "0", "12", "--bootstrap", "0"])  # fmt: skip
    assert "AP[12,inf)" in json.loads((tmp_path / "r" / "metrics.json").read_text())["a"]


def test_single_run_has_no_comparison_and_nan_is_null(files, tmp_path):
    metrics = write_report(
        str(files["gt"]), {"model": str(files["lip"])}, tmp_path, bucket_edges=[0, 16, 5000],
        bootstrap=100,
    )  # fmt: skip
    assert math.isnan(metrics["model"]["AP[5000,inf)"])
    on_disk = json.loads((tmp_path / "metrics.json").read_text())
    assert on_disk["model"]["AP[5000,inf)"] is None  # valid JSON, unlike NaN
    report = (tmp_path / "report.md").read_text()
    assert "Side by side" not in report
    assert "AP[5000,inf)/AR[5000,inf) are NaN: no ground-truth objects" in report


def test_write_report_accepts_an_evaluation_already_computed(files, tmp_path):
    gt = json.loads(files["gt"].read_text())
    evaluation = evaluate_by_size(gt, json.loads(files["baseline"].read_text()), max_dets=[1, 300])
    metrics = write_report(gt, {"eval-only": evaluation}, tmp_path, bootstrap=100)
    assert metrics["eval-only"] == evaluation.results()
    assert "AR300" in metrics["eval-only"]
    # the report of a single evaluation (as --eval-only writes it) has its intervals too
    intervals = json.loads((tmp_path / "intervals.json").read_text())
    assert list(intervals["runs"]) == ["eval-only"] and intervals["deltas"] == {}
    assert "AR300" in intervals["runs"]["eval-only"]


def assert_one_error(exit_info, pattern):
    message = exit_info.value.code
    assert isinstance(message, str) and message.startswith("error: "), message
    assert message.count("\n") == 0, message
    assert re.search(pattern, message), message


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
        (
            '[{"image_id": "2", "category_id": 3, "bbox": [0, 0, 1, 1], "score": 1}]',
            r"bad.json': detection #0 has image_id '2' \(a str\); ids are integers",
        ),
        (
            '[{"image_id": 2, "category_id": 3, "bbox": [0, 0, 1, 1], "score": NaN}]',
            r"bad.json': detection #0 has score nan; expected a finite number",
        ),
        (
            '[{"image_id": 2, "category_id": 3, "bbox": [0, 0, 1, 1], "score": "0.5"}]',
            r"bad.json': detection #0 has score '0.5'; expected a finite number",
        ),
        (
            '[{"image_id": 2, "category_id": 3, "bbox": [0, 0, 1, 1], "score": true}]',
            r"bad.json': detection #0 has score True",
        ),
        (
            '[{"image_id": 2, "category_id": 3, "bbox": [0, 0, 1], "score": 0.5}]',
            r"bad.json': detection #0 has bbox \[0, 0, 1\]; expected \[x, y, width, height\]",
        ),
        (
            '[{"image_id": 2, "category_id": 3, "bbox": [0, 0, -4, 1], "score": 0.5}]',
            r"detection #0 has bbox \[0, 0, -4, 1\]",
        ),
        (
            '[{"image_id": 2, "category_id": 3, "bbox": [0, Infinity, 4, 1], "score": 0.5}]',
            r"detection #0 has bbox \[0, Infinity, 4, 1\]",
        ),
    ],
)
def test_bad_results_file_is_one_clear_error(tool, files, tmp_path, content, message):
    bad = tmp_path / "bad.json"
    if content is not None:
        bad.write_text(content)
    argv = ["--gt", str(files["gt"]), "--results", f"a={files['lip']}", f"b={bad}"]
    with pytest.raises(SystemExit) as exit_info:
        tool(argv + ["--out", str(tmp_path / "out"), "--no-progress", "--bootstrap", "0"])
    assert_one_error(exit_info, message)


def _broken_gt(files, change):
    gt = json.loads(files["gt"].read_text())
    change(gt)
    return gt


def _set(path, value):
    def change(gt):
        target = gt
        for key in path[:-1]:
            target = target[key]
        target[path[-1]] = value

    return change


@pytest.mark.parametrize(
    "change, message",
    [
        (_set(("annotations", 0, "bbox"), [1, 2, float("nan"), 4]),
         r"annotation id 1 \(image id 1\) has bbox \[1, 2, nan, 4\]"),
        (_set(("annotations", 0, "bbox"), [1, 2, 3]), r"annotation id 1 .* has bbox \[1, 2, 3\]"),
        (_set(("annotations", 0, "area"), "12"), r"annotation id 1 .* has area '12'"),
        (_set(("annotations", 0, "image_id"), "1"),
         r"annotations\[0\] has image_id '1' \(a str\); ids are integers"),
        (_set(("annotations", 0, "image_id"), 424242),
         r"annotation id 1 .*: image_id 424242 is not an image id"),
        (_set(("annotations", 0, "category_id"), 99), r"category_id 99, which is not in"),
        (_set(("annotations", 0, "iscrowd"), 2), r"has iscrowd 2; expected 0 or 1"),
        (_set(("annotations", 1, "id"), 1), r"repeats an annotation id"),
        (_set(("images", 1, "id"), 1), r"image id 1 appears twice"),
        (_set(("images", 0, "width"), 0), r"image id 1 has width 0"),
        (_set(("categories",), {"id": 1}), r"'categories' is a dict, expected a list"),
        (lambda gt: gt.pop("images"), r"no 'images' list"),
        (lambda gt: gt["annotations"][0].pop("bbox"), r"annotation id 1 .* has no 'bbox'"),
    ],
)  # fmt: skip
def test_bad_ground_truth_names_the_ground_truth_file_and_entry(tool, files, tmp_path, change,
                                                                message):  # fmt: skip
    path = tmp_path / "gt.json"
    path.write_text(json.dumps(_broken_gt(files, change)))
    argv = ["--gt", str(path), "--results", f"a={files['lip']}", "--out", str(tmp_path / "o"),
            "--no-progress"]  # fmt: skip
    with pytest.raises(SystemExit) as exit_info:
        tool(argv)
    assert_one_error(exit_info, rf"^error: ground truth file '.*gt.json': .*{message}")


@pytest.mark.parametrize("content", ["{", "[1, 2]", '"text"'])
def test_ground_truth_that_is_not_a_coco_file(tool, files, tmp_path, content):
    path = tmp_path / "gt.json"
    path.write_text(content)
    with pytest.raises(SystemExit) as exit_info:
        tool(["--gt", str(path), "--results", f"a={files['lip']}", "--out", str(tmp_path / "o")])
    assert_one_error(exit_info, r"^error: ground truth file '.*gt.json'")


def test_a_folder_holding_a_report_is_refused_without_overwrite(tool, files, tmp_path):
    out = tmp_path / "report"
    run_tool(tool, files, out, f"old={files['baseline']}", extra=["--bootstrap", "0"])
    assert (out / "pr_curves_old.png").is_file()
    keep = out / "notes.txt"
    keep.write_text("mine")
    with pytest.raises(SystemExit) as exit_info:
        run_tool(tool, files, out, f"new={files['lip']}", extra=["--bootstrap", "0"])
    assert_one_error(exit_info, r"already holds a small-object report .*--overwrite")
    assert json.loads((out / "metrics.json").read_text()).keys() == {"old"}  # untouched
    run_tool(tool, files, out, f"new={files['lip']}", extra=["--bootstrap", "0", "--overwrite"])
    assert json.loads((out / "metrics.json").read_text()).keys() == {"new"}
    assert not (out / "pr_curves_old.png").exists()  # the stale plot of the old run is gone
    assert keep.read_text() == "mine"  # files the report did not write stay


def test_output_that_is_a_file_or_an_input_is_refused(tool, files, tmp_path):
    with pytest.raises(SystemExit) as exit_info:
        run_tool(tool, files, files["lip"], f"a={files['lip']}")
    assert_one_error(exit_info, r"output folder '.*lip.json' is a file, not a folder")
    out = tmp_path / "out"
    out.mkdir()
    inside = out / "metrics.json"
    inside.write_text(files["lip"].read_text())
    for extra in ([], ["--overwrite"]):
        with pytest.raises(SystemExit) as exit_info:
            run_tool(tool, files, out, f"a={inside}", extra=extra)
        assert_one_error(exit_info, r"input file '.*metrics.json' is also where the report writes")
    assert inside.read_text() == files["lip"].read_text()


def test_duplicate_run_names_are_refused(tool, files, tmp_path, capsys):
    with pytest.raises(SystemExit):
        tool(["--gt", str(files["gt"]), "--results", f"a={files['lip']}", f"a={files['lip']}",
              "--out", str(tmp_path)])  # fmt: skip
    assert "run names must be unique" in capsys.readouterr().err
