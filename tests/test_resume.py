"""Exact resume (issue #15, point 1): the resumable data stream is a pure function of (seed,
batch) and skips what was consumed; a training run stopped by a signal near iteration 10 and
resumed with --resume ends with the uninterrupted 30-iteration run's weights (yacs and
LazyConfig), max abs difference <= 1e-6 on the CPU with one thread."""

import os
import random
import signal
import subprocess
import time

import numpy as np
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

from lip_det.data.resumable_loader import build_resumable_train_loader
from lip_det.data.samplers import BatchSchedule, epoch_orders
from lip_det.engine.signals import EXIT_INTERRUPTED

# ---- the stream ---------------------------------------------------------------------------------


def _dicts(sizes):
    return [{"id": i, "width": w, "height": h} for i, (w, h) in enumerate(sizes)]


# 7 wide and 4 tall images: groups of unequal size, neither a multiple of the batch size
SIZES = [(120, 80)] * 7 + [(80, 120)] * 4


def _augmented(d):
    """A stand-in mapper whose output is its input plus draws from the global RNGs (as
    detectron2's augmentations draw from NumPy's)."""
    return {"id": d["id"], "np": np.random.rand(), "py": random.random(), "torch": torch.rand(1)}


def _schedule(seed=3, batch=4, sizes=SIZES):
    return BatchSchedule(
        epoch_orders(None, len(sizes)), [int(w <= h) for w, h in sizes], batch, seed
    )


def test_global_batches_are_a_pure_function_of_seed_and_index():
    schedule = _schedule()
    batches = [schedule.batch(k).tolist() for k in range(12)]
    # any order of access, any fresh schedule: the same batch k
    fresh = _schedule()
    assert [fresh.batch(k).tolist() for k in reversed(range(12))] == batches[::-1]
    assert (
        _schedule(seed=4).batch(0).tolist() != batches[0]
        or _schedule(seed=4).batch(1).tolist() != batches[1]
    )
    groups = {i: int(w <= h) for i, (w, h) in enumerate(SIZES)}
    per_epoch = 2 + 1  # ceil(7 / 4) wide, ceil(4 / 4) tall
    for epoch in range(4):
        epoch_batches = batches[epoch * per_epoch : (epoch + 1) * per_epoch]
        assert all(len({groups[i] for i in b}) == 1 for b in epoch_batches)  # one aspect group
        assert set().union(*map(set, epoch_batches)) == set(range(len(SIZES)))  # every image


def test_loader_resumed_at_a_position_gives_the_remaining_batches(tmp_path):
    def loader(**kwargs):
        return build_resumable_train_loader(
            _dicts(SIZES), mapper=_augmented, total_batch_size=4, seed=5, **kwargs
        )

    full = loader()
    stream = iter(full)  # (detectron2 v0.6 calls iter() before the checkpoint is loaded)
    first = [next(stream) for _ in range(9)]
    assert full.state_dict()["position"] == 9

    resumed = loader()
    early = iter(resumed)
    resumed.load_state_dict({**full.state_dict(), "position": 4})
    rest = [next(early) for _ in range(5)]
    for expected, batch in zip(first[4:], rest):
        assert [d["id"] for d in batch] == [d["id"] for d in expected]
        for key in ("np", "py", "torch"):  # the same augmentation draws
            assert [d[key] for d in batch] == [d[key] for d in expected]
    # two data-loader workers give the same stream
    workers = loader(num_workers=2)
    workers.seek(4)
    with_workers = iter(workers)
    for expected in first[4:]:
        assert [d["np"] for d in next(with_workers)] == [d["np"] for d in expected]


def test_each_process_takes_its_slice_of_the_global_batch(monkeypatch):
    import detectron2.utils.comm as comm

    single = build_resumable_train_loader(
        _dicts(SIZES), mapper=_augmented, total_batch_size=4, seed=5
    )
    whole = [next(iter(single)) for _ in range(1)][0]
    halves = []
    for rank in (0, 1):
        monkeypatch.setattr(comm, "get_world_size", lambda: 2)
        monkeypatch.setattr(comm, "get_rank", lambda r=rank: r)
        halves += next(iter(build_resumable_train_loader(
            _dicts(SIZES), mapper=_augmented, total_batch_size=4, seed=5
        )))  # fmt: skip
    assert [d["id"] for d in halves] == [d["id"] for d in whole]
    assert [d["np"] for d in halves] == [d["np"] for d in whole]


def test_a_skipped_image_is_replaced_from_its_group_the_same_way_each_time():
    def skipping(d):
        return None if d["id"] in (0, 1) else _augmented(d)

    def batches():
        loader = build_resumable_train_loader(
            _dicts(SIZES), mapper=skipping, total_batch_size=4, seed=5
        )
        stream = iter(loader)
        return [[d["id"] for d in next(stream)] for _ in range(6)]

    first = batches()
    assert first == batches()
    wide = set(range(7))
    for batch in first:
        assert not {0, 1} & set(batch)
        assert set(batch) <= wide or not set(batch) & wide  # replacements from the same group


# ---- stopped by a signal near iteration 10, resumed, compared with the uninterrupted run -------

DEMO = str(CONFIGS / "Demo/faster_rcnn_LIP_R_18_FPN_demo.yaml")
LAZY = str(CONFIGS / "COCO-Detection/faster_rcnn_LIP_R_50_FPN_1x.py")
MAX_ITER = 30
STOP_AFTER = 9  # send the signal once model_0000009.pth (CHECKPOINT_PERIOD 10) is written


