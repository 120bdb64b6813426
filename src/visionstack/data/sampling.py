"""Training samplers selectable from ``data.sampler``, with the resume and sharding guarantees of the loader.

``data.sampler`` (train split only; evaluation always sees every sample once, in order)::

    sampler: null                                      # default: a seeded shuffle (ResumableSampler)
    sampler: {type: class_balanced, images_per_class: 2}

``class_balanced`` builds batches of ``P = batch_size / K`` distinct classes with ``K = images_per_class``
images each (a "P x K" sampler), which methods that pair images of a class inside a batch need (PMG-V2's
category-consistency loss). The epoch is made as follows, from a generator seeded with ``seed + epoch``:

- each class's images are shuffled and cut into groups of ``K``; the last ``n mod K`` images of a class
  sit the epoch out (a different few each epoch); a class with fewer than ``K`` images gives one group
  drawn with replacement. Every image thus appears at most once per epoch, except inside such a group.
- the epoch has a fixed number of batches ``N`` that depends only on the class sizes (the Trainer counts
  an epoch's steps once): the largest ``N`` with ``sum_c min(groups_c, N) >= N * P``, i.e.
  ``floor(groups / P)`` unless a class holds more than ``1 / P`` of the data (it then gives at most ``N``
  groups). Surplus groups (fewer than ``P`` in the usual case) are left out at random, so an epoch covers
  about ``len(dataset)`` samples.
- batches take ``P`` distinct classes drawn without replacement with probability proportional to the
  groups each has left; a class with a group for every remaining batch is taken at once, which guarantees
  that all ``N`` batches can be filled.
- with ``W`` ranks, rank ``r`` takes batches ``r, r + W, ...`` of that one-process epoch; the last
  ``N mod W`` batches are dropped so that every rank makes the same number of steps. Shards hold
  disjoint positions of the epoch and together they are its first ``W * floor(N / W)`` batches.

``skip(n)`` resumes inside the epoch as for the default sampler (``n`` a multiple of the batch size keeps
batches aligned, which is what the Trainer passes). With ``seed_per_sample`` the augmentation seed of a
sample comes from ``(seed, epoch, position in the epoch)``, so the two draws of a group sampled with
replacement are augmented differently.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from typing import Any

import torch
from torch.utils.data import Dataset, DistributedSampler

from visionstack.core.build import check_part, config_path
from visionstack.core.registry import SAMPLERS
from visionstack.errors import ConfigError

_MASK64 = (1 << 64) - 1


def _mix64(x: int) -> int:
    """splitmix64 finalizer: a cheap, well-spread 64-bit hash."""
    x = (x + 0x9E3779B97F4A7C15) & _MASK64
    x = ((x ^ (x >> 30)) * 0xBF58476D1CE4E5B9) & _MASK64
    x = ((x ^ (x >> 27)) * 0x94D049BB133111EB) & _MASK64
    return x ^ (x >> 31)


def sample_seed(seed: int, epoch: int, index: int) -> int:
    """The augmentation seed of sample ``index`` in ``epoch`` (a 63-bit integer)."""
    return _mix64(_mix64(_mix64(seed & _MASK64) ^ epoch) ^ index) >> 1


class ResumableSampler(DistributedSampler):
    """A (distributed) sampler whose epoch order depends only on ``(seed, epoch)`` and that can skip ahead.

    Without ``distributed`` it is a one-replica sampler (``num_replicas=1, rank=0``). See the module docstring.
    """

    def __init__(
        self,
        dataset: Dataset,
        shuffle: bool = True,
        seed: int = 0,
        distributed: bool = False,
        num_replicas: int | None = None,
        rank: int | None = None,
        pad: bool = True,
        seed_per_sample: bool = True,
    ) -> None:
        if not distributed:
            num_replicas, rank = (1 if num_replicas is None else num_replicas), (0 if rank is None else rank)
        super().__init__(
            dataset, num_replicas=num_replicas, rank=rank, shuffle=shuffle, seed=seed, drop_last=False
        )
        self.pad = pad
        self.seed_per_sample = seed_per_sample
        self._skip = 0
        self._skip_epoch: int | None = None

    def epoch_indices(self) -> list[int]:
        """This rank's indices for the current epoch, before any skip."""
        n = len(self.dataset)
        if self.shuffle:
            g = torch.Generator()
            g.manual_seed(self.seed + self.epoch)
            order = torch.randperm(n, generator=g).tolist()
        else:
            order = list(range(n))
        if self.pad:
            padding = self.total_size - n
            if padding > 0:
                order += (order * math.ceil(padding / n))[:padding]
            return order[self.rank : self.total_size : self.num_replicas]
        return order[self.rank :: self.num_replicas]

    def _rank_count(self) -> int:
        return self.num_samples if self.pad else len(range(self.rank, len(self.dataset), self.num_replicas))

    def set_epoch(self, epoch: int) -> None:
        """Select the epoch (call before iterating); a pending skip for another epoch is cleared."""
        super().set_epoch(epoch)
        if self._skip_epoch != epoch:
            self._skip, self._skip_epoch = 0, None

    def skip(self, n_samples: int) -> None:
        """Leave out the first ``n_samples`` of this rank's order in the current epoch (a resume point)."""
        total = self._rank_count()
        if not 0 <= n_samples <= total:
            raise ValueError(f"skip({n_samples}): this rank has {total} samples per epoch")
        self._skip, self._skip_epoch = int(n_samples), self.epoch

    @property
    def skipped(self) -> int:
        """Samples skipped in the current epoch."""
        return self._skip if self._skip_epoch == self.epoch else 0

    def __iter__(self) -> Iterator[Any]:
        indices = self.epoch_indices()[self.skipped :]
        if not self.seed_per_sample:
            return iter(indices)
        return iter([(i, sample_seed(self.seed, self.epoch, i)) for i in indices])

    def __len__(self) -> int:
        return self._rank_count() - self.skipped

    def state_dict(self) -> dict[str, int]:
        return {"epoch": int(self.epoch), "seed": int(self.seed), "skipped": self.skipped}


