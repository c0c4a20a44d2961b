"""Stopping a training run on a signal without losing work, and the exit status that says so.

On SIGTERM, SIGINT or SIGUSR1 (``--stop-signals``; SLURM jobs submitted with ``--slurm`` add
submitit's SIGUSR2) a training process does not die: its handler only records the signal. The
:class:`StopOnSignal` hook, after each iteration, asks every process whether one of them got a
signal (one all-reduce, so that all stop after the same iteration); if so, rank 0 writes the
checkpoint of that iteration (``model_<iteration>.pth``, atomically, and tags it in
``last_checkpoint``), all processes wait for it, and training ends with
:class:`TrainingInterrupted`: **exit status 75** (``EXIT_INTERRUPTED``; EX_TEMPFAIL of
sysexits.h, "try again"). ``--resume`` continues from exactly there.

A signal during the last iteration changes nothing (``model_final.pth`` is written anyway, and
the run ends normally); one that arrives before training starts stops it after its first
iteration. The launcher (:mod:`.launch`) passes these signals on to its worker processes, and
the data-loader workers ignore them (:mod:`lip_det.data.samplers`). ``--eval-only`` runs keep
the default dispositions (a signal ends them at once: there is nothing to save). To stop a
training run at once anyway, send SIGKILL.
"""

import contextlib
import logging
import os
import signal

import detectron2.utils.comm as comm
import torch
import torch.distributed as dist
from detectron2.engine import HookBase

from ..data.resumable_loader import STOP_SIGNALS_ENV

__all__ = [
    "DEFAULT_STOP_SIGNALS",
    "EXIT_INTERRUPTED",
    "StopOnSignal",
    "TrainingInterrupted",
    "parse_signals",
    "received_signal",
    "stop_signal_handlers",
]

# EX_TEMPFAIL of sysexits.h: stopped by a signal, checkpoint written; run again with --resume
EXIT_INTERRUPTED = 75
DEFAULT_STOP_SIGNALS = ("SIGTERM", "SIGINT", "SIGUSR1")

_received = []  # signal numbers received by this process since the handlers were installed
_installed = {}  # signal number -> the handler it replaced


class TrainingInterrupted(SystemExit):
    """Training stopped by a signal after writing a checkpoint (or before anything was
    trained). A SystemExit with code EXIT_INTERRUPTED: uncaught, the process exits with 75."""

    def __init__(self, message, signum=None):
        super().__init__(EXIT_INTERRUPTED)
        self.message = message
        self.signum = signum

    def __str__(self):
        return self.message


def parse_signals(names):
    """Signal numbers of names such as "TERM", "SIGTERM", "usr1" or "15"; ValueError for an
    unknown one."""
    numbers = []
    for name in names:
        text = str(name).strip().upper()
        if text.isdigit():
            number = int(text)
        else:
            number = getattr(signal, text if text.startswith("SIG") else "SIG" + text, None)
        if not isinstance(number, int) or number in (signal.SIGKILL, signal.SIGSTOP):
            raise ValueError(
                f"--stop-signals: {name!r} is not a signal that can be handled; use names such "
                "as TERM, INT, USR1, USR2, HUP"
            )
        if number not in numbers:
            numbers.append(int(number))
    return tuple(numbers)


def signal_name(signum):
    try:
        return signal.Signals(signum).name
    except ValueError:
        return f"signal {signum}"


def _record(signum, frame):
    _received.append(signum)  # nothing else: this runs between two bytecodes of the training


def received_signal():
    """The first stop signal this process received (None: none)."""
    return _received[0] if _received else None


def install_stop_handlers(signals):
    """Record ``signals`` instead of dying of them, in this process, from now on. Returns the
    signals newly installed (already installed ones are left as they are)."""
    new = [s for s in parse_signals(signals) if s not in _installed]
    for number in new:
        _installed[number] = signal.signal(number, _record)
    if new:
        names = {signal_name(s) for s in _installed}
        os.environ[STOP_SIGNALS_ENV] = ",".join(sorted(names))  # for spawned data-loader workers
    return new


def remove_stop_handlers(numbers):
    for number in numbers:
        previous = _installed.pop(number, None)
        signal.signal(number, previous if previous is not None else signal.SIG_DFL)


@contextlib.contextmanager
def stop_signal_handlers(signals):
    """:func:`install_stop_handlers` for the body, restoring the previous handlers after it
    (what an in-process run, e.g. from a test or a notebook, needs)."""
    numbers = install_stop_handlers(signals)
    try:
        yield
    finally:
        remove_stop_handlers(numbers)
        if not _installed:
            _received.clear()


def _any_rank(flag):
    """Whether ``flag`` holds in any process (an all-reduce; a plain bool in one process)."""
    if comm.get_world_size() == 1:
        return flag
    device = "cpu"
    if dist.get_backend() == "nccl":
        device = torch.device("cuda", torch.cuda.current_device())
    value = torch.tensor([1 if flag else 0], dtype=torch.int32, device=device)
    dist.all_reduce(value, op=dist.ReduceOp.MAX)
    return bool(value.item())


class StopOnSignal(HookBase):
    """After each iteration: if a process got a stop signal, write the checkpoint of this
    iteration (rank 0) and end training with TrainingInterrupted (every rank). Register it
    after the LR scheduler and the periodic checkpointer, so that the saved state is that of
    the end of the iteration. ``checkpointer`` is rank 0's (other ranks may pass None)."""

    def __init__(self, checkpointer):
        self.checkpointer = checkpointer

    def after_step(self):
        if not _any_rank(received_signal() is not None):
            return
        iteration = self.trainer.iter
        if iteration + 1 >= self.trainer.max_iter:
            return  # the last iteration: the run ends now anyway, with model_final.pth
        name = f"model_{iteration:07d}"
        logger = logging.getLogger("lip_det")
        if comm.is_main_process():
            tagged = (
                self.checkpointer.get_checkpoint_file()
                if self.checkpointer.has_checkpoint()
                else ""
            )
            if os.path.basename(tagged) != name + ".pth":  # unless the periodic one just did
                self.checkpointer.save(name, iteration=iteration)
        comm.synchronize()  # no process ends before the checkpoint is complete
        own = received_signal()
        why = f"{signal_name(own)} received" if own is not None else "another process got a signal"
        message = (
            f"Training stopped after iteration {iteration} ({why}): checkpoint {name}.pth written; "
            f"continue with --resume (exit status {EXIT_INTERRUPTED})"
        )
        logger.warning(message)
        raise TrainingInterrupted(message, own)
