"""Exact resume: what a checkpoint needs besides the model, optimizer, LR scheduler and grad
scaler (those are detectron2's trainer and hook states, :mod:`lip_det.compat` adding the
optimizer on v0.6) for ``--resume`` to continue exactly where the run stopped.

:class:`ExactResume` is a hook whose state (saved in every checkpoint under
``trainer/hooks/ExactResume``) is the data stream's seed and position
(:class:`lip_det.data.resumable_loader.ResumableTrainLoader`). Before each iteration it seeds the
global RNGs (torch on every device, NumPy, ``random``) from ``(seed, iteration, rank)``: the
model's own randomness (the RPN's and the RoI heads' sampling of anchors and proposals) is then
the same in a resumed run as in the uninterrupted one, without saving any RNG state.

With the same seed, the same number of processes and one thread per process on the CPU, a run
stopped at any iteration and resumed ends with the uninterrupted run's weights
(tests/test_resume.py). GPU kernels that are not deterministic (atomics in backward passes)
still make two runs differ, interrupted or not.
"""

import logging
import random

import numpy as np
import torch
from detectron2.engine import HookBase
from detectron2.utils import comm

from ..data.resumable_loader import ResumableTrainLoader
from ..data.samplers import derive_seed

__all__ = ["ExactResume", "run_seed"]


def run_seed(seed):
    """``seed`` if set (>= 0), else a random seed shared by all processes."""
    return int(seed) if seed is not None and seed >= 0 else int(comm.shared_random_seed())


class ExactResume(HookBase):
    """Saves and restores the data stream's position, and seeds the RNGs before each
    iteration from (seed, iteration, rank). ``data_loader``: the trainer's; its seed is used
    when it is a ResumableTrainLoader, else ``seed`` (required then)."""

    def __init__(self, data_loader, seed=None):
        self.data_loader = data_loader if isinstance(data_loader, ResumableTrainLoader) else None
        self._seed = self.data_loader.seed if self.data_loader is not None else run_seed(seed)
        if self.data_loader is None:
            logging.getLogger("lip_det").warning(
                "The training data loader is not resumable: a resumed run sees other batches "
                "than the uninterrupted run would have"
            )

    @property
    def seed(self):
        return self.data_loader.seed if self.data_loader is not None else self._seed

    def before_train(self):
        loader = self.data_loader
        if loader is not None and not loader.loaded:
            # a fresh run (0), or a checkpoint written before the stream position was saved:
            # one batch per iteration
            loader.seek(self.trainer.start_iter)

    def before_step(self):
        seed = derive_seed(self.seed, self.trainer.iter, comm.get_rank())
        torch.manual_seed(seed)  # the CPU and every CUDA device
        np.random.seed(seed % 2**32)
        random.seed(seed)

    def state_dict(self):
        if self.data_loader is not None:
            return {"data": self.data_loader.state_dict(), "seed": self.seed}
        return {"seed": self.seed}

    def load_state_dict(self, state):
        if self.data_loader is not None and "data" in state:
            self.data_loader.load_state_dict(state["data"])
        else:
            self._seed = int(state.get("seed", self._seed))
