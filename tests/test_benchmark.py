"""tools/benchmark.py in --quick mode, and the measurements it is built from."""

import importlib.util
import json
import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from detectron2.modeling import build_backbone, build_model

from lip_det import benchmark
from lip_det.layers import lip2d

REPO = Path(__file__).resolve().parents[1]
LEAN = {"cpu", "triton", "aten"}


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
    assert [entry["shape"] for entry in quick["op"]] == [list(s) for s in benchmark.QUICK_OP_SHAPES]
    assert list(quick["models"]) == ["R18"]
    assert quick["profile"]["depth"] == 18


def test_op_level(quick):
    expected = {"avg_pool2d", "primitive", *benchmark._op_implementations("cpu")}
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


def test_model_parameter_counts_match_bn_models(quick):
    """FrozenBN affine buffers are counted: the counts equal nn.Parameters of NORM "BN" models."""
    models = quick["models"]["R18"]["models"]
    for name, lip in (("LIP-R18-FPN", True), ("R18-FPN", False)):
        cfg = benchmark.detection_cfg(18, lip=lip, light_heads=True)
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
        assert set(lip["groups_ms"]) == set(benchmark.GROUP_NAMES)
        assert sum(lip["groups_ms"].values()) == pytest.approx(lip["total_ms"])
        for group in ("LIP: lip2d op", "LIP: logit-module convs", "LIP: logit-module InstanceNorm"):
            assert lip["groups_ms"][group] > 0, (kind, group)
            assert plain["groups_ms"][group] == 0, (kind, group)
        assert lip["top_ops"] and all(op["group"] in benchmark.GROUP_NAMES for op in lip["top_ops"])


@pytest.mark.parametrize(
    "depth, lip, total", [(50, True, 21_815_232), (50, False, 25_557_032 - 2_049_000)]
)
def test_r50_bottom_up_parameters_with_frozen_bn(depth, lip, total):
    """The published LIP-ResNet-50 count; torchvision's resnet50 without its fc."""
    cfg = benchmark.detection_cfg(depth, lip=lip)
    assert cfg.MODEL.RESNETS.NORM == "FrozenBN"
    bottom_up = build_backbone(cfg).bottom_up
    assert benchmark.count_parameters(bottom_up) == total


def test_primitive_is_lip():
    x = torch.randn(2, 3, 9, 10, dtype=torch.float64)
    logit = 12 * torch.rand(2, 3, 9, 10, dtype=torch.float64)
    torch.testing.assert_close(benchmark.lip2d_primitive(x, logit), lip2d(x, logit))


def test_measurement_primitives():
    assert benchmark.peak_memory_bytes(lambda: torch.ones(2**20), "cpu") == 4 * 2**20
    x = torch.randn(2, 4, 8, 8, requires_grad=True)
    assert benchmark.saved_tensor_bytes(lambda: F.avg_pool2d(x, 3, 2, 1)) == x.nbytes
    # a storage saved twice counts once
    assert benchmark.saved_tensor_bytes(lambda: x * x) == x.nbytes
    calls = []
    samples = benchmark.time_interleaved(
        {"a": lambda: calls.append("a"), "b": lambda: calls.append("b")},
        rounds=3,
        device="cpu",
        warmup=0,
    )
    assert calls == ["a", "b", "b", "a", "a", "b"]  # rotated order each round
    assert [len(v) for v in samples.values()] == [3, 3]
