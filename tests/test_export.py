"""Export of LIP models: torch.export keeps the lip_det::lip2d operator; ONNX (both exporters)
gets standard ONNX ops only, and onnxruntime's outputs equal eager's; a whole Faster R-CNN
LIP-R50-FPN exports the way detectron2's deploy tool does it (tools/export_model.py)."""

import importlib.util
import warnings
from pathlib import Path

import pytest
import torch
from conftest import CONFIGS, lip_cfg
from detectron2.modeling import build_backbone
from torch.export import Dim

import lip_det
from lip_det.engine import load_config
from lip_det.layers import ConvLogit, lip2d_decompositions, lip2d_window_softmax

onnx = pytest.importorskip("onnx")
onnxruntime = pytest.importorskip("onnxruntime")
pytest.importorskip("onnxscript")

REPO = Path(__file__).resolve().parents[1]


def _export_tool():
    spec = importlib.util.spec_from_file_location("export_model", REPO / "tools/export_model.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _rel_error(got, want):
    return ((got.double() - want.double()).norm() / want.double().norm()).item()


def _assert_close_relative(got, want, rel=1e-4):
    """Equal within ``rel`` of the output's scale: elementwise |got - want| <= rel * (|want| +
    max |want|), so values near 0 are held to the tensor's scale, not to their own."""
    got, want = got.double(), want.double()
    torch.testing.assert_close(got, want, rtol=rel, atol=rel * want.abs().max().item())


@pytest.fixture(scope="module")
def backbone():
    torch.manual_seed(0)
    model = build_backbone(lip_cfg(18)).eval()
    for module in model.modules():
        if isinstance(module, ConvLogit):  # fresh ones give constant logits: spread them out
            torch.nn.init.normal_(module.conv.weight, std=0.5)
    return model


def _onnx_run(path, *inputs):
    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    feed = {i.name: t.numpy() for i, t in zip(session.get_inputs(), inputs)}
    return [torch.from_numpy(o) for o in session.run(None, feed)]


def _op_types(path):
    model = onnx.load(str(path))
    nodes = list(model.graph.node)
    for function in model.functions:
        nodes += list(function.node)
    return {(node.domain, node.op_type) for node in nodes}


def test_torch_export_keeps_the_operator_with_dynamic_shapes(backbone):
    x = torch.randn(2, 3, 64, 96)
    dynamic = {"x": {0: Dim.AUTO, 2: Dim.AUTO, 3: Dim.AUTO}}
    program = torch.export.export(backbone, (x,), dynamic_shapes=dynamic)
    targets = [n.target for n in program.graph.nodes if n.op == "call_function"]
    assert targets.count(torch.ops.lip_det.lip2d.default) == 7  # stem + 2 per LIP stage
    for shape in [(2, 3, 64, 96), (1, 3, 67, 93), (3, 3, 33, 50)]:
        y = torch.randn(shape)
        with torch.no_grad():
            want = backbone(y)
        got = program.module()(y)
        for key in want:
            # eager inference fuses each head's norm and gate into the pooling on CPU; the
            # exported graph keeps them as modules: the same values, rounded in another order
            torch.testing.assert_close(got[key], want[key], rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("dynamo", [True, False], ids=["dynamo", "torchscript"])
def test_onnx_export_of_the_backbone_matches_eager_in_onnxruntime(backbone, dynamo, tmp_path):
    x = torch.randn(2, 3, 64, 96)
    with torch.no_grad():
        want = backbone(x)
    path = tmp_path / "backbone.onnx"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(backbone, (x,), str(path), dynamo=dynamo, output_names=list(want))
    op_types = _op_types(path)
    assert {domain for domain, _ in op_types} == {""}, op_types  # the default ONNX domain only
    assert {"Exp", "MaxPool", "Slice"} <= {op for _, op in op_types}
    got = _onnx_run(path, x)
    for key, value in zip(want, got):
        _assert_close_relative(value, want[key])
        assert _rel_error(value, want[key]) < 1e-5


@pytest.mark.parametrize("dynamo", [True, False], ids=["dynamo", "torchscript"])
def test_onnx_lip2d_is_exact_for_windows_far_below_the_plane_max(dynamo, tmp_path):
    """The exported formula shifts every window by its own maximum: logits 110 apart between the
    plane's halves (one shift per plane would underflow to 0/0) and pair geometries."""

    class TwoLIPs(torch.nn.Module):
        def forward(self, x, logit):
            y = lip_det.lip2d(x, logit)
            return y, lip_det.lip2d(x, logit, (3, 2), (2, 1), (1, 0))

    torch.manual_seed(3)
    x = torch.randn(2, 3, 10, 13)
    logit = 5 * torch.randn(2, 3, 10, 13)
    logit[..., :6] += 55
    logit[..., 6:] -= 55
    path = tmp_path / "lip2d.onnx"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(TwoLIPs(), (x, logit), str(path), dynamo=dynamo)
    got = _onnx_run(path, x, logit)
    for value, geometry in zip(got, [(3, 2, 1), ((3, 2), (2, 1), (1, 0))]):
        want = lip2d_window_softmax(x.double(), logit.double(), *geometry)
        torch.testing.assert_close(value.double(), want, rtol=1e-5, atol=1e-6)


def test_exported_program_decomposes_for_onnx(tmp_path):
    """An ExportedProgram holding the operator converts to ONNX once lip2d_decompositions() has
    rewritten it in standard ops."""

    class Pool(torch.nn.Module):
        def forward(self, x, logit):
            return lip_det.lip2d(x, logit)

    x, logit = torch.randn(1, 4, 9, 11), 20 * torch.randn(1, 4, 9, 11)
    program = torch.export.export(Pool(), (x, logit))
    decomposed = program.run_decompositions(lip2d_decompositions())
    targets = {n.target for n in decomposed.graph.nodes if n.op == "call_function"}
    assert torch.ops.lip_det.lip2d.default not in targets
    torch.testing.assert_close(decomposed.module()(x, logit), lip_det.lip2d(x, logit))
    path = tmp_path / "pool.onnx"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(decomposed, (x, logit), str(path), dynamo=True)
    torch.testing.assert_close(_onnx_run(path, x, logit)[0], lip_det.lip2d(x, logit))


def _whole_model(tool, config, opts=()):
    cfg = load_config(
        str(config),
        ["MODEL.WEIGHTS", "", "MODEL.DEVICE", "cpu", "MODEL.RPN.PRE_NMS_TOPK_TEST", "200",
         "MODEL.RPN.POST_NMS_TOPK_TEST", "50", "MODEL.ROI_HEADS.SCORE_THRESH_TEST", "0.0",
         "INPUT.MIN_SIZE_TEST", "128", "INPUT.MAX_SIZE_TEST", "160", *opts],
    )  # fmt: skip
    torch.manual_seed(0)
    model = tool.build_eval_model(cfg)
    for module in model.modules():
        if isinstance(module, ConvLogit):
            torch.nn.init.normal_(module.conv.weight, std=0.5)
    # untrained, every class score is ~1/81 and the top-k of near-ties would follow rounding
    # noise: spread the class scores so that the kept detections are well separated
    torch.nn.init.normal_(model.roi_heads.box_predictor.cls_score.weight, std=0.02)
    return cfg, model


@pytest.mark.parametrize("fmt", ["onnx", "torchscript"])
def test_whole_faster_rcnn_lip_r50_fpn_exports_like_detectron2s_deploy_tool(fmt, tmp_path):
    tool = _export_tool()
    config = CONFIGS / "COCO-Detection/faster_rcnn_LIP_R_50_FPN_1x.yaml"
    cfg, model = _whole_model(tool, config)
    image = tool.sample_image(cfg)
    assert image.shape == (3, 128, 160)
    adapter = tool.tracing_adapter(model, image)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        path = tool.export(adapter, image, fmt, str(tmp_path))
    if fmt == "onnx":
        op_types = _op_types(path)
        assert {domain for domain, _ in op_types} == {""}, op_types  # standard ONNX ops only
        op_types = {op for _, op in op_types}
        assert {"Exp", "MaxPool", "Slice", "RoiAlign", "InstanceNormalization"} <= op_types
    with torch.no_grad():
        want = adapter(image)
    got = tool.run_export(path, image)
    boxes, classes, scores, size = want
    assert len(got) == 4 and len(boxes) == 100
    torch.testing.assert_close(got[1], classes, rtol=0, atol=0)
    torch.testing.assert_close(got[3], size, rtol=0, atol=0)
    _assert_close_relative(got[0], boxes)
    _assert_close_relative(got[2], scores)
    rows = tool.compare(adapter, path, image)
    assert all(error < 1e-4 for _, _, error in rows), rows


def test_export_tool_command_line(tmp_path, capsys):
    tool = _export_tool()
    config = CONFIGS / "Demo/faster_rcnn_LIP_R_18_FPN_demo.yaml"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        path = tool.main(
            ["--config-file", str(config), "--format", "torchscript", "--output", str(tmp_path),
             "--size", "96", "128", "--verify", "MODEL.WEIGHTS", "", "MODEL.DEVICE", "cpu"]
        )  # fmt: skip
    assert path == str(tmp_path / "model.ts") and Path(path).is_file()
    # TorchScript keeps the registered operator (load it after `import lip_det`)
    kinds = [node.kind() for node in torch.jit.load(path).inlined_graph.nodes()]
    assert kinds.count("lip_det::lip2d") == 7
    out = capsys.readouterr().out
    assert f"wrote {path}" in out
    errors = [float(line.rsplit("= ", 1)[1]) for line in out.splitlines() if "max |export" in line]
    assert len(errors) == 4 and max(errors) == 0.0, out
