"""Bad input, round 2 (issue #17): the paths the tools write and the messages they give.

- tools/convert_lip_to_d2.py replaces an existing output only with --overwrite, its source never;
  an output that is a folder, or under a file, is one error line;
- tools/visualize_importance.py likewise for the PNGs it would write, and its --output folder;
- a detectron2 checkpoint of another depth: the converter and the MODEL.WEIGHTS check say that the
  depth differs;
- weights trained with other MODEL.LIP.PLACES are refused at --eval-only, naming the places;
- values in messages are shown with repr.
"""

import importlib.util
import os
import pickle
import subprocess

import pytest
import torch
from conftest import CONFIGS, PYTHON, REPO, TINY_OVERRIDES, TRAIN_NET
from PIL import Image

from lip_det.checkpoint.convert import ConversionError, convert_file, convert_state_dict
from lip_det.checkpoint.files import read_checkpoint_file
from lip_det.checkpoint.weights import WeightsError, check_weights_file, model_tensor_shapes
from lip_det.engine import SetupError, load_config

DEMO = str(CONFIGS / "Demo/faster_rcnn_LIP_R_18_FPN_demo.yaml")
LIP_R50 = str(CONFIGS / "COCO-Detection/faster_rcnn_LIP_R_50_FPN_1x.yaml")
ALL_PLACES = ["stem", "res3.main", "res3.shortcut", "res4.main", "res4.shortcut", "res5.main",
              "res5.shortcut"]  # fmt: skip


