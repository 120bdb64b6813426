"""Class activation maps with the pytorch-grad-cam package (``pip install 'visionstack[cam]'``).

- Methods: ``gradcam``, ``gradcam++``, ``scorecam``, ``eigencam``, ``layercam``.
- Target layer: by default the backbone's last level -- the map ``backbone.feature_info[-1]`` describes,
  taken from the backbone's own output (already NCHW) through a hook, so it works the same for modules a
  traced backbone inlines (torchvision's FX extractors), timm's final features and our own backbones.
  When the encoder reads prefix (class) tokens (ViT with its native pooling), the logit's gradient reaches
  only the class token after the last block, so there the last block's first norm (timm ``norm1``,
  torchvision ``ln_1``) is used instead, as the grad-cam documentation advises.
  ``target_layer="backbone.model.stages.2"`` (a module path in the model, or in the backbone) overrides it.
- Token maps ``[B, N, C]`` (ViT) and channels-last maps ``[B, H, W, C]`` (Swin) become NCHW through
  :func:`visionstack.models.features.layout.to_nchw`: with the backbone's discovered level when it has one, else
  with its stride (``feature_info``) and ``num_prefix_tokens`` (prefix tokens dropped).
- The CAM is computed at the model's input size (the whole image resized, not cropped, so that the map
  covers it), scaled to [0, 1] per image by grad-cam, and resized to the original image for the overlay.
"""

from __future__ import annotations

import contextlib
import io
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch import nn

from visionstack.core.io import atomic_write
from visionstack.errors import ConfigError, optional_import
from visionstack.models.features.layout import TOKEN_STRIDES, Level, explain_tokens, to_nchw

#: method name -> pytorch_grad_cam class name
CAM_METHODS: dict[str, str] = {
    "gradcam": "GradCAM",
    "gradcam++": "GradCAMPlusPlus",
    "scorecam": "ScoreCAM",
    "eigencam": "EigenCAM",
    "layercam": "LayerCAM",
}
_BLOCK_NORMS = ("norm1", "ln_1", "ln1", "layernorm_before")


def _grad_cam():
    return optional_import("pytorch_grad_cam", "cam", "class activation maps")


def _find_module(root: nn.Module, name: str) -> tuple[str, nn.Module] | None:
    """``root.get_submodule(name)``, or the unique submodule whose path ends with ``.name``."""
    try:
        return name, root.get_submodule(name)
    except AttributeError:
        pass
    matches = [(path, m) for path, m in root.named_modules() if path.endswith("." + name)]
    return matches[0] if len(matches) == 1 else None


def _backbone(model: nn.Module) -> nn.Module:
    return getattr(model, "backbone", model)


def find_target_layer(
    model: nn.Module, path: str | None = None, prefix_tokens: bool = False
) -> tuple[str, nn.Module | None]:
    """``(description, module)`` of the CAM target (see the module docstring); ``module`` is None for the
    default target, the backbone's last output map, which :class:`CamExplainer` taps. ``prefix_tokens``:
    the backbone hands prefix (class) tokens to the encoder."""
    backbone = _backbone(model)
    if path:
        found = _find_module(model, path) or _find_module(backbone, path)
        if found is None:
            from visionstack.core.build import closest

            names = {n for n, _ in model.named_modules() if n}
            raise ConfigError(
                "--target-layer",
                f"no module {path!r} in {type(model).__name__}.{closest(path, names)} "
                "Give a module path such as backbone.stages.3 (see visionstack info --layers)",
            )
        return _model_path(model, found[1]), found[1]
    info = list(getattr(backbone, "feature_info", None) or [])
    if not info:
        raise ConfigError(
            "--target-layer", f"{type(backbone).__name__} has no feature_info; give --target-layer"
        )
    if prefix_tokens:  # the encoder reads the class token: use the last block's input norm
        norm = _last_block_norm(backbone)
        if norm is not None:
            return _model_path(model, norm), norm
    return f"{_model_path(model, backbone) or 'backbone'} output {len(info) - 1} ({info[-1].name})", None


class _Tap(nn.Identity):
    """Passes one backbone output through a module of its own, so that grad-cam can hook exactly that map."""


def _install_tap(backbone: nn.Module, index: int) -> tuple[_Tap, Any]:
    """A :class:`_Tap` on output ``index`` of ``backbone`` and the hook handle that removes it."""
    tap = _Tap()

    def hook(_module: nn.Module, _inputs: Any, output: Any) -> Any:
        outputs = list(output)
        outputs[index] = tap(outputs[index])
        return outputs

    return tap, backbone.register_forward_hook(hook)


