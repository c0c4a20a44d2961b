"""What LIP costs: the lip2d op against avg_pool2d, and LIP-ResNet-FPN detectors against plain ones.

Every ratio is measured side by side in one run: the things compared are timed in interleaved
rounds (each round runs each of them once, in a rotating order), and a ratio is the median over
rounds of the per-round ratio, so slow drifts in machine load (a shared machine) cancel.
``tools/benchmark.py`` is the command line; :func:`run_benchmark` does the work and returns a
JSON-serialisable dict.

Measures (all per call):

- time: wall clock, ``torch.cuda.synchronize`` around each sample on CUDA.
- peak memory: bytes allocated while the call runs above what was allocated when it started. On
  CUDA ``torch.cuda.max_memory_allocated``; on CPU, which keeps no allocator statistics, the
  allocation and free events ``torch.profiler`` records (``profile_memory=True``), replayed in
  time order.
- saved for backward: the bytes of the distinct storages autograd keeps for the backward pass
  (``torch.autograd.graph.saved_tensors_hooks``).
- parameters: ``nn.Parameter`` elements plus the affine weight and bias that detectron2's
  ``FrozenBatchNorm2d`` keeps as buffers (its running statistics are not counted), so a FrozenBN
  model counts the same as with NORM "BN" and as the paper's tables.
- FLOPs: fvcore's ``FlopCountAnalysis`` (one fused multiply-add = one flop) of the bottom-up
  backbone, batch 1. fvcore counts convolutions, linear layers and norms, and skips pooling and
  elementwise ops (the plain stem's max-pool included). lip2d, which it cannot see into, is
  counted as 2·k² per output element: k² multiply-adds for the window sum of x·exp(logit), as a
  k×k depthwise conv counts, and k² adds for the window sum of exp(logit); the exp and the division
  are elementwise and not counted. Logit-module convs and InstanceNorms are counted as fvcore
  counts any conv and norm.
"""

import contextlib
import gc
import logging
import math
import os
import platform
import statistics
import sys
import time
import warnings

import torch
import torch.nn.functional as F
from detectron2.config import get_cfg
from detectron2.layers import FrozenBatchNorm2d
from detectron2.modeling import build_model
from detectron2.structures import Boxes, Instances
from detectron2.utils.events import EventStorage

from .config import add_lip_config
from .layers import LIP, BottleneckTrunk, ConvLogit, available_implementations, lip2d

__all__ = [
    "OP_SHAPES",
    "QUICK_OP_SHAPES",
    "lip2d_primitive",
    "machine_info",
    "time_interleaved",
    "peak_memory_bytes",
    "saved_tensor_bytes",
    "benchmark_op",
    "detection_cfg",
    "count_parameters",
    "backbone_flops",
    "synthetic_batch",
    "benchmark_models",
    "profile_models",
    "run_benchmark",
    "format_report",
]

# The performance issue's shapes: LIP inputs at strides 4, 8 and 16 of a batch of four 800x1344
# images (the last two are what LIP-R50's res4 and res5 main-branch LIPs pool).
OP_SHAPES = ((4, 64, 200, 336), (4, 256, 100, 168), (4, 512, 50, 84))
# Small enough for tests and CI; odd sizes exercise the border windows.
QUICK_OP_SHAPES = ((2, 16, 40, 56), (2, 32, 21, 27))
KERNEL_SIZE, STRIDE, PADDING = 3, 2, 1
# A CPU-friendly detection input, about a third of the pixels of COCO's 800x1333, divisible by 32
# (FPN's size divisibility) so that no padding is added.
IMAGE_SIZE = (512, 672)
QUICK_IMAGE_SIZE = (96, 128)
FLOP_SIZES = ((224, 224), (800, 1333))
QUICK_FLOP_SIZES = ((224, 224),)
# Published ImageNet FLOPs increase of LIP-ResNet-50 over ResNet-50 (224x224, classification net).
PUBLISHED_R50_FLOP_INCREASE = 0.294
GOALS = {"op_fwd_bwd": 2.0, "train_step": 1.15, "inference": 1.10}


def lip2d_primitive(x, logit, kernel_size=3, stride=2, padding=1):
    """LIP as the authors' code computes it: ATen ops, differentiated by autograd, no shift.

    Keeps exp(logit), x*exp(logit) and both pooled maps for backward, and overflows to inf/nan
    for logits above ~88 (float32); here only as the baseline lip2d is measured against.
    """
    weight = logit.exp()
    numerator = F.avg_pool2d(x * weight, kernel_size, stride, padding)
    return numerator / F.avg_pool2d(weight, kernel_size, stride, padding)


