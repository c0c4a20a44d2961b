"""Crash-safe checkpoints (lip_det.checkpoint) and resuming a training killed with SIGKILL."""

import json
import os
import re
import shutil
import signal
import subprocess
import time

import pytest
import torch
from conftest import CONFIGS, PYTHON, REPO, SYNTHETIC_TRAIN, TINY_OVERRIDES, TRAIN_NET
from torch import nn

from lip_det.checkpoint import AtomicCheckpointer

DEMO = str(CONFIGS / "Demo/faster_rcnn_LIP_R_18_FPN_demo.yaml")


def _last_checkpoint(directory):
    with open(os.path.join(directory, "last_checkpoint")) as f:
        return f.read()


def test_a_failed_save_leaves_the_previous_checkpoint_last(tmp_path, monkeypatch):
    model = nn.Linear(3, 2)
    checkpointer = AtomicCheckpointer(model, str(tmp_path))
    checkpointer.save("model_0000001", iteration=1)
    assert _last_checkpoint(tmp_path) == "model_0000001.pth"

    real_save = torch.save

    def save_half_then_fail(obj, f):
        real_save(obj, f)
        f.truncate(f.tell() // 2)  # what a kill mid-write leaves
        raise OSError("No space left on device")

    monkeypatch.setattr(torch, "save", save_half_then_fail)
    with pytest.raises(OSError, match="No space left"):
        checkpointer.save("model_0000003", iteration=3)
    monkeypatch.undo()

    assert sorted(os.listdir(tmp_path)) == ["last_checkpoint", "model_0000001.pth"]
    assert checkpointer.get_checkpoint_file() == str(tmp_path / "model_0000001.pth")
    assert AtomicCheckpointer(nn.Linear(3, 2), str(tmp_path)).resume_or_load("")["iteration"] == 1


def test_save_writes_a_complete_file_and_then_tags_it(tmp_path):
    model = nn.Linear(3, 2)
    checkpointer = AtomicCheckpointer(model, str(tmp_path))
    checkpointer.save("model_final", iteration=7)
    assert sorted(os.listdir(tmp_path)) == ["last_checkpoint", "model_final.pth"]
    assert _last_checkpoint(tmp_path) == "model_final.pth"
    saved = torch.load(tmp_path / "model_final.pth", weights_only=False)
    assert saved["iteration"] == 7
    torch.testing.assert_close(saved["model"]["weight"], model.weight)


# ---- a real training, killed and resumed ----------------------------------------------------

MAX_ITER = 12


def _start(synthetic_coco, out, log_name, *flags):
    json_file, image_root, _ = synthetic_coco["train"]
    command = [
        PYTHON, str(TRAIN_NET), "--config-file", DEMO, *flags,
        "--dataset", SYNTHETIC_TRAIN, str(json_file), str(image_root),
        *TINY_OVERRIDES, "DATASETS.TRAIN", f"('{SYNTHETIC_TRAIN}',)", "DATASETS.TEST", "()",
        "SOLVER.MAX_ITER", str(MAX_ITER), "SOLVER.CHECKPOINT_PERIOD", "2", "OUTPUT_DIR", str(out),
    ]  # fmt: skip
    log = open(out.parent / log_name, "w")
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, cwd=REPO, env=env), log


def _kill_when(process, condition, timeout=180):
    """SIGKILL the process as soon as condition() holds (polled every few ms)."""
    deadline = time.monotonic() + timeout
    while not condition():
        assert process.poll() is None, "training ended before the moment to kill it"
        assert time.monotonic() < deadline, "timed out waiting for the moment to kill"
        time.sleep(0.002)
    process.send_signal(signal.SIGKILL)
    process.wait()


def _checkpoints(out):
    return sorted(f for f in os.listdir(out) if f.startswith("model_"))


def _last_complete_checkpoint(out):
    """(name, iteration) of the checkpoint last_checkpoint names, which must load completely."""
    name = _last_checkpoint(out)
    checkpoint = torch.load(out / name, map_location="cpu", weights_only=False)
    assert {"model", "trainer", "iteration"} <= set(checkpoint)
    return name, checkpoint["iteration"]


def test_training_killed_twice_resumes_and_finishes(synthetic_coco, tmp_path):
    """SIGKILL once just after a checkpoint is tagged, once while one is being written: each
    time --resume continues from the last complete checkpoint, and the last run finishes at
    MAX_ITER with everything in place."""
    out = tmp_path / "run"
    out.mkdir()

    def tagged(name):
        return os.path.isfile(out / "last_checkpoint") and _last_checkpoint(out) == name

    process, log = _start(synthetic_coco, out, "first.out")
    with log:
        _kill_when(process, lambda: tagged("model_0000003.pth"))
    name, first = _last_complete_checkpoint(out)
    assert first >= 3 and name == f"model_{first:07d}.pth"

    def writing_a_later_checkpoint():
        # the .tmp is there for the ~0.1 s of the write; should polling miss it, the .pth
        # (just after the rename) is the next best moment
        return any(
            (m := re.fullmatch(r"model_(\d{7})\.pth(\.tmp)?", f)) and int(m.group(1)) > first
            for f in _checkpoints(out)
        )

    process, log = _start(synthetic_coco, out, "second.out", "--resume")
    with log:
        _kill_when(process, writing_a_later_checkpoint)
    name, second = _last_complete_checkpoint(out)
    assert first <= second < MAX_ITER - 1 and name == f"model_{second:07d}.pth"

    process, log = _start(synthetic_coco, out, "third.out", "--resume")
    with log:
        assert process.wait(timeout=300) == 0
    with open(log.name) as f:
        assert f"Starting training from iteration {second + 1}\n" in f.read()
    assert _last_complete_checkpoint(out) == ("model_final.pth", MAX_ITER - 1)
    assert not [f for f in os.listdir(out) if f.endswith(".tmp")]  # rewritten, then renamed
    with open(out / "metrics.json") as f:
        iterations = [json.loads(line)["iteration"] for line in f]
    assert iterations[-1] == MAX_ITER - 1
    shutil.rmtree(out)  # 400 MB of checkpoints
