"""Training and evaluation: what ``tools/train_net.py`` and ``tools/demo.py`` run.

- ``arguments``: the command line; ``config_files``: yacs/LazyConfig loading and
  :class:`RunSettings`; ``checks``: the one-line checks before launch (:class:`SetupError`);
- ``trainers``: the step trainers and the yacs :class:`Trainer`; ``autocast``: bfloat16 mixed
  precision; ``hooks``: the rank-sync check and the small-object reports;
- ``launch``: processes on GPUs (detectron2's launcher) or on the CPU (gloo);
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
from .train_net import main, run, setup
from .trainers import Trainer, build_train_step

__all__ = [
    "RankSyncCheck",
    "RunSettings",
    "SetupError",
    "Trainer",
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
