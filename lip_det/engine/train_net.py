"""What ``tools/train_net.py`` runs: check the setup once, launch the processes, and in each of
them train or evaluate a yacs or LazyConfig config.

    args = argument_parser().parse_args()
    run(args)    # check_setup(args) -> launch(main, ...) -> main(args) in every process

The yacs flow is detectron2's ``tools/train_net.py`` with :class:`~lip_det.engine.Trainer`. The
LazyConfig flow follows detectron2's ``tools/lazyconfig_train_net.py`` (``do_train``/``do_test``):
detectron2 ships those tools as scripts, not as an importable module, so their few lines are
written here, with lip_det's step trainer and checkpointer.
"""

import logging
import re

import detectron2.utils.comm as comm
from detectron2.checkpoint import DetectionCheckpointer
from detectron2.config import instantiate
from detectron2.engine import create_ddp_model, default_setup, default_writers, hooks
from detectron2.evaluation import inference_on_dataset, print_csv_format
from detectron2.utils.logger import setup_logger

from .. import checkpoint
from .checks import check_setup, delete_previous_run, register_datasets
from .config_files import is_lazy_config_object, load_config_file, run_settings
from .hooks import RankSyncCheck
from .launch import launch
from .resume import ExactResume
from .signals import DEFAULT_STOP_SIGNALS, StopOnSignal, stop_signal_handlers
from .trainers import Trainer, build_train_step, evaluate

__all__ = ["main", "run", "setup"]


class _PlainText(logging.Filter):
    """Drops ANSI colour codes from a record: detectron2's default_setup logs the config file
    syntax-highlighted for the terminal, and the same record goes into log.txt."""

    ANSI = re.compile(r"\x1b\[[0-9;]*m")

    def filter(self, record):
        message = record.getMessage()
        if "\x1b[" in message:
            record.msg, record.args = self.ANSI.sub("", message), ()
        return True


def setup(args):
    """Config + detectron2's default_setup (logging, output dir, config.yaml, seeding)."""
    register_datasets(args.dataset)
    cfg = load_config_file(args)
    detectron2_logger = logging.getLogger("detectron2")
    if not any(isinstance(f, _PlainText) for f in detectron2_logger.filters):
        detectron2_logger.addFilter(_PlainText())
    default_setup(cfg, args)
    # lip_det's own messages (e.g. the dataset checks' counts) into the same log
    setup_logger(run_settings(cfg).output_dir, distributed_rank=comm.get_rank(), name="lip_det")
    return cfg


def _main_yacs(args, cfg):
    if args.eval_only:
        model = Trainer.build_model(cfg)
        DetectionCheckpointer(model, save_dir=cfg.OUTPUT_DIR).resume_or_load(
            cfg.MODEL.WEIGHTS, resume=args.resume
        )
        return evaluate(cfg, model)
    trainer = Trainer(cfg)
    trainer.resume_or_load(resume=args.resume)
    return trainer.train()


def _test_lazy(cfg, model):
    if "evaluator" not in cfg.dataloader:
        return None
    results = inference_on_dataset(
        model, instantiate(cfg.dataloader.test), instantiate(cfg.dataloader.evaluator)
    )
    print_csv_format(results)
    return results