# ---- machine and measurement primitives ---------------------------------------------------------


def machine_info(device):
    """What the numbers were measured on."""
    device = torch.device(device)
    cpu = platform.processor() or platform.machine()
    with contextlib.suppress(OSError), open("/proc/cpuinfo") as f:
        cpu = next((ln.split(":", 1)[1].strip() for ln in f if ln.startswith("model name")), cpu)
    info = {
        "cpu": cpu,
        "cpu_count": os.cpu_count(),
        "cpus_usable": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None,
        "torch_threads": torch.get_num_threads(),
        "load_average": [round(v, 2) for v in os.getloadavg()],
        "python": platform.python_version(),
        "torch": torch.__version__,
        "device": str(device),
        "lip2d_implementations": _op_implementations(device),
    }
    if device.type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(device)
    return info


def _synchronize(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _time_calls(fn, number, device):
    _synchronize(device)
    start = time.perf_counter()
    for _ in range(number):
        fn()
    _synchronize(device)
    return (time.perf_counter() - start) / number


def time_interleaved(fns, *, rounds, device, warmup=1, min_sample_s=0.0, on_round=None):
    """Seconds per call of each callable in ``fns`` (a dict), one sample per round.

    Each round runs every callable once (``number`` calls, chosen so that a sample lasts at
    least ``min_sample_s``), in an order rotated by one each round, so that all of them see the
    same machine load. ``on_round(index, {name: seconds})`` is called after each round.

    Returns:
        {name: [seconds per call, one per round]}
    """
    device = torch.device(device)
    names = list(fns)
    number = dict.fromkeys(names, 1)
    for name in names:
        for _ in range(warmup):
            fns[name]()
        if min_sample_s > 0:
            single = _time_calls(fns[name], 1, device)
            number[name] = max(1, math.ceil(min_sample_s / max(single, 1e-9)))
    samples = {name: [] for name in names}
    gc.collect()
    for r in range(rounds):
        shift = r % len(names)
        for name in names[shift:] + names[:shift]:
            samples[name].append(_time_calls(fns[name], number[name], device))
        if on_round is not None:
            on_round(r, {name: samples[name][-1] for name in names})
    return samples


def _summary(seconds):
    return {
        "median_ms": 1e3 * statistics.median(seconds),
        "min_ms": 1e3 * min(seconds),
        "samples": len(seconds),
    }


def _ratio(samples, name, baseline):
    """Median over rounds of the per-round ratio name / baseline."""
    return statistics.median(a / b for a, b in zip(samples[name], samples[baseline]))


def _best_ratio(samples, name, baseline):
    """Ratio of the fastest samples: on a loaded machine the closest to the unloaded cost."""
    return min(samples[name]) / min(samples[baseline])


def _cpu_peak_from_profiler(prof):
    # the raw allocator records (nbytes < 0 for a free); prof.events() has them too, but with
    # microsecond timestamps that tie
    events = sorted(
        (e.start_ns(), e.nbytes())
        for e in prof.profiler.kineto_results.events()
        if e.name() == "[memory]"
    )
    current = peak = 0
    for _, nbytes in events:
        current += nbytes
        peak = max(peak, current)
    return peak


@contextlib.contextmanager
def _stderr_to_devnull():
    sys.stderr.flush()
    saved, devnull = os.dup(2), os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, 2)
    try:
        yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)
        os.close(devnull)


@contextlib.contextmanager
def _profiler(**kwargs):
    """torch.profiler.profile, without the notices kineto writes to stderr (C++ logging) when it
    starts and stops (and, without a GPU, a failed device count); they are not errors of the
    measurement. Whatever the profiled code writes to stderr still shows."""
    prof = torch.profiler.profile(**kwargs)
    with _stderr_to_devnull():
        prof.start()
    try:
        yield prof
    finally:
        with _stderr_to_devnull():
            prof.stop()


def peak_memory_bytes(fn, device):
    """Peak bytes allocated while ``fn()`` runs, above what was allocated when it started."""
    device = torch.device(device)
    gc.collect()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        start = torch.cuda.memory_allocated(device)
        torch.cuda.reset_peak_memory_stats(device)
        fn()
        torch.cuda.synchronize(device)
        return torch.cuda.max_memory_allocated(device) - start
    activities = [torch.profiler.ProfilerActivity.CPU]
    with _profiler(activities=activities, profile_memory=True) as prof:
        fn()
    return _cpu_peak_from_profiler(prof)


