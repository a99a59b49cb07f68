"""Photo bytes -> 8-bit RGB, with every failure named: bad input is counted, never fatal."""

from __future__ import annotations

import io

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".pgm", ".ppm", ".tif", ".tiff", ".gif")

# Reasons a photo is skipped; the manifest counts each.
EMPTY_FILE = "empty_file"
NOT_AN_IMAGE = "not_an_image"
TRUNCATED = "truncated"
CORRUPT = "corrupt"
UNREADABLE = "unreadable"
TOO_SMALL = "too_small"
NO_FACE = "no_face"
MULTIPLE_FACES = "multiple_faces"
NOT_FRONTAL = "not_frontal"


class Skip(Exception):
    """A photo that cannot become a training face; ``reason`` is one of the constants above."""

    def __init__(self, reason: str, detail: str = ""):
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason


def _to_rgb(im: Image.Image) -> tuple[np.ndarray, str | None]:
    """(RGB uint8 array, the conversion applied or None)."""
    mode = im.mode
    if mode == "RGB":
        return np.asarray(im), None
    if mode.startswith("I"):  # 16- or 32-bit greyscale
        arr = np.asarray(im).astype(np.float64)
        top = 65535.0 if arr.max() > 255 else 255.0
        grey = np.clip(arr / top * 255.0 + 0.5, 0, 255).astype(np.uint8)
        return np.repeat(grey[..., None], 3, axis=2), "16bit"
    if mode in ("L", "1", "LA"):
        grey = np.asarray(im.convert("L"))
        return np.repeat(grey[..., None], 3, axis=2), "grayscale"
    if mode == "CMYK":
        return np.asarray(im.convert("RGB")), "cmyk"
    if mode in ("P", "PA"):
        rgba = im.convert("RGBA")
        return _flatten_alpha(rgba), "palette"
    if mode in ("RGBA", "RGBa"):
        return _flatten_alpha(im), "rgba"
    return np.asarray(im.convert("RGB")), mode.lower()


def _flatten_alpha(rgba: Image.Image) -> np.ndarray:
    """Composite over white: transparent backgrounds become the thesis' white background."""
    white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
    return np.asarray(Image.alpha_composite(white, rgba.convert("RGBA")).convert("RGB"))


def decode(data: bytes, min_side: int = 32) -> tuple[np.ndarray, str | None]:
    """Decode photo bytes to ``(H, W, 3)`` uint8 RGB, upright by EXIF; raise `Skip` otherwise."""
    if not data:
        raise Skip(EMPTY_FILE)
    try:
        im = Image.open(io.BytesIO(data))
        # Pillow reads 16-bit RGB PNGs as 8-bit "RGB"; only the raw tile mode tells.
        deep = any("16" in str(getattr(t, "args", "")) for t in (im.tile or ()))
        im.load()
    except UnidentifiedImageError:
        raise Skip(NOT_AN_IMAGE) from None
    except (OSError, SyntaxError, ValueError) as err:
        raise Skip(TRUNCATED if "truncated" in str(err).lower() else CORRUPT, str(err)) from None
    im = ImageOps.exif_transpose(im)
    rgb, conversion = _to_rgb(im)
    if deep:
        conversion = "16bit"
    if min(rgb.shape[:2]) < min_side:
        raise Skip(TOO_SMALL, f"{rgb.shape[1]}x{rgb.shape[0]}")
    return np.ascontiguousarray(rgb), conversion
