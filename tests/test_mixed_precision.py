"""Mixed precision: lip2d with the mixed dtypes autocast produces, every LIP backbone under CPU
autocast (bfloat16 and float16), and training with SOLVER.AMP.ENABLED on the CPU."""

import json
import math

import pytest
import torch
from conftest import CONFIGS, SYNTHETIC_TRAIN, TINY_OVERRIDES, lip_cfg
from detectron2.engine import SimpleTrainer
from detectron2.layers import ShapeSpec
from detectron2.modeling import build_backbone

import lip_det
from lip_det.engine import SetupError, Trainer, autocast_dtype, load_config
from lip_det.layers import ConvLogit, available_implementations, lip2d_window_softmax

LEAN_IMPLS = [i for i in available_implementations("cpu") if i not in ("triton", "reference")]
DEMO = str(CONFIGS / "Demo/faster_rcnn_LIP_R_18_FPN_demo.yaml")


@pytest.mark.parametrize("impl", LEAN_IMPLS)
@pytest.mark.parametrize("x_dtype, logit_dtype", [(torch.bfloat16, torch.float32),
                                                  (torch.float16, torch.float32),
                                                  (torch.float32, torch.bfloat16)])  # fmt: skip
def test_mixed_dtypes_pool_in_the_wider_one_and_return_x_dtype(impl, x_dtype, logit_dtype):
    """What autocast hands lip2d (bfloat16 features, float32 logits from SoftGate): the logits
    are not rounded to x's dtype, so the result is float64's up to rounding x and the output."""
    torch.manual_seed(0)
    x = torch.randn(2, 4, 12, 14).to(x_dtype)
    logit = torch.empty(2, 4, 12, 14).uniform_(-60, 60).to(logit_dtype)
    xs, ls = x.clone().requires_grad_(), logit.clone().requires_grad_()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = lip_det.lip2d(xs, ls, impl=impl)
    assert out.dtype == x_dtype
    grad = torch.randn(out.shape).to(x_dtype)
    out.backward(grad)
    assert xs.grad.dtype == x_dtype and ls.grad.dtype == logit_dtype
    xd, ld = x.double().requires_grad_(), logit.double().requires_grad_()
    expected = lip2d_window_softmax(xd, ld)
    expected.backward(grad.double())
    for got, want in ((out, expected), (xs.grad, xd.grad), (ls.grad, ld.grad)):
        assert torch.isfinite(got).all()
        eps = {torch.float32: 1e-4, torch.float16: 2e-3, torch.bfloat16: 2e-2}[got.dtype]
        torch.testing.assert_close(got.double(), want, rtol=eps, atol=eps)


def test_logits_stay_float32_under_autocast_in_training_and_inference():
    module = ConvLogit(8, 8, kernel_size=3)
    torch.nn.init.normal_(module.conv.weight)
    x = torch.randn(1, 8, 6, 6)
    expected = module(x)
    for grad in (True, False):  # ConvLogit gates in place at inference
        with torch.set_grad_enabled(grad), torch.autocast("cpu", dtype=torch.bfloat16):
            logit = module(x)
        assert logit.dtype == torch.float32
        torch.testing.assert_close(logit, expected, rtol=0.05, atol=0.05)


def _lip_backbone(name, depth):
    cfg = lip_cfg(depth, name, norm="GN")
    cfg.MODEL.FPN.IN_FEATURES = ["res2", "res3", "res4", "res5"]
    if name == "build_retinanet_lip_resnet_fpn_backbone":
        cfg.MODEL.FPN.IN_FEATURES = ["res3", "res4", "res5"]
    torch.manual_seed(0)
    model = build_backbone(cfg, ShapeSpec(channels=3))
    for module in model.modules():
        if isinstance(module, ConvLogit):  # fresh ones give constant logits: spread them out
            torch.nn.init.normal_(module.conv.weight, std=0.5)
    return model


BF16, FP16 = torch.bfloat16, torch.float16


