"""tools/benchmark.py in --quick mode, and the measurements it is built from."""

import importlib.util
import json
import math
import sys
import time
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from detectron2.modeling import build_backbone, build_model
from fvcore.nn import FlopCountAnalysis

from lip_det.layers import lip2d
from lip_det.layers.flops import LIP2D_OP_NAMES, add_lip_flop_handles, lip_flop_handles
from lip_det.utils import benchmark as measure

REPO = Path(__file__).resolve().parents[1]
LEAN = {"cpu", "triton", "aten"}

# tools/ is not installed with lip_det; tools/benchmark.py imports its benchmarks package so too
if str(REPO / "tools") not in sys.path:
    sys.path.insert(0, str(REPO / "tools"))
from benchmarks import models as model_level  # noqa: E402
from benchmarks import op as op_level  # noqa: E402
from benchmarks.profile import GROUP_NAMES  # noqa: E402


def _tool():
    spec = importlib.util.spec_from_file_location("benchmark_tool", REPO / "tools" / "benchmark.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def quick(tmp_path_factory):
    """One --quick run (R18 only, tiny shapes and images) with --profile; its JSON and stdout."""
    path = tmp_path_factory.mktemp("bench") / "quick.json"
    # one thread: a test checks what is measured, not speed, and on a loaded machine every
    # parallel region of a multi-threaded torch waits for a core
    argv = ["--quick", "--json", str(path), "--profile", "--profile-steps", "1", "--threads", "1"]
    returned = _tool().main(argv)
    with open(path) as f:
        results = json.load(f)
    assert results == json.loads(json.dumps(returned))
    return results


def _positive_finite(value):
    return isinstance(value, float) and math.isfinite(value) and value > 0


def test_quick_run_has_every_section(quick):
    assert set(quick) >= {"machine", "settings", "goals", "op", "models", "profile"}
    machine = quick["machine"]
    assert machine["torch_threads"] == 1
    assert machine["cpu"] and machine["cpu_count"] >= 1 and len(machine["load_average"]) == 3
    assert [entry["shape"] for entry in quick["op"]] == [list(s) for s in op_level.QUICK_OP_SHAPES]
    assert list(quick["models"]) == ["R18"]
    assert quick["profile"]["depth"] == 18


def test_op_level(quick):
    expected = {"avg_pool2d", "primitive", *op_level.op_implementations("cpu")}
    for entry in quick["op"]:
        results = entry["results"]
        assert set(results) == expected
        assert results["avg_pool2d"]["fwd_bwd_ratio_to_avg_pool2d"] == 1.0
        for name, r in results.items():
            for key in ("fwd_ratio_to_avg_pool2d", "fwd_bwd_ratio_to_avg_pool2d", "peak_x_input"):
                assert _positive_finite(r[key]), (name, key, r[key])
            assert r["fwd"]["median_ms"] > 0 and r["fwd_bwd"]["min_ms"] > 0
            assert r["lean"] == (name in LEAN)


def test_op_saved_for_backward(quick):
    for entry in quick["op"]:
        x, out = entry["input_bytes"], entry["output_bytes"]
        results = entry["results"]
        assert results["avg_pool2d"]["saved_bytes"] == x  # avg_pool2d keeps its input only
        for name, r in results.items():
            if r["lean"]:
                assert r["saved_bytes"] == x + x + out, name  # x, logit, output
        assert results["primitive"]["saved_bytes"] > x + x + out


def test_model_level(quick):
    bench = quick["models"]["R18"]
    assert (bench["lip_model"], bench["plain_model"]) == ("LIP-R18-FPN", "R18-FPN")
    for key, ratio in bench["ratios"].items():
        assert _positive_finite(ratio), (key, ratio)
    for r in bench["models"].values():
        assert r["train_step"]["median_ms"] > 0 and r["inference"]["median_ms"] > 0
        assert r["peak_bytes_train_step"] > 0 and r["peak_bytes_inference"] > 0
    # LIP adds FLOPs (logit modules) and LIP-R18's stride-2 blocks have no fewer parameters
    assert bench["ratios"]["flops_224x224"] > 1


def test_memory_section_compares_default_and_recompute_side_by_side(quick):
    bench = quick["models"]["R18"]
    recompute = bench["recompute"]
    assert recompute["model"] == "LIP-R18-FPN recompute"
    assert recompute["train_step"]["median_ms"] > 0 and recompute["peak_bytes_train_step"] > 0
    assert all(_positive_finite(v) for v in recompute["ratios"].values())
    saved = bench["saved_bytes_by_part"]
    assert list(saved) == ["LIP-R18-FPN", "R18-FPN", "LIP-R18-FPN recompute"]
    lip, plain, slow = (saved[name] for name in saved)
    # the parts: the LIPs, the bottom-up's children, FPN, RPN, RoI heads (and what is outside)
    assert list(lip) == [
        "LIP: logit modules + lip2d", "bottom-up stem", "bottom-up res2", "bottom-up res3",
        "bottom-up res4", "bottom-up res5", "FPN", "RPN", "ROI heads", "other",
    ]  # fmt: skip
    assert lip["LIP: logit modules + lip2d"] > 0
    assert plain["LIP: logit modules + lip2d"] == 0
    assert slow["LIP: logit modules + lip2d"] == 0  # recomputed in backward: nothing kept
    assert sum(plain.values()) < sum(slow.values()) < sum(lip.values())
    # the same heads in all three models keep the same bytes
    assert lip["ROI heads"] == plain["ROI heads"] == slow["ROI heads"]


def test_saved_bytes_by_module_adds_up_and_goes_to_the_innermost_part():
    inner, outer = torch.nn.Linear(8, 8), torch.nn.Linear(8, 8)
    model = torch.nn.Sequential(outer, torch.nn.Sequential(inner, torch.nn.Tanh()))
    x = torch.randn(4, 8, requires_grad=True)
    total = measure.saved_tensor_bytes(lambda: model(x))
    parts = measure.saved_tensor_bytes_by_module(lambda: model(x), {"all": [model], "in": [inner]})
    assert sum(parts.values()) == total and parts["other"] == 0
    # inner saves its input (outer's output, 4x8 floats) and its 8x8 weight; outer saves x and
    # its weight, Tanh its output
    assert parts["in"] == (4 * 8 + 8 * 8) * 4
    assert parts["all"] == total - parts["in"]


def test_model_parameter_counts_match_bn_models(quick):
    """FrozenBN affine buffers are counted: the counts equal nn.Parameters of NORM "BN" models."""
    models = quick["models"]["R18"]["models"]
    for name, lip in (("LIP-R18-FPN", True), ("R18-FPN", False)):
        cfg = model_level.detection_cfg(18, lip=lip, light_heads=True)
        cfg.MODEL.RESNETS.NORM = "BN"
        cfg.MODEL.BACKBONE.FREEZE_AT = 0  # freezing turns BN into FrozenBN
        model = build_model(cfg)
        assert models[name]["params_model"] == sum(p.numel() for p in model.parameters())
        bottom_up = sum(p.numel() for p in model.backbone.bottom_up.parameters())
        assert models[name]["params_bottom_up"] == bottom_up
    # torchvision's resnet18 has 11,689,512 parameters, 513,000 of them in its fc
    assert models["R18-FPN"]["params_bottom_up"] == 11_689_512 - 513_000


def test_lip2d_flops_counted_per_output(quick):
    """2 * 3 * 3 per output element of LIP-R18's seven LIPs at 224x224 (stem: 64 x 56 x 56; each
    stride-2 block pools its input twice, main and shortcut)."""
    outputs = 64 * 56 * 56 + 2 * (64 * 28 * 28 + 128 * 14 * 14 + 256 * 7 * 7)
    flops = quick["models"]["R18"]["models"]["LIP-R18-FPN"]["flops"]["224x224"]
    assert flops["lip2d"] == 2 * 9 * outputs
    assert 0 < flops["logit_modules"] < flops["total"]


def test_profile_groups_add_up(quick):
    profile = quick["profile"]
    for kind in ("train_step", "inference"):
        lip = profile[kind]["LIP-R18-FPN"]
        plain = profile[kind]["R18-FPN"]
        assert set(lip["groups_ms"]) == set(GROUP_NAMES)
        assert sum(lip["groups_ms"].values()) == pytest.approx(lip["total_ms"])
        for group in ("LIP: lip2d op", "LIP: logit-module convs", "LIP: logit-module InstanceNorm"):
            assert lip["groups_ms"][group] > 0, (kind, group)
            assert plain["groups_ms"][group] == 0, (kind, group)
        assert lip["top_ops"] and all(op["group"] in GROUP_NAMES for op in lip["top_ops"])


@pytest.mark.parametrize(
    "depth, lip, total", [(50, True, 21_815_232), (50, False, 25_557_032 - 2_049_000)]
)
def test_r50_bottom_up_parameters_with_frozen_bn(depth, lip, total):
    """The published LIP-ResNet-50 count; torchvision's resnet50 without its fc."""
    cfg = model_level.detection_cfg(depth, lip=lip)
    assert cfg.MODEL.RESNETS.NORM == "FrozenBN"
    bottom_up = build_backbone(cfg).bottom_up
    assert model_level.count_parameters(bottom_up) == total


def test_primitive_is_lip():
    x = torch.randn(2, 3, 9, 10, dtype=torch.float64)
    logit = 12 * torch.rand(2, 3, 9, 10, dtype=torch.float64)
    torch.testing.assert_close(op_level.lip2d_primitive(x, logit), lip2d(x, logit))


def test_measurement_primitives():
    assert measure.peak_memory_bytes(lambda: torch.ones(2**20), "cpu") == 4 * 2**20
    x = torch.randn(2, 4, 8, 8, requires_grad=True)
    assert measure.saved_tensor_bytes(lambda: F.avg_pool2d(x, 3, 2, 1)) == x.nbytes
    # a storage saved twice counts once
    assert measure.saved_tensor_bytes(lambda: x * x) == x.nbytes
    calls = []
    samples = measure.time_interleaved(
        {"a": lambda: calls.append("a"), "b": lambda: calls.append("b")},
        rounds=3,
        device="cpu",
        warmup=0,
    )
    assert calls == ["a", "b", "b", "a", "a", "b"]  # rotated order each round
    assert [len(v) for v in samples.values()] == [3, 3]


def test_interleaved_timer_samples():
    """min_sample_s > 0: each sample is a torch.utils.benchmark blocked_autorange of at least that
    long, still in rotated interleaved rounds, and with torch's thread count unchanged."""
    calls, threads = [], torch.get_num_threads()

    def call(name):
        calls.append((name, torch.get_num_threads()))
        time.sleep(1e-3)

    samples = measure.time_interleaved(
        {"a": lambda: call("a"), "b": lambda: call("b")},
        rounds=2,
        device="cpu",
        warmup=0,
        min_sample_s=5e-3,
    )
    runs = [name for i, (name, _) in enumerate(calls) if i == 0 or calls[i - 1][0] != name]
    assert runs == ["a", "b", "a"]  # round 1: a, b; round 2: b, a
    assert {n for _, n in calls} == {threads}
    assert len(calls) >= 4 * 5  # every sample lasts >= 5 ms of 1 ms calls
    for seconds in samples.values():
        assert len(seconds) == 2 and all(1e-3 <= s < 1 for s in seconds)
    assert measure.median_ratio(samples, "a", "a") == 1.0
    assert measure.fastest_ratio(samples, "a", "b") == min(samples["a"]) / min(samples["b"])


class _TwoLIPs(torch.nn.Module):
    """A 1x1 logit conv and lip2d 3x3 s2 p1, then lip2d 5x3 s1 p(2, 1) of that output by itself."""

    def __init__(self, impl):
        super().__init__()
        self.logit = torch.nn.Conv2d(4, 4, 1)
        self.impl = impl

    def forward(self, x):
        y = lip2d(x, self.logit(x), 3, 2, 1, impl=self.impl)
        return lip2d(y, y, (5, 3), 1, (2, 1), impl=self.impl)


@pytest.mark.parametrize("impl", ["auto", "aten"])
def test_fvcore_counts_lip2d_with_the_flop_handles(impl, monkeypatch):
    """lip_det.layers.flops: 2 * kh * kw FLOPs per output element (kh * kw multiply-adds for the
    window sum of x * exp(logit), kh * kw adds for that of exp(logit); exp and division, being
    elementwise, not counted), each traced lip2d with its own window."""
    model, x = _TwoLIPs(impl), torch.randn(2, 4, 9, 11)

    def analysis():
        return FlopCountAnalysis(model, x).unsupported_ops_warnings(False).tracer_warnings("none")

    conv = 2 * 4 * 9 * 11 * 4  # N C_out H W C_in of the 1x1 conv
    outputs = 2 * 4 * 5 * 6  # both: 9x11 -> 5x6 (3x3 s2 p1), 5x6 -> 5x6 (5x3 s1 p(2, 1))
    lip2d_flops = 2 * 3 * 3 * outputs + 2 * 5 * 3 * outputs
    # import lip_det made them fvcore's defaults; without them fvcore skips both lip2d nodes
    default = analysis()
    assert default.total() == conv + lip2d_flops
    assert not [name for name in default.unsupported_ops() if "lip2d" in name.lower()]
    defaults = importlib.import_module("fvcore.nn.flop_count")._DEFAULT_SUPPORTED_OPS
    for name in LIP2D_OP_NAMES:
        monkeypatch.delitem(defaults, name)
    bare = analysis()
    assert bare.total() == conv
    assert sum(bare.unsupported_ops()[name] for name in LIP2D_OP_NAMES) == 2
    flops = analysis().set_op_handle(**lip_flop_handles())
    assert flops.total() == conv + lip2d_flops
    by_operator = flops.by_operator()
    assert [by_operator[k] for k in by_operator if k.lower().endswith("lip2d")] == [lip2d_flops]
    assert not [name for name in flops.unsupported_ops() if "lip2d" in name.lower()]
    assert add_lip_flop_handles(analysis()).total() == conv + lip2d_flops


def test_detectron2_flop_count_of_a_lip_model_counts_lip2d():
    """detectron2's FlopCountAnalysis (its tools/analyze_model.py --tasks flop) on a whole
    LIP-R18-FPN Faster R-CNN, with no lip_det call but the import: lip2d counted, not skipped."""
    from detectron2.utils.analysis import FlopCountAnalysis as Detectron2FlopCount

    cfg = model_level.detection_cfg(18, lip=True, light_heads=True)
    model = build_model(cfg).eval()
    inputs = [{"image": torch.rand(3, 64, 96) * 255}]
    flops = Detectron2FlopCount(model, inputs).unsupported_ops_warnings(False)
    flops.tracer_warnings("none")
    by_operator = flops.by_operator()  # runs the analysis
    assert not [name for name in flops.unsupported_ops() if "lip2d" in name.lower()]
    lip2d_flops = sum(v for k, v in by_operator.items() if k.lower().endswith("lip2d"))
    # the seven LIPs of LIP-R18 at 64x96: stem 64 x 16 x 24, then main and shortcut of res3-5
    outputs = 64 * 16 * 24 + 2 * (64 * 8 * 12 + 128 * 4 * 6 + 256 * 2 * 3)
    assert lip2d_flops == 2 * 9 * outputs


def test_densenet_depths_compare_lip_densenet_with_its_plain_twin():
    """--depths 121: LIP-DenseNet-121-FPN against DenseNet-121-FPN; the bottom-ups' FLOPs at
    224x224 differ by the published +44 % (4.13 vs 2.87 G for the classifiers)."""
    from benchmarks.models import backbone_flops, detection_cfg, model_names
    from detectron2.modeling import build_model

    assert model_names(121) == ("LIP-DenseNet-121-FPN", "DenseNet-121-FPN")
    flops = {}
    for lip in (True, False):
        cfg = detection_cfg(121, lip=lip)
        assert cfg.MODEL.BACKBONE.NAME == ("build_lip_densenet_fpn_backbone" if lip else
                                           "build_densenet_fpn_backbone")  # fmt: skip
        bottom_up = build_model(cfg).backbone.bottom_up
        flops[lip] = backbone_flops(bottom_up, 224, 224)["total"]
    assert flops[True] / flops[False] == pytest.approx(1.445, abs=0.01)


def test_compiled_against_eager_side_by_side():
    """--compile BACKEND: each model eager and with its backbone compiled, in the same rounds."""
    from benchmarks.compiled import benchmark_compiled

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        bench = benchmark_compiled(18, backend="aot_eager", image_size=(64, 96), rounds=1,
                                   light_heads=True, log=lambda line: None)  # fmt: skip
    finally:
        torch.set_num_threads(threads)
    names = ["LIP-R18-FPN", "LIP-R18-FPN compiled", "R18-FPN", "R18-FPN compiled"]
    assert list(bench["models"]) == names
    for name in names:
        for kind in ("train_step", "inference"):
            assert bench["models"][name][kind]["median_ms"] > 0
    assert bench["models"]["LIP-R18-FPN compiled"]["compile_s_train_step"] > 0
    assert "LIP-R18-FPN train_step compiled / eager" in bench["ratios"]
    assert all(_positive_finite(v) for v in bench["ratios"].values())
