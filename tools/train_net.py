#!/usr/bin/env python
"""
Train or evaluate a lip_det model from a yacs config (detectron2's tools/train_net.py, for LIP).

    python tools/train_net.py --num-gpus 8 \
        --config-file configs/COCO-Detection/faster_rcnn_LIP_R_50_FPN_1x.yaml
    python tools/train_net.py --config-file CONFIG --eval-only MODEL.WEIGHTS output/model_final.pth
    python tools/train_net.py --config-file CONFIG --resume      # continue the run in OUTPUT_DIR
    python tools/train_net.py --config-file CONFIG --slurm --nodes 4 --gpus-per-node 8 \
        --partition PARTITION --time 72:00:00 [--dry-run]         # submit to SLURM (submitit)
    python tools/train_net.py --config-file CONFIG \
        --dataset my_train my/train.json my/images --dataset my_val my/val.json my/images \
        DATASETS.TRAIN '("my_train",)' DATASETS.TEST '("my_val",)' \
        MODEL.ROI_HEADS.NUM_CLASSES 3 MODEL.DEVICE cpu

SIGTERM, SIGINT or SIGUSR1 (--stop-signals) stop a training run after its current iteration
with a checkpoint and exit status 75; --resume continues from exactly there. The logic lives in
lip_det.engine, so that it can be used from Python too.
"""

import sys

import lip_det  # noqa: F401  (first: detectron2 compatibility fixes, backbone registration)
from lip_det.engine import SetupError, argument_parser, run
from lip_det.engine.slurm import submit

if __name__ == "__main__":
    args = argument_parser().parse_args()
    print("Command Line Args:", args)
    try:
        if args.slurm:
            submit(args)
        elif args.dry_run:
            raise SetupError("--dry-run shows what --slurm would submit: add --slurm")
        else:
            run(args)  # a run stopped by a signal raises SystemExit(75) (TrainingInterrupted)
    except SetupError as e:
        sys.exit(f"error: {e}")
