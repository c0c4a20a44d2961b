"""tools/convert_lip_to_d2.py on files that are not what it expects: one clear line naming the
file and what was expected, exit status 1, no traceback; and the checkpoint wrappers it reads."""

import datetime
import importlib.util
import io
import pickle
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from lip_det.checkpoint.convert import read_checkpoint
from lip_det.checkpoint.files import read_checkpoint_file
from lip_det.checkpoint.weights import WeightsError, check_weights_file

TOOL = Path(__file__).resolve().parents[1] / "tools" / "convert_lip_to_d2.py"


@pytest.fixture(scope="module")
def tool():
    spec = importlib.util.spec_from_file_location("convert_lip_to_d2", TOOL)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def run_tool(tool, capsys, src, dst):
    """-> (exit status, the error message without "error: <src>: ") of an in-process run."""
    status = tool.main([str(src), str(dst)])
    captured = capsys.readouterr()
    assert captured.out == "" and captured.err.count("\n") == 1
    assert not Path(dst).exists()
    prefix = f"error: {src}: "
    assert captured.err.startswith(prefix)
    return status, captured.err[len(prefix) : -1]


def torch_bytes(obj, legacy=False):
    buffer = io.BytesIO()
    torch.save(obj, buffer, _use_new_zipfile_serialization=not legacy)
    return buffer.getvalue()


def zip_bytes(files):
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        for name, content in files.items():
            archive.writestr(name, content)
    return buffer.getvalue()


STATE = {"conv1.weight": torch.randn(8, 3, 7, 7), "bn1.running_var": torch.rand(8)}
CAFFE2_BLOBS = {"conv1_w": np.random.rand(8, 3, 7, 7).astype(np.float32)}


@pytest.mark.parametrize(
    "content, message",
    [
        (b"", "empty file, expected a checkpoint"),
        (
            b"<html>Google Drive - Virus scan warning</html>",
            "not a checkpoint (neither a torch.save file nor a pickle; it starts with b'<html>Go')",
        ),
        (
            pickle.dumps([1, 2, 3]),
            "not a model checkpoint: it holds list, expected a dict of tensors",
        ),
        (
            torch_bytes({"epoch": 3, "best_prec1": 78.2}),
            "not a model checkpoint: it holds a dict without tensors, expected a dict of tensors",
        ),
        (
            torch_bytes({"head.weight": torch.zeros(2)}),
            "not a ResNet checkpoint: expected torchvision-style names (conv1.weight, "
            "layer1.0.conv1.weight, ...) or caffe2 names (conv1_w, res2_0_branch2a_w, ...), found "
            "head.weight",
        ),
        (
            pickle.dumps({"model": {}, "__author__": "lip_det convert: ..."}),
            "already a detectron2 checkpoint (written by 'lip_det convert: ...'); give it to "
            "MODEL.WEIGHTS as it is",
        ),
        (
            zip_bytes({"LIP/lip_resnet-50.pth": b"..."}),
            "a zip archive, not a torch.save file; if it is a downloaded folder, unzip it and "
            "convert the .pth inside",
        ),
    ],
    ids=["empty", "html", "list", "no-tensors", "not-resnet", "already-d2", "folder-zip"],
)
def test_not_a_checkpoint(tool, capsys, tmp_path, content, message):
    src = tmp_path / "lip_resnet-50.pth"
    src.write_bytes(content)
    assert run_tool(tool, capsys, src, tmp_path / "out.pkl") == (1, message)


