"""`make demo` (tools/demo.py) end to end, and the demo models learning on the synthetic data."""

import importlib.util
import json
import os

from conftest import CONFIGS, REPO

from lip_det.data import SyntheticSpec, generate_synthetic_coco
from lip_det.engine import argument_parser, run

PLACES = ["stem", "res3.main", "res3.shortcut", "res4.main", "res4.shortcut", "res5.main",
          "res5.shortcut"]  # fmt: skip


def _metrics(output_dir):
    with open(os.path.join(output_dir, "metrics.json")) as f:
        return [json.loads(line) for line in f]


def test_a_short_training_on_a_tiny_generated_set_lowers_the_loss(tmp_path):
    """40 iterations of the LIP demo model on 8 generated images: the total loss (detectron2's
    median over 20 iterations) of iterations 20-39 is well below that of iterations 0-19."""
    spec = SyntheticSpec(num_images=8, height=64, width=64, max_size=48, seed=0)
    json_file, image_root, _ = generate_synthetic_coco(tmp_path / "data", spec, progress=False)
    out = tmp_path / "out"
    args = argument_parser().parse_args(
        ["--config-file", str(CONFIGS / "Demo/faster_rcnn_LIP_R_18_FPN_demo.yaml"),
         "--dataset", "lip_test_demo_loss", json_file, image_root,
         "DATASETS.TRAIN", "('lip_test_demo_loss',)", "DATASETS.TEST", "()",
         "OUTPUT_DIR", str(out), "SOLVER.MAX_ITER", "40", "SOLVER.WARMUP_ITERS", "10",
         "SOLVER.STEPS", "()", "SOLVER.IMS_PER_BATCH", "2",
         "INPUT.MIN_SIZE_TRAIN", "(64,)", "INPUT.MAX_SIZE_TRAIN", "64"]
    )  # fmt: skip
    run(args)
    losses = {m["iteration"]: m["total_loss"] for m in _metrics(out) if "total_loss" in m}
    assert sorted(losses) == [19, 39]
    assert losses[39] < 0.75 * losses[19], losses


def _demo_module():
    spec = importlib.util.spec_from_file_location("lip_demo", REPO / "tools/demo.py")
    demo = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(demo)
    return demo


def test_demo_trains_the_twins_then_writes_the_report_and_importance_maps(tmp_path, capsys):
    """tools/demo.py on a tiny set: both twins trained (2 iterations) and evaluated, the
    comparison report holds both runs, and the LIP model's 7 layers are drawn for each image."""
    demo = _demo_module()
    data, out = tmp_path / "data", tmp_path / "out"
    argv = ["--data-dir", str(data), "--output-dir", str(out), "--num-train", "4",
            "--num-val", "2", "--image-size", "64", "--num-vis", "2",
            "SOLVER.MAX_ITER", "2", "SOLVER.IMS_PER_BATCH", "2"]  # fmt: skip
    demo.main(argv)
    # A second demo retrains in the same folders (train_net refuses a finished run without
    # --overwrite); the metrics below must hold one run's rows, not two runs' mixed.
    metrics = demo.main(argv)
    assert list(metrics) == ["R18", "LIP-R18"]  # the plain twin is the reference of the deltas
    assert all("AP" in m and "AP[8,16)" in m for m in metrics.values())
    with open(data / "train/annotations.json") as f:
        train = json.load(f)
    assert len(train["images"]) == 4 and train["images"][0]["height"] == 64
    for run_name in ("LIP-R18", "R18"):
        assert [m["iteration"] for m in _metrics(out / run_name) if "total_loss" in m] == [1]
        assert (out / run_name / "model_final.pth").is_file()
    with open(out / "report/metrics.json") as f:
        assert sorted(json.load(f)) == ["LIP-R18", "R18"]
    with open(out / "report/intervals.json") as f:
        assert list(json.load(f)["deltas"]) == ["LIP-R18"]
    val_images = sorted(os.listdir(data / "val/images"))
    for name in val_images:
        stem = os.path.splitext(name)[0]
        assert sorted(os.listdir(out / "importance" / stem)) == [
            f"{i}_{place}.png" for i, place in enumerate(PLACES)
        ]
        assert (out / "importance" / f"{stem}_layers.png").is_file()
    printed = capsys.readouterr().out
    for path in (out / "report/report.md", out / "importance", data / "val/annotations.json"):
        assert str(path) in printed
    assert "[LIP-R18] " in printed and "[    R18] " in printed  # the trainings' logs are echoed
    assert "validation objects per size bucket: [0,8) " in printed
    assert "paired-bootstrap intervals over the validation images" in printed


def test_seeds_train_each_model_several_times_and_report_the_means(tmp_path, capsys):
    demo = _demo_module()
    args = demo.get_parser().parse_args(["--seeds", "3", "--output-dir", str(tmp_path)])
    jobs = demo.training_jobs(args)
    assert [(name, seed) for name, seed, _, _ in jobs] == [
        (name, seed) for seed in range(3) for name in ("LIP-R18", "R18")
    ]
    assert jobs[0][3] == str(tmp_path / "LIP-R18" / "seed0")

    data, out = tmp_path / "data", tmp_path / "out"
    metrics = demo.main(
        ["--data-dir", str(data), "--output-dir", str(out), "--num-train", "4", "--num-val", "2",
         "--image-size", "64", "--num-vis", "1", "--seeds", "2", "--bootstrap", "50",
         "SOLVER.MAX_ITER", "1", "SOLVER.IMS_PER_BATCH", "2"]
    )  # fmt: skip
    assert list(metrics) == ["R18", "LIP-R18"]
    for run_name in ("LIP-R18", "R18"):
        for seed in (0, 1):
            log = (out / run_name / f"seed{seed}" / "log.txt").read_text()
            assert (out / run_name / f"seed{seed}" / "model_final.pth").is_file()
            assert "SEED" in log
    with open(out / "report/seeds.json") as f:
        seeds = json.load(f)
    assert sorted(seeds) == ["LIP-R18", "R18"] and len(seeds["R18"]["files"]) == 2
    assert "mean ± std over 2 result files" in (out / "report/report.md").read_text()
