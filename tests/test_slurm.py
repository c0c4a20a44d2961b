"""--slurm (issue #15, points 3-5): what --dry-run prints, one-line errors before anything is
submitted, and, with submitit's LocalExecutor (real subprocesses, no SLURM), a 2-process gloo
training (2 "nodes" x 1 process) interrupted mid-run by submitit's signal, requeued through
submitit's checkpoint(), resumed and completed with both ranks holding the uninterrupted run's
weights."""

import os
import signal
import subprocess
import sys
import time

import pytest
import torch
from conftest import (
    CONFIGS,
    PYTHON,
    REPO,
    SYNTHETIC_TRAIN,
    TINY_OVERRIDES,
    TRAIN_NET,
)
from test_resume import DEMO, max_abs_difference

from lip_det.engine import SetupError, argument_parser
from lip_det.engine.slurm import JOB_MARKER, job_arguments, submit

LIP_R50 = str(CONFIGS / "COCO-Detection/faster_rcnn_LIP_R_50_FPN_1x.yaml")
LIP_R50_LAZY = str(CONFIGS / "COCO-Detection/faster_rcnn_LIP_R_50_FPN_1x.py")


def _args(*argv):
    return argument_parser().parse_args([str(a) for a in argv])


def _on_synthetic(synthetic_coco):
    json_file, image_root, _ = synthetic_coco["train"]
    return ["--dataset", SYNTHETIC_TRAIN, json_file, image_root]


YACS_DATA = ["DATASETS.TRAIN", f"('{SYNTHETIC_TRAIN}',)", "DATASETS.TEST", "()"]


def _setup_error(*argv):
    with pytest.raises(SetupError) as info:
        submit(_args(*argv))
    message = str(info.value)
    assert "\n" not in message
    return message


# ---- --dry-run --------------------------------------------------------------------------------


def test_dry_run_prints_the_sbatch_script_of_4_nodes_x_8_gpus_and_submits_nothing(
    synthetic_coco, tmp_path, capsys
):
    pytest.importorskip("submitit")
    out = tmp_path / "run"
    submit(_args(
        "--config-file", LIP_R50, "--slurm", "--dry-run", *_on_synthetic(synthetic_coco),
        "--nodes", 4, "--gpus-per-node", 8, "--partition", "learn", "--time", "3-00:00:00",
        "--mem", "400G", "--constraint", "volta32gb", "--account", "vision", "--qos", "high",
        "MODEL.WEIGHTS", "", *YACS_DATA, "SOLVER.REFERENCE_WORLD_SIZE", 8, "OUTPUT_DIR", out,
    ))  # fmt: skip
    printed = capsys.readouterr().out
    for line in (
        "#SBATCH --nodes=4", "#SBATCH --ntasks-per-node=1", "#SBATCH --gpus-per-node=8",
        "#SBATCH --partition=learn", "#SBATCH --time=4320", "#SBATCH --mem=400G",
        "#SBATCH --constraint=volta32gb", "#SBATCH --account=vision", "#SBATCH --qos=high",
        "#SBATCH --signal=USR2@120", "#SBATCH --requeue", "#SBATCH --cpus-per-task=40",
        f"#SBATCH --output={out}/slurm/%j_0_log.out", "-m submitit.core._submit",
        "--num-gpus 8 --num-machines 4 --machine-rank <task rank> --dist-url tcp://<first node>",
    ):  # fmt: skip
        assert line in printed, line
    assert not out.exists()  # nothing submitted, nothing written


def test_dry_run_of_a_lazy_config(synthetic_coco, tmp_path, capsys):
    pytest.importorskip("submitit")
    submit(_args(
        "--config-file", LIP_R50_LAZY, "--slurm", "--dry-run", "--gpus-per-node", 8,
        *_on_synthetic(synthetic_coco), "train.init_checkpoint=", f"train.output_dir={tmp_path}",
        f"dataloader.train.dataset.names={SYNTHETIC_TRAIN}", "dataloader.test.dataset.names=[]",
    ))  # fmt: skip
    printed = capsys.readouterr().out
    assert "#SBATCH --nodes=1" in printed and "#SBATCH --gpus-per-node=8" in printed
    assert "--dist-url auto" not in printed  # (one node: a free port there, "auto")


def test_job_arguments_come_from_the_job_environment():
    class Env:  # what submitit's JobEnvironment gives on the third of 4 nodes
        cluster, num_tasks, global_rank, job_id, USR_SIG = "slurm", 4, 2, "4242", "USR2"
        hostnames = ["node17", "node18", "node19", "node20"]

    args = _args("--config-file", LIP_R50, "--num-gpus", 8)
    plan = {"processes_per_node": 8, "dist_url": None}
    node = job_arguments(args, plan, Env())
    assert (node.num_gpus, node.num_machines, node.machine_rank) == (8, 4, 2)
    assert node.dist_url.startswith("tcp://node17:") and not node.resume
    assert "SIGUSR2" in node.stop_signals
    assert job_arguments(args, plan, Env(), requeued=True).resume


# ---- one line, before anything is submitted ------------------------------------------------------


def test_without_submitit_slurm_says_how_to_install_it(monkeypatch):
    monkeypatch.setitem(sys.modules, "submitit", None)  # import submitit -> ImportError
    message = _setup_error("--config-file", LIP_R50, "--slurm")
    assert message.startswith("--slurm needs submitit") and "pip install" in message


