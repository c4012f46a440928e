"""Reading images from disk: Pillow, EXIF orientation applied, always 8-bit RGB."""

from __future__ import annotations

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError


class ImageReadError(OSError):
    """An image file is missing, corrupt, truncated or not an image. The message names the file."""

    def __init__(self, file_name: str, reason: str | None = None):
        # One-argument form: an already formatted message (DataLoader workers re-raise that way).
        message = file_name if reason is None else f"cannot read image '{file_name}': {reason}"
        super().__init__(message)
        self.file_name = file_name
        self.reason = reason if reason is not None else message


def _to_rgb(image: Image.Image) -> Image.Image:
    if image.mode == "RGB":
        return image
    if image.mode in ("I", "I;16", "I;16B", "I;16L", "F"):
        # Wide grayscale: rescale to 0..255 instead of letting Pillow clip at 255.
        array = np.asarray(image, dtype=np.float64)
        top = array.max() if array.size else 0.0
        scale = 255.0 / top if top > 255.0 else 1.0
        image = Image.fromarray(np.clip(array * scale, 0, 255).astype(np.uint8), mode="L")
    if image.mode == "P" and "transparency" in image.info:
        image = image.convert("RGBA")  # palette transparency is lost by a direct P -> RGB
    # RGBA/LA drop the alpha channel; CMYK, YCbCr, L, 1, P use Pillow's standard conversions.
    return image.convert("RGB")


def read_image(file_name: str) -> np.ndarray:
    """Reads an image as RGB with its EXIF orientation applied.

    Args:
        file_name: path of a file Pillow can decode (JPEG, PNG, ...).

    Returns:
        uint8 array [H, W, 3] in RGB order; H, W are the size after the EXIF rotation.

    Raises:
        ImageReadError: the file is missing, not an image, corrupt or truncated.
    """
    try:
        with Image.open(file_name) as image:
            image.load()  # decode now so truncation is detected here, inside the try
            image = ImageOps.exif_transpose(image)
            image = _to_rgb(image)
            array = np.asarray(image, dtype=np.uint8).copy()
    except FileNotFoundError:
        raise ImageReadError(file_name, "file not found") from None
    except UnidentifiedImageError:
        raise ImageReadError(file_name, "not a recognised image format") from None
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as exc:
        raise ImageReadError(file_name, f"{type(exc).__name__}: {exc}") from exc
    if array.ndim != 3 or array.shape[2] != 3 or array.shape[0] == 0 or array.shape[1] == 0:
        raise ImageReadError(file_name, f"decoded to an unusable array of shape {array.shape}")
    return array
