"""Datasets and loaders from a ``data`` config, with a sampler that resumes mid-epoch exactly.

Interface used by the engine::

    from visionstack.data.loader import build_dataset, build_loader, loader_from_data_cfg

    train_set, train_loader = loader_from_data_cfg(cfg["data"], "train", seed=seed,
                                                   distributed=world_size > 1, pretrained_cfg=pcfg)
    # or: train_set = build_dataset(cfg["data"], "train"); train_loader = build_loader(train_set, 16, shuffle=True, ...)
    sampler = train_loader.sampler                   # a ResumableSampler, always (also without DDP)
    for epoch in range(start_epoch, epochs):
        sampler.set_epoch(epoch)                     # call every epoch, before iterating
        if epoch == start_epoch and batches_done:    # resuming inside an epoch
            sampler.skip(batches_done * batch_size)  # samples of THIS rank already consumed; after set_epoch
        for batch in train_loader:                   # {"image": [B,3,H,W], "label": [B], "index": [B]}
            ...

Guarantees:

- The order of epoch ``e`` depends only on ``(seed, e)``: a seeded permutation (the same one
  ``torch.utils.data.DistributedSampler`` draws), padded to a multiple of the world size and split
  ``rank::world_size`` as DistributedSampler does (``pad=False``: uneven shards, no duplicates -- for eval).
- ``skip(n)`` drops the first ``n`` indices of this rank's order for the current epoch only (``set_epoch``
  with another epoch clears it); ``len(sampler)`` and ``len(loader)`` count what remains, so the remaining
  batches equal the tail of an uninterrupted epoch.
- With ``seed_per_sample=True`` (default) the sampler yields ``(index, seed)`` pairs and the dataset runs
  the transform under RNG states seeded from ``(seed, epoch, index)``: random augmentations are identical
  whatever ``num_workers`` is, after a resume, and they never consume the training process's RNG.
- The DataLoader gets a seeded ``generator`` and :func:`seed_worker` as ``worker_init_fn``.
"""

from __future__ import annotations

import copy
import inspect
import os
import random
from collections.abc import Callable, Mapping
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, default_collate

from visionstack.core.build import check_part, config_path
from visionstack.core.registry import DATASETS
from visionstack.data.datasets.base import ImageDataset, seeded_rng
from visionstack.data.decode import DecodePolicy
from visionstack.data.sampling import ResumableSampler, build_sampler
from visionstack.data.transforms import transforms_from_data_cfg
from visionstack.errors import ConfigError, DataError

SPLITS = ("train", "val", "test")


class IndexedDataset(Dataset):
    """Adapts any map-style dataset to the batch dict and to ``(index, seed)`` keys.

    Items that are ``(image, label)`` pairs become ``{"image", "label", "index"}``; other attributes are
    forwarded to the wrapped dataset (``class_names``, ``samples``...).
    """

    def __init__(self, dataset: Dataset) -> None:
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)  # type: ignore[arg-type]

    def __getattr__(self, name: str) -> Any:
        if name == "dataset":
            raise AttributeError(name)
        return getattr(self.dataset, name)

    def __getitem__(self, key: int | tuple[int, int]) -> Any:
        if isinstance(key, tuple):
            with seeded_rng(int(key[1])):
                return self._item(int(key[0]))
        return self._item(int(key))

    def _item(self, index: int) -> Any:
        item = self.dataset[index]
        if isinstance(item, (tuple, list)) and len(item) == 2:
            label = item[1] if isinstance(item[1], torch.Tensor) else torch.tensor(item[1], dtype=torch.long)
            return {"image": item[0], "label": label, "index": index}
        return item


def collate_batch(samples: list[Any]) -> Any:
    """Stack samples into ``{"image": [B,3,H,W], "label": [B], "index": [B]}``; a non-tensor image raises."""
    first = samples[0]
    if isinstance(first, Mapping) and "image" in first and not isinstance(first["image"], torch.Tensor):
        raise DataError(
            f"the dataset returned a {type(first['image']).__name__} image: the transform pipeline must end "
            "with ToImage, ToDtype(float32, scale=True) (and Normalize) so that images can be batched"
        )
    return default_collate(samples)


