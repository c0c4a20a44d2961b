"""Crash-safe checkpoints: every file a checkpointer writes (the ``.pth`` and ``last_checkpoint``)
goes to a temporary name, is fsync'ed, then renamed into place, so a run killed at any moment
(SIGKILL, OOM killer, preemption) leaves ``last_checkpoint`` pointing at a complete file and
``--resume`` continues from it.

fvcore's ``Checkpointer.save`` and ``tag_last_checkpoint`` write through
``self.path_manager.open``: that is the one thing changed (:func:`make_atomic`), so the rest of
saving stays fvcore's and detectron2's. The converters write their ``.pkl`` with
:func:`atomic_write` too (:func:`~.conversion.save_d2_checkpoint`): this is lip_det's one writer
of checkpoint files.
"""

import contextlib
import os

from detectron2.checkpoint import DetectionCheckpointer

__all__ = ["AtomicCheckpointer", "atomic_open", "atomic_write", "make_atomic"]

TEMP_SUFFIX = ".tmp"


@contextlib.contextmanager
def atomic_open(path, mode="wb"):
    """A file opened for writing that becomes ``path`` only once it is complete and on disk:
    readers (and a later resume) see the old file or the new one, never a part. If the body
    raises, ``path`` is untouched and the temporary file removed."""
    if not any(m in mode for m in "wax"):
        raise ValueError(f"atomic_open is for writing, got mode {mode!r}")
    temp = path + TEMP_SUFFIX
    try:
        with open(temp, mode) as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(temp, path)  # atomic within one filesystem: same directory
    except BaseException:
        if os.path.exists(temp):
            os.remove(temp)
        raise
    # make the rename itself durable (a power loss could otherwise undo it)
    directory = os.open(os.path.dirname(path) or ".", os.O_RDONLY)
    try:
        os.fsync(directory)
    finally:
        os.close(directory)


def atomic_write(path, write):
    """Call ``write(f)`` on a binary file opened with :func:`atomic_open`."""
    with atomic_open(path, "wb") as f:
        write(f)


class _AtomicWrites:
    """A PathManager whose ``open`` for writing a local path is :func:`atomic_open`; every other
    call goes to the wrapped PathManager (remote paths such as ``manifold://`` included)."""

    def __init__(self, path_manager):
        self._path_manager = path_manager

    def open(self, path, mode="r", **kwargs):
        if "://" not in path and any(m in mode for m in "wax"):
            return atomic_open(path, mode)
        return self._path_manager.open(path, mode, **kwargs)

    def __getattr__(self, name):
        return getattr(self._path_manager, name)


def make_atomic(checkpointer):
    """Make ``checkpointer`` (an fvcore/detectron2 Checkpointer) write its files atomically;
    returns it. Idempotent."""
    if not isinstance(checkpointer.path_manager, _AtomicWrites):
        checkpointer.path_manager = _AtomicWrites(checkpointer.path_manager)
    return checkpointer


class AtomicCheckpointer(DetectionCheckpointer):
    """DetectionCheckpointer whose files are written atomically (:func:`make_atomic`). A SIGKILL
    can only leave a ``<name>.pth.tmp`` behind (not a ``.pth``, so never listed or resumed
    from)."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        make_atomic(self)
