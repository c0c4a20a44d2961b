"""export_without_caffe2: ``detectron2.export`` without caffe2, as upstream HEAD's imports.

Problem: v0.6's ``export/__init__.py:3`` starts with ``from .api import *``, and
``export/api.py:6`` imports ``caffe2.proto.caffe2_pb2``, which no torch ships any more. So ``import
detectron2.export`` fails with ModuleNotFoundError, and with it ``detectron2.utils.analysis``
(``utils/analysis.py:10`` imports ``TracingAdapter`` from it: ``FlopCountAnalysis``, detectron2's
tools/analyze_model.py) and detectron2's tools/deploy/export_model.py.

Probe: whether caffe2 is importable (``find_spec``, direct), then whether ``export/__init__.py``
imports ``.api`` unconditionally (at its top level) and ``export/api.py`` imports caffe2, read
from those two files' source. That part has to read source: the import is what fails, so only
executing the package (the import this fix prepares) would show it; without it the fix would be
reported active on every detectron2 without caffe2, HEAD included. A caffe2 that is there but
fails to import (say, against another protobuf) is left to fail with its own error.

Change: around the execution of ``detectron2.export`` (and only then): when its code fails with an
ImportError of a ``caffe2`` module, the error is suppressed and the package gets what HEAD's
``__init__`` has without caffe2: ``TracingAdapter`` (``export/flatten.py``),
``scripting_with_instances`` and ``dump_torchscript_IR`` (``export/torchscript.py``),
``STABLE_ONNX_OPSET_VERSION = 11`` and ``add_export_config`` as a no-op with a DeprecationWarning,
and an ``__all__`` made as HEAD makes it (its public names, submodules included). The caffe2 API
(``Caffe2Tracer``, ``Caffe2Model``) stays missing, as on HEAD without caffe2.

Upstream: d29378aa ("deprecate some more caffe2 stuff", 2021-11-22, a month after v0.6) made
caffe2 optional; 48b598b4 (PR #4291, "Add support for ONNX-only", 2022-07-15) put the flatten and
torchscript imports first and added ``STABLE_ONNX_OPSET_VERSION`` and ``add_export_config`` (a
deprecated no-op) outside the caffe2 branch; HEAD's ``export/__init__.py:8-16`` imports ``.api``
only if caffe2 imports.
"""

import contextlib
import importlib
import warnings

from . import _hooks
from ._base import Finding, find_spec, uses

__all__ = ["CAFFE2_USE", "KNOWN_USERS", "STABLE_ONNX_OPSET_VERSION", "USE", "add_export_config"]

NAME = "export_without_caffe2"
UPSTREAM = "fixed in d29378aa (2021-11) and 48b598b4 (2022-07): HEAD export/__init__.py:8-16"

# Every detectron2 file that imported .api at its top level in some commit from v0.6 to HEAD
# 02b5c4e (`git log -G'^from \.api import' v0.6..HEAD -- detectron2/`, and a grep of v0.6).
KNOWN_USERS = ("export/__init__.py",)
USE = ("from .api import", r"^from \.api import\b")  # (unindented: not under HEAD's try/else)
API = "export/api.py"
CAFFE2_USE = ("caffe2", r"^(?:from|import) caffe2\b")
MODULE = "detectron2.export"

# as in HEAD's export/__init__.py:20 (detectron2's own export tool uses it)
STABLE_ONNX_OPSET_VERSION = 11


def add_export_config(cfg):
    """HEAD's ``detectron2.export.add_export_config`` (48b598b4): a deprecated no-op."""
    warnings.warn(
        "add_export_config has been deprecated and behaves as no-op function.",
        DeprecationWarning,
        stacklevel=2,
    )
    return cfg


def caffe2_missing():
    """True when ``caffe2.proto.caffe2_pb2`` (what ``export/api.py`` imports) cannot be found."""
    return find_spec("caffe2") is None or find_spec("caffe2.proto.caffe2_pb2") is None


def probe():
    if not caffe2_missing():
        return Finding(False, "not needed: caffe2 is importable (and so detectron2.export.api)")
    users = tuple(uses(KNOWN_USERS, *USE))
    if not users:
        return Finding(
            False, "not needed: detectron2.export imports caffe2 only if it is there (d29378aa)"
        )
    if not uses((API,), *CAFFE2_USE):
        return Finding(False, "not needed: detectron2/export/api.py does not import caffe2")
    problem = (
        f"{', '.join(users)} imports caffe2 (its api) unconditionally: no TracingAdapter, "
        "no detectron2.utils.analysis"
    )
    return Finding(True, problem, (MODULE,))


def apply(finding):
    for name in finding.modules:
        _hooks.on_import(name, _without_caffe2)


def _is_about_caffe2(error):
    return isinstance(error, ImportError) and (error.name or "").split(".")[0] == "caffe2"


@contextlib.contextmanager
def _without_caffe2(module):
    try:
        yield
    except ImportError as error:
        if not _is_about_caffe2(error):
            raise
        _give_what_head_has(module)


def _give_what_head_has(module):
    # The package is in sys.modules while it executes, so its submodules import as usual.
    package = module.__name__
    flatten = importlib.import_module(f"{package}.flatten")
    torchscript = importlib.import_module(f"{package}.torchscript")
    module.TracingAdapter = flatten.TracingAdapter
    module.dump_torchscript_IR = torchscript.dump_torchscript_IR
    module.scripting_with_instances = torchscript.scripting_with_instances
    module.STABLE_ONNX_OPSET_VERSION = STABLE_ONNX_OPSET_VERSION
    module.add_export_config = add_export_config
    # as HEAD's (export/__init__.py:30): every public global, the imported submodules too
    module.__all__ = [k for k in vars(module) if not k.startswith("_")]
