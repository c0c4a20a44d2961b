"""
A training data stream that can be resumed exactly: batch ``k`` is a pure function of
``(seed, k)``, so a run resumed at iteration ``k`` regenerates the batches it has not seen yet,
in the order and with the augmentations the uninterrupted run would have had.

detectron2's stream (``TrainingSampler`` -> ``MapDataset`` -> ``AspectRatioGroupedDataset``) is
a chain of stateful iterators: an infinite shuffle whose position is nowhere recorded, a
fall-back RNG for unreadable images, aspect-ratio buckets that carry images over from one batch
to the next, and augmentations drawn from each data-loader process's global RNG. A resumed run
starts all of them again from the beginning. Here:

- **Epochs.** Epoch ``e`` is an order of the dataset drawn from ``(seed, e)`` alone, the way the
  sampler would (``TrainingSampler``: a permutation; ``RepeatFactorTrainingSampler``: its
  stochastic repeats, then a permutation; ``RandomSubsetTrainingSampler``: its subset, permuted).
- **Batches.** Within an epoch, images are grouped by aspect ratio (``width > height`` or not,
  as ``AspectRatioGroupedDataset`` does, read from the dataset dicts: no image is opened) and
  cut into global batches of ``total_batch_size``, emitted in the order in which they fill up.
  A group's last, partial batch is completed with the first images of the same group (so every
  image is seen every epoch and no batch carries over into the next epoch).
- **Ranks.** Process ``r`` of ``n`` takes slice ``r`` of each global batch: every process's
  batch ``k`` comes from the same global batch, whatever the number of processes.
- **Randomness.** Each image is mapped (read, augmented) under a NumPy/``random``/torch CPU RNG
  seeded from ``(seed, k, position in the global batch)``, and put back afterwards, so the
  augmentations do not depend on which process or data-loader worker maps it, nor on what was
  mapped before. An image the mapper skips (returns None, e.g. unreadable) is replaced by one
  drawn from the same aspect group with an RNG seeded likewise.
- **Position.** :class:`~lip_det.data.resumable_loader.ResumableTrainLoader` counts the
  batches the trainer took (``state_dict()``: seed and position, saved in checkpoints by
  ``lip_det.engine``'s ``ExactResume`` hook); its iterator starts the data-loader processes at
  the first ``next()``, so a position loaded after the trainer called ``iter()`` (detectron2
  v0.6's SimpleTrainer does it in its constructor) is where the stream starts.

This module holds the pure functions (epochs, :class:`BatchSchedule`, the seeds);
:mod:`lip_det.data.resumable_loader` the loader built on them (``build_resumable_train_loader``:
the arguments of detectron2's ``build_detection_train_loader`` and its yacs config,
``DATALOADER.RESUMABLE``).
"""

import contextlib
import math
import random

import numpy as np
import torch
from detectron2.data.samplers import RepeatFactorTrainingSampler, TrainingSampler

__all__ = ["BatchSchedule", "derive_seed", "epoch_orders", "seeded_rngs"]


def derive_seed(*numbers):
    """A 63-bit seed from non-negative integers (NumPy's SeedSequence: well mixed, so nearby
    tuples give unrelated streams)."""
    state = np.random.SeedSequence([int(n) % 2**63 for n in numbers]).generate_state(2, np.uint32)
    return (int(state[0]) << 31) ^ int(state[1])


@contextlib.contextmanager
def seeded_rngs(seed):
    """Run the body with Python's, NumPy's and torch's CPU RNG seeded from ``seed``, then put
    their states back (the trainer's own randomness is not disturbed)."""
    py_state, np_state = random.getstate(), np.random.get_state()
    with torch.random.fork_rng(devices=[]):
        random.seed(seed)
        np.random.seed(seed % 2**32)
        torch.default_generator.manual_seed(seed)
        try:
            yield
        finally:
            random.setstate(py_state)
            np.random.set_state(np_state)


# ---- epochs: the order of the dataset in epoch e, from (seed, e) -------------------------------


def _generator(seed, epoch):
    generator = torch.Generator()
    generator.manual_seed(derive_seed(seed, epoch))
    return generator


