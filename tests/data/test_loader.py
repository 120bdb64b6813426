"""build_dataset / build_loader from a data config; the resumable sampler and per-sample seeding."""

from __future__ import annotations

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
