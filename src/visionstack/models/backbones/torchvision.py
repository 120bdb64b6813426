"""Every torchvision classification model as a backbone, under its torchvision name (``resnet50``, ``vit_b_16``).

The levels come from :func:`visionstack.models.features.discovery.discover_stages` (no per-model tables) and the
maps from an fx graph of the model (:mod:`visionstack.models.features.graph_cut`) that computes exactly the selected
levels and stops after the deepest one -- no hooks, no classifier; the discovered stages run eagerly
inside it, so hooks on ``layer4[-1]`` still fire.
Swin's NHWC maps are permuted and ViT's tokens reshaped to NCHW grids (class token dropped, or returned
after the maps with ``return_prefix_tokens``).

Without ``features_only`` and ``out_indices`` (a classifier's backbone) the one map is the last level, and
the model's own pooling / pre-logits path and final classifier are kept for the ``native`` encoder and head
(:mod:`visionstack.models.parts.native`), so ``create_model(name)`` reproduces torchvision's logits.

The model is always built with ``weights=None`` (nothing is downloaded); ``weights`` -- a file or a
torchvision tag such as ``IMAGENET1K_V2`` found in the local torch hub cache -- go through
:func:`visionstack.models.weights.load.load_weights`.
"""

from __future__ import annotations

import contextlib
import functools
import warnings
from collections.abc import Iterator
from typing import Any

import torch
from torch import nn

from visionstack.core.build import invalid
from visionstack.core.registry import BACKBONES
from visionstack.models.backbones.base import Backbone, bind_model_name
from visionstack.models.features.discovery import Discovery, cached, discover_stages, modules_through
from visionstack.models.features.graph_cut import NativeSplit, body_module, split_native, trace_model
from visionstack.models.features.layout import Level, to_nchw
from visionstack.models.parts.native import NativeEncoder, in_units, native_head_from, out_units

__all__ = ["FGVCLIB_ALIASES", "TorchvisionBackbone", "build_torchvision_model", "torchvision_names"]

#: FGVCLib's names for torchvision models, where they differ.
FGVCLIB_ALIASES: dict[str, tuple[str, ...]] = {"vit_b_16": ("vit16",), "swin_t": ("swint",)}
#: Builder options that give output stride 16 / 8 by dilation, tried in order (then the generic rule of visionstack.models.features.dilation).
DILATION_OPTIONS: dict[int, tuple[dict[str, Any], ...]] = {
    16: ({"replace_stride_with_dilation": [False, False, True]}, {"dilated": True}),
    8: ({"replace_stride_with_dilation": [False, True, True]},),
}


@functools.cache
def torchvision_names() -> tuple[str, ...]:
    """Names of torchvision's classification models."""
    import torchvision

    return tuple(torchvision.models.list_models(module=torchvision.models))


def build_torchvision_model(
    name: str, options: dict[str, Any] | None = None, meta: bool = False
) -> nn.Module:
    """``torchvision.models.<name>(weights=None, **options)``; with ``meta``, its parameters and buffers are
    meta tensors (no memory, no initialization cost: for discovery and tracing)."""
    import torchvision

    builder = torchvision.models.get_model_builder(name)
    with warnings.catch_warnings(), _meta_tensors(meta):
        warnings.filterwarnings("ignore", message="The default weight initialization", category=FutureWarning)
        return builder(weights=None, **(options or {}))


@contextlib.contextmanager
def _meta_tensors(enabled: bool) -> Iterator[None]:
    """Register every new parameter / buffer as a meta tensor (unlike ``torch.device("meta")``, tensor math in
    builders -- RegNet's width computation -- still runs on the CPU)."""
    if not enabled:
        yield
        return
    from torch.nn.modules import module

    def param(mod: nn.Module, name: str, p: Any) -> Any:
        return None if p is None else nn.Parameter(torch.empty_like(p, device="meta"), p.requires_grad)

    def buffer(mod: nn.Module, name: str, b: Any) -> Any:
        return None if b is None else torch.empty_like(b, device="meta")

    handles = [
        module.register_module_parameter_registration_hook(param),
        module.register_module_buffer_registration_hook(buffer),
    ]
    try:
        yield
    finally:
        for handle in handles:
            handle.remove()


