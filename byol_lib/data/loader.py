"""The step-indexed two-view loader: which images a step sees, and their random views.

Training reads an endless stream of images: the concatenation of one seeded permutation of the
dataset per epoch (JAX's repeated, reshuffled dataset). Global step ``s`` takes stream positions
``[s*B, (s+1)*B)`` and rank ``r`` of ``W`` takes its contiguous share. Every random choice of a
sample's two views comes from a generator seeded by ``(seed, step, image index, view)``, so a batch
depends on neither the number of loader workers nor the world size, and a resumed run sees
exactly the batches an uninterrupted run would have seen.

An image that cannot be loaded never raises inside the loader (a worker's error reached the trainer as
``SystemError: Blocking queue is killed``, and with ``num_workers: 0`` Paddle's reader thread died and the trainer
waited forever): the sample carries the indices that went wrong, with a blank placeholder when the image itself
could not be had, and ``CheckedBatches`` loads those indices again in the main process, which raises the dataset's
one-line ``DatasetError`` (strict mode) or records the skipped file in the main process's ``bad_files`` (skip mode).
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import Any

import numpy as np
from paddle.io import DataLoader, Dataset

from byol_lib.data.augment import ViewSampler
from byol_lib.data.datasets import DatasetError, ImageDataset

MAX_TROUBLE = 8  # indices a sample can report (skip mode: more undecodable files met in one sample go unlisted)
_PLACEHOLDER = np.zeros((8, 8, 3), dtype=np.uint8)


def epoch_permutation(num_images: int, seed: int, epoch: int) -> np.ndarray:
    """The order in which epoch ``epoch`` visits the dataset."""
    return np.random.default_rng([seed, 0x5EED, epoch]).permutation(num_images)


def global_batch_indices(step: int, global_batch: int, num_images: int, seed: int) -> np.ndarray:
    """Image indices of global step ``step`` (may straddle two epochs)."""
    start, stop = step * global_batch, (step + 1) * global_batch
    first_epoch, last_epoch = start // num_images, (stop - 1) // num_images
    stream = np.concatenate([epoch_permutation(num_images, seed, e) for e in range(first_epoch, last_epoch + 1)])
    offset = start - first_epoch * num_images
    return stream[offset:offset + global_batch]


class StepBatchSampler:
    """Yields, for each step in ``[start_step, total_steps)``, this rank's ``(step, index)`` pairs."""

    def __init__(self, num_images: int, global_batch: int, seed: int, rank: int, world_size: int,
                 start_step: int, total_steps: int) -> None:
        if global_batch % world_size:
            raise ValueError(f"global batch {global_batch} is not divisible by world size {world_size}")
        self.num_images, self.global_batch, self.seed = num_images, global_batch, seed
        self.per_rank = global_batch // world_size
        self.rank, self.start_step, self.total_steps = rank, start_step, total_steps

    def __iter__(self) -> Iterator[list[tuple[int, int]]]:
        for step in range(self.start_step, self.total_steps):
            indices = global_batch_indices(step, self.global_batch, self.num_images, self.seed)
            mine = indices[self.rank * self.per_rank:(self.rank + 1) * self.per_rank]
            yield [(step, int(i)) for i in mine]

    def __len__(self) -> int:
        return max(0, self.total_steps - self.start_step)


def view_rng(seed: int, step: int, index: int, view: int) -> np.random.Generator:
    """The generator behind view ``view`` (1 or 2) of one sample at one step: each view has its own, so a variant
    that changes how many values one view draws (D2 in docs/sources.md: per-tap sigmas) shifts no draw of the other."""
    return np.random.default_rng([seed, step, index, view])


class TwoViewDataset(Dataset):
    """Maps ``(step, index)`` to ``(view1, params1, view2, params2, label, trouble)`` (device ops still to apply);
    ``trouble`` holds the indices whose loading went wrong (``-1`` padded), see the module docstring."""

    def __init__(self, images: ImageDataset, augmentation: Mapping[str, Any], seed: int) -> None:
        super().__init__()
        self.images, self.seed = images, seed
        self.view1, self.view2 = ViewSampler(augmentation, "view1"), ViewSampler(augmentation, "view2")

    def __getitem__(self, key: tuple[int, int]) -> tuple[np.ndarray, ...]:
        step, index = key
        before = self.images.undecodable()
        try:
            image, trouble = self.images.image(index), sorted(self.images.undecodable() - before)
        except DatasetError:
            image, trouble = _PLACEHOLDER, [index]
        view1, params1 = self.view1(image, view_rng(self.seed, step, index, 1))
        view2, params2 = self.view2(image, view_rng(self.seed, step, index, 2))
        marks = np.full(MAX_TROUBLE, -1, dtype="int64")
        marks[:len(trouble[:MAX_TROUBLE])] = trouble[:MAX_TROUBLE]
        return view1, params1, view2, params2, np.asarray(self.images.label(index), dtype="int64"), marks

    def __len__(self) -> int:
        return len(self.images)


class CheckedBatches:
    """A two-view loader's batches as ``(view1, params1, view2, params2, labels)``; a sample's trouble is handled
    here, in the main process (see the module docstring)."""

    def __init__(self, loader: DataLoader, images: ImageDataset) -> None:
        self.loader, self.images = loader, images

    def __iter__(self) -> Iterator[tuple[Any, ...]]:
        for *batch, trouble in self.loader:
            for index in np.unique(trouble.numpy()):
                if index >= 0:
                    self.images.image(int(index))  # strict: raises naming the file; skip: records it here
            yield tuple(batch)

    def __len__(self) -> int:
        return len(self.loader)

    def skipped_files(self) -> list[str]:
        """The files skipped so far: found bad up front or, in skip mode, undecodable by any loader process."""
        return sorted(set(self.images.bad_files))


def pretrain_loader(images: ImageDataset, cfg: Mapping[str, Any], rank: int, world_size: int,
                    start_step: int) -> CheckedBatches:
    """The training loader for steps ``[start_step, total_steps)`` of a resolved config."""
    derived = cfg["derived"]
    sampler = StepBatchSampler(len(images), derived["global_batch"], cfg["seed"], rank, world_size,
                               start_step, derived["total_steps"])
    dataset = TwoViewDataset(images, cfg["augmentation"], cfg["seed"])
    workers = cfg["dataloader"]["train"]["num_workers"]
    loader = DataLoader(dataset, batch_sampler=sampler, num_workers=workers, use_shared_memory=workers > 0)
    return CheckedBatches(loader, images)
