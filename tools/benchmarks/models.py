"""Model level: LIP-R{depth}-FPN Faster R-CNN against its plain twin R{depth}-FPN (depths 121,
169 and 201: LIP-DenseNet-{depth}-FPN against DenseNet-{depth}-FPN).

Parameters, bottom-up FLOPs, train-step and inference time (interleaved rounds) and peak memory,
on a batch of synthetic images; how each is measured is in ``benchmarks``' docstring.
"""

import logging
import warnings

import torch
from detectron2.config import get_cfg
from detectron2.layers import FrozenBatchNorm2d
from detectron2.modeling import build_model
from detectron2.structures import Boxes, Instances
from detectron2.utils.events import EventStorage
from fvcore.nn import FlopCountAnalysis

from lip_det.config import add_lip_config
from lip_det.layers import LIP, BottleneckTrunk, ConvLogit
from lip_det.layers.flops import add_lip_flop_handles
from lip_det.modeling import NUM_LAYERS_PER_BLOCK
from lip_det.utils.benchmark import (
    fastest_ratio,
    median_ratio,
    peak_memory_bytes,
    saved_tensor_bytes_by_module,
    time_interleaved,
)

from .common import summary

__all__ = [
    "FLOP_SIZES",
    "IMAGE_SIZE",
    "QUICK_FLOP_SIZES",
    "QUICK_IMAGE_SIZE",
    "Detector",
    "backbone_flops",
    "benchmark_models",
    "build_detectors",
    "count_parameters",
    "detection_cfg",
    "model_names",
    "synthetic_batch",
]

# A CPU-friendly detection input, about a third of the pixels of COCO's 800x1333, divisible by 32
# (FPN's size divisibility) so that no padding is added.
IMAGE_SIZE = (512, 672)
QUICK_IMAGE_SIZE = (96, 128)
FLOP_SIZES = ((224, 224), (800, 1333))
QUICK_FLOP_SIZES = ((224, 224),)


def detection_cfg(depth, *, lip, device="cpu", light_heads=False):
    """Faster R-CNN with FPN as our configs/COCO-Detection/faster_rcnn_{LIP_,}R_{depth}_FPN_1x,
    built in code: FrozenBN, FREEZE_AT 2, torchvision-style blocks, COCO's 80 classes, no
    pretrained weights.

    ``lip`` selects build_lip_resnet_fpn_backbone (MODEL.LIP defaults: the paper's seven LIPs)
    instead of build_resnet_fpn_backbone. ``light_heads`` keeps 100 proposals and samples 64 RoIs
    per image instead of 1000 and 512 (for --quick: the box head's FC layers otherwise dominate a
    tiny-image step).
    """
    cfg = get_cfg()
    add_lip_config(cfg)
    cfg.MODEL.DEVICE = str(device)
    cfg.MODEL.WEIGHTS = ""
    cfg.MODEL.MASK_ON = False
    cfg.MODEL.META_ARCHITECTURE = "GeneralizedRCNN"
    if depth in NUM_LAYERS_PER_BLOCK:  # (LIP-)DenseNet-121/169/201, as the DenseNet configs
        cfg.MODEL.BACKBONE.NAME = (
            "build_lip_densenet_fpn_backbone" if lip else "build_densenet_fpn_backbone"
        )
        cfg.MODEL.DENSENET.DEPTH = depth
        cfg.MODEL.DENSENET.OUT_FEATURES = ["dense2", "dense3", "dense4", "dense5"]
        cfg.MODEL.FPN.IN_FEATURES = ["dense2", "dense3", "dense4", "dense5"]
    else:
        cfg.MODEL.BACKBONE.NAME = (
            "build_lip_resnet_fpn_backbone" if lip else "build_resnet_fpn_backbone"
        )
        cfg.MODEL.RESNETS.DEPTH = depth
        cfg.MODEL.RESNETS.RES2_OUT_CHANNELS = 64 if depth in (18, 34) else 256
        # The plain twin of our configs (configs/Base-RCNN-FPN-torchvision.yaml) and of the
        # paper's table: torchvision-style blocks with the stride on the 3x3 conv. detectron2's
        # default (stride on conv1, MSRA) is cheaper (3.87 vs 4.10 GFLOPs for R50 at 224x224).
        cfg.MODEL.RESNETS.STRIDE_IN_1X1 = False
        cfg.MODEL.RESNETS.OUT_FEATURES = ["res2", "res3", "res4", "res5"]
        cfg.MODEL.FPN.IN_FEATURES = ["res2", "res3", "res4", "res5"]
    cfg.MODEL.ANCHOR_GENERATOR.SIZES = [[32], [64], [128], [256], [512]]
    cfg.MODEL.ANCHOR_GENERATOR.ASPECT_RATIOS = [[0.5, 1.0, 2.0]]
    cfg.MODEL.RPN.IN_FEATURES = ["p2", "p3", "p4", "p5", "p6"]
    cfg.MODEL.RPN.PRE_NMS_TOPK_TRAIN = 2000
    cfg.MODEL.RPN.PRE_NMS_TOPK_TEST = 1000
    cfg.MODEL.RPN.POST_NMS_TOPK_TRAIN = 1000
    cfg.MODEL.RPN.POST_NMS_TOPK_TEST = 1000
    cfg.MODEL.ROI_HEADS.NAME = "StandardROIHeads"
    cfg.MODEL.ROI_HEADS.IN_FEATURES = ["p2", "p3", "p4", "p5"]
    cfg.MODEL.ROI_BOX_HEAD.NAME = "FastRCNNConvFCHead"
    cfg.MODEL.ROI_BOX_HEAD.NUM_FC = 2
    cfg.MODEL.ROI_BOX_HEAD.POOLER_RESOLUTION = 7
    cfg.SOLVER.IMS_PER_BATCH = 2
    if light_heads:
        cfg.MODEL.RPN.PRE_NMS_TOPK_TRAIN = cfg.MODEL.RPN.PRE_NMS_TOPK_TEST = 200
        cfg.MODEL.RPN.POST_NMS_TOPK_TRAIN = cfg.MODEL.RPN.POST_NMS_TOPK_TEST = 100
        cfg.MODEL.ROI_HEADS.BATCH_SIZE_PER_IMAGE = 64
    return cfg


