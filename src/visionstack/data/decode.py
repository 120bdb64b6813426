"""The one decode policy: every image file becomes an RGB ``PIL.Image`` the same, deliberate way.

``decode_image(path)``:

1. opens the file; a file PIL cannot identify, a missing or unreadable file raises :class:`DecodeError`;
2. checks the pixel count from the header, before decoding, against ``max_pixels``;
3. decodes fully with truncation detection ON, even if another library set PIL's global
   ``ImageFile.LOAD_TRUNCATED_IMAGES`` (it is switched off while visionstack decodes);
4. applies the EXIF orientation (``ImageOps.exif_transpose``);
5. converts the mode to RGB: ``L``/``1``/``P``/``CMYK``/``YCbCr`` through PIL's conversions, alpha
   (``RGBA``, ``LA``, ``PA``, palette with transparency) composited on ``background``, 16-bit integer
   modes (``I;16*``, ``I``) scaled by 255/65535 (65535 -> 255, rounded), float ``F`` read as [0, 1] when
   its values lie there and clipped to [0, 255] otherwise. 16-bit RGB PNGs are reduced to 8 bits by PIL
   itself (most significant byte). An embedded ICC profile is ignored by default (as in torchvision and
   timm, so pixels match what pretrained weights saw); ``icc="srgb"`` converts RGB, RGBA, CMYK and L
   images from their embedded profile to sRGB first (PIL's ImageCms, perceptual intent).

Animated or multi-frame files give their first frame. Every failure raises :class:`DecodeError` (a
:class:`~visionstack.errors.DataError`) naming the file and the reason. :class:`DecodePolicy` carries the
settings a dataset uses; its ``on_error="skip"`` makes a dataset drop bad files when it is built and list
them in ``dataset.bad_files`` -- a sample is never replaced by another one.
"""

from __future__ import annotations

import io
import os
import threading
import warnings
from collections.abc import Callable, Iterable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any, Literal

import numpy as np
from PIL import Image, ImageFile, ImageOps, UnidentifiedImageError

from visionstack.errors import ConfigError, DataError

#: Default pixel limit: PIL's own ``MAX_IMAGE_PIXELS`` default (about 89.5 megapixels).
DEFAULT_MAX_PIXELS = int(1024 * 1024 * 1024 // 4 // 3)
#: File name endings treated as images when scanning folders (case-insensitive).
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".ppm", ".pgm", ".pbm", ".bmp", ".tif", ".tiff", ".webp", ".gif")

_ALPHA_MODES = {"RGBA", "LA", "PA", "RGBa", "La"}  # composited on the background
_SIXTEEN_BIT = {"I;16", "I;16L", "I;16B", "I;16N", "I"}
#: What :func:`decode_image` does with an embedded ICC profile.
ICC_MODES = ("ignore", "srgb")
_ICC_OUTPUT = {"RGB": "RGB", "CMYK": "RGB", "L": "RGB", "RGBA": "RGBA"}  # input mode -> converted mode


class DecodeError(DataError):
    """An image that cannot be decoded; ``path`` and ``reason`` are kept for reports."""

    def __init__(self, path: str | os.PathLike[str], reason: str) -> None:
        self.path = str(path)
        self.reason = reason
        super().__init__(f"{self.path}: {reason}")