def seed_worker(worker_id: int) -> None:
    """``worker_init_fn``: seed python's and numpy's RNG from the worker's torch seed."""
    del worker_id
    seed = torch.initial_seed() % 2**32
    random.seed(seed)
    np.random.seed(seed)


def build_loader(
    dataset: Dataset,
    batch_size: int,
    shuffle: bool = False,
    num_workers: int = 0,
    seed: int = 0,
    distributed: bool = False,
    drop_last: bool = False,
    pin_memory: bool = False,
    persistent_workers: bool = False,
    pad: bool = True,
    seed_per_sample: bool = True,
    num_replicas: int | None = None,
    rank: int | None = None,
    prefetch_factor: int | None = None,
    collate_fn: Callable[[list[Any]], Any] | None = None,
    sampler: Any = None,
) -> DataLoader:
    """A DataLoader over ``dataset`` with a :class:`ResumableSampler`, the batch-dict collate and seeding.

    ``distributed`` shards across ``num_replicas`` ranks (default: the initialized process group);
    ``pad=False`` gives uneven shards without duplicated samples (evaluation). ``sampler`` is a
    ``data.sampler`` config (e.g. ``{type: class_balanced, images_per_class: 2}``, see
    :mod:`visionstack.data.sampling`); it replaces the default shuffle, so ``shuffle`` and ``pad`` do not apply.
    """
    if not isinstance(batch_size, int) or batch_size <= 0:
        raise ConfigError("data.batch_size", f"expected a positive integer, got {batch_size!r}")
    if seed_per_sample and not isinstance(dataset, (ImageDataset, IndexedDataset)):
        dataset = IndexedDataset(dataset)
    if sampler is not None:
        chosen = build_sampler(
            sampler, dataset, batch_size, seed, distributed, num_replicas, rank, seed_per_sample
        )
    else:
        chosen = ResumableSampler(
            dataset,
            shuffle=shuffle,
            seed=seed,
            distributed=distributed,
            num_replicas=num_replicas,
            rank=rank,
            pad=pad,
            seed_per_sample=seed_per_sample,
        )
    extra: dict[str, Any] = {}
    if num_workers > 0:
        extra["persistent_workers"] = persistent_workers
        if prefetch_factor is not None:
            extra["prefetch_factor"] = prefetch_factor
    return DataLoader(
        dataset,
        batch_size=batch_size,
        sampler=chosen,
        num_workers=num_workers,
        drop_last=drop_last,
        pin_memory=pin_memory,
        collate_fn=collate_fn or collate_batch,
        worker_init_fn=seed_worker,
        generator=torch.Generator().manual_seed(seed),
        **extra,
    )


def _split_required(builder: Any) -> bool:
    try:
        params = inspect.signature(builder).parameters
    except (TypeError, ValueError):
        return False
    return "split" in params and params["split"].default is inspect.Parameter.empty


def _checked_policy(policy: Any, parent: str) -> dict[str, Any]:
    try:
        DecodePolicy.from_cfg(policy)
    except ConfigError as err:
        raise ConfigError(f"{parent}.{err.path}", err.message) from None
    return copy.deepcopy(dict(policy))