def model_names(depth):
    if depth in NUM_LAYERS_PER_BLOCK:
        return f"LIP-DenseNet-{depth}-FPN", f"DenseNet-{depth}-FPN"
    return f"LIP-R{depth}-FPN", f"R{depth}-FPN"


def count_parameters(module):
    """Parameter elements, with FrozenBatchNorm2d's affine weight and bias (buffers) included."""
    count = sum(p.numel() for p in module.parameters())
    for m in module.modules():
        if isinstance(m, FrozenBatchNorm2d):
            count += m.weight.numel() + m.bias.numel()
    return count


def backbone_flops(bottom_up, height, width):
    """fvcore FLOPs of ``bottom_up`` on one ``height`` x ``width`` image, lip2d counted by
    :mod:`lip_det.layers.flops`'s handle (see ``benchmarks``' docstring).

    Returns:
        dict: total, logit_modules (LIP's logit convs and norms), lip2d (the op), uncounted
        (fvcore's unsupported op kinds with their call counts).
    """
    device = next(bottom_up.parameters()).device
    was_training = bottom_up.training
    image = torch.zeros(1, 3, height, width, device=device)
    analysis = add_lip_flop_handles(FlopCountAnalysis(bottom_up.eval(), image))
    analysis.unsupported_ops_warnings(False).uncalled_modules_warnings(False).tracer_warnings(
        "none"
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        # fvcore logs a summary of skipped ops even with its warnings off
        logger = logging.getLogger("fvcore.nn.jit_analysis")
        level = logger.level
        logger.setLevel(logging.ERROR)
        try:
            total = analysis.total()
            by_module = analysis.by_module()
            by_operator = analysis.by_operator()
            uncounted = dict(analysis.unsupported_ops())
        finally:
            logger.setLevel(level)
            bottom_up.train(was_training)
    logit_names = [
        name for name, m in bottom_up.named_modules() if isinstance(m, (ConvLogit, BottleneckTrunk))
    ]
    return {
        "total": total,
        "logit_modules": sum(by_module[name] for name in logit_names),
        # fvcore's name of a handled op: "lip2d" (lip_det::lip2d), "PythonOp.LeanLIP2d"
        "lip2d": sum(v for k, v in by_operator.items() if k.lower().endswith("lip2d")),
        "uncounted": uncounted,
    }


def synthetic_batch(num_images, height, width, *, boxes_per_image=4, num_classes=80, seed=0,
                    device="cpu"):  # fmt: skip
    """Detectron2 training inputs: random images (0..255) with a few random boxes (32 px to half
    the image) and classes each."""
    generator = torch.Generator().manual_seed(seed)
    batch = []
    for _ in range(num_images):
        image = torch.randint(0, 256, (3, height, width), generator=generator).float()
        size = 32 + torch.rand(boxes_per_image, 2, generator=generator) * (
            torch.tensor([width, height]) / 2 - 32
        )
        corner = torch.rand(boxes_per_image, 2, generator=generator) * (
            torch.tensor([width, height]) - size
        )
        instances = Instances((height, width))
        instances.gt_boxes = Boxes(torch.cat([corner, corner + size], dim=1))
        instances.gt_classes = torch.randint(
            0, num_classes, (boxes_per_image,), generator=generator
        )
        batch.append(
            {
                "image": image.to(device),
                "height": height,
                "width": width,
                "instances": instances.to(device),
            }
        )
    return batch


class Detector:
    """A built model with its optimizer, train-step and inference callables."""

    def __init__(self, cfg, batch):
        torch.manual_seed(0)  # the same initialisation wherever the two models share modules
        self.model = build_model(cfg)
        # Untrained, the two models' RPN scores and box deltas differ at random, and with them the
        # number of proposals that survive NMS (36-51 vs 259-261 per 128x160 image, measured) and
        # all the RoI-head work after it. Zero predictors make every proposal an anchor with
        # equal objectness and every class score 1/81 < the 0.05 test threshold in both models,
        # so both do the same head work and the ratio measures the backbones (a trained model
        # keeps ~1000 proposals per image, as here at 512x672).
        rpn_head = self.model.proposal_generator.rpn_head
        predictors = (rpn_head.objectness_logits, rpn_head.anchor_deltas)
        for layer in (*predictors, self.model.roi_heads.box_predictor.cls_score):
            torch.nn.init.zeros_(layer.weight)
            torch.nn.init.zeros_(layer.bias)
        params = [p for p in self.model.parameters() if p.requires_grad]
        # lr 0: the step does all of SGD's work (momentum, weight decay, the update) but leaves
        # the weights as they are, so every timed step runs the same model. Without pretrained
        # weights FrozenBN is the identity, and a real lr makes these detectors diverge to NaN
        # within a step or two.
        self.optimizer = torch.optim.SGD(
            params,
            lr=0.0,
            momentum=cfg.SOLVER.MOMENTUM,
            weight_decay=cfg.SOLVER.WEIGHT_DECAY,
        )
        self.batch = batch
        self.storage = EventStorage(0)  # detectron2's heads log training statistics into it

    def train_step(self):
        """One SGD iteration as detectron2's SimpleTrainer runs it (data loading excluded)."""
        self.model.train()
        with self.storage:
            losses = sum(self.model(self.batch).values())
        self.optimizer.zero_grad(set_to_none=True)
        losses.backward()
        with torch.profiler.record_function("bench::optimizer"):
            self.optimizer.step()

    def inference(self):
        self.model.eval()
        with torch.no_grad():
            self.model(self.batch)


def recompute_name(depth):
    return f"{model_names(depth)[0]} recompute"


def build_detectors(depth, device, image_size, light_heads, *, recompute=False):
    """{name: Detector} of the LIP model and its plain twin; with ``recompute`` also the LIP
    model with MODEL.LIP.RECOMPUTE (the same weights: one seed)."""
    batch = synthetic_batch(2, *image_size, device=device)
    cfgs = {
        name: detection_cfg(depth, lip=lip, device=device, light_heads=light_heads)
        for name, lip in zip(model_names(depth), (True, False))
    }
    if recompute:
        cfg = detection_cfg(depth, lip=True, device=device, light_heads=light_heads)
        cfg.MODEL.LIP.RECOMPUTE = True
        cfgs[recompute_name(depth)] = cfg
    return {name: Detector(cfg, batch) for name, cfg in cfgs.items()}


def saved_bytes_by_part(detector):
    """Bytes autograd keeps for backward in one training forward, by part of the model: the
    bottom-up's stem and stages (without their LIPs), its LIPs (logit modules and lip2d), FPN,
    RPN, RoI heads."""
    model = detector.model
    bottom_up = model.backbone.bottom_up
    groups = {
        "LIP: logit modules + lip2d": [
            m for m in bottom_up.modules() if isinstance(m, (LIP, BottleneckTrunk))
        ],
    }
    for name, child in bottom_up.named_children():
        groups[f"bottom-up {name}"] = [child]
    groups["FPN"] = [model.backbone]
    groups["RPN"] = [model.proposal_generator]
    groups["ROI heads"] = [model.roi_heads]
    model.train()

    def forward():
        with detector.storage:
            sum(model(detector.batch).values())

    return saved_tensor_bytes_by_module(forward, groups)


def benchmark_models(depth, *, device="cpu", image_size=IMAGE_SIZE, flop_sizes=FLOP_SIZES,
                     rounds=5, warmup=1, light_heads=False, log=print):  # fmt: skip
    """LIP-R{depth}-FPN against R{depth}-FPN Faster R-CNN: parameters, backbone FLOPs, train-step
    and inference time (interleaved rounds) and peak memory, on a batch of 2 synthetic images of
    ``image_size``."""
    device = torch.device(device)
    lip_name, plain_name = model_names(depth)
    slow_name = recompute_name(depth)
    detectors = build_detectors(depth, device, image_size, light_heads, recompute=True)
    recompute = detectors.pop(slow_name)
    results = {name: {} for name in detectors}
    for name, det in detectors.items():
        r = results[name]
        r["params_bottom_up"] = count_parameters(det.model.backbone.bottom_up)
        r["params_model"] = count_parameters(det.model)
        r["params_trainable"] = sum(p.numel() for p in det.model.parameters() if p.requires_grad)
        log(
            f"  {name}: {r['params_bottom_up']:,} bottom-up parameters, "
            f"{r['params_model']:,} in the model ({r['params_trainable']:,} trainable)"
        )
        r["flops"] = {}
        for h, w in flop_sizes:
            flops = backbone_flops(det.model.backbone.bottom_up, h, w)
            r["flops"][f"{h}x{w}"] = flops
            log(
                f"  {name}: bottom-up {flops['total'] / 1e9:.3f} GFLOPs at {h}x{w} (logit modules "
                f"{flops['logit_modules'] / 1e9:.3f}, lip2d {flops['lip2d'] / 1e9:.4f})"
            )

    time_ratios = {}
    for kind in ("train_step", "inference"):

        def on_round(index, seconds, kind=kind):
            log(
                f"  {kind} round {index + 1}/{rounds}: "
                + ", ".join(f"{n} {1e3 * s:.0f} ms" for n, s in seconds.items())
            )

        fns = {name: getattr(det, kind) for name, det in detectors.items()}
        if kind == "train_step":  # recomputation changes only what training keeps
            fns[slow_name] = recompute.train_step
        samples = time_interleaved(fns, rounds=rounds, device=device, warmup=warmup,
                                   on_round=on_round)  # fmt: skip
        for name in detectors:
            results[name][kind] = summary(samples[name])
        if kind == "train_step":
            del fns[slow_name]  # its peak memory is measured here, the others' below
            recompute_results = {
                "train_step": summary(samples[slow_name]),
                "peak_bytes_train_step": peak_memory_bytes(recompute.train_step, device),
            }
            recompute_ratios = {
                "train_step": median_ratio(samples, slow_name, plain_name),
                "train_step_best": fastest_ratio(samples, slow_name, plain_name),
            }
        ratio = time_ratios[kind] = median_ratio(samples, lip_name, plain_name)
        best = time_ratios[f"{kind}_best"] = fastest_ratio(samples, lip_name, plain_name)
        log(
            f"  {kind}: {lip_name} / {plain_name} = {ratio:.3f} (median of per-round ratios), "
            f"{best:.3f} (fastest samples)"
        )
        for name, fn in fns.items():
            results[name][f"peak_bytes_{kind}"] = peak = peak_memory_bytes(fn, device)
            log(f"  {name}: peak memory of one {kind} {peak / 2**20:.0f} MiB")

    lip, plain = results[lip_name], results[plain_name]
    recompute_ratios["peak_bytes_train_step"] = (
        recompute_results["peak_bytes_train_step"] / plain["peak_bytes_train_step"]
    )
    log(
        f"  {slow_name}: train step {recompute_ratios['train_step']:.3f}x, peak memory "
        f"{recompute_ratios['peak_bytes_train_step']:.3f}x {plain_name}"
    )
    saved = {
        name: saved_bytes_by_part(det) for name, det in {**detectors, slow_name: recompute}.items()
    }
    ratios = {
        "params_bottom_up": lip["params_bottom_up"] / plain["params_bottom_up"],
        "params_model": lip["params_model"] / plain["params_model"],
        **time_ratios,
        "peak_bytes_train_step": lip["peak_bytes_train_step"] / plain["peak_bytes_train_step"],
        "peak_bytes_inference": lip["peak_bytes_inference"] / plain["peak_bytes_inference"],
    }
    for size in lip["flops"]:
        ratios[f"flops_{size}"] = lip["flops"][size]["total"] / plain["flops"][size]["total"]
    return {
        "depth": depth,
        "image_size": list(image_size),
        "images_per_batch": 2,
        "models": results,
        "lip_model": lip_name,
        "plain_model": plain_name,
        "ratios": ratios,
        # MODEL.LIP.RECOMPUTE: the LIP model recomputing its LIP parts in backward, timed in
        # the same interleaved rounds as the train steps above
        "recompute": {"model": slow_name, **recompute_results, "ratios": recompute_ratios},
        # bytes kept for backward by one training forward, per part of each model
        "saved_bytes_by_part": saved,
    }
