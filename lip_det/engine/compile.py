"""``MODEL.COMPILE``: ``torch.compile`` of the model's backbone for training and evaluation.

The backbone is compiled in place (``nn.Module.compile``), so parameter names, checkpoints and
DDP wrapping are those of the eager model. Only the backbone is compiled: detectron2's proposal
generator and RoI heads have data-dependent shapes (the boxes that survive NMS) that would
recompile or break the graph every iteration, and they cost the same in LIP and plain models.
"""

import logging

import torch

from ..choices import check_choice

__all__ = ["check_compile_config", "compile_backbone"]

logger = logging.getLogger(__name__)


def compile_backends():
    # torch hides its debug backends (aot_eager, eager) from list_backends() by default
    return tuple(torch._dynamo.list_backends(exclude_tags=()))


def check_compile_config(cfg):
    """A ValueError naming MODEL.COMPILE.BACKEND when it is not one of torch.compile's."""
    if cfg.MODEL.COMPILE.ENABLED:
        check_choice(cfg.MODEL.COMPILE.BACKEND, compile_backends(), "MODEL.COMPILE.BACKEND")


def compile_backbone(model, cfg):
    """Compile ``model.backbone`` in place if MODEL.COMPILE.ENABLED; returns ``model``."""
    settings = cfg.MODEL.COMPILE
    if not settings.ENABLED:
        return model
    check_compile_config(cfg)
    model.backbone.compile(fullgraph=settings.FULLGRAPH, backend=settings.BACKEND)
    logger.info(
        f"MODEL.COMPILE: torch.compile of the backbone ({type(model.backbone).__name__}) with "
        f"backend {settings.BACKEND!r}, fullgraph={settings.FULLGRAPH}; the first iterations "
        "include compilation"
    )
    return model