def saved_tensor_bytes(fn):
    """Bytes of the distinct storages autograd saves for backward while ``fn()`` runs.

    A storage saved twice (or through two views) counts once; that is what stays in memory.
    """
    storages = {}

    def pack(tensor):
        storage = tensor.untyped_storage()
        storages[(storage.device, storage.data_ptr())] = storage.nbytes()
        return tensor

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
        fn()
    return sum(storages.values())


# ---- op level -----------------------------------------------------------------------------------

LEAN_IMPLEMENTATIONS = ("cpu", "triton", "aten")


def _op_implementations(device):
    # Triton on CPU only runs under TRITON_INTERPRET=1, an emulator for tests, not a benchmark.
    device = torch.device(device)
    return [n for n in available_implementations(device) if n != "triton" or device.type == "cuda"]


def _op_functions(device):
    """name -> f(x, logit); "avg_pool2d" ignores the logit."""
    fns = {"avg_pool2d": lambda x, logit: F.avg_pool2d(x, KERNEL_SIZE, STRIDE, PADDING)}
    for impl in _op_implementations(device):
        fns[impl] = lambda x, logit, impl=impl: lip2d(
            x, logit, KERNEL_SIZE, STRIDE, PADDING, impl=impl
        )
    fns["primitive"] = lambda x, logit: lip2d_primitive(x, logit, KERNEL_SIZE, STRIDE, PADDING)
    return fns


def benchmark_op(shape, *, device="cpu", dtype=torch.float32, rounds=5, warmup=1,
                 min_sample_s=0.05, log=print):  # fmt: skip
    """Forward and forward+backward of every lip2d implementation on ``device``, the authors'
    primitive and avg_pool2d, for one input shape, timed in interleaved rounds.

    Logits are drawn in (0, 12), the range of LIP-ResNet's SoftGate, where the unshifted
    primitive is finite. Forward runs under ``torch.no_grad``; forward+backward computes the
    gradients of x and logit (avg_pool2d: of x) for a fixed random output gradient.
    """
    device = torch.device(device)
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(shape, generator=generator).to(device, dtype).requires_grad_()
    logit = (12 * torch.rand(shape, generator=generator)).to(device, dtype).requires_grad_()
    out_shape = F.avg_pool2d(x.detach(), KERNEL_SIZE, STRIDE, PADDING).shape
    grad_out = torch.randn(out_shape, generator=generator).to(device, dtype)
    input_bytes = x.numel() * x.element_size()
    output_bytes = grad_out.numel() * grad_out.element_size()

    fns = _op_functions(device)
    timed = {}
    for name, f in fns.items():
        inputs = (x,) if name == "avg_pool2d" else (x, logit)

        def forward(f=f):
            with torch.no_grad():
                f(x, logit)

        def forward_backward(f=f, inputs=inputs):
            torch.autograd.grad(f(x, logit), inputs, grad_out)

        timed[(name, "fwd")] = forward
        timed[(name, "fwd_bwd")] = forward_backward

    samples = time_interleaved(
        timed, rounds=rounds, device=device, warmup=warmup, min_sample_s=min_sample_s
    )
    results = {}
    for name, f in fns.items():
        fwd_bwd = timed[(name, "fwd_bwd")]
        saved = saved_tensor_bytes(lambda f=f: f(x, logit))
        peak = peak_memory_bytes(fwd_bwd, device)
        results[name] = {
            "fwd": _summary(samples[(name, "fwd")]),
            "fwd_bwd": _summary(samples[(name, "fwd_bwd")]),
            "fwd_ratio_to_avg_pool2d": _ratio(samples, (name, "fwd"), ("avg_pool2d", "fwd")),
            "fwd_bwd_ratio_to_avg_pool2d": _ratio(
                samples, (name, "fwd_bwd"), ("avg_pool2d", "fwd_bwd")
            ),
            "fwd_bwd_best_ratio_to_avg_pool2d": _best_ratio(
                samples, (name, "fwd_bwd"), ("avg_pool2d", "fwd_bwd")
            ),
            "peak_bytes": peak,
            "peak_x_input": peak / input_bytes,
            "saved_bytes": saved,
            "saved_x_input": saved / input_bytes,
            "lean": name in LEAN_IMPLEMENTATIONS,
        }
        r = results[name]
        log(
            f"  op {tuple(shape)} {name:>10}: fwd {r['fwd']['median_ms']:8.2f} ms, fwd+bwd "
            f"{r['fwd_bwd']['median_ms']:8.2f} ms ({r['fwd_bwd_ratio_to_avg_pool2d']:.2f}x "
            f"avg_pool2d), peak {peak / 2**20:.1f} MiB, saved {saved / input_bytes:.2f}x input"
        )
    return {
        "shape": list(shape),
        "dtype": str(dtype).replace("torch.", ""),
        "input_bytes": input_bytes,
        "output_bytes": output_bytes,
        "results": results,
    }


