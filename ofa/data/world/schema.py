"""Plain data records of the synthetic world: objects, backgrounds, referring expressions, scenes."""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace

from PIL import Image

Box = tuple[int, int, int, int]

# Unit outlines (extent 1, y down, bounding box centred on the origin before rotation).
# Sizes are chosen so that all shapes look about equally big at the same ``extent``.
_S = 0.56
_STAR_INNER = 0.45


def _star() -> list[tuple[float, float]]:
    pts = []
    for k in range(10):
        r = _S if k % 2 == 0 else _S * _STAR_INNER
        a = math.radians(-90 + 36 * k)
        pts.append((r * math.cos(a), r * math.sin(a)))
    return pts


def _centre(pts: list[tuple[float, float]]) -> tuple[tuple[float, float], ...]:
    xs, ys = [p[0] for p in pts], [p[1] for p in pts]
    dx, dy = (min(xs) + max(xs)) / 2, (min(ys) + max(ys)) / 2
    return tuple((x - dx, y - dy) for x, y in pts)


_A = 0.18  # half width of a cross arm
UNIT_OUTLINES: dict[str, tuple[tuple[float, float], ...]] = {
    "square": _centre([(-0.42, -0.42), (0.42, -0.42), (0.42, 0.42), (-0.42, 0.42)]),
    "triangle": _centre(
        [(0.58 * math.cos(math.radians(a)), 0.58 * math.sin(math.radians(a))) for a in (-90, 30, 150)]
    ),
    "star": _centre(_star()),
    "hexagon": _centre(
        [(0.52 * math.cos(math.radians(60 * k)), 0.52 * math.sin(math.radians(60 * k))) for k in range(6)]
    ),
    "diamond": _centre([(0.0, -0.55), (0.36, 0.0), (0.0, 0.55), (-0.36, 0.0)]),
    "cross": _centre(
        [
            (-_A, -0.5),
            (_A, -0.5),
            (_A, -_A),
            (0.5, -_A),
            (0.5, _A),
            (_A, _A),
            (_A, 0.5),
            (-_A, 0.5),
            (-_A, _A),
            (-0.5, _A),
            (-0.5, -_A),
            (-_A, -_A),
        ]
    ),
}
CIRCLE_RADIUS = 0.5


def outline(
    shape: str, cx: float, cy: float, extent: float, rotation: float
) -> list[tuple[float, float]] | None:
    """Polygon vertices in continuous pixel coordinates (pixel ``i`` spans ``[i, i+1)``); None for circles."""
    if shape == "circle":
        return None
    c, s = math.cos(math.radians(rotation)), math.sin(math.radians(rotation))
    return [(cx + extent * (x * c - y * s), cy + extent * (x * s + y * c)) for x, y in UNIT_OUTLINES[shape]]


def float_box(
    shape: str, cx: float, cy: float, extent: float, rotation: float
) -> tuple[float, float, float, float]:
    """Exact geometric bounding box of the shape (continuous pixel coordinates)."""
    pts = outline(shape, cx, cy, extent, rotation)
    if pts is None:
        r = CIRCLE_RADIUS * extent
        return cx - r, cy - r, cx + r, cy + r
    xs, ys = [p[0] for p in pts], [p[1] for p in pts]
    return min(xs), min(ys), max(xs), max(ys)


def pixel_box(fbox: tuple[float, float, float, float]) -> Box:
    """Smallest integer box ``(x0, y0, x1, y1)`` (x1/y1 exclusive) containing every touched pixel."""
    return math.floor(fbox[0]), math.floor(fbox[1]), math.ceil(fbox[2]), math.ceil(fbox[3])


@dataclass(frozen=True)
class WorldObject:
    """One object of a scene.

    Attributes:
        shape, colour, size: vocabulary names (``SHAPE_NAMES``, ``COLOUR_NAMES``, ``"small"|"large"``).
        box: tight pixel box ``(x0, y0, x1, y1)``; x1/y1 are exclusive edges, so width is ``x1 - x0``.
        center: geometric centre in continuous pixel coordinates.
        extent: nominal diameter in pixels (the shape's bounding box before rotation is about this big).
        rotation: degrees, clockwise on screen.
        rgb: the drawn colour after shade jitter.
    """

    shape: str
    colour: str
    size: str
    box: Box
    center: tuple[float, float]
    extent: float
    rotation: float
    rgb: tuple[int, int, int]

    @property
    def pair(self) -> tuple[str, str]:
        """``(colour, shape)``, the unit of the compositional split."""
        return self.colour, self.shape

    @property
    def triple(self) -> tuple[str, str, str]:
        """``(size, colour, shape)``, the unit of caption mentions."""
        return self.size, self.colour, self.shape

    @property
    def cx(self) -> float:
        return self.center[0]

    @property
    def cy(self) -> float:
        return self.center[1]

    def scaled(self, factor: float) -> WorldObject:
        """The same object on a canvas ``factor`` times bigger (box recomputed, not just scaled)."""
        cx, cy, ext = self.center[0] * factor, self.center[1] * factor, self.extent * factor
        box = pixel_box(float_box(self.shape, cx, cy, ext, self.rotation))
        return replace(self, center=(cx, cy), extent=ext, box=box)

    def to_dict(self) -> dict:
        return {
            "shape": self.shape,
            "colour": self.colour,
            "size": self.size,
            "box": list(self.box),
            "center": [round(v, 3) for v in self.center],
            "extent": round(self.extent, 3),
            "rotation": round(self.rotation, 3),
            "rgb": list(self.rgb),
        }


@dataclass(frozen=True)
class Background:
    """Background: a pale colour name from ``BACKGROUND_COLOURS`` and a style in ``BACKGROUND_STYLES``."""

    colour: str = "grey"
    style: str = "plain"


@dataclass(frozen=True)
class Ref:
    """A referring expression whose referent is unique in its scene.

    ``kind`` is ``"attribute"``, ``"relation"`` or ``"ordinal"``; ``anchor_index`` is the other
    object a relation expression mentions (None otherwise); ``box`` is the target's box.
    """

    text: str
    lang: str
    kind: str
    target_index: int
    box: Box
    anchor_index: int | None = None


@dataclass
class Scene:
    """One generated scene.

    ``objects`` are sorted left to right by centre x; ``captions[lang]`` lists are parallel across
    languages (``captions["en"][k]`` and ``captions["zh"][k]`` say the same thing); ``refs`` holds
    both languages.
    """

    split: str
    index: int
    image: Image.Image
    objects: list[WorldObject]
    background: Background
    captions: dict[str, list[str]] = field(default_factory=dict)
    refs: list[Ref] = field(default_factory=list)

    @property
    def image_size(self) -> int:
        return self.image.size[0]

    def refs_for(self, lang: str, kind: str | None = None) -> list[Ref]:
        """Referring expressions in one language (optionally of one kind)."""
        return [r for r in self.refs if r.lang == lang and (kind is None or r.kind == kind)]

    def to_dict(self) -> dict:
        """JSON-ready metadata (everything but the image)."""
        return {
            "split": self.split,
            "index": self.index,
            "image_size": self.image_size,
            "background": {"colour": self.background.colour, "style": self.background.style},
            "objects": [o.to_dict() for o in self.objects],
            "captions": self.captions,
            "refs": [
                {
                    "text": r.text,
                    "lang": r.lang,
                    "kind": r.kind,
                    "target_index": r.target_index,
                    "anchor_index": r.anchor_index,
                    "box": list(r.box),
                }
                for r in self.refs
            ],
        }