def _main_lazy(args, cfg):
    model = instantiate(cfg.model)
    logging.getLogger("detectron2").info(f"Model:\n{model}")
    model.to(cfg.train.device)
    if args.eval_only:
        model = create_ddp_model(model)
        DetectionCheckpointer(model).load(cfg.train.init_checkpoint)
        return _test_lazy(cfg, model)

    cfg.optimizer.params.model = model
    optimizer = instantiate(cfg.optimizer)
    resumable = _resumable_lazy_loader(cfg)
    train_loader = instantiate(cfg.dataloader.train)
    model = create_ddp_model(model, **cfg.train.ddp)
    settings = run_settings(cfg)
    trainer = build_train_step(
        model,
        train_loader,
        optimizer,
        device=cfg.train.device,
        amp=settings.amp_enabled,
        precision=settings.amp_precision,
    )
    # The trainer's state_dict holds the optimizer (and grad scaler) on every detectron2 version.
    checkpointer = checkpoint.make_atomic(
        DetectionCheckpointer(model, cfg.train.output_dir, trainer=trainer)
    )
    results = {}

    def test_and_keep():
        results["last"] = _test_lazy(cfg, model)
        return results["last"]

    main_process = comm.is_main_process()
    seed = cfg.train.get("seed", -1)
    trainer.register_hooks(
        [
            ExactResume(train_loader, seed=seed) if resumable else None,
            hooks.IterationTimer(),
            hooks.LRScheduler(scheduler=instantiate(cfg.lr_multiplier)),
            hooks.PeriodicCheckpointer(checkpointer, **cfg.train.checkpointer)
            if main_process
            else None,
            hooks.EvalHook(cfg.train.eval_period, test_and_keep),
            hooks.PeriodicWriter(
                default_writers(cfg.train.output_dir, cfg.train.max_iter),
                period=cfg.train.log_period,
            )
            if main_process
            else None,
            RankSyncCheck(),
            StopOnSignal(checkpointer),  # last: saves the state at the end of the iteration
        ]
    )
    checkpointer.resume_or_load(cfg.train.init_checkpoint, resume=args.resume)
    # A checkpoint stores the iteration that just finished: resume at the next one.
    start_iter = trainer.iter + 1 if args.resume and checkpointer.has_checkpoint() else 0
    trainer.train(start_iter, cfg.train.max_iter)
    return results.get("last")


def _resumable_lazy_loader(cfg):
    """Make ``dataloader.train`` lip_det's resumable loader when it is detectron2's
    build_detection_train_loader (same arguments); ``dataloader.train.resumable=False`` keeps
    detectron2's. Returns whether it is resumable."""
    from detectron2.data import build_detection_train_loader

    from ..data.resumable_loader import build_resumable_train_loader

    train = cfg.dataloader.train
    resumable = bool(train.pop("resumable", True))
    target = train.get("_target_")
    names = {
        "detectron2.data.build_detection_train_loader",
        "detectron2.data.build.build_detection_train_loader",
        "lip_det.data.resumable_loader.build_resumable_train_loader",
    }
    known = target in (build_detection_train_loader, build_resumable_train_loader) or (
        isinstance(target, str) and target in names
    )
    if not resumable or not known:
        return False
    train._target_ = build_resumable_train_loader
    if "seed" not in train:
        train.seed = cfg.train.get("seed", -1)
    return True


def _stop_signals(args):
    """The signals that stop a training run with a checkpoint (none for --eval-only)."""
    if args.eval_only:
        return ()
    return tuple(getattr(args, "stop_signals", None) or DEFAULT_STOP_SIGNALS)


def main(args):
    """Per-process entry point (what ``launch`` runs): train, or evaluate with --eval-only.
    Returns the evaluation results (dataset name -> task -> metric -> value) in the main process;
    for a single test dataset, detectron2 drops the dataset level. A training run stopped by a
    signal raises TrainingInterrupted (exit status 75, see lip_det.engine.signals)."""
    with stop_signal_handlers(_stop_signals(args)):
        cfg = setup(args)
        if is_lazy_config_object(cfg):
            return _main_lazy(args, cfg)
        return _main_yacs(args, cfg)


def run(args):
    """Check the setup (raises SetupError), delete the previous run with ``--overwrite``, then
    run ``main`` in ``--num-gpus`` processes per machine (on the CPU: CPU processes) through
    ``lip_det.engine.launch``. Returns main's results when it runs in this process."""
    cfg = check_setup(args)
    settings = run_settings(cfg)
    if getattr(args, "overwrite", False) and not args.eval_only and args.machine_rank == 0:
        delete_previous_run(settings.output_dir)
    if args.num_gpus * args.num_machines == 1:
        return main(args)  # what launch() does for one process, but keeping the return value
    launch(
        main,
        args.num_gpus,
        num_machines=args.num_machines,
        machine_rank=args.machine_rank,
        dist_url=args.dist_url,
        args=(args,),
        device=settings.device,
        stop_signals=_stop_signals(args),
    )
    return None
