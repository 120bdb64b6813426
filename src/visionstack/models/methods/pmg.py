"""Progressive Multi-Granularity training (PMG; Du et al., "Fine-Grained Visual Classification via
Progressive Multi-Granularity Training of Jigsaw Patches", ECCV 2020).

The backbone's last ``L`` levels (ResNet-50: layer2..layer4, i.e. ``out_indices: [-3, -2, -1]``) each go
through a conv block (the ``multi_scale_conv`` neck), global max pooling and their own classifier; a
further classifier sees the concatenation of all pooled levels. Every training batch runs ``L + 1``
steps, each with its own optimizer update: step ``l`` shows images cut into ``n_l x n_l`` shuffled
patches (the jigsaw generator; ``n = 8, 4, 2`` for ``L = 3``) and trains classifier ``l``; the last step
shows the original images and trains the concatenated classifier (loss weight 2, as the official code).
Evaluation reports the concatenated classifier (``logits_concat``) and the sum of all ``L + 1`` outputs
(``logits``, the default prediction).

:class:`MultiGranularityNet` holds the shared multi-level structure; PMG-V2 (``pmg_v2.py``) builds on it.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import nn

from visionstack.core.build import build_part, current_path
from visionstack.core.registry import BACKBONES, ENCODERS, HEADS, METHODS, NECKS
from visionstack.errors import ConfigError
from visionstack.models.classifier import PartCfg, build_losses
from visionstack.models.parts.base import as_list, single, total_loss

STAGES = ("backbone", "neck", "encoder", "features", "pre_logits", "logits")


def jigsaw(images: torch.Tensor, n: int, generator: torch.Generator | None = None) -> torch.Tensor:
    """Cut ``images [B, C, H, W]`` into ``n x n`` patches and shuffle them (one permutation per batch).

    Patches are ``H // n x W // n``; rows / columns beyond ``n`` patches (when ``H`` or ``W`` is not a
    multiple of ``n``) stay in place, as in the official code. ``n <= 1`` returns the images unchanged.
    """
    if n <= 1:
        return images
    b, c, h, w = images.shape
    ph, pw = h // n, w // n
    if ph == 0 or pw == 0:
        raise ValueError(f"cannot cut a {h}x{w} image into {n}x{n} patches; use a larger input or smaller n")
    region = images[..., : n * ph, : n * pw]
    patches = region.reshape(b, c, n, ph, n, pw).permute(0, 1, 2, 4, 3, 5).reshape(b, c, n * n, ph, pw)
    order = torch.randperm(n * n, generator=generator).to(images.device)
    shuffled = patches[:, :, order].reshape(b, c, n, n, ph, pw).permute(0, 1, 2, 4, 3, 5)
    out = images.clone()
    out[..., : n * ph, : n * pw] = shuffled.reshape(b, c, n * ph, n * pw)
    return out


def resolve_num_classes(head: PartCfg, num_classes: int | None) -> int:
    """Classes from the head config (or built head), else from the method's ``num_classes``."""
    value = head.get("num_classes") if isinstance(head, Mapping) else getattr(head, "num_classes", None)
    value = value or num_classes
    if value is None:
        raise ConfigError(
            current_path("num_classes"),
            "the number of classes is not set: give model.num_classes (training fills it from the data set)",
        )
    return int(value)


def _widths(channels: Any) -> list[int]:
    return [int(c) for c in channels] if isinstance(channels, (list, tuple)) else [int(channels)]


