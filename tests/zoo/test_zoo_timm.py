"""Zoo test: the smallest model of every timm sub-family (>= 150 models, all timm families) as a backbone.

Models are picked systematically, not by hand: timm's models are grouped by (model module, leading name
word), and the smallest-looking name of each group is taken (size words atto < ... < tiny < small < base <
large < huge, then parameter tokens such as ``5m`` / ``1b``, then numbers). Every level of every model is
checked at a small input: channels equal ``feature_info``, reductions non-decreasing, spatial size between
``H / (2 * reduction)`` and ``ceil(H / reduction) + 1``, NCHW.
"""

from __future__ import annotations

import math
import re

import pytest
import timm
import torch

from visionstack.models.backbones.timm import TimmBackbone

pytestmark = pytest.mark.zoo

INPUT = 64
SIZE_WORDS = {
    "test": -1,
    "atto": 0,
    "zepto": 0,
    "femto": 1,
    "pico": 2,
    "xxxs": 2,
    "nano": 3,
    "xxs": 3,
    "mini": 4,
    "xtiny": 4,
    "tiny": 5,
    "ti": 5,
    "t": 5,
    "xs": 5,
    "xsmall": 5,
    "small": 6,
    "s": 6,
    "lite": 6,
    "medium": 7,
    "m": 7,
    "base": 8,
    "b": 8,
    "plus": 9,
    "large": 10,
    "l": 10,
    "big": 10,
    "xl": 11,
    "huge": 12,
    "h": 12,
    "giant": 13,
    "g": 13,
    "gigantic": 14,
    "enormous": 15,
}


def size_key(name: str) -> tuple:
    """Sort key that puts the smallest-looking variant of a name group first."""
    tokens = re.split(r"[_.]", name)
    ranks = [SIZE_WORDS[w] for t in tokens if (w := re.sub(r"(?<=[a-z])\d\d+$", "", t)) in SIZE_WORDS]
    params = [
        int(m.group(1)) * (1000 if m.group(2) == "b" else 1)
        for t in tokens
        if (m := re.fullmatch(r"(\d+)([mb])", t))
    ]
    if not ranks and params:  # "88m", "1b": rank by parameter count
        ranks = [sum(min(params) >= limit for limit in (10, 30, 60, 100, 250, 500, 1000)) + 4]
    numbers = tuple(int(n) for n in re.findall(r"\d+", name))
    return (min(ranks) if ranks else 8, min(params) if params else 0, numbers, len(name), name)


def select_timm_models() -> list[str]:
    """The smallest model of each (timm module, leading name word) group."""
    from timm.models._registry import _model_to_module

    groups: dict[tuple[str, str], list[str]] = {}
    for name in timm.list_models():
        word = re.match(r"[a-z]+", name)
        groups.setdefault((_model_to_module[name], word.group(0) if word else name), []).append(name)
    return sorted(min(names, key=size_key) for names in groups.values())


MODELS = select_timm_models()


def build_and_run(
    name: str, native: bool = False, **kwargs
) -> tuple[TimmBackbone, list[torch.Tensor], torch.Tensor]:
    """Build at 64 px (or the model's minimum input) and run a batch of 2 in eval mode.

    Models that reject ``img_size``, or whose layers cannot work at that size (unpadded stems, halo
    blocks, fixed grids), are built as timm defines them and run at their pretrained input size.
    ``native``: switch the native path on (prefix tokens after the map) before running, where it exists.
    """
    cfg = timm.models.get_pretrained_cfg(name)
    size = max(INPUT, int(cfg.min_input_size[-1]) if cfg is not None and cfg.min_input_size else 0)
    attempts = [{"img_size": size}, {}]
    for i, extra in enumerate(attempts):
        try:
            backbone = TimmBackbone(name, **kwargs, **extra).eval()
            if native and backbone.final_parts == 1:
                backbone.native_encoder()
            if not extra:
                size = int(backbone.pretrained_cfg["input_size"][-1])
            x = torch.randn(2, backbone.in_chans, size, size, generator=torch.Generator().manual_seed(0))
            with torch.no_grad():
                return backbone, backbone(x), x
        except (ValueError, RuntimeError, AssertionError):
            if i == len(attempts) - 1:
                raise
    raise AssertionError("unreachable")


def check_levels(backbone, outs: list[torch.Tensor], size: int) -> None:
    infos = backbone.feature_info
    assert len(outs) == len(infos)
    reductions = [f.reduction for f in infos]
    assert reductions == sorted(reductions), reductions
    for out, info in zip(outs, infos):
        assert out.ndim == 4 and out.shape[0] == 2, (info, tuple(out.shape))
        assert out.shape[1] == info.channels, (info, tuple(out.shape))  # NCHW: channels on dim 1
        for side in out.shape[-2:]:
            assert size / (2 * info.reduction) <= side <= math.ceil(size / info.reduction) + 1, (
                info,
                tuple(out.shape),
            )


def test_selection_covers_every_family() -> None:
    from timm.models._registry import _model_to_module

    families = {_model_to_module[n] for n in timm.list_models()}
    assert len(MODELS) >= 150
    assert {_model_to_module[n] for n in MODELS} == families


@pytest.mark.parametrize("name", MODELS)
def test_timm_backbone_levels(name: str) -> None:
    backbone, outs, x = build_and_run(name, features_only=True)
    check_levels(backbone, outs, x.shape[-1])


@pytest.mark.parametrize("name", MODELS)
def test_timm_native_path(name: str) -> None:
    """Classifier mode gives one NCHW map with the channels it declares, the native encoder rebuilds exactly
    the input of timm's own classifier, and the native head computes what that classifier computes."""
    backbone, outs, x = build_and_run(name, native=True)
    fmap = outs[0]
    assert fmap.ndim == 4 and fmap.shape[0] == 2 and fmap.shape[1] == backbone.feature_info[0].channels
    if backbone.final_parts > 1:  # a list of tensors from forward_features: no single-map native path
        with pytest.raises(ValueError, match="gap"):
            backbone.native_encoder()
        return
    encoder = backbone.native_encoder()
    head = backbone.native_head(3).eval()
    # the native head is timm's classifier: install it as the model's own classifier and compare
    backbone.model.reset_classifier(3)
    for path, module in zip(head.paths, head.classifiers):
        assert path, "the classifier's place in timm's state dict is known"
        backbone.model.set_submodule(path, module)
    with torch.no_grad():
        pooled = encoder(outs if len(outs) > 1 else outs[0])
        feats = backbone.model.forward_features(x)
        expected = backbone.model.forward_head(feats, pre_logits=True)
        logits = backbone.model.forward_head(feats)
    assert pooled.shape == (2, encoder.out_channels)
    torch.testing.assert_close(pooled, expected, rtol=0, atol=1e-6)
    if head.exact:
        torch.testing.assert_close(head(pooled), logits, rtol=1e-5, atol=1e-5)
    else:  # documented: logits that read more than the pre-logits vector (VOLO's auxiliary head)
        assert not torch.allclose(head(pooled), logits, atol=1e-5)