def _last_block_norm(module: nn.Module) -> nn.Module | None:
    """The first norm of the last transformer block inside ``module`` (timm ``norm1``, torchvision ``ln_1``):
    its output still carries every patch token's gradient in class-token models."""
    norms = [m for name, m in module.named_modules() if name.rsplit(".", 1)[-1] in _BLOCK_NORMS]
    return norms[-1] if norms else None


def _model_path(model: nn.Module, module: nn.Module) -> str:
    return next((n for n, m in model.named_modules() if m is module), "")


def _level_of(backbone: nn.Module, module_path: str | None) -> Level | None:
    """The backbone's discovered :class:`~visionstack.models.features.layout.Level` for ``module_path``."""
    for level in getattr(backbone, "levels", None) or []:
        if (
            isinstance(level, Level)
            and module_path
            and (module_path == level.name or module_path.endswith("." + level.name))
        ):
            return level
    return None


def _token_level(
    tokens: torch.Tensor, image_hw: tuple[int, int], reduction: int | None, prefix: int
) -> Level:
    """A token ``Level`` for ``[B, N, C]``: the grid from the image size and stride, the rest prefix tokens."""
    strides = [reduction, *TOKEN_STRIDES] if reduction else TOKEN_STRIDES
    found = explain_tokens([tokens.shape[1]], [image_hw], strides, prefix)
    if found is None:
        raise ValueError(
            f"cannot arrange {tokens.shape[1]} tokens of the CAM target layer on a grid for a {image_hw} "
            "image; choose another --target-layer"
        )
    r, extra, rounding = found
    return Level("tokens", tokens.shape[2], r, "NLC", extra, rounding)


def _map_layout(t: torch.Tensor, channels: int | None) -> str:
    """``NCHW`` or ``NHWC`` for a 4-D activation: by the expected channels when known, else ``NHWC`` only
    when the last dimension cannot be a width (it differs from the two before, which are equal)."""
    if channels:
        if t.shape[1] == channels:
            return "NCHW"
        if t.shape[3] == channels:
            return "NHWC"
    return "NHWC" if t.shape[1] == t.shape[2] != t.shape[3] and t.shape[3] > t.shape[2] else "NCHW"


def make_reshape_transform(
    model: nn.Module, module_path: str | None, image_hw: Callable[[], tuple[int, int]]
) -> Callable[[torch.Tensor], torch.Tensor]:
    """Turn the target layer's output into NCHW: tokens ``[B, N, C]`` (prefix tokens dropped) and
    channels-last ``[B, H, W, C]`` maps, using the backbone's discovered level when it has one, else its
    ``feature_info`` stride and ``num_prefix_tokens``."""
    backbone = _backbone(model)
    info = list(getattr(backbone, "feature_info", None) or [])
    last = info[-1] if info else None
    known = _level_of(backbone, module_path)
    prefix = int(getattr(backbone, "num_prefix_tokens", 0) or 0)

    def reshape(t: Any) -> torch.Tensor:
        if isinstance(t, (list, tuple)):
            t = t[-1]
        hw = image_hw()
        if known is not None and known.layout != "NCHW" and t.ndim == (3 if known.layout == "NLC" else 4):
            return to_nchw(t, known, hw)[0]
        if t.ndim == 3:
            level = _token_level(
                t, hw, known.reduction if known else (last.reduction if last else None), prefix
            )
            return to_nchw(t, level, hw)[0]
        if t.ndim == 4:
            layout = _map_layout(t, known.channels if known else (last.channels if last else None))
            return to_nchw(t, Level("map", 0, 1, layout), hw)[0]
        raise ValueError(
            f"the CAM target layer outputs a tensor of shape {tuple(t.shape)}; expected a map "
            "[B, C, H, W] or tokens [B, N, C] -- choose another --target-layer"
        )

    return reshape


@dataclass
class CamResult:
    """CAMs of a batch: ``cams [B, H, W]`` in [0, 1] at the model's input size, the explained classes and
    their probabilities."""

    cams: np.ndarray
    classes: list[int]
    probs: list[float]


