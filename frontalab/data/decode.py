"""Photo bytes -> 8-bit RGB, with every failure named: bad input is counted, never fatal."""

from __future__ import annotations

import io
import warnings

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".pgm", ".ppm", ".tif", ".tiff", ".gif")
# The formats Pillow may parse, whatever a file's name says: no EPS (Ghostscript), no exotic parsers.
ALLOWED_FORMATS = ("JPEG", "PNG", "BMP", "WEBP", "PPM", "TIFF", "GIF")
MAX_BYTES = 64 << 20  # a photo file larger than this is refused unread
MAX_PIXELS = 180_000_000  # a header claiming more is refused before any pixel is decoded
MAX_SIDE = 2048  # larger photos are decoded (JPEG: at a reduced scale) and returned at this longer side

# Reasons a photo is skipped; the manifest counts each.
EMPTY_FILE = "empty_file"
NOT_AN_IMAGE = "not_an_image"
TRUNCATED = "truncated"
CORRUPT = "corrupt"
UNREADABLE = "unreadable"
TOO_SMALL = "too_small"
TOO_LARGE = "too_large"
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
    """Decode photo bytes to ``(H, W, 3)`` uint8 RGB, upright by EXIF and at most `MAX_SIDE` on its longer
    side; raise `Skip` otherwise. The one place untrusted image bytes are parsed."""
    if not data:
        raise Skip(EMPTY_FILE)
    if len(data) > MAX_BYTES:
        raise Skip(TOO_LARGE, f"{len(data)} bytes, over {MAX_BYTES}")
    try:
        with warnings.catch_warnings():  # the pixel cap below is ours; Pillow's bomb warning is not needed
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            im = Image.open(io.BytesIO(data), formats=ALLOWED_FORMATS)
            width, height = im.size
            if width * height > MAX_PIXELS:
                raise Skip(TOO_LARGE, f"{width}x{height} pixels, over {MAX_PIXELS}")
            if max(width, height) > MAX_SIDE and im.format == "JPEG":
                im.draft("RGB", (MAX_SIDE, MAX_SIDE))  # decode at 1/2, 1/4 or 1/8 scale: no full-size buffer
            # Pillow reads 16-bit RGB PNGs as 8-bit "RGB"; only the raw tile mode tells.
            deep = any("16" in str(getattr(t, "args", "")) for t in (im.tile or ()))
            im.load()
            im = ImageOps.exif_transpose(im)
            if max(im.size) > MAX_SIDE:
                im.thumbnail((MAX_SIDE, MAX_SIDE), Image.Resampling.LANCZOS)
            rgb, conversion = _to_rgb(im)
    except UnidentifiedImageError:
        raise Skip(NOT_AN_IMAGE, f"not one of {', '.join(ALLOWED_FORMATS)}") from None
    except Image.DecompressionBombError as err:
        raise Skip(TOO_LARGE, str(err)) from None
    except (OSError, SyntaxError, ValueError, EOFError) as err:
        raise Skip(TRUNCATED if "truncated" in str(err).lower() else CORRUPT, str(err)) from None
    except Exception as err:  # Pillow's parsers raise many other types (struct.error, IndexError, ...) on bad bytes
        raise Skip(CORRUPT, f"{type(err).__name__}: {err}") from None
    if deep:
        conversion = "16bit"
    if min(rgb.shape[:2]) < min_side:
        raise Skip(TOO_SMALL, f"{rgb.shape[1]}x{rgb.shape[0]}")
    return np.ascontiguousarray(rgb), conversion
