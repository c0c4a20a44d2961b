"""``tools/train_net.py --slurm``: submit a yacs or LazyConfig training run to SLURM through
submitit, as one job that requeues itself and resumes on preemption or timeout.

    python tools/train_net.py --config-file CONFIG --slurm --nodes 4 --gpus-per-node 8 \\
        --partition learn --time 72:00:00 [--dry-run] [KEY VALUE ...]

Layout. One SLURM task per node (``--ntasks-per-node=1``); each task is what
``tools/train_net.py`` is on one machine of a multi-machine run: it checks the setup and
launches one process per GPU (:func:`lip_det.engine.launch`: NCCL on GPUs, gloo on the CPU,
``--num-gpus`` CPU processes per node with ``MODEL.DEVICE cpu``). ``--num-machines``,
``--machine-rank`` and ``--dist-url`` come from the job's environment (submitit's
``JobEnvironment``): the number of tasks, this task's rank, and ``tcp://<first node>:<port>``
with a port derived from the job id (the same on every node, and again after a requeue).

Preemption and timeout. SLURM sends SIGUSR2 ``--signal-delay`` seconds before the time limit
(sbatch ``--signal=USR2@<delay>``, and on preemption where the cluster sets
``PreemptParameters=send_user_signal``) to every process of the job. The training processes
finish their iteration, rank 0 writes a checkpoint (:mod:`.signals`), and once they have
stopped the first task hands over to submitit's ``checkpoint()`` protocol:
:meth:`TrainingJob.checkpoint` returns the same job with ``--resume``, submitit requeues it
(``scontrol requeue``), and the requeued job continues from that checkpoint, exactly
(:mod:`.resume`). SIGTERM alone (``scancel``, preemption without the user signal) also stops
training with a checkpoint, but is not requeued by submitit (a requeue by SLURM itself, e.g.
``PreemptMode=REQUEUE``, resumes: ``SLURM_RESTART_COUNT`` > 0 means ``--resume``). Timeouts
are requeued ``--max-timeouts`` times (submitit's count); preemptions always.

Files. submitit's pickles and the tasks' stdout/stderr go to ``--job-dir`` (default
``OUTPUT_DIR/slurm``): ``<job id>_<task>_log.out`` / ``.err``; detectron2's log.txt, metrics
and checkpoints to OUTPUT_DIR as for any run. ``--dry-run`` prints the sbatch script (or, with
``--slurm-executor local``, the parameters) and submits nothing.

Everything that can be checked before submitting is (the config, datasets, weights and
OUTPUT_DIR as for a local run; the devices are the nodes', checked there), with one SetupError
line per mistake: submitit not installed, GPUs per node for a CPU model, several nodes with
``--dist-url auto``, a job folder that holds another run's job, ...
"""

import copy
import json
import math
import os
import re
import shlex
import sys

from .arguments import INSTALL_SUBMITIT
from .checks import check_setup, delete_previous_run
from .config_files import is_lazy_config_object, run_settings
from .errors import SetupError
from .slurm_job import PORT_BASE, PORT_RANGE, TrainingJob, job_arguments

__all__ = ["TrainingJob", "job_arguments", "plan", "submit"]

JOB_MARKER = "lip_det_job.json"  # in --job-dir: the run its jobs belong to


# ---- what is submitted -------------------------------------------------------------------------


def _import_submitit():
    try:
        import submitit
    except ImportError:
        raise SetupError(
            f"--slurm needs submitit, which is not installed: {INSTALL_SUBMITIT}"
        ) from None
    return submitit


