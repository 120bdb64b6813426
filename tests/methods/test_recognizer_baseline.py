"""The embedding recognizer (cosine classifier) and the baseline's mixup / cutmix options."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from tests.methods.toy import RecordingOptim, fine_grained_set
from visionstack.models.build import build_model
from visionstack.models.parts.heads import CosineHead


def _recognizer(**kwargs) -> torch.nn.Module:
    return build_model({"type": "recognizer", "backbone": "test_tiny", "num_classes": 5, **kwargs})


def test_default_head_is_a_cosine_classifier_with_learnable_scale_and_no_bias() -> None:
    model = _recognizer()
    assert isinstance(model.head, CosineHead)
    assert isinstance(model.head.scale, torch.nn.Parameter) and model.head.bias is None


def test_logits_equal_scale_times_cosine_of_the_angle() -> None:
    torch.manual_seed(0)
    model = _recognizer().eval()
    with torch.no_grad():
        model.head.scale.fill_(7.0)
    images = torch.randn(3, 3, 32, 32)
    with torch.no_grad():
        features = model.forward_features(images)
        logits = model(images)
    w = model.head.weight.detach()
    for b in range(3):
        for k in range(5):
            f, v = features[b], w[k]
            cos_angle = float(f @ v) / (float(f.norm()) * float(v.norm()))
            assert float(logits[b, k]) == pytest.approx(7.0 * cos_angle, rel=1e-5, abs=1e-6)
    assert float(logits.abs().max()) <= 7.0 + 1e-5


def test_output_types_do_not_depend_on_the_mode() -> None:
    torch.manual_seed(0)
    model = _recognizer(embedding_dim=6)
    images = torch.randn(4, 3, 32, 32)
    for mode in (True, False):
        model.train(mode)
        assert model(images).shape == (4, 5)
        emb = model.extract(images, stage="embedding")
        assert emb.shape == (4, 6)
        assert torch.allclose(emb.norm(dim=1), torch.ones(4), atol=1e-5)
    model.eval()
    out = model.predict_step(images)
    assert torch.allclose(out["embedding"], model.extract(images, "embedding"))
    assert torch.allclose(out["logits"], model(images))
    with pytest.raises(ValueError, match="unknown stage"):
        model.extract(images, "nope")


def test_recognizer_train_step_gradients_reach_the_scale() -> None:
    torch.manual_seed(0)
    model = _recognizer(embedding_dim=8, embedding_norm=True)
    optim = RecordingOptim(model)
    logs = model.train().train_step(fine_grained_set(2, size=32), optim)
    assert torch.isfinite(logs["loss"])
    assert optim.missing() == [] and "head.scale" in optim.with_grad


def test_baseline_without_mixing_passes_hard_labels() -> None:
    model = build_model({"type": "baseline", "backbone": "test_tiny", "num_classes": 4})
    assert model.mixer is None
    batch = fine_grained_set(1, size=32)
    images, labels = model.mix(batch["image"], batch["label"])
    assert images is batch["image"] and labels is batch["label"]


@pytest.mark.parametrize("kind", ["mixup", "cutmix"])
def test_baseline_mixing_gives_soft_targets_to_the_loss(kind: str) -> None:
    torch.manual_seed(0)
    model = build_model({"type": "baseline", "backbone": "test_tiny", "num_classes": 4, f"{kind}_alpha": 1.0})
    np.random.seed(0)  # timm draws lambda from numpy
    batch = fine_grained_set(2, size=32)
    images, targets = model.mix(batch["image"], batch["label"])
    assert targets.shape == (8, 4) and torch.allclose(targets.sum(1), torch.ones(8))
    # timm mixes each image with its mirror in the batch (flip(0)), with one lambda for the batch
    differ = batch["label"] != batch["label"].flip(0)
    assert differ.any()
    lam = targets[torch.arange(8), batch["label"]][differ][0]  # weight of the image's own class
    assert 0 < lam < 1  # this seed draws a real mix
    assert torch.allclose(targets[differ].max(1).values.min(), torch.maximum(lam, 1 - lam))
    rolled = batch["image"].flip(0)
    if kind == "mixup":
        assert torch.allclose(images, lam * batch["image"] + (1 - lam) * rolled, atol=1e-6)
    else:  # a box from the neighbour whose area fraction is 1 - lambda
        from_other = (images != batch["image"]).any(1).float().mean((1, 2))
        assert torch.allclose(from_other, (1 - lam).expand(8), atol=1e-6)
    # the loss sees exactly these soft targets
    seen = {}
    original = model.compute_losses

    def spy(outputs, targets_):
        seen["targets"] = targets_
        return original(outputs, targets_)

    model.compute_losses = spy
    torch.manual_seed(0)
    np.random.seed(0)
    logs = model.train().train_step(batch, RecordingOptim(model))
    assert seen["targets"].shape == (8, 4) and torch.isfinite(logs["loss"])
    assert not torch.equal(seen["targets"], F.one_hot(batch["label"], 4).float())


def test_baseline_rejects_already_soft_labels() -> None:
    model = build_model({"type": "baseline", "backbone": "test_tiny", "num_classes": 4, "mixup_alpha": 0.4})
    with pytest.raises(ValueError, match="not both"):
        model.mix(torch.randn(2, 3, 32, 32), torch.full((2, 4), 0.25))
