#!/usr/bin/env python
"""
Export a lip_det detector for deployment, the way detectron2's tools/deploy/export_model.py does
it (``--export-method tracing``): ``TracingAdapter`` around the model's inference, then ONNX
(the TorchScript exporter) or a traced TorchScript module.

    python tools/export_model.py --format onnx --output export/ \
        --config-file configs/COCO-Detection/faster_rcnn_LIP_R_50_FPN_1x.yaml \
        [--sample-image IMAGE] [--verify] MODEL.WEIGHTS model_final.pth MODEL.DEVICE cpu

- ``onnx``: ``model.onnx``, standard ONNX operators only: under ONNX export lip2d is written as
  pads, strided slices, a max-pool, exp, adds, multiplies and a division, each window shifted by
  its own maximum logit (exact for any logits). Opset 17 by default: detectron2's ROIAlignV2
  (aligned=True) has an exact ONNX form only from opset 16 (detectron2's own tool uses 11).
- ``torchscript``: ``model.ts``; it keeps lip2d as the ``lip_det::lip2d`` operator, so load it
  in a process that has run ``import lip_det``.

Like detectron2's tool, the model ends before the final resize to the original image size
(``do_postprocess=False``). ``--verify`` runs the export (onnxruntime, or the loaded TorchScript
module) on the sample image and compares every output with the eager model. Without
``--sample-image`` the sample is a random image of INPUT.MIN_SIZE_TEST x INPUT.MAX_SIZE_TEST
(``--size`` to choose). For the backbone alone, ``torch.export.export`` and
``torch.onnx.export(..., dynamo=True)`` work directly (tests/test_export.py).
"""

import argparse
import os

import torch

import lip_det  # noqa: F401  (first: detectron2 compatibility fixes, backbone registration)
from lip_det.engine import load_config

ONNX_OPSET = 17


def tracing_adapter_class():
    """detectron2's ``TracingAdapter`` (on v0.6 without caffe2, ``import lip_det`` makes
    ``detectron2.export`` import, as upstream's does: lip_det.compat.export_without_caffe2)."""
    from detectron2.export import TracingAdapter

    return TracingAdapter


def build_eval_model(cfg):
    from detectron2.checkpoint import DetectionCheckpointer
    from detectron2.modeling import build_model

    model = build_model(cfg)
    DetectionCheckpointer(model).resume_or_load(cfg.MODEL.WEIGHTS, resume=False)
    return model.eval()


def sample_image(cfg, path=None, size=None, seed=0):
    """A (3, H, W) float image as detectron2's DefaultPredictor feeds the model: ``path``
    resized like the test loader, or random pixels of ``size`` (default: the test size)."""
    if path is not None:
        import detectron2.data.transforms as T
        from detectron2.data import detection_utils

        image = detection_utils.read_image(path, format=cfg.INPUT.FORMAT)
        resize = T.ResizeShortestEdge(
            [cfg.INPUT.MIN_SIZE_TEST, cfg.INPUT.MIN_SIZE_TEST], cfg.INPUT.MAX_SIZE_TEST
        )
        image = resize.get_transform(image).apply_image(image)
        return torch.as_tensor(image.astype("float32").transpose(2, 0, 1))
    height, width = size or (cfg.INPUT.MIN_SIZE_TEST, cfg.INPUT.MAX_SIZE_TEST)
    generator = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (3, height, width), generator=generator).float()


def tracing_adapter(model, image):
    """``TracingAdapter`` as detectron2's tool builds it: R-CNN inference without postprocessing,
    any other meta-architecture called directly."""
    from detectron2.modeling import GeneralizedRCNN

    inference = None
    if isinstance(model, GeneralizedRCNN):

        def inference(model, inputs):
            return [{"instances": model.inference(inputs, do_postprocess=False)[0]}]

    image = image.to(model.device)
    return tracing_adapter_class()(model, [{"image": image}], inference).eval()


def export(adapter, image, fmt, output_dir, opset=ONNX_OPSET):
    """Writes ``model.onnx`` or ``model.ts`` into ``output_dir``; returns its path."""
    os.makedirs(output_dir, exist_ok=True)
    image = image.to(adapter.model.device)
    with torch.no_grad():
        if fmt == "onnx":
            path = os.path.join(output_dir, "model.onnx")
            torch.onnx.export(adapter, (image,), path, opset_version=opset, dynamo=False)
        elif fmt == "torchscript":
            path = os.path.join(output_dir, "model.ts")
            torch.jit.save(torch.jit.trace(adapter, (image,), check_trace=False), path)
        else:
            raise ValueError(f"format {fmt!r}: choose 'onnx' or 'torchscript'")
    adapter.eval()  # the ONNX exporter restores the adapter's (training) mode on all of it
    return path


def run_export(path, image):
    """The exported model's outputs (a list of tensors) on ``image``."""
    if path.endswith(".onnx"):
        import onnxruntime

        session = onnxruntime.InferenceSession(path, providers=["CPUExecutionProvider"])
        outputs = session.run(None, {session.get_inputs()[0].name: image.cpu().numpy()})
        return [torch.from_numpy(o) for o in outputs]
    with torch.no_grad():
        return [o.cpu() for o in torch.jit.load(path, map_location="cpu")(image.cpu())]


def compare(adapter, path, image):
    """Per flattened output: (name, shape, max |export - eager| / max |eager|)."""
    with torch.no_grad():
        expected = [o.cpu() for o in adapter(image.to(adapter.model.device))]
    got = run_export(path, image)
    if len(got) != len(expected):
        raise AssertionError(f"{len(got)} exported outputs, {len(expected)} eager ones")
    rows = []
    for index, (g, e) in enumerate(zip(got, expected)):
        if g.shape != e.shape:
            raise AssertionError(f"output {index}: shape {tuple(g.shape)} != {tuple(e.shape)}")
        scale = e.double().abs().max().clamp_min(1e-12) if e.numel() else 1.0
        error = ((g.double() - e.double()).abs().max() / scale).item() if e.numel() else 0.0
        rows.append((f"output {index}", tuple(e.shape), error))
    return rows


def argument_parser():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0].strip())
    parser.add_argument("--config-file", required=True, metavar="FILE", help="a yacs config")
    parser.add_argument("--format", choices=["onnx", "torchscript"], default="onnx")
    parser.add_argument("--output", required=True, help="directory for model.onnx / model.ts")
    parser.add_argument("--sample-image", default=None, help="image to trace with (and verify)")
    parser.add_argument(
        "--size", type=int, nargs=2, metavar=("H", "W"), default=None,
        help="random sample image of this size (without --sample-image)",
    )  # fmt: skip
    parser.add_argument("--opset", type=int, default=ONNX_OPSET)
    parser.add_argument("--verify", action="store_true", help="compare the export with eager")
    parser.add_argument("opts", nargs=argparse.REMAINDER, help="config overrides KEY VALUE ...")
    return parser


def main(argv=None):
    args = argument_parser().parse_args(argv)
    cfg = load_config(args.config_file, args.opts)
    model = build_eval_model(cfg)
    image = sample_image(cfg, args.sample_image, args.size)
    adapter = tracing_adapter(model, image)
    path = export(adapter, image, args.format, args.output, args.opset)
    print(f"wrote {path}")
    print(f"inputs schema: {adapter.inputs_schema}\noutputs schema: {adapter.outputs_schema}")
    if args.verify:
        rows = compare(adapter, path, image)
        for name, shape, error in rows:
            print(f"  {name} {shape}: max |export - eager| / max |eager| = {error:.2e}")
    return path


if __name__ == "__main__":
    main()
