"""
detectron2 compatibility fixes — the only place lip_det adapts detectron2 to its environment.

The package index only carries detectron2's v0.6 release code (``pb1-detectron2``), without its C++
extension, and that code predates NumPy 2, Pillow 10 and setuptools 81. Every fix below detects the
*problem* (a missing module, a missing attribute, a removed name still used in a detectron2 source
file), never a version string, so on upstream detectron2 built from source every check comes out
false and nothing is touched — except the pkg_resources shim, as long as upstream's model_zoo still
imports pkg_resources and setuptools >= 81 is installed, and the MapDataset fix on Python >= 3.11
(upstream's MapDataset still samples from a set). ``python -m lip_det.collect_env`` prints
which fixes are active.

``apply()`` runs once, when ``lip_det`` is imported, and must run before ``detectron2.layers`` is
first imported (``import lip_det`` before other detectron2 imports in your own scripts). Fixes that
concern one detectron2 module act only while that module is being imported (or right after), via
a small import hook that watches exactly those module names; nothing is patched globally except
the ``detectron2._C`` stand-in.

This module imports only the standard library at load time and nothing from lip_det (the tests
load it by file path against a fake detectron2), so keep it that way.
"""

import contextlib
import functools
import importlib
import importlib.abc
import importlib.machinery
import importlib.util
import os
import random
import re
import sys
import types
import warnings
from dataclasses import dataclass

__all__ = [
    "Fix",
    "MissingCExtensionError",
    "MISSING_DETECTRON2",
    "active_fixes",
    "applied_fixes",
    "apply",
    "has_c_extension",
]

MISSING_DETECTRON2 = (
    "lip_det needs detectron2, which is not installed in this Python ({python}).\n"
    "Install it from the lip_det checkout with one of:\n"
    "    make install              # a project venv (.venv) with torch, detectron2 and lip_det\n"
    "    {python} tools/install_detectron2.py   # into this Python, from the package index\n"
    "    {python} -m pip install --no-build-isolation "
    "'git+https://github.com/facebookresearch/detectron2.git'   # upstream source"
)


@dataclass(frozen=True)
class Fix:
    name: str
    active: bool
    problem: str  # one line: what was detected (or why the fix is not needed)
    modules: tuple[str, ...] = ()  # detectron2 modules the fix acts on


_FIXES: list[Fix] = []
_applied = False


# --------------------------------------------------------------------------------------------------
# detectron2._C


class MissingCExtensionError(AttributeError):
    """Raised when code reaches an op of detectron2's C++ extension in a pure-Python install.

    It subclasses AttributeError so that ``hasattr(detectron2._C, ...)`` keeps meaning "absent".
    """


class _MissingCExtension(types.ModuleType):
    """Stands in for ``detectron2._C`` so that importing detectron2 works; using an op fails."""

    def __getattr__(self, name):
        if name.startswith("__"):
            raise AttributeError(name)
        raise MissingCExtensionError(
            f"detectron2._C.{name} is not available: this detectron2 was installed without its C++ "
            "extension (the package-index v0.6 code). Deformable conv, rotated boxes and "
            "detectron2's fast COCOeval need detectron2 built from source: "
            "`make install DETECTRON2_SOURCE=/path/to/detectron2` (see README)."
        )


def has_c_extension() -> bool:
    """True when detectron2's compiled ``_C`` extension is present and imports (not the stand-in).

    Use it to choose code paths that need ``_C``, e.g. ``COCOEvaluator(use_fast_impl=...)``.
    """
    module = sys.modules.get("detectron2._C")
    if module is None:
        if _find_spec("detectron2") is None or _find_spec("detectron2._C") is None:
            return False
        try:
            import torch  # noqa: F401  (the extension links against libtorch)

            module = importlib.import_module("detectron2._C")
        except ImportError:
            return False
    return not isinstance(module, _MissingCExtension)