# ---- model level --------------------------------------------------------------------------------


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
    cfg.MODEL.BACKBONE.NAME = (
        "build_lip_resnet_fpn_backbone" if lip else "build_resnet_fpn_backbone"
    )
    cfg.MODEL.RESNETS.DEPTH = depth
    cfg.MODEL.RESNETS.RES2_OUT_CHANNELS = 64 if depth in (18, 34) else 256
    # The plain twin of our configs (configs/Base-RCNN-FPN-torchvision.yaml) and of the paper's
    # table: torchvision-style blocks with the stride on the 3x3 conv. detectron2's default
    # (stride on conv1, MSRA) is a cheaper network (3.87 vs 4.10 GFLOPs for R50 at 224x224).
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


def _model_names(depth):
    return f"LIP-R{depth}-FPN", f"R{depth}-FPN"


def count_parameters(module):
    """Parameter elements, with FrozenBatchNorm2d's affine weight and bias (buffers) included."""
    count = sum(p.numel() for p in module.parameters())
    for m in module.modules():
        if isinstance(m, FrozenBatchNorm2d):
            count += m.weight.numel() + m.bias.numel()
    return count


def _lip2d_flop_handle(kernel_area):
    from fvcore.nn.jit_handles import get_shape

    def handle(inputs, outputs):
        return 2 * kernel_area * math.prod(get_shape(outputs[0]))

    return handle


def backbone_flops(bottom_up, height, width):
    """fvcore FLOPs of ``bottom_up`` on one ``height`` x ``width`` image (see module docstring).

    Returns:
        dict: total, logit_modules (LIP's logit convs and norms), lip2d (the op), uncounted
        (fvcore's unsupported op kinds with their call counts).
    """
    from fvcore.nn import FlopCountAnalysis

    lips = [m for m in bottom_up.modules() if isinstance(m, LIP)]
    kernel_areas = {math.prod(torch.nn.modules.utils._pair(m.kernel_size)) for m in lips}
    if len(kernel_areas) > 1:
        raise ValueError(f"LIP layers of different kernel sizes: {kernel_areas}")
    handle = _lip2d_flop_handle(kernel_areas.pop() if kernel_areas else 9)
    device = next(bottom_up.parameters()).device
    was_training = bottom_up.training
    image = torch.zeros(1, 3, height, width, device=device)
    analysis = FlopCountAnalysis(bottom_up.eval(), image)
    analysis.set_op_handle(**{f"prim::PythonOp.{name}": handle for name in ("LeanLIP2d",)})
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
        "lip2d": sum(v for k, v in by_operator.items() if "LIP2d" in k),
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


class _Detector:
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


def _build_detectors(depth, device, image_size, light_heads):
    batch = synthetic_batch(2, *image_size, device=device)
    return {
        name: _Detector(
            detection_cfg(depth, lip=lip, device=device, light_heads=light_heads), batch
        )
        for name, lip in zip(_model_names(depth), (True, False))
    }


def benchmark_models(depth, *, device="cpu", image_size=IMAGE_SIZE, flop_sizes=FLOP_SIZES,
                     rounds=5, warmup=1, light_heads=False, log=print):  # fmt: skip
    """LIP-R{depth}-FPN against R{depth}-FPN Faster R-CNN: parameters, backbone FLOPs, train-step
    and inference time (interleaved rounds) and peak memory, on a batch of 2 synthetic images of
    ``image_size``."""
    device = torch.device(device)
    lip_name, plain_name = _model_names(depth)
    detectors = _build_detectors(depth, device, image_size, light_heads)
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
        samples = time_interleaved(fns, rounds=rounds, device=device, warmup=warmup,
                                   on_round=on_round)  # fmt: skip
        for name in detectors:
            results[name][kind] = _summary(samples[name])
        ratio = time_ratios[kind] = _ratio(samples, lip_name, plain_name)
        best = time_ratios[f"{kind}_best"] = _best_ratio(samples, lip_name, plain_name)
        log(
            f"  {kind}: {lip_name} / {plain_name} = {ratio:.3f} (median of per-round ratios), "
            f"{best:.3f} (fastest samples)"
        )
        for name, fn in fns.items():
            results[name][f"peak_bytes_{kind}"] = peak = peak_memory_bytes(fn, device)
            log(f"  {name}: peak memory of one {kind} {peak / 2**20:.0f} MiB")

    lip, plain = results[lip_name], results[plain_name]
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
    }


