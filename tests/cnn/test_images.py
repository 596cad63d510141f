import io

import numpy as np
import pytest
from PIL import Image

from cnn.images import UnreadableImageError, _decode_rgb_png, decode_and_resize


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


def _pillow_pixels(payload: bytes) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(payload)).convert("RGB"))


def test_rgb_and_palette_pngs_take_the_fast_decoder_to_pillows_pixels():
    pixels = np.random.default_rng(1).integers(0, 256, size=(37, 53, 3), dtype=np.uint8)
    palette = Image.fromarray(pixels).convert("P")
    buffer = io.BytesIO()
    palette.save(buffer, format="PNG")
    for payload in (_png(pixels), buffer.getvalue()):
        fast = _decode_rgb_png(payload)
        assert fast is not None
        np.testing.assert_array_equal(fast, _pillow_pixels(payload))


def test_other_pngs_are_left_to_pillow():
    rng = np.random.default_rng(2)
    left = {
        "gray": _png(rng.integers(0, 256, size=(20, 20), dtype=np.uint8)),
        "rgba": _png(rng.integers(0, 256, size=(20, 20, 4), dtype=np.uint8)),
        "16-bit": _png(rng.integers(0, 2**16, size=(20, 20), dtype=np.uint16)),
        "truncated": _png(rng.integers(0, 256, size=(20, 20, 3), dtype=np.uint8))[:70],
        "signature only": b"\x89PNG\r\n\x1a\n" + b"\0" * 40,
    }
    assert {name: _decode_rgb_png(payload) for name, payload in left.items()} == dict.fromkeys(left)
