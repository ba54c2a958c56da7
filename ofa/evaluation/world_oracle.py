"""A non-neural oracle that reads a world scene image back into objects and scores text-to-image output.

:func:`parse_scene` turns an image of the synthetic world (:mod:`ofa.data.world`) into a list of
:class:`DetectedObject` (size, colour, shape, pixel box, centre), and :func:`compositional_match` /
:func:`compositional_accuracy` check generated images against their prompts: exactly the prompted
objects, and every stated relation true under the world's own truth conditions
(:func:`ofa.data.world.relation`).

How an image is parsed
    1. Background: a plane per RGB channel, fitted by least squares to the pale pixels (world
       backgrounds are plain, linear ramps or mild noise).
    2. Colour segmentation: every pixel ``p`` is explained as a mix ``B + alpha * (C_k - B)`` of the
       background ``B`` and each world colour ``C_k``; the colour with the smallest residual wins. This
       is exact for antialiased edges (a coverage blend) and tolerant to shade jitter and background
       noise. Foreground pixels form 8-connected blobs whose colour is the alpha-weighted vote of their
       confident pixels; a blob is split by colour only where a second colour covers a whole object's
       area (touching objects), and blobs under half the smallest object's area are specks.
    3. Shape: the blob's coverage ``alpha`` (measured against its own median colour) gives area,
       centroid and complex moments ``sum alpha * (z - z_c)^k``. For each candidate shape the area fixes
       the extent and the phase of the moment of the shape's symmetry order fixes the rotation (both
       calibrated on the world's rasteriser), so each candidate is drawn once with the world's own
       rasteriser and compared (L1, also against slightly blurred drawings) with the measured coverage; the
       best fit wins. Its extent decides small vs large, its geometry gives box and centre.

Measured on rendered world scenes (``bench/world_oracle_accuracy.py``: ``World.layout`` + ``render``, scenes
1000-1499 of each split, i.e. 2,000 per size): the object list (colour, shape, size) is exact in 100 % of
scenes at 64, 96 and 128 px, 99.95 % at 48 px and 98.3 % at 32 px (small circles and hexagons are 4 px wide
there); every box is within 1 px. Soft images (400 scenes per size): after a 1 px Gaussian blur 100 % at 96 and
128 px, 98 % at 64 px; after JPEG at quality 75 100 % at 128 px, 99.75 % at 96 px, 97.25 % at 64 px.
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from dataclasses import dataclass
from functools import cache

import numpy as np
from PIL import Image
from scipy import ndimage

from ofa.data.world import RELATIONS, Scene, WorldConfig, WorldObject, coverage_mask, parse_mentions, relation
from ofa.data.world.language import REL_EN, REL_ZH
from ofa.data.world.schema import float_box, pixel_box
from ofa.data.world.vocab import COLOUR_BY_NAME

__all__ = [
    "DetectedObject",
    "Prompt",
    "compositional_accuracy",
    "compositional_match",
    "parse_prompt",
    "parse_scene",
]

Triple = tuple[str | None, str, str]  # (size or None = any size, colour, shape)

# Rotational symmetry order of each shape: the phase of the complex moment of this order gives the rotation.
_SYMMETRY = {"square": 4, "triangle": 3, "star": 5, "hexagon": 6, "diamond": 2, "cross": 4}
_SHAPES = ("circle", *_SYMMETRY)

# Thresholds on the mixing coefficient alpha (0 = background, 1 = pure object colour).
_FOREGROUND_ALPHA = 0.2  # a pixel this covered belongs to some object
_SEED_ALPHA = 0.6  # a pixel this covered votes for its object's colour
_PURE_ALPHA = 0.85  # pixels this covered give an object's measured colour
_BACKGROUND_TOLERANCE = 40.0  # RGB distance from the border colour still counted as background
_MIN_BACKGROUND_LEVEL = 160.0  # world backgrounds are pale: every channel of the border median at least this
# Templates are also compared blurred by these Gaussian sigmas (px) and the best match counts, so that soft
# images (decoded image codes, JPEG) are read too; the pose from moments does not change under blur.
_BLUR_SIGMAS = (0.0, 0.6, 1.0, 1.4)
_EIGHT = np.ones((3, 3), dtype=bool)  # 8-connectivity
_SPECK_FRACTION = 0.5  # components smaller than this fraction of the smallest world object are specks


@dataclass(frozen=True)
class DetectedObject:
    """One object read from an image.

    Attributes:
        shape, colour, size: world vocabulary names.
        box: pixel box ``(x0, y0, x1, y1)``, x1/y1 exclusive (as :attr:`WorldObject.box`).
        center: geometric centre (centre of the fitted shape's bounding box), continuous pixel coordinates.
        extent: nominal diameter of the fitted shape in pixels.
        rotation: rotation of the fitted shape in degrees (clockwise on screen).
        rgb: the measured object colour.
        area: covered area in pixels (sum of the coverage).
        shape_error: L1 distance between measured and fitted coverage, divided by ``area`` (0 = perfect fit;
            about 0.1 or less on rendered world scenes).
    """

    shape: str
    colour: str
    size: str
    box: tuple[int, int, int, int]
    center: tuple[float, float]
    extent: float
    rotation: float
    rgb: tuple[int, int, int]
    area: float
    shape_error: float

    @property
    def triple(self) -> tuple[str, str, str]:
        """``(size, colour, shape)``, as :attr:`WorldObject.triple`."""
        return self.size, self.colour, self.shape

    @property
    def cx(self) -> float:
        return self.center[0]

    @property
    def cy(self) -> float:
        return self.center[1]

    def to_world_object(self) -> WorldObject:
        """The equivalent :class:`WorldObject` (e.g. to re-render the parse or apply world predicates)."""
        return WorldObject(
            self.shape, self.colour, self.size, self.box, self.center, self.extent, self.rotation, self.rgb
        )


# ------------------------------------------------------------------------------------------- input


def _to_rgb_array(image: Image.Image | np.ndarray) -> np.ndarray:
    """``(H, W, 3)`` float array in 0..255 from a PIL image or a uint8 / float (0..1) numpy array."""
    if isinstance(image, Image.Image):
        return np.asarray(image.convert("RGB"), dtype=np.float32)
    if not isinstance(image, np.ndarray):
        raise TypeError(f"expected a PIL image or a numpy array, got {type(image).__name__}")
    if image.ndim != 3 or image.shape[2] not in (3, 4) or min(image.shape[:2]) < 8:
        raise ValueError(f"expected an (H, W, 3) RGB array of at least 8 x 8 pixels, got shape {image.shape}")
    arr = image[..., :3]
    if arr.dtype == np.uint8:
        return arr.astype(np.float32)
    if not np.issubdtype(arr.dtype, np.floating):
        raise ValueError(f"expected a uint8 or float array, got dtype {arr.dtype}")
    if not np.isfinite(arr).all() or arr.min() < 0.0 or arr.max() > 1.0:
        raise ValueError("float images must hold finite values in [0, 1]")
    return arr.astype(np.float32) * 255.0


# -------------------------------------------------------------------------------------- background


def _fit_background(rgb: np.ndarray) -> np.ndarray:
    """Per-pixel background colour: a least-squares plane per channel through the pale pixels."""
    h, w, _ = rgb.shape
    border = np.concatenate([rgb[0], rgb[-1], rgb[:, 0], rgb[:, -1]])
    # A plane has 3 unknowns per channel: a grid of about 64 x 64 samples pins it down.
    step = max(min(h, w) // 64, 1)
    sample = rgb[::step, ::step].reshape(-1, 3)
    ys, xs = np.mgrid[0:h:step, 0:w:step]
    design = np.stack([np.ones(ys.size), xs.ravel() / w - 0.5, ys.ravel() / h - 0.5], axis=1)
    border_colour = np.median(border, axis=0)
    if border_colour.min() < _MIN_BACKGROUND_LEVEL:
        raise ValueError(
            f"no background found: the image border is {tuple(int(v) for v in border_colour)}, "
            "not a pale colour as in world scenes"
        )
    prediction = np.broadcast_to(border_colour, sample.shape)
    for _ in range(2):  # refit once against the first plane so that ramps do not bias the inlier set
        inliers = np.linalg.norm(sample - prediction, axis=1) < _BACKGROUND_TOLERANCE
        if inliers.sum() < 16:
            raise ValueError("no background found: the image has no pale region around its objects")
        a = design[inliers]
        coef = np.linalg.solve(a.T @ a, a.T @ sample[inliers])  # normal equations: 3 x 3, well conditioned
        prediction = design @ coef
    x = (np.arange(w) / w - 0.5)[None, :, None]
    y = (np.arange(h) / h - 0.5)[:, None, None]
    return (coef[0] + x * coef[1] + y * coef[2]).astype(np.float32)


def _unmix(diff: np.ndarray, direction: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Mixing coefficient (clipped to [0, 1]) and residual of ``diff`` along ``direction`` (both (..., 3))."""
    alpha = np.clip((diff * direction).sum(-1) / np.maximum((direction * direction).sum(-1), 1e-6), 0.0, 1.0)
    residual = np.linalg.norm(diff - alpha[..., None] * direction, axis=-1)
    return alpha, residual


def _classify_pixels(
    diff: np.ndarray, background: np.ndarray, palette: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Nearest palette colour (index) and its mixing coefficient for every pixel; alpha 0 on background.

    Only pixels that differ from the background by enough to reach ``_FOREGROUND_ALPHA`` for some colour
    are unmixed (``alpha <= |diff| / |C - B|``), which skips most of the image.
    """
    h, w, _ = diff.shape
    coarse = background[:: max(h // 8, 1), :: max(w // 8, 1)].reshape(-1, 3)
    nearest_colour = np.linalg.norm(palette[:, None] - coarse[None], axis=-1).min()
    candidates = np.linalg.norm(diff, axis=-1) >= 0.9 * _FOREGROUND_ALPHA * nearest_colour
    best = np.zeros((h, w), dtype=np.int64)
    alpha = np.zeros((h, w), dtype=np.float32)
    if candidates.any():
        d = diff[candidates]  # (N, 3)
        directions = palette[None] - background[candidates][:, None]  # (N, K, 3)
        mix, residual = _unmix(d[:, None], directions)
        best[candidates] = residual.argmin(1)
        alpha[candidates] = np.take_along_axis(mix, best[candidates][:, None], 1)[:, 0]
    return best, alpha


# ------------------------------------------------------------------------------------------ shapes


@dataclass(frozen=True)
class _ShapeModel:
    """How the world's rasteriser draws one shape, measured on drawings of it (rotation 0).

    Drawn area is ``area * e**2 + perimeter * e`` at extent ``e`` (the second term is the rasteriser's
    edge convention); the coverage centroid sits at ``centroid * e * turn + bias`` from the geometric centre
    (``bias``: the rasteriser's sub-pixel offset, independent of size and rotation); ``moment`` is the complex
    moment of the symmetry order about the centroid at extent 1 (0 for circles).
    """

    area: float
    perimeter: float
    centroid: complex
    bias: complex
    moment: complex

    def extent_for(self, mass: float) -> float:
        """The extent whose drawing covers ``mass`` pixels."""
        return (-self.perimeter + math.sqrt(self.perimeter**2 + 4 * self.area * mass)) / (2 * self.area)


def _coverage_moments(alpha: np.ndarray, order: int) -> tuple[float, complex, complex]:
    """Mass, centroid (pixel centres at +0.5) and complex moment of ``order`` about the centroid."""
    ys, xs = np.nonzero(alpha > 0)
    weights = alpha[ys, xs].astype(np.float64)
    z = (xs + 0.5) + 1j * (ys + 0.5)
    mass = float(weights.sum())
    centroid = complex((weights * z).sum() / mass)
    moment = complex((weights * (z - centroid) ** order).sum()) if order else 0j
    return mass, centroid, moment


def _template_object(shape: str, center: complex, extent: float, rotation: float) -> WorldObject:
    box = pixel_box(float_box(shape, center.real, center.imag, extent, rotation))
    return WorldObject(shape, "black", "small", box, (center.real, center.imag), extent, rotation, (0, 0, 0))


def _coverage(obj: WorldObject, supersample: int) -> np.ndarray:
    """The world's antialiased coverage of ``obj`` over ``obj.box``, in [0, 1]."""
    return np.asarray(coverage_mask(obj, supersample), dtype=np.float32) / 255.0


@cache
def _shape_model(shape: str, supersample: int) -> _ShapeModel:
    """Fit :class:`_ShapeModel` to drawings at several extents and sub-pixel positions."""
    order = _SYMMETRY.get(shape, 0)
    rows, masses, offsets, moment = [], [], [], 0j
    for extent in (12.0, 24.0, 48.0, 96.0):
        for phase in (0.0, 0.3, 0.55, 0.8):
            centre = complex(extent + phase, extent + 0.6 * phase)
            obj = _template_object(shape, centre, extent, 0.0)
            mass, centroid, moment = _coverage_moments(_coverage(obj, supersample), order)
            rows.append(extent)
            masses.append(mass)
            offsets.append(centroid + complex(obj.box[0], obj.box[1]) - centre)
    e = np.array(rows)
    (area, perimeter), *_ = np.linalg.lstsq(np.stack([e**2, e], 1), np.array(masses), rcond=None)
    (slope, bias), *_ = np.linalg.lstsq(np.stack([e, np.ones_like(e)], 1), np.array(offsets), rcond=None)
    return _ShapeModel(
        float(area), float(perimeter), complex(slope), complex(bias), moment / e[-1] ** (order + 2)
    )


def _fit_shape(
    alpha: np.ndarray, origin: tuple[int, int], shape: str, supersample: int
) -> tuple[float, WorldObject]:
    """Pose ``shape`` from the coverage moments, draw it and return (L1 error / area, the drawn object)."""
    model = _shape_model(shape, supersample)
    order = _SYMMETRY.get(shape, 0)
    mass, centroid, moment = _coverage_moments(alpha, order)
    extent = model.extent_for(mass)
    rotation = math.degrees(np.angle(moment / model.moment)) / order if order else 0.0
    turn = complex(math.cos(math.radians(rotation)), math.sin(math.radians(rotation)))
    centre = centroid + complex(*origin) - extent * model.centroid * turn - model.bias
    obj = _template_object(shape, centre, extent, rotation)
    template = _coverage(obj, supersample)
    # Compare on the union of the measured patch and the template's box, with room for blur.
    pad = 3
    x0, y0 = min(origin[0], obj.box[0]) - pad, min(origin[1], obj.box[1]) - pad
    x1 = max(origin[0] + alpha.shape[1], obj.box[2]) + pad
    y1 = max(origin[1] + alpha.shape[0], obj.box[3]) + pad
    measured = np.zeros((y1 - y0, x1 - x0), dtype=np.float32)
    drawn = np.zeros_like(measured)
    oy, ox = origin[1] - y0, origin[0] - x0
    measured[oy : oy + alpha.shape[0], ox : ox + alpha.shape[1]] = alpha
    drawn[obj.box[1] - y0 : obj.box[3] - y0, obj.box[0] - x0 : obj.box[2] - x0] = template
    error = min(float(np.abs(measured - _blur(drawn, sigma)).sum()) for sigma in _BLUR_SIGMAS)
    return error / mass, obj


@cache
def _gaussian_kernel(sigma: float) -> np.ndarray:
    taps = np.arange(-3, 4, dtype=np.float32)
    kernel = np.exp(-0.5 * (taps / sigma) ** 2)
    return kernel / kernel.sum()


def _blur(image: np.ndarray, sigma: float) -> np.ndarray:
    """Gaussian blur (7 taps, zero outside); ``sigma == 0`` returns the image."""
    if not sigma:
        return image
    kernel = _gaussian_kernel(sigma)
    return ndimage.correlate1d(
        ndimage.correlate1d(image, kernel, 0, mode="constant"), kernel, 1, mode="constant"
    )


def _object_regions(best: np.ndarray, alpha: np.ndarray, object_area: float) -> tuple[np.ndarray, list[int]]:
    """Label image of object regions (0 = background) and the palette index of each region (label - 1).

    Foreground pixels group into 8-connected blobs, and a blob's colour is decided by the alpha-weighted
    votes of its confident pixels, so a fringe of another hue (antialiasing, compression ringing) cannot
    form an object of its own. A blob is split only where a second colour has votes worth a whole object
    (``object_area``, the smallest object's area: touching objects of different colours); each pixel then
    joins its nearest confident pixel.
    """
    foreground = alpha >= _FOREGROUND_ALPHA
    blobs, _ = ndimage.label(foreground, structure=_EIGHT)
    regions = np.zeros(alpha.shape, dtype=np.int32)
    n_colours = int(best.max()) + 1
    colour_of: list[int] = []
    for index, window in enumerate(ndimage.find_objects(blobs), start=1):
        blob = blobs[window] == index
        colours, weights = best[window], alpha[window]
        seeds = blob & (weights >= _SEED_ALPHA)
        votes = np.bincount(colours[seeds], weights=weights[seeds], minlength=n_colours)
        strong = np.flatnonzero(votes >= object_area)
        local = regions[window]  # a view: writes land in ``regions``
        if len(strong) <= 1:
            if not seeds.any():  # faint blob: let all its pixels vote
                votes = np.bincount(colours[blob], weights=weights[blob], minlength=len(votes))
            colour_of.append(int(votes.argmax()))
            local[blob] = len(colour_of)
            continue
        anchors = seeds & np.isin(colours, strong)
        _, (iy, ix) = ndimage.distance_transform_edt(~anchors, return_indices=True)
        nearest = colours[iy, ix]
        for k in strong:
            parts, count = ndimage.label(blob & (nearest == k), structure=_EIGHT)
            for part in range(1, count + 1):
                colour_of.append(int(k))
                local[parts == part] = len(colour_of)
    return regions, colour_of


# ------------------------------------------------------------------------------------------- parse


def parse_scene(image: Image.Image | np.ndarray, config: WorldConfig | None = None) -> list[DetectedObject]:
    """Read the objects of a world scene image, sorted left to right by centre x.

    Args:
        image: a PIL image or an ``(H, W, 3)`` numpy array (uint8, or float in [0, 1]) of any size; lengths
            in ``config`` are fractions of the image width.
        config: the world the image comes from (colours, shapes, size ranges, supersampling); default
            ``WorldConfig()``.

    Returns:
        One :class:`DetectedObject` per colour blob larger than a speck. Blobs that fit no shape well are
        still returned, with a large ``shape_error``.

    Raises:
        TypeError / ValueError: the image is not an RGB image or has no pale background; ``config`` names a
            colour or shape the world vocabulary does not have.
    """
    cfg = config or WorldConfig()
    unknown = sorted(set(cfg.colours) - set(COLOUR_BY_NAME)) + sorted(set(cfg.shapes) - set(_SHAPES))
    if unknown:
        raise ValueError(f"the oracle knows no colour or shape named {unknown}")
    rgb = _to_rgb_array(image)
    n = float(rgb.shape[1])
    background = _fit_background(rgb)
    diff = rgb - background

    names = list(cfg.colours)
    palette = np.array([COLOUR_BY_NAME[c].rgb for c in names], dtype=np.float32)
    best, alpha = _classify_pixels(diff, background, palette)

    small_lo = cfg.small_extent[0] * n
    smallest_area = min(_shape_model(s, cfg.supersample).area for s in cfg.shapes) * small_lo**2
    size_boundary = math.sqrt(cfg.small_extent[1] * cfg.large_extent[0]) * n
    component, colour_of = _object_regions(best, alpha, smallest_area)
    h, w = component.shape

    detected: list[DetectedObject] = []
    for i, box in enumerate(ndimage.find_objects(component), start=1):
        if box is None:
            continue
        # Work in the component's box grown by 2 px: room for the 1 px dilation and faint edges.
        ys = slice(max(box[0].start - 2, 0), min(box[0].stop + 2, h))
        xs = slice(max(box[1].start - 2, 0), min(box[1].stop + 2, w))
        local = component[ys, xs]
        mask = local == i
        own = ndimage.binary_dilation(mask, structure=_EIGHT) & ((local == 0) | mask)
        local_alpha = alpha[ys, xs]
        pure = mask & (local_alpha >= _PURE_ALPHA)
        if not pure.any():
            pure = mask & (local_alpha >= np.quantile(local_alpha[mask], 0.8))
        measured = np.median(rgb[ys, xs][pure], axis=0)
        obj_alpha, _ = _unmix(diff[ys, xs], measured - background[ys, xs])
        obj_alpha = np.where(own, obj_alpha, 0.0)
        area = float(obj_alpha.sum())
        if area < _SPECK_FRACTION * smallest_area:
            continue
        k = colour_of[i - 1]
        rows, cols = np.nonzero(own)
        y0, y1, x0, x1 = rows.min(), rows.max() + 1, cols.min(), cols.max() + 1
        patch = obj_alpha[y0:y1, x0:x1]
        origin = (int(xs.start + x0), int(ys.start + y0))
        fits = {s: _fit_shape(patch, origin, s, cfg.supersample) for s in cfg.shapes}
        shape = min(fits, key=lambda s: fits[s][0])
        error, obj = fits[shape]
        detected.append(
            DetectedObject(
                shape=shape,
                colour=names[k],
                size="small" if obj.extent < size_boundary else "large",
                box=obj.box,
                center=obj.center,
                extent=obj.extent,
                rotation=obj.rotation,
                rgb=tuple(int(round(v)) for v in measured),  # type: ignore[arg-type]
                area=area,
                shape_error=error,
            )
        )
    return sorted(detected, key=lambda d: (d.cx, d.cy))


# ------------------------------------------------------------------------------------------ prompts


@dataclass(frozen=True)
class Prompt:
    """What a text-to-image prompt asks for.

    ``objects`` are ``(size | None, colour, shape)`` triples (``None`` = any size), one per object, and
    ``relations`` are ``(subject, relation, object)`` with indices into ``objects`` and a relation in
    :data:`ofa.data.world.RELATIONS` ("subject is to the <relation> of object").
    """

    objects: tuple[Triple, ...]
    relations: tuple[tuple[int, str, int], ...] = ()

    def __post_init__(self) -> None:
        for subject, rel, obj in self.relations:
            if rel not in RELATIONS:
                raise ValueError(f"unknown relation {rel!r}; expected one of {RELATIONS}")
            if not (0 <= subject < len(self.objects) and 0 <= obj < len(self.objects)) or subject == obj:
                raise ValueError(
                    f"relation {(subject, rel, obj)} must link two of the {len(self.objects)} objects"
                )

    @classmethod
    def from_scene(cls, scene: Scene) -> Prompt:
        """Exactly the scene's objects (size, colour, shape), no relations."""
        return cls(tuple(o.triple for o in scene.objects))


_REL_EN_RE = re.compile(r"\b(" + "|".join(re.escape(p) for p in REL_EN.values()) + r")\b", re.IGNORECASE)
_REL_FROM_EN = {phrase: rel for rel, phrase in REL_EN.items()}
# "A在B的左边": the anchor B sits between 在 and 的 + direction.
_REL_ZH_RE = re.compile(r"在([^在，,。]+?)的(" + "|".join(REL_ZH.values()) + ")")
_REL_FROM_ZH = {word: rel for rel, word in REL_ZH.items()}


def _guess_lang(caption: str) -> str:
    return "zh" if re.search(r"[\u4e00-\u9fff]", caption) else "en"


def parse_prompt(caption: str, lang: str | None = None) -> Prompt:
    """The objects and relations a world caption states (every template of ``make_captions``, EN and ZH).

    Objects come from :func:`ofa.data.world.parse_mentions`; a relation phrase ("X to the left of Y",
    "X在Y的上面") links the single mention just before it to the one just after it (EN) or inside it (ZH),
    as the world's relation templates do. ``lang`` defaults to ``"zh"`` if the caption has CJK characters.

    Raises:
        ValueError: the caption mentions no object, or a relation phrase lacks a mention on either side.
    """
    lang = lang or _guess_lang(caption)
    objects = tuple(parse_mentions(caption, lang))
    if not objects:
        raise ValueError(f"no object mention (colour + shape) found in caption {caption!r}")
    relations = []
    if lang == "en":
        for m in _REL_EN_RE.finditer(caption):
            subject = len(parse_mentions(caption[: m.start()], lang)) - 1
            if subject < 0 or not parse_mentions(caption[m.end() :], lang):
                raise ValueError(f"relation {m.group(1)!r} needs an object mention on each side: {caption!r}")
            relations.append((subject, _REL_FROM_EN[m.group(1).lower()], subject + 1))
    else:
        for m in _REL_ZH_RE.finditer(caption):
            subject = len(parse_mentions(caption[: m.start()], lang)) - 1
            if subject < 0 or len(parse_mentions(m.group(1), lang)) != 1:
                raise ValueError(
                    f"relation {m.group(2)!r} needs one object mention on each side: {caption!r}"
                )
            relations.append((subject, _REL_FROM_ZH[m.group(2)], subject + 1))
    return Prompt(objects, tuple(relations))


# ------------------------------------------------------------------------------------------ scoring


def _attributes_match(obj: DetectedObject | WorldObject, wanted: Triple) -> bool:
    size, colour, shape = wanted
    return obj.colour == colour and obj.shape == shape and (size is None or obj.size == size)


def compositional_match(
    detected: Sequence[DetectedObject | WorldObject],
    prompt_objects: Sequence[Triple] | Prompt,
    relations: Sequence[tuple[int, str, int]] | None = None,
    max_shape_error: float | None = None,
) -> bool:
    """Whether an image's objects are exactly the prompted ones and every prompted relation holds.

    Args:
        detected: the image's objects (:func:`parse_scene`, or ground-truth :class:`WorldObject` s).
        prompt_objects: ``(size | None, colour, shape)`` triples, or a :class:`Prompt` (then its relations
            are used unless ``relations`` is given).
        relations: ``(subject, relation, object)`` with indices into ``prompt_objects``.
        max_shape_error: if set, an object whose shape fit is worse than this (a shape that is no world
            shape) makes the match fail.

    A match is a one-to-one assignment of detected objects to prompted ones with equal colour and shape (and
    size when given) under which every relation is decisively true (:func:`ofa.data.world.relation` returns
    True; its undecided zone counts as false).
    """
    if isinstance(prompt_objects, Prompt):
        relations = prompt_objects.relations if relations is None else relations
        prompt = Prompt(prompt_objects.objects, tuple(relations))
    else:
        prompt = Prompt(tuple(prompt_objects), tuple(relations or ()))
    if len(detected) != len(prompt.objects):
        return False
    if max_shape_error is not None and any(
        isinstance(d, DetectedObject) and d.shape_error > max_shape_error for d in detected
    ):
        return False
    world = [d.to_world_object() if isinstance(d, DetectedObject) else d for d in detected]
    candidates = [[k for k, o in enumerate(world) if _attributes_match(o, want)] for want in prompt.objects]
    assignment: list[int] = []

    def consistent() -> bool:
        i = len(assignment) - 1
        for subject, rel, obj in prompt.relations:
            if (
                max(subject, obj) == i
                and relation(world[assignment[subject]], world[assignment[obj]], rel) is not True
            ):
                return False
        return True

    def search(i: int) -> bool:  # backtracking; scenes hold at most 9 objects
        if i == len(prompt.objects):
            return True
        for k in candidates[i]:
            if k in assignment:
                continue
            assignment.append(k)
            if consistent() and search(i + 1):
                return True
            assignment.pop()
        return False

    return search(0)


def compositional_accuracy(
    images: Sequence[Image.Image | np.ndarray],
    scenes_or_captions: Sequence[Scene | Prompt | str],
    config: WorldConfig | None = None,
    max_shape_error: float | None = None,
) -> dict[str, float]:
    """Score generated images against their prompts with :func:`parse_scene` + :func:`compositional_match`.

    Each prompt is a :class:`Scene` (its exact objects), a :class:`Prompt` or a world caption (EN or ZH, see
    :func:`parse_prompt`). Images that cannot be parsed at all (no pale background) count as failures.

    Returns:
        ``compositional_accuracy`` (objects and relations right), ``object_accuracy`` (objects right,
        relations ignored) and ``num_images``.
    """
    if len(images) != len(scenes_or_captions):
        raise ValueError(f"got {len(images)} images for {len(scenes_or_captions)} prompts")
    full = objects_only = 0
    for image, target in zip(images, scenes_or_captions):
        if isinstance(target, Scene):
            prompt = Prompt.from_scene(target)
        elif isinstance(target, str):
            prompt = parse_prompt(target)
        elif isinstance(target, Prompt):
            prompt = target
        else:
            raise TypeError(f"expected a Scene, a Prompt or a caption, got {type(target).__name__}")
        try:
            detected = parse_scene(image, config)
        except ValueError:
            continue
        objects_only += compositional_match(detected, prompt.objects, (), max_shape_error)
        full += compositional_match(detected, prompt, None, max_shape_error)
    n = len(images)
    return {
        "compositional_accuracy": full / n if n else 0.0,
        "object_accuracy": objects_only / n if n else 0.0,
        "num_images": float(n),
    }
