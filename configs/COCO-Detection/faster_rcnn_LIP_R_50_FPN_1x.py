"""
LazyConfig twin of faster_rcnn_LIP_R_50_FPN_1x.yaml: Faster R-CNN, LIP-ResNet-50 FPN, 1x.

The same model (parameter for parameter; tests/test_configs.py checks it), solver, schedule and
input recipe as the yaml, written as detectron2 LazyConfig objects. detectron2 v0.6 as packaged
does not ship configs/common, so the model, data, optimizer and schedule are spelled out here,
following detectron2's configs/common/{models/mask_rcnn_fpn,data/coco,optim,coco_schedule,train}.py.

    python tools/train_net.py --config-file configs/COCO-Detection/faster_rcnn_LIP_R_50_FPN_1x.py \
        --num-gpus 8 [dotted.key=value ...]

Expects the converted ImageNet LIP-ResNet-50 (README, "Pretrained weights"); set
train.init_checkpoint="" to train from scratch.
"""

import detectron2.data.transforms as T
import torch
from detectron2.config import LazyCall as L
from detectron2.data import (
    build_detection_test_loader,
    build_detection_train_loader,
    get_detection_dataset_dicts,
)
from detectron2.layers import ShapeSpec
from detectron2.modeling.anchor_generator import DefaultAnchorGenerator
from detectron2.modeling.backbone import FPN
from detectron2.modeling.backbone.fpn import LastLevelMaxPool
from detectron2.modeling.box_regression import Box2BoxTransform
from detectron2.modeling.matcher import Matcher
from detectron2.modeling.meta_arch import GeneralizedRCNN
from detectron2.modeling.poolers import ROIPooler
from detectron2.modeling.proposal_generator import RPN, StandardRPNHead
from detectron2.modeling.roi_heads import (
    FastRCNNConvFCHead,
    FastRCNNOutputLayers,
    StandardROIHeads,
)
from detectron2.solver import WarmupParamScheduler
from detectron2.solver.build import get_default_optimizer_params
from fvcore.common.param_scheduler import MultiStepParamScheduler
from omegaconf import OmegaConf

from lip_det.data import DatasetMapper  # detectron2's, reading 16-bit images, skipping unreadable
from lip_det.evaluation import SmallObjectCOCOEvaluator
from lip_det.modeling import LIPResNet, LIPStem

# ---- backbone: LIP-ResNet-50, the yaml's MODEL.RESNETS / MODEL.LIP defaults --------------------
NORM = "FrozenBN"  # MODEL.RESNETS.NORM: ImageNet BN statistics stay fixed
# MODEL.LIP defaults: bottleneck logit modules of width 128, SoftGate coefficient 12
LIP_ARGS = {"logit": "bottleneck", "bottleneck_width": 128, "gate_coeff": 12.0, "impl": "auto"}