def _minutes(text):
    """Minutes of a SLURM time limit: M, M:S, H:M:S, D-H, D-H:M, D-H:M:S."""
    match = re.fullmatch(r"(?:(\d+)-)?(\d+)(?::(\d+))?(?::(\d+))?", str(text).strip())
    if not match:
        raise SetupError(f"--time {text!r}: use minutes, HH:MM:SS or D-HH:MM:SS")
    days, first, second, third = match.groups()
    if days is not None:  # D-H[:M[:S]]
        h, m, s = int(first), int(second or 0), int(third or 0)
        seconds = int(days) * 86400 + h * 3600 + m * 60 + s
    elif third is not None:  # H:M:S
        seconds = int(first) * 3600 + int(second) * 60 + int(third)
    elif second is not None:  # M:S
        seconds = int(first) * 60 + int(second)
    else:
        seconds = int(first) * 60
    if seconds <= 0:
        raise SetupError(f"--time {text!r} must be more than 0")
    return math.ceil(seconds / 60)


def _device_key(cfg):
    return "train.device" if is_lazy_config_object(cfg) else "MODEL.DEVICE"


def _batch_and_workers(cfg):
    if is_lazy_config_object(cfg):
        train = cfg.dataloader.get("train", {})
        return ("dataloader.train.total_batch_size", train.get("total_batch_size")), train.get(
            "num_workers", 0
        )
    return ("SOLVER.IMS_PER_BATCH", cfg.SOLVER.IMS_PER_BATCH), cfg.DATALOADER.NUM_WORKERS


def _scaled_batch(cfg, batch, world):
    """The total batch a yacs run has on ``world`` processes: DefaultTrainer scales
    SOLVER.IMS_PER_BATCH by world / SOLVER.REFERENCE_WORLD_SIZE when that is set."""
    reference = 0 if is_lazy_config_object(cfg) else cfg.SOLVER.get("REFERENCE_WORLD_SIZE", 0)
    if not reference or not isinstance(batch, int):
        return batch
    return int(round(batch * world / reference))


def default_dist_url():
    """detectron2's default --dist-url (what the command line has when it was not given)."""
    from detectron2.engine import default_argument_parser

    return default_argument_parser().get_default("dist_url")


def plan(args, cfg):
    """The job's layout and parameters from the command line and the config; SetupError for
    options that conflict. Returns a dict (see :func:`describe`)."""
    settings = run_settings(cfg)
    device_type = "cpu" if str(settings.device).startswith("cpu") else "cuda"
    if args.nodes < 1:
        raise SetupError(f"--nodes {args.nodes}: needs at least 1")
    if args.num_machines != 1 or args.machine_rank != 0:
        raise SetupError(
            "--num-machines and --machine-rank come from SLURM with --slurm (one machine per "
            "node): use --nodes"
        )
    if device_type == "cpu":
        if args.gpus_per_node:
            raise SetupError(
                f"--gpus-per-node {args.gpus_per_node} asks for GPUs, but the model runs on the "
                f"CPU ({_device_key(cfg)} {settings.device}); drop --gpus-per-node (CPU processes "
                f"per node: --num-gpus) or set {_device_key(cfg)} cuda"
            )
        processes, gpus = args.num_gpus, 0
    else:
        processes = gpus = args.gpus_per_node if args.gpus_per_node is not None else args.num_gpus
    if processes < 1:
        raise SetupError(f"{processes} training processes per node: needs at least 1")
    if args.dist_url == "auto" and args.nodes > 1:
        raise SetupError(
            f"--dist-url auto finds a free port on one machine, but --nodes {args.nodes} spans "
            "several; leave --dist-url out (the job uses its first node's address) or give "
            "tcp://HOST:PORT"
        )
    (batch_key, batch), workers = _batch_and_workers(cfg)
    world = args.nodes * processes
    scaled = _scaled_batch(cfg, batch, world)
    if not args.eval_only and isinstance(scaled, int) and scaled % world:
        scaling = f" (scaled by SOLVER.REFERENCE_WORLD_SIZE: {scaled})" if scaled != batch else ""
        raise SetupError(
            f"{batch_key} {batch}{scaling} cannot be split over {args.nodes} node(s) x "
            f"{processes} process(es) = {world}; make it a multiple of {world}"
        )
    if args.signal_delay < 1:
        raise SetupError(f"--signal-delay {args.signal_delay}: needs at least 1 second")
    minutes = _minutes(args.time)
    output_dir = os.path.abspath(settings.output_dir)
    job_dir = os.path.abspath(args.job_dir or os.path.join(settings.output_dir, "slurm"))
    _check_job_dir(job_dir, output_dir)
    return {
        "executor": args.slurm_executor,
        "job_dir": job_dir,
        "output_dir": output_dir,
        "nodes": args.nodes,
        "processes_per_node": processes,
        "gpus_per_node": gpus,
        "device": device_type,
        "time_min": minutes,
        "cpus_per_task": args.cpus_per_task or processes * (int(workers or 0) + 1),
        "job_name": args.job_name or "lip_det_" + (os.path.basename(output_dir) or "run"),
        "dist_url": None if args.dist_url == default_dist_url() else args.dist_url,
        "max_timeouts": args.max_timeouts,
        "signal_delay_s": args.signal_delay,
        **{key: getattr(args, key) for key in ("partition", "mem", "constraint", "account", "qos")},
    }


