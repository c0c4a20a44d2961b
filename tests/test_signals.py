"""Signals (issue #15, point 2): a signal to the launcher of a 2-process CPU run reaches every
worker, they stop after the same iteration, rank 0 writes that checkpoint, the launcher exits
with status 75 and no process is left; a launcher killed outright takes its workers with it.
Bad --stop-signals fail in one line."""

import os
import signal
import subprocess
import sys
import time

import pytest
import torch
from conftest import CONFIGS, PYTHON, REPO, SYNTHETIC_TRAIN, TINY_OVERRIDES, TRAIN_NET

from lip_det.engine import SetupError, argument_parser, check_setup
from lip_det.engine.signals import EXIT_INTERRUPTED, parse_signals

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
DEMO = str(CONFIGS / "Demo/faster_rcnn_LIP_R_18_FPN_demo.yaml")


def _start_two_processes(synthetic_coco, out, log):
    json_file, image_root, _ = synthetic_coco["train"]
    command = [
        PYTHON, str(TRAIN_NET), "--config-file", DEMO, "--num-gpus", "2", "--dist-url", "auto",
        "--dataset", SYNTHETIC_TRAIN, str(json_file), str(image_root),
        *TINY_OVERRIDES, "DATASETS.TRAIN", f"('{SYNTHETIC_TRAIN}',)", "DATASETS.TEST", "()",
        "SOLVER.MAX_ITER", "200", "SOLVER.CHECKPOINT_PERIOD", "3", "OUTPUT_DIR", str(out),
    ]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    # its own session, as a job started in the background from a shell would be
    return subprocess.Popen(
        command, stdout=log, stderr=subprocess.STDOUT, cwd=REPO, env=env, start_new_session=True
    )


def _children(pid):
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid:  # fields: state, ppid, ...
            found.append(int(entry))
    return found


def _descendants(pid):
    found, todo = [], [pid]
    while todo:
        children = _children(todo.pop())
        found += children
        todo += children
    return found


def _alive(pid):
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def _training(out, process, timeout=300):
    """Wait until both workers train (rank 0 wrote the checkpoint of iteration 2); returns the
    launcher's descendants (the two workers, and multiprocessing's resource tracker)."""
    deadline = time.monotonic() + timeout
    while not (out / "model_0000002.pth").exists():
        assert process.poll() is None, "training ended before it was signalled"
        assert time.monotonic() < deadline, "timed out waiting for the training to start"
        time.sleep(0.05)
    workers = _descendants(process.pid)
    assert len(workers) >= 2, workers
    return workers


def _wait_gone(pids, timeout=30):
    deadline = time.monotonic() + timeout
    while any(_alive(p) for p in pids) and time.monotonic() < deadline:
        time.sleep(0.1)
    return [p for p in pids if _alive(p)]


def test_sigterm_to_the_launcher_stops_both_workers_with_a_checkpoint(synthetic_coco, tmp_path):
    out = tmp_path / "run"
    with open(tmp_path / "run.out", "w") as log:
        launcher = _start_two_processes(synthetic_coco, out, log)
        try:
            workers = _training(out, launcher)
            launcher.send_signal(signal.SIGTERM)
            assert launcher.wait(timeout=300) == EXIT_INTERRUPTED
        finally:
            if launcher.poll() is None:
                os.killpg(launcher.pid, signal.SIGKILL)
    text = (tmp_path / "run.out").read_text()
    assert not _wait_gone(workers), "processes outlived the launcher"
    name = (out / "last_checkpoint").read_text().strip()
    saved = torch.load(out / name, map_location="cpu", weights_only=False)
    assert name == f"model_{saved['iteration']:07d}.pth" and saved["iteration"] >= 2
    assert saved["trainer"]["hooks"]["ExactResume"]["data"]["position"] == saved["iteration"] + 1
    assert not (out / "model_final.pth").exists()
    assert "SIGTERM received: passing it on to the workers" in text
    # both workers stopped after the same iteration, the one checkpointed
    for log_name in ("log.txt", "log.txt.rank1"):
        assert (
            f"Training stopped after iteration {saved['iteration']} "
            in (out / log_name).read_text()
        )
    assert not [f for f in os.listdir(out) if f.endswith(".tmp")]


def test_a_launcher_killed_outright_takes_its_workers_with_it(synthetic_coco, tmp_path):
    out = tmp_path / "run"
    with open(tmp_path / "run.out", "w") as log:
        launcher = _start_two_processes(synthetic_coco, out, log)
        try:
            workers = _training(out, launcher)
            launcher.send_signal(signal.SIGKILL)
            launcher.wait(timeout=60)
            left = _wait_gone(workers, timeout=20)
        finally:
            os.killpg(launcher.pid, signal.SIGKILL)  # (clean up should the test fail)
    assert not left, f"workers {left} outlived their launcher"
    time.sleep(1)
    assert not (out / "model_final.pth").exists()


def test_stop_signal_names():
    assert parse_signals(["TERM", "SIGINT", "usr1", "10"]) == (
        signal.SIGTERM,
        signal.SIGINT,
        signal.SIGUSR1,
    )
    for bad in ("KILL", "SIGFOO"):
        with pytest.raises(ValueError, match="--stop-signals"):
            parse_signals([bad])
    args = argument_parser().parse_args(["--config-file", DEMO, "--stop-signals", "TERM", "BOGUS"])
    with pytest.raises(SetupError, match=r"--stop-signals: 'BOGUS' is not a signal"):
        check_setup(args)
