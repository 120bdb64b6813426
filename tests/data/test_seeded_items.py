"""Seeded items ``dataset[(index, seed)]``: augmentation depends only on the seed, costs no RNG of the caller,
and is the same in loader workers as in the main process -- for torch-only pipelines and for transforms that
also draw from python's ``random`` and numpy."""

from __future__ import annotations

import random
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torch.utils.data import DataLoader

from visionstack.data.datasets import ImageFolderDataset, seeded_rng
from visionstack.data.transforms import build_train_transforms, draws_torch_rng_only


class ThreeSourceJitter:
    """A transform drawing from torch, python's ``random`` and numpy (as timm's or user transforms may)."""

    def __call__(self, image) -> torch.Tensor:
        draws = [torch.rand(()).item(), random.random(), float(np.random.rand())]
        return torch.tensor(draws, dtype=torch.float64)


def _global_states() -> tuple:
    keys = np.random.get_state()[1]
    return torch.get_rng_state(), random.getstate(), keys.copy()


def _same_states(a: tuple, b: tuple) -> bool:
    return torch.equal(a[0], b[0]) and a[1] == b[1] and np.array_equal(a[2], b[2])


@pytest.fixture()
def folder(tmp_path: Path) -> Path:
    """Two classes of three 8x8 noise images (random crops and flips of them differ)."""
    rng = np.random.default_rng(0)
    for k in range(6):
        (tmp_path / "ab"[k % 2]).mkdir(exist_ok=True)
        pixels = rng.integers(0, 256, (8, 8, 3), dtype=np.uint8)
        Image.fromarray(pixels).save(tmp_path / "ab"[k % 2] / f"{k}.png")
    return tmp_path


def test_which_pipelines_need_only_torch_seeded() -> None:
    from torchvision import transforms as v1
    from torchvision.transforms import v2

    assert draws_torch_rng_only(None) and draws_torch_rng_only(build_train_transforms(16))
    assert draws_torch_rng_only(v2.RandomApply([v2.RandomChoice([v2.RandomHorizontalFlip()])]))
    assert not draws_torch_rng_only(v2.Compose([v2.RandomHorizontalFlip(), v2.Lambda(lambda x: x)]))
    assert not draws_torch_rng_only(v1.RandomOrder([v1.RandomHorizontalFlip()]))  # python's random inside
    assert not draws_torch_rng_only(ThreeSourceJitter())


def test_torch_only_pipeline_matches_a_torch_seeded_reference(folder: Path) -> None:
    ds = ImageFolderDataset(str(folder), transform=build_train_transforms(6, resize_size=8, preset="fgvc"))
    assert ds.torch_rng_only
    random.seed(5)
    np.random.seed(5)
    torch.manual_seed(5)
    before = _global_states()
    items = [ds[(i, 1000 + i)]["image"] for i in range(len(ds))]
    assert _same_states(before, _global_states())  # nothing consumed, nothing reseeded
    for i, image in enumerate(items):  # what seeding the whole of torch gives (the previous implementation)
        torch.manual_seed(1000 + i)
        assert torch.equal(image, ds.transform(ds.load_image(i)))
    torch.manual_seed(5)
    assert not all(torch.equal(a, ds[(i, 7)]["image"]) for i, a in enumerate(items))  # the seed matters
    ds.transform = ThreeSourceJitter()  # replacing the transform re-decides what to seed
    assert not ds.torch_rng_only


def test_python_and_numpy_draws_are_seeded_and_restored(folder: Path) -> None:
    ds = ImageFolderDataset(str(folder), transform=ThreeSourceJitter())
    runs = []
    for state in (1, 2):
        random.seed(state)
        np.random.seed(state)
        torch.manual_seed(state)
        before = _global_states()
        runs.append(torch.stack([ds[(i, 40 + i)]["image"] for i in range(len(ds))]))
        assert _same_states(before, _global_states())
    assert torch.equal(runs[0], runs[1])  # independent of the caller's RNG state
    assert len({tuple(r) for r in runs[0].tolist()}) == len(ds)  # and different per seed
    with seeded_rng(40):
        assert runs[0][0].tolist() == [torch.rand(()).item(), random.random(), float(np.random.rand())]


def test_workers_give_the_main_process_items(folder: Path) -> None:
    ds = ImageFolderDataset(str(folder), transform=ThreeSourceJitter())
    keys = [(i, 77 * i + 3) for i in range(len(ds))] * 2  # each worker sees several seeded items in a row
    inline = torch.stack([ds[k]["image"] for k in keys])
    loader = DataLoader(ds, sampler=keys, batch_size=None, num_workers=2)
    workers = torch.stack([item["image"] for item in loader])
    assert torch.equal(inline, workers)
