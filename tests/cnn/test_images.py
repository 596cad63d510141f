import io

import numpy as np
import pytest
from PIL import Image

from cnn.images import UnreadableImageError, decode_and_resize


def _png(array: np.ndarray, mode: str | None = None) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(array, mode=mode).save(buffer, format="PNG")
    return buffer.getvalue()


def test_png_is_resized_to_square_uint8_rgb():
    pixels = np.random.default_rng(0).integers(0, 256, size=(130, 90, 3), dtype=np.uint8)
    resized = decode_and_resize(_png(pixels), 100)
    assert resized.shape == (100, 100, 3) and resized.dtype == np.uint8


def test_grayscale_and_rgba_become_rgb():
    gray = np.full((40, 40), 200, dtype=np.uint8)
    assert decode_and_resize(_png(gray), 32).shape == (32, 32, 3)
    rgba = np.full((40, 40, 4), 100, dtype=np.uint8)
    assert decode_and_resize(_png(rgba), 32).shape == (32, 32, 3)


def test_arrays_are_resized_without_encoding():
    pixels = np.zeros((64, 64, 3), dtype=np.uint8)
    pixels[:32] = 255
    resized = decode_and_resize(pixels, 16)
    assert resized[:6].min() == 255 and resized[10:].max() == 0


@pytest.mark.parametrize(
    "payload",
    [b"not an image at all", _png(np.zeros((50, 50, 3), dtype=np.uint8))[:60], b""],
    ids=["garbage", "truncated", "empty"],
)
def test_undecodable_payloads_raise_a_named_error(payload):
    with pytest.raises(UnreadableImageError):
        decode_and_resize(payload, 32)