def dataset_labels(dataset: Any) -> list[int]:
    """The integer label of every sample, read from ``targets`` (or ``samples``) without decoding images."""
    targets = getattr(dataset, "targets", None)
    if targets is None and getattr(dataset, "samples", None) is not None:
        targets = [label for _, label in dataset.samples]
    if targets is None:
        raise ConfigError(
            "data.sampler",
            f"needs the labels of the training set, but {type(dataset).__name__} has no `targets` or `samples`",
        )
    labels = [int(t) for t in (targets.tolist() if isinstance(targets, torch.Tensor) else targets)]
    if len(labels) != len(dataset):
        raise ConfigError("data.sampler", f"the dataset has {len(dataset)} samples but {len(labels)} labels")
    return labels


@SAMPLERS.register("class_balanced", aliases=("pk", "balanced"))
class ClassBalancedSampler(ResumableSampler):
    """Batches of ``batch_size / images_per_class`` distinct classes, ``images_per_class`` images each.

    Deterministic per ``(seed, epoch)``, sharded by whole batches across ranks, resumable with ``skip``;
    see the module docstring for how an epoch is built.

    Args:
        dataset: the training set (its ``targets`` give the classes).
        batch_size: images per batch on each rank (the DataLoader's ``batch_size``).
        images_per_class: ``K``, images of each class in a batch.
        seed, distributed, num_replicas, rank, seed_per_sample: as :class:`ResumableSampler`.
        labels: the label of every sample (default: read from ``dataset``).
    """

    def __init__(
        self,
        dataset: Dataset,
        batch_size: int,
        images_per_class: int = 2,
        seed: int = 0,
        distributed: bool = False,
        num_replicas: int | None = None,
        rank: int | None = None,
        seed_per_sample: bool = True,
        labels: Sequence[int] | None = None,
    ) -> None:
        super().__init__(
            dataset,
            shuffle=True,
            seed=seed,
            distributed=distributed,
            num_replicas=num_replicas,
            rank=rank,
            pad=True,
            seed_per_sample=seed_per_sample,
        )
        k = images_per_class
        if not isinstance(k, int) or isinstance(k, bool) or k < 1:
            raise ConfigError("data.sampler.images_per_class", f"expected a positive integer, got {k!r}")
        if batch_size % k:
            raise ConfigError(
                "data.batch_size",
                f"must be a multiple of data.sampler.images_per_class ({k}) for the class_balanced sampler, "
                f"got {batch_size}",
            )
        labels = dataset_labels(dataset) if labels is None else [int(y) for y in labels]
        members: dict[int, list[int]] = {}
        for index, label in enumerate(labels):
            members.setdefault(label, []).append(index)
        self.classes = sorted(members)
        self.members = [torch.tensor(members[c]) for c in self.classes]
        self.batch_size, self.images_per_class = int(batch_size), k
        self.classes_per_batch = batch_size // k
        if self.classes_per_batch > len(self.classes):
            raise ConfigError(
                "data.batch_size",
                f"{batch_size} images of {k} per class need {self.classes_per_batch} classes per batch, "
                f"but the training set has {len(self.classes)}; lower the batch size or raise "
                "data.sampler.images_per_class",
            )
        self.num_batches = self._num_batches()
        self._cache: tuple[int, list[torch.Tensor]] | None = None

    def group_counts(self) -> list[int]:
        """Groups of ``K`` images each class contributes per epoch (before the cap at :attr:`num_batches`)."""
        k = self.images_per_class
        return [max(len(idx) // k, 1) for idx in self.members]

    def _num_batches(self) -> int:
        counts = torch.tensor(self.group_counts())
        n = int(counts.sum()) // self.classes_per_batch
        while n > 0 and int(counts.clamp(max=n).sum()) < n * self.classes_per_batch:
            n -= 1
        return n

    def epoch_batches(self) -> list[torch.Tensor]:
        """Every batch of the current epoch for one process (before sharding), cached per epoch."""
        if self._cache is not None and self._cache[0] == self.epoch:
            return self._cache[1]
        g = torch.Generator().manual_seed(self.seed + self.epoch)
        k, p, n = self.images_per_class, self.classes_per_batch, self.num_batches
        groups: list[torch.Tensor] = []  # per class: its groups for this epoch, [count, K]
        for idx in self.members:
            if len(idx) < k:
                groups.append(idx[torch.randint(len(idx), (1, k), generator=g)])
            else:
                order = idx[torch.randperm(len(idx), generator=g)]
                groups.append(order[: min(len(idx) // k, n) * k].view(-1, k))
        # drop surplus groups at random so that exactly n * P remain (no class then holds more than n)
        owner = torch.cat([torch.full((len(gs),), c) for c, gs in enumerate(groups)])
        left = torch.bincount(
            owner[torch.randperm(len(owner), generator=g)[len(owner) - n * p :]], minlength=len(groups)
        )
        taken = [0] * len(groups)
        batches: list[torch.Tensor] = []
        for remaining in range(n, 0, -1):
            # classes with a group for every remaining batch must come now; the rest are drawn with
            # probability proportional to their groups left (this always completes n batches)
            tight = (left == remaining).nonzero().flatten()
            weights = left.float()
            weights[tight] = 0.0
            free = p - len(tight)
            drawn = torch.multinomial(weights, free, generator=g) if free else tight[:0]
            chosen = torch.cat([tight, drawn])
            chosen = chosen[torch.randperm(p, generator=g)].tolist()
            batches.append(torch.cat([groups[c][taken[c]] for c in chosen]))
            for c in chosen:
                taken[c] += 1
                left[c] -= 1
        self._cache = (self.epoch, batches)
        return batches

    def _rank_batch_ids(self) -> range:
        usable = self.num_batches // self.num_replicas * self.num_replicas
        return range(self.rank, usable, self.num_replicas)

    def epoch_indices(self) -> list[int]:
        """This rank's indices for the current epoch, before any skip."""
        batches = self.epoch_batches()
        return [i for b in self._rank_batch_ids() for i in batches[b].tolist()]

    def _positions(self) -> list[int]:
        """Position in the one-process epoch of each of this rank's samples (the augmentation seed key)."""
        size = self.batch_size
        return [b * size + j for b in self._rank_batch_ids() for j in range(size)]

    def _rank_count(self) -> int:
        return len(self._rank_batch_ids()) * self.batch_size

    def __iter__(self) -> Iterator[Any]:
        skip = self.skipped
        indices = self.epoch_indices()[skip:]
        if not self.seed_per_sample:
            return iter(indices)
        positions = self._positions()[skip:]
        return iter([(i, sample_seed(self.seed, self.epoch, p)) for i, p in zip(indices, positions)])

    def state_dict(self) -> dict[str, int]:
        return {**super().state_dict(), "images_per_class": self.images_per_class}


#: arguments the loader passes to every sampler; a ``data.sampler`` config cannot set them
LOADER_ARGS = (
    "dataset",
    "batch_size",
    "seed",
    "distributed",
    "num_replicas",
    "rank",
    "seed_per_sample",
    "labels",
)


@SAMPLERS.register("random", aliases=("shuffle",))
def random_sampler(
    dataset: Dataset,
    batch_size: int,
    seed: int = 0,
    distributed: bool = False,
    num_replicas: int | None = None,
    rank: int | None = None,
    seed_per_sample: bool = True,
) -> ResumableSampler:
    """The seeded shuffle (the default): every sample once per epoch, padded shards across ranks."""
    del batch_size
    return ResumableSampler(
        dataset,
        shuffle=True,
        seed=seed,
        distributed=distributed,
        num_replicas=num_replicas,
        rank=rank,
        pad=True,
        seed_per_sample=seed_per_sample,
    )


def sampler_config(cfg: Any) -> dict[str, Any] | None:
    """Validate ``data.sampler`` (``null``, a name, or ``{type: ..., options}``); ``None`` means the default.

    The name resolves through the ``SAMPLERS`` registry; the options are the sampler's own parameters
    (``images_per_class``), never what the loader passes itself (:data:`LOADER_ARGS`).
    """
    if cfg is None:
        return None
    cfg = check_part(SAMPLERS, cfg, "data.sampler", LOADER_ARGS)
    for key in cfg:
        if key in LOADER_ARGS:
            raise ConfigError(f"data.sampler.{key}", "is set by the loader (data.batch_size, train.seed ...)")
    return {**cfg, "type": SAMPLERS.canonical_name(cfg["type"])}


def build_sampler(
    cfg: Any,
    dataset: Dataset,
    batch_size: int,
    seed: int = 0,
    distributed: bool = False,
    num_replicas: int | None = None,
    rank: int | None = None,
    seed_per_sample: bool = True,
) -> ResumableSampler:
    """The training sampler of ``data.sampler`` (the seeded shuffle when ``cfg`` is null or ``random``)."""
    cfg = sampler_config(cfg) or {"type": "random"}
    builder = SAMPLERS.get(cfg["type"])
    options = {k: v for k, v in cfg.items() if k != "type"}
    with config_path("data.sampler"):
        return builder(
            dataset,
            batch_size,
            seed=seed,
            distributed=distributed,
            num_replicas=num_replicas,
            rank=rank,
            seed_per_sample=seed_per_sample,
            **options,
        )
