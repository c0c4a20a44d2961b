"""numpy_aliases: NumPy's removed builtin aliases (``np.int`` ...) for the detectron2 modules that
use them.

Problem: NumPy 1.24 removed ``np.bool/int/float/complex/object/str`` (``np.bool`` came back in 2.0
as NumPy's own bool type). v0.6 uses them inside functions, e.g. ``data/build.py:171``
(``print_instances_class_histogram``: the AttributeError is swallowed and the class histogram
silently goes missing from the training log), ``structures/masks.py:33`` (an empty polygon list
to a bitmask), ``data/datasets/pascal_voc.py:35``, ``evaluation/sem_seg_evaluation.py``.

Probe: which aliases this NumPy lacks (``hasattr``, direct), then which detectron2 modules use
those, read from the source of :data:`KNOWN_USERS`. That part has to read source: the names are
looked up only when the functions run, so no attribute tells whether a module uses them; without
the reading the fix would be reported active (and hooked in) on HEAD, which uses none. The files
are a fixed list, not the whole package: reading and scanning all ~170 files cost 50-80 ms of
``apply()`` on this busy 2-core machine, the 7 known files 1-2 ms; the tests check with a full
scan that the list misses no user in the installed detectron2.

Change: in each user module, module-level references to ``numpy`` are replaced by a proxy of
numpy that also has the missing aliases (the builtins they stood for); numpy itself is unchanged.

Upstream: 857d5de2 (``np.bool -> bool``, 2022-12), 027099d3 (``np.int``, 2023-06), 54dd614e
(``np.float``, 2023-06), 654570a2 (``np.str``, 2023-06); HEAD ``data/build.py:173`` says
``dtype=int``, ``structures/masks.py:33`` ``astype(bool)``.
"""

import functools
import types
import warnings

from . import _hooks
from ._base import Finding, uses

__all__ = ["KNOWN_USERS", "USE"]

NAME = "numpy_aliases"
UPSTREAM = (
    "fixed in 857d5de2, 027099d3, 54dd614e, 654570a2 (2022-12 to 2023-06): HEAD uses "
    "bool/int/float/str (e.g. data/build.py:173)"
)

# Every detectron2 file that used one of the aliases in some commit from v0.6 to HEAD 02b5c4e
# (`git log -G'\b(np|numpy)\.(bool|int|float|complex|object|str)\b' v0.6..HEAD -- detectron2/`,
# and a grep of v0.6).
KNOWN_USERS = (
    "data/build.py",
    "data/datasets/pascal_voc.py",
    "evaluation/pascal_voc_evaluation.py",
    "evaluation/sem_seg_evaluation.py",
    "structures/masks.py",
    "utils/video_visualizer.py",
    "utils/visualizer.py",
)
ALIASES = {alias.__name__: alias for alias in (bool, int, float, complex, object, str)}
USE = ("np", r"\b(?:np|numpy)\.(bool|int|float|complex|object|str)\b")


class _NumpyWithAliases(types.ModuleType):
    """numpy, plus the removed builtin aliases — given only to detectron2 modules that use them."""

    def __init__(self, numpy, aliases):
        super().__init__("numpy", numpy.__doc__)
        self._numpy = numpy
        self._aliases = aliases

    def __getattr__(self, name):
        if name in self._aliases:
            return self._aliases[name]
        return getattr(self._numpy, name)

    def __dir__(self):
        return sorted(set(dir(self._numpy)) | set(self._aliases))


def missing_aliases():
    """{name: builtin} of the aliases this NumPy lacks."""
    import numpy

    with warnings.catch_warnings():  # NumPy 1.20-1.23 warn on access
        warnings.simplefilter("ignore")
        return {k: v for k, v in ALIASES.items() if not hasattr(numpy, k)}


def probe(paths=KNOWN_USERS):
    missing = missing_aliases()
    if not missing:
        return Finding(False, "not needed: this NumPy still has np.int, np.float, ...")
    users, used_names = [], set()
    for name, used in uses(paths, *USE).items():
        if set(used) & set(missing):
            users.append(name)
            used_names |= set(used) & set(missing)
    if not users:
        return Finding(False, "not needed: detectron2 no longer uses np.int, np.float, ...")
    names = "/".join(f"np.{n}" for n in sorted(used_names))
    return Finding(True, f"{names} (gone in NumPy 1.24) used by {', '.join(users)}", tuple(users))


def apply(finding):
    # the aliases are used inside functions, so patching after execution is enough
    give = functools.partial(_give_aliases, aliases=missing_aliases())
    _hooks.patch_modules(finding.modules, give)


def _give_aliases(module, aliases):
    import numpy

    for key, value in list(vars(module).items()):
        if value is numpy:
            setattr(module, key, _NumpyWithAliases(numpy, aliases))
