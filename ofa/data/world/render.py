"""Rendering of world objects with Pillow (supersampled, box-filter downsampled => antialiased)."""

from __future__ import annotations

from collections.abc import Sequence
from functools import lru_cache

import numpy as np
from PIL import Image, ImageDraw

from .schema import CIRCLE_RADIUS, Background, WorldObject, outline

#: Pale background colours; all far (in RGB) from every object colour.
BACKGROUND_COLOURS: dict[str, tuple[int, int, int]] = {
    "grey": (234, 234, 231),
    "cream": (245, 239, 221),
    "sky": (222, 233, 246),
    "mint": (226, 241, 225),
    "lilac": (237, 230, 244),
}
#: ``plain``; ``vgrad``/``hgrad``: a +-10 level linear ramp; ``noise``: +-6 level per-pixel noise.
BACKGROUND_STYLES: tuple[str, ...] = ("plain", "vgrad", "hgrad", "noise")


@lru_cache(maxsize=64)
def _background(colour: str, style: str, image_size: int) -> Image.Image:
    """Background at output resolution; cached because scenes only ever copy it."""
    base = np.array(BACKGROUND_COLOURS[colour], dtype=np.float32)
    n = image_size
    if style == "plain":
        arr = np.broadcast_to(base, (n, n, 3)).copy()
    elif style in ("vgrad", "hgrad"):
        ramp = np.linspace(-10.0, 10.0, n, dtype=np.float32)
        ramp = ramp[:, None] if style == "vgrad" else ramp[None, :]
        arr = base + np.broadcast_to(ramp, (n, n))[..., None]
    elif style == "noise":
        # PCG64.random_raw is bit-stable across numpy versions, unlike Generator distributions.
        raw = np.random.PCG64(20240601 + n).random_raw(n * n).reshape(n, n)
        arr = base + ((raw % 13).astype(np.float32) - 6.0)[..., None]
    else:
        raise ValueError(f"unknown background style {style!r}; expected one of {BACKGROUND_STYLES}")
    return Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8), "RGB")


def coverage_mask(obj: WorldObject, supersample: int = 4) -> Image.Image:
    """Antialiased coverage ("L" image, 255 = fully inside) of ``obj`` over the pixels of ``obj.box``.

    The outline is filled at ``supersample`` x resolution and box-filter reduced, i.e. each output
    value is the fraction of the pixel the shape covers (up to the subsampling grid).
    """
    ss = max(1, int(supersample))
    x0, y0, x1, y1 = obj.box
    mask = Image.new("L", ((x1 - x0) * ss, (y1 - y0) * ss), 0)
    draw = ImageDraw.Draw(mask)
    cx, cy = obj.center[0] - x0, obj.center[1] - y0
    pts = outline(obj.shape, cx, cy, obj.extent, obj.rotation)
    if pts is None:
        r = CIRCLE_RADIUS * obj.extent
        # Pillow's ellipse box is inclusive of its last pixel index.
        draw.ellipse([(cx - r) * ss, (cy - r) * ss, (cx + r) * ss - 1, (cy + r) * ss - 1], fill=255)
    else:
        # Continuous coordinate x maps to supersampled pixel-centre index x*ss - 0.5.
        draw.polygon([(x * ss - 0.5, y * ss - 0.5) for x, y in pts], fill=255)
    return mask.reduce(ss) if ss > 1 else mask


def render(
    objects: Sequence[WorldObject],
    image_size: int = 128,
    background: Background | None = None,
    supersample: int = 4,
) -> Image.Image:
    """Draw ``objects`` (pixel geometry for an ``image_size`` canvas) and return an RGB image.

    Usable on its own, e.g. as a text-to-image oracle: build ``WorldObject`` s (or take them from a
    scene, ``o.scaled(f)`` to change resolution) and render them. Each object is filled at
    ``supersample`` x resolution inside its box only and alpha-blended onto the background with its
    coverage, which antialiases edges exactly like rendering the whole image supersampled.
    """
    bg = background or Background()
    canvas = _background(bg.colour, bg.style, image_size).copy()
    for obj in objects:
        canvas.paste(obj.rgb, obj.box, coverage_mask(obj, supersample))
    return canvas