class CamExplainer:
    """Runs one grad-cam method on a model; call it with preprocessed images ``[B, 3, H, W]``.

    The default target is settled on the first call, from what the backbone returns (maps only, or maps
    and the prefix tokens the encoder reads); ``layer_path`` then names it.
    """

    def __init__(self, model: nn.Module, method: str = "gradcam", target_layer: str | None = None) -> None:
        if method not in CAM_METHODS:
            from visionstack.core.build import closest

            raise ConfigError(
                "--method",
                f"unknown CAM method {method!r}.{closest(method, CAM_METHODS)} "
                f"Choose one of {', '.join(CAM_METHODS)}",
            )
        self._gc = _grad_cam()
        self.model = model.eval()
        self.method = method
        self.layer_path: str | None = None
        self.layer: nn.Module | None = None
        if target_layer:
            self.layer_path, self.layer = find_target_layer(model, target_layer)
        self.cam: Any = None
        self._handle: Any = None
        self._hw = (224, 224)

    def _setup(self, images: torch.Tensor) -> torch.Tensor:
        """Probe forward (its logits are returned): settle the target, check it runs, build grad-cam."""
        backbone = _backbone(self.model)
        seen: dict[str, Any] = {}
        hooks = [backbone.register_forward_hook(lambda _m, _i, out: seen.setdefault("outputs", out))]
        if self.layer is not None:
            hooks.append(self.layer.register_forward_hook(lambda *_: seen.setdefault("called", True)))
        try:
            with torch.no_grad():
                logits = self.model(images)
        finally:
            for hook in hooks:
                hook.remove()
        if self.layer is None:
            info = list(getattr(backbone, "feature_info", None) or [])
            outputs = seen.get("outputs")
            reads_prefix = isinstance(outputs, (list, tuple)) and len(outputs) > len(info)
            self.layer_path, self.layer = find_target_layer(self.model, prefix_tokens=reads_prefix)
            if self.layer is None:
                self.layer, self._handle = _install_tap(backbone, len(info) - 1)
        elif "called" not in seen:
            raise ConfigError(
                "--target-layer",
                f"{self.layer_path} is never called in the forward pass (a container that a traced backbone "
                "inlines); give one of its submodules",
            )
        reshape = make_reshape_transform(self.model, self.layer_path, lambda: self._hw)
        self.cam = getattr(self._gc, CAM_METHODS[self.method])(
            model=self.model, target_layers=[self.layer], reshape_transform=reshape
        )
        return logits

    def close(self) -> None:
        """Remove every hook this explainer put on the model."""
        if self._handle is not None:
            self._handle.remove()
            self._handle = None
        if self.cam is not None:
            self.cam.activations_and_grads.release()

    def __enter__(self) -> CamExplainer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __call__(self, images: torch.Tensor, class_index: int | None = None) -> CamResult:
        """CAMs for ``class_index`` (default: each image's predicted class)."""
        from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

        device = next(self.model.parameters()).device
        images = images.to(device)
        self._hw = (int(images.shape[-2]), int(images.shape[-1]))
        if self.cam is None:
            logits = self._setup(images)
        else:
            with torch.no_grad():
                logits = self.model(images)
        probs = logits.float().softmax(dim=1)
        num_classes = probs.shape[1]
        if class_index is not None and not 0 <= class_index < num_classes:
            raise ConfigError("--class-index", f"{class_index} is outside [0, {num_classes}) for this model")
        classes = [int(class_index)] * len(images) if class_index is not None else probs.argmax(1).tolist()
        with torch.enable_grad(), contextlib.redirect_stderr(io.StringIO()):  # scorecam's tqdm bar
            cams = self.cam(input_tensor=images, targets=[ClassifierOutputTarget(c) for c in classes])
        cams = np.clip(np.nan_to_num(np.asarray(cams, dtype=np.float32)), 0.0, 1.0)
        return CamResult(cams, classes, [float(probs[i, c]) for i, c in enumerate(classes)])


def cam_at_image_size(cam: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """A ``[h, w]`` CAM resized (bilinear) to ``size = (width, height)``, values kept in [0, 1]."""
    resized = Image.fromarray(cam.astype(np.float32), mode="F").resize(size, Image.Resampling.BILINEAR)
    return np.clip(np.asarray(resized, dtype=np.float32), 0.0, 1.0)


def overlay(image: Image.Image, cam: np.ndarray, image_weight: float = 0.5) -> Image.Image:
    """The CAM (resized to ``image``) as a JET heat map blended onto the RGB ``image``."""
    from pytorch_grad_cam.utils.image import show_cam_on_image

    rgb = np.asarray(image.convert("RGB"), dtype=np.float32) / 255.0
    mask = cam_at_image_size(cam, image.size)
    return Image.fromarray(show_cam_on_image(rgb, mask, use_rgb=True, image_weight=image_weight))


def save_cams(
    images: Sequence[Image.Image],
    names: Sequence[str],
    result: CamResult,
    out_dir: str | Path,
    method: str,
    save_array: bool = False,
) -> list[Path]:
    """Write ``<name>_<method>.png`` overlays (and ``.npy`` CAMs at image size) into ``out_dir``."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    tag = method.replace("+", "p")
    written = []
    for image, name, cam in zip(images, names, result.cams):
        path = out / f"{name}_{tag}.png"
        picture = overlay(image, cam)
        atomic_write(path, lambda tmp, picture=picture: picture.save(tmp, format="PNG"))
        if save_array:
            array = cam_at_image_size(cam, image.size)
            atomic_write(out / f"{name}_{tag}.npy", lambda tmp, array=array: np.save(tmp, array))
        written.append(path)
    return written
