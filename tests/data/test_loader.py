"""build_dataset / build_loader from a data config; the resumable sampler and per-sample seeding."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torch.utils.data import DistributedSampler, TensorDataset

from tests.data.fakes import cub, image_folder
from visionstack.data.loader import (
    ResumableSampler,
    build_dataset,
    build_loader,
    check_same_classes,
    loader_from_data_cfg,
)
from visionstack.data.sampling import ClassBalancedSampler, sampler_config
from visionstack.errors import ConfigError, DataError


def noisy_folder(root: Path, per_class: int = 5) -> Path:
    """Random-noise images so that random crops of different seeds differ."""
    rng = np.random.default_rng(0)
    for c in ("a", "b", "c"):
        (root / c).mkdir(parents=True)
        for k in range(per_class):
            Image.fromarray(rng.integers(0, 256, (20, 24, 3), dtype=np.uint8)).save(root / c / f"{k}.png")
    return root


DATA = {
    "image_size": 16,
    "resize_size": 18,
    "train": {"type": "image_folder"},
    "val": {"type": "image_folder"},
}


def test_build_dataset_and_batch_dict(tmp_path: Path) -> None:
    noisy_folder(tmp_path)
    data = {**DATA, "root": str(tmp_path)}
    train = build_dataset(data, "train")
    assert len(train) == 15 and train.class_names == ["a", "b", "c"]
    loader = build_loader(train, batch_size=4, shuffle=True, seed=1)
    batch = next(iter(loader))
    assert set(batch) == {"image", "label", "index"}
    assert batch["image"].shape == (4, 3, 16, 16) and batch["image"].dtype == torch.float32
    assert batch["label"].shape == (4,) and batch["label"].dtype == torch.long
    assert batch["index"].shape == (4,)
    assert batch["label"].tolist() == [train.targets[i] for i in batch["index"].tolist()]
    assert len(loader) == 4 and sum(len(b["index"]) for b in loader) == 15
    assert len(build_loader(train, batch_size=4, drop_last=True)) == 3


def test_build_dataset_config_errors(tmp_path: Path) -> None:
    base = cub(tmp_path)
    data = {"root": str(base), "train": "cub200", "val": {"type": "cub200"}}
    assert len(build_dataset(data, "train", transform=None)) == 3  # split filled from the role name
    with pytest.raises(
        ConfigError, match=r"data.val.split: dataset 'cub200' has splits train, test; got 'val'"
    ):
        build_dataset(data, "val", transform=None)
    with pytest.raises(ConfigError, match=r"data.test: no dataset configured"):
        build_dataset(data, "test")
    with pytest.raises(ConfigError, match=r"data.train.spilt: unknown key. Did you mean 'split'"):
        build_dataset({"root": str(base), "train": {"type": "cub200", "spilt": "train"}}, "train")
    with pytest.raises(ConfigError, match=r"data.train.root: missing"):
        build_dataset({"train": {"type": "cub200", "split": "train"}}, "train")
    with pytest.raises(ConfigError, match=r"data.decode.on_error: expected 'raise' or 'skip', got 'ignore'"):
        build_dataset({**data, "decode": {"on_error": "ignore"}}, "train")
    with pytest.raises(ConfigError, match=r"data.train.decode.max_pixels"):
        build_dataset({**data, "train": {"type": "cub200", "decode": {"max_pixels": -1}}}, "train")


def test_collate_refuses_untransformed_images(tmp_path: Path) -> None:
    image_folder(tmp_path, {"x": 2})
    ds = build_dataset({"root": str(tmp_path), "train": {"type": "image_folder"}}, "train", transform=None)
    with pytest.raises(DataError, match="must end with ToImage"):
        next(iter(build_loader(ds, batch_size=2)))


def test_sampler_matches_distributed_sampler_and_skip_is_the_tail() -> None:
    data = list(range(23))
    for replicas in (1, 3):
        for rank in range(replicas):
            ours = ResumableSampler(
                data,
                shuffle=True,
                seed=5,
                distributed=True,
                num_replicas=replicas,
                rank=rank,
                seed_per_sample=False,
            )
            ref = DistributedSampler(data, num_replicas=replicas, rank=rank, shuffle=True, seed=5)
            for epoch in (0, 4):
                ours.set_epoch(epoch)
                ref.set_epoch(epoch)
                assert list(ours) == list(ref)
    sampler = ResumableSampler(data, shuffle=True, seed=2, seed_per_sample=False)
    sampler.set_epoch(3)
    full = list(sampler)
    assert sorted(full) == data and full != data
    sampler.skip(8)
    assert list(sampler) == full[8:] and len(sampler) == 15
    assert list(sampler) == full[8:]  # iterating again in the same epoch skips again
    sampler.set_epoch(4)
    assert len(sampler) == 23 and sampler.skipped == 0  # the skip belonged to epoch 3 only
    with pytest.raises(ValueError):
        sampler.skip(24)


def test_unpadded_shards_cover_every_sample_once() -> None:
    shards = []
    for rank in range(4):
        s = ResumableSampler(
            list(range(10)),
            shuffle=True,
            seed=0,
            distributed=True,
            num_replicas=4,
            rank=rank,
            pad=False,
            seed_per_sample=False,
        )
        assert len(s) == len(list(s))
        shards += list(s)
    assert sorted(shards) == list(range(10))


def epoch_batches(loader, epoch: int, skip: int = 0) -> list[dict]:
    loader.sampler.set_epoch(epoch)
    if skip:
        loader.sampler.skip(skip)
    return list(loader)


def test_resumed_loader_gives_the_same_remaining_batches(tmp_path: Path) -> None:
    noisy_folder(tmp_path)
    data = {**DATA, "root": str(tmp_path)}  # fgvc preset: random crop + flip
    train = build_dataset(data, "train")
    full = epoch_batches(build_loader(train, batch_size=3, shuffle=True, seed=7), epoch=2)
    again = epoch_batches(build_loader(train, batch_size=3, shuffle=True, seed=7), epoch=2)
    other_epoch = epoch_batches(build_loader(train, batch_size=3, shuffle=True, seed=7), epoch=3)
    assert not torch.equal(
        torch.cat([b["index"] for b in full]), torch.cat([b["index"] for b in other_epoch])
    )
    torch.manual_seed(123)  # the training process's RNG state must not matter, nor be consumed
    state = torch.get_rng_state()
    resumed_loader = build_loader(train, batch_size=3, shuffle=True, seed=7)
    resumed = epoch_batches(resumed_loader, epoch=2, skip=2 * 3)
    assert torch.equal(torch.get_rng_state(), state)
    assert len(resumed) == len(full) - 2
    for a, b in zip(full[2:], resumed):
        assert torch.equal(a["index"], b["index"]) and torch.equal(a["image"], b["image"])
    for a, b in zip(full, again):
        assert torch.equal(a["image"], b["image"])


def test_augmentations_do_not_depend_on_workers(tmp_path: Path) -> None:
    noisy_folder(tmp_path, per_class=2)
    train = build_dataset({**DATA, "root": str(tmp_path)}, "train")
    inline = epoch_batches(build_loader(train, batch_size=2, shuffle=True, seed=3), epoch=1)
    workers = epoch_batches(build_loader(train, batch_size=2, shuffle=True, seed=3, num_workers=2), epoch=1)
    assert len(inline) == len(workers) == 3
    for a, b in zip(inline, workers):
        assert torch.equal(a["image"], b["image"])
    # same indices, different seed: the augmentation (crop / flip) differs for some sample
    reseeded = epoch_batches(build_loader(train, batch_size=6, shuffle=False, seed=4), epoch=1)[0]
    plain = epoch_batches(build_loader(train, batch_size=6, shuffle=False, seed=3), epoch=1)[0]
    assert torch.equal(reseeded["index"], plain["index"])
    assert not torch.equal(reseeded["image"], plain["image"])


def test_foreign_dataset_is_adapted() -> None:
    foreign = TensorDataset(
        torch.arange(12, dtype=torch.float32).view(6, 2), torch.tensor([0, 1, 0, 1, 0, 1])
    )
    batch = next(iter(build_loader(foreign, batch_size=6)))
    assert batch["index"].tolist() == list(range(6)) and batch["label"].tolist() == [0, 1, 0, 1, 0, 1]
    assert batch["image"].shape == (6, 2)


def test_loader_from_data_cfg_and_class_check(tmp_path: Path) -> None:
    image_folder(tmp_path / "train", {"a": 3, "b": 2})
    image_folder(tmp_path / "val", {"a": 1, "b": 1})
    data = {
        "root": str(tmp_path),
        "image_size": 8,
        "preset": "simple",
        "batch_size": 2,
        "val_batch_size": 4,
        "num_workers": 0,
        "drop_last": True,
        "train": {"type": "image_folder", "split": "train"},
        "val": {"type": "image_folder", "split": "val"},
    }
    train, train_loader = loader_from_data_cfg(data, "train", seed=0)
    val, val_loader = loader_from_data_cfg(data, "val")
    assert len(train_loader) == 2 and train_loader.sampler.shuffle
    assert len(val_loader) == 1 and not val_loader.sampler.shuffle
    assert next(iter(val_loader))["index"].tolist() == [0, 1]
    check_same_classes(train, val)
    image_folder(tmp_path / "test", {"a": 1})
    test = build_dataset({**data, "test": {"type": "image_folder", "split": "test"}}, "test")
    with pytest.raises(DataError, match="the test set has 1 classes and the train set 2"):
        check_same_classes(train, test, "test")


# -- data.sampler: class_balanced ------------------------------------------------------------------------


class Labelled:
    """A dataset of ints with ``targets``: what the class-balanced sampler reads (no images decoded)."""

    def __init__(self, labels: list[int]) -> None:
        self.targets = labels

    def __len__(self) -> int:
        return len(self.targets)

    def __getitem__(self, i: int) -> int:
        return i


# 9 classes of 7..15 images (one image left over in some), and a class of one image
LABELS = [c for c in range(9) for _ in range(7 + c)] + [9]


def balanced(labels=LABELS, batch_size=6, k=2, seed=0, epoch=0, **kwargs) -> ClassBalancedSampler:
    s = ClassBalancedSampler(
        Labelled(labels), batch_size, images_per_class=k, seed=seed, seed_per_sample=False, **kwargs
    )
    s.set_epoch(epoch)
    return s


def chunks(order: list[int], size: int) -> list[list[int]]:
    return [order[i : i + size] for i in range(0, len(order), size)]


def test_class_balanced_batches_hold_k_images_of_each_class() -> None:
    for k, batch_size in ((2, 6), (3, 9), (1, 4)):
        sampler = balanced(batch_size=batch_size, k=k)
        order = list(sampler)
        assert len(order) == len(sampler) and len(order) % batch_size == 0
        for batch in chunks(order, batch_size):
            counts = Counter(LABELS[i] for i in batch)
            assert len(counts) == batch_size // k and set(counts.values()) == {k}
        # an epoch covers about the data set: at most K - 1 left over per class, plus a short tail
        assert len(order) >= 0.8 * len(LABELS)
        # every image at most once, except the class of one image drawn with replacement
        repeated = {i for i, n in Counter(order).items() if n > 1}
        assert {LABELS[i] for i in repeated} <= {9}


def test_class_balanced_epoch_length_is_fixed_and_matches_hand_count() -> None:
    # LABELS, K = 2: groups 3, 4, 4, 5, 5, 6, 6, 7, 7 and 1 (the one-image class) = 48; P = 3 -> 16 batches
    lengths = {len(list(balanced(epoch=e))) for e in range(8)}
    assert lengths == {16 * 6} and len(balanced(epoch=0)) == 16 * 6
    # a class with more than 1/P of the data: groups 20, 1, 1, 1 with P = 2. N = 3 is the largest N with
    # min(20, N) + 3 >= 2 N, so the big class is in all 3 batches and the others fill the second slot.
    labels = [0] * 40 + [1, 1, 2, 2, 3, 3]
    for epoch in range(6):
        s = balanced(labels, batch_size=4, k=2, epoch=epoch)
        order = list(s)
        assert s.num_batches == 3 and len(order) == 12
        for batch in chunks(order, 4):
            counts = Counter(labels[i] for i in batch)
            assert counts[0] == 2 and len(counts) == 2 and set(counts.values()) == {2}


def test_class_balanced_small_class_is_drawn_with_replacement_and_augmented_apart() -> None:
    labels = [0, 0, 0, 0, 1, 1, 1, 1, 2]  # class 2 has one image
    seen = False
    for epoch in range(10):
        s = ClassBalancedSampler(Labelled(labels), 4, images_per_class=2, seed=1)
        s.set_epoch(epoch)
        pairs = list(s)  # (index, augmentation seed)
        assert len({seed for _, seed in pairs}) == len(pairs)  # one seed per position of the epoch
        for batch in chunks(pairs, 4):
            twos = [p for p in batch if p[0] == 8]
            if twos:
                seen = True
                assert len(twos) == 2 and twos[0][1] != twos[1][1]  # same image, different augmentation
    assert seen


def test_class_balanced_is_deterministic_per_seed_and_epoch() -> None:
    first = list(balanced(seed=3, epoch=2))
    assert list(balanced(seed=3, epoch=2)) == first
    assert list(balanced(seed=3, epoch=5)) != first
    assert list(balanced(seed=4, epoch=2)) != first
    torch.manual_seed(0)  # the global RNG plays no part
    assert list(balanced(seed=3, epoch=2)) == first
    s = balanced(seed=3, epoch=5)
    s.set_epoch(2)  # the per-epoch cache follows set_epoch
    assert list(s) == first


@pytest.mark.parametrize("replicas", [2, 3])
def test_class_balanced_shards_are_disjoint_whole_batches_of_the_epoch(replicas: int) -> None:
    labels = [c for c in range(12) for _ in range(8)]  # no class under K: no index twice in an epoch
    whole = chunks(list(balanced(labels, epoch=1)), 6)
    shards = [
        list(balanced(labels, epoch=1, distributed=True, num_replicas=replicas, rank=r))
        for r in range(replicas)
    ]
    assert len({len(s) for s in shards}) == 1  # every rank makes the same number of steps
    for a in range(replicas):
        for b in range(a + 1, replicas):
            assert not set(shards[a]) & set(shards[b])
    usable = len(whole) // replicas * replicas
    assert usable >= len(whole) - replicas + 1
    interleaved = [
        batch for group in zip(*(chunks(s, 6) for s in shards)) for batch in group
    ]  # rank r holds batches r, r + W, ...
    assert interleaved == whole[:usable]
    if len(whole) % replicas == 0:
        assert sorted(i for s in shards for i in s) == sorted(i for b in whole for i in b)
    # a sample's augmentation seed is the same whichever rank draws it
    seeded = ClassBalancedSampler(
        Labelled(labels), 6, images_per_class=2, distributed=True, num_replicas=replicas, rank=replicas - 1
    )
    one = ClassBalancedSampler(Labelled(labels), 6, images_per_class=2)
    for s in (seeded, one):
        s.set_epoch(1)
    assert list(seeded) == [p for b in chunks(list(one), 6)[replicas - 1 : usable : replicas] for p in b]


def test_class_balanced_resume_gives_the_remainder() -> None:
    s = ClassBalancedSampler(
        Labelled(LABELS), 6, images_per_class=2, seed=7, distributed=True, num_replicas=2, rank=1
    )
    s.set_epoch(4)
    full = list(s)
    resumed = ClassBalancedSampler(
        Labelled(LABELS), 6, images_per_class=2, seed=7, distributed=True, num_replicas=2, rank=1
    )
    resumed.set_epoch(4)
    resumed.skip(2 * 6)
    assert len(resumed) == len(full) - 12
    assert list(resumed) == full[12:]  # indices and augmentation seeds
    resumed.set_epoch(5)
    assert resumed.skipped == 0 and len(resumed) > 0
    with pytest.raises(ValueError):
        resumed.skip(len(resumed) + 1)


def test_class_balanced_loader_from_data_cfg(tmp_path: Path) -> None:
    image_folder(tmp_path / "train", {"a": 4, "b": 5, "c": 4, "d": 2})
    image_folder(tmp_path / "val", {"a": 1, "b": 1, "c": 1, "d": 1})
    data = {
        "root": str(tmp_path),
        "image_size": 8,
        "preset": "simple",
        "batch_size": 4,
        "num_workers": 0,
        "sampler": {"type": "class_balanced", "images_per_class": 2},
        "train": {"type": "image_folder", "split": "train"},
        "val": {"type": "image_folder", "split": "val"},
    }
    train, loader = loader_from_data_cfg(data, "train", seed=0)
    assert isinstance(loader.sampler, ClassBalancedSampler)
    loader.sampler.set_epoch(0)
    batches = list(loader)
    assert len(batches) == len(loader) > 0
    for batch in batches:
        labels = batch["label"].tolist()
        assert sorted(Counter(labels).values()) == [2, 2]
        assert labels == [train.targets[i] for i in batch["index"].tolist()]
    _, val_loader = loader_from_data_cfg(data, "val")  # evaluation ignores data.sampler
    assert type(val_loader.sampler) is ResumableSampler and len(val_loader.sampler) == 4
    # the default and `random` are the seeded shuffle
    assert type(loader_from_data_cfg({**data, "sampler": "random"}, "train")[1].sampler) is ResumableSampler


def test_sampler_config_errors() -> None:
    ds = Labelled(LABELS)
    with pytest.raises(ConfigError, match="must be a multiple of data.sampler.images_per_class") as info:
        build_loader(ds, 5, sampler={"type": "class_balanced", "images_per_class": 2})
    assert info.value.path == "data.batch_size"
    with pytest.raises(ConfigError, match=r"unknown sampler 'class_balance'. Did you mean: class_balanced"):
        build_loader(ds, 4, sampler={"type": "class_balance"})
    with pytest.raises(ConfigError, match="unknown key") as info:
        build_loader(ds, 4, sampler={"type": "class_balanced", "images_per_klass": 2})
    assert info.value.path == "data.sampler.images_per_klass"
    with pytest.raises(ConfigError, match="positive integer") as info:
        build_loader(ds, 4, sampler={"type": "class_balanced", "images_per_class": 0})
    assert info.value.path == "data.sampler.images_per_class"
    with pytest.raises(ConfigError, match="need 11 classes per batch, but the training set has 10"):
        build_loader(ds, 22, sampler={"type": "class_balanced", "images_per_class": 2})
    foreign = TensorDataset(torch.zeros(4, 2), torch.tensor([0, 0, 1, 1]))
    with pytest.raises(ConfigError, match="needs the labels of the training set"):
        build_loader(foreign, 2, sampler="class_balanced")
    assert sampler_config("PK") == {"type": "class_balanced"}  # names match like registry names
