"""``timm/<name>``: every timm model (pretrained tags included, ``timm/resnet50.a1_in1k``) as a backbone.

Feature maps come from timm's own machinery: the levels are the model's ``feature_info`` and the maps come
from ``forward_intermediates`` (the funnel behind timm's ``features_only``), always as NCHW; token models'
grids are reshaped and their prefix (class / register) tokens dropped, or returned after the maps with
``return_prefix_tokens``. Without ``features_only`` and ``out_indices`` (a classifier's backbone) the one map
is the model's ``forward_features`` output (last stage plus the model's own final conv / norm), as NCHW.

The model is never downloaded: it is built with ``pretrained=False`` and ``weights`` (a file, or a timm
tag found in the local cache) go through :func:`visionstack.models.weights.load.load_weights`.
``pretrained_cfg`` (input size, mean, std, interpolation, crop_pct) is exposed for data transforms.
``native_encoder()`` / ``native_head(num_classes)`` give the model's own pooling + pre-logits path and
classifier, so a classifier built from them reproduces timm's logits (both, and the reading of the
``forward_features`` layout, live in :mod:`visionstack.models.backbones.timm_native`).
"""

from __future__ import annotations

import functools
import inspect
import logging
from typing import Any

import torch
from torch import nn

from visionstack.core.build import invalid
from visionstack.core.registry import BACKBONES
from visionstack.models.backbones.base import Backbone, bind_model_name
from visionstack.models.backbones.timm_native import TimmNativeEncoder, TimmNativeHead, probe_final_features
from visionstack.models.features.layout import FeatureInfo, to_nchw
from visionstack.models.weights.load import WeightsReport, load_weights

__all__ = ["TimmBackbone", "TimmNativeEncoder", "TimmNativeHead", "timm_backbone_names"]

PREFIX = "timm/"
logger = logging.getLogger(__name__)


def _timm():
    import timm

    return timm


