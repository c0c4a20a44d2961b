"""trainer_state: ``DefaultTrainer.state_dict``/``load_state_dict``, so that checkpoints hold the
optimizer.

Problem: v0.6's ``DefaultTrainer`` (``engine/defaults.py``) has no ``state_dict``, and its
checkpointer gets no optimizer (``engine/defaults.py:386-391``), so checkpoints hold only
``TrainerBase.state_dict()``: the iteration and the hooks' states, not its ``SimpleTrainer``'s
(the optimizer, and with AMP the grad scaler). A resumed run restarts SGD momentum.

Probe: whether the class body of ``DefaultTrainer`` in ``engine/defaults.py`` defines
``state_dict``, by an ast walk of that one file (4-12 ms on this busy 2-core machine). The direct
probe, ``DefaultTrainer.state_dict is TrainerBase.state_dict``, needs ``detectron2.engine``
imported, which ``import lip_det`` does not otherwise do: ~30 ms wall (~13 ms CPU) more on HEAD,
where the fix is not even needed, and ``import lip_det`` would then also import detectron2's
engine, evaluation, solver and checkpoint packages, and fail where they fail. The patch, which
runs once that module is imported anyway, makes the direct check before it changes anything.

Change: right after ``detectron2.engine.defaults`` is imported, ``DefaultTrainer`` gets HEAD's two
methods: ``state_dict()`` adds ``"_trainer"`` (its SimpleTrainer/AMPTrainer's state, with
``"optimizer"``), ``load_state_dict()`` loads it back, and also loads checkpoints written without
it (which HEAD's version refuses).

Upstream: ac6774fe ("save grad_scaler state dict if use amp", 2021-11-15, PR #3686, after
0ce0e0cc had passed the optimizer to the checkpointer); HEAD ``engine/defaults.py:532-539``.
"""

from . import _hooks
from ._base import Finding, class_defines, read_source

__all__ = []

NAME = "trainer_state"
UPSTREAM = "fixed in ac6774fe (2021-11): HEAD engine/defaults.py:532-539 DefaultTrainer.state_dict"

MODULE = "detectron2.engine.defaults"


def probe():
    source = read_source("engine/defaults.py")
    if source is None:
        return Finding(False, "not needed: this detectron2 has no engine/defaults.py")
    if class_defines(source, "DefaultTrainer", "state_dict"):
        return Finding(False, "not needed: DefaultTrainer has state_dict (ac6774fe)")
    return Finding(
        True, "DefaultTrainer has no state_dict: checkpoints lack the optimizer", (MODULE,)
    )


def apply(finding):
    _hooks.patch_modules(finding.modules, _give_trainer_state)


def _give_trainer_state(module):
    trainer = getattr(module, "DefaultTrainer", None)
    base = getattr(module, "TrainerBase", None)
    # the direct check: DefaultTrainer's state_dict is still TrainerBase's (none of its own, nor
    # from a class in between)
    if trainer is None or base is None or trainer.state_dict is not base.state_dict:
        return

    def state_dict(self):
        ret = base.state_dict(self)
        ret["_trainer"] = self._trainer.state_dict()
        return ret

    def load_state_dict(self, state_dict):
        base.load_state_dict(self, state_dict)
        if "_trainer" in state_dict:  # (checkpoints written without this fix have none)
            self._trainer.load_state_dict(state_dict["_trainer"])

    trainer.state_dict = state_dict
    trainer.load_state_dict = load_state_dict
