"""The resumable training loader: :class:`ResumableTrainLoader` and
``build_resumable_train_loader`` (detectron2's ``build_detection_train_loader`` arguments and
yacs config), on the batch schedule of :mod:`lip_det.data.samplers` (whose docstring describes
the stream). The loader counts the batches the trainer took, and starts its DataLoader (and the
worker processes) at the first ``next()``, from the position it has at that moment.
"""

import logging
import os
import signal

import numpy as np
import torch
import torch.utils.data as torchdata
from detectron2.config import configurable
from detectron2.data import DatasetFromList, build_detection_train_loader
from detectron2.data.build import _train_loader_from_config
from detectron2.utils import comm

from .samplers import BatchSchedule, derive_seed, epoch_orders, seeded_rngs

__all__ = ["ResumableTrainLoader", "STOP_SIGNALS_ENV", "build_resumable_train_loader"]

logger = logging.getLogger(__name__)

# Signals that stop a training run (lip_det.engine.signals) are the trainer process's business:
# data-loader workers ignore them, instead of dying and taking the training down with them.
# The engine puts its set here for workers started with the "spawn" method.
STOP_SIGNALS_ENV = "LIP_DET_STOP_SIGNALS"
_ALWAYS_IGNORED = ("SIGTERM", "SIGINT", "SIGUSR1", "SIGUSR2")
# Draws of a replacement for an image the mapper skipped, before giving up.
MAX_REPLACEMENTS = 100


class _BatchStream(torchdata.IterableDataset):
    """This process's slice of global batches start, start+1, ... mapped; data-loader worker
    ``w`` of ``W`` makes batches start+w, start+w+W, ... (torch's DataLoader hands out an
    iterable dataset's items from its workers in turn, so they come out in order)."""

    def __init__(self, dataset, mapper, schedule, rank, world_size, collate_fn=None):
        self.dataset = dataset
        self.mapper = mapper
        self.schedule = schedule
        self.rank = rank
        self.batch_size = schedule.total_batch_size // world_size
        self.collate_fn = collate_fn
        self.start = 0

    def __iter__(self):
        info = torchdata.get_worker_info()
        worker, num_workers = (info.id, info.num_workers) if info is not None else (0, 1)
        k = self.start + worker
        while True:
            yield self.make_batch(k)
            k += num_workers

    def make_batch(self, k):
        indices = self.schedule.batch(k)
        first = self.rank * self.batch_size
        batch = [
            self._map(k, position, int(indices[position]))
            for position in range(first, first + self.batch_size)
        ]
        return batch if self.collate_fn is None else self.collate_fn(batch)

    def _map(self, k, position, index):
        for attempt in range(MAX_REPLACEMENTS + 1):
            with seeded_rngs(derive_seed(self.schedule.seed, k, position, attempt)):
                mapped = self.mapper(self.dataset[index])
            if mapped is not None:
                return mapped
            index = self.schedule.replacement(k, position, attempt, index)
        raise RuntimeError(
            f"the data mapper skipped {MAX_REPLACEMENTS + 1} images in a row for one place of a "
            "batch; check the dataset"
        )


def _identity(batch):
    return batch


def _ignore_stop_signals(worker_id):
    names = set(_ALWAYS_IGNORED) | set(
        filter(None, os.environ.get(STOP_SIGNALS_ENV, "").split(","))
    )
    for name in names:
        number = getattr(signal, name, None)
        if number is not None:
            signal.signal(number, signal.SIG_IGN)


class ResumableTrainLoader:
    """An iterable of this process's training batches (lists of mapped dicts, as detectron2's
    train loader gives), resumable: ``state_dict()``/``load_state_dict()`` hold the stream's
    seed and position (the number of batches the trainer took). See the module docstring."""

    def __init__(self, stream, num_workers=0, **dataloader_kwargs):
        self.stream = stream
        self.num_workers = num_workers
        self.dataloader_kwargs = dataloader_kwargs
        self.position = 0
        self.loaded = False  # whether load_state_dict set the position
        self._generation = 0  # bumped when the position is set from outside

    @property
    def seed(self):
        return self.stream.schedule.seed

    def __iter__(self):
        return _LazyIterator(self)

    def _start(self):
        self.stream.start = self.position
        # The DataLoader draws its workers' base seed when its iterator is made: from a
        # generator of its own, so that the trainer's RNG is the same whether the stream starts
        # at iteration 0 or at a resumed one.
        generator = torch.Generator()
        generator.manual_seed(derive_seed(self.seed, self.position))
        loader = torchdata.DataLoader(
            self.stream,
            batch_size=None,
            num_workers=self.num_workers,
            collate_fn=_identity,
            worker_init_fn=_ignore_stop_signals,
            generator=generator,
            **self.dataloader_kwargs,
        )
        with torch.random.fork_rng(devices=[]):
            return iter(loader)

    def seek(self, position):
        """Start (or restart) the stream at batch ``position``."""
        self.position = int(position)
        self._generation += 1

    def state_dict(self):
        schedule = self.stream.schedule
        return {
            "seed": schedule.seed,
            "position": self.position,
            "total_batch_size": schedule.total_batch_size,
            "dataset_size": len(schedule.groups),
        }

    def load_state_dict(self, state):
        schedule = self.stream.schedule
        saved = (state.get("total_batch_size"), state.get("dataset_size"))
        if saved != (schedule.total_batch_size, len(schedule.groups)):
            logger.warning(
                f"The checkpoint's data stream had total batch size {saved[0]} over {saved[1]} "
                f"images, this run has {schedule.total_batch_size} over {len(schedule.groups)}: "
                "the batches from here on are not those the saved run would have seen"
            )
        schedule.seed = int(state["seed"])
        schedule.reset()
        self.seek(state["position"])
        self.loaded = True
        logger.info(f"Data stream resumed at batch {self.position} (seed {schedule.seed})")


