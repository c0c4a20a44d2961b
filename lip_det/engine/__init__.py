"""Training and evaluation: what ``tools/train_net.py`` and ``tools/demo.py`` run.

- ``arguments``: the command line; ``config_files``: yacs/LazyConfig loading and
  :class:`RunSettings`; ``checks``: the one-line checks before launch (:class:`SetupError`);
- ``trainers``: the step trainers and the yacs :class:`Trainer`; ``autocast``: bfloat16 mixed
  precision; ``hooks``: the rank-sync check and the small-object reports;
- ``launch``: processes on GPUs (detectron2's launcher) or on the CPU (gloo), none outliving
  its launcher; ``signals``: stop on SIGTERM/SIGINT/SIGUSR1 with a checkpoint (exit status 75);
  ``resume``: the exact-resume hook (data position, RNGs seeded per iteration);
- ``slurm`` / ``slurm_job``: ``--slurm``, submission through submitit and what each node runs;
- ``train_net``: ``main`` (one process) and ``run`` (check, then launch).
"""

from .arguments import argument_parser
from .autocast import autocast_dtype, autocast_forward
from .checks import amp_dtype, check_output_dir, check_setup
from .config_files import (
    RunSettings,
    get_lip_cfg,
    is_lazy_config,
    load_config,
    load_lazy_config,
    run_settings,
)
from .errors import SetupError
from .hooks import RankSyncCheck, check_ranks_in_sync, parameter_digest
from .launch import launch
from .signals import EXIT_INTERRUPTED, TrainingInterrupted
from .train_net import main, run, setup
from .trainers import Trainer, build_train_step

__all__ = [
    "EXIT_INTERRUPTED",
    "RankSyncCheck",
    "RunSettings",
    "SetupError",
    "Trainer",
    "TrainingInterrupted",
    "amp_dtype",
    "autocast_dtype",
    "autocast_forward",
    "argument_parser",
    "build_train_step",
    "check_output_dir",
    "check_ranks_in_sync",
    "check_setup",
    "get_lip_cfg",
    "is_lazy_config",
    "launch",
    "load_config",
    "load_lazy_config",
    "main",
    "parameter_digest",
    "run",
    "run_settings",
    "setup",
]
