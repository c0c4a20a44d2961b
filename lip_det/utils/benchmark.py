"""Measuring primitives: interleaved timing, peak memory, bytes saved for backward.

- :func:`time_interleaved` times several callables in interleaved rounds (each round runs each
  of them once, in an order rotated by one each round), so that all of them see the same machine
  load; :func:`median_ratio` (the median over rounds of the per-round ratio) and
  :func:`fastest_ratio` compare them side by side, and slow drifts in load cancel.
- :func:`peak_memory_bytes`: bytes allocated while a call runs above what was allocated when it
  started. On CUDA ``torch.cuda.max_memory_allocated``; on CPU, which keeps no allocator
  statistics, the allocation and free events ``torch.profiler`` records
  (``profile_memory=True``), replayed in time order.
- :func:`saved_tensor_bytes`: the bytes of the distinct storages autograd keeps for the backward
  pass (``torch.autograd.graph.saved_tensors_hooks``); :func:`saved_tensor_bytes_by_module` the
  same, split by the module whose forward saved them.
- :func:`quiet_profiler`: ``torch.profiler.profile`` without kineto's start and stop notices.

``tools/benchmark.py`` measures lip2d and LIP detectors with them.
"""

import contextlib
import gc
import os
import statistics
import sys
import time
import timeit

import torch
from torch.utils import benchmark as torch_benchmark

__all__ = [
    "fastest_ratio",
    "median_ratio",
    "peak_memory_bytes",
    "quiet_profiler",
    "saved_tensor_bytes",
    "saved_tensor_bytes_by_module",
    "time_interleaved",
]


def _clock(device):
    """A ``perf_counter`` that first waits for ``device``'s queued work (CUDA)."""
    if device.type != "cuda":
        return time.perf_counter

    def clock():
        torch.cuda.synchronize(device)
        return time.perf_counter()

    return clock


def time_interleaved(fns, *, rounds, device, warmup=1, min_sample_s=0.0, on_round=None):
    """Seconds per call of each callable in ``fns`` (a dict), one sample per round.

    Each round takes one sample of every callable, in an order rotated by one each round, so that
    all of them see the same machine load. With ``min_sample_s`` 0 a sample is exactly one call
    (what a multi-second train step needs). Otherwise it is ``torch.utils.benchmark.Timer``'s
    ``blocked_autorange(min_run_time=min_sample_s)``: blocks of calls, their number picked by the
    Timer, that together last at least ``min_sample_s``, the sample being their median time per
    call. Every callable is first called ``warmup`` times; the clock waits for ``device``'s queued
    work (CUDA) before every reading, and, as ``timeit`` does, garbage collection is off while a
    sample is timed. ``on_round(index, {name: seconds})`` is called after each round.

    Returns:
        {name: [seconds per call, one per round]}
    """
    device = torch.device(device)
    clock = _clock(device)
    names = list(fns)
    for name in names:
        for _ in range(warmup):
            fns[name]()
    if min_sample_s > 0:
        # num_threads: the Timer would otherwise run the callables with one thread
        timers = {
            name: torch_benchmark.Timer(
                "fn()",
                globals={"fn": fns[name]},
                timer=clock,
                num_threads=torch.get_num_threads(),
                label=str(name),
            )
            for name in names
        }

        def sample(name):
            return timers[name].blocked_autorange(min_run_time=min_sample_s).median

    else:
        timers = {name: timeit.Timer(fns[name], timer=clock) for name in names}

        def sample(name):
            return timers[name].timeit(number=1)

    samples = {name: [] for name in names}
    gc.collect()
    for r in range(rounds):
        shift = r % len(names)
        for name in names[shift:] + names[:shift]:
            samples[name].append(sample(name))
        if on_round is not None:
            on_round(r, {name: samples[name][-1] for name in names})
    return samples