# ---- profile ------------------------------------------------------------------------------------

_CONV_OPS = {"aten::conv2d", "aten::convolution", "aten::_convolution"}
_NORM_OPS = {"aten::instance_norm", "aten::batch_norm", "aten::group_norm", "aten::layer_norm"}
_LABEL = "bench::"
# (region, op kind) -> row of the summary; regions are labelled module calls, innermost wins.
_GROUPS = {
    ("lip2d", None): "LIP: lip2d op",
    ("logit", "conv"): "LIP: logit-module convs",
    ("logit", "norm"): "LIP: logit-module InstanceNorm",
    ("logit", None): "LIP: logit-module other (ReLU, gate)",
    ("bottom_up", "conv"): "bottom-up convs (non-LIP)",
    ("bottom_up", None): "bottom-up other (FrozenBN, ReLU, add, pool)",
    ("fpn", None): "FPN",
    ("rpn", None): "RPN",
    ("roi_heads", None): "ROI heads",
    ("optimizer", None): "optimizer step",
    (None, None): "other (preprocessing, loss sum, autograd engine)",
}
GROUP_NAMES = tuple(dict.fromkeys(_GROUPS.values()))


def _group(region, kind):
    return _GROUPS.get((region, kind)) or _GROUPS[(region, None)]


def _regions(model):
    """Modules whose calls get a profiler label: module -> region name."""
    regions = {
        model.backbone: "fpn",
        model.backbone.bottom_up: "bottom_up",
        model.proposal_generator: "rpn",
        model.roi_heads: "roi_heads",
    }
    for m in model.backbone.bottom_up.modules():
        if isinstance(m, LIP):
            regions[m] = "lip2d"  # its logit module is labelled "logit" inside it
        elif isinstance(m, (ConvLogit, BottleneckTrunk)):
            regions[m] = "logit"
    return regions


@contextlib.contextmanager
def _labelled_calls(regions):
    stack, handles = [], []

    def enter(label):
        def hook(module, args):
            scope = torch.profiler.record_function(_LABEL + label)
            scope.__enter__()
            stack.append(scope)

        return hook

    def leave(module, args, output):
        stack.pop().__exit__(None, None, None)

    for module, label in regions.items():
        handles.append(module.register_forward_pre_hook(enter(label)))
        handles.append(module.register_forward_hook(leave))
    try:
        yield
    finally:
        for h in handles:
            h.remove()


def _classify_forward(event):
    """(region, kind) of a forward-pass op: the innermost label above it, and whether it is
    (inside) a conv or a norm."""
    kind = None
    while event is not None:
        if event.name.startswith(_LABEL):
            return event.name[len(_LABEL) :], kind
        if kind is None and event.name in _CONV_OPS:
            kind = "conv"
        elif kind is None and event.name in _NORM_OPS:
            kind = "norm"
        event = event.cpu_parent
    return None, kind


def _grouped_self_times(events, device):
    """Self time (ms) per summary group, and per op name with the group holding most of it.

    Backward ops are charged to the forward op that created their autograd node (matched by
    sequence number), so a logit conv's backward lands in "logit-module convs".
    """
    attr = "self_device_time_total" if device.type == "cuda" else "self_cpu_time_total"
    events = sorted((e for e in events if e.name != "[memory]"), key=lambda e: e.time_range.start)
    # Every op records the sequence number the next autograd node will get, so ops that create
    # no node share it with the next one that does; that one is the last to record it.
    by_sequence = {}
    for e in events:
        if e.sequence_nr >= 0 and not _in_backward(e):
            by_sequence[e.sequence_nr] = _classify_forward(e)
    groups = dict.fromkeys(GROUP_NAMES, 0.0)
    ops = {}
    for e in events:
        node = _backward_node(e)
        if node is None:
            region, kind = _classify_forward(e)
        elif "LIP2d" in node.name:  # custom autograd Functions record no forward op
            region, kind = "lip2d", None
        else:
            region, kind = by_sequence.get(node.sequence_nr, (None, None))
        group = _group(region, kind)
        ms = getattr(e, attr) / 1e3
        groups[group] += ms
        entry = ops.setdefault(e.name, {"self_ms": 0.0, "calls": 0, "by_group": {}})
        entry["self_ms"] += ms
        entry["calls"] += 1
        entry["by_group"][group] = entry["by_group"].get(group, 0.0) + ms
    return groups, ops


