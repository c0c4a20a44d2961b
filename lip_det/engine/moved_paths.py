"""Where the modules of lip_det's old flat layout went, so that a LazyConfig saved before the move
(``config.yaml``, whose ``_target_`` strings name ``module.qualname``) still loads.

:func:`update_moved_targets` rewrites such targets to their new module, with one warning per old
path; a name that exists nowhere any more fails with one line naming where to look.
"""

import importlib
import importlib.util
import logging

from .errors import SetupError

__all__ = ["MOVED_MODULES", "update_moved_targets"]

logger = logging.getLogger(__name__)

# old module -> the modules its names went to (the first that has the name wins)
MOVED_MODULES = {
    "lip_det.backbone": ("lip_det.modeling.lip_resnet", "lip_det.modeling.fpn"),
    "lip_det.blocks": ("lip_det.modeling.blocks",),
    "lip_det.lip_layer": ("lip_det.layers.lip",),
    "lip_det.logit_modules": ("lip_det.layers.logit_modules",),
    "lip_det.lip2d": ("lip_det.layers.dispatch", "lip_det.layers.reference"),
    "lip_det.lip2d_autograd": (
        "lip_det.layers.function",
        "lip_det.layers.backend_aten",
        "lip_det.layers.backend_cpu",
    ),
    "lip_det.lip2d_triton": ("lip_det.layers.backend_triton",),
    "lip_det.checkpoint": ("lip_det.checkpoint.checkpointer",),
    "lip_det.weights": ("lip_det.checkpoint.weights",),
    "lip_det.convert": ("lip_det.checkpoint.convert",),
    "lip_det.launch": ("lip_det.engine.launch",),
    "lip_det.engine": (
        "lip_det.engine.train_net",
        "lip_det.engine.trainers",
        "lip_det.engine.checks",
        "lip_det.engine.config_files",
    ),
    "lip_det.evaluation.synthetic": ("lip_det.evaluation.simulated",),
}


def _new_target(target):
    """The new ``module.qualname`` of an old-layout target, or None if it did not move."""
    for old, new_modules in MOVED_MODULES.items():
        if not target.startswith(old + "."):
            continue
        qualname = target[len(old) + 1 :]
        for module_name in new_modules:
            found = importlib.import_module(module_name)
            for part in qualname.split("."):
                found = getattr(found, part, None)
                if found is None:
                    break
            if found is not None:
                return f"{module_name}.{qualname}"
        if importlib.util.find_spec(old) is None:  # (lip_det.checkpoint still exists)
            raise SetupError(
                f"_target_ {target!r} names lip_det's old layout, and {qualname!r} is in none "
                f"of its new modules {list(new_modules)}; see README.md, 'Code map'"
            )
    return None


def update_moved_targets(cfg, source):
    """Rewrite, in place, every ``_target_`` of the LazyConfig ``cfg`` that names a module of the
    old layout. ``source`` (the file name) is for the warning. Returns the rewritten targets."""
    from omegaconf import DictConfig, ListConfig

    rewritten = {}

    def walk(node):
        if isinstance(node, DictConfig):
            target = node.get("_target_") if "_target_" in node else None
            if isinstance(target, str) and target.startswith("lip_det."):
                new = _new_target(target)
                if new is not None:
                    node["_target_"] = new
                    rewritten[target] = new
            for key in node:
                walk(node._get_node(key))
        elif isinstance(node, ListConfig):
            for item in node._iter_ex(resolve=False):
                walk(item)

    walk(cfg)
    for old, new in rewritten.items():
        logger.warning(f"{source}: _target_ {old} is now {new} (lip_det's new layout); loading it")
    return rewritten