def _check_job_dir(job_dir, output_dir):
    marker = os.path.join(job_dir, JOB_MARKER)
    if os.path.isfile(marker):
        try:
            with open(marker) as f:
                owner = json.load(f).get("output_dir")
        except (OSError, ValueError, AttributeError):
            owner = None
        if owner != output_dir:
            raise SetupError(
                f"--job-dir {job_dir} holds the job of another run (OUTPUT_DIR {owner}); give this "
                "run its own --job-dir"
            )
    elif os.path.isdir(job_dir) and any(name.endswith(".pkl") for name in os.listdir(job_dir)):
        raise SetupError(
            f"--job-dir {job_dir} holds another submitit job (its .pkl files); give this run its "
            "own --job-dir"
        )


def slurm_parameters(plan):
    """submitit SlurmExecutor parameters (sbatch options) of a plan."""
    parameters = {
        "job_name": plan["job_name"],
        "nodes": plan["nodes"],
        "ntasks_per_node": 1,
        "cpus_per_task": plan["cpus_per_task"],
        "time": plan["time_min"],
        "signal_delay_s": plan["signal_delay_s"],
        "additional_parameters": {"requeue": True},
    }
    if plan["gpus_per_node"]:
        parameters["gpus_per_node"] = plan["gpus_per_node"]
    for key in ("partition", "mem", "constraint", "account", "qos"):
        if plan.get(key):
            parameters[key] = plan[key]
    return parameters


def local_parameters(plan):
    """submitit LocalExecutor parameters: each node becomes a task on this machine."""
    return {
        "tasks_per_node": plan["nodes"],
        "gpus_per_node": plan["gpus_per_node"] * plan["nodes"],
        "timeout_min": plan["time_min"],
        "signal_delay_s": plan["signal_delay_s"],
    }


def _submitit_command(folder):
    # what submitit's executors run in each task (SlurmExecutor._submitit_command_str)
    return " ".join(
        [shlex.quote(sys.executable), "-u -m submitit.core._submit", shlex.quote(folder)]
    )


def describe(plan, args):
    """What --dry-run prints: the sbatch script (or local parameters) and each node's run."""
    lines = []
    if plan["executor"] == "slurm":
        from submitit.slurm.slurm import _make_sbatch_string

        lines += [
            f"# sbatch script (submitit, folder {plan['job_dir']})",
            _make_sbatch_string(
                command=_submitit_command(plan["job_dir"]),
                folder=plan["job_dir"],
                **slurm_parameters(plan),
            ),
        ]
    else:
        lines += [
            f"# submitit LocalExecutor, folder {plan['job_dir']}",
            json.dumps(local_parameters(plan), indent=2),
        ]
    url = (
        plan["dist_url"]
        or f"tcp://<first node>:<{PORT_BASE}-{PORT_BASE + PORT_RANGE - 1}, from the job id>"
    )
    node_args = _without_slurm_options(args)
    lines += [
        "# each node (task) runs lip_det.engine.run with:",
        f"#   --num-gpus {plan['processes_per_node']} --num-machines {plan['nodes']} "
        f"--machine-rank <task rank> --dist-url {url}",
        f"#   {shlex.join(_command_line(node_args))}",
        f"# logs: {plan['job_dir']}/<job id>_<task>_log.out|err; log.txt and checkpoints: "
        f"{plan['output_dir']}",
    ]
    return "\n".join(lines)