def _dilated(name: str, output_stride: int, options: dict[str, Any], base: Discovery, probe_size: Any):
    """The model built for ``output_stride`` and its levels (the undilated model's modules, re-measured).

    The builder's own option is used where it has one (``replace_stride_with_dilation``, ``dilated``);
    otherwise the generic rule of :func:`visionstack.models.features.dilation.dilate`.
    """
    names = [level.name for level in base.levels]
    want = [min(level.reduction, output_stride) for level in base.levels]
    for extra in DILATION_OPTIONS.get(output_stride, ()):
        try:
            model = build_torchvision_model(name, {**options, **extra})
        except (TypeError, NotImplementedError) as err:  # not this builder's option / BasicBlock refuses
            if isinstance(err, TypeError) and next(iter(extra)) not in str(err):
                raise
            continue
        found = discover_stages(model, probe_size, level_names=names)
        if [level.reduction for level in found.levels] == want:  # some builders ignore unknown options
            return model, found
    from visionstack.models.features.dilation import dilate

    model = build_torchvision_model(name, options)
    h, w = base.input_size
    sizes = [(h, w)] if base.fixed_size else [(h, w), (h + 64, w + 128)]
    try:
        dilate(model, output_stride, sizes, end=names[-1])
        found = discover_stages(model, probe_size, level_names=names)
    except ValueError as err:
        reason = str(err)
    else:
        got = [level.reduction for level in found.levels]
        if got == want:
            return model, found
        reason = f"after dilating its convolutions and pools the levels' reductions are {got}, not {want}"
    raise invalid(
        "output_stride",
        f"output_stride={output_stride} is not available for {name}: {reason}; leave output_stride unset",
    )


def _set_submodule(model: nn.Module, path: str, module: nn.Module) -> None:
    parent, _, leaf = path.rpartition(".")
    setattr(model.get_submodule(parent) if parent else model, leaf, module)


def _adapt_input_conv(model: nn.Module, path: str, in_chans: int) -> None:
    """Replace the first conv with one reading ``in_chans`` channels, its weights adapted as timm does."""
    from timm.models import adapt_input_conv

    conv = model.get_submodule(path)
    new = nn.Conv2d(
        in_chans,
        conv.out_channels,
        conv.kernel_size,
        conv.stride,
        conv.padding,
        conv.dilation,
        conv.groups,
        conv.bias is not None,
        conv.padding_mode,
    )
    with torch.no_grad():
        new.weight.copy_(adapt_input_conv(in_chans, conv.weight))
        if conv.bias is not None:
            new.bias.copy_(conv.bias)
    _set_submodule(model, path, new)


