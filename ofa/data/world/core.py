"""World configuration, seeded scene sampling and the train / val / test / heldout splits."""

from __future__ import annotations

import hashlib
import random
from collections.abc import Iterator
from dataclasses import dataclass, fields, replace

from .language import make_captions, make_refs
from .render import BACKGROUND_COLOURS, BACKGROUND_STYLES, render
from .schema import Background, Scene, WorldObject, float_box, pixel_box
from .vocab import COLOUR_BY_NAME, COLOUR_NAMES, HELDOUT_PAIRS, SHAPE_NAMES

SPLITS: tuple[str, ...] = ("train", "val", "test", "heldout")


@dataclass(frozen=True)
class WorldConfig:
    """Everything that defines a world; two equal configs generate identical scenes.

    Lengths are fractions of ``image_size`` so the same world can be rendered at any resolution.
    ``small_extent`` / ``large_extent`` are the ranges of an object's nominal diameter; they are far
    apart (17-22 px vs 35-42 px at 128 px) so size is never ambiguous. ``margin`` is the minimum
    gap between two objects' boxes (at least 3 px), ``border`` between a box and the image edge.
    ``ordinal_margin`` is the minimum centre distance for "leftmost" / "second from the left" /
    "from left to right" to be stated. ``shade_jitter`` scales the base RGB by up to +-8%.
    """

    image_size: int = 128
    seed: int = 0
    min_objects: int = 1
    max_objects: int = 4
    shapes: tuple[str, ...] = SHAPE_NAMES
    colours: tuple[str, ...] = COLOUR_NAMES
    heldout_pairs: tuple[tuple[str, str], ...] = HELDOUT_PAIRS
    small_extent: tuple[float, float] = (0.13, 0.17)
    large_extent: tuple[float, float] = (0.27, 0.33)
    margin: float = 0.03
    border: float = 0.02
    rotation_jitter: float = 15.0
    shade_jitter: float = 0.08
    backgrounds: tuple[str, ...] = tuple(BACKGROUND_COLOURS)
    background_styles: tuple[str, ...] = BACKGROUND_STYLES
    supersample: int = 4
    ordinal_margin: float = 0.04
    max_relation_captions: int = 2

    def __post_init__(self) -> None:
        bad = [p for p in self.heldout_pairs if p[0] not in self.colours or p[1] not in self.shapes]
        if bad:
            raise ValueError(f"heldout pairs {bad} use colours/shapes outside the world")
        if not 1 <= self.min_objects <= self.max_objects <= 9:
            raise ValueError("need 1 <= min_objects <= max_objects <= 9")


def _rng(*parts: object) -> random.Random:
    # sha256 rather than hash(): stable across processes, machines and Python versions.
    digest = hashlib.sha256("/".join(map(str, parts)).encode()).digest()
    return random.Random(int.from_bytes(digest[:16], "little"))


