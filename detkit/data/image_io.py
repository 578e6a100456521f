"""Reading images from disk: always uint8 HxWx3 RGB, EXIF orientation applied, clear errors.

Pillow decodes (it knows EXIF); every mode a detection image plausibly comes in is turned into RGB:
grayscale (L, 1), palette (P, PA), alpha (LA, RGBA: alpha dropped, not composited), CMYK, YCbCr and
16-bit grayscale (I;16*, I: scaled 0..65535 -> 0..255). Anything else, a missing, truncated or broken
file, or a decompression bomb raises ``DataError`` naming the file.
"""

from __future__ import annotations

import logging
import os
import warnings
from typing import Union

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from detkit.errors import DataError

logger = logging.getLogger("detkit")

_SIXTEEN_BIT_MODES = ("I;16", "I;16L", "I;16B", "I;16N", "I")
_CONVERTIBLE_MODES = (
    "RGB",
    "L",
    "1",
    "P",
    "PA",
    "LA",
    "RGBA",
    "RGBX",
    "RGBa",
    "CMYK",
    "YCbCr",
    "La",
)


def read_image(path: Union[str, os.PathLike], exif: bool = True) -> np.ndarray:
    """Read ``path`` as a ``np.uint8`` array of shape (H, W, 3), RGB.

    ``exif=True`` rotates/flips the pixels by the EXIF orientation tag, so H and W are the upright size.
    """
    path = os.fspath(path)
    try:
        with warnings.catch_warnings():
            # Pillow warns (UserWarning) about corrupt but harmless EXIF blocks: not worth a warning per read
            warnings.simplefilter("ignore", UserWarning)
            with Image.open(path) as im:
                im.load()  # decode now, so a truncated file fails here and not later
                if exif:
                    im = _apply_exif(im, path)
                return _to_rgb_array(im, path)
    except DataError:
        raise
    except FileNotFoundError:
        raise DataError(f"image file not found: {path}") from None
    except Image.DecompressionBombError as err:
        raise DataError(
            f"refusing to decode {path}: {err} (raise PIL.Image.MAX_IMAGE_PIXELS if the file is trusted)"
        ) from None
    except UnidentifiedImageError:
        raise DataError(
            f"cannot identify image file {path}: not an image, a format Pillow cannot read, or corrupted"
        ) from None
    except (OSError, SyntaxError, ValueError, EOFError) as err:
        # Pillow reports truncated and corrupt data streams as OSError, broken PNG chunks as SyntaxError
        raise DataError(
            f"cannot decode image file {path} (truncated or corrupted?): {err}"
        ) from None


def _apply_exif(im: Image.Image, path: str) -> Image.Image:
    try:
        return ImageOps.exif_transpose(im)
    except (
        Exception
    ) as err:  # a malformed EXIF block must not make an otherwise fine image unreadable
        logger.warning("ignoring unreadable EXIF orientation of %s: %s", path, err)
        return im


def _to_rgb_array(im: Image.Image, path: str) -> np.ndarray:
    mode = im.mode
    if mode == "RGB":
        return np.asarray(im, dtype=np.uint8).copy()
    if mode in _SIXTEEN_BIT_MODES:
        return _sixteen_bit_to_rgb(np.asarray(im), mode, path)
    if mode in _CONVERTIBLE_MODES:
        return np.asarray(im.convert("RGB"), dtype=np.uint8).copy()
    raise DataError(
        f"unsupported image mode {mode!r} in {path}; detkit reads RGB, grayscale, palette, alpha, "
        "CMYK and 16-bit grayscale images (convert the file to 8-bit RGB)"
    )


def _sixteen_bit_to_rgb(arr: np.ndarray, mode: str, path: str) -> np.ndarray:
    arr = arr.astype(np.int64)
    if arr.ndim != 2 or (arr.size and (arr.min() < 0 or arr.max() > 65535)):
        raise DataError(
            f"unsupported {mode!r} image {path}: values outside 0..65535 (convert the file to 8-bit RGB)"
        )
    # 65535 / 257 = 255: the full 16-bit range maps onto the full 8-bit range, rounding to nearest
    gray = ((arr + 128) // 257).astype(np.uint8)
    return np.repeat(gray[:, :, None], 3, axis=2)
