"""ddp_device_ids_on_cpu: detectron2's ``create_ddp_model`` for a model on the CPU.

Problem: ``engine/defaults.py:72-73`` (v0.6 and HEAD alike) gives DistributedDataParallel
``device_ids=[comm.get_local_rank()]`` unless the caller passes some: right for a model on one
GPU, refused by DDP for a CPU model (ValueError "device_ids ... only work with single-device/
multiple-device GPU modules or CPU modules"), which needs ``device_ids=None``. So
``DefaultTrainer`` cannot train on several CPU processes (lip_det's gloo launcher).

Probe: that assignment, read from the source of ``engine/defaults.py``. It has to be read: the
function's signature is the same with and without the problem, only its body shows it, and
importing ``detectron2.engine`` inside ``apply()`` to read the function would cost more than
reading the file (~30 ms wall more for ``import lip_det`` on HEAD, against < 0.5 ms) and make
``import lip_det`` import detectron2's engine, evaluation and solver packages too.

Change: ``detectron2.engine.defaults.create_ddp_model`` (wrapped right after that module's import,
before ``detectron2.engine`` re-exports it) passes ``device_ids=None`` for a model whose parameters
are on the CPU, unless the caller gave ``device_ids``.

Upstream: HEAD needs this fix too: ``engine/defaults.py:72-73``, unchanged since
``create_ddp_model`` was added (57fe696f, 2021-04-12).
"""

import functools

from . import _hooks
from ._base import Finding, uses

__all__ = ["KNOWN_USERS", "USE"]

NAME = "ddp_device_ids_on_cpu"
UPSTREAM = "HEAD needs it too: engine/defaults.py:72-73 sets device_ids=[comm.get_local_rank()]"

KNOWN_USERS = ("engine/defaults.py",)
USE = ("device_ids", r"\[.device_ids.\]\s*=\s*\[\s*comm\.get_local_rank\(\)")
MODULE = "detectron2.engine.defaults"


def probe():
    if MODULE not in uses(KNOWN_USERS, *USE):
        return Finding(False, "not needed: create_ddp_model leaves device_ids to the caller")
    problem = "create_ddp_model passes device_ids=[local rank], refused for CPU models (HEAD too)"
    return Finding(True, problem, (MODULE,))


def apply(finding):
    _hooks.patch_modules(finding.modules, _wrap_create_ddp_model)


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