_BACKWARD_PREFIX = "autograd::engine::evaluate_function: "


def _backward_node(event):
    while event is not None:
        if event.name.startswith(_BACKWARD_PREFIX):
            return event
        event = event.cpu_parent
    return None


def _in_backward(event):
    return _backward_node(event) is not None


def _profile(fn, model, device, steps):
    activities = [torch.profiler.ProfilerActivity.CPU]
    if device.type == "cuda":
        activities.append(torch.profiler.ProfilerActivity.CUDA)
    fn()  # warm: first calls allocate optimizer state and caches
    with _labelled_calls(_regions(model)), _profiler(activities=activities) as prof:
        for _ in range(steps):
            fn()
        _synchronize(device)
    groups, ops = _grouped_self_times(prof.events(), device)
    total = sum(groups.values())
    top = sorted(ops.items(), key=lambda kv: -kv[1]["self_ms"])
    return {
        "total_ms": total / steps,
        "groups_ms": {g: v / steps for g, v in groups.items()},
        "top_ops": [
            {
                "op": name,
                "self_ms": v["self_ms"] / steps,
                "calls": v["calls"] // steps,
                "group": max(v["by_group"], key=v["by_group"].get),
            }
            for name, v in top[:25]
        ],
    }


def profile_models(depth, *, device="cpu", image_size=IMAGE_SIZE, steps=2, light_heads=False,
                   log=print):  # fmt: skip
    """Where LIP-R{depth}-FPN's time goes compared with R{depth}-FPN, for a train step and for
    inference: torch.profiler self time (CPU; device time on CUDA) per group of ops, averaged
    over ``steps`` calls after one warm-up call."""
    device = torch.device(device)
    detectors = _build_detectors(depth, device, image_size, light_heads)
    lip_name, plain_name = _model_names(depth)
    out = {"depth": depth, "image_size": list(image_size), "steps": steps}
    for kind in ("train_step", "inference"):
        out[kind] = {}
        for name, det in detectors.items():
            out[kind][name] = _profile(getattr(det, kind), det.model, device, steps)
            log(f"  profiled {name} {kind}: {out[kind][name]['total_ms']:.0f} ms of self time")
    out["lip_model"], out["plain_model"] = lip_name, plain_name
    return out


# ---- the whole run ------------------------------------------------------------------------------


def run_benchmark(*, device="cpu", quick=False, op_shapes=None, dtype=torch.float32, depths=None,
                  image_size=None, flop_sizes=None, op_rounds=None, model_rounds=None,
                  profile=False, profile_depth=None, profile_steps=2, skip_op=False,
                  skip_models=False, log=print):  # fmt: skip
    """Run the op-level and model-level benchmarks (and optionally the profile); returns the
    JSON-serialisable results. ``quick`` picks small shapes, R18 only and few rounds (tests/CI);
    explicit arguments override its choices."""
    device = torch.device(device)
    op_shapes = op_shapes or (QUICK_OP_SHAPES if quick else OP_SHAPES)
    depths = depths or ((18,) if quick else (18, 50))
    image_size = tuple(image_size or (QUICK_IMAGE_SIZE if quick else IMAGE_SIZE))
    flop_sizes = flop_sizes or (QUICK_FLOP_SIZES if quick else FLOP_SIZES)
    op_rounds = op_rounds or (3 if quick else 7)
    model_rounds = model_rounds or (2 if quick else 5)
    profile_depth = profile_depth or max(depths)

    results = {
        "machine": machine_info(device),
        "settings": {
            "quick": quick,
            "op_shapes": [list(s) for s in op_shapes],
            "dtype": str(dtype).replace("torch.", ""),
            "kernel_size_stride_padding": [KERNEL_SIZE, STRIDE, PADDING],
            "depths": list(depths),
            "image_size": list(image_size),
            "flop_sizes": [list(s) for s in flop_sizes],
            "op_rounds": op_rounds,
            "model_rounds": model_rounds,
            "light_heads": quick,
        },
        "goals": GOALS,
        "published": {"r50_flop_increase": PUBLISHED_R50_FLOP_INCREASE},
    }
    m = results["machine"]
    log(
        f"machine: {m['cpu']}, {m['cpus_usable']}/{m['cpu_count']} CPUs usable, "
        f"torch {m['torch']} with {m['torch_threads']} threads, load average {m['load_average']}"
        + (f", {m['gpu']}" if "gpu" in m else "")
    )
    start = time.perf_counter()
    if not skip_op:
        results["op"] = []
        for shape in op_shapes:
            log(f"op level {tuple(shape)} ({op_rounds} interleaved rounds) ...")
            results["op"].append(
                benchmark_op(
                    shape,
                    device=device,
                    dtype=dtype,
                    rounds=op_rounds,
                    min_sample_s=0.02 if quick else 0.05,
                    log=log,
                )  # fmt: skip
            )
    if not skip_models:
        results["models"] = {}
        for depth in depths:
            log(f"model level R{depth} ({model_rounds} interleaved rounds) ...")
            results["models"][f"R{depth}"] = benchmark_models(
                depth, device=device, image_size=image_size, flop_sizes=flop_sizes,
                rounds=model_rounds, light_heads=quick, log=log,
            )  # fmt: skip
    if profile:
        log(f"profile R{profile_depth} ...")
        results["profile"] = profile_models(
            profile_depth, device=device, image_size=image_size, steps=profile_steps,
            light_heads=quick, log=log,
        )  # fmt: skip
    m["load_average_end"] = [round(v, 2) for v in os.getloadavg()]
    results["seconds"] = time.perf_counter() - start
    return results


