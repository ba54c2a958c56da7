"""Image input: anything a user holds -> RGB PIL image -> the official square, [-1, 1] tensor."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image, ImageOps, UnidentifiedImageError

# Refuse decompression bombs early; a 30000 x 30000 image is 900 M pixels.
MAX_PIXELS = 64_000_000
MEAN = (0.5, 0.5, 0.5)
STD = (0.5, 0.5, 0.5)

ImageLike = Any  # PIL.Image | str | Path | np.ndarray | torch.Tensor


class ImageError(ValueError):
    """An input that is not a usable image; the message names it and says why."""


def load_image(image: ImageLike, name: str | None = None) -> Image.Image:
    """Return an RGB PIL image from a PIL image, a path, an HxWxC / HxW uint8 array or a CxHxW tensor.

    EXIF orientation is applied; grayscale, palette, CMYK and RGBA (composited on white) become RGB.
    """
    label = name or (str(image) if isinstance(image, (str, Path)) else type(image).__name__)
    if isinstance(image, (str, Path)):
        path = Path(image)
        if not path.is_file():
            raise ImageError(f"{path}: no such image file")
        try:
            with Image.open(path) as opened:
                _check_size(opened.size, label)
                opened.load()
                image = opened.copy()
        except Image.DecompressionBombError:
            # PIL refuses before our own size check can run; its error is not an OSError.
            raise ImageError(
                f"{path}: image too large to decode safely (PIL decompression-bomb limit)"
            ) from None
        except (UnidentifiedImageError, OSError) as err:
            raise ImageError(f"{path}: not a readable image ({err.__class__.__name__})") from None
    elif isinstance(image, torch.Tensor):
        image = _from_array(image.detach().cpu().numpy(), label, channels_first=image.dim() == 3)
    elif isinstance(image, np.ndarray):
        image = _from_array(image, label, channels_first=False)
    elif not isinstance(image, Image.Image):
        raise ImageError(f"{label}: expected a PIL image, a path, a numpy array or a tensor")
    _check_size(image.size, label)
    image = ImageOps.exif_transpose(image)
    if image.mode in ("RGBA", "LA", "PA") or (image.mode == "P" and "transparency" in image.info):
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        image = Image.alpha_composite(background, rgba)
    return image.convert("RGB")


def _check_size(size: tuple[int, int], label: str) -> None:
    w, h = size
    if w < 1 or h < 1:
        raise ImageError(f"{label}: empty image ({w}x{h})")
    if w * h > MAX_PIXELS:
        raise ImageError(f"{label}: {w}x{h} is larger than the {MAX_PIXELS // 1_000_000} M pixel limit")


def _from_array(array: np.ndarray, label: str, channels_first: bool) -> Image.Image:
    if array.ndim == 3 and channels_first and array.shape[0] in (1, 3, 4):
        array = np.moveaxis(array, 0, -1)
    if array.ndim == 3 and array.shape[-1] == 1:
        array = array[..., 0]
    if array.ndim not in (2, 3) or (array.ndim == 3 and array.shape[-1] not in (3, 4)):
        raise ImageError(f"{label}: array of shape {array.shape} is not an image (HxW, HxWx3 or HxWx4)")
    if array.dtype != np.uint8:
        if not np.issubdtype(array.dtype, np.floating):
            raise ImageError(f"{label}: arrays must be uint8 or float in [0, 1], got {array.dtype}")
        if not np.isfinite(array).all():
            raise ImageError(f"{label}: array holds NaN or infinite values")
        array = (np.clip(array, 0.0, 1.0) * 255).round().astype(np.uint8)
    _check_size((array.shape[1], array.shape[0]), label)
    return Image.fromarray(array)


def image_to_tensor(image: Image.Image, size: int) -> torch.Tensor:
    """Official preprocessing: bicubic resize straight to size x size, to [0, 1], normalise by 0.5 -> [-1, 1]."""
    resized = image.resize((size, size), Image.BICUBIC)
    array = np.asarray(resized, dtype=np.float32) / 255.0
    tensor = torch.from_numpy(array).permute(2, 0, 1)
    return (tensor - MEAN[0]) / STD[0]
