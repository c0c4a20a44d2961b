"""detectron2 hooks and helpers of lip_det's training runs: the check that every process ends
with the same weights, and the small-object reports of an evaluation."""

import hashlib
import logging
import os

import detectron2.utils.comm as comm
import torch
from detectron2.engine import HookBase

from ..evaluation import small_object_settings, write_report
from .autocast import unwrap_model

__all__ = ["RankSyncCheck", "check_ranks_in_sync", "parameter_digest", "write_small_object_reports"]


def parameter_digest(named_tensors):
    """SHA-256 of ``(name, tensor)`` pairs, in name order: equal digests, equal weights."""
    digest = hashlib.sha256()
    for name, tensor in sorted(named_tensors, key=lambda item: item[0]):
        digest.update(name.encode())
        digest.update(tensor.detach().cpu().reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def check_ranks_in_sync(model):
    """After multi-process training, log whether every process ends with the same parameters
    (DDP keeps them equal; a difference means the processes trained different models). Buffers
    are left out: with broadcast_buffers=False, BatchNorm statistics are per process. Returns
    the digests of all ranks."""
    model = unwrap_model(model)
    digests = comm.all_gather(parameter_digest(model.named_parameters()))
    logger = logging.getLogger("detectron2")
    if len(set(digests)) == 1:
        logger.info(f"Parameters identical in all {len(digests)} processes: sha256 {digests[0]}")
    else:
        logger.warning(
            "Parameters differ between processes: "
            + ", ".join(f"rank {rank} sha256 {d}" for rank, d in enumerate(digests))
        )
    return digests


class RankSyncCheck(HookBase):
    """After training in several processes, log whether they all hold the same parameters
    (:func:`check_ranks_in_sync`). Does nothing in a single process."""

    def after_train(self):
        if comm.get_world_size() > 1:
            check_ranks_in_sync(self.trainer.model)


def write_small_object_reports(cfg, evaluators, run_name):
    """The small-object report (metrics.json, report.md, plots; see lip_det.evaluation) of each
    evaluated test dataset and task, in OUTPUT_DIR/report/<dataset>[_<task>]/. Reuses the
    evaluations the evaluators just computed; no second COCOeval pass."""
    from detectron2.data import MetadataCatalog

    written = []
    for name, evaluator in zip(cfg.DATASETS.TEST, evaluators):
        evaluations = getattr(evaluator, "evaluations", {})
        for task, evaluation in evaluations.items():
            folder = name if len(evaluations) == 1 else f"{name}_{task}"
            out_dir = os.path.join(cfg.OUTPUT_DIR, "report", folder)
            write_report(
                MetadataCatalog.get(name).json_file,  # (COCOEvaluator writes one if missing)
                {run_name: evaluation},
                out_dir,
                iou_type=task,
                **small_object_settings(cfg),
            )
            written.append(out_dir)
    return written