def test_conflicting_options_fail_before_submitting(synthetic_coco, tmp_path):
    pytest.importorskip("submitit")
    base = ["--config-file", DEMO, "--slurm", *_on_synthetic(synthetic_coco)]
    cpu = [*TINY_OVERRIDES, *YACS_DATA, "OUTPUT_DIR", tmp_path / "run"]
    message = _setup_error(*base, "--gpus-per-node", 8, *cpu)
    assert message.startswith("--gpus-per-node 8 asks for GPUs, but the model runs on the CPU")
    message = _setup_error(*base, "--nodes", 2, "--dist-url", "auto", *cpu)
    assert message.startswith("--dist-url auto finds a free port on one machine, but --nodes 2")
    other = tmp_path / "jobs"
    other.mkdir()
    (other / JOB_MARKER).write_text('{"output_dir": "/elsewhere/run"}')
    message = _setup_error(*base, "--job-dir", other, *cpu)
    assert "holds the job of another run (OUTPUT_DIR /elsewhere/run)" in message
    stray = tmp_path / "stray"
    stray.mkdir()
    (stray / "1234_submitted.pkl").write_bytes(b"")
    assert "holds another submitit job" in _setup_error(*base, "--job-dir", stray, *cpu)
    assert "--time 'soon'" in _setup_error(*base, "--time", "soon", *cpu)
    assert not (tmp_path / "run").exists()
    assert sorted(os.listdir(other)) == [JOB_MARKER]


def test_train_net_prints_the_error_in_one_line(tmp_path):
    result = subprocess.run(
        [PYTHON, str(TRAIN_NET), "--config-file", DEMO, "--dry-run"],
        capture_output=True, text=True, cwd=REPO, timeout=300,
    )  # fmt: skip
    assert result.returncode == 1
    assert result.stderr.strip().splitlines()[-1] == (
        "error: --dry-run shows what --slurm would submit: add --slurm"
    )


# ---- LocalExecutor: a 2-process job, interrupted, requeued, completed -------------------------

MAX_ITER = 20


def _tiny(synthetic_coco, out):
    return [
        *_on_synthetic(synthetic_coco), *TINY_OVERRIDES, *YACS_DATA, "SOLVER.MAX_ITER", MAX_ITER,
        "SOLVER.CHECKPOINT_PERIOD", 10, "SEED", 7, "OUTPUT_DIR", out,
    ]  # fmt: skip


def _task_processes(controller_pid):
    """The submitit task processes the LocalExecutor's controller started."""
    tasks = []
    for entry in filter(str.isdigit, os.listdir("/proc")):
        try:
            with open(f"/proc/{entry}/stat") as f:
                ppid = int(f.read().rsplit(")", 1)[1].split()[1])
            with open(f"/proc/{entry}/cmdline", "rb") as f:
                command = f.read()
        except OSError:
            continue
        if ppid == controller_pid and b"submitit.core._submit" in command:
            tasks.append(int(entry))
    return tasks


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
def test_local_job_interrupted_by_submitit_requeues_and_ends_with_the_uninterrupted_weights(
    synthetic_coco, tmp_path, monkeypatch
):
    pytest.importorskip("submitit")
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    reference, out = tmp_path / "reference", tmp_path / "job"
    with open(tmp_path / "reference.out", "w") as log:
        uninterrupted = subprocess.Popen(
            [PYTHON, str(TRAIN_NET), "--config-file", DEMO, "--num-gpus", "2", "--dist-url", "auto",
             *map(str, _tiny(synthetic_coco, reference))],
            stdout=log, stderr=subprocess.STDOUT, cwd=REPO,
        )  # fmt: skip
    job = submit(_args(
        "--config-file", DEMO, "--slurm", "--slurm-executor", "local", "--nodes", 2,
        "--num-gpus", 1, "--time", 30, *_tiny(synthetic_coco, out),
    ))  # fmt: skip
    try:
        deadline = time.monotonic() + 600
        while not (out / "model_0000009.pth").exists():
            assert job.state == "RUNNING", job.stderr()
            assert time.monotonic() < deadline, "timed out waiting for iteration 9"
            time.sleep(0.05)
        tasks = _task_processes(job._process.pid)
        assert len(tasks) == 2
        for task in tasks:  # what SLURM does --signal-delay seconds before the time limit
            os.kill(task, signal.SIGUSR2)
        job.wait()
    finally:
        if job._process.poll() is None:
            job._process.kill()
    stdout = (job.stdout() or "") + (job.stderr() or "")
    assert "Requeued job" in stdout, stdout[-3000:]
    assert (
        "lip_det: task 0 of 2: --num-gpus 1 --machine-rank 0 --dist-url tcp://127.0.0.1:" in stdout
    )
    assert " --resume" in stdout  # the requeued run
    assert uninterrupted.wait(timeout=600) == 0, (tmp_path / "reference.out").read_text()[-3000:]
    log = (out / "log.txt").read_text()
    stopped = int(log.split("Training stopped after iteration ", 1)[1].split()[0])
    assert 9 <= stopped < MAX_ITER - 1
    assert f"Starting training from iteration {stopped + 1}\n" in log
    digests = []
    for name in ("log.txt", "log.txt.rank1"):
        text = (out / name).read_text()
        marker = "Parameters identical in all 2 processes: sha256 "
        assert marker in text, name
        digests.append(text.rsplit(marker, 1)[1][:64])
    assert digests[0] == digests[1]  # both ranks end with the same weights

    def final(folder):
        return torch.load(folder / "model_final.pth", map_location="cpu", weights_only=False)

    difference = max_abs_difference(final(reference)["model"], final(out)["model"])
    print(f"submitit local job: max abs weight difference to the uninterrupted run {difference}")
    assert difference <= 1e-6
    assert final(out)["iteration"] == MAX_ITER - 1
