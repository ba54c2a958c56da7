"""Closed vocabulary of the synthetic world: shapes, colours, sizes and the held-out pairs.

Every name has an English and a Chinese surface form; both are used verbatim by the caption
and referring-expression templates and by :func:`ofa.data.world.parse_mentions`.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Colour:
    """A named object colour: English name, Chinese name and base RGB (before shade jitter)."""

    name: str
    zh: str
    rgb: tuple[int, int, int]


@dataclass(frozen=True)
class Shape:
    """A named shape: English singular / plural and Chinese name."""

    name: str
    zh: str
    plural: str


# Hues are spread around the colour wheel plus black, so that +-10% shade jitter and
# antialiasing against a pale background never move one colour towards another.
COLOURS: tuple[Colour, ...] = (
    Colour("red", "红色", (214, 39, 40)),
    Colour("green", "绿色", (44, 160, 44)),
    Colour("blue", "蓝色", (31, 86, 220)),
    Colour("yellow", "黄色", (238, 198, 20)),
    Colour("purple", "紫色", (145, 64, 188)),
    Colour("orange", "橙色", (250, 124, 14)),
    Colour("black", "黑色", (34, 34, 34)),
    Colour("cyan", "青色", (0, 186, 206)),
)

SHAPES: tuple[Shape, ...] = (
    Shape("circle", "圆形", "circles"),
    Shape("square", "正方形", "squares"),
    Shape("triangle", "三角形", "triangles"),
    Shape("star", "星形", "stars"),
    Shape("hexagon", "六边形", "hexagons"),
    Shape("diamond", "菱形", "diamonds"),
    Shape("cross", "十字形", "crosses"),
)

#: Size categories; the pixel extents of the two never come close (see ``WorldConfig``).
SIZES: tuple[str, ...] = ("small", "large")
SIZE_ZH: dict[str, str] = {"small": "小", "large": "大"}

COLOUR_NAMES: tuple[str, ...] = tuple(c.name for c in COLOURS)
SHAPE_NAMES: tuple[str, ...] = tuple(s.name for s in SHAPES)
COLOUR_BY_NAME: dict[str, Colour] = {c.name: c for c in COLOURS}
SHAPE_BY_NAME: dict[str, Shape] = {s.name: s for s in SHAPES}
COLOUR_ZH: dict[str, str] = {c.name: c.zh for c in COLOURS}
SHAPE_ZH: dict[str, str] = {s.name: s.zh for s in SHAPES}
SHAPE_PLURAL: dict[str, str] = {s.name: s.plural for s in SHAPES}

#: (colour, shape) pairs that never occur in train/val/test scenes; every ``heldout`` scene has at
#: least one object with one of these pairs. Each shape appears exactly once and each colour at
#: most once (black is never held out), so every colour and every shape is still seen in training.
HELDOUT_PAIRS: tuple[tuple[str, str], ...] = (
    ("red", "triangle"),
    ("green", "star"),
    ("blue", "hexagon"),
    ("yellow", "circle"),
    ("purple", "square"),
    ("orange", "diamond"),
    ("cyan", "cross"),
)

LANGS: tuple[str, ...] = ("en", "zh")
