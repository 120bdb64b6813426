"""Embedding recognizer (as Recognite): backbone -> pooling -> [embedding layer] -> cosine classifier.

The embedding is the L2-normalized feature the cosine head compares with its class vectors; the logits
are ``scale * cos(embedding, w_k)`` with a learnable scale (temperature) and no bias by default. The
output type never depends on train/eval mode: ``forward`` always returns logits and
``extract(images, stage="embedding")`` always returns embeddings, so the same model serves closed-set
classification and retrieval (see :mod:`visionstack.tools.retrieval`).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from visionstack.core.build import build_part, current_path, invalid
from visionstack.core.registry import BACKBONES, ENCODERS, METHODS
from visionstack.errors import ConfigError
from visionstack.models.methods.base import PartCfg, required
from visionstack.models.methods.classifier import ImageClassifier
from visionstack.models.parts.base import single, total_channels

DEFAULT_HEAD: Mapping[str, Any] = {"type": "cosine", "learn_scale": True, "bias": False}


class EmbeddingLayer(nn.Module):
    """``Linear(C, D)`` (+ optional ``BatchNorm1d(D)``): a vector neck giving the embedding width."""

    consumes = "vectors"

    def __init__(self, in_channels: int, out_channels: int, norm: bool = False) -> None:
        super().__init__()
        if out_channels < 1:
            raise invalid("embedding_dim", f"must be positive, got {out_channels}")
        self.in_channels, self.out_channels = in_channels, out_channels
        self.fc = nn.Linear(in_channels, out_channels)
        self.norm = nn.BatchNorm1d(out_channels) if norm else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.norm(self.fc(x))


@METHODS.register("recognizer", aliases=("embedding_recognizer", "recognite", "embedding_classifier"))
class Recognizer(ImageClassifier):
    """Embedding model with a cosine classifier; ``extract`` gives the ``embedding`` by default.

    Args:
        backbone: any backbone; its last selected map is pooled.
        encoder: pooling (``gap``; ``gem`` is common for retrieval).
        head: the classifier on the embedding (default ``cosine`` with ``learn_scale: true``, no bias).
        loss: classification loss on the logits (``cross_entropy``).
        num_classes: classes (filled from the data set by training).
        embedding_dim: width of a Linear embedding layer after pooling (None: the pooled width).
        embedding_norm: BatchNorm1d after the embedding layer.
    """

    stages = (*ImageClassifier.stages, "embedding")
    default_stage = "embedding"

    def __init__(
        self,
        backbone: PartCfg,
        encoder: PartCfg = "gap",
        head: PartCfg = None,
        loss: PartCfg | list = "cross_entropy",
        num_classes: int | None = None,
        embedding_dim: int | None = None,
        embedding_norm: bool = False,
    ) -> None:
        built = build_part(BACKBONES, required(backbone, "backbone", "a recognizer"), "backbone")
        required(encoder, "encoder", "a recognizer")
        pool = build_part(
            ENCODERS, encoder, "encoder", {"in_channels": single(list(built.out_channels)), "backbone": built}
        )
        neck = None
        if embedding_dim is not None:
            neck = EmbeddingLayer(total_channels(pool.out_channels), embedding_dim, norm=embedding_norm)
        super().__init__(
            built,
            encoder=pool,
            neck=neck,
            head=head if head is not None else dict(DEFAULT_HEAD),
            loss=loss,
            num_classes=num_classes,
        )
        if not hasattr(self.head, "pre_logits"):
            raise ConfigError(current_path("head"), "the head must expose pre_logits (the embedding)")

    def embed(self, images: torch.Tensor) -> torch.Tensor:
        """Images -> L2-normalized embeddings ``[B, D]`` (what the head's last layer sees), in any mode."""
        return F.normalize(self.head.pre_logits(self.forward_features(images)), dim=-1)

    def stage_outputs(self, images: torch.Tensor) -> dict[str, Any]:
        """The classifier's stages and ``embedding`` (the normalized embedding), from one pass."""
        record = super().stage_outputs(images)
        record["embedding"] = F.normalize(record["pre_logits"], dim=-1)
        return record

    @torch.no_grad()
    def predict_step(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        """``logits`` (scored by evaluation) and ``embedding`` (for retrieval metrics)."""
        features = self.forward_features(images)
        return {
            "logits": self.head(features),
            "embedding": F.normalize(self.head.pre_logits(features), dim=-1),
        }