def _load_tool(name):
    spec = importlib.util.spec_from_file_location(name, REPO / "tools" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def converter():
    return _load_tool("convert_lip_to_d2")


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    threads = torch.get_num_threads()  # a few shared cores: OpenMP threads spin against others'
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def resnet18(tmp_path_factory):
    """(torchvision ResNet-18 checkpoint, its conversion: a detectron2 LIP-ResNet-18 .pkl)."""
    import torchvision

    folder = tmp_path_factory.mktemp("resnet18")
    src, converted = folder / "resnet18.pth", folder / "LIP-R-18.pkl"
    torch.save(torchvision.models.resnet18().state_dict(), src)
    convert_file(src, converted)
    return src, converted


def _convert(converter, capsys, *argv):
    """(exit status, stderr) of an in-process run; a failure is exactly one "error:" line."""
    status = converter.main([str(a) for a in argv])
    captured = capsys.readouterr()
    if status:
        assert captured.out == "" and captured.err.count("\n") == 1
        assert captured.err.startswith("error: ")
    return status, captured.err[len("error: ") : -1]


# ---- the converter's output path ----------------------------------------------------------------


def test_converter_replaces_an_existing_output_only_with_overwrite(converter, capsys, resnet18,
                                                                   tmp_path):  # fmt: skip
    src, _ = resnet18
    dst = tmp_path / "LIP-R-18.pkl"
    dst.write_bytes(b"an earlier conversion")
    assert _convert(converter, capsys, src, dst) == (
        1,
        f"{dst}: exists already; pass --overwrite to replace it, or choose another output",
    )
    assert dst.read_bytes() == b"an earlier conversion"
    assert _convert(converter, capsys, src, dst, "--overwrite")[0] == 0
    with open(dst, "rb") as f:
        assert "backbone.bottom_up.stem.conv1.weight" in pickle.load(f)["model"]


def test_converter_never_replaces_its_source(converter, capsys, resnet18, tmp_path):
    src = tmp_path / "resnet18.pkl"  # a torch.save file is read by content, whatever its name
    src.write_bytes(resnet18[0].read_bytes())
    link = tmp_path / "link.pkl"
    link.symlink_to(src)
    for dst in (src, link, os.path.join(tmp_path, "sub", "..", "resnet18.pkl")):
        assert _convert(converter, capsys, src, dst, "--overwrite") == (
            1,
            f"{dst}: is the checkpoint to convert itself; converting must not replace its source "
            "(not even with --overwrite): write the output to another path",
        )
    assert src.read_bytes() == resnet18[0].read_bytes()


def test_converter_output_of_the_wrong_kind(converter, capsys, resnet18, tmp_path):
    src, _ = resnet18
    folder = tmp_path / "weights.pkl"
    folder.mkdir()
    assert _convert(converter, capsys, src, folder, "--overwrite") == (
        1,
        f"{folder}: is a folder; the output must be the path of the .pkl file to write, e.g. "
        f"{folder / 'NAME.pkl'}",
    )
    afile = tmp_path / "weights"
    afile.write_text("not a folder")
    dst = afile / "sub" / "LIP-R-18.pkl"
    assert _convert(converter, capsys, src, dst) == (
        1,
        f"{dst}: cannot create its folder: {afile} is a file, not a folder",
    )
    assert afile.read_text() == "not a folder"
    # a missing folder is created
    dst = tmp_path / "new" / "sub" / "LIP-R-18.pkl"
    assert _convert(converter, capsys, src, dst)[0] == 0 and dst.is_file()


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into read-only folders")
def test_converter_unwritable_folder_is_one_line(converter, capsys, resnet18, tmp_path):
    folder = tmp_path / "read-only"
    folder.mkdir()
    folder.chmod(0o500)
    try:
        dst = folder / "LIP-R-18.pkl"
        assert _convert(converter, capsys, resnet18[0], dst) == (
            1,
            f"{dst}: cannot write it (Permission denied)",
        )
    finally:
        folder.chmod(0o700)


# ---- a detectron2 checkpoint of another depth ---------------------------------------------------


def test_the_converters_own_output_reads_back(resnet18):
    """save_d2_checkpoint pickles arrays with protocol 5 (numpy's _frombuffer): the reader behind
    the MODEL.WEIGHTS check reads them instead of leaving them unchecked as unsafe."""
    checkpoint = read_checkpoint_file(resnet18[1], by_extension=True)
    assert checkpoint.author.startswith("lip_det convert: torchvision resnet18.pth")
    assert checkpoint.state["backbone.bottom_up.res5.1.conv2.weight"].shape == (512, 512, 3, 3)


def test_converter_says_that_the_depth_of_a_detectron2_checkpoint_differs(converter, capsys,
                                                                          resnet18):  # fmt: skip
    _, converted = resnet18
    dst = converted.parent / "LIP-R-50.pkl"
    author = "lip_det convert: torchvision resnet18.pth -> LIP-ResNet-18, " + (
        'INPUT.FORMAT "RGB", MODEL.PIXEL_MEAN [123.675, 116.28, 103.53], '
        "MODEL.PIXEL_STD [58.395, 57.12, 57.375]"
    )
    assert _convert(converter, capsys, converted, dst, "--depth", "50") == (
        1,
        f"{converted}: already a detectron2 checkpoint (written by {author!r}), of a ResNet-18 "
        "backbone, but --depth 50 was asked for: the depth differs (blocks per stage "
        "[2, 2, 2, 2]; depth 50 has [3, 4, 6, 3]), and converting cannot change it; convert an "
        "ImageNet ResNet-50 checkpoint instead, or give this file to the MODEL.WEIGHTS of a "
        "config with MODEL.RESNETS.DEPTH 18",
    )
    for depth in ((), ("--depth", "18")):
        assert _convert(converter, capsys, converted, dst, *depth) == (
            1,
            f"{converted}: already a detectron2 checkpoint (written by {author!r}), of a "
            "ResNet-18 backbone; give it to MODEL.WEIGHTS of a config with MODEL.RESNETS.DEPTH "
            "18 as it is",
        )
    assert not dst.exists()


@pytest.fixture(scope="module")
def r50_shapes():
    return model_tensor_shapes(load_config(LIP_R50, ["MODEL.DEVICE", "cpu", "MODEL.WEIGHTS", ""]))


def test_weights_of_another_depth_say_that_the_depth_differs(resnet18, r50_shapes, tmp_path):
    _, converted = resnet18
    with pytest.raises(WeightsError) as info:
        check_weights_file(converted, r50_shapes)
    assert str(info.value) == (
        f"MODEL.WEIGHTS: {converted} holds the weights of a ResNet-18 (blocks per stage "
        "[2, 2, 2, 2]), but the model's backbone is a ResNet-50 ([3, 4, 6, 3]): the depth "
        "differs, so detectron2 would load only the tensors the two share by name and shape. Use "
        "weights of a ResNet-50 (tools/convert_lip_to_d2.py converts ImageNet ones; --depth 50 "
        "checks the depth) or a config of depth 18"
    )
    # ResNet-101 weights share res2, res3, res5 and the first 6 blocks of res4 with a ResNet-50:
    # a partial match, refused for training too
    r101 = {name.replace("res4.0.", f"res4.{i}."): torch.zeros(1) for name in r50_shapes
            for i in range(23) if name.startswith("backbone.")}  # fmt: skip
    path = tmp_path / "R-101.pth"
    torch.save({"model": r101}, path)
    with pytest.raises(WeightsError, match=r"holds the weights of a ResNet-101 \(blocks per stage "
                       r"\[3, 4, 23, 3\]\), but the model's backbone is a ResNet-50"):  # fmt: skip
        check_weights_file(path, r50_shapes)


def test_depth_messages_show_values_with_repr(resnet18):
    import torchvision

    with torch.device("meta"):
        state = torchvision.models.resnet18().state_dict()
    with pytest.raises(ConversionError) as info:
        convert_state_dict(state, depth="18", origin="r18.pth")  # a str, not the int 18
    assert str(info.value) == (
        "r18.pth: expected a depth-'18' ResNet, but the file holds a ResNet-18 (blocks per stage "
        "[2, 2, 2, 2]; depth '18' has no such depth)"
    )


# ---- weights trained with other MODEL.LIP.PLACES -------------------------------------------------


@pytest.fixture(scope="module")
def demo_weights(tmp_path_factory):
    """A trained-looking checkpoint of the demo LIP-ResNet-18 (LIP in all seven places)."""
    shapes = model_tensor_shapes(load_config(DEMO, TINY_OVERRIDES))
    path = tmp_path_factory.mktemp("demo") / "model_final.pth"
    torch.save({"model": {k: torch.zeros(s) for k, s in shapes.items()}, "iteration": 9}, path)
    return path


def test_eval_only_refuses_weights_of_other_lip_places(demo_weights, tmp_path):
    """Through tools/train_net.py: one error line, naming the places, before anything is built."""
    result = subprocess.run(
        [PYTHON, str(TRAIN_NET), "--config-file", DEMO, "--eval-only", *TINY_OVERRIDES,
         "MODEL.WEIGHTS", str(demo_weights), "MODEL.LIP.PLACES", "['stem', 'res3.main']",
         "OUTPUT_DIR", str(tmp_path / "eval")],
        capture_output=True, text=True, cwd=REPO, timeout=300,
    )  # fmt: skip
    assert result.returncode == 1
    assert "Traceback" not in result.stderr
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert errors == [
        f"error: MODEL.WEIGHTS: {demo_weights} was trained with MODEL.LIP.PLACES {ALL_PLACES!r} "
        "but the config has ['stem', 'res3.main']; --eval-only would drop the trained LIP layers "
        "of ['res3.shortcut', 'res4.main', 'res4.shortcut', 'res5.main', 'res5.shortcut']. "
        "Evaluate it with the MODEL.LIP.PLACES it was trained with"
    ]
    assert result.stderr.rstrip().splitlines()[-1] == errors[0]


def test_eval_only_names_the_places_both_ways(demo_weights, tmp_path):
    few = model_tensor_shapes(
        load_config(DEMO, [*TINY_OVERRIDES, "MODEL.LIP.PLACES", "['res3.main', 'res4.shortcut']"])
    )
    path = tmp_path / "few.pth"
    torch.save({"model": {k: torch.zeros(s) for k, s in few.items()}}, path)
    everywhere = model_tensor_shapes(load_config(DEMO, TINY_OVERRIDES))
    check_weights_file(path, everywhere)  # training may start from it
    with pytest.raises(WeightsError) as info:
        check_weights_file(path, everywhere, eval_only=True)
    assert str(info.value) == (
        f"MODEL.WEIGHTS: {path} was trained with MODEL.LIP.PLACES ['res3.main', 'res4.shortcut'] "
        f"but the config has {ALL_PLACES!r}; --eval-only would evaluate untrained LIP layers in "
        "['stem', 'res3.shortcut', 'res4.main', 'res5.main', 'res5.shortcut']. Evaluate it with "
        "the MODEL.LIP.PLACES it was trained with"
    )
    # into a plain ResNet-18: every trained LIP layer would be dropped
    plain = model_tensor_shapes(
        load_config(str(CONFIGS / "Demo/faster_rcnn_R_18_FPN_demo.yaml"), TINY_OVERRIDES)
    )
    with pytest.raises(WeightsError, match=r"^MODEL.WEIGHTS: .* was trained with MODEL.LIP.PLACES "
                       r"\['res3.main', 'res4.shortcut'\] but the config's model has no LIP "
                       r"layers; --eval-only would drop the trained LIP layers of \['res3.main', "
                       r"'res4.shortcut'\]\. "):  # fmt: skip
        check_weights_file(path, plain, eval_only=True)


def test_densenet_places_are_named_by_their_key(tmp_path):
    """Names and shapes are all that matter: a LIP-DenseNet's LIP layers in its transitions."""
    lip = {"backbone.bottom_up.stem.lip.logit.conv.weight": (1,),
           **{f"backbone.bottom_up.dense{s}.transition.lip.logit.conv.weight": (1,) for s in
              (3, 4, 5)}}  # fmt: skip
    common = {"backbone.bottom_up.dense2.layer1.conv1.weight": (1,), "head.weight": (1,)}
    expected = {**common, **dict(list(lip.items())[:2])}  # stem, transition1
    path = tmp_path / "lip_densenet.pth"
    torch.save({"model": {k: torch.zeros(s) for k, s in {**common, **lip}.items()}}, path)
    with pytest.raises(WeightsError) as info:
        check_weights_file(path, expected, eval_only=True)
    assert str(info.value) == (
        f"MODEL.WEIGHTS: {path} was trained with MODEL.LIP.DENSENET_PLACES ['stem', "
        "'transition1', 'transition2', 'transition3'] but the config has ['stem', "
        "'transition1']; --eval-only would drop the trained LIP layers of ['transition2', "
        "'transition3']. Evaluate it with the MODEL.LIP.DENSENET_PLACES it was trained with"
    )


# ---- tools/visualize_importance.py's output ------------------------------------------------------


@pytest.fixture(scope="module")
def visualizer():
    return _load_tool("visualize_importance")


def _image(path):
    Image.new("RGB", (40, 32), (120, 60, 200)).save(path)
    return path


def _visualize(visualizer, inputs, output, *flags):
    """The written paths, or the SetupError message of a failed run."""
    argv = ["--config-file", DEMO, "--input", *map(str, inputs), "--output", str(output), *flags,
            *TINY_OVERRIDES]  # fmt: skip
    try:
        return visualizer.main(argv)
    except SystemExit as e:
        assert str(e.code).startswith("error: ") and "\n" not in str(e.code)
        return str(e.code)[len("error: ") :]


def test_visualize_replaces_earlier_pngs_only_with_overwrite(visualizer, tmp_path):
    image, out = _image(tmp_path / "img.png"), tmp_path / "vis"
    written = _visualize(visualizer, [image], out)
    assert len(written) == len(ALL_PLACES) + 1
    first = out / "img" / "0_stem.png"
    first.write_bytes(b"kept")
    assert _visualize(visualizer, [image], out) == (
        f"--output {str(out)!r} already holds 8 of the PNGs this run would write (e.g. "
        f"{str(first)!r}); pass --overwrite to replace them, or choose another --output"
    )
    assert first.read_bytes() == b"kept"
    assert _visualize(visualizer, [image], out, "--overwrite") == written
    with Image.open(first) as png:
        assert png.size == (40, 32)
    # the library replaces them unless told not to: tools/demo.py rewrites its own folder
    from lip_det.visualize import visualize_images

    first.write_bytes(b"kept")
    assert visualize_images(DEMO, [str(image)], str(out), opts=TINY_OVERRIDES) == written
    assert first.read_bytes() != b"kept"


def test_visualize_never_writes_over_an_input(visualizer, tmp_path):
    # a second run over vis/*.png: img.png's figure is vis/img_layers.png, an input
    out = tmp_path / "vis"
    out.mkdir()
    image, figure = _image(out / "img.png"), _image(out / "img_layers.png")
    assert _visualize(visualizer, [image, figure], out, "--overwrite") == (
        f"--input {str(figure)!r} is also a file the maps of --input {str(image)!r} would be "
        "written to (not even --overwrite replaces an input); choose another --output"
    )
    with Image.open(figure) as png:
        assert png.size == (40, 32)
    assert sorted(p.name for p in out.iterdir()) == ["img.png", "img_layers.png"]


def test_visualize_output_of_the_wrong_kind(visualizer, tmp_path):
    image = _image(tmp_path / "img.png")
    afile = tmp_path / "vis.png"
    afile.write_bytes(b"a file")
    assert _visualize(visualizer, [image], afile) == (
        f"--output {str(afile)!r} is a file; expected a folder for the maps"
    )
    assert _visualize(visualizer, [image], afile / "sub") == (
        f"--output {str(afile / 'sub')!r} cannot be created: {str(afile)!r} is a file"
    )
    out = tmp_path / "vis"
    out.mkdir()
    (out / "img").write_bytes(b"a file where the maps' folder goes")
    assert _visualize(visualizer, [image], out) == (
        f"--output {str(out)!r}: {str(out / 'img')!r} is a file, where the maps of --input "
        f"{str(image)!r} go into a folder of that name; move it or choose another --output"
    )
    (out / "img").unlink()
    (out / "img_layers.png").mkdir()
    assert _visualize(visualizer, [image], out, "--overwrite") == (
        f"--output {str(out)!r}: {str(out / 'img_layers.png')!r} is a folder, expected a PNG"
    )
    assert sorted(p.name for p in out.iterdir()) == ["img_layers.png"]
    assert afile.read_bytes() == b"a file"


def test_visualize_images_checks_before_building_the_model(tmp_path):
    from lip_det.visualize import visualize_images

    afile = tmp_path / "out"
    afile.write_text("")
    with pytest.raises(SetupError, match="is a file; expected a folder"):
        visualize_images("configs/does-not-exist.yaml", ["x.png"], str(afile))