class MultiGranularityNet(nn.Module):
    """Backbone levels -> per-level conv blocks (a maps neck) -> pooling -> one classifier per level.

    The same ``head`` config is built once per level (each with that level's width); ``loss`` applies to
    every classifier's logits.
    """

    def __init__(
        self,
        backbone: PartCfg,
        neck: PartCfg,
        encoder: PartCfg,
        head: PartCfg,
        loss: PartCfg | list,
        num_classes: int | None,
    ) -> None:
        super().__init__()
        if backbone is None or head is None or encoder is None:
            raise ConfigError(
                current_path("backbone" if backbone is None else "head" if head is None else "encoder"),
                "this method needs one; null is not allowed here",
            )
        self.backbone = build_part(BACKBONES, backbone, "backbone")
        channels = _widths(self.backbone.out_channels)
        self.neck = None
        if neck is not None:
            self.neck = build_part(NECKS, neck, "neck", {"in_channels": single(channels)})
            if (
                getattr(self.neck, "consumes", "maps") != "maps"
                or getattr(self.neck, "outputs", "maps") != "maps"
            ):
                raise ConfigError(
                    current_path("neck"),
                    "needs a neck that maps feature maps to feature maps "
                    "(e.g. multi_scale_conv), one per backbone level",
                )
            channels = _widths(self.neck.out_channels)
        self.encoder = build_part(
            ENCODERS, encoder, "encoder", {"in_channels": single(channels), "backbone": self.backbone}
        )
        self.feature_widths = _widths(self.encoder.out_channels)
        self.levels = len(self.feature_widths)
        self.num_classes = resolve_num_classes(head, num_classes)
        self.heads = nn.ModuleList(
            build_part(HEADS, head, "head", {"in_channels": w, "num_classes": self.num_classes})
            for w in self.feature_widths
        )
        self.loss = build_losses(loss, {"num_classes": self.num_classes})
        if self.loss is None:
            raise ConfigError(
                current_path("loss"), "this method trains with a loss; null is not allowed here"
            )

    def level_features(self, maps: Sequence[torch.Tensor]) -> list[torch.Tensor]:
        """Backbone maps -> one pooled vector per level."""
        x: Any = list(maps)
        if self.neck is not None:
            x = as_list(self.neck(x))
        return as_list(self.encoder(x if len(x) > 1 else x[0]))

    def level_logits(self, features: Sequence[torch.Tensor]) -> list[torch.Tensor]:
        return [head(f) for head, f in zip(self.heads, features)]

    def step_loss(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """The configured loss(es) on one classifier's logits, summed."""
        return total_loss(self.loss(logits, targets))


@METHODS.register("pmg", aliases=("progressive_multi_granularity",))
class PMG(MultiGranularityNet):
    """PMG: progressive multi-granularity training with jigsaw patches.

    Args:
        backbone: returns the maps of the levels to train (ResNet-50: ``out_indices: [-3, -2, -1]``).
        neck: per-level conv blocks (``multi_scale_conv``: 1x1 -> 512, 3x3 -> half the widest input).
        encoder: pooling of each level (``gmp``, global max pooling, as the paper).
        head: classifier built per level (``classifier_2fc``: BN-Linear(512)-BN-act-Linear).
        concat_head: classifier of the concatenated levels (default: the ``head`` config).
        loss: loss of every step (``cross_entropy``).
        num_classes: classes (filled from the data set by training).
        granularities: jigsaw ``n`` of each step, one per level then one for the concatenated step
            (default ``[2**L, ..., 2, 1]``: ``[8, 4, 2, 1]`` for three levels).
        step_weights: loss weight of each step (default 1 per level and 2 for the concatenated step).
    """

    def __init__(
        self,
        backbone: PartCfg,
        neck: PartCfg = "multi_scale_conv",
        encoder: PartCfg = "gmp",
        head: PartCfg = "classifier_2fc",
        concat_head: PartCfg = None,
        loss: PartCfg | list = "cross_entropy",
        num_classes: int | None = None,
        granularities: list[int] | None = None,
        step_weights: list[float] | None = None,
    ) -> None:
        super().__init__(backbone, neck, encoder, head, loss, num_classes)
        self.concat_head = build_part(
            HEADS,
            concat_head if concat_head is not None else head,
            "concat_head",
            {"in_channels": sum(self.feature_widths), "num_classes": self.num_classes},
        )
        steps = self.levels + 1
        default_n = [2 ** (self.levels - i) for i in range(self.levels)] + [1]
        self.granularities = list(granularities) if granularities is not None else default_n
        self.step_weights = (
            [float(w) for w in step_weights] if step_weights is not None else [1.0] * self.levels + [2.0]
        )
        for key, values in (("granularities", self.granularities), ("step_weights", self.step_weights)):
            if len(values) != steps:
                raise ConfigError(
                    current_path(key),
                    f"needs {steps} entries (one per backbone level, "
                    f"{self.levels}, then one for the concatenated step), got {values}",
                )
        if any(not isinstance(n, int) or n < 1 for n in self.granularities):
            raise ConfigError(
                current_path("granularities"), f"must be positive ints, got {self.granularities}"
            )

    # -- inference --------------------------------------------------------------------------------
    def forward_all(self, images: torch.Tensor) -> tuple[list[torch.Tensor], torch.Tensor]:
        """Images -> (logits of each level's classifier, logits of the concatenated classifier)."""
        features = self.level_features(self.backbone(images))
        return self.level_logits(features), self.concat_head(torch.cat(features, dim=1))

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """Images -> the combined prediction: the sum of every classifier's logits."""
        levels, concat = self.forward_all(images)
        return torch.stack([*levels, concat]).sum(0)

    @torch.no_grad()
    def predict_step(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        """``logits`` (combined, the default) and ``logits_concat`` (the concatenated classifier alone)."""
        levels, concat = self.forward_all(images)
        return {"logits": torch.stack([*levels, concat]).sum(0), "logits_concat": concat}

    @torch.no_grad()
    def extract(self, images: torch.Tensor, stage: str = "pre_logits") -> Any:
        """``backbone`` / ``neck`` (maps per level), ``encoder`` (vectors per level), ``features`` (their
        concatenation), ``pre_logits`` (what the concatenated classifier's last layer sees), ``logits``."""
        if stage not in STAGES:
            raise ValueError(f"unknown stage {stage!r}; stages are {', '.join(STAGES)}")
        maps = self.backbone(images)
        if stage == "backbone":
            return maps
        if stage == "neck":
            return as_list(self.neck(list(maps))) if self.neck is not None else maps
        if stage == "logits":
            return self(images)
        features = self.level_features(maps)
        if stage == "encoder":
            return features
        concat = torch.cat(features, dim=1)
        return concat if stage == "features" else self.concat_head.pre_logits(concat)

    # -- training ---------------------------------------------------------------------------------
    def train_step(self, batch: Mapping[str, torch.Tensor], optim) -> dict[str, torch.Tensor]:
        """``L + 1`` updates: jigsaw ``n_l`` -> classifier ``l``, then the original -> concatenated one.

        Logs ``loss_step<k>`` (weighted loss of step ``k``, 1-based) and ``loss`` (their sum).
        """
        images, targets = batch["image"], batch["label"]
        logs: dict[str, torch.Tensor] = {}
        for step, (n, weight) in enumerate(zip(self.granularities, self.step_weights)):
            with optim.autocast():
                features = self.level_features(self.backbone(jigsaw(images, n)))
                if step < self.levels:
                    logits = self.heads[step](features[step])
                else:
                    logits = self.concat_head(torch.cat(features, dim=1))
                loss = weight * self.step_loss(logits, targets)
            optim.update(loss)
            logs[f"loss_step{step + 1}"] = loss.detach()
        return {"loss": torch.stack(list(logs.values())).sum(), **logs}
