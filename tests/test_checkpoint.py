"""Crash-safe checkpoints (lip_det.checkpoint), resuming a training killed with SIGKILL, and what
a checkpoint holds: the optimizer and LR scheduler state, restored on resume (yacs and
LazyConfig), and checkpoints written before they held the optimizer still resume."""

import json
import os
import re
import shutil
import signal
import subprocess
import time

import pytest
import torch
from conftest import (
    CONFIGS,
    PYTHON,
    REPO,
    SYNTHETIC_TRAIN,
    SYNTHETIC_VAL,
    TINY_OVERRIDES,
    TRAIN_NET,
)
from torch import nn

import lip_det.compat
from lip_det.checkpoint import AtomicCheckpointer
from lip_det.engine import Trainer, argument_parser, load_config, run

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


# ---- what a checkpoint holds: optimizer and scheduler, restored on resume -----------------------

LIP_R50_LAZY = str(CONFIGS / "COCO-Detection/faster_rcnn_LIP_R_50_FPN_1x.py")


def _assert_same(saved, restored, where="state"):
    """Nested dicts/lists of tensors and plain values, equal element by element."""
    if isinstance(saved, torch.Tensor):
        assert isinstance(restored, torch.Tensor) and torch.equal(saved, restored), where
    elif isinstance(saved, dict):
        assert isinstance(restored, dict) and saved.keys() == restored.keys(), where
        for key in saved:
            _assert_same(saved[key], restored[key], f"{where}[{key!r}]")
    elif isinstance(saved, (list, tuple)):
        assert isinstance(restored, (list, tuple)) and len(saved) == len(restored), where
        for i, (a, b) in enumerate(zip(saved, restored)):
            _assert_same(a, b, f"{where}[{i}]")
    else:
        assert saved == restored, where


def _assert_momentum_of_trained_params(optimizer_state, optimizer):
    """``optimizer_state`` (a saved state_dict) holds an SGD momentum buffer of the right shape
    for every parameter of ``optimizer`` that the last step trained (has a gradient)."""
    params = [p for group in optimizer.param_groups for p in group["params"]]
    trained = [i for i, p in enumerate(params) if p.grad is not None]
    assert len(trained) > 100  # the whole detector, not a few parameters
    buffers = [optimizer_state["state"][i]["momentum_buffer"] for i in trained]
    assert [b.shape for b in buffers] == [params[i].shape for i in trained]
    # (some runs give a parameter exact-0 gradients in both steps, e.g. the norm of the FPN's
    # coarsest output on 64-96 px images: its buffer is then 0)
    assert sum(bool(b.any()) for b in buffers) > len(trained) / 2


def _yacs_overrides(out, max_iter=2):
    return [
        *TINY_OVERRIDES, "DATASETS.TRAIN", f"('{SYNTHETIC_TRAIN}',)", "DATASETS.TEST", "()",
        "SOLVER.MAX_ITER", str(max_iter), "OUTPUT_DIR", str(out),
    ]  # fmt: skip


def _yacs_cfg(out, max_iter=2):
    return load_config(DEMO, _yacs_overrides(out, max_iter))


def _load(path):
    return torch.load(path, map_location="cpu", weights_only=False)


@pytest.fixture(scope="module")
def yacs_run(synthetic_coco, tmp_path_factory):
    """A 2-iteration yacs training: (output dir, its model_final.pth as saved, the trainer)."""
    out = tmp_path_factory.mktemp("yacs_run")
    trainer = Trainer(_yacs_cfg(out))
    trainer.resume_or_load(resume=False)
    trainer.train()
    return out, _load(out / "model_final.pth"), trainer


def test_yacs_checkpoint_holds_the_optimizer_and_scheduler_and_resume_restores_them(yacs_run):
    out, saved, trained = yacs_run
    assert saved["iteration"] == 1
    # DefaultTrainer's own state: iteration and hooks; its SimpleTrainer's: the optimizer
    optimizer_state = saved["trainer"]["_trainer"]["optimizer"]
    _assert_momentum_of_trained_params(optimizer_state, trained.optimizer)
    _assert_same(optimizer_state, trained.optimizer.state_dict())  # saved after the last step
    scheduler_state = saved["trainer"]["hooks"]["LRScheduler"]
    assert scheduler_state["last_epoch"] == 2  # stepped after each of the 2 iterations
    assert scheduler_state == trained.scheduler.state_dict()

    resumed = Trainer(_yacs_cfg(out))
    resumed.resume_or_load(resume=True)
    assert resumed.start_iter == 2
    _assert_same(optimizer_state, resumed.optimizer.state_dict(), "optimizer")
    assert resumed.scheduler.state_dict() == scheduler_state
    _assert_same(saved["model"], resumed.model.state_dict(), "model")


