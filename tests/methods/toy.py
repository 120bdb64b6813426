"""A generated fine-grained image set and small training helpers for the method tests.

Classes differ only in a small local detail: a 3x3 mark whose colour is the class, drawn at a random
position on a noisy grey background. Everything else (position, noise) is shared by all classes.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator

import torch

from visionstack.data.sampling import ClassBalancedSampler
from visionstack.engine.optim_wrapper import OptimWrapper

COLOURS = torch.tensor([[1.0, -1.0, -1.0], [-1.0, 1.0, -1.0], [-1.0, -1.0, 1.0], [1.0, 1.0, -1.0]])


def fine_grained_set(
    n_per_class: int, size: int = 32, num_classes: int = 4, seed: int = 0, pairs: bool = False
) -> dict[str, torch.Tensor]:
    """``{"image": [N, 3, size, size], "label": [N]}``; with ``pairs`` consecutive samples share a class."""
    g = torch.Generator().manual_seed(seed)
    n = n_per_class * num_classes
    labels = torch.arange(num_classes).repeat_interleave(n_per_class)
    labels = labels[torch.randperm(n, generator=g)]
    if pairs:
        labels = labels.reshape(-1, 2)[:, :1].repeat(1, 2).reshape(-1)[:n]
    images = 0.4 * torch.randn(n, 3, size, size, generator=g)
    ys = torch.randint(0, size - 3, (n,), generator=g)
    xs = torch.randint(0, size - 3, (n,), generator=g)
    for i in range(n):
        images[i, :, ys[i] : ys[i] + 3, xs[i] : xs[i] + 3] = COLOURS[labels[i]][:, None, None]
    return {"image": images, "label": labels, "index": torch.arange(n)}


class RecordingOptim(OptimWrapper):
    """An OptimWrapper that records, before each step, which parameters received a finite gradient."""

    def __init__(self, model: torch.nn.Module, lr: float = 0.01, **kwargs) -> None:
        params = [p for p in model.parameters() if p.requires_grad]
        super().__init__(torch.optim.SGD(params, lr=lr, momentum=0.9), **kwargs)
        self.names = {id(p): name for name, p in model.named_parameters() if p.requires_grad}
        self.with_grad: set[str] = set()
        self.nonfinite: set[str] = set()
        self.updates = 0

    def step(self) -> None:
        for group in self.optimizer.param_groups:
            for p in group["params"]:
                if p.grad is not None and bool(p.grad.abs().sum() > 0):
                    self.with_grad.add(self.names[id(p)])
                if p.grad is not None and not bool(torch.isfinite(p.grad).all()):
                    self.nonfinite.add(self.names[id(p)])
        self.updates += 1
        super().step()

    def missing(self) -> list[str]:
        return sorted(set(self.names.values()) - self.with_grad)


def train(
    model: torch.nn.Module,
    data: dict[str, torch.Tensor],
    steps: int,
    batch_size: int = 16,
    lr: float = 0.01,
    seed: int = 0,
    paired: bool = False,
    images_per_class: int = 2,
) -> list[dict[str, torch.Tensor]]:
    """``steps`` calls of ``model.train_step`` on random batches of ``data`` with Adam (with ``paired``:
    batches of the class-balanced sampler, ``images_per_class`` images of each of their classes)."""
    torch.manual_seed(seed)
    optim = OptimWrapper(torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=lr))
    model.train()
    n = len(data["label"])
    batches = class_balanced_batches(data, batch_size, images_per_class, seed) if paired else None
    logs = []
    for _ in range(steps):
        if batches is not None:
            batch = next(batches)
        else:
            idx = torch.randperm(n)[:batch_size]
            batch = {k: v[idx] for k, v in data.items()}
        logs.append(model.train_step(batch, optim))
    return logs


def class_balanced_batches(
    data: dict[str, torch.Tensor], batch_size: int, images_per_class: int = 2, seed: int = 0
) -> Iterator[dict[str, torch.Tensor]]:
    """Endless batches drawn by ``data.sampler: {type: class_balanced}``, epoch after epoch."""
    labels = data["label"].tolist()
    sampler = ClassBalancedSampler(
        range(len(labels)), batch_size, images_per_class, seed=seed, seed_per_sample=False, labels=labels
    )
    for epoch in itertools.count():
        sampler.set_epoch(epoch)
        for idx in torch.tensor(list(sampler)).split(batch_size):
            yield {k: v[idx] for k, v in data.items()}


@torch.no_grad()
def accuracy(model: torch.nn.Module, data: dict[str, torch.Tensor], key: str = "logits") -> float:
    model.eval()
    logits = model.predict_step(data["image"])[key]
    return float((logits.argmax(1) == data["label"]).float().mean())
