#!/usr/bin/env python
"""
`make demo`: a LIP detector and its plain twin trained side by side on small objects, on the CPU.

1. generates (or reuses) the seeded synthetic dataset of lip_det/data/synthetic.py under
   datasets/lip_synthetic/: tiles on cluttered backgrounds whose class is a small mark, 75 % of
   the training objects under 32 px, and a validation split with at least 100 objects in every
   default size bucket;
2. trains configs/Demo/faster_rcnn_LIP_R_18_FPN_demo.yaml (LIP-ResNet-18 FPN Faster R-CNN) and
   its twin faster_rcnn_R_18_FPN_demo.yaml (plain ResNet-18, same recipe) from scratch, through
   tools/train_net.py, both at once (one process and one torch thread each: --jobs 1 trains them
   one after the other); each is evaluated on the validation split when it finishes;
3. writes the small-object report comparing them (AP per size bucket with paired-bootstrap
   intervals, the significance of each difference, an error analysis per bucket, plots);
4. writes importance maps of the LIP model's seven LIP layers for a few validation images
   (tools/visualize_importance.py);

and prints where everything went. About 8 minutes on 2 idle CPU cores; see README.md, "Results".
With --seeds N (`make compare`) each model is trained N times (SEED 0..N-1) and the report
compares the means over seeds (mean ± std, the bootstrap resampling seeds as well as images).

    python tools/demo.py                                   # the defaults below
    python tools/demo.py --num-train 64 SOLVER.MAX_ITER 100  # quicker; KEY VALUE go to both configs
    python tools/demo.py --seeds 3 --output-dir output/compare   # make compare SEEDS=3
"""

import argparse
import dataclasses
import os
import re
import subprocess
import sys
import threading
import time

import lip_det  # noqa: F401  (first: detectron2 compatibility fixes, backbone registration)
from lip_det.data import SYNTHETIC_SPLITS, generate_synthetic_coco, size_fractions
from lip_det.engine import SetupError
from lip_det.evaluation import SizeBuckets, write_report
from lip_det.evaluation.report import INTERVALS_FILE, REPORT_FILE, metric_range
from lip_det.evaluation.tables import TOO_FEW, comparison_table
from lip_det.visualize import visualize_images

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TRAIN, VAL = "lip_demo_train", "lip_demo_val"
# the defaults: the specs of lip_det's built-in lip_synthetic_train / _val (the same cache)
TRAIN_SPEC = SYNTHETIC_SPLITS["lip_synthetic_train"][1]
VAL_SPEC = SYNTHETIC_SPLITS["lip_synthetic_val"][1]
# (run name, config): the twins, LIP first; the report's reference (for deltas) is the plain one.
MODELS = (
    ("LIP-R18", "configs/Demo/faster_rcnn_LIP_R_18_FPN_demo.yaml"),
    ("R18", "configs/Demo/faster_rcnn_R_18_FPN_demo.yaml"),
)
# Lines of a training's output echoed to the terminal (all of it goes to OUTPUT_DIR/train.out):
# detectron2's ETA lines, the final metrics, and anything that looks like a problem.
ECHO = re.compile(r"eta: |copypaste: |Traceback|Error|error: ")


def get_parser():
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0].strip(),
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument("--data-dir", default=os.path.join(REPO, "datasets/lip_synthetic"))
    parser.add_argument(
        "--output-dir",
        default=os.path.join(REPO, "output/demo"),
        help="where the runs, report and importance maps go; the demo's runs in it "
        "(OUTPUT_DIR/LIP-R18, OUTPUT_DIR/R18) are retrained from scratch on every call",
    )
    parser.add_argument("--num-train", type=int, default=TRAIN_SPEC.num_images)
    parser.add_argument("--num-val", type=int, default=VAL_SPEC.num_images)
    parser.add_argument(
        "--image-size", type=int, default=TRAIN_SPEC.height, help="square image side, pixels"
    )
    parser.add_argument("--seed", type=int, default=TRAIN_SPEC.seed, help="training data seed")
    parser.add_argument("--num-vis", type=int, default=4, help="images with importance maps")
    parser.add_argument(
        "--jobs",
        type=int,
        default=2,
        choices=(1, 2),
        help="trainings at once (2: both twins in parallel, one core each)",
    )
    parser.add_argument(
        "--threads",
        type=int,
        default=1,
        help="torch CPU threads per training. 1: on 2 cores, two single-threaded trainings side "
        "by side use the machine best; threads that wait for each other at every op on shared "
        "cores made a step ~4x slower (measured)",
    )
    parser.add_argument(
        "--seeds",
        type=int,
        default=1,
        help="trainings per model, with SEED 0..N-1; the report compares the means over seeds",
    )
    parser.add_argument(
        "--bootstrap", type=int, default=1000, help="bootstrap resamples of the report (0: none)"
    )
    parser.add_argument("opts", nargs=argparse.REMAINDER, help="KEY VALUE overrides (both models)")
    return parser