@dataclass(frozen=True)
class DecodePolicy:
    """How a dataset decodes its files.

    ``max_pixels``: width * height limit checked before decoding (``None``: no limit of ours).
    ``background``: RGB color transparent pixels are composited on.
    ``on_error``: ``"raise"`` -- a bad file raises when it is loaded; ``"skip"`` -- the dataset decodes every
    file once when it is built, drops the bad ones and lists them in ``dataset.bad_files`` with a warning.
    ``icc``: ``"ignore"`` (default) or ``"srgb"``: convert from the embedded ICC profile to sRGB.
    """

    max_pixels: int | None = DEFAULT_MAX_PIXELS
    background: tuple[int, int, int] = (255, 255, 255)
    on_error: Literal["raise", "skip"] = "raise"
    icc: Literal["ignore", "srgb"] = "ignore"

    def __post_init__(self) -> None:
        if self.icc not in ICC_MODES:
            raise ConfigError("decode.icc", f"expected one of {', '.join(ICC_MODES)}, got {self.icc!r}")
        if self.on_error not in ("raise", "skip"):
            raise ConfigError("decode.on_error", f"expected 'raise' or 'skip', got {self.on_error!r}")
        if self.max_pixels is not None and (not isinstance(self.max_pixels, int) or self.max_pixels <= 0):
            raise ConfigError(
                "decode.max_pixels", f"expected a positive integer or null, got {self.max_pixels!r}"
            )
        bg = tuple(self.background)
        if len(bg) != 3 or not all(isinstance(c, int) and 0 <= c <= 255 for c in bg):
            raise ConfigError(
                "decode.background", f"expected three integers in [0, 255], got {self.background!r}"
            )
        object.__setattr__(self, "background", bg)

    @classmethod
    def from_cfg(cls, cfg: DecodePolicy | Mapping[str, Any] | None) -> DecodePolicy:
        """A policy from a config mapping (keys ``max_pixels``, ``background``, ``on_error``, ``icc``) or
        ``None``."""
        if cfg is None:
            return cls()
        if isinstance(cfg, DecodePolicy):
            return cfg
        if not isinstance(cfg, Mapping):
            raise ConfigError("decode", f"expected a mapping, got {type(cfg).__name__} ({cfg!r})")
        allowed = {f.name for f in fields(cls)}
        from visionstack.core.build import check_keys

        check_keys(cfg, allowed, "decode")
        return cls(**dict(cfg))

    def decode(self, path: str | os.PathLike[str]) -> Image.Image:
        """Decode ``path`` under this policy (always raises on a bad file, whatever ``on_error`` says)."""
        return decode_image(path, max_pixels=self.max_pixels, background=self.background, icc=self.icc)


# -- truncation detection, whatever PIL's global flag says -------------------------------------------------
_strict_lock = threading.Lock()
_strict_depth = 0
_saved_flag = False


class _StrictTruncation:
    """Keep ``ImageFile.LOAD_TRUNCATED_IMAGES`` False while any visionstack decode runs (thread-safe)."""

    def __enter__(self) -> None:
        global _strict_depth, _saved_flag
        with _strict_lock:
            if _strict_depth == 0:
                _saved_flag = ImageFile.LOAD_TRUNCATED_IMAGES
            _strict_depth += 1
            ImageFile.LOAD_TRUNCATED_IMAGES = False

    def __exit__(self, *exc: object) -> None:
        global _strict_depth
        with _strict_lock:
            _strict_depth -= 1
            if _strict_depth == 0:
                ImageFile.LOAD_TRUNCATED_IMAGES = _saved_flag


def _open(path: Path, max_pixels: int | None) -> Image.Image:
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            img = Image.open(path)
    except FileNotFoundError:
        raise DecodeError(path, "file not found") from None
    except IsADirectoryError:
        raise DecodeError(path, "is a directory, not an image file") from None
    except PermissionError:
        raise DecodeError(path, "unreadable: permission denied") from None
    except UnidentifiedImageError:
        raise DecodeError(path, "not an image (PIL cannot identify the file format)") from None
    except Image.DecompressionBombError as err:
        raise DecodeError(
            path, f"exceeds PIL's global pixel limit (PIL.Image.MAX_IMAGE_PIXELS): {err}"
        ) from None
    except (OSError, SyntaxError, ValueError, EOFError) as err:
        raise DecodeError(path, f"unreadable header: {type(err).__name__}: {err}") from None
    width, height = img.size
    if max_pixels is not None and width * height > max_pixels:
        img.close()
        raise DecodeError(
            path, f"{width}x{height} = {width * height} pixels exceeds the pixel limit {max_pixels}"
        )
    return img


def _to_rgb(img: Image.Image, background: tuple[int, int, int]) -> Image.Image:
    mode = img.mode
    if mode in _SIXTEEN_BIT:
        array = np.asarray(img, dtype=np.float64)
        scaled = np.rint(np.clip(array, 0, 65535) * (255.0 / 65535.0)).astype(np.uint8)
        return Image.fromarray(scaled, mode="L").convert("RGB")
    if mode == "F":
        array = np.nan_to_num(np.asarray(img, dtype=np.float64), nan=0.0, posinf=255.0, neginf=0.0)
        if array.size and array.min() >= 0.0 and array.max() <= 1.0:
            array = array * 255.0
        return Image.fromarray(np.rint(np.clip(array, 0, 255)).astype(np.uint8), mode="L").convert("RGB")
    if mode in _ALPHA_MODES or (mode in ("P", "L", "RGB") and "transparency" in img.info):
        rgba = img.convert("RGBA")  # palette / color-key transparency becomes an alpha channel
        out = Image.new("RGB", rgba.size, background)
        out.paste(rgba, mask=rgba.getchannel("A"))
        return out
    if mode == "RGB":
        return img
    return img.convert(
        "RGB"
    )  # L, 1, P, CMYK, YCbCr, ...; a mode PIL cannot convert is reported by the caller