class _LazyIterator:
    """Starts the DataLoader (and its worker processes) at the first next(), from the loader's
    position at that moment; restarts it if the position is set again."""

    def __init__(self, loader):
        self.loader = loader
        self._iterator = None
        self._generation = None

    def __iter__(self):
        return self

    def __next__(self):
        loader = self.loader
        if self._iterator is None or self._generation != loader._generation:
            self._iterator = None  # (shuts down the previous worker processes)
            self._iterator = loader._start()
            self._generation = loader._generation
        batch = next(self._iterator)
        loader.position += 1
        return batch


def _aspect_groups(dataset, grouping):
    if not grouping:
        return np.zeros(len(dataset), dtype=np.int64)
    groups = np.empty(len(dataset), dtype=np.int64)
    for i in range(len(dataset)):
        d = dataset[i]
        groups[i] = 0 if d["width"] > d["height"] else 1  # AspectRatioGroupedDataset's buckets
    return groups


def _from_config(cfg, mapper=None, *, dataset=None, sampler=None):
    ret = _train_loader_from_config(cfg, mapper, dataset=dataset, sampler=sampler)
    ret["seed"] = cfg.SEED if cfg.SEED >= 0 else None
    return ret


# DataLoader arguments of detectron2's later build_detection_train_loader that apply here too.
_DATALOADER_KWARGS = ("prefetch_factor", "persistent_workers", "pin_memory")


@configurable(from_config=_from_config)
def build_resumable_train_loader(
    dataset,
    *,
    mapper,
    sampler=None,
    total_batch_size,
    aspect_ratio_grouping=True,
    num_workers=0,
    collate_fn=None,
    seed=None,
    **kwargs,
):
    """detectron2's ``build_detection_train_loader`` (same arguments, same yacs config), as a
    :class:`ResumableTrainLoader`. ``seed``: of the stream (default: the sampler's, which is
    shared by all processes); a resumed run takes the checkpoint's.

    Falls back to detectron2's loader (not resumable) for an iterable dataset, a mapper of
    None or a sampler other than Training/RepeatFactor/RandomSubsetTrainingSampler."""
    size = len(dataset) if hasattr(dataset, "__len__") else None
    order = epoch_orders(sampler, size) if size is not None else None
    if order is None or mapper is None or isinstance(dataset, torchdata.IterableDataset):
        what = type(sampler).__name__ if sampler is not None else type(dataset).__name__
        logger.warning(
            f"The training data ({what}) cannot be replayed from a position: a resumed run "
            "restarts its data stream (detectron2's loader)"
        )
        return build_detection_train_loader(
            dataset,
            mapper=mapper,
            sampler=sampler,
            total_batch_size=total_batch_size,
            aspect_ratio_grouping=aspect_ratio_grouping,
            num_workers=num_workers,
            collate_fn=collate_fn,
            **kwargs,
        )
    world_size = comm.get_world_size()
    if total_batch_size <= 0 or total_batch_size % world_size:
        raise ValueError(
            f"total batch size {total_batch_size} is not divisible by the {world_size} processes"
        )
    if isinstance(dataset, list):
        groups = _aspect_groups(dataset, aspect_ratio_grouping)
        dataset = DatasetFromList(dataset, copy=False)
    else:
        groups = _aspect_groups(dataset, aspect_ratio_grouping)
    if seed is None or seed < 0:
        seed = getattr(sampler, "_seed", None)
    if seed is None or seed < 0:
        seed = comm.shared_random_seed()
    schedule = BatchSchedule(order, groups, total_batch_size, int(seed))
    stream = _BatchStream(
        dataset, mapper, schedule, comm.get_rank(), world_size, collate_fn=collate_fn
    )
    extra = {k: kwargs.pop(k) for k in _DATALOADER_KWARGS if k in kwargs}
    if num_workers == 0:
        extra.pop("prefetch_factor", None)
        extra.pop("persistent_workers", None)
    if kwargs:
        logger.warning(f"build_resumable_train_loader ignores {sorted(kwargs)}")
    logger.info(
        f"Resumable training data: {len(groups)} images, batches of {total_batch_size} "
        f"({total_batch_size // world_size} per process), seed {seed}"
    )
    return ResumableTrainLoader(stream, num_workers=num_workers, **extra)