def _fix_missing_c_extension():
    # Only a *missing* extension gets the stand-in: a present but broken build (e.g. compiled
    # against another torch) must keep failing with its own error.
    if "detectron2._C" in sys.modules or _find_spec("detectron2._C") is not None:
        return None
    stand_in = _MissingCExtension("detectron2._C", "Stand-in for detectron2's C++ extension.")
    stand_in.__spec__ = importlib.machinery.ModuleSpec(
        "detectron2._C", None, origin="stand-in from lip_det.compat"
    )
    sys.modules["detectron2._C"] = stand_in
    import detectron2

    detectron2._C = stand_in
    return True, "detectron2._C missing (no C++ extension): stand-in whose ops raise an error", ()


# --------------------------------------------------------------------------------------------------
# Reading detectron2's sources without importing them


def _find_spec(name):
    try:
        return importlib.util.find_spec(name)
    except (ImportError, ValueError):
        return None


@functools.lru_cache(maxsize=1)
def _detectron2_sources():
    """{module name: source text} of every ``.py`` file of the detectron2 package, read without
    importing anything below ``detectron2`` (whose import may be what a fix has to prepare)."""
    spec = _find_spec("detectron2")
    sources = {}
    for root in (spec.submodule_search_locations or []) if spec else []:
        for dirpath, dirnames, filenames in os.walk(root):
            dirnames[:] = sorted(d for d in dirnames if d not in ("__pycache__", "configs"))
            for filename in sorted(filenames):
                if not filename.endswith(".py"):
                    continue
                path = os.path.join(dirpath, filename)
                parts = os.path.relpath(path, root)[: -len(".py")].split(os.sep)
                if parts[-1] == "__init__":
                    parts.pop()
                name = ".".join(["detectron2", *parts])
                with open(path, encoding="utf-8", errors="replace") as f:
                    sources.setdefault(name, f.read())
    return sources


def _uses(needle, pattern):
    """{module name: matches} for the detectron2 modules whose code, comments aside, matches
    the regex ``pattern`` (its groups, if any, are what is reported); ``needle`` is a substring
    that every match contains (a cheap pre-filter: most files never match)."""
    found = {}
    pattern = re.compile(pattern, re.M)
    for name, source in _detectron2_sources().items():
        if needle not in source:
            continue
        code = "\n".join(line.split("#", 1)[0] for line in source.splitlines())
        matches = pattern.findall(code)
        if matches:
            found[name] = matches
    return found


# --------------------------------------------------------------------------------------------------
# Import hook: run a context manager around the execution of a few named modules


class _HookedLoader(importlib.abc.Loader):
    def __init__(self, loader, hooks):
        self._loader = loader
        self._hooks = hooks

    def create_module(self, spec):
        return self._loader.create_module(spec)

    def exec_module(self, module):
        # Hand the real loader back to the module (get_source, resource readers, reload).
        module.__loader__ = self._loader
        if module.__spec__ is not None:
            module.__spec__.loader = self._loader
        with contextlib.ExitStack() as stack:
            for hook in self._hooks:
                stack.enter_context(hook(module))
            self._loader.exec_module(module)


class _ModuleHooks(importlib.abc.MetaPathFinder):
    """Finds nothing itself: for the watched module names it wraps the loader that the other
    finders return, so that each hook (a context manager factory) runs around the module's code."""

    def __init__(self):
        self.hooks = {}  # module name -> [hook, ...]

    def find_spec(self, fullname, path=None, target=None):
        hooks = self.hooks.get(fullname)
        if not hooks:
            return None
        for finder in sys.meta_path:
            if finder is self or not hasattr(finder, "find_spec"):
                continue
            spec = finder.find_spec(fullname, path, target)
            if spec is not None:
                break
        else:
            return None
        if spec.loader is not None and hasattr(spec.loader, "exec_module"):
            spec.loader = _HookedLoader(spec.loader, list(hooks))
        return spec


