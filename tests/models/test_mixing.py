"""The one batch mixer (timm's Mixup) that train.mixup and the baseline method share."""

from __future__ import annotations

import pytest
import torch

from visionstack.errors import ConfigError
from visionstack.models.methods.mixing import build_batch_mixer


def test_mixup_soft_targets_and_odd_batches() -> None:
    mixer = build_batch_mixer(3, mixup=1.0)
    images, labels = torch.randn(4, 3, 8, 8), torch.tensor([0, 1, 2, 0])
    kept = images.clone()
    mixed, targets = mixer(images, labels)
    assert torch.equal(images, kept)  # the caller's batch is left as it was
    assert targets.shape == (4, 3) and torch.allclose(targets.sum(1), torch.ones(4))
    lam = targets[1, 1]  # image 1 (class 1) is mixed with image 2 (class 2), its mirror in the batch
    assert torch.allclose(targets[1], lam * torch.eye(3)[1] + (1 - lam) * torch.eye(3)[2])
    assert torch.allclose(mixed, lam * images + (1 - lam) * images.flip(0), atol=1e-6)
    odd_images = torch.randn(3, 3, 8, 8)
    odd, odd_targets = mixer(odd_images, torch.tensor([2, 0, 1]))
    assert torch.equal(odd_targets, torch.eye(3)[[2, 0, 1]]) and torch.equal(odd, odd_images)
    assert build_batch_mixer(3) is None and build_batch_mixer(3, None, None, None) is None
    with pytest.raises(ConfigError, match="train.mixup"):
        build_batch_mixer(3, mixup=-1)
    with pytest.raises(ConfigError, match="train.mix_prob"):
        build_batch_mixer(3, mixup=0.2, prob=1.5)
    with pytest.raises(ValueError, match="not both"):
        mixer(images, targets)