class TimmBackbone(Backbone):
    """A timm model with the common backbone interface (see the module docstring).

    Args:
        model_name: timm model name, optionally with a pretrained tag (``convnext_tiny.fb_in22k``).
        features_only: return every level (``feature_info``) unless ``out_indices`` says otherwise.
        out_indices: levels to return (negatives from the end); default: all with ``features_only``,
            else the model's final features.
        weights: a weights file, or a timm tag (``a1_in1k``, ``DEFAULT``) found in the local cache.
        strict: fail unless every weight matches.
        output_stride: 8 or 16 (dilation) where the model supports it.
        frozen_stages: -1 trains all; ``k`` freezes everything up to and including level ``k``.
        norm_eval: keep every BatchNorm in eval mode during training.
        in_chans: input channels (a 3-channel first conv in the weights is adapted).
        return_prefix_tokens: after the maps, also return each level's prefix tokens ``[B, P, C]``.
        drop_path_rate: stochastic depth rate, where the model has it.
        img_size: input size for models with a fixed grid (ViTs); the position embedding is resized.
    """

    def __init__(
        self,
        model_name: str,
        features_only: bool = False,
        out_indices: list[int] | int | None = None,
        weights: str | None = None,
        strict: bool = False,
        output_stride: int | None = None,
        frozen_stages: int = -1,
        norm_eval: bool = False,
        in_chans: int = 3,
        return_prefix_tokens: bool = False,
        drop_path_rate: float = 0.0,
        img_size: int | None = None,
    ) -> None:
        super().__init__()
        self.model_name = model_name
        self.in_chans = in_chans
        self._create_options = {
            "in_chans": in_chans,
            "output_stride": output_stride,
            "drop_path_rate": drop_path_rate,
            "img_size": img_size,
        }
        self.model = _create(model_name, **self._create_options)
        levels = list(getattr(self.model, "feature_info", None) or [])
        if not levels:
            raise invalid("type", f"timm model {model_name!r} describes no feature levels (feature_info)")
        self.levels = [FeatureInfo(int(f["num_chs"]), int(f["reduction"]), str(f["module"])) for f in levels]
        self.final_features = out_indices is None and not features_only
        self.num_prefix_tokens = int(getattr(self.model, "num_prefix_tokens", 0) or 0)
        self.return_prefix_tokens = bool(return_prefix_tokens)
        self.native = False
        self.weights_report: WeightsReport | None = None
        self._unused_weights: dict[str, torch.Tensor] = {}
        if self.final_features:
            self.out_indices = [len(self.levels) - 1]
            self.final, self.final_parts = probe_final_features(
                self.model, self.pretrained_cfg["input_size"], self.levels[-1]
            )
            self.num_prefix_tokens = self.final.num_prefix_tokens
            self.feature_info = [self.final.info]
        else:
            self.select_levels(self.levels, out_indices, features_only)
            self._load(weights, strict)  # before pruning: a pruned model would report its own gaps
            weights = None
            if hasattr(self.model, "prune_intermediate_layers"):
                self.out_indices = list(
                    self.model.prune_intermediate_layers(self.out_indices, prune_norm=True, prune_head=True)
                )
        self._load(weights, strict)
        fi_params = inspect.signature(self.model.forward_intermediates).parameters
        self._prefix_arg = "return_prefix_tokens" in fi_params
        if (
            return_prefix_tokens
            and not self.final_features
            and self.num_prefix_tokens
            and not self._prefix_arg
        ):
            raise invalid(
                "return_prefix_tokens",
                f"timm model {model_name!r} cannot return prefix tokens of intermediate levels",
            )
        self._stop_early = "stop_early" in fi_params
        self.norm_eval = bool(norm_eval)
        self._freeze_to(frozen_stages)

    # -- construction helpers -------------------------------------------------------------------------
    def _load(self, weights: str | None, strict: bool) -> None:
        if not weights:
            return
        report = load_weights(self.model, weights, strict=strict, arch=self.model_name, family="timm")
        names = self.model.pretrained_cfg.get("classifier") or ()
        roots = {n.split(".")[0] + "." for n in ([names] if isinstance(names, str) else names)}
        # keep the file's classifier (the model was built without one) for native_head()
        self._unused_weights = {k: v for k, v in report.unused.items() if k.startswith(tuple(roots))}
        self.weights_report = report

    def _freeze_to(self, frozen_stages: int) -> None:
        """Freeze every module registered up to the end of level ``frozen_stages`` (and the own parameters
        of the modules enclosing it: a ViT's class token and position embedding)."""
        if self.check_frozen_stages(frozen_stages, len(self.levels)) < 0:
            return
        modules = list(self.model.named_modules())
        names = [n for n, _ in modules]
        target = self.levels[frozen_stages].name
        if target not in names:
            raise invalid(
                "frozen_stages", f"cannot freeze: level module {target!r} is not in {self.model_name}"
            )
        start = names.index(target)
        end = max([i for i, n in enumerate(names) if n.startswith(target + ".")], default=start)
        last: dict[str, int] = {}  # module -> position of its last descendant (named_modules is pre-order)
        for i, n in enumerate(names):
            parts = n.split(".") if n else []
            for depth in range(len(parts) + 1):
                last[".".join(parts[:depth])] = i
        whole = [m for n, m in modules[: end + 1] if last[n] <= end]
        enclosing = [m for n, m in modules[: end + 1] if last[n] > end]
        self.freeze(whole, [p for m in enclosing for p in m.parameters(recurse=False)])

    # -- interface ------------------------------------------------------------------------------------
    @property
    def pretrained_cfg(self) -> dict[str, Any]:
        """timm's data config for this model: input_size, mean, std, interpolation, crop_pct, ..."""
        cfg = dict(getattr(self.model, "pretrained_cfg", {}) or {})
        size = self._create_options["img_size"]
        if "input_size" in cfg:
            hw = (size, size) if size is not None else tuple(cfg["input_size"])[1:]
            cfg["input_size"] = (self.in_chans, *hw)
        return cfg

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        """Images ``[B, C, H, W]`` -> NCHW maps of the selected levels (then prefix tokens, if asked)."""
        if self.final_features:
            return self._final(x)
        kwargs: dict[str, Any] = {
            "indices": self.out_indices,
            "output_fmt": "NCHW",
            "intermediates_only": True,
        }
        if self._stop_early:
            kwargs["stop_early"] = True
        want_prefix = self.return_prefix_tokens and self._prefix_arg and self.num_prefix_tokens > 0
        if want_prefix:
            kwargs["return_prefix_tokens"] = True
        outs = self.model.forward_intermediates(x, **kwargs)
        if not want_prefix:
            return list(outs)
        maps = [o[0] for o in outs]
        return maps + [o[1] for o in outs]

    def _final(self, x: torch.Tensor) -> list[torch.Tensor]:
        feats = self.model.forward_features(x)
        if self.final_parts > 1:
            feats = feats[-1]
        fmap, prefix = to_nchw(feats, self.final, x.shape[-2:])
        return [fmap, prefix] if prefix is not None and (self.return_prefix_tokens or self.native) else [fmap]

    # -- native classification path -------------------------------------------------------------------
    def native_encoder(self) -> TimmNativeEncoder:
        """The model's own pooling + pre-logits path (``forward_head(pre_logits=True)``) as an encoder."""
        if not self.final_features:
            raise invalid(
                "",
                "the native encoder needs the model's final features: leave out_indices and "
                "features_only unset",
            )
        if self.final_parts > 1:
            raise invalid(
                "",
                f"timm/{self.model_name}'s forward_features returns {self.final_parts} tensors, which one "
                "map cannot carry; use a pooling encoder (e.g. gap) instead of native",
            )
        self.native = True  # prefix (class) tokens travel after the map
        return TimmNativeEncoder(self.model, self.final)

    def native_head(self, num_classes: int) -> TimmNativeHead:
        """timm's own classifier for ``num_classes``, with the weights file's classifier when it fits."""
        with torch.device("meta"):
            reference = _create(self.model_name, **self._create_options, num_classes=num_classes)
        head = TimmNativeHead(reference, num_classes)
        head.load_from(self._unused_weights)
        if not head.exact:
            logger.warning(
                "timm/%s: its logits also read tokens beyond the pre-logits vector (distillation "
                "token / auxiliary head); the native head approximates them",
                self.model_name,
            )
        return head


