"""Box <-> location-bin quantisation, as in the official OFA code.

Official recipe (``data/mm_data/refcoco_dataset.py`` and ``utils/eval_utils.py`` of OFA-Sys/OFA):

* encode: resize the image to ``resize_w x resize_h`` (refcoco: 512x512) and scale the box by the resize
  ratios ``resize_w / image_w`` and ``resize_h / image_h``; divide by ``max_image_size`` (512); each
  coordinate becomes bin ``round(v * (num_bins - 1))``;
* decode: ``bin / (num_bins - 1) * max_image_size``, then divide x by the width ratio and y by the height
  ratio.

Both directions compute in float32 in the official order of operations, and rounding is half-to-even
(``torch.round``), so bins match the official ones bit for bit. A box is ``(x0, y0, x1, y1)`` in pixels of
the original image. Every function takes one box (4 numbers) or ``N`` boxes (``(N, 4)``) as a list, tuple,
NumPy array or torch tensor and returns the same kind (tensors stay on their device).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from numbers import Real
from typing import Any

import numpy as np
import torch

#: Coordinates up to this many pixels outside the image are clipped back in; further out is an error.
BOX_TOLERANCE_PX = 1.0

Numeric = Sequence[Any] | np.ndarray | torch.Tensor


def _to_float32_tensor(values: Numeric, what: str) -> torch.Tensor:
    if isinstance(values, torch.Tensor):
        return values.detach().to(device="cpu", dtype=torch.float32)
    try:
        return torch.as_tensor(np.asarray(values, dtype=np.float64), dtype=torch.float32)
    except (TypeError, ValueError) as error:
        raise ValueError(f"{what} must be numeric, got {values!r}") from error


def _restore_kind(result: torch.Tensor, like: Numeric) -> Any:
    """Return ``result`` as the same kind of container as ``like``."""
    if isinstance(like, torch.Tensor):
        return result.to(like.device)
    if isinstance(like, np.ndarray):
        return result.numpy()
    return result.tolist()


def _check_box_shape(boxes: torch.Tensor, what: str) -> None:
    if boxes.shape[-1:] != (4,) or boxes.dim() not in (1, 2):
        raise ValueError(f"{what} must have shape (4,) or (N, 4), got {tuple(boxes.shape)}")


def _is_number(value: Any) -> bool:
    return isinstance(value, Real) and not isinstance(value, bool)


def _resize_ratios(
    image_w: float, image_h: float, max_image_size: float, resize_to: Any
) -> tuple[float, float]:
    for name, value in (("image_w", image_w), ("image_h", image_h), ("max_image_size", max_image_size)):
        if not (_is_number(value) and math.isfinite(value) and value > 0):
            raise ValueError(f"{name} must be a positive finite number, got {value!r}")
    if resize_to is None:
        resize_w = resize_h = max_image_size
    elif _is_number(resize_to):
        resize_w = resize_h = resize_to
    else:
        try:
            resize_w, resize_h = resize_to
        except (TypeError, ValueError):
            raise ValueError(
                f"resize_to must be a size or a (width, height) pair, got {resize_to!r}"
            ) from None
    if not all(_is_number(v) and math.isfinite(v) and v > 0 for v in (resize_w, resize_h)):
        raise ValueError(f"resize_to must be a positive size or a (width, height) pair, got {resize_to!r}")
    # Python floats, as in the official transform: `float(s) / float(s_orig)`.
    return float(resize_w) / float(image_w), float(resize_h) / float(image_h)


def _check_num_bins(num_bins: int) -> None:
    if not isinstance(num_bins, int) or num_bins < 2:
        raise ValueError(f"num_bins must be an integer >= 2, got {num_bins!r}")


def validate_boxes(
    box_xyxy: Numeric, image_w: float, image_h: float, tolerance: float = BOX_TOLERANCE_PX
) -> torch.Tensor:
    """Check boxes against an image and return them as a float32 tensor, clipped into the image.

    Raises ``ValueError`` naming the box and the image size when a box is not finite, has ``x0 > x1`` or
    ``y0 > y1``, or reaches more than ``tolerance`` pixels outside ``[0, image_w] x [0, image_h]``.
    """
    boxes = _to_float32_tensor(box_xyxy, "box_xyxy")
    _check_box_shape(boxes, "box_xyxy")
    rows = boxes.reshape(-1, 4)
    lower = torch.zeros(4)
    upper = torch.tensor([image_w, image_h, image_w, image_h], dtype=torch.float32)
    not_finite = ~torch.isfinite(rows).all(dim=1)
    misordered = (rows[:, 0] > rows[:, 2]) | (rows[:, 1] > rows[:, 3])
    outside = ((rows < lower - tolerance) | (rows > upper + tolerance)).any(dim=1)
    problems = (
        (not_finite, "has a non-finite coordinate"),
        (misordered, "is not (x0, y0, x1, y1) with x0 <= x1 and y0 <= y1"),
        (outside, f"lies outside the {image_w}x{image_h} (width x height) image by more than {tolerance} px"),
    )
    for flags, reason in problems:
        if flags.any():
            index = int(flags.nonzero()[0, 0])
            where = f" (index {index})" if boxes.dim() == 2 else ""
            raise ValueError(f"box {rows[index].tolist()}{where} {reason}")
    return torch.minimum(torch.maximum(boxes, lower), upper)


def box_to_bins(
    box_xyxy: Numeric,
    image_w: float,
    image_h: float,
    num_bins: int = 1000,
    max_image_size: float = 512,
    resize_to: float | tuple[float, float] | None = None,
) -> Any:
    """Quantise pixel boxes of an ``image_w x image_h`` image to bin indices in ``[0, num_bins)``.

    ``resize_to`` is the size the image is resized to before quantisation: one number for a square
    ``S x S`` resize, or ``(width, height)``; ``None`` means ``max_image_size`` (the refcoco recipe, 512).
    Returns int64 values, same shape and container kind as ``box_xyxy``.
    """
    _check_num_bins(num_bins)
    width_ratio, height_ratio = _resize_ratios(image_w, image_h, max_image_size, resize_to)
    boxes = validate_boxes(box_xyxy, image_w, image_h)
    ratios = torch.as_tensor([width_ratio, height_ratio, width_ratio, height_ratio])  # float32, as official
    normalised = boxes * ratios / max_image_size
    bins = (normalised * (num_bins - 1)).round().to(torch.int64)
    if (bins > num_bins - 1).any():
        raise ValueError(
            f"box {boxes.tolist()} resized by {resize_to!r} exceeds max_image_size={max_image_size}: "
            f"bins {bins.tolist()} fall outside [0, {num_bins - 1}]"
        )
    return _restore_kind(bins, box_xyxy)


def bins_to_box(
    bins: Numeric,
    image_w: float,
    image_h: float,
    num_bins: int = 1000,
    max_image_size: float = 512,
    resize_to: float | tuple[float, float] | None = None,
) -> Any:
    """Inverse of :func:`box_to_bins`: bin indices back to float32 pixel boxes of the original image."""
    _check_num_bins(num_bins)
    width_ratio, height_ratio = _resize_ratios(image_w, image_h, max_image_size, resize_to)
    values = _to_float32_tensor(bins, "bins")
    _check_box_shape(values, "bins")
    _check_bin_values(values, num_bins)
    coords = values / (num_bins - 1) * max_image_size
    coords = coords / torch.as_tensor([width_ratio, height_ratio, width_ratio, height_ratio])
    return _restore_kind(coords, bins)


def _check_bin_values(values: torch.Tensor, num_bins: int) -> None:
    if not torch.isfinite(values).all() or (values < 0).any() or (values > num_bins - 1).any():
        raise ValueError(f"bins must lie in [0, {num_bins - 1}], got {values.tolist()}")


def quantize(coords: Numeric, num_bins: int = 1000) -> Any:
    """Quantise normalised coordinates in ``[0, 1]`` (any shape) to bins ``round(v * (num_bins - 1))``.

    Values within 1e-6 outside ``[0, 1]`` are clipped; others raise ``ValueError``.
    """
    _check_num_bins(num_bins)
    values = _to_float32_tensor(coords, "coords")
    if not torch.isfinite(values).all() or (values < -1e-6).any() or (values > 1 + 1e-6).any():
        raise ValueError(f"normalised coordinates must lie in [0, 1], got {values.tolist()}")
    bins = (values.clamp(0, 1) * (num_bins - 1)).round().to(torch.int64)
    return _restore_kind(bins, coords)


def dequantize(bins: Numeric, num_bins: int = 1000) -> Any:
    """Inverse of :func:`quantize`: bins (any shape) to normalised float32 coordinates ``bin / (num_bins - 1)``."""
    _check_num_bins(num_bins)
    values = _to_float32_tensor(bins, "bins")
    _check_bin_values(values, num_bins)
    return _restore_kind(values / (num_bins - 1), bins)