# Only detectron2 v0.6 (whose DefaultTrainer lip_det.compat gives a state_dict) ever wrote
# checkpoints without "_trainer"; HEAD has always written it, and its DefaultTrainer refuses
# checkpoints without it.
V06_TRAINER = "trainer_state" in {fix.name for fix in lip_det.compat.active_fixes()}


@pytest.mark.skipif(not V06_TRAINER, reason='no checkpoint without "_trainer" on this detectron2')
def test_checkpoint_written_before_the_optimizer_was_saved_still_resumes(yacs_run, tmp_path):
    """The layout of checkpoints of detectron2 v0.6 without lip_det's trainer-state fix: model,
    trainer {iteration, hooks}, no "_trainer". They resume (model, iteration, scheduler), the
    optimizer starting afresh, with Trainer.resume_or_load and with --resume."""
    _, saved, _ = yacs_run
    old = {
        "model": saved["model"],
        "trainer": {"iteration": 1, "hooks": saved["trainer"]["hooks"]},
        "iteration": 1,
    }
    torch.save(old, tmp_path / "model_0000001.pth")
    (tmp_path / "last_checkpoint").write_text("model_0000001.pth")

    resumed = Trainer(_yacs_cfg(tmp_path, max_iter=3))
    resumed.resume_or_load(resume=True)
    assert resumed.start_iter == 2
    _assert_same(saved["model"], resumed.model.state_dict(), "model")
    assert resumed.scheduler.state_dict()["last_epoch"] == 2
    assert resumed.optimizer.state_dict()["state"] == {}  # nothing saved, nothing restored

    # the same through tools/train_net.py's code path: one more iteration, then model_final
    argv = ["--config-file", DEMO, "--resume", *_yacs_overrides(tmp_path, max_iter=3)]
    run(argument_parser().parse_args(argv))
    final = _load(tmp_path / "model_final.pth")
    assert final["iteration"] == 2
    assert final["trainer"]["_trainer"]["optimizer"]["state"]  # saved from now on


def _lazy_args(out, *flags):
    return argument_parser().parse_args([
        "--config-file", LIP_R50_LAZY, *flags,
        "train.device=cpu", "train.init_checkpoint=", f"train.output_dir={out}",
        "train.max_iter=2", "train.eval_period=0",
        f"dataloader.train.dataset.names={SYNTHETIC_TRAIN}",
        f"dataloader.test.dataset.names={SYNTHETIC_VAL}",
        "dataloader.train.total_batch_size=2", "dataloader.train.num_workers=0",
        "dataloader.test.num_workers=0",
        "dataloader.train.mapper.augmentations.0.short_edge_length=[64]",
        "dataloader.train.mapper.augmentations.0.max_size=96",
        "dataloader.test.mapper.augmentations.0.short_edge_length=64",
        "dataloader.test.mapper.augmentations.0.max_size=96",
        "model.roi_heads.num_classes=3",
        "model.proposal_generator.batch_size_per_image=32",
        "model.roi_heads.batch_size_per_image=16",
    ])  # fmt: skip


def test_lazy_checkpoint_holds_the_optimizer_and_scheduler_and_resume_restores_them(
    synthetic_coco, tmp_path, monkeypatch
):
    """tools/train_net.py with the LazyConfig, 2 iterations, then --resume (no iteration left:
    the state as loaded is the state at the end)."""
    import lip_det.engine.train_net as train_net

    trainers = []

    def build_and_keep(*args, **kwargs):
        trainers.append(real_build(*args, **kwargs))
        return trainers[-1]

    real_build = train_net.build_train_step
    monkeypatch.setattr(train_net, "build_train_step", build_and_keep)

    run(_lazy_args(tmp_path))
    saved = _load(tmp_path / "model_final.pth")
    assert saved["iteration"] == 1
    optimizer_state = saved["trainer"]["optimizer"]  # the step trainer is the checkpointable
    _assert_momentum_of_trained_params(optimizer_state, trainers[0].optimizer)
    _assert_same(optimizer_state, trainers[0].optimizer.state_dict())
    scheduler_state = saved["trainer"]["hooks"]["LRScheduler"]
    assert scheduler_state["last_epoch"] == 2

    run(_lazy_args(tmp_path, "--resume"))
    resumed = trainers[1]
    assert resumed.start_iter == 2  # = max_iter: nothing trained after loading
    _assert_same(optimizer_state, resumed.optimizer.state_dict(), "optimizer")
    (hook,) = [h for h in resumed._hooks if type(h).__name__ == "LRScheduler"]
    assert hook.scheduler.state_dict() == scheduler_state
