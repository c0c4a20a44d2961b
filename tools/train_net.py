#!/usr/bin/env python
"""
Train or evaluate a lip_det model from a yacs config (detectron2's tools/train_net.py, for LIP).

    python tools/train_net.py --num-gpus 8 \
        --config-file configs/COCO-Detection/faster_rcnn_LIP_R_50_FPN_1x.yaml
    python tools/train_net.py --config-file CONFIG --eval-only MODEL.WEIGHTS output/model_final.pth
    python tools/train_net.py --config-file CONFIG \
        --dataset my_train my/train.json my/images --dataset my_val my/val.json my/images \
        DATASETS.TRAIN '("my_train",)' DATASETS.TEST '("my_val",)' \
        MODEL.ROI_HEADS.NUM_CLASSES 3 MODEL.DEVICE cpu

The logic lives in lip_det.engine, so that it can be used from Python too.
"""

import sys

import lip_det  # noqa: F401  (first: detectron2 compatibility fixes, backbone registration)
from lip_det.engine import SetupError, argument_parser, run

if __name__ == "__main__":
    args = argument_parser().parse_args()
    print("Command Line Args:", args)
    try:
        run(args)
    except SetupError as e:
        sys.exit(f"error: {e}")