class TorchvisionBackbone(Backbone):
    """A torchvision classification model with the common backbone interface (see the module docstring).

    Args:
        model_name: torchvision builder name (``resnet50``, ``convnext_tiny``, ``vit_b_16``, ...).
        features_only: return every level unless ``out_indices`` says otherwise.
        out_indices: levels to return (negatives count from the end); default: all with ``features_only``,
            else the last.
        weights: a weights file (.pth/.pt/.bin/.safetensors) or a torchvision tag (``IMAGENET1K_V2``,
            ``DEFAULT``) read from the local torch hub cache.
        strict: fail unless every weight matches.
        output_stride: 8 or 16 by dilation: the builder's option where it has one (ResNet-50+, MobileNetV3),
            else :func:`visionstack.models.features.dilation.dilate` (convs and pools of any model; refused, with the
            reasons, where other modules mix positions); the levels stay the same modules.
        frozen_stages: -1 trains everything; ``k`` freezes (``requires_grad=False``, eval mode) every module
            that runs up to the end of level ``k`` (ResNet: 0 = stem, 1 = stem + layer1, ...).
        norm_eval: keep BatchNorm layers in eval mode while training.
        in_chans: input channels; the first conv (and a 3-channel weight loaded into it) is adapted.
        return_prefix_tokens: after the maps, also return each token level's prefix (class) tokens.
        model_kwargs: extra arguments of the torchvision builder (``dropout``, ``image_size``, ...).
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
        model_kwargs: dict[str, Any] | None = None,
    ) -> None:
        super().__init__()
        if model_name not in torchvision_names():
            raise invalid("type", f"torchvision has no classification model {model_name!r}")
        if output_stride not in (None, 8, 16, 32):
            raise invalid("output_stride", f"must be 8, 16 or 32, got {output_stride}")
        if in_chans < 1:
            raise invalid("in_chans", f"must be positive, got {in_chans}")
        options = dict(model_kwargs or {})
        self.model_name = model_name
        self.in_chans = in_chans
        key = ("torchvision", model_name, repr(sorted(options.items())))
        probe_size = options.get("image_size")
        discovery = self._discover(key, options, probe_size)
        if output_stride in (8, 16):
            model, discovery = _dilated(model_name, output_stride, options, discovery, probe_size)
        else:
            model = build_torchvision_model(model_name, options)
        self.discovery = discovery
        if in_chans != 3:
            if discovery.input_conv is None:
                raise invalid("in_chans", f"{model_name} has no first Conv2d to adapt to in_chans={in_chans}")
            _adapt_input_conv(model, discovery.input_conv, in_chans)
        self.weights_report = self._load(model, weights, strict)
        levels = list(discovery.levels)
        self.select_levels([level.info for level in levels], out_indices, features_only)
        self.levels: list[Level] = [levels[i] for i in self.out_indices]
        self.return_prefix_tokens = bool(return_prefix_tokens)
        self._keys = [str(i) for i in range(len(self.levels))]
        self._plain = all(level.layout == "NCHW" for level in self.levels)
        traced = trace_model(model, discovery.body_units)
        self._native: NativeSplit | None = None
        self._native_error = "the native path needs the last level alone (no out_indices / features_only)"
        if self.out_indices == [len(levels) - 1]:
            try:
                self._native = split_native(model, traced, levels[-1])
            except Exception as err:  # reported when the native path is asked for
                self._native_error = f"cannot split {model_name} after its last level: {err}"
        self.num_classes = None if self._native is None else out_units(self._native.final)
        final = "" if self._native is None else self._native.final_name + "."
        self._spare = {k: v for k, v in self._spare.items() if final and k.startswith(final)}
        nodes = {level.name: key for level, key in zip(self.levels, self._keys)}
        self.body = body_module(model, traced, nodes, type(model).__name__)
        self.norm_eval = bool(norm_eval)
        self._freeze(model, frozen_stages)

    # -- construction helpers -------------------------------------------------------------------------
    def _discover(self, key: tuple, options: dict[str, Any], probe_size: Any) -> Discovery:
        found = cached(key, probe_size)
        if found is not None:
            return found
        return discover_stages(
            build_torchvision_model(self.model_name, options, meta=True), probe_size, cache_key=key
        )

    def _load(self, model: nn.Module, weights: str | None, strict: bool):
        self._spare: dict[str, torch.Tensor] = {}
        if not weights:
            return None
        from visionstack.models.weights.load import load_weights

        conv = self.discovery.input_conv
        report = load_weights(
            model,
            weights,
            strict=strict,
            arch=self.model_name,
            family="torchvision",
            input_conv=f"{conv}.weight" if conv else None,
        )
        self._spare = dict(report.unused)  # a file's classifier for another class count (filtered later)
        return report

    def _freeze(self, model: nn.Module, frozen_stages: int) -> None:
        if self.check_frozen_stages(frozen_stages, len(self.discovery.levels)) < 0:
            return
        modules = [model.get_submodule(path) for path in modules_through(self.discovery, frozen_stages)]
        # the enclosing modules' own parameters feed the level too (ViT's class token and position
        # embedding when the level is a block); they are frozen, but the modules keep their mode
        parts = self.discovery.levels[frozen_stages].name.split(".")
        enclosing = [model.get_submodule(".".join(parts[:depth])) for depth in range(len(parts))]
        self.freeze(modules, [p for m in enclosing for p in m.parameters(recurse=False)])

    # -- interface ------------------------------------------------------------------------------------
    @property
    def pretrained_cfg(self) -> dict[str, Any]:
        """Data settings of the model's default torchvision weights: input_size, mean, std, crop_pct, ..."""
        import torchvision

        weights = torchvision.models.get_model_weights(self.model_name).DEFAULT
        t = weights.transforms()
        crop, resize = int(t.crop_size[0]), int(t.resize_size[0])
        return {
            "input_size": (self.in_chans, crop, crop),
            "mean": tuple(t.mean),
            "std": tuple(t.std),
            "interpolation": t.interpolation.value,
            "crop_pct": crop / resize,
            "num_classes": len(weights.meta.get("categories", [])) or None,
            "tag": str(weights).split(".")[-1],
        }

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        """Images ``[B, C, H, W]`` -> NCHW maps of the selected levels (then prefix tokens, if asked)."""
        out = self.body(x)
        if self._plain:
            return [out[k] for k in self._keys]
        maps, prefixes = [], []
        for key, level in zip(self._keys, self.levels):
            fmap, prefix = to_nchw(out[key], level, x.shape[-2:])
            maps.append(fmap)
            if prefix is not None and self.return_prefix_tokens:
                prefixes.append(prefix)
        return maps + prefixes

    # -- native classification path -------------------------------------------------------------------
    def _split(self) -> NativeSplit:
        if self._native is None:
            raise invalid("", f"{self.model_name}: {self._native_error}")
        return self._native

    def native_encoder(self) -> NativeEncoder:
        """torchvision's own path from the last map to the classifier input (pooling, norm, hidden layers)."""
        split = self._split()
        if split.level.num_prefix_tokens:
            self.return_prefix_tokens = True  # ViT reads its class token
        return NativeEncoder(split.encoder, split.level, in_units(split.final))

    def native_head(self, num_classes: int) -> nn.Module:
        """torchvision's own classifier for ``num_classes`` (its weights when the class count matches)."""
        return native_head_from(self._split(), num_classes, self._spare)


def _register() -> None:
    for name in torchvision_names():
        BACKBONES.register(name, aliases=FGVCLIB_ALIASES.get(name, ()))(
            bind_model_name(TorchvisionBackbone, name)
        )


_register()
