"""An import hook that lets a fix act on one detectron2 module only, while or right after it runs.

:data:`module_hooks` is a ``sys.meta_path`` finder that finds nothing itself: for the module names
it watches, it wraps the loader that the other finders return, so that each hook (a context
manager factory taking the module) runs around that module's code. It is put on ``sys.meta_path``
by the first fix that needs it; on a detectron2 that needs no such fix it is never installed.
"""

import contextlib
import functools
import importlib.abc
import sys

__all__ = ["module_hooks", "on_import", "patch_modules"]


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


module_hooks = _ModuleHooks()


def on_import(module_name, hook):
    """Run ``hook(module)`` (a context manager) around the import of ``module_name``."""
    if module_hooks not in sys.meta_path:
        sys.meta_path.insert(0, module_hooks)
    module_hooks.hooks.setdefault(module_name, []).append(hook)


def patch_modules(module_names, patch):
    """Call ``patch(module)`` for each module: now if it is already imported, else right after
    its import (for fixes of names that the module only uses inside its functions)."""
    for name in module_names:
        if name in sys.modules:
            patch(sys.modules[name])
        else:
            on_import(name, functools.partial(_patch_after_import, patch=patch))


@contextlib.contextmanager
def _patch_after_import(module, patch):
    yield
    patch(module)
