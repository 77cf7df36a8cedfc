"""Deterministic, resumable, shardable data loading.

The order of an epoch is a pure function of ``(seed, epoch)``: a permutation drawn from a
generator seeded with both, plus one random seed per image. So a trainer killed mid-epoch
resumes at batch ``k`` of the same epoch and sees exactly the batches an uninterrupted run would
have seen, with the same augmentation: each image is transformed under its own seed (Python,
NumPy and torch CPU generators; see :func:`sample_rng`), whichever worker loads it and whether or
not the run was interrupted.

Under ``torchrun`` every rank draws the same permutation and takes a strided shard of it (as
``DistributedSampler`` does): rank ``r`` of ``W`` gets items ``r, r+W, r+2W, ...``. With a per-rank
batch of ``batch_size / W``, the ``W`` shards of step ``t`` together are exactly the single-process
batch ``t``, so a multi-rank run matches a single-process run with the same global batch. A
training epoch is padded by repeating its first items to a multiple of ``W`` (every rank must take
the same number of steps, or DDP hangs); an evaluation epoch is not padded (no item counted twice).
"""

from __future__ import annotations

import contextlib
import random
from typing import Iterator

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Sampler, get_worker_info

from unitune.errors import UniTuneError

from .config import DataConfig
from .transforms import note_resize


class EpochSampler(Sampler):
    """One rank's share of an epoch's order, from batch ``start_batch`` on.

    Training samplers yield ``(index, sample_seed)`` pairs; evaluation samplers yield indices in
    dataset order. Call :meth:`set_epoch` before each epoch (``start_batch`` only when resuming).
    """

    def __init__(self, num_items: int, batch_size: int, shuffle: bool, seed: int, *, rank: int = 0,
                 world_size: int = 1, pad: bool | None = None, seeded: bool | None = None):
        if not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} outside world size {world_size}")
        self.num_items = num_items
        self.batch_size = batch_size  # per rank
        self.shuffle = shuffle
        self.seed = seed
        self.rank = rank
        self.world_size = world_size
        self.pad = shuffle if pad is None else pad
        self.seeded = shuffle if seeded is None else seeded
        self.epoch = 0
        self.start_batch = 0

    def set_epoch(self, epoch: int, start_batch: int = 0) -> None:
        if not 0 <= start_batch <= self.num_batches:
            raise ValueError(f"start_batch {start_batch} outside the epoch's {self.num_batches} batches")
        self.epoch = epoch
        self.start_batch = start_batch

    @property
    def num_rank_items(self) -> int:
        """Items this rank sees in a full epoch."""
        if self.pad:
            return -(-self.num_items // self.world_size)
        return len(range(self.rank, self.num_items, self.world_size))

    @property
    def num_batches(self) -> int:
        """Batches in a full epoch (the same on every rank when padded)."""
        return -(-self.num_rank_items // self.batch_size)

    def epoch_order(self, epoch: int) -> tuple[list[int], list[int] | None]:
        """This rank's indices for ``epoch`` in order, and their per-image seeds (None when not seeded)."""
        g = torch.Generator().manual_seed(_mix(self.seed, epoch))
        order = torch.randperm(self.num_items, generator=g) if self.shuffle else torch.arange(self.num_items)
        # Drawn after the permutation from the same generator: one seed per dataset index.
        seeds = torch.randint(0, 2**31 - 1, (self.num_items,), generator=g) if self.seeded else None
        if self.pad and self.num_items % self.world_size:
            extra = self.world_size - self.num_items % self.world_size
            order = torch.cat([order, order.repeat(extra // self.num_items + 1)[:extra]])
        order = order[self.rank::self.world_size]
        return order.tolist(), (seeds[order].tolist() if seeds is not None else None)

    def __iter__(self) -> Iterator:
        order, seeds = self.epoch_order(self.epoch)
        skip = self.start_batch * self.batch_size
        if seeds is None:
            return iter(order[skip:])
        return iter(list(zip(order[skip:], seeds[skip:])))

    def __len__(self) -> int:
        return max(0, self.num_rank_items - self.start_batch * self.batch_size)


class SeededFetch(Dataset):
    """Loads ``dataset[index]`` under the item's own seed when the sampler gives one."""

    def __init__(self, dataset: Dataset):
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, key):
        if isinstance(key, tuple):
            index, seed = key
            with sample_rng(seed):
                return self.dataset[index]
        return self.dataset[key]


@contextlib.contextmanager
def sample_rng(seed: int):
    """Seed Python, NumPy and torch's CPU generator (what timm / torchvision transforms draw from,
    timm's RandAugment included) for one image.

    In the main process (``num_workers: 0``) their previous states are restored afterwards, so the
    trainer's own random streams are unaffected. A worker process's generators belong to nobody
    else, so there the (slow, ~0.1 ms) save and restore is skipped.
    """
    if get_worker_info() is not None:
        _seed_all(seed)
        yield
        return
    py_state, np_state = random.getstate(), np.random.get_state()
    with torch.random.fork_rng(devices=[]):
        _seed_all(seed)
        try:
            yield
        finally:
            random.setstate(py_state)
            np.random.set_state(np_state)


def _seed_all(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.default_generator.manual_seed(seed)  # CPU only: CUDA generators are the trainer's


def build_loader(dataset: Dataset, cfg: DataConfig, train: bool, seed: int, *, epoch: int = 0,
                 start_batch: int = 0, rank: int = 0, world_size: int = 1,
                 batch_size: int | None = None, device: torch.device | str | None = None) -> DataLoader:
    """A DataLoader over this rank's shard of ``dataset``.

    ``train``: shuffled per epoch from ``(seed, epoch)``, per-image augmentation seeds, padded for
    ``world_size``; global batch ``cfg.batch_size`` (split evenly over ranks). Otherwise: dataset
    order, not padded, global batch ``cfg.eval_batch``. ``batch_size`` overrides the global batch.
    Move to another epoch (or resume mid-epoch) with ``loader.sampler.set_epoch(epoch, start_batch)``;
    ``loader.sampler.num_batches`` is the full epoch's step count (for schedules).
    ``device``: where the batches go; pinned host memory only for CUDA (a CPU run on a machine
    with a GPU would only pay for the pinning, and open a CUDA context for it).
    """
    global_batch = batch_size or (cfg.batch_size if train else cfg.eval_batch)
    if global_batch % world_size:
        raise UniTuneError(
            f"{cfg.where}.{'batch_size' if train else 'eval_batch_size'}: {global_batch} is not divisible "
            f"by the {world_size} processes (each takes an equal share of the global batch)"
        )
    per_rank = global_batch // world_size
    if train and rank == 0:
        note_resize(dataset)
    sampler = EpochSampler(len(dataset), per_rank, shuffle=train, seed=seed, rank=rank, world_size=world_size)
    sampler.set_epoch(epoch, start_batch)
    workers = cfg.num_workers
    return DataLoader(
        SeededFetch(dataset),
        batch_size=per_rank,
        sampler=sampler,
        num_workers=workers,
        pin_memory=device is not None and torch.device(device).type == "cuda",
        drop_last=False,
        persistent_workers=workers > 0,
        # Only worker start-up seeds depend on it; every image is transformed under its own seed.
        generator=torch.Generator().manual_seed(_mix(seed, -1)),
    )


def _mix(seed: int, epoch: int) -> int:
    """One well-spread 63-bit generator seed from (seed, epoch)."""
    return int(np.random.SeedSequence([seed % 2**64, epoch + 1]).generate_state(1, np.uint64)[0] >> 1)