_SLURM_DESTS = (
    "slurm", "dry_run", "nodes", "gpus_per_node", "partition", "time", "mem", "constraint",
    "account", "qos", "cpus_per_task", "job_name", "job_dir", "signal_delay", "max_timeouts",
    "slurm_executor",
)  # fmt: skip


def _without_slurm_options(args):
    """What the nodes run: the command line without the --slurm options, and with absolute
    paths (a job's working directory is the submission's, but the nodes need not agree)."""
    node_args = copy.copy(args)
    for dest in _SLURM_DESTS:
        if hasattr(node_args, dest):
            delattr(node_args, dest)
    node_args.slurm = False
    node_args.dry_run = False
    node_args.config_file = os.path.abspath(args.config_file)
    node_args.dataset = [
        [name, os.path.abspath(json_file), os.path.abspath(image_root)]
        for name, json_file, image_root in getattr(args, "dataset", []) or []
    ]
    return node_args


def _command_line(args):
    words = ["--config-file", args.config_file]
    for flag in ("resume", "eval_only"):
        if getattr(args, flag, False):
            words.append("--" + flag.replace("_", "-"))
    for name, json_file, image_root in getattr(args, "dataset", []) or []:
        words += ["--dataset", name, json_file, image_root]
    return [*words, *args.opts]


def submit(args):
    """Check everything, then submit the run (``--dry-run``: print what would be submitted and
    return None). Returns the submitit Job."""
    submitit = _import_submitit()
    cfg = check_setup(args, check_devices=False)  # the devices are the nodes'
    job_plan = plan(args, cfg)
    if args.dry_run:
        print(describe(job_plan, args))
        return None
    output_dir = job_plan["output_dir"]
    if args.overwrite and not args.eval_only:
        delete_previous_run(output_dir)
    os.makedirs(job_plan["job_dir"], exist_ok=True)
    if job_plan["executor"] == "local":
        executor = submitit.LocalExecutor(job_plan["job_dir"], max_num_timeout=args.max_timeouts)
        executor.update_parameters(**local_parameters(job_plan))
    else:
        try:
            executor = submitit.SlurmExecutor(
                job_plan["job_dir"], max_num_timeout=args.max_timeouts
            )
        except RuntimeError as e:  # no srun here
            raise SetupError(
                f"--slurm: {e} (--dry-run shows what would be submitted; --slurm-executor local "
                "runs the job here)"
            ) from None
        executor.update_parameters(**slurm_parameters(job_plan))
    job = executor.submit(TrainingJob(_without_slurm_options(args), job_plan))
    _write_marker(job_plan, args, job.job_id)
    print(
        f"Submitted job {job.job_id} ({job_plan['nodes']} node(s) x "
        f"{job_plan['processes_per_node']} process(es)): task logs "
        f"{job_plan['job_dir']}/{job.job_id}_<task>_log.out|err, training log and checkpoints "
        f"{output_dir}. On preemption or timeout it requeues itself and resumes.",
        flush=True,
    )
    return job


def _write_marker(job_plan, args, job_id):
    path = os.path.join(job_plan["job_dir"], JOB_MARKER)
    jobs = []
    if os.path.isfile(path):
        with open(path) as f:
            jobs = json.load(f).get("jobs", [])
    record = {
        "output_dir": job_plan["output_dir"],
        "config_file": os.path.abspath(args.config_file),
        "jobs": [*jobs, str(job_id)],
    }
    with open(path + ".tmp", "w") as f:
        json.dump(record, f, indent=2)
    os.replace(path + ".tmp", path)
