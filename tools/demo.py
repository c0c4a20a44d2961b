#!/usr/bin/env python
"""
`make demo`: train and evaluate a small LIP-ResNet-18 FPN Faster R-CNN on the CPU, in minutes.

1. generates (or reuses) a seeded synthetic dataset of small shapes under datasets/lip_synthetic/
   (lip_det/data/synthetic.py),
2. registers it and trains configs/Demo/faster_rcnn_LIP_R_18_FPN_demo.yaml from scratch through
   the same code as tools/train_net.py (lip_det.engine.run),
3. evaluates COCO AP on the validation split and prints where everything went.

About 5 minutes on 2 CPU cores shared with other jobs (box AP ~29 after 200 iterations).

    python tools/demo.py                                  # the defaults below
    python tools/demo.py --num-train 32 SOLVER.MAX_ITER 50  # quicker; KEY VALUE go to the config
"""

import argparse
import os
import sys

import torch

import lip_det  # noqa: F401  (first: detectron2 compatibility fixes, backbone registration)
from lip_det.data import SyntheticSpec, generate_synthetic_coco
from lip_det.engine import SetupError, argument_parser, run

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TRAIN, VAL = "lip_synthetic_train", "lip_synthetic_val"  # the names the demo config trains on


def get_parser():
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0].strip(),
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument(
        "--config-file",
        default=os.path.join(REPO, "configs/Demo/faster_rcnn_LIP_R_18_FPN_demo.yaml"),
    )
    parser.add_argument("--data-dir", default=os.path.join(REPO, "datasets/lip_synthetic"))
    parser.add_argument("--output-dir", default=os.path.join(REPO, "output/demo"))
    parser.add_argument("--num-train", type=int, default=96, help="training images")
    parser.add_argument("--num-val", type=int, default=32, help="validation images")
    parser.add_argument("--image-size", type=int, default=128, help="square image side, pixels")
    parser.add_argument("--seed", type=int, default=0, help="dataset seed")
    parser.add_argument(
        "--threads",
        type=int,
        default=1,
        help="torch CPU threads. 1 by default: on a machine whose cores are shared with other "
        "jobs, two threads that wait for each other at every op made a step ~4x slower than one "
        "thread (measured on 2 cores); give --threads 2 on an idle 2-core machine (~1.8x faster)",
    )
    parser.add_argument("opts", nargs=argparse.REMAINDER, help="KEY VALUE config overrides")
    return parser


def main(argv=None):
    args = get_parser().parse_args(argv)
    torch.set_num_threads(args.threads)
    size = args.image_size
    splits = {}
    for name, split, count, seed in (
        (TRAIN, "train", args.num_train, args.seed),
        # a far-away seed: no validation image repeats a training image of a nearby --seed
        (VAL, "val", args.num_val, args.seed + 1_000_000),
    ):
        spec = SyntheticSpec(num_images=count, height=size, width=size, seed=seed)
        splits[name] = generate_synthetic_coco(os.path.join(args.data_dir, split), spec)

    train_args = ["--config-file", args.config_file]
    for name, (json_file, image_root, _) in splits.items():
        train_args += ["--dataset", name, json_file, image_root]
    train_args += [
        "OUTPUT_DIR", args.output_dir,
        "INPUT.MIN_SIZE_TRAIN", f"({size},)", "INPUT.MAX_SIZE_TRAIN", str(size),
        "INPUT.MIN_SIZE_TEST", str(size), "INPUT.MAX_SIZE_TEST", str(size),
    ]  # fmt: skip
    train_args += args.opts
    results = run(argument_parser().parse_args(train_args))

    out = args.output_dir
    print("\n== lip_det demo: done")
    for name, (json_file, image_root, _) in splits.items():
        print(f"dataset {name:<20} {json_file} (images: {image_root})")
    for what, path in (
        ("config used", "config.yaml"),
        ("training log", "log.txt"),
        ("losses per iteration", "metrics.json"),
        ("trained model", "model_final.pth"),
        ("detections (COCO json)", "inference/coco_instances_results.json"),
    ):
        path = os.path.join(out, path)
        print(f"{what:<27} {path}{'' if os.path.exists(path) else '  (not written)'}")
    bbox = (results or {}).get("bbox", {})
    if bbox:
        print("COCO box AP on the validation split: " + ", ".join(
            f"{k} {bbox[k]:.1f}" for k in ("AP", "AP50", "AP75", "APs") if k in bbox
        ))  # fmt: skip
    return results


if __name__ == "__main__":
    try:
        main()
    except SetupError as e:
        sys.exit(f"error: {e}")
