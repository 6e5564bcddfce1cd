"""Datasets in the layouts of the field, and their loaders.

Layouts (labels: real = 0, fake = 1):
- one source: ``DIR/0_real/`` and ``DIR/1_fake/`` (or ``real/`` and ``fake/``);
- CNNDetection: one such pair per source, ``DIR/<source>/0_real``, possibly
  nested (``DIR/stylegan/bedroom/0_real``); nested pairs count towards their
  top-level source, as CNNDetection reports them.

Unreadable images never stop a run. In training, an image that cannot be
read is replaced by the next readable one, so every batch keeps its size (a
short batch on one process would desynchronise DistributedDataParallel), and
its path is reported with the batch so the loop can count it. In evaluation
it is left out and reported.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, DistributedSampler, Sampler

from specdet.errors import SpecdetError
from specdet.images import collect_images
from specdet.runtime.preprocess import ImageError, load_image, preprocess
from specdet.train.augment import Augment

REAL, FAKE = 0, 1
CLASS_FOLDERS = {"0_real": REAL, "real": REAL, "1_fake": FAKE, "fake": FAKE}


@dataclass(frozen=True)
class Sample:
    path: str
    label: int  # REAL or FAKE
    source: str  # top-level source folder; the folder's own name for the one-source layout


def discover(root: str | os.PathLike) -> list[Sample]:
    """Every image under ``root``'s class folders, sorted by path."""
    root = Path(root)
    if not root.is_dir():
        raise SpecdetError(f"data folder {root} not found: pass a folder holding 0_real/ and 1_fake/")
    samples = []
    for folder, subfolders, _ in os.walk(root):
        folder = Path(folder)
        if folder.name in CLASS_FOLDERS and folder != root:
            subfolders.clear()  # images below a class folder belong to it
            relative = folder.parent.relative_to(root).parts
            source = relative[0] if relative else root.resolve().name
            label = CLASS_FOLDERS[folder.name]
            samples += [Sample(str(p), label, source) for p in collect_images([folder])]
    if not samples:
        raise SpecdetError(
            f"no images in 0_real/ and 1_fake/ (or real/ and fake/) folders under {root}: lay it out as "
            "DIR/0_real + DIR/1_fake, or DIR/<source>/0_real + DIR/<source>/1_fake"
        )
    return sorted(samples, key=lambda s: s.path)


def check_both_classes(samples: list[Sample], root: str | os.PathLike, purpose: str) -> None:
    """Raise unless some source of ``samples`` has both real and fake images (AP needs both)."""
    by_source: dict[str, set[int]] = {}
    for s in samples:
        by_source.setdefault(s.source, set()).add(s.label)
    if {REAL, FAKE} not in by_source.values():
        raise SpecdetError(f"no source under {root} has both real and fake images; {purpose} needs both")


class TrainDataset(Dataset):
    """Items are indexed by ``(epoch, index)``: the augmentation is seeded by both and the run seed."""

    def __init__(self, samples: list[Sample], augment: Augment, seed: int):
        self.samples = samples
        self.augment = augment
        self.seed = seed

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, key: tuple[int, int]) -> dict[str, Any]:
        epoch, index = key
        skipped = []
        for offset in range(len(self.samples)):
            sample = self.samples[(index + offset) % len(self.samples)]
            try:
                image = load_image(sample.path)
            except ImageError as err:
                skipped.append((sample.path, err.reason))
                continue
            rng = np.random.default_rng((self.seed, epoch, index))
            pixels = torch.from_numpy(self.augment(image, rng))
            return {"image": pixels, "label": sample.label, "skipped": skipped}
        raise SpecdetError(f"none of the {len(self.samples)} training images can be read: check the data folder")


class EvalDataset(Dataset):
    """The inference preprocessing, unchanged, so scores equal ``detect-predict``'s."""

    def __init__(self, samples: list[Sample], preprocessing: dict[str, Any]):
        self.samples = samples
        self.preprocessing = preprocessing

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int) -> dict[str, Any]:
        try:
            pixels = torch.from_numpy(preprocess(self.samples[index].path, self.preprocessing)[0])
        except ImageError as err:
            return {"index": index, "image": None, "error": err.reason}
        return {"index": index, "image": pixels, "error": None}


class EpochIndices(Sampler):
    """Yields ``(epoch, index)`` from a DistributedSampler, so persistent workers learn the epoch too."""

    def __init__(self, sampler: DistributedSampler):
        self.sampler = sampler

    def __iter__(self) -> Iterator[tuple[int, int]]:
        return ((self.sampler.epoch, i) for i in self.sampler)

    def __len__(self) -> int:
        return len(self.sampler)


def collate_train(items: list[dict[str, Any]]) -> dict[str, Any]:
    return {
        "image": torch.stack([item["image"] for item in items]),
        "label": torch.tensor([item["label"] for item in items]),
        "skipped": [entry for item in items for entry in item["skipped"]],
    }


def collate_eval(items: list[dict[str, Any]]) -> dict[str, Any]:
    good = [item for item in items if item["image"] is not None]
    return {
        "index": torch.tensor([item["index"] for item in good], dtype=torch.long),
        "image": torch.stack([item["image"] for item in good]) if good else None,
        "errors": [(item["index"], item["error"]) for item in items if item["image"] is None],
    }


def default_workers(world_size: int) -> int:
    """Loader processes per training process: this process's share of the CPUs, less one that trains."""
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    return max(1, min(8, cpus // world_size - 1))


def train_loader(
    dataset: TrainDataset, batch_size: int, *, rank: int, world_size: int, workers: int, pin_memory: bool
) -> DataLoader:
    """Shuffled per epoch (call ``loader.sampler.sampler.set_epoch``), sharded across processes.

    One sampler for one or many processes, so a single-process run shuffles
    exactly as rank 0 of a one-process torchrun would. The last partial
    batch is dropped when there is a full one: BatchNorm and the contrastive
    loss need more than one sample.
    """
    sampler = DistributedSampler(dataset, num_replicas=world_size, rank=rank, shuffle=True, seed=dataset.seed)
    return DataLoader(
        dataset,
        batch_size=batch_size,
        sampler=EpochIndices(sampler),
        num_workers=workers,
        collate_fn=collate_train,
        pin_memory=pin_memory,
        drop_last=len(sampler) > batch_size,
        persistent_workers=workers > 0,
        prefetch_factor=4 if workers > 0 else None,
    )


def eval_loader(
    dataset: EvalDataset, batch_size: int, *, rank: int, world_size: int, workers: int, pin_memory: bool
) -> DataLoader:
    """This process's share (every ``world_size``-th image), in order, no padding."""
    shard = list(range(rank, len(dataset), world_size))
    return DataLoader(
        torch.utils.data.Subset(dataset, shard),
        batch_size=batch_size,
        num_workers=workers,
        collate_fn=collate_eval,
        pin_memory=pin_memory,
    )