@pytest.mark.parametrize(
    "content",
    [torch_bytes(STATE), torch_bytes(STATE, legacy=True), pickle.dumps(CAFFE2_BLOBS, protocol=2)],
    ids=["zip", "legacy", "caffe2-pickle"],
)
def test_truncated_file(tool, capsys, tmp_path, content):
    src = tmp_path / "truncated.pth"
    src.write_bytes(content[: len(content) // 2])  # an interrupted download
    status, message = run_tool(tool, capsys, src, tmp_path / "out.pkl")
    assert status == 1
    assert message.startswith("cannot be read, the file is truncated or corrupt (")


def test_pickled_objects_are_refused_not_run(tool, capsys, tmp_path):
    src = tmp_path / "model.pth"
    src.write_bytes(torch_bytes(nn.Conv2d(3, 8, 1)))  # a whole module, not a state dict
    status, message = run_tool(tool, capsys, src, tmp_path / "out.pkl")
    assert (status, message) == (
        1,
        "holds Python objects besides tensors (e.g. a whole pickled model), which are not "
        "unpickled because that could run arbitrary code; save model.state_dict() instead",
    )
    # a .pkl whose unpickling would call os.system("touch <marker>")
    marker = tmp_path / "ran"
    command = f"touch {marker}".encode()
    src = tmp_path / "R-50.pkl"
    src.write_bytes(b"\x80\x02cposix\nsystem\nX" + len(command).to_bytes(4, "little") + command
                    + b"\x85R.")  # fmt: skip
    status, message = run_tool(tool, capsys, src, tmp_path / "out.pkl")
    assert (status, message) == (
        1,
        "holds Python objects besides arrays (posix.system), which are not unpickled because "
        "that could run arbitrary code",
    )
    assert not marker.exists()
    src.write_bytes(pickle.dumps({"conv1_w": np.zeros(1), "date": datetime.date(2019, 8, 12)}))
    assert "(datetime.date)" in run_tool(tool, capsys, src, tmp_path / "out.pkl")[1]


def test_missing_source_and_wrong_output_name(tool, capsys, tmp_path):
    src = tmp_path / "nowhere.pth"
    assert run_tool(tool, capsys, src, tmp_path / "out.pkl") == (
        1,
        "cannot open the file (No such file or directory)",
    )
    assert tool.main([str(src), str(tmp_path / "out.pth")]) == 1
    assert capsys.readouterr().err == (
        f"error: {tmp_path / 'out.pth'}: the output must be a .pkl file; detectron2 takes names "
        "as written only from .pkl checkpoints\n"
    )


def test_reads_training_wrappers_legacy_files_and_caffe2_pickles(tmp_path):
    path = tmp_path / "checkpoint.pth.tar"
    # what the authors' main.py (PyTorch's ImageNet example) saves, from a DataParallel model
    wrapped = {f"module.{k}": v for k, v in STATE.items()}
    path.write_bytes(torch_bytes({"epoch": 90, "arch": "resnet50", "state_dict": wrapped}))
    state = read_checkpoint(path)
    assert list(state) == list(STATE) and all(torch.equal(state[k], STATE[k]) for k in STATE)

    path.write_bytes(torch_bytes(STATE, legacy=True))  # PyTorch < 1.6 files
    assert all(torch.equal(read_checkpoint(path)[k], STATE[k]) for k in STATE)

    path = tmp_path / "R-50.pkl"
    for blobs in (CAFFE2_BLOBS, {"blobs": CAFFE2_BLOBS}):  # ImageNet and detection models
        path.write_bytes(pickle.dumps(blobs, protocol=2))
        state = read_checkpoint(path)
        assert list(state) == ["conv1_w"]
        assert torch.equal(state["conv1_w"], torch.from_numpy(CAFFE2_BLOBS["conv1_w"]))


def test_command_line_exit_status_and_stderr(tmp_path):
    src = tmp_path / "lip_resnet-50.pth"
    src.write_text("not a checkpoint\n")
    result = subprocess.run(
        [sys.executable, str(TOOL), str(src), str(tmp_path / "out.pkl")],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 1 and result.stdout == ""
    assert "Traceback" not in result.stderr
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert errors == [
        f"error: {src}: not a checkpoint (neither a torch.save file nor a pickle; it starts with "
        "b'not a ch')"
    ]


# ---- the one reader: what the MODEL.WEIGHTS check and the converters see -----------------------


def test_reader_finds_the_tensors_where_each_writer_puts_them(tmp_path):
    d2_state = {"backbone.res2.0.conv1.weight": torch.zeros(2, 3)}
    cases = [
        # (file, content, wrapper, author, matching heuristics, detectron2 loads it)
        ("d2.pkl", pickle.dumps({"model": {k: v.numpy() for k, v in d2_state.items()},
                                 "__author__": "lip_det", "matching_heuristics": False}),
         "model", "lip_det", False, True),
        ("R-50.pkl", pickle.dumps(CAFFE2_BLOBS), None, None, True, True),
        ("det.pkl", pickle.dumps({"blobs": CAFFE2_BLOBS}), "blobs", None, True, True),
        ("run.pth", torch_bytes({"model": d2_state, "iteration": 9}), "model", None, False, True),
        ("c2.pth", torch_bytes({"model": d2_state, "matching_heuristics": True}), "model", None,
         True, True),
        ("main.pth.tar", torch_bytes({"state_dict": d2_state, "epoch": 3}), "state_dict", None,
         False, False),
        ("bare.pth", torch_bytes(d2_state), None, None, False, True),
    ]  # fmt: skip
    for name, content, wrapper, author, heuristics, loads in cases:
        path = tmp_path / name
        path.write_bytes(content)
        checkpoint = read_checkpoint_file(path, by_extension=True)
        assert checkpoint.wrapper == wrapper and checkpoint.author == author, name
        assert checkpoint.matching_heuristics is heuristics, name
        assert checkpoint.detectron2_loads_it is loads, name
        assert all(isinstance(v, torch.Tensor) for v in checkpoint.state.values()), name


def test_converter_reads_a_model_entry_and_the_weights_check_refuses_a_state_dict_entry(tmp_path):
    path = tmp_path / "resnet.pth"
    path.write_bytes(torch_bytes({"model": STATE, "epoch": 90}))  # torchvision's references
    assert list(read_checkpoint(path)) == list(STATE)
    # a detectron2 model saved under "state_dict": detectron2 would load none of it
    path.write_bytes(torch_bytes({"state_dict": {"backbone.res2.0.conv1.weight": torch.zeros(2)}}))
    with pytest.raises(WeightsError) as e:
        check_weights_file(path, {"backbone.res2.0.conv1.weight": (2,)})
    assert str(e.value) == (
        f"MODEL.WEIGHTS: {path} holds its tensors under 'state_dict', where detectron2 does not "
        "look (it loads a file's 'model', or the whole file), so it would load none of them; save "
        "them as {'model': state_dict}"
    )


def torchvision_resnet18_names():
    """{name: shape} of torchvision's ResNet-18 (call on the meta device)."""
    import torchvision

    return {n: tuple(t.shape) for n, t in torchvision.models.resnet18().state_dict().items()}


def test_an_interrupted_write_leaves_the_previous_output(tool, capsys, tmp_path, monkeypatch):
    src, dst = tmp_path / "resnet18.pth", tmp_path / "out.pkl"
    with torch.device("meta"):
        names = torchvision_resnet18_names()
    src.write_bytes(torch_bytes({n: torch.zeros(s) for n, s in names.items()}))
    assert tool.main([str(src), str(dst)]) == 0
    capsys.readouterr()
    written = dst.read_bytes()

    def dump_half_then_fail(obj, f, protocol=None):
        f.write(pickle.dumps(obj, protocol=protocol)[:1000])  # what a kill mid-write leaves
        raise OSError("No space left on device")

    monkeypatch.setattr(pickle, "dump", dump_half_then_fail)
    assert tool.main([str(src), str(dst), "--overwrite"]) == 1  # one error line, no traceback
    assert capsys.readouterr().err == f"error: {dst}: cannot write it (No space left on device)\n"
    assert dst.read_bytes() == written  # the complete file of the first run
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.pkl", "resnet18.pth"]