# ---- report -------------------------------------------------------------------------------------


def _mib(nbytes):
    return nbytes / 2**20


def _format_op(op, machine):
    lines = [
        f"Op level: lip2d k={KERNEL_SIZE} s={STRIDE} p={PADDING} on {machine['device']}; "
        "median ms over interleaved rounds; x avgpool = median per-round ratio to avg_pool2d, "
        "best = ratio of the fastest samples",
    ]
    header = (
        f"  {'':<12}{'fwd ms':>10}{'x avgpool':>10}{'fwd+bwd ms':>12}{'x avgpool':>10}{'best':>6}"
        f"{'peak MiB':>10}{'x input':>8}{'saved MiB':>11}{'x input':>8}"
    )
    for entry in op:
        lines.append(
            f"shape {tuple(entry['shape'])} {entry['dtype']}, input "
            f"{_mib(entry['input_bytes']):.1f} MiB, output {_mib(entry['output_bytes']):.1f} MiB"
        )
        lines.append(header)
        for name, r in entry["results"].items():
            lines.append(
                f"  {name:<12}{r['fwd']['median_ms']:>10.2f}{r['fwd_ratio_to_avg_pool2d']:>10.2f}"
                f"{r['fwd_bwd']['median_ms']:>12.2f}{r['fwd_bwd_ratio_to_avg_pool2d']:>10.2f}"
                f"{r['fwd_bwd_best_ratio_to_avg_pool2d']:>6.2f}"
                f"{_mib(r['peak_bytes']):>10.1f}{r['peak_x_input']:>8.2f}"
                f"{_mib(r['saved_bytes']):>11.1f}{r['saved_x_input']:>8.2f}"
            )
    return lines


def _format_models(bench):
    lip_name, plain_name = bench["lip_model"], bench["plain_model"]
    lip, plain = bench["models"][lip_name], bench["models"][plain_name]
    ratios = bench["ratios"]
    h, w = bench["image_size"]
    lines = [
        f"Model level: Faster R-CNN {plain_name} vs {lip_name} (FrozenBN, FREEZE_AT 2), batch "
        f"{bench['images_per_batch']} x {h}x{w}, SGD; ratios: median of per-round ratios of "
        "interleaved rounds, and of the fastest samples",
        f"  {'':<34}{plain_name:>16}{lip_name:>16}{'LIP / plain':>13}",
    ]

    specs = [
        ("params, bottom-up", "params_bottom_up", "{:,}", lambda r: r["params_bottom_up"]),
        ("params, whole model", "params_model", "{:,}", lambda r: r["params_model"]),
        *((f"GFLOPs bottom-up {size}", f"flops_{size}", "{:.3f}",
           lambda r, size=size: r["flops"][size]["total"] / 1e9) for size in lip["flops"]),
        ("train step ms, median", "train_step", "{:.0f}",
         lambda r: r["train_step"]["median_ms"]),
        ("train step ms, fastest", "train_step_best", "{:.0f}",
         lambda r: r["train_step"]["min_ms"]),
        ("inference ms, median", "inference", "{:.0f}", lambda r: r["inference"]["median_ms"]),
        ("inference ms, fastest", "inference_best", "{:.0f}",
         lambda r: r["inference"]["min_ms"]),
        ("peak MiB, train step", "peak_bytes_train_step", "{:.0f}",
         lambda r: _mib(r["peak_bytes_train_step"])),
        ("peak MiB, inference", "peak_bytes_inference", "{:.0f}",
         lambda r: _mib(r["peak_bytes_inference"])),
    ]  # fmt: skip
    for label, ratio_key, fmt, value in specs:
        lines.append(
            f"  {label:<34}{fmt.format(value(plain)):>16}{fmt.format(value(lip)):>16}"
            f"{ratios[ratio_key]:>13.3f}"
        )
    for size, f in lip["flops"].items():
        lines.append(
            f"  {lip_name} at {size}: logit modules {f['logit_modules'] / 1e9:.3f} GFLOPs, "
            f"lip2d {f['lip2d'] / 1e9:.4f} GFLOPs"
        )
    return lines