_module_hooks = _ModuleHooks()


def _on_import(module_name, hook):
    """Run ``hook(module)`` (a context manager) around the import of ``module_name``."""
    if _module_hooks not in sys.meta_path:
        sys.meta_path.insert(0, _module_hooks)
    _module_hooks.hooks.setdefault(module_name, []).append(hook)


def _patch_modules(module_names, patch):
    """Call ``patch(module)`` for each module: now if it is already imported, else right after
    its import (for fixes of names that the module only uses inside its functions)."""
    for name in module_names:
        if name in sys.modules:
            patch(sys.modules[name])
        else:
            _on_import(name, functools.partial(_patch_after_import, patch=patch))


@contextlib.contextmanager
def _patch_after_import(module, patch):
    yield
    patch(module)


# --------------------------------------------------------------------------------------------------
# PIL.Image.LINEAR


def _fix_pil_linear():
    # detectron2's ExtentTransform uses Image.LINEAR as a default argument, evaluated at import;
    # Pillow >= 10 removed that alias of BILINEAR. Provide it only while that module executes.
    from PIL import Image

    if hasattr(Image, "LINEAR"):
        return None
    users = list(_uses("Image.LINEAR", r"\bImage\.LINEAR\b"))
    if not users:
        return None
    for name in users:
        _on_import(name, _pil_linear_alias)
    return True, f"PIL.Image.LINEAR (gone in Pillow 10) used by {', '.join(users)}", users


@contextlib.contextmanager
def _pil_linear_alias(module):
    from PIL import Image

    Image.LINEAR = Image.BILINEAR
    try:
        yield
    finally:
        del Image.LINEAR


# --------------------------------------------------------------------------------------------------
# pkg_resources


def _fix_pkg_resources():
    # detectron2.model_zoo imports pkg_resources (dropped from setuptools 81) for one call,
    # resource_filename. Give the modules that import it a private shim, not a global one.
    if _find_spec("pkg_resources") is not None:
        return None
    users = list(_uses("pkg_resources", r"^[ \t]*(?:import|from) pkg_resources\b"))
    if not users:
        return None
    used = set().union(*_uses("pkg_resources.", r"\bpkg_resources\.(\w+)").values())
    unsupported = used - set(_PkgResourcesShim.provides)
    if unsupported:  # no half-working shim: leave the ModuleNotFoundError and say why
        names = ", ".join(f"pkg_resources.{n}" for n in sorted(unsupported))
        return False, f"pkg_resources missing and detectron2 uses {names} (not shimmed)", users
    for name in users:
        _on_import(name, _pkg_resources_shim)
    return True, f"pkg_resources (gone in setuptools 81) imported by {', '.join(users)}", users


class _PkgResourcesShim(types.ModuleType):
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


@contextlib.contextmanager
def _pkg_resources_shim(module):
    shim = _PkgResourcesShim("pkg_resources", "lip_det.compat shim for pkg_resources.")
    sys.modules["pkg_resources"] = shim
    try:
        yield
    finally:
        if sys.modules.get("pkg_resources") is shim:
            del sys.modules["pkg_resources"]


# --------------------------------------------------------------------------------------------------
# NumPy aliases of builtins, removed in NumPy 1.24 (np.bool came back in 2.0 as NumPy's bool type)

_NUMPY_ALIASES = {alias.__name__: alias for alias in (bool, int, float, complex, object, str)}
_NUMPY_ALIAS_RE = r"\b(?:np|numpy)\.(bool|int|float|complex|object|str)\b"


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