def _create(name: str, **options: Any) -> nn.Module:
    timm = _timm()
    base, _, tag = name.partition(".")
    if not timm.is_model(base):
        raise invalid("type", f"timm has no model {base!r}")
    tags = [t.split(".", 1)[1] for t in timm.list_pretrained(base + ".*")] if tag else []
    if tag and tag not in tags:
        raise invalid(
            "type", f"timm model {base!r} has no pretrained tag {tag!r}; tags: {', '.join(tags) or 'none'}"
        )
    kwargs: dict[str, Any] = {"in_chans": options["in_chans"], "num_classes": options.get("num_classes", 0)}
    for key in ("output_stride", "img_size"):
        if options[key] is not None:
            kwargs[key] = options[key]
    if options["drop_path_rate"]:
        kwargs["drop_path_rate"] = float(options["drop_path_rate"])
    try:
        return timm.create_model(name, pretrained=False, **kwargs)
    except TypeError as err:
        given = ", ".join(k for k in kwargs if k not in ("in_chans", "num_classes"))
        raise invalid("", f"timm model {name!r} does not accept {given or 'these options'}: {err}") from err


# -- registry -------------------------------------------------------------------------------------------
@functools.lru_cache(maxsize=1)
def timm_backbone_names() -> tuple[str, ...]:
    """``timm/<name>`` for every timm model architecture."""
    return tuple(PREFIX + n for n in _timm().list_models())


@functools.cache
def _builder(model_name: str):
    """A builder whose signature is TimmBackbone's without ``model_name``, so configs are checked."""
    return bind_model_name(TimmBackbone, model_name, PREFIX + model_name)


@BACKBONES.register_family(timm_backbone_names)
def _resolve(name: str):
    if not name.lower().startswith(PREFIX):
        return None
    model_name = name[len(PREFIX) :]
    base, dot, tag = model_name.partition(".")
    if not _timm().is_model(base):
        base = base.lower()  # timm names are lower case: accept timm/ResNet50
        if not _timm().is_model(base):
            return None
    return _builder(base + dot + tag)
