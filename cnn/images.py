"""Decode and resize cell images to square uint8 RGB arrays.

8-bit RGB and palette PNGs (the NIH cells are RGB) are decoded by imagecodecs' libpng, which
is faster than Pillow's decoder and gives the same pixels; every other format, pixel type and
damaged file goes to Pillow, which also words the errors. Resizing is Pillow's.
"""

import io
import struct
from typing import NamedTuple

import imagecodecs
import numpy as np
from PIL import Image, UnidentifiedImageError

from cnn.errors import InputError

MAX_SOURCE_PIXELS = 50_000_000
"""Refuse to decode larger images: a real cell crop is about 150×150; this guards memory."""
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
PNG_SIZE_AT = slice(16, 24)
"""Width and height, big-endian, in the IHDR chunk that must follow the signature."""
PNG_COLOUR_TYPE_AT = 25
PNG_TRUECOLOUR = 2
"""The IHDR colour type of RGB without alpha (3 is a palette)."""
SIXTEEN_BIT_GRAY_MODES = frozenset({"I;16", "I;16L", "I;16B", "I;16N"})
"""Pillow's modes of 16-bit grayscale (PNG, TIFF)."""
UNSCALED_MODES = {"I": "32-bit integer", "F": "32-bit floating-point"}


class UnreadableImageError(InputError):
    """The payload is not a decodable image (truncated, corrupt, or not an image at all)."""


def decode_and_resize(payload: bytes | np.ndarray, image_size: int) -> np.ndarray:
    """Return the image as uint8 (image_size × image_size × 3) RGB.

    `payload` is encoded image bytes (PNG, JPEG, …) or an already decoded uint8 array.
    """
    return resize_square(decode_image(payload), image_size)


def resize_square(image: Image.Image, image_size: int) -> np.ndarray:
    """Resize to a square uint8 RGB array.

    Pillow's bilinear resize filters over the whole source footprint when shrinking (it
    antialiases like scikit-image's `resize(anti_aliasing=True)`), at a fraction of the cost.
    """
    if image.size != (image_size, image_size):
        image = image.resize((image_size, image_size), Image.Resampling.BILINEAR)
    return np.asarray(image, dtype=np.uint8)


def decode_image(payload: bytes | np.ndarray) -> Image.Image:
    """Decode bytes (or wrap pixels) as an RGB image, converting grayscale and alpha."""
    return decode_rgb(payload)[0]


def decode_rgb(payload: bytes | np.ndarray) -> tuple[Image.Image, bool]:
    """Decode bytes (or wrap pixels) as an RGB image, and whether it had to be converted to
    RGB (grayscale, alpha or palette)."""
    if isinstance(payload, np.ndarray):
        return as_rgb(Image.fromarray(payload))
    if not payload:
        raise UnreadableImageError("empty file")
    pixels = _decode_rgb_png(payload)
    if pixels is not None:
        return Image.fromarray(pixels), payload[PNG_COLOUR_TYPE_AT] != PNG_TRUECOLOUR
    try:
        image = Image.open(io.BytesIO(payload))
        width, height = image.size
        if width * height > MAX_SOURCE_PIXELS:
            raise UnreadableImageError(f"image too large ({width}×{height} pixels)")
        image.load()
    except UnreadableImageError:
        raise
    except UnidentifiedImageError as exc:  # its message names a BytesIO object, not the file
        raise UnreadableImageError("not an image in any known format") from exc
    except (OSError, SyntaxError, Image.DecompressionBombError) as exc:
        raise UnreadableImageError(f"cannot decode image: {exc}") from exc
    return as_rgb(image)


def as_rgb(image: Image.Image) -> tuple[Image.Image, bool]:
    """The image in 8-bit RGB, and whether it had to be converted. 16-bit grayscale keeps its
    top 8 bits (as Pillow does for 16-bit RGB; its own conversion clips at 255); 32-bit
    integer or float pixels have no scale to read 8 bits from, and are refused."""
    if image.mode == "RGB":
        return image, False
    if image.mode in SIXTEEN_BIT_GRAY_MODES:
        image = Image.fromarray((np.asarray(image) >> 8).astype(np.uint8))
    elif image.mode in UNSCALED_MODES:
        raise UnreadableImageError(
            f"{UNSCALED_MODES[image.mode]} pixels have no known 8-bit scale; save the image "
            "with 8 or 16 bits a channel"
        )
    return image.convert("RGB"), True


class Fitted(NamedTuple):
    """An image fitted to a model's input, and what that took."""

    pixels: np.ndarray
    converted_to_rgb: bool
    resized: bool


def fit_encoded(payloads: list[bytes], image_size: int) -> list[Fitted | str]:
    """Each payload as uint8 (image_size × image_size × 3) RGB, or why it cannot be decoded
    (a decode worker's job)."""
    fitted: list[Fitted | str] = []
    for payload in payloads:
        try:
            image, converted = decode_rgb(payload)
        except UnreadableImageError as error:
            fitted.append(str(error))
            continue
        resized = image.size != (image_size, image_size)
        fitted.append(Fitted(resize_square(image, image_size), converted, resized))
    return fitted


def _decode_rgb_png(payload: bytes) -> np.ndarray | None:
    """The pixels of an 8-bit RGB (or palette) PNG of a sane size, or None for Pillow to
    handle: another format or pixel type, a damaged file, or one too large."""
    if not payload.startswith(PNG_SIGNATURE) or len(payload) < PNG_SIZE_AT.stop:
        return None
    width, height = struct.unpack(">II", payload[PNG_SIZE_AT])
    if width * height > MAX_SOURCE_PIXELS:
        return None
    try:
        pixels = imagecodecs.png_decode(payload)
    except Exception:  # PngError, or others on garbage: Pillow decides, and says why
        return None
    if pixels.dtype != np.uint8 or pixels.ndim != 3 or pixels.shape[2] != 3:
        return None
    return pixels