def _yacs_command(synthetic_coco, out, *flags):
    json_file, image_root, _ = synthetic_coco["train"]
    return [
        PYTHON, str(TRAIN_NET), "--config-file", DEMO, *flags,
        "--dataset", SYNTHETIC_TRAIN, str(json_file), str(image_root),
        *TINY_OVERRIDES, "DATASETS.TRAIN", f"('{SYNTHETIC_TRAIN}',)", "DATASETS.TEST", "()",
        "SOLVER.MAX_ITER", str(MAX_ITER), "SOLVER.CHECKPOINT_PERIOD", "10", "SEED", "7",
        "OUTPUT_DIR", str(out),
    ]  # fmt: skip


def _lazy_command(synthetic_coco, out, *flags):
    (train_json, train_images, _), (val_json, val_images, _) = synthetic_coco.values()
    return [
        PYTHON, str(TRAIN_NET), "--config-file", LAZY, *flags,
        "--dataset", SYNTHETIC_TRAIN, str(train_json), str(train_images),
        "--dataset", SYNTHETIC_VAL, str(val_json), str(val_images),
        "train.device=cpu", "train.init_checkpoint=", f"train.output_dir={out}",
        f"train.max_iter={MAX_ITER}", "train.eval_period=0", "train.checkpointer.period=10",
        "train.seed=7", "model.backbone.bottom_up.stages.depth=18",
        "model.backbone.bottom_up.stages.out_channels=64",
        f"dataloader.train.dataset.names={SYNTHETIC_TRAIN}",
        f"dataloader.test.dataset.names={SYNTHETIC_VAL}", "dataloader.test.num_workers=0",
        "dataloader.train.total_batch_size=2", "dataloader.train.num_workers=0",
        "dataloader.train.mapper.augmentations.0.short_edge_length=[64]",
        "dataloader.train.mapper.augmentations.0.max_size=96",
        "dataloader.test.mapper.augmentations.0.short_edge_length=64",
        "dataloader.test.mapper.augmentations.0.max_size=96",
        "model.roi_heads.num_classes=3", "model.proposal_generator.batch_size_per_image=32",
        "model.proposal_generator.pre_nms_topk=[200,100]",
        "model.proposal_generator.post_nms_topk=[50,50]", "model.roi_heads.batch_size_per_image=16",
    ]  # fmt: skip


def _popen(command, log):
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, cwd=REPO, env=env)


def _wait_for(path, process, timeout=600):
    deadline = time.monotonic() + timeout
    while not os.path.exists(path):
        assert process.poll() is None, "training ended before the moment to signal it"
        assert time.monotonic() < deadline, f"timed out waiting for {path}"
        time.sleep(0.05)


def _weights(path):
    return torch.load(path, map_location="cpu", weights_only=False)["model"]


def max_abs_difference(a, b):
    assert a.keys() == b.keys()
    return max((a[k].double() - b[k].double()).abs().max().item() for k in a if a[k].numel())


def _stop_resume_and_compare(tmp_path, command):
    """Uninterrupted run and interrupted run side by side, then the resume; returns the max
    abs weight difference and the iteration the signal stopped at."""
    full, cut = tmp_path / "full", tmp_path / "cut"
    with open(tmp_path / "full.out", "w") as full_log, open(tmp_path / "cut.out", "w") as cut_log:
        uninterrupted = _popen(command(full), full_log)
        interrupted = _popen(command(cut), cut_log)
        _wait_for(cut / f"model_{STOP_AFTER:07d}.pth", interrupted)
        interrupted.send_signal(signal.SIGTERM)
        assert interrupted.wait(timeout=300) == EXIT_INTERRUPTED, (tmp_path / "cut.out").read_text()
        assert uninterrupted.wait(timeout=600) == 0, (tmp_path / "full.out").read_text()[-3000:]
    stopped = torch.load(cut / (cut / "last_checkpoint").read_text().strip(), weights_only=False)
    assert not (cut / "model_final.pth").exists()
    with open(tmp_path / "resumed.out", "w") as log:
        assert _popen(command(cut, "--resume"), log).wait(timeout=600) == 0
    resumed_log = (tmp_path / "resumed.out").read_text()
    assert f"Starting training from iteration {stopped['iteration'] + 1}" in resumed_log
    assert f"Data stream resumed at batch {stopped['iteration'] + 1}" in resumed_log
    difference = max_abs_difference(
        _weights(full / "model_final.pth"), _weights(cut / "model_final.pth")
    )
    return difference, stopped["iteration"]


def test_yacs_run_stopped_by_sigterm_and_resumed_ends_with_the_uninterrupted_weights(
    synthetic_coco, tmp_path
):
    difference, stopped_at = _stop_resume_and_compare(
        tmp_path, lambda out, *flags: _yacs_command(synthetic_coco, out, *flags)
    )
    print(f"yacs: stopped after iteration {stopped_at}, max abs weight difference {difference:.3g}")
    assert STOP_AFTER <= stopped_at < MAX_ITER - 1
    assert difference <= 1e-6


def test_lazy_run_stopped_by_sigterm_and_resumed_ends_with_the_uninterrupted_weights(
    synthetic_coco, tmp_path
):
    difference, stopped_at = _stop_resume_and_compare(
        tmp_path, lambda out, *flags: _lazy_command(synthetic_coco, out, *flags)
    )
    print(f"lazy: stopped after iteration {stopped_at}, max abs weight difference {difference:.3g}")
    assert STOP_AFTER <= stopped_at < MAX_ITER - 1
    assert difference <= 1e-6
