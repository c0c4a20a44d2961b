"""pkg_resources: a private ``pkg_resources`` for detectron2's model zoo when setuptools has none.

Problem: setuptools 81 dropped ``pkg_resources``; ``model_zoo/model_zoo.py:4`` imports it (v0.6
and HEAD alike) for one call, ``pkg_resources.resource_filename`` (HEAD line 139), so ``import
detectron2.model_zoo`` fails with ModuleNotFoundError.

Probe: ``importlib.util.find_spec("pkg_resources")`` is None (direct), then whether detectron2
imports it and which of its names it uses, read from the source of :data:`KNOWN_USERS`. That part
has to read source: only importing the module would show the import, and that import is what
fails; without it the fix would claim a user on a detectron2 that has dropped pkg_resources.
When detectron2 uses a name the shim lacks, the fix stays inactive and says so: no half-working
shim.

Change: while those modules execute (and only then), ``sys.modules["pkg_resources"]`` is
:class:`Shim`, which has ``resource_filename`` (on ``importlib.resources``); the module keeps its
reference, no other import sees the shim.

Upstream: HEAD needs this fix too (with setuptools >= 81): ``model_zoo/model_zoo.py:4`` still
imports pkg_resources (since 60ee6b2c, 2019, the model-zoo API).
"""

import contextlib
import sys
import types

from . import _hooks
from ._base import Finding, find_spec, uses

__all__ = ["KNOWN_USERS", "USE", "Shim"]

NAME = "pkg_resources"
UPSTREAM = "HEAD needs it too: model_zoo/model_zoo.py:4 imports pkg_resources (line 139 uses it)"

# Every detectron2 file that mentioned pkg_resources in some commit from v0.6 to HEAD 02b5c4e
# (`git log -G'pkg_resources' v0.6..HEAD -- detectron2/`, and a grep of v0.6).
KNOWN_USERS = ("model_zoo/model_zoo.py",)
USE = ("pkg_resources", r"^[ \t]*(?:import|from) pkg_resources\b")


class Shim(types.ModuleType):
    provides = ("resource_filename",)

    @staticmethod
    def resource_filename(package, resource):
        from importlib.resources import files

        return str(files(package).joinpath(resource))

    def __getattr__(self, name):
        # Anything else imported while the shim is in place gets a clear answer, not a riddle.
        if name.startswith("__"):
            raise AttributeError(name)
        raise AttributeError(
            f"pkg_resources.{name}: setuptools >= 81 has no pkg_resources, and lip_det's shim "
            "(for detectron2.model_zoo) only has resource_filename"
        )


def probe():
    if find_spec("pkg_resources") is not None:
        return Finding(
            False,
            "not needed: pkg_resources is importable (setuptools < 81); HEAD needs this fix "
            "with setuptools >= 81",
        )
    users = tuple(uses(KNOWN_USERS, *USE))
    if not users:
        return Finding(False, "not needed: detectron2 does not import pkg_resources")
    used = set().union(*uses(KNOWN_USERS, "pkg_resources.", r"\bpkg_resources\.(\w+)").values())
    unsupported = used - set(Shim.provides)
    if unsupported:
        names = ", ".join(f"pkg_resources.{n}" for n in sorted(unsupported))
        problem = f"pkg_resources missing and detectron2 uses {names} (not shimmed; HEAD too)"
        return Finding(False, problem)
    problem = f"pkg_resources (gone in setuptools 81) imported by {', '.join(users)} (HEAD too)"
    return Finding(True, problem, users)


def apply(finding):
    for name in finding.modules:
        _hooks.on_import(name, _shim_while_importing)


@contextlib.contextmanager
def _shim_while_importing(module):
    shim = Shim("pkg_resources", "lip_det.compat shim for pkg_resources.")
    sys.modules["pkg_resources"] = shim
    try:
        yield
    finally:
        if sys.modules.get("pkg_resources") is shim:
            del sys.modules["pkg_resources"]