def generate_data(args):
    """{name: (json_file, image_root)} of the train and val splits, generated if not cached."""
    splits = {}
    for name, split, base, count, seed in (
        (TRAIN, "train", TRAIN_SPEC, args.num_train, args.seed),
        # a far-away seed: no validation image repeats a training image of a nearby --seed
        (VAL, "val", VAL_SPEC, args.num_val, args.seed + VAL_SPEC.seed - TRAIN_SPEC.seed),
    ):
        spec = dataclasses.replace(
            base,
            num_images=count,
            height=args.image_size,
            width=args.image_size,
            # the largest objects span most of a 128-px image; keep that margin for other sizes
            max_size=min(base.max_size, args.image_size - 8),
            min_size=min(base.min_size, args.image_size - 8),
            seed=seed,
        )
        json_file, image_root, _ = generate_synthetic_coco(os.path.join(args.data_dir, split), spec)
        splits[name] = (json_file, image_root)
    return splits


def bucket_counts(json_file):
    """Ground-truth objects per default size bucket of a COCO json (non-crowd)."""
    import json

    with open(json_file, encoding="utf-8") as f:
        anns = json.load(f)["annotations"]
    buckets = SizeBuckets()
    areas = [a["area"] for a in anns if not a.get("iscrowd", 0)]
    return dict(zip(buckets.labels, buckets.count(areas)))


def _train_command(config, output_dir, splits, args, seed=None):
    size = str(args.image_size)
    command = [sys.executable, os.path.join(REPO, "tools/train_net.py"), "--config-file", config]
    # The demo owns its output folders: a second `make demo` retrains from scratch in place.
    command.append("--overwrite")
    for name, (json_file, image_root) in splits.items():
        command += ["--dataset", name, json_file, image_root]
    command += [
        "DATASETS.TRAIN", f"('{TRAIN}',)", "DATASETS.TEST", f"('{VAL}',)",
        "OUTPUT_DIR", output_dir,
        "INPUT.MIN_SIZE_TRAIN", f"({size},)", "INPUT.MAX_SIZE_TRAIN", size,
        "INPUT.MIN_SIZE_TEST", size, "INPUT.MAX_SIZE_TEST", size,
    ]  # fmt: skip
    if seed is not None:
        command += ["SEED", str(seed)]
    return command + list(args.opts)


def _echo(run, process, log_path):
    """Copy a training's output into log_path, echoing the interesting lines with the run name."""
    with open(log_path, "w", encoding="utf-8") as log:
        for line in process.stdout:
            log.write(line)
            if ECHO.search(line):
                print(f"[{run:>7}] {line.rstrip()}", flush=True)


def training_jobs(args):
    """[(run, seed or None, config, OUTPUT_DIR)] of every training: each model of MODELS, once
    (OUTPUT_DIR/<run>, the config's SEED) or with --seeds N, N times (OUTPUT_DIR/<run>/seed<s>,
    SEED s)."""
    jobs = []
    for seed in range(args.seeds) if args.seeds > 1 else [None]:
        for run, config in MODELS:
            out_dir = os.path.join(args.output_dir, run)
            if seed is not None:
                out_dir = os.path.join(out_dir, f"seed{seed}")
            jobs.append((run, seed, config, out_dir))
    return jobs


def train_twins(splits, args):
    """Run every job of :func:`training_jobs` (--jobs at a time); returns them. Raises
    RuntimeError naming the failed run and its log."""
    env = {**os.environ, "OMP_NUM_THREADS": str(args.threads), "MKL_NUM_THREADS": str(args.threads)}
    jobs = training_jobs(args)
    pending = list(jobs)
    running = []
    while pending or running:
        while pending and len(running) < args.jobs:
            run, seed, config, out_dir = pending.pop(0)
            label = run if seed is None else f"{run} s{seed}"
            os.makedirs(out_dir, exist_ok=True)
            log_path = os.path.join(out_dir, "train.out")
            print(f"== training {label} ({config}) -> {out_dir}", flush=True)
            process = subprocess.Popen(
                _train_command(os.path.join(REPO, config), out_dir, splits, args, seed),
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                text=True,
                env=env,
                cwd=REPO,
            )
            echo = threading.Thread(target=_echo, args=(label, process, log_path), daemon=True)
            echo.start()
            running.append((label, process, echo, log_path))
        time.sleep(1)
        for item in list(running):
            label, process, echo, log_path = item
            if process.poll() is None:
                continue
            echo.join()
            running.remove(item)
            if process.returncode != 0:
                for _, other, _, _ in running:
                    other.terminate()
                with open(log_path, encoding="utf-8") as f:
                    tail = "".join(f.readlines()[-15:])
                raise RuntimeError(
                    f"training {label} failed (exit status {process.returncode}); its output is "
                    f"in {log_path}, ending with:\n{tail}"
                )
    return jobs


