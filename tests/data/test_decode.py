"""The decode policy on real files: truncation, CMYK, 16-bit, alpha, palette, EXIF, grayscale, limits."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageFile

from visionstack.data.decode import DecodeError, DecodePolicy, check_files, decode_image
from visionstack.errors import ConfigError, DataError


def noise(size: tuple[int, int] = (64, 48), seed: int = 0) -> Image.Image:
    data = np.random.default_rng(seed).integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)
    return Image.fromarray(data, "RGB")


def test_rgb_jpeg_passes_through(tmp_path: Path) -> None:
    path = tmp_path / "ok.png"
    noise().save(path)
    out = decode_image(path)
    assert out.mode == "RGB" and out.size == (64, 48)
    assert np.array_equal(np.asarray(out), np.asarray(noise()))


@pytest.mark.parametrize("global_flag", [False, True])
def test_truncated_jpeg_raises_naming_the_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, global_flag: bool
) -> None:
    path = tmp_path / "broken.jpg"
    noise((128, 128)).save(path, quality=95)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    # another library may have switched PIL's global flag on: the policy still refuses truncated files
    monkeypatch.setattr(ImageFile, "LOAD_TRUNCATED_IMAGES", global_flag)
    with pytest.raises(DecodeError) as info:
        decode_image(path)
    assert str(path) in str(info.value) and "truncated" in str(info.value)
    assert isinstance(info.value, DataError) and info.value.path == str(path)
    assert ImageFile.LOAD_TRUNCATED_IMAGES is global_flag  # restored afterwards


def test_cmyk_jpeg_converted_to_expected_rgb(tmp_path: Path) -> None:
    path = tmp_path / "cmyk.jpg"
    c, m, y, k = 200, 50, 0, 30
    Image.new("CMYK", (16, 16), (c, m, y, k)).save(path, quality=100)
    assert Image.open(path).mode == "CMYK"
    out = np.asarray(decode_image(path)).astype(float)
    expected = [(255 - v) * (255 - k) / 255 for v in (c, m, y)]  # naive CMYK -> RGB: (1 - C)(1 - K)
    assert np.abs(out - np.array(expected)).max() <= 3


def test_16bit_png_scaled_to_8bit(tmp_path: Path) -> None:
    path = tmp_path / "deep.png"
    values = np.array([[0, 257 * 100, 65535, 1000]], dtype=np.uint16)
    Image.fromarray(values).save(path)
    assert Image.open(path).mode.startswith("I;16")
    out = np.asarray(decode_image(path))
    assert out.shape == (1, 4, 3)
    assert out[0, :, 0].tolist() == [0, 100, 255, 4]  # round(v * 255 / 65535)
    assert (out[..., 0] == out[..., 1]).all() and (out[..., 1] == out[..., 2]).all()


def test_rgba_png_composited_on_background(tmp_path: Path) -> None:
    path = tmp_path / "alpha.png"
    pixels = np.zeros((2, 3, 4), dtype=np.uint8)
    pixels[0, 0] = (255, 0, 0, 128)  # half-transparent red
    pixels[0, 1] = (0, 255, 0, 255)  # opaque green
    pixels[0, 2] = (0, 0, 0, 0)  # fully transparent
    Image.fromarray(pixels, "RGBA").save(path)
    white = np.asarray(decode_image(path)).astype(int)
    assert np.abs(white[0, 0] - [255, 127, 127]).max() <= 1
    assert white[0, 1].tolist() == [0, 255, 0]
    assert white[0, 2].tolist() == [255, 255, 255]
    blue = np.asarray(decode_image(path, background=(0, 0, 255))).astype(int)
    assert blue[0, 2].tolist() == [0, 0, 255]
    assert np.abs(blue[0, 0] - [128, 0, 127]).max() <= 1


def test_palette_png_with_transparency(tmp_path: Path) -> None:
    path = tmp_path / "palette.png"
    img = Image.new("P", (4, 2), 0)
    img.putpalette([10, 20, 30, 0, 200, 0] + [0] * (256 * 3 - 6))
    img.putpixel((1, 0), 1)
    img.save(path, transparency=0)  # palette entry 0 is transparent
    reread = Image.open(path)
    assert reread.mode == "P" and "transparency" in reread.info
    out = np.asarray(decode_image(path))
    assert out[0, 1].tolist() == [0, 200, 0]
    assert out[0, 0].tolist() == [255, 255, 255]  # transparent entry composited, not its (10, 20, 30) color
    opaque = tmp_path / "opaque_palette.png"
    img.save(opaque)
    assert np.asarray(decode_image(opaque))[0, 0].tolist() == [10, 20, 30]


def test_exif_orientation_applied(tmp_path: Path) -> None:
    path = tmp_path / "rotated.jpg"
    stored = np.zeros((24, 40, 3), dtype=np.uint8)  # stored 40 wide, 24 high
    stored[:8, :8] = (255, 0, 0)  # red marker in the stored top-left corner
    img = Image.fromarray(stored, "RGB")
    exif = img.getexif()
    exif[0x0112] = 6  # Orientation: rotate 90 degrees clockwise to display
    img.save(path, exif=exif.tobytes(), quality=100)
    out = decode_image(path)
    assert out.size == (24, 40)  # width and height swapped
    arr = np.asarray(out).astype(int)
    assert arr[3, 24 - 4, 0] > 200 and arr[3, 24 - 4, 1] < 60  # marker now at the top-right corner
    assert arr[3, 3].max() < 60  # and not at the top-left any more


def test_grayscale_and_one_bit_become_equal_channels(tmp_path: Path) -> None:
    gray = np.arange(0, 240, 10, dtype=np.uint8).reshape(4, 6)
    Image.fromarray(gray, "L").save(tmp_path / "gray.png")
    out = np.asarray(decode_image(tmp_path / "gray.png"))
    for channel in range(3):
        assert np.array_equal(out[..., channel], gray)
    Image.fromarray(gray > 100).convert("1").save(tmp_path / "bits.png")
    bits = np.asarray(decode_image(tmp_path / "bits.png"))
    assert np.array_equal(bits[..., 0], np.where(gray > 100, 255, 0)) and (bits[..., 0] == bits[..., 2]).all()
    la = np.stack([gray, np.full_like(gray, 255)], axis=-1)
    Image.fromarray(la, "LA").save(tmp_path / "la.png")
    assert np.array_equal(np.asarray(decode_image(tmp_path / "la.png"))[..., 1], gray)


def test_not_an_image_and_missing_file(tmp_path: Path) -> None:
    text = tmp_path / "notes.jpg"
    text.write_text("this is not a picture")
    with pytest.raises(DecodeError, match="not an image") as info:
        decode_image(text)
    assert str(text) in str(info.value)
    with pytest.raises(DecodeError, match="file not found"):
        decode_image(tmp_path / "nothing.png")
    with pytest.raises(DecodeError, match="directory"):
        decode_image(tmp_path)


def test_pixel_limit(tmp_path: Path) -> None:
    path = tmp_path / "big.png"
    noise((100, 80)).save(path)
    with pytest.raises(DecodeError, match="exceeds the pixel limit 7999") as info:
        decode_image(path, max_pixels=7999)
    assert str(path) in str(info.value) and "100x80" in str(info.value)
    assert decode_image(path, max_pixels=8000).size == (100, 80)
    assert DecodePolicy(max_pixels=None).decode(path).size == (100, 80)


def test_policy_from_cfg_validates() -> None:
    assert DecodePolicy.from_cfg({"on_error": "skip", "background": [0, 0, 0]}).background == (0, 0, 0)
    with pytest.raises(ConfigError, match="decode.on_error"):
        DecodePolicy.from_cfg({"on_error": "substitute"})
    with pytest.raises(ConfigError, match="decode.max_pixel.*Did you mean 'max_pixels'"):
        DecodePolicy.from_cfg({"max_pixel": 10})
    with pytest.raises(ConfigError, match="decode.background"):
        DecodePolicy(background=(0, 0, 300))


def test_check_files_reports_bad_ones_in_order(tmp_path: Path) -> None:
    good = tmp_path / "good.png"
    noise().save(good)
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"\x89PNG\r\n\x1a\n" + b"\x00" * 20)
    missing = tmp_path / "missing.png"
    for workers in (1, 3):
        report = check_files([good, bad, good, missing], workers=workers)
        assert [p for p, _ in report] == [str(bad), str(missing)]
        assert "file not found" in report[1][1]


def test_color_key_transparency_and_float_images(tmp_path: Path) -> None:
    path = tmp_path / "key.png"
    pixels = np.zeros((1, 2, 3), dtype=np.uint8)
    pixels[0, 1] = (9, 99, 199)
    Image.fromarray(pixels, "RGB").save(path, transparency=(0, 0, 0))  # tRNS color key: black is transparent
    assert np.asarray(decode_image(path, background=(1, 2, 3)))[0].tolist() == [[1, 2, 3], [9, 99, 199]]
    tiff = tmp_path / "float.tif"
    Image.fromarray(np.array([[0.0, 0.5, 1.0]], dtype=np.float32), "F").save(tiff)
    assert np.asarray(decode_image(tiff))[0, :, 0].tolist() == [0, 128, 255]  # [0, 1] floats scaled by 255


def _swapped_primaries_profile() -> bytes:
    """An RGB ICC profile whose red and blue primaries are swapped: converting from it to sRGB swaps the
    red and blue channels, a change no rounding can produce."""
    import struct

    from PIL import ImageCms

    data = bytearray(ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes())
    count = struct.unpack(">I", data[128:132])[0]
    entries = {bytes(data[132 + 12 * i : 136 + 12 * i]): 132 + 12 * i for i in range(count)}
    red, blue = entries[b"rXYZ"], entries[b"bXYZ"]
    data[red + 4 : red + 12], data[blue + 4 : blue + 12] = (
        data[blue + 4 : blue + 12],
        data[red + 4 : red + 12],
    )
    return bytes(data)


def test_icc_profile_ignored_by_default_and_converted_to_srgb_on_request(tmp_path: Path) -> None:
    path = tmp_path / "tagged.png"
    Image.new("RGB", (8, 6), (200, 30, 10)).save(path, icc_profile=_swapped_primaries_profile())
    assert decode_image(path).getpixel((0, 0)) == (200, 30, 10)
    converted = np.asarray(DecodePolicy(icc="srgb").decode(path), dtype=int)
    assert np.abs(converted - np.array([10, 30, 200])).max() <= 2
    rgba = tmp_path / "tagged_rgba.png"
    Image.new("RGBA", (8, 6), (200, 30, 10, 255)).save(rgba, icc_profile=_swapped_primaries_profile())
    assert np.abs(np.asarray(decode_image(rgba, icc="srgb"), dtype=int) - [10, 30, 200]).max() <= 2


def test_srgb_profile_is_nearly_identity_and_bad_profile_names_the_file(tmp_path: Path) -> None:
    from PIL import ImageCms

    srgb = ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes()
    image = noise()
    image.save(tmp_path / "srgb.png", icc_profile=srgb)
    out = np.asarray(decode_image(tmp_path / "srgb.png", icc="srgb"), dtype=int)
    assert np.abs(out - np.asarray(image, dtype=int)).max() <= 2
    image.save(tmp_path / "bad_icc.png", icc_profile=b"not a profile" * 10)
    assert decode_image(tmp_path / "bad_icc.png").size == image.size  # ignored by default
    with pytest.raises(DecodeError, match=r"bad_icc\.png: bad ICC profile"):
        decode_image(tmp_path / "bad_icc.png", icc="srgb")
    with pytest.raises(ConfigError, match="decode.icc"):
        DecodePolicy.from_cfg({"icc": "adobe"})
