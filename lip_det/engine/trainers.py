"""The training loop's pieces: the step trainer (plain, float16 AMP, bfloat16 autocast) and the
yacs ``Trainer``, detectron2's ``DefaultTrainer`` with lip_det's data, evaluator and checkpoints.

Nothing here copies detectron2: bfloat16 mixed precision is a change to the model's forward
pass (:mod:`.autocast`), so ``run_step`` with ``zero_grad_before_forward``, ``after_backward`` and
the metrics stays detectron2's ``SimpleTrainer``'s.
"""

import logging
import os

import detectron2.utils.comm as comm
import torch
from detectron2.data import build_detection_test_loader, build_detection_train_loader
from detectron2.engine import AMPTrainer, DefaultTrainer, SimpleTrainer
from detectron2.evaluation import verify_results

from .. import checkpoint
from ..data import DatasetMapper
from ..data.resumable_loader import build_resumable_train_loader
from ..evaluation import SmallObjectCOCOEvaluator, build_evaluator
from .autocast import autocast_forward
from .checks import amp_dtype, check_num_classes
from .compile import compile_backbone
from .hooks import RankSyncCheck, write_small_object_reports
from .resume import ExactResume
from .signals import StopOnSignal

__all__ = ["Trainer", "build_train_step", "evaluate"]


def build_train_step(model, data_loader, optimizer, *, device, amp=False, precision="auto"):
    """The trainer that runs one iteration: SimpleTrainer; with ``amp``, detectron2's AMPTrainer
    for float16 on CUDA (GradScaler included), and for bfloat16 (CPU or CUDA) a SimpleTrainer
    whose model runs its training forward pass under autocast."""
    if not amp:
        return SimpleTrainer(model, data_loader, optimizer)
    dtype = amp_dtype(device, precision)
    if dtype == torch.float16:
        return AMPTrainer(model, data_loader, optimizer)
    autocast_forward(model, device_type=torch.device(device).type, dtype=dtype)
    return SimpleTrainer(model, data_loader, optimizer)


class Trainer(DefaultTrainer):
    """detectron2's DefaultTrainer with lip_det's data mapper, evaluator (small-object report
    at every evaluation), a class-count check, bfloat16 mixed precision, crash-safe
    checkpoints, torch.compile of the backbone (MODEL.COMPILE) and, with several processes, a
    check that they all end with the same weights."""

    def __init__(self, cfg):
        bfloat16 = cfg.SOLVER.AMP.ENABLED and (
            amp_dtype(cfg.MODEL.DEVICE, cfg.SOLVER.AMP.PRECISION) == torch.bfloat16
        )
        if bfloat16:
            # DefaultTrainer would build AMPTrainer (float16 on CUDA only): let it build a
            # SimpleTrainer, then run its model's forward pass under autocast.
            cfg = _with_amp(cfg, False)
        super().__init__(cfg)
        if bfloat16:
            autocast_forward(
                self._trainer.model,
                device_type=torch.device(cfg.MODEL.DEVICE).type,
                dtype=torch.bfloat16,
            )
            self.cfg = _with_amp(self.cfg, True)
        # checkpoints (and last_checkpoint) are written under a temporary name, then renamed
        checkpoint.make_atomic(self.checkpointer)

    @classmethod
    def build_model(cls, cfg):
        # MODEL.COMPILE: the backbone compiled in place (checkpoint keys unchanged)
        return compile_backbone(super().build_model(cfg), cfg)

    def build_hooks(self):
        # ExactResume (with DATALOADER.RESUMABLE): the data stream's position in checkpoints,
        # the RNGs seeded per iteration. StopOnSignal last: it saves the iteration's final state.
        resume = []
        if cfg_resumable(self.cfg):
            resume = [ExactResume(self._trainer.data_loader, seed=self.cfg.SEED)]
        return [*resume, *super().build_hooks(), RankSyncCheck(), StopOnSignal(self.checkpointer)]

    @classmethod
    def build_evaluator(cls, cfg, dataset_name, output_folder=None):
        if output_folder is None:
            output_folder = os.path.join(cfg.OUTPUT_DIR, "inference")
        return build_evaluator(cfg, dataset_name, output_folder)

    @classmethod
    def build_train_loader(cls, cfg):
        # loads the json (thing_classes now known); reads images with lip_det's DatasetMapper;
        # with DATALOADER.RESUMABLE (default) a stream that --resume continues exactly
        build = build_resumable_train_loader if cfg_resumable(cfg) else build_detection_train_loader
        loader = build(cfg, mapper=DatasetMapper(cfg, is_train=True))
        check_num_classes(cfg, cfg.DATASETS.TRAIN)
        return loader

    @classmethod
    def build_test_loader(cls, cfg, dataset_name):
        mapper = DatasetMapper(cfg, is_train=False)
        loader = build_detection_test_loader(cfg, dataset_name, mapper=mapper)
        check_num_classes(cfg, [dataset_name])
        return loader

    @classmethod
    def test(cls, cfg, model, evaluators=None, *, report_name=None):
        """DefaultTrainer.test, then the small-object report of each evaluated dataset, written
        from the evaluation just run into OUTPUT_DIR/report/<dataset> (main process). Training
        runs get it from detectron2's EvalHook, which calls this; the report names the run
        ``report_name`` (default: the OUTPUT_DIR's name)."""
        if evaluators is None:
            evaluators = [cls.build_evaluator(cfg, name) for name in cfg.DATASETS.TEST]
        results = super().test(cfg, model, evaluators)
        if comm.is_main_process():
            small = [e if isinstance(e, SmallObjectCOCOEvaluator) else None for e in evaluators]
            run_name = report_name or os.path.basename(os.path.normpath(cfg.OUTPUT_DIR)) or "model"
            for out_dir in write_small_object_reports(cfg, small, run_name):
                logging.getLogger("detectron2").info(f"Small-object report written to {out_dir}")
        return results

    def train(self):
        # DefaultTrainer.train returns the final evaluation only when TEST.EXPECTED_RESULTS is
        # set; tools (and tests) want it in any case.
        super().train()
        return getattr(self, "_last_eval_results", None)


def cfg_resumable(cfg):
    """DATALOADER.RESUMABLE (True when the key is absent, e.g. in an older config.yaml)."""
    return bool(cfg.DATALOADER.get("RESUMABLE", True))


def _with_amp(cfg, enabled):
    cfg = cfg.clone()
    cfg.defrost()
    cfg.SOLVER.AMP.ENABLED = enabled
    cfg.freeze()
    return cfg


def evaluate(cfg, model):
    """``--eval-only``: evaluate ``model`` on cfg.DATASETS.TEST with its small-object reports
    (named after the weights file), and check TEST.EXPECTED_RESULTS."""
    run_name = os.path.splitext(os.path.basename(cfg.MODEL.WEIGHTS))[0] or "model"
    results = Trainer.test(cfg, model, report_name=run_name)
    if comm.is_main_process():
        verify_results(cfg, results)
    return results