class World:
    """A seeded generator of scenes: ``World(seed=0).scene("train", 17)`` is always the same scene.

    Splits: ``train``, ``val``, ``test`` (same distribution; no held-out (colour, shape) pair) and
    ``heldout`` (every scene has at least one object with a held-out pair). Index space per split
    is unbounded; scenes of different splits/indices come from independent random streams.
    """

    def __init__(self, config: WorldConfig | None = None, **overrides: object) -> None:
        base = config or WorldConfig()
        known = {f.name for f in fields(WorldConfig)}
        unknown = set(overrides) - known
        if unknown:
            raise TypeError(f"unknown WorldConfig fields: {sorted(unknown)}")
        self.config: WorldConfig = replace(base, **overrides) if overrides else base
        cfg = self.config
        held = set(cfg.heldout_pairs)
        self.train_pairs: tuple[tuple[str, str], ...] = tuple(
            (c, s) for c in cfg.colours for s in cfg.shapes if (c, s) not in held
        )
        self.all_pairs: tuple[tuple[str, str], ...] = tuple((c, s) for c in cfg.colours for s in cfg.shapes)

    # ------------------------------------------------------------------ sampling

    def _sample_object(self, rng: random.Random, pair: tuple[str, str], size: str) -> tuple:
        cfg = self.config
        n = cfg.image_size
        lo, hi = cfg.small_extent if size == "small" else cfg.large_extent
        extent = n * (lo + (hi - lo) * rng.random())
        rotation = 0.0 if pair[1] == "circle" else cfg.rotation_jitter * (2 * rng.random() - 1)
        return pair, size, extent, rotation

    def _shade(self, rng: random.Random, colour: str) -> tuple[int, int, int]:
        j = self.config.shade_jitter
        f = 1 + j * (2 * rng.random() - 1)
        return tuple(  # type: ignore[return-value]
            max(0, min(255, round(c * f + 8 * (2 * rng.random() - 1)))) for c in COLOUR_BY_NAME[colour].rgb
        )

    def layout(self, split: str, index: int) -> tuple[list[WorldObject], Background]:
        """The objects (sorted left to right) and background of a scene, without rendering or text."""
        if split not in SPLITS:
            raise ValueError(f"unknown split {split!r}; expected one of {SPLITS}")
        cfg = self.config
        rng = _rng("ofa-world", cfg.seed, split, index, "layout")
        n_img = cfg.image_size
        pool = self.train_pairs if split != "heldout" else self.all_pairs
        while True:  # restarts are rare (dense scenes of large objects) and deterministic
            k = cfg.min_objects + int(rng.random() * (cfg.max_objects - cfg.min_objects + 1))
            specs = []
            for i in range(k):
                if split == "heldout" and i == 0:
                    pair = cfg.heldout_pairs[int(rng.random() * len(cfg.heldout_pairs))]
                else:
                    pair = pool[int(rng.random() * len(pool))]
                size = "small" if rng.random() < 0.5 else "large"
                specs.append(self._sample_object(rng, pair, size))
            objects = self._place(rng, specs, n_img)
            if objects is not None:
                break
        bg = Background(
            cfg.backgrounds[int(rng.random() * len(cfg.backgrounds))],
            cfg.background_styles[int(rng.random() * len(cfg.background_styles))],
        )
        return sorted(objects, key=lambda o: (o.cx, o.cy)), bg

    def _place(self, rng: random.Random, specs: list[tuple], n_img: int) -> list[WorldObject] | None:
        cfg = self.config
        # >= 3 px so that, after rounding boxes outwards, at least one pixel separates two boxes
        margin, border = max(cfg.margin * n_img, 3.0), cfg.border * n_img
        placed: list[tuple[float, float, float, float]] = []
        objects: list[WorldObject] = []
        # Large objects first: they are the hard ones to fit.
        for (colour, shape), size, extent, rotation in sorted(specs, key=lambda s: -s[2]):
            fb0 = float_box(shape, 0.0, 0.0, extent, rotation)
            for _ in range(60):
                cx = border - fb0[0] + (n_img - 2 * border - (fb0[2] - fb0[0])) * rng.random()
                cy = border - fb0[1] + (n_img - 2 * border - (fb0[3] - fb0[1])) * rng.random()
                fb = (fb0[0] + cx, fb0[1] + cy, fb0[2] + cx, fb0[3] + cy)
                if all(
                    fb[2] + margin <= p[0]
                    or p[2] + margin <= fb[0]
                    or fb[3] + margin <= p[1]
                    or p[3] + margin <= fb[1]
                    for p in placed
                ):
                    break
            else:
                return None
            placed.append(fb)
            objects.append(
                WorldObject(
                    shape, colour, size, pixel_box(fb), (cx, cy), extent, rotation, self._shade(rng, colour)
                )
            )
        return objects

    # ------------------------------------------------------------------- scenes

    def scene(self, split: str, index: int) -> Scene:
        """Scene ``index`` of ``split``: image, objects, EN+ZH captions and referring expressions."""
        cfg = self.config
        objects, bg = self.layout(split, index)
        image = render(objects, cfg.image_size, bg, cfg.supersample)
        text_rng = _rng("ofa-world", cfg.seed, split, index, "text")
        tau = cfg.ordinal_margin * cfg.image_size
        captions = make_captions(objects, text_rng, cfg.max_relation_captions, tau)
        refs = make_refs(objects, tau)
        return Scene(split, index, image, objects, bg, captions, refs)

    def iter(self, split: str, n: int, start: int = 0) -> Iterator[Scene]:
        """Scenes ``start .. start+n-1`` of ``split``."""
        for i in range(start, start + n):
            yield self.scene(split, i)

    def __repr__(self) -> str:
        return f"World({self.config!r})"
