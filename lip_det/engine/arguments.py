"""The command line of tools/train_net.py: detectron2's plus lip_det's options."""

from detectron2.engine import default_argument_parser

from .signals import DEFAULT_STOP_SIGNALS, EXIT_INTERRUPTED

__all__ = ["add_slurm_arguments", "argument_parser"]

INSTALL_SUBMITIT = "pip install 'lip_det[slurm]' (or: pip install submitit)"
DEFAULT_TIME = "24:00:00"
DEFAULT_SIGNAL_DELAY_S = 120


def add_slurm_arguments(parser):
    group = parser.add_argument_group(
        "SLURM", "--slurm submits the run through submitit instead of running it here"
    )
    group.add_argument(
        "--slurm",
        action="store_true",
        help="submit to SLURM (needs submitit: " + INSTALL_SUBMITIT + ")",
    )
    group.add_argument(
        "--dry-run",
        action="store_true",
        help="with --slurm: print the sbatch script, submit nothing",
    )
    group.add_argument("--nodes", type=int, default=1, help="nodes (one task each; default 1)")
    group.add_argument(
        "--gpus-per-node",
        type=int,
        default=None,
        help="GPUs (= training processes) per node; default --num-gpus. Not with MODEL.DEVICE cpu "
        "(there, --num-gpus is the CPU processes per node)",
    )
    group.add_argument("--partition", default=None, help="SLURM partition")
    group.add_argument(
        "--time",
        default=DEFAULT_TIME,
        help=f"time limit of each job run, in SLURM's format (minutes, HH:MM:SS, D-HH:MM:SS; "
        f"default {DEFAULT_TIME}); the job requeues itself when it runs out",
    )
    group.add_argument(
        "--mem", default=None, help="memory per node, e.g. 64G (default: the partition's)"
    )
    group.add_argument("--constraint", default=None, help="SLURM --constraint, e.g. volta32gb")
    group.add_argument("--account", default=None, help="SLURM account to charge")
    group.add_argument("--qos", default=None, help="SLURM quality of service")
    group.add_argument(
        "--cpus-per-task",
        type=int,
        default=None,
        help="CPUs per node (default: processes x (data-loader workers + 1))",
    )
    group.add_argument("--job-name", default=None, help="default: lip_det_<OUTPUT_DIR name>")
    group.add_argument(
        "--job-dir",
        default=None,
        help="submitit's folder: job pickles, each task's stdout/stderr (default OUTPUT_DIR/slurm)",
    )
    group.add_argument(
        "--signal-delay",
        type=int,
        default=DEFAULT_SIGNAL_DELAY_S,
        help="seconds before the time limit at which SLURM sends SIGUSR2 (checkpoint, requeue; "
        f"default {DEFAULT_SIGNAL_DELAY_S})",
    )
    group.add_argument(
        "--max-timeouts",
        type=int,
        default=3,
        help="requeues after timeouts (default 3; preemptions: always)",
    )
    group.add_argument(
        "--slurm-executor",
        choices=("slurm", "local"),
        default="slurm",
        help="local: run the job on this machine with submitit's LocalExecutor (each node a local "
        "task), to try a job out",
    )
    return parser


def argument_parser(epilog=None):
    """detectron2's ``default_argument_parser`` plus a repeatable ``--dataset`` option,
    ``--overwrite``, ``--stop-signals`` and the ``--slurm`` options (lip_det.engine.slurm).
    With ``MODEL.DEVICE cpu``, ``--num-gpus N`` starts N CPU processes."""
    parser = default_argument_parser(epilog=epilog)
    parser.add_argument(
        "--overwrite",
        action="store_true",
        help="train from scratch in an OUTPUT_DIR that holds a previous training run, deleting "
        "its checkpoints, last_checkpoint, metrics.json, event files, log.txt, inference/ and "
        "report/ first (without it, or --resume, such a directory is refused)",
    )
    parser.add_argument(
        "--dataset",
        nargs=3,
        action="append",
        default=[],
        metavar=("NAME", "JSON_FILE", "IMAGE_ROOT"),
        help="register a COCO-format dataset under NAME (repeatable), to be used in "
        "DATASETS.TRAIN / DATASETS.TEST. Put it before the KEY VALUE overrides.",
    )
    parser.add_argument(
        "--stop-signals",
        nargs="+",
        default=list(DEFAULT_STOP_SIGNALS),
        metavar="SIGNAL",
        help="signals on which training finishes its iteration, writes a checkpoint and exits "
        f"with status {EXIT_INTERRUPTED} (resume with --resume); default: "
        f"{' '.join(s[3:] for s in DEFAULT_STOP_SIGNALS)}. Put it before the KEY VALUE overrides.",
    )
    add_slurm_arguments(parser)
    return parser
