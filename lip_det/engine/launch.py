"""Multi-process training on CUDA or on the CPU.

detectron2's ``launch`` starts one process per GPU with the NCCL backend; v0.6 asserts that CUDA
is available, and later versions pick NCCL whenever it is, even for a CPU model. ``launch`` here
chooses by the model's device: CUDA goes to detectron2's ``launch`` unchanged, the CPU gets the
same process layout with the gloo backend.

No worker outlives its launcher. The launcher passes the stop signals of a training run
(``stop_signals``: SIGTERM, SIGINT, SIGUSR1 by default, see :mod:`.signals`) on to its workers
and waits for them: they finish their iteration, rank 0 writes a checkpoint, and ``launch``
raises :class:`~.signals.TrainingInterrupted` (exit status 75). Each worker asks the kernel to
SIGKILL it when its launcher dies (``prctl(PR_SET_PDEATHSIG)`` on Linux; elsewhere a thread
watching the parent's pid), so a launcher that is killed outright takes its workers with it.
"""

import contextlib
import ctypes
import logging
import multiprocessing
import os
import signal
import sys
import threading
import time
from datetime import timedelta

import detectron2.utils.comm as comm
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from detectron2.engine import launch as detectron2_launch

from lip_det import compat

from .signals import (
    EXIT_INTERRUPTED,
    TrainingInterrupted,
    install_stop_handlers,
    parse_signals,
    signal_name,
)

__all__ = ["launch"]

DEFAULT_TIMEOUT = timedelta(minutes=30)


def launch(
    main_func,
    num_processes_per_machine,
    num_machines=1,
    machine_rank=0,
    dist_url=None,
    args=(),
    device="cuda",
    timeout=DEFAULT_TIMEOUT,
    stop_signals=(),
):
    """detectron2's ``launch`` (same arguments, ``dist_url="auto"`` included) plus ``device``:
    "cuda" (one process per GPU, NCCL, detectron2's own launcher) or "cpu" (processes over gloo).
    Must be called on every machine; ``main_func(*args)`` runs in every process.

    ``stop_signals`` (names or numbers): recorded instead of fatal in every worker, and passed
    on to the workers by this process (see the module docstring). Workers that stop on them
    with exit status 75 make ``launch`` raise TrainingInterrupted."""
    if num_machines * num_processes_per_machine == 1:
        return main_func(*args)  # in this process, as detectron2's launch does
    stop_signals = parse_signals(stop_signals)
    worker = _Worker(main_func, os.getpid(), stop_signals)
    forwarded = []
    try:
        with _forward_signals(stop_signals, forwarded):
            return _launch(
                worker,
                num_processes_per_machine,
                num_machines,
                machine_rank,
                dist_url,
                args,
                device,
                timeout,
            )
    except mp.ProcessExitedException as e:
        if e.exit_code != EXIT_INTERRUPTED:
            raise
        signum = forwarded[0] if forwarded else None
        why = f" on {signal_name(signum)}" if signum is not None else ""
        raise TrainingInterrupted(
            f"The workers stopped{why} after writing a checkpoint; continue with --resume "
            f"(exit status {EXIT_INTERRUPTED})",
            signum,
        ) from None


def _launch(
    main_func, num_processes_per_machine, num_machines, machine_rank, dist_url, args, device,
    timeout,
):  # fmt: skip
    if torch.device(device).type != "cpu":
        return detectron2_launch(
            main_func,
            num_processes_per_machine,
            num_machines=num_machines,
            machine_rank=machine_rank,
            dist_url=dist_url,
            args=args,
        )
    world_size = num_machines * num_processes_per_machine
    if world_size == 1:
        return main_func(*args)
    if dist_url == "auto":
        if num_machines != 1:
            raise ValueError("dist_url='auto' works on one machine only; give a tcp:// address")
        dist_url = f"tcp://127.0.0.1:{_free_port()}"
    mp.spawn(
        _cpu_worker,
        nprocs=num_processes_per_machine,
        args=(
            main_func,
            world_size,
            num_processes_per_machine,
            machine_rank,
            dist_url,
            args,
            timeout,
        ),
        daemon=False,
    )
    return None


