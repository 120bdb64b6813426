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

from collections.abc import Mapping
from typing import Any

import torch

from visionstack.core.build import build_part, current_path
from visionstack.core.registry import HEADS, METHODS
from visionstack.errors import ConfigError
from visionstack.models.methods.base import PartCfg
from visionstack.models.methods.multi_level import MultiGranularityNet
from visionstack.models.parts.base import as_list


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

    stages = ("backbone", "neck", "encoder", "features", "pre_logits", "logits")
    default_stage = "pre_logits"

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

    def stage_outputs(self, images: torch.Tensor) -> dict[str, Any]:
        """``backbone`` / ``neck`` (maps per level), ``encoder`` (vectors per level), ``features`` (their
        concatenation), ``pre_logits`` (what the concatenated classifier's last layer sees), ``logits``."""
        maps = self.backbone(images)
        mapped = as_list(self.neck(list(maps))) if self.neck is not None else list(maps)
        features = as_list(self.encoder(mapped if len(mapped) > 1 else mapped[0]))
        concat = torch.cat(features, dim=1)
        logits = torch.stack([*self.level_logits(features), self.concat_head(concat)]).sum(0)
        return {
            "backbone": maps,
            "neck": mapped if self.neck is not None else maps,
            "encoder": features,
            "features": concat,
            "pre_logits": self.concat_head.pre_logits(concat),
            "logits": logits,
        }

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