class _Permutations:
    """TrainingSampler (and, with ``subset``, RandomSubsetTrainingSampler)."""

    constant_length = True

    def __init__(self, size, shuffle=True, subset=None):
        self.indices = np.arange(size) if subset is None else np.asarray(subset)
        self.shuffle = shuffle

    def __call__(self, seed, epoch):
        if not self.shuffle:
            return self.indices
        order = torch.randperm(len(self.indices), generator=_generator(seed, epoch)).numpy()
        return self.indices[order]


class _RepeatFactors:
    """RepeatFactorTrainingSampler: stochastic rounding of the repeat factors, then a shuffle."""

    constant_length = False

    def __init__(self, sampler):
        self.sampler = sampler

    def __call__(self, seed, epoch):
        generator = _generator(seed, epoch)
        indices = self.sampler._get_epoch_indices(generator)
        if self.sampler._shuffle:
            indices = indices[torch.randperm(len(indices), generator=generator)]
        return indices.numpy()


def epoch_orders(sampler, size):
    """The epoch function of a detectron2 training sampler (None: default TrainingSampler),
    or None when the sampler is not one this module can replay."""
    if sampler is None:
        return _Permutations(size)
    if type(sampler) is TrainingSampler:
        return _Permutations(sampler._size, sampler._shuffle)
    if type(sampler) is RepeatFactorTrainingSampler:
        return _RepeatFactors(sampler)
    if type(sampler).__name__ == "RandomSubsetTrainingSampler" and hasattr(
        sampler, "_indexes_subset"
    ):  # detectron2 after v0.6
        return _Permutations(sampler._size, sampler._shuffle, sampler._indexes_subset.numpy())
    return None


# ---- batches: global batch k, from (seed, k) ---------------------------------------------------


class BatchSchedule:
    """Global batch ``k`` (``total_batch_size`` dataset indices, one aspect group) as a pure
    function of ``(seed, k)``; see the module docstring. ``groups[i]`` is the aspect group of
    dataset item ``i``."""

    def __init__(self, epoch_order, groups, total_batch_size, seed):
        self.epoch_order = epoch_order
        self.groups = np.asarray(groups)
        self.total_batch_size = total_batch_size
        self.seed = seed
        self.group_members = {g: np.flatnonzero(self.groups == g) for g in np.unique(self.groups)}
        self.reset()

    def reset(self):
        """Forget what was computed (after a change of ``seed``)."""
        self._epoch_starts = [0]  # first global batch of epochs 0, 1, ... (as far as computed)
        self._per_epoch = None  # batches per epoch, when that is constant
        self._cached = (None, None)  # (epoch, its batches)

    def epoch_batches(self, epoch):
        cached_epoch, batches = self._cached
        if cached_epoch == epoch:
            return batches
        order = np.asarray(self.epoch_order(self.seed, epoch))
        if len(order) == 0:
            raise ValueError("the training sampler gave an epoch without images")
        groups = self.groups[order]
        size = self.total_batch_size
        completed = []  # (position in the epoch where the batch fills up, batch)
        for group in np.unique(groups):
            positions = np.flatnonzero(groups == group)
            members = order[positions]
            count = math.ceil(len(members) / size)
            padded = np.resize(members, count * size)  # repeats the group's first images
            for j in range(count):
                last = positions[min((j + 1) * size, len(members)) - 1]
                completed.append((last, padded[j * size : (j + 1) * size]))
        completed.sort(key=lambda item: item[0])
        batches = [batch for _, batch in completed]
        self._cached = (epoch, batches)
        return batches

    def locate(self, k):
        """(epoch, index of global batch k in that epoch)."""
        if self.epoch_order.constant_length:
            if self._per_epoch is None:
                self._per_epoch = len(self.epoch_batches(0))
            return k // self._per_epoch, k % self._per_epoch
        starts = self._epoch_starts
        while starts[-1] <= k:
            starts.append(starts[-1] + len(self.epoch_batches(len(starts) - 1)))
        epoch = int(np.searchsorted(starts, k, side="right")) - 1
        return epoch, k - starts[epoch]

    def batch(self, k):
        epoch, index = self.locate(k)
        return self.epoch_batches(epoch)[index]

    def replacement(self, k, position, attempt, index):
        """Dataset index to map instead of ``index`` (skipped by the mapper) at ``position`` of
        global batch ``k``: drawn from ``index``'s aspect group."""
        members = self.group_members[self.groups[index]]
        return int(members[derive_seed(self.seed, k, position, attempt) % len(members)])