def _fix_numpy_aliases():
    import numpy

    with warnings.catch_warnings():  # NumPy 1.20-1.23 warn on access
        warnings.simplefilter("ignore")
        missing = {k: v for k, v in _NUMPY_ALIASES.items() if not hasattr(numpy, k)}
    if not missing:
        return None
    users, used_names = [], set()
    for name, used in _uses("np", _NUMPY_ALIAS_RE).items():
        if set(used) & set(missing):
            users.append(name)
            used_names |= set(used) & set(missing)
    if not users:
        return None
    # the aliases are used inside functions, so patching after execution is enough
    _patch_modules(users, functools.partial(_give_numpy_aliases, aliases=missing))
    names = "/".join(f"np.{n}" for n in sorted(used_names))
    return True, f"{names} (gone in NumPy 1.24) used by {', '.join(users)}", users


def _give_numpy_aliases(module, aliases):
    import numpy

    for key, value in list(vars(module).items()):
        if value is numpy:
            setattr(module, key, _NumpyWithAliases(numpy, aliases))


# --------------------------------------------------------------------------------------------------
# MapDataset's retry after a mapper returned None: random.sample() of a set


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


def _fix_sample_from_set():
    # detectron2's MapDataset (v0.6 and HEAD) skips an item whose mapper returned None by drawing
    # another index with self._rng.sample(<a set>, k=1). Python >= 3.11 refuses sets there, so
    # the documented way to skip an item (lip_det's mapper, for unreadable images) crashes the
    # data loader with "TypeError: Population must be a sequence".
    try:
        random.Random().sample({0}, 1)
        return None
    except TypeError:
        pass
    users = list(_uses("_fallback_candidates", r"\.sample\(\s*self\._fallback_candidates\b"))
    if not users:
        return None
    _patch_modules(users, _give_set_sampling_random)  # random.Random is looked up per MapDataset
    return True, f"{', '.join(users)} call random.sample() on a set (a TypeError since 3.11)", users


def _give_set_sampling_random(module):
    if getattr(module, "random", None) is random:
        module.random = _RandomWithSetSampling()


# --------------------------------------------------------------------------------------------------
# detectron2's environment report with the _C stand-in


def _fix_env_report_with_stand_in():
    # detectron2.utils.collect_env.collect_env_info() (logged by default_setup) reports "_C not
    # built" when `import detectron2._C` fails, but the stand-in makes it succeed, and it then
    # calls _C.get_compiler_version(), which raises. Hide the stand-in while it runs, so that it
    # takes its own "not built" path. (Nothing else should import _C during that call.)
    if not isinstance(sys.modules.get("detectron2._C"), _MissingCExtension):
        return None
    users = list(_uses("_C.get_compiler_version", r"\b_C\.get_compiler_version\b"))
    if not users:
        return None
    # (too late for modules that already imported collect_env_info by name)
    _patch_modules(users, _wrap_collect_env_info)
    return True, f"{', '.join(users)} calls _C.get_compiler_version() once _C imports", users


def _wrap_collect_env_info(module):
    function = getattr(module, "collect_env_info", None)
    if callable(function) and not hasattr(function, "__wrapped__"):
        module.collect_env_info = _without_stand_in(function)


def _without_stand_in(function):
    @functools.wraps(function)
    def wrapper(*args, **kwargs):
        import detectron2

        stand_in = sys.modules.get("detectron2._C")
        if not isinstance(stand_in, _MissingCExtension):
            return function(*args, **kwargs)
        del sys.modules["detectron2._C"]
        vars(detectron2).pop("_C", None)
        try:
            return function(*args, **kwargs)
        finally:
            sys.modules["detectron2._C"] = stand_in
            detectron2._C = stand_in

    return wrapper


# --------------------------------------------------------------------------------------------------
# create_ddp_model on CPU models


def _fix_ddp_device_ids_on_cpu():
    # detectron2's create_ddp_model (v0.6 and HEAD) gives DistributedDataParallel
    # device_ids=[local rank]: right for a model on one GPU, refused by DDP for a CPU model, which
    # needs device_ids=None. No attribute tells this apart, so the source is read (one regex over
    # one file, cached with the other scans).
    users = list(_uses("device_ids", r"\[.device_ids.\]\s*=\s*\[\s*comm\.get_local_rank\(\)"))
    if "detectron2.engine.defaults" not in users:
        return None
    _patch_modules(["detectron2.engine.defaults"], _wrap_create_ddp_model)
    return True, "create_ddp_model passes device_ids=[local rank], refused for CPU models", users


