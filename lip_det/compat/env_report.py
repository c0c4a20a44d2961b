"""env_report_with_stand_in: detectron2's environment report while ``_C`` is lip_det's stand-in.

Problem: ``utils/collect_env.py`` (``collect_env_info``, logged by ``default_setup``) reports "_C
not built" when ``import detectron2._C`` fails, but with the stand-in of :mod:`.c_extension` that
import succeeds, and the function goes on to call ``_C.get_compiler_version()`` (v0.6 line 118),
which raises.

Probe: the stand-in is installed (direct), then whether ``utils/collect_env.py`` calls
``_C.get_compiler_version``, read from that one file's source: the call is inside the function,
so no attribute shows it short of running the report.

Change: ``detectron2.utils.collect_env.collect_env_info`` (wrapped now or right after that module's
import) hides the stand-in while it runs, so that it takes its own "not built" path. (Too late for
modules that imported the function by name before ``import lip_det``.)

Upstream: HEAD still calls it (``utils/collect_env.py:124``), but a source install of HEAD has the
compiled ``_C``, so there is no stand-in and this fix is inactive.
"""

import functools
import sys

from . import _hooks
from ._base import Finding, uses
from .c_extension import stand_in_installed

__all__ = ["KNOWN_USERS", "USE"]

NAME = "env_report_with_stand_in"
UPSTREAM = "HEAD has the compiled _C (utils/collect_env.py:124 calls _C.get_compiler_version)"

KNOWN_USERS = ("utils/collect_env.py",)
USE = ("_C.get_compiler_version", r"\b_C\.get_compiler_version\b")


def probe():
    if not stand_in_installed():
        return Finding(False, "not needed: no _C stand-in (detectron2._C is the real extension)")
    users = tuple(uses(KNOWN_USERS, *USE))
    if not users:
        return Finding(False, "not needed: detectron2's report does not call _C")
    return Finding(
        True, f"{', '.join(users)} calls _C.get_compiler_version() once _C imports", users
    )


def apply(finding):
    _hooks.patch_modules(finding.modules, _wrap_collect_env_info)


def _wrap_collect_env_info(module):
    function = getattr(module, "collect_env_info", None)
    if callable(function) and not hasattr(function, "__wrapped__"):
        module.collect_env_info = _without_stand_in(function)


def _without_stand_in(function):
    @functools.wraps(function)
    def collect_env_info(*args, **kwargs):
        import detectron2

        stand_in = sys.modules.get("detectron2._C")
        if not stand_in_installed():
            return function(*args, **kwargs)
        del sys.modules["detectron2._C"]
        vars(detectron2).pop("_C", None)
        try:
            return function(*args, **kwargs)
        finally:
            sys.modules["detectron2._C"] = stand_in
            detectron2._C = stand_in

    return collect_env_info
