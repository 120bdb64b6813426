"""PMG: the jigsaw generator, the progressive train step and the evaluation outputs."""

from __future__ import annotations

import pytest
import torch

from tests.methods.toy import RecordingOptim, fine_grained_set
from visionstack.errors import ConfigError
from visionstack.models.build import build_model
from visionstack.models.methods.pmg import jigsaw


def _patches(x: torch.Tensor, n: int) -> list[torch.Tensor]:
    h, w = x.shape[-2] // n, x.shape[-1] // n
    return [x[..., i * h : (i + 1) * h, j * w : (j + 1) * w] for i in range(n) for j in range(n)]


def _sources(image: torch.Tensor, shuffled: torch.Tensor, n: int) -> list[list[int]]:
    """For each patch of ``shuffled``, the indices of the equal patches of ``image``."""
    src, dst = _patches(image, n), _patches(shuffled, n)
    return [[k for k, s in enumerate(src) if torch.equal(s, d)] for d in dst]


@pytest.mark.parametrize("n", [2, 4, 8])
def test_jigsaw_output_is_a_permutation_of_the_input_patches(n: int) -> None:
    torch.manual_seed(n)
    images = torch.randn(3, 3, 32, 32)
    out = jigsaw(images, n, generator=torch.Generator().manual_seed(1))
    orders = []
    for b in range(len(images)):
        sources = _sources(images[b], out[b], n)
        assert all(len(m) == 1 for m in sources)  # every output patch is exactly one input patch
        order = [m[0] for m in sources]
        assert sorted(order) == list(range(n * n))  # ... and every input patch is used once
        orders.append(order)
    assert orders[0] != list(range(n * n))  # the patches moved
    assert orders[1] == orders[0] and orders[2] == orders[0]  # one permutation per batch (official code)


def test_jigsaw_identity_and_remainder() -> None:
    images = torch.randn(2, 3, 30, 33)
    assert jigsaw(images, 1) is images
    out = jigsaw(images, 4, generator=torch.Generator().manual_seed(0))  # 7x8 patches; 2 rows, 1 col left
    assert torch.equal(out[..., 28:, :], images[..., 28:, :])
    assert torch.equal(out[..., :, 32:], images[..., :, 32:])
    assert torch.equal(
        out[..., :28, :32].flatten().sort().values, images[..., :28, :32].flatten().sort().values
    )
    with pytest.raises(ValueError, match="cannot cut"):
        jigsaw(torch.randn(1, 3, 4, 4), 8)


def _pmg(**kwargs) -> torch.nn.Module:
    cfg = {
        "type": "pmg",
        "backbone": {"type": "test_tiny", "out_indices": [0, 1, 2]},
        "neck": {"type": "multi_scale_conv", "mid_channels": 8, "out_channels": 8},
        "head": {"type": "classifier_2fc", "mid_channels": 16},
        "num_classes": 4,
        **kwargs,
    }
    return build_model(cfg)


def test_train_step_makes_one_update_per_granularity_and_reaches_every_parameter() -> None:
    torch.manual_seed(0)
    model = _pmg()
    batch = fine_grained_set(2, size=32)
    seen: list[torch.Tensor] = []
    original_backbone_forward = model.backbone.forward
    model.backbone.forward = lambda x: (seen.append(x.detach().clone()), original_backbone_forward(x))[1]
    optim = RecordingOptim(model)
    logs = model.train().train_step(batch, optim)
    assert optim.updates == 4
    assert set(logs) == {"loss", "loss_step1", "loss_step2", "loss_step3", "loss_step4"}
    assert all(torch.isfinite(v) for v in logs.values())
    assert torch.allclose(logs["loss"], sum(logs[f"loss_step{k}"] for k in range(1, 5)))
    assert optim.missing() == [] and not optim.nonfinite
    # steps 1-3 saw shuffled images (8, 4, 2 patches a side), step 4 the originals
    assert [torch.equal(x, batch["image"]) for x in seen] == [False, False, False, True]
    for x, n in zip(seen[:3], (8, 4, 2)):
        src = torch.stack(_patches(batch["image"], n)).flatten(2).sort(-1).values
        dst = torch.stack(_patches(x, n)).flatten(2).sort(-1).values
        assert torch.equal(src.sort(0).values, dst.sort(0).values)


def test_evaluation_reports_combined_and_concatenated_logits() -> None:
    torch.manual_seed(0)
    model = _pmg().eval()
    images = torch.randn(3, 3, 32, 32)
    out = model.predict_step(images)
    assert set(out) == {"logits", "logits_concat"}
    levels, concat = model.forward_all(images)
    assert torch.allclose(out["logits_concat"], concat)
    assert torch.allclose(out["logits"], levels[0] + levels[1] + levels[2] + concat, atol=1e-6)
    assert torch.allclose(model(images), out["logits"])
    assert model.extract(images, "features").shape == (3, 24)
    assert [t.shape[1] for t in model.extract(images, "encoder")] == [8, 8, 8]
    assert model.extract(images, "pre_logits").shape == (3, 16)


def test_step_weights_scale_each_step() -> None:
    torch.manual_seed(0)
    batch = fine_grained_set(2, size=32)
    logs = {}
    for weights in ([1.0, 1.0, 1.0, 2.0], [0.5, 1.0, 1.0, 4.0]):
        torch.manual_seed(0)
        model = _pmg(step_weights=weights)
        torch.manual_seed(1)
        logs[weights[0]] = model.train().train_step(batch, RecordingOptim(model, lr=0.0))
    assert torch.allclose(logs[0.5]["loss_step1"], 0.5 * logs[1.0]["loss_step1"])
    assert torch.allclose(logs[0.5]["loss_step4"], 2.0 * logs[1.0]["loss_step4"])


def test_configuration_errors_name_the_key() -> None:
    with pytest.raises(ConfigError, match=r"model\.granularities.*4 entries"):
        _pmg(granularities=[8, 4, 1])
    with pytest.raises(ConfigError, match=r"model\.num_classes"):
        _pmg(num_classes=None)
    with pytest.raises(ConfigError, match=r"model\.neck"):
        _pmg(neck="global_average_pooling")
