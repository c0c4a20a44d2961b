"""map_dataset_sample_from_set: detectron2's MapDataset retry on Python >= 3.11.

Problem: ``data/common.py:98`` (v0.6, ``MapDataset.__getitem__``) skips an item whose mapper
returned None by drawing another index with ``self._rng.sample(self._fallback_candidates, k=1)``,
a set. Python 3.11 refuses sets there, so the documented way to skip an item (lip_det's mapper
does it for unreadable images) crashes the data loader with "TypeError: Population must be a
sequence".

Probe: ``random.Random().sample({0}, 1)`` raises TypeError (direct), then whether MapDataset passes
the set, read from that one file's source: the call is inside ``__getitem__``, and showing it by
running a MapDataset would mean importing ``detectron2.data`` inside ``apply()``, before the fixes
that module needs are in place.

Change: ``detectron2.data.common.random`` (looked up per MapDataset, for ``random.Random``) becomes
the random module with a ``Random`` whose ``sample()`` takes a set in sorted order, as before 3.11
(reproducible: a set's order is not).

Upstream: 400a49c1 ("random sample from set", 2025-04-13); HEAD's ``data/common.py:133`` samples
``list(self._fallback_candidates)``.
"""

import random
import types

from . import _hooks
from ._base import Finding, uses

__all__ = ["KNOWN_USERS", "USE"]

NAME = "map_dataset_sample_from_set"
UPSTREAM = "fixed in 400a49c1 (2025-04): HEAD data/common.py:133 samples a list"

KNOWN_USERS = ("data/common.py",)
USE = ("_fallback_candidates", r"\.sample\(\s*self\._fallback_candidates\b")


class _SetSamplingRandom(random.Random):
    """random.Random whose sample() takes a set, as it did before Python 3.11 (which now raises
    TypeError), in sorted order so that the draw is reproducible."""

    def sample(self, population, k, **kwargs):
        if isinstance(population, (set, frozenset)):
            population = sorted(population)
        return super().sample(population, k, **kwargs)


class _RandomWithSetSampling(types.ModuleType):
    """The ``random`` module as a detectron2 module sees it, with _SetSamplingRandom."""

    def __init__(self):
        super().__init__("random")
        self.Random = _SetSamplingRandom

    def __getattr__(self, name):
        return getattr(random, name)


def probe():
    try:
        random.Random().sample({0}, 1)
        return Finding(False, "not needed: this Python's random.sample() takes a set (< 3.11)")
    except TypeError:
        pass
    users = tuple(uses(KNOWN_USERS, *USE))
    if not users:
        return Finding(False, "not needed: MapDataset samples from a list (400a49c1)")
    problem = f"{', '.join(users)} call random.sample() on a set (a TypeError since 3.11)"
    return Finding(True, problem, users)


def apply(finding):
    _hooks.patch_modules(finding.modules, _give_set_sampling_random)


def _give_set_sampling_random(module):
    if getattr(module, "random", None) is random:
        module.random = _RandomWithSetSampling()