def median_ratio(samples, name, baseline):
    """Median over rounds of the per-round ratio ``name / baseline`` of :func:`time_interleaved`'s
    samples."""
    return statistics.median(a / b for a, b in zip(samples[name], samples[baseline]))


def fastest_ratio(samples, name, baseline):
    """Ratio of the fastest samples: on a loaded machine the closest to the unloaded cost."""
    return min(samples[name]) / min(samples[baseline])


@contextlib.contextmanager
def _stderr_to_devnull():
    sys.stderr.flush()
    saved, devnull = os.dup(2), os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, 2)
    try:
        yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)
        os.close(devnull)


@contextlib.contextmanager
def quiet_profiler(**kwargs):
    """``torch.profiler.profile(**kwargs)``, without the notices kineto writes to stderr (C++
    logging) when it starts and stops (and, without a GPU, a failed device count); they are not
    errors of the measurement. Whatever the profiled code writes to stderr still shows."""
    prof = torch.profiler.profile(**kwargs)
    with _stderr_to_devnull():
        prof.start()
    try:
        yield prof
    finally:
        with _stderr_to_devnull():
            prof.stop()


def _cpu_peak_from_profiler(prof):
    # the raw allocator records (nbytes < 0 for a free); prof.events() has them too, but with
    # microsecond timestamps that tie
    events = sorted(
        (e.start_ns(), e.nbytes())
        for e in prof.profiler.kineto_results.events()
        if e.name() == "[memory]"
    )
    current = peak = 0
    for _, nbytes in events:
        current += nbytes
        peak = max(peak, current)
    return peak


def peak_memory_bytes(fn, device):
    """Peak bytes allocated while ``fn()`` runs, above what was allocated when it started."""
    device = torch.device(device)
    gc.collect()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        start = torch.cuda.memory_allocated(device)
        torch.cuda.reset_peak_memory_stats(device)
        fn()
        torch.cuda.synchronize(device)
        return torch.cuda.max_memory_allocated(device) - start
    activities = [torch.profiler.ProfilerActivity.CPU]
    with quiet_profiler(activities=activities, profile_memory=True) as prof:
        fn()
    return _cpu_peak_from_profiler(prof)


def saved_tensor_bytes(fn):
    """Bytes of the distinct storages autograd saves for backward while ``fn()`` runs.

    A storage saved twice (or through two views) counts once; that is what stays in memory.
    """
    storages = {}

    def pack(tensor):
        storage = tensor.untyped_storage()
        storages[(storage.device, storage.data_ptr())] = storage.nbytes()
        return tensor

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
        fn()
    return sum(storages.values())


def saved_tensor_bytes_by_module(fn, groups):
    """:func:`saved_tensor_bytes` of ``fn()`` split into ``groups``, a dict {name: [modules]}.

    A saved storage counts once, for the group of the innermost listed module running when it
    was first saved (so list a part and the whole it sits in, e.g. a block's LIPs and its stage:
    the LIPs' bytes go to the part); storages saved outside every listed module go to
    ``"other"``. The values add up to ``saved_tensor_bytes(fn)``.
    """
    owner = {id(m): name for name, modules in groups.items() for m in modules}
    running = []  # the group names of the listed modules running now, outermost first
    handles = []

    def enter(module, args):
        running.append(owner[id(module)])

    def leave(module, args, output):  # returns None: the output stays the module's
        running.pop()

    for modules in groups.values():
        for module in modules:
            handles.append(module.register_forward_pre_hook(enter))
            handles.append(module.register_forward_hook(leave))
    storages = {}

    def pack(tensor):
        storage = tensor.untyped_storage()
        key = (storage.device, storage.data_ptr())
        if key not in storages:
            storages[key] = (running[-1] if running else "other", storage.nbytes())
        return tensor

    try:
        with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
            fn()
    finally:
        for handle in handles:
            handle.remove()
    totals = dict.fromkeys([*groups, "other"], 0)
    for name, nbytes in storages.values():
        totals[name] += nbytes
    return totals