@pytest.mark.parametrize(
    "name, depth, size, dtype",
    [
        ("build_lip_resnet_backbone", 18, 64, BF16),
        # float16 once: torch 2.14's CPU float16 conv backward is ~100x slower than bfloat16's
        ("build_lip_resnet_backbone", 18, 64, FP16),
        ("build_lip_resnet_backbone", 50, 64, BF16),
        # 96 px: at 64, RetinaNet's P7 conv sees a 1x1 input, where torch 2.14's CPU bfloat16
        # conv backward sometimes returns NaN weight gradients (also without LIP)
        ("build_lip_resnet_fpn_backbone", 18, 96, BF16),
        ("build_retinanet_lip_resnet_fpn_backbone", 18, 96, BF16),
    ],
)
def test_every_lip_backbone_trains_under_cpu_autocast(name, depth, size, dtype):
    """Forward and backward under torch.autocast: finite outputs and gradients, outputs close to
    the float32 model's (logits spread over SoftGate's (0, 12)). float32 is an exact enough
    reference at these tolerances, and float64 convs are slow on the CPU."""
    model = _lip_backbone(name, depth)
    x = torch.randn(2, 3, size, size)
    with torch.no_grad():
        reference = {k: v.double() for k, v in model(x).items()}
    with torch.autocast("cpu", dtype=dtype):
        out = model(x)
    assert all(v.dtype == dtype for v in out.values())
    projection = {k: torch.randn(v.shape, dtype=torch.float64) for k, v in reference.items()}
    sum((v.double() * projection[k]).sum() for k, v in out.items()).backward()
    tolerance = {BF16: 0.2, FP16: 0.03}[dtype]
    for k, v in out.items():
        assert torch.isfinite(v).all(), k
        error = (v.double() - reference[k]).norm() / reference[k].norm()
        assert error < tolerance, (k, error.item())
    for parameter_name, parameter in model.named_parameters():
        assert torch.isfinite(parameter.grad).all(), parameter_name


def test_amp_on_the_cpu_trains_under_bfloat16_autocast(synthetic_coco, tmp_path):
    """SOLVER.AMP.ENABLED on MODEL.DEVICE cpu: detectron2's SimpleTrainer with the model's
    forward pass under bfloat16 autocast (detectron2's AMPTrainer needs CUDA); the backbone
    really runs in bfloat16, the losses are finite."""
    cfg = load_config(
        DEMO,
        [*TINY_OVERRIDES, "DATASETS.TRAIN", f"('{SYNTHETIC_TRAIN}',)", "DATASETS.TEST", "()",
         "SOLVER.AMP.ENABLED", "True", "SOLVER.MAX_ITER", "2", "OUTPUT_DIR", str(tmp_path)],
    )  # fmt: skip
    trainer = Trainer(cfg)
    assert type(trainer._trainer) is SimpleTrainer
    assert autocast_dtype(trainer.model) == torch.bfloat16
    seen = set()
    stem = trainer.model.backbone.bottom_up.stem
    stem.conv1.register_forward_hook(lambda module, inputs, output: seen.add(output.dtype))
    trainer.resume_or_load(resume=False)
    trainer.train()
    assert seen == {torch.bfloat16}
    with open(tmp_path / "metrics.json") as f:
        losses = [json.loads(line)["total_loss"] for line in f]
    assert losses and all(math.isfinite(loss) and loss > 0 for loss in losses)
    assert all(p.dtype == torch.float32 for p in trainer.model.parameters())  # master weights


def test_amp_precision_errors_are_setup_errors():
    from lip_det.engine import amp_dtype

    assert amp_dtype("cpu", "auto") == torch.bfloat16
    assert amp_dtype("cuda", "auto") == torch.float16
    assert amp_dtype("cuda", "bfloat16") == torch.bfloat16
    with pytest.raises(SetupError) as info:
        amp_dtype("cpu", "float16")
    assert str(info.value) == (
        "SOLVER.AMP.PRECISION = 'float16' needs a CUDA device (the device is 'cpu'); use "
        "'bfloat16' (or 'auto') on the CPU"
    )
    with pytest.raises(SetupError) as info:
        amp_dtype("cpu", "fp8")
    assert str(info.value) == (
        "SOLVER.AMP.PRECISION = 'fp8' is not valid; choose one of ['auto', 'float16', 'bfloat16']"
    )