class _Worker:
    """``main_func`` as the workers run it: first die with the launcher (``parent_pid``) and
    record the stop signals, then ``main_func(*args)``. In the launcher itself (one process,
    run in place) only the signal handlers are installed."""

    def __init__(self, main_func, parent_pid, stop_signals):
        self.main_func = main_func
        self.parent_pid = parent_pid
        self.stop_signals = stop_signals

    def prepare(self):
        if os.getpid() != self.parent_pid:
            die_with_parent(self.parent_pid)
        install_stop_handlers(self.stop_signals)

    def __call__(self, *args):
        self.prepare()  # (again for detectron2's CUDA launcher: idempotent)
        return self.main_func(*args)


_PR_SET_PDEATHSIG = 1
_watching = []


def die_with_parent(parent_pid):
    """Have this process SIGKILLed when the process ``parent_pid`` (its parent) ends: Linux's
    PR_SET_PDEATHSIG, else (or if that fails) a daemon thread that polls the parent's pid.
    Exits at once if the parent is already gone."""
    armed = False
    if sys.platform.startswith("linux"):
        try:
            libc = ctypes.CDLL(None, use_errno=True)
            armed = libc.prctl(_PR_SET_PDEATHSIG, int(signal.SIGKILL), 0, 0, 0) == 0
        except (OSError, AttributeError):
            armed = False
    if os.getppid() != parent_pid:  # the launcher died before the kernel was told
        os._exit(1)
    if not armed and not _watching:
        thread = threading.Thread(target=_watch_parent, args=(parent_pid,), daemon=True)
        thread.start()
        _watching.append(thread)


def _watch_parent(parent_pid):
    while True:
        time.sleep(1.0)
        if os.getppid() != parent_pid:
            os._exit(1)


@contextlib.contextmanager
def _forward_signals(signals, forwarded):
    """While the body runs, pass each of ``signals`` received by this process on to its
    worker processes (appending the signal to ``forwarded``) instead of acting on it."""

    def forward(signum, frame):
        forwarded.append(signum)
        if len(forwarded) == 1:
            logging.getLogger("lip_det").warning(
                f"{signal_name(signum)} received: passing it on to the workers, which stop after "
                "their current iteration and write a checkpoint"
            )
        for child in multiprocessing.active_children():
            with contextlib.suppress(ProcessLookupError):
                os.kill(child.pid, signum)

    previous = {number: signal.signal(number, forward) for number in signals}
    try:
        yield
    finally:
        for number, handler in previous.items():
            signal.signal(number, handler if handler is not None else signal.SIG_DFL)


def _free_port():
    import socket

    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("", 0))
        return sock.getsockname()[1]


def _cpu_worker(
    local_rank, main_func, world_size, num_processes_per_machine, machine_rank, dist_url, args,
    timeout,
):  # fmt: skip
    if isinstance(main_func, _Worker):
        main_func.prepare()  # first: die with the launcher, record the stop signals
    # Each process would otherwise start one thread per core: N processes would oversubscribe
    # the machine N times. OMP_NUM_THREADS, when set, is the user's choice.
    if "OMP_NUM_THREADS" not in os.environ:
        torch.set_num_threads(max(1, torch.get_num_threads() // num_processes_per_machine))
    global_rank = machine_rank * num_processes_per_machine + local_rank
    try:
        dist.init_process_group(
            backend="gloo",
            init_method=dist_url,
            world_size=world_size,
            rank=global_rank,
            timeout=timeout,
        )
    except Exception:
        logging.getLogger(__name__).error(f"Process group URL: {dist_url}")
        raise
    # detectron2's comm.get_local_rank() needs the group of this machine's processes
    compat.create_local_process_group(num_processes_per_machine, machine_rank)
    comm.synchronize()  # as detectron2 does: avoids a timeout right after init_process_group
    main_func(*args)
