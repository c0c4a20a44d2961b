"""Crash-safe checkpoints: detectron2's DetectionCheckpointer, but a checkpoint file and the
``last_checkpoint`` tag are written under a temporary name and renamed into place, so a run killed
at any moment (SIGKILL, OOM killer, preemption) leaves ``last_checkpoint`` pointing at a complete
file and ``--resume`` continues from it."""

import os

import torch
from detectron2.checkpoint import DetectionCheckpointer

__all__ = ["AtomicCheckpointer", "atomic_write"]

TEMP_SUFFIX = ".tmp"


def atomic_write(path, write):
    """Call ``write(f)`` on a binary file that becomes ``path`` only once it is complete and on
    disk: other readers (and a later resume) see the old file or the new one, never a part."""
    temp = path + TEMP_SUFFIX
    try:
        with open(temp, "wb") as f:
            write(f)
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


class AtomicCheckpointer(DetectionCheckpointer):
    """DetectionCheckpointer whose ``save`` writes the checkpoint, then renames it into place,
    then does the same for ``last_checkpoint``. A SIGKILL can only leave a ``<name>.pth.tmp``
    behind (not a ``.pth``, so never listed or resumed from). Save directories with a
    PathManager protocol (``manifold://`` ...) keep detectron2's direct writes."""

    def _is_local(self):
        return "://" not in self.save_dir

    def save(self, name, **kwargs):
        if not self._is_local():
            return super().save(name, **kwargs)
        if not self.save_dir or not self.save_to_disk:
            return
        # fvcore's Checkpointer.save, but for the write
        data = {"model": self.model.state_dict()}
        for key, obj in self.checkpointables.items():
            data[key] = obj.state_dict()
        data.update(kwargs)
        basename = f"{name}.pth"
        save_file = os.path.join(self.save_dir, basename)
        self.logger.info(f"Saving checkpoint to {save_file}")
        atomic_write(save_file, lambda f: torch.save(data, f))
        self.tag_last_checkpoint(basename)

    def tag_last_checkpoint(self, last_filename_basename):
        if not self._is_local():
            return super().tag_last_checkpoint(last_filename_basename)
        atomic_write(
            os.path.join(self.save_dir, "last_checkpoint"),
            lambda f: f.write(last_filename_basename.encode()),
        )
