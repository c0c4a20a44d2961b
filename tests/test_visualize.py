"""Importance maps (lip_det.visualize, tools/visualize_importance.py): one PNG per LIP layer at
the image's size, a figure per image, and maps that are what the docs say they are."""

import importlib.util

import numpy as np
import pytest
import torch
from conftest import CONFIGS, REPO, TINY_OVERRIDES
from detectron2.checkpoint import DetectionCheckpointer
from detectron2.modeling import build_model
from PIL import Image

from lip_det.engine import SetupError, load_config
from lip_det.visualize import find_lip_layers, importance_maps

LIP_CONFIG = str(CONFIGS / "Demo/faster_rcnn_LIP_R_18_FPN_demo.yaml")
PLAIN_CONFIG = str(CONFIGS / "Demo/faster_rcnn_R_18_FPN_demo.yaml")
PLACES = ["stem", "res3.main", "res3.shortcut", "res4.main", "res4.shortcut", "res5.main",
          "res5.shortcut"]  # fmt: skip


def _tool():
    spec = importlib.util.spec_from_file_location(
        "visualize_tool", REPO / "tools/visualize_importance.py"
    )
    tool = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(tool)
    return tool


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    model = build_model(load_config(LIP_CONFIG, TINY_OVERRIDES)).eval()
    # Fresh logit convs are zero-filled (every LIP starts as average pooling, a flat map): give
    # them random weights, as training would.
    with torch.no_grad():
        for lip in find_lip_layers(model.backbone).values():
            torch.nn.init.normal_(lip.logit.conv.weight, std=0.1)
    return model


@pytest.fixture(scope="module")
def weights(model, tmp_path_factory):
    folder = tmp_path_factory.mktemp("weights")
    DetectionCheckpointer(model, save_dir=str(folder)).save("lip_random")
    return str(folder / "lip_random.pth")


def _keep_output(store):
    """A forward hook that keeps the module's output for image 0 (and returns None: a hook's
    return value would replace the output)."""

    def hook(module, inputs, output):
        store.append(output[0].double())

    return hook


def _image(rng, height, width):
    return rng.integers(0, 256, size=(height, width, 3), dtype=np.uint8)


def test_tool_writes_one_png_per_lip_layer_at_the_image_size(tmp_path, weights):
    rng = np.random.default_rng(0)
    inputs = {
        "rgb.png": Image.fromarray(_image(rng, 70, 50)),
        "gray.png": Image.fromarray(_image(rng, 64, 64)[..., 0]),  # mode L
        "rgba.png": Image.fromarray(np.dstack([_image(rng, 40, 90), _image(rng, 40, 90)[..., :1]])),
    }
    for name, img in inputs.items():
        img.save(tmp_path / name)
    out = tmp_path / "vis"
    written = _tool().main(
        ["--config-file", LIP_CONFIG, "--input", *(str(tmp_path / n) for n in inputs),
         "--output", str(out), *TINY_OVERRIDES, "MODEL.WEIGHTS", weights]
    )  # fmt: skip
    assert len(written) == len(inputs) * (len(PLACES) + 1)
    for name, img in inputs.items():
        stem = name[:-4]
        pngs = sorted(p.name for p in (out / stem).iterdir())
        assert pngs == [f"{i}_{place}.png" for i, place in enumerate(PLACES)]
        for png in pngs:
            with Image.open(out / stem / png) as layer:
                assert layer.size == img.size and layer.mode == "RGB"
        with Image.open(out / f"{stem}_layers.png") as figure:  # input + 7 layers, 4 columns
            assert figure.size[0] > figure.size[1] > 300


def test_layer_maps_are_the_channel_mean_of_exp_logit_over_its_maximum(model):
    """At a layer's own resolution (64-px input: no padding, the stem LIP sees 32x32) the map is
    exactly exp(logit) averaged over channels and divided by its maximum."""
    image = _image(np.random.default_rng(1), 64, 64)
    logits = []
    stem = model.backbone.bottom_up.stem.lip.logit
    handle = stem.register_forward_hook(_keep_output(logits))
    try:
        maps = importance_maps(model, image, size=(32, 32))
    finally:
        handle.remove()
    assert list(maps) == PLACES
    expected = logits[0].exp().mean(0)
    expected = (expected / expected.max()).numpy()
    assert expected.shape == (32, 32) and expected.std() > 0.01  # not a flat map
    np.testing.assert_allclose(maps["stem"], expected, rtol=1e-5, atol=1e-6)


def test_window_maps_are_the_softmax_share_in_the_window(model):
    image = _image(np.random.default_rng(2), 64, 64)
    logits = []
    lip = find_lip_layers(model.backbone)["res3.main"]
    handle = lip.logit.register_forward_hook(_keep_output(logits))
    try:
        maps = importance_maps(model, image, normalize="window", size=(16, 16))  # res3's input
    finally:
        handle.remove()
    weights = logits[0].exp().numpy()  # (C, 16, 16)
    assert weights.shape[1:] == (16, 16)
    for y, x in ((5, 7), (1, 1), (14, 9)):
        window = weights[:, y - 1 : y + 2, x - 1 : x + 2]
        share = (weights[:, y, x] / window.sum(axis=(1, 2))).mean()
        assert maps["res3.main"][y, x] == pytest.approx(share, rel=1e-5)
    assert 0 < maps["res3.main"].min() and maps["res3.main"].max() <= 1.0


def test_tool_errors_name_the_problem(tmp_path, weights):
    tool = _tool()
    good = tmp_path / "ok.png"
    Image.fromarray(_image(np.random.default_rng(3), 32, 32)).save(good)
    (tmp_path / "broken.png").write_bytes(b"not an image")
    cases = [
        ([PLAIN_CONFIG, str(good)], "has no LIP layers"),
        ([LIP_CONFIG, str(tmp_path / "missing.png")], "missing.png: cannot read the image"),
        ([LIP_CONFIG, str(tmp_path / "broken.png")], "broken.png: cannot read the image"),
    ]
    for (config, image), message in cases:
        with pytest.raises(SystemExit, match=message):
            tool.main(["--config-file", config, "--input", image, "--output", str(tmp_path / "o"),
                       *TINY_OVERRIDES, "MODEL.WEIGHTS", weights])  # fmt: skip
    with pytest.raises(SetupError, match="MODEL.WEIGHTS = 'nope.pth': file not found"):
        from lip_det.visualize import visualize_images

        visualize_images(LIP_CONFIG, [str(good)], str(tmp_path), opts=["MODEL.WEIGHTS", "nope.pth"])