def _wrap_create_ddp_model(module):
    function = getattr(module, "create_ddp_model", None)
    if callable(function) and not hasattr(function, "__wrapped__"):

        @functools.wraps(function)
        def create_ddp_model(model, **kwargs):
            parameter = next(model.parameters(), None)
            if parameter is not None and parameter.device.type == "cpu":
                kwargs.setdefault("device_ids", None)
            return function(model, **kwargs)

        module.create_ddp_model = create_ddp_model


# --------------------------------------------------------------------------------------------------
# DefaultTrainer.state_dict (the optimizer in checkpoints)


def _fix_trainer_state():
    # v0.6's DefaultTrainer has no state_dict/load_state_dict, so its checkpoints hold only the
    # iteration and hook states, not its SimpleTrainer's (the optimizer, AMP's grad scaler): a
    # resumed run restarts SGD momentum. Upstream (detectron2 commit 0e7e8b8, 2021-11) adds
    # them; these are the same two methods. The probe reads the class's method names from the
    # source (ast), because importing detectron2.engine on `import lip_det` would cost a second
    # and must wait for the other fixes; the patch checks the class itself again.
    source = _detectron2_sources().get("detectron2.engine.defaults")
    if source is None or _class_defines(source, "DefaultTrainer", "state_dict"):
        return None
    _patch_modules(["detectron2.engine.defaults"], _give_trainer_state)
    users = ["detectron2.engine.defaults"]
    return True, "DefaultTrainer has no state_dict: checkpoints lack the optimizer", users


def _class_defines(source, class_name, method_name):
    import ast

    for node in ast.parse(source).body:
        if isinstance(node, ast.ClassDef) and node.name == class_name:
            return any(
                isinstance(item, ast.FunctionDef) and item.name == method_name for item in node.body
            )
    return False


def _give_trainer_state(module):
    trainer = getattr(module, "DefaultTrainer", None)
    if trainer is None or "state_dict" in vars(trainer):
        return
    base = trainer.__mro__[1]  # TrainerBase

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


_FIX_FUNCTIONS = (
    ("missing_c_extension", _fix_missing_c_extension),
    ("pil_image_linear", _fix_pil_linear),
    ("pkg_resources", _fix_pkg_resources),
    ("numpy_aliases", _fix_numpy_aliases),
    ("env_report_with_stand_in", _fix_env_report_with_stand_in),  # after missing_c_extension
    ("map_dataset_sample_from_set", _fix_sample_from_set),
    ("ddp_device_ids_on_cpu", _fix_ddp_device_ids_on_cpu),
    ("trainer_state", _fix_trainer_state),
)


def apply():
    """Apply every fix whose problem is detected (idempotent); returns the :class:`Fix` records.

    Raises ImportError with install instructions when detectron2 is not installed.
    """
    global _applied
    if _applied:
        return list(_FIXES)
    if _find_spec("detectron2") is None:
        raise ImportError(MISSING_DETECTRON2.format(python=sys.executable))
    fixes = []
    for name, fn in _FIX_FUNCTIONS:
        result = fn()  # None when the problem is absent, else (active, problem, modules)
        if result is None:
            fixes.append(Fix(name, False, "not needed"))
        else:
            active, problem, modules = result
            fixes.append(Fix(name, active, problem, tuple(modules)))
    _FIXES[:] = fixes
    _applied = True
    return list(_FIXES)


def applied_fixes():
    """Every :class:`Fix` record, active or not (empty before :func:`apply`)."""
    return list(_FIXES)


def active_fixes():
    """The :class:`Fix` records of the fixes that are active in this process."""
    return [fix for fix in _FIXES if fix.active]
