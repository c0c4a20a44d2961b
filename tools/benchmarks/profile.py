"""Profile: where LIP-R{depth}-FPN's time goes compared with R{depth}-FPN.

torch.profiler self time (CPU; device time on CUDA) of a train step and of inference, grouped by
the part of the model that ran it: labelled module calls (``bench::`` record_function scopes
opened by forward hooks) give the region, the op name whether it is a conv or a norm.
"""

import contextlib

import torch

from lip_det.layers import LIP, BottleneckTrunk, ConvLogit
from lip_det.utils.benchmark import quiet_profiler

from .common import synchronize
from .models import IMAGE_SIZE, build_detectors, model_names

__all__ = ["GROUP_NAMES", "profile_models"]

_CONV_OPS = {"aten::conv2d", "aten::convolution", "aten::_convolution"}
_NORM_OPS = {"aten::instance_norm", "aten::batch_norm", "aten::group_norm", "aten::layer_norm"}
_LABEL = "bench::"
# (region, op kind) -> row of the summary; regions are labelled module calls, innermost wins.
_GROUPS = {
    ("lip2d", None): "LIP: lip2d op",
    ("logit", "conv"): "LIP: logit-module convs",
    ("logit", "norm"): "LIP: logit-module InstanceNorm",
    ("logit", None): "LIP: logit-module other (ReLU, gate)",
    ("bottom_up", "conv"): "bottom-up convs (non-LIP)",
    ("bottom_up", None): "bottom-up other (FrozenBN, ReLU, add, pool)",
    ("fpn", None): "FPN",
    ("rpn", None): "RPN",
    ("roi_heads", None): "ROI heads",
    ("optimizer", None): "optimizer step",
    (None, None): "other (preprocessing, loss sum, autograd engine)",
}
GROUP_NAMES = tuple(dict.fromkeys(_GROUPS.values()))


def _group(region, kind):
    return _GROUPS.get((region, kind)) or _GROUPS[(region, None)]


def _regions(model):
    """Modules whose calls get a profiler label: module -> region name."""
    regions = {
        model.backbone: "fpn",
        model.backbone.bottom_up: "bottom_up",
        model.proposal_generator: "rpn",
        model.roi_heads: "roi_heads",
    }
    for m in model.backbone.bottom_up.modules():
        if isinstance(m, LIP):
            regions[m] = "lip2d"  # its logit module is labelled "logit" inside it
        elif isinstance(m, (ConvLogit, BottleneckTrunk)):
            regions[m] = "logit"
    return regions


@contextlib.contextmanager
def _labelled_calls(regions):
    stack, handles = [], []

    def enter(label):
        def hook(module, args):
            scope = torch.profiler.record_function(_LABEL + label)
            scope.__enter__()
            stack.append(scope)

        return hook

    def leave(module, args, output):
        stack.pop().__exit__(None, None, None)

    for module, label in regions.items():
        handles.append(module.register_forward_pre_hook(enter(label)))
        handles.append(module.register_forward_hook(leave))
    try:
        yield
    finally:
        for h in handles:
            h.remove()


def _classify_forward(event):
    """(region, kind) of a forward-pass op: the innermost label above it, and whether it is
    (inside) a conv or a norm."""
    kind = None
    while event is not None:
        if event.name.startswith(_LABEL):
            return event.name[len(_LABEL) :], kind
        if kind is None and event.name in _CONV_OPS:
            kind = "conv"
        elif kind is None and event.name in _NORM_OPS:
            kind = "norm"
        event = event.cpu_parent
    return None, kind


def _grouped_self_times(events, device):
    """Self time (ms) per summary group, and per op name with the group holding most of it.

    Backward ops are charged to the forward op that created their autograd node (matched by
    sequence number), so a logit conv's backward lands in "logit-module convs".
    """
    attr = "self_device_time_total" if device.type == "cuda" else "self_cpu_time_total"
    events = sorted((e for e in events if e.name != "[memory]"), key=lambda e: e.time_range.start)
    # Every op records the sequence number the next autograd node will get, so ops that create
    # no node share it with the next one that does; that one is the last to record it.
    by_sequence = {}
    for e in events:
        if e.sequence_nr >= 0 and not _in_backward(e):
            by_sequence[e.sequence_nr] = _classify_forward(e)
    groups = dict.fromkeys(GROUP_NAMES, 0.0)
    ops = {}
    for e in events:
        node = _backward_node(e)
        if node is None:
            region, kind = _classify_forward(e)
        elif "lip2d" in node.name.lower():  # custom autograd Functions record no forward op
            region, kind = "lip2d", None
        else:
            region, kind = by_sequence.get(node.sequence_nr, (None, None))
        group = _group(region, kind)
        ms = getattr(e, attr) / 1e3
        groups[group] += ms
        entry = ops.setdefault(e.name, {"self_ms": 0.0, "calls": 0, "by_group": {}})
        entry["self_ms"] += ms
        entry["calls"] += 1
        entry["by_group"][group] = entry["by_group"].get(group, 0.0) + ms
    return groups, ops


_BACKWARD_PREFIX = "autograd::engine::evaluate_function: "


def _backward_node(event):
    while event is not None:
        if event.name.startswith(_BACKWARD_PREFIX):
            return event
        event = event.cpu_parent
    return None


def _in_backward(event):
    return _backward_node(event) is not None


def _profile(fn, model, device, steps):
    activities = [torch.profiler.ProfilerActivity.CPU]
    if device.type == "cuda":
        activities.append(torch.profiler.ProfilerActivity.CUDA)
    fn()  # warm: first calls allocate optimizer state and caches
    with _labelled_calls(_regions(model)), quiet_profiler(activities=activities) as prof:
        for _ in range(steps):
            fn()
        synchronize(device)
    groups, ops = _grouped_self_times(prof.events(), device)
    total = sum(groups.values())
    top = sorted(ops.items(), key=lambda kv: -kv[1]["self_ms"])
    return {
        "total_ms": total / steps,
        "groups_ms": {g: v / steps for g, v in groups.items()},
        "top_ops": [
            {
                "op": name,
                "self_ms": v["self_ms"] / steps,
                "calls": v["calls"] // steps,
                "group": max(v["by_group"], key=v["by_group"].get),
            }
            for name, v in top[:25]
        ],
    }


def profile_models(depth, *, device="cpu", image_size=IMAGE_SIZE, steps=2, light_heads=False,
                   log=print):  # fmt: skip
    """Where LIP-R{depth}-FPN's time goes compared with R{depth}-FPN, for a train step and for
    inference: torch.profiler self time (CPU; device time on CUDA) per group of ops, averaged
    over ``steps`` calls after one warm-up call."""
    device = torch.device(device)
    detectors = build_detectors(depth, device, image_size, light_heads)
    lip_name, plain_name = model_names(depth)
    out = {"depth": depth, "image_size": list(image_size), "steps": steps}
    for kind in ("train_step", "inference"):
        out[kind] = {}
        for name, det in detectors.items():
            out[kind][name] = _profile(getattr(det, kind), det.model, device, steps)
            log(f"  profiled {name} {kind}: {out[kind][name]['total_ms']:.0f} ms of self time")
    out["lip_model"], out["plain_model"] = lip_name, plain_name
    return out
