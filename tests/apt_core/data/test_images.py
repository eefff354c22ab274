"""Image decoding: every supported raw encoding and compressed format, and clear errors."""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from apt_core.data.images import (
    ImageDecodeError,
    compressed_to_rgb,
    decode_stored,
    encode_image,
    raw_to_rgb,
    resize_rgb,
)
from apt_core.data.synthetic import image_message, synthetic_image


@pytest.mark.parametrize("encoding", ["rgb8", "bgr8", "rgba8", "bgra8", "mono8", "16UC1"])
def test_raw_encodings_decode_to_expected_rgb(encoding: str) -> None:
    rgb = synthetic_image(7, 24, 32)
    msg, seen = image_message(rgb, encoding, 0)
    out = raw_to_rgb(msg.data, msg.height, msg.width, msg.encoding, msg.step)
    assert out.shape == (24, 32, 3) and out.dtype == np.uint8
    np.testing.assert_array_equal(out, seen)
    if encoding in ("rgb8", "bgr8", "rgba8", "bgra8"):
        np.testing.assert_array_equal(out, rgb)


def test_row_padding_in_step_is_ignored() -> None:
    rgb = synthetic_image(1, 5, 6)
    padded = np.zeros((5, 6 * 3 + 7), np.uint8)
    padded[:, : 6 * 3] = rgb.reshape(5, -1)
    np.testing.assert_array_equal(raw_to_rgb(padded.reshape(-1), 5, 6, "rgb8", 6 * 3 + 7), rgb)


def test_16uc1_big_endian() -> None:
    depth = np.array([[0x1234, 0xFF00]], dtype=">u2")
    out = raw_to_rgb(depth.view(np.uint8).reshape(-1), 1, 2, "16UC1", 4, is_bigendian=1)
    assert out[0, :, 0].tolist() == [0x12, 0xFF]


def test_unknown_encoding_and_short_buffer_are_named() -> None:
    with pytest.raises(ImageDecodeError, match="unknown image encoding 'yuv422'"):
        raw_to_rgb(np.zeros(12, np.uint8), 2, 2, "yuv422", 6)
    with pytest.raises(ImageDecodeError, match="needs 48 bytes, got 10"):
        raw_to_rgb(np.zeros(10, np.uint8), 4, 4, "rgb8", 12)


@pytest.mark.parametrize("fmt", ["png", "jpeg", "rgb8; jpeg compressed bgr8"])
def test_compressed_formats(fmt: str) -> None:
    rgb = synthetic_image(3, 32, 32)
    ext = ".png" if "png" in fmt else ".jpg"
    _, buf = cv2.imencode(ext, cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))
    out = compressed_to_rgb(buf.reshape(-1), fmt)
    if ext == ".png":
        np.testing.assert_array_equal(out, rgb)
    else:  # lossy, but colours must not be swapped
        assert np.abs(out.astype(int) - rgb.astype(int)).mean() < 6


def test_compressed_errors() -> None:
    with pytest.raises(ImageDecodeError, match="unknown CompressedImage format 'tiff'"):
        compressed_to_rgb(np.zeros(4, np.uint8), "tiff")
    with pytest.raises(ImageDecodeError, match="corrupt 'png'"):
        compressed_to_rgb(np.frombuffer(b"not a png", np.uint8), "png")


def test_png_storage_is_lossless_and_resize() -> None:
    rgb = synthetic_image(9, 64, 48)
    np.testing.assert_array_equal(decode_stored(encode_image(rgb, "png")), rgb)
    assert resize_rgb(rgb, 24, 32).shape == (32, 24, 3)
    with pytest.raises(ValueError, match="'webp'"):
        encode_image(rgb, "webp")