def build_dataset(
    data_cfg: Mapping[str, Any],
    split: str,
    transform: Any = "auto",
    pretrained_cfg: Mapping[str, Any] | None = None,
    decode: Mapping[str, Any] | None = None,
) -> ImageDataset:
    """The dataset of ``data.<split>`` (``train`` / ``val`` / ``test``).

    ``data.root`` and ``data.decode`` fill the dataset's ``root`` / ``decode`` when its config leaves them
    out; a dataset whose ``split`` parameter is required gets the role name when its config has none.
    ``transform="auto"`` builds the pipeline from the data section (train augmentations for ``train``);
    ``None`` leaves images as decoded PIL images. ``decode`` overrides every decode setting.
    """
    if split not in SPLITS:
        raise ConfigError("split", f"expected one of {', '.join(SPLITS)}, got {split!r}")
    if data_cfg.get(split) is None:
        raise ConfigError(
            f"data.{split}", "no dataset configured (e.g. {type: image_folder, root: path/to/folder})"
        )
    cfg = data_cfg[split]
    cfg = {"type": cfg} if isinstance(cfg, str) else dict(cfg)
    path = f"data.{split}"
    if isinstance(transform, str) and transform == "auto":
        transform = transforms_from_data_cfg(data_cfg, train=split == "train", pretrained_cfg=pretrained_cfg)
    provided: dict[str, Any] = {"transform": transform}
    if "root" not in cfg and data_cfg.get("root") is not None:
        provided["root"] = str(data_cfg["root"])
    if decode is not None:
        cfg.pop("decode", None)
        provided["decode"] = dict(decode)
    elif "decode" not in cfg and data_cfg.get("decode") is not None:
        provided["decode"] = _checked_policy(data_cfg["decode"], "data")
    elif cfg.get("decode") is not None:
        cfg["decode"] = _checked_policy(cfg["decode"], path)
    with config_path(path):
        try:
            cfg = check_part(DATASETS, cfg, path, tuple(provided) + ("split",))
        except ConfigError as err:
            if err.path != f"{path}.root":
                raise
            raise ConfigError(
                err.path, f"missing: set data.root or data.{split}.root to the dataset folder"
            ) from None
        builder = DATASETS.get(cfg["type"])
        kwargs = {k: v for k, v in cfg.items() if k != "type"}
        if "split" not in kwargs and _split_required(builder):
            kwargs["split"] = split
        params = inspect.signature(builder).parameters
        kwargs.update({k: v for k, v in provided.items() if k in params and k not in kwargs})
        return builder(**kwargs)


def check_same_classes(reference: Any, other: Any, name: str = "val") -> None:
    """Raise if ``other`` (e.g. the val set) names its classes differently from ``reference`` (the train set)."""
    a, b = list(reference.class_names), list(other.class_names)
    if a != b:
        diff = next((i for i, (x, y) in enumerate(zip(a, b)) if x != y), min(len(a), len(b)))
        raise DataError(
            f"the {name} set has {len(b)} classes and the train set {len(a)}; they first differ at "
            f"index {diff} ({a[diff] if diff < len(a) else None!r} vs {b[diff] if diff < len(b) else None!r})"
        )


def loader_from_data_cfg(
    data_cfg: Mapping[str, Any],
    split: str,
    seed: int = 0,
    distributed: bool = False,
    pretrained_cfg: Mapping[str, Any] | None = None,
    transform: Any = "auto",
) -> tuple[ImageDataset, DataLoader]:
    """``(dataset, loader)`` for ``split`` with the data section's batch size, workers and flags.

    Train: shuffled (or drawn by ``data.sampler``), ``drop_last`` from config, padded shards. Val/test: in
    order, ``val_batch_size`` (default ``batch_size``), no dropping, unpadded shards (each sample seen once
    across ranks).
    """
    dataset = build_dataset(data_cfg, split, transform=transform, pretrained_cfg=pretrained_cfg)
    train = split == "train"
    batch_size = (
        data_cfg.get("batch_size", 32)
        if train
        else data_cfg.get("val_batch_size") or data_cfg.get("batch_size", 32)
    )
    workers = data_cfg.get("num_workers")
    loader = build_loader(
        dataset,
        batch_size,
        shuffle=train,
        seed=seed,
        distributed=distributed,
        pad=train,
        num_workers=min(4, os.cpu_count() or 1) if workers is None else int(workers),
        drop_last=bool(data_cfg.get("drop_last", False)) and train,
        pin_memory=bool(data_cfg.get("pin_memory", False)),
        persistent_workers=bool(data_cfg.get("persistent_workers", False)),
        sampler=data_cfg.get("sampler") if train else None,
    )
    return dataset, loader