def _to_srgb(img: Image.Image) -> Image.Image:
    """``img`` converted from its embedded ICC profile to sRGB; unchanged without a profile or for a mode
    ImageCms does not convert. Raises ``ImageCms.PyCMSError`` / ``OSError`` on a bad profile."""
    from PIL import ImageCms

    icc = img.info.get("icc_profile")
    if not icc or img.mode not in _ICC_OUTPUT:
        return img
    source = ImageCms.ImageCmsProfile(io.BytesIO(icc))
    converted = ImageCms.profileToProfile(
        img, source, ImageCms.createProfile("sRGB"), outputMode=_ICC_OUTPUT[img.mode]
    )
    return img if converted is None else converted


def decode_image(
    path: str | os.PathLike[str],
    *,
    max_pixels: int | None = DEFAULT_MAX_PIXELS,
    background: Sequence[int] = (255, 255, 255),
    icc: Literal["ignore", "srgb"] = "ignore",
) -> Image.Image:
    """Decode one image file to an RGB ``PIL.Image`` under the policy described in the module docstring.

    Raises :class:`DecodeError` naming ``path`` and the reason for every failure.
    """
    if icc not in ICC_MODES:
        raise ValueError(f"icc must be one of {', '.join(ICC_MODES)}, got {icc!r}")
    path = Path(path)
    bg = (int(background[0]), int(background[1]), int(background[2]))
    img = _open(path, max_pixels)
    out: Image.Image | None = None
    try:
        with _StrictTruncation():
            img.load()
        try:
            ImageOps.exif_transpose(img, in_place=True)
        except Exception as err:  # corrupt EXIF: reported, not ignored
            raise DecodeError(path, f"bad EXIF data: {type(err).__name__}: {err}") from None
        source = img
        if icc == "srgb":
            try:
                source = _to_srgb(img)
            except Exception as err:  # a profile ImageCms rejects: reported, not ignored
                raise DecodeError(path, f"bad ICC profile: {type(err).__name__}: {err}") from None
        try:
            out = _to_rgb(source, bg)
        except (ValueError, OSError) as err:
            raise DecodeError(path, f"cannot convert mode {img.mode!r} to RGB: {err}") from None
        return out
    except DecodeError:
        raise
    except OSError as err:
        message = str(err)
        reason = "truncated" if "truncated" in message else "corrupt"
        raise DecodeError(path, f"{reason} image data: {message}") from None
    except (SyntaxError, ValueError, EOFError, IndexError, MemoryError) as err:
        raise DecodeError(path, f"corrupt image data: {type(err).__name__}: {err}") from None
    finally:
        if out is not img:
            img.close()


def check_files(
    paths: Iterable[str | os.PathLike[str]],
    policy: DecodePolicy | None = None,
    workers: int = 1,
    progress: Callable[[int], None] | None = None,
) -> list[tuple[str, str]]:
    """Decode every file; return ``(path, reason)`` for each bad one, in input order.

    ``workers`` threads decode in parallel (PIL releases the GIL while decoding); ``progress(n)`` is called
    with the number of files done after each file.
    """
    policy = policy or DecodePolicy()
    paths = [str(p) for p in paths]

    def one(p: str) -> str | None:
        try:
            policy.decode(p)
        except DecodeError as err:
            return err.reason
        return None

    bad: list[tuple[str, str]] = []
    if workers <= 1:
        results: Iterable[str | None] = map(one, paths)
    else:
        pool = ThreadPoolExecutor(max_workers=workers)
        results = pool.map(one, paths)
    try:
        for done, (path, reason) in enumerate(zip(paths, results), start=1):
            if reason is not None:
                bad.append((path, reason))
            if progress is not None:
                progress(done)
    finally:
        if workers > 1:
            pool.shutdown(wait=True)
    return bad


def is_image_file(path: str | os.PathLike[str], extensions: Sequence[str] = IMAGE_EXTENSIONS) -> bool:
    """Whether the name ends with one of ``extensions`` (case-insensitive)."""
    return str(path).lower().endswith(tuple(e.lower() for e in extensions))