def main(argv=None):
    args = get_parser().parse_args(argv)
    if args.seeds < 1:
        raise ValueError(f"--seeds must be at least 1, got {args.seeds}")
    start = time.time()
    splits = generate_data(args)
    val_json, val_images = splits[VAL]
    fractions = size_fractions(splits[TRAIN][0])
    counts = bucket_counts(val_json)
    print(
        f"== data: {args.num_train} train / {args.num_val} val images of {args.image_size} px in "
        f"{args.data_dir}; {fractions[16]:.0%} of the training objects under 16 px, "
        f"{fractions[32]:.0%} under 32 px; validation objects per size bucket: "
        + ", ".join(f"{label} {n}" for label, n in counts.items()),
        flush=True,
    )

    jobs = train_twins(splits, args)

    results = {}
    for run, _ in reversed(MODELS):  # the plain twin first: the reference of the deltas
        files = [
            os.path.join(out_dir, "inference", "coco_instances_results.json")
            for name, _, _, out_dir in jobs
            if name == run
        ]
        results[run] = files if len(files) > 1 else files[0]
    report_dir = os.path.join(args.output_dir, "report")
    report_start = time.time()
    metrics = write_report(
        val_json, results, report_dir, engine="fast", progress=False, bootstrap=args.bootstrap
    )
    report_seconds = time.time() - report_start
    # AP overall and per size; the per-category APs and the ARs are in the report
    summary = {
        run: {k: v for k, v in m.items() if k.startswith("AP") and not k.startswith("AP-")}
        for run, m in metrics.items()
    }
    intervals = {}
    if args.bootstrap:
        import json

        with open(os.path.join(report_dir, INTERVALS_FILE), encoding="utf-8") as f:
            intervals = json.load(f)
    thin = set(intervals.get("too_few_objects", []))

    lip_run, lip_config = MODELS[0]
    lip_dir = next(out_dir for name, _, _, out_dir in jobs if name == lip_run)
    vis_dir = os.path.join(args.output_dir, "importance")
    images = sorted(os.listdir(val_images))[: args.num_vis]
    size = str(args.image_size)
    visualize_images(
        os.path.join(REPO, lip_config),
        [os.path.join(val_images, name) for name in images],
        vis_dir,
        opts=[
            "MODEL.WEIGHTS",
            os.path.join(lip_dir, "model_final.pth"),
            "INPUT.MIN_SIZE_TEST",
            size,
            "INPUT.MAX_SIZE_TEST",
            size,
        ],  # fmt: skip
        threads=args.threads,
    )

    print(
        f"\n== lip_det demo: done in {(time.time() - start) / 60:.1f} min (the report: "
        f"{report_seconds:.0f} s)"
    )
    print(
        comparison_table(
            summary,
            intervals=intervals.get("runs"),
            deltas=intervals.get("deltas"),
            notes={m: TOO_FEW for m in next(iter(summary.values())) if metric_range(m) in thin},
        )
    )
    if intervals:
        seeds = f", over {args.seeds} seeds per model" if args.seeds > 1 else ""
        print(
            f"[a, b]: {round(intervals['level'] * 100)} % paired-bootstrap intervals over the "
            f"validation images{seeds}; a Δ marked * is significant, the others are noise."
        )
    runs = [(f"{run} run{'s' if args.seeds > 1 else ''} (log.txt, model_final.pth)",
             os.path.join(args.output_dir, run)) for run, _ in MODELS]  # fmt: skip
    for what, path in (
        ("training data (COCO json)", splits[TRAIN][0]),
        ("validation data (COCO json)", val_json),
        *runs,
        ("small-object report", os.path.join(report_dir, REPORT_FILE)),
        ("importance maps", vis_dir),
    ):
        print(f"{what:<40} {path}")
    return metrics


if __name__ == "__main__":
    try:
        main()
    except (SetupError, RuntimeError, ValueError) as e:
        sys.exit(f"error: {e}")