model = L(GeneralizedRCNN)(
    backbone=L(FPN)(
        bottom_up=L(LIPResNet)(
            stem=L(LIPStem)(
                in_channels=3,
                out_channels=64,
                norm=NORM,
                logit="simplified",
                gate_coeff=LIP_ARGS["gate_coeff"],
                impl=LIP_ARGS["impl"],
            ),
            # res2..res5; the first block of res3-res5 pools with LIP (paper: all seven places),
            # every other block is detectron2's BottleneckBlock, torchvision-style
            stages=L(LIPResNet.make_lip_stages)(
                depth=50, norm=NORM, stride_in_1x1=False, **LIP_ARGS
            ),
            out_features=["res2", "res3", "res4", "res5"],
            freeze_at=2,  # MODEL.BACKBONE.FREEZE_AT: stem and res2 (their LIPs included)
            train_frozen_lip=False,
        ),
        in_features="${.bottom_up.out_features}",
        out_channels=256,
        top_block=L(LastLevelMaxPool)(),
    ),
    proposal_generator=L(RPN)(
        in_features=["p2", "p3", "p4", "p5", "p6"],
        head=L(StandardRPNHead)(in_channels=256, num_anchors=3),
        anchor_generator=L(DefaultAnchorGenerator)(
            sizes=[[32], [64], [128], [256], [512]],
            aspect_ratios=[0.5, 1.0, 2.0],
            strides=[4, 8, 16, 32, 64],
            offset=0.0,
        ),
        anchor_matcher=L(Matcher)(
            thresholds=[0.3, 0.7], labels=[0, -1, 1], allow_low_quality_matches=True
        ),
        box2box_transform=L(Box2BoxTransform)(weights=[1.0, 1.0, 1.0, 1.0]),
        batch_size_per_image=256,
        positive_fraction=0.5,
        pre_nms_topk=(2000, 1000),
        post_nms_topk=(1000, 1000),
        nms_thresh=0.7,
    ),
    roi_heads=L(StandardROIHeads)(
        num_classes=80,
        batch_size_per_image=512,
        positive_fraction=0.25,
        proposal_matcher=L(Matcher)(
            thresholds=[0.5], labels=[0, 1], allow_low_quality_matches=False
        ),
        box_in_features=["p2", "p3", "p4", "p5"],
        box_pooler=L(ROIPooler)(
            output_size=7,
            scales=(1.0 / 4, 1.0 / 8, 1.0 / 16, 1.0 / 32),
            sampling_ratio=0,
            pooler_type="ROIAlignV2",
        ),
        box_head=L(FastRCNNConvFCHead)(
            input_shape=L(ShapeSpec)(channels=256, height=7, width=7),
            conv_dims=[],
            fc_dims=[1024, 1024],
        ),
        box_predictor=L(FastRCNNOutputLayers)(
            input_shape=L(ShapeSpec)(channels=1024),
            test_score_thresh=0.05,
            box2box_transform=L(Box2BoxTransform)(weights=(10, 10, 5, 5)),
            num_classes="${..num_classes}",
        ),
    ),
    # torchvision ImageNet normalisation, RGB: what the LIP-ResNet weights were trained with
    pixel_mean=[123.675, 116.28, 103.53],
    pixel_std=[58.395, 57.12, 57.375],
    input_format="RGB",
)

# ---- data: COCO 2017, detectron2's multi-scale training ----------------------------------------
dataloader = OmegaConf.create()
dataloader.train = L(build_detection_train_loader)(
    dataset=L(get_detection_dataset_dicts)(names="coco_2017_train"),
    mapper=L(DatasetMapper)(
        is_train=True,
        augmentations=[
            L(T.ResizeShortestEdge)(
                short_edge_length=(640, 672, 704, 736, 768, 800),
                sample_style="choice",
                max_size=1333,
            ),
            L(T.RandomFlip)(horizontal=True),
        ],
        image_format="RGB",  # = model.input_format
        use_instance_mask=False,
    ),
    total_batch_size=16,
    num_workers=4,
)
dataloader.test = L(build_detection_test_loader)(
    dataset=L(get_detection_dataset_dicts)(names="coco_2017_val", filter_empty=False),
    mapper=L(DatasetMapper)(
        is_train=False,
        augmentations=[L(T.ResizeShortestEdge)(short_edge_length=800, max_size=1333)],
        image_format="${...train.mapper.image_format}",
    ),
    num_workers=4,
)
# COCO AP/AR plus the per-size-bucket numbers (TEST.SMALL_OBJECT defaults of the yaml configs)
dataloader.evaluator = L(SmallObjectCOCOEvaluator)(
    dataset_name="${..test.dataset.names}",
    tasks=("bbox",),
    output_dir="${...train.output_dir}/inference",
)

# ---- solver: SGD, lr 0.02 for 16 images, 90k iterations, steps at 60k and 80k -----------------
optimizer = L(torch.optim.SGD)(
    # params.model is set to the model object before instantiating the optimizer
    params=L(get_default_optimizer_params)(weight_decay_norm=0.0),
    lr=0.02,
    momentum=0.9,
    weight_decay=1e-4,
)
lr_multiplier = L(WarmupParamScheduler)(
    scheduler=L(MultiStepParamScheduler)(
        values=[1.0, 0.1, 0.01], milestones=[60000, 80000], num_updates=90000
    ),
    warmup_length=1000 / 90000,
    warmup_method="linear",
    warmup_factor=0.001,
)

train = {
    "output_dir": "./output",
    "init_checkpoint": "weights/LIP-R-50.pkl",
    "max_iter": 90000,
    # precision: "auto" (float16 on CUDA, bfloat16 on the CPU), "float16" or "bfloat16"
    "amp": {"enabled": False, "precision": "auto"},
    "ddp": {"broadcast_buffers": False, "find_unused_parameters": False, "fp16_compression": False},
    "checkpointer": {"period": 5000, "max_to_keep": 100},
    "eval_period": 5000,
    "log_period": 20,
    "device": "cuda",
}