def _format_profile(prof):
    lip_name, plain_name = prof["lip_model"], prof["plain_model"]
    h, w = prof["image_size"]
    lines = [
        f"Profile: self CPU/device time per group, ms per call ({prof['steps']} calls after a "
        f"warm-up), batch 2 x {h}x{w}"
    ]
    for kind in ("train_step", "inference"):
        lip, plain = prof[kind][lip_name], prof[kind][plain_name]
        lines.append(f"  {kind:<48}{plain_name:>12}{lip_name:>14}{'LIP - plain':>13}")
        for group in GROUP_NAMES:
            a, b = plain["groups_ms"][group], lip["groups_ms"][group]
            if a or b:
                lines.append(f"    {group:<46}{a:>12.1f}{b:>14.1f}{b - a:>+13.1f}")
        a, b = plain["total_ms"], lip["total_ms"]
        lines.append(f"    {'total':<46}{a:>12.1f}{b:>14.1f}{b - a:>+13.1f}")
        lines.append(f"  top ops of {lip_name} {kind} by self time:")
        for op in lip["top_ops"][:15]:
            lines.append(
                f"    {op['self_ms']:>9.1f} ms {op['calls']:>5}x  {op['op'][:60]:<60} {op['group']}"
            )
    return lines


def _format_goals(results):
    lines = ["Goals:"]
    goals = results["goals"]
    default = results["machine"]["lip2d_implementations"][0]  # what "auto" runs here
    for entry in results.get("op", []):
        r = entry["results"][default]
        ratio, best = r["fwd_bwd_ratio_to_avg_pool2d"], r["fwd_bwd_best_ratio_to_avg_pool2d"]
        met = "met" if ratio <= goals["op_fwd_bwd"] else "NOT met"
        lines.append(
            f"  op {tuple(entry['shape'])} {default}: fwd+bwd {ratio:.2f}x avg_pool2d (fastest "
            f"samples {best:.2f}x; goal <= {goals['op_fwd_bwd']}x: {met})"
        )
    for bench in results.get("models", {}).values():
        for kind in ("train_step", "inference"):
            ratio = bench["ratios"][kind]
            if bench["depth"] == 50:  # the issue sets model-level goals for R50 only
                verdict = f"goal <= {goals[kind]}: {'met' if ratio <= goals[kind] else 'NOT met'}"
            else:
                verdict = "no goal set"
            lines.append(
                f"  {bench['lip_model']} / {bench['plain_model']} {kind}: {ratio:.3f} ({verdict})"
            )
        flops = {n: r["flops"].get("224x224") for n, r in bench["models"].items()}
        if bench["depth"] == 50 and all(flops.values()):
            lip, plain = flops[bench["lip_model"]]["total"], flops[bench["plain_model"]]["total"]
            lines.append(
                f"  LIP-R50 bottom-up FLOPs at 224x224: {lip / 1e9:.3f} G vs R50 {plain / 1e9:.3f} "
                f"G, +{100 * (lip / plain - 1):.1f} % (published for the ImageNet classifiers: "
                f"+{100 * PUBLISHED_R50_FLOP_INCREASE:.1f} %)"
            )
    return lines


def format_report(results):
    """The printed tables of :func:`run_benchmark`'s results."""
    m = results["machine"]
    lines = [
        f"Machine: {m['cpu']}, {m['cpus_usable']}/{m['cpu_count']} CPUs usable, torch "
        f"{m['torch']}, {m['torch_threads']} threads, load average {m['load_average']} at start, "
        f"{m.get('load_average_end')} at end" + (f", GPU {m['gpu']}" if "gpu" in m else ""),
        "",
    ]
    if "op" in results:
        lines += _format_op(results["op"], m) + [""]
    for bench in results.get("models", {}).values():
        lines += _format_models(bench) + [""]
    if "profile" in results:
        lines += _format_profile(results["profile"]) + [""]
    lines += _format_goals(results)
    return "\n".join(lines)
