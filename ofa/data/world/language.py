"""English and Chinese text for world scenes: captions, referring expressions, mention parsing.

Truth conditions (shared by captions and referring expressions; ``tau`` is the ordinal margin):

* ``relation(a, b, "left")`` is True when a's box lies entirely left of b's box
  (``a.x1 <= b.x0``), False when a's centre is not left of b's centre, and None (undecided,
  never stated nor used to rule out a distractor) in between. Likewise right / above / below.
* "leftmost X" requires the target's centre to be at least ``tau`` left of every other X's centre
  *and* its left and right box edges to be strictly left of theirs, so the answer is the same whichever
  reading (centre or edges) a person uses. "second from the left" chains the same test.
* Attribute expressions are exact: sizes/colours/shapes are categorical.

A referring expression is emitted only when its predicate holds for exactly one object and is
decisively False for every other candidate.
"""

from __future__ import annotations

import random
import re
from collections.abc import Sequence

from .schema import Ref, WorldObject
from .vocab import COLOUR_ZH, SHAPE_PLURAL, SHAPE_ZH, SIZE_ZH

RELATIONS: tuple[str, ...] = ("left", "right", "above", "below")
INVERSE: dict[str, str] = {"left": "right", "right": "left", "above": "below", "below": "above"}
REL_EN: dict[str, str] = {
    "left": "to the left of",
    "right": "to the right of",
    "above": "above",
    "below": "below",
}
REL_ZH: dict[str, str] = {"left": "左边", "right": "右边", "above": "上面", "below": "下面"}

DIRECTIONS: tuple[str, ...] = ("left", "right", "top", "bottom")
_EXTREME_EN = {"left": "leftmost", "right": "rightmost", "top": "topmost", "bottom": "bottommost"}
_EXTREME_ZH = {"left": "最左边的", "right": "最右边的", "top": "最上面的", "bottom": "最下面的"}
_FROM_EN = {
    "left": "from the left",
    "right": "from the right",
    "top": "from the top",
    "bottom": "from the bottom",
}
_FROM_ZH = {"left": "从左数", "right": "从右数", "top": "从上数", "bottom": "从下数"}

NUM_EN = {1: "one", 2: "two", 3: "three", 4: "four", 5: "five", 6: "six", 7: "seven", 8: "eight", 9: "nine"}
NUM_ZH = {1: "一", 2: "两", 3: "三", 4: "四", 5: "五", 6: "六", 7: "七", 8: "八", 9: "九"}

Desc = tuple[str | None, str | None, str | None]  # (size, colour, shape); None = unspecified
Mask = tuple[bool, bool, bool]

# Attribute descriptors tried for attribute expressions, most natural first.
_ATTR_MASKS: tuple[Mask, ...] = (
    (False, False, True),
    (False, True, True),
    (True, False, True),
    (True, True, True),
    (False, True, False),
    (True, False, False),
    (True, True, False),
)
_ANCHOR_MASKS: tuple[Mask, ...] = (
    (False, True, True),
    (False, False, True),
    (True, False, True),
    (True, True, True),
)
_REL_TARGET_MASKS: tuple[Mask, ...] = (
    (False, False, True),
    (False, True, True),
    (True, False, True),
    (True, True, True),
)
_ORDINAL_MASKS: tuple[Mask, ...] = ((False, False, False), (False, False, True), (False, True, True))


# ----------------------------------------------------------------------------------- geometry


def relation(a: WorldObject, b: WorldObject, rel: str) -> bool | None:
    """Three-valued "a is <rel> b" (see module docstring); ``rel`` in ``RELATIONS``."""
    if rel == "left":
        return True if a.box[2] <= b.box[0] else (False if a.cx >= b.cx else None)
    if rel == "right":
        return True if a.box[0] >= b.box[2] else (False if a.cx <= b.cx else None)
    if rel == "above":
        return True if a.box[3] <= b.box[1] else (False if a.cy >= b.cy else None)
    if rel == "below":
        return True if a.box[1] >= b.box[3] else (False if a.cy <= b.cy else None)
    raise ValueError(f"unknown relation {rel!r}")


def _proj(o: WorldObject, direction: str) -> tuple[float, float, float]:
    """(centre, near edge, far edge) along ``direction``; smaller = closer to that side."""
    x0, y0, x1, y1 = o.box
    if direction == "left":
        return o.cx, x0, x1
    if direction == "right":
        return -o.cx, -x1, -x0
    if direction == "top":
        return o.cy, y0, y1
    if direction == "bottom":
        return -o.cy, -y1, -y0
    raise ValueError(f"unknown direction {direction!r}")


def precedes(p: WorldObject, q: WorldObject, direction: str, tau: float) -> bool:
    """p is decisively closer than q to the ``direction`` side of the image."""
    pc, plo, phi = _proj(p, direction)
    qc, qlo, qhi = _proj(q, direction)
    return pc + tau <= qc and plo < qlo and phi < qhi


def ordered(objs: Sequence[WorldObject], direction: str, tau: float) -> list[int] | None:
    """Indices of ``objs`` sorted towards ``direction`` if every consecutive step is decisive, else None."""
    order = sorted(range(len(objs)), key=lambda i: _proj(objs[i], direction)[0])
    ok = all(precedes(objs[i], objs[j], direction, tau) for i, j in zip(order, order[1:]))
    return order if ok else None


# ---------------------------------------------------------------------------------- phrasing


def _desc(o: WorldObject, m: Mask) -> Desc:
    return (o.size if m[0] else None, o.colour if m[1] else None, o.shape if m[2] else None)


def _matches(o: WorldObject, d: Desc) -> bool:
    return (
        (d[0] is None or o.size == d[0])
        and (d[1] is None or o.colour == d[1])
        and (d[2] is None or o.shape == d[2])
    )


def desc_en(d: Desc) -> str:
    """ "large red star", "red object", "star" (no article)."""
    return " ".join([w for w in d[:2] if w] + [d[2] or "object"])


def desc_zh(d: Desc, compact: bool = False) -> str:
    """Standalone: "大的红色星形", "红色的星形", "大的星形"; compact (inside a phrase): "红色星形", "大星形"."""
    size, colour, noun = SIZE_ZH.get(d[0] or ""), COLOUR_ZH.get(d[1] or ""), SHAPE_ZH.get(d[2] or "", "物体")
    if size and colour:
        return f"{size}的{colour}{noun}"
    if size or colour:
        return f"{size or colour}{'' if compact else '的'}{noun}"
    return noun


def mention_en(o: WorldObject | tuple[str, str, str], count: int = 1) -> str:
    """ "a small red circle" / "two small red circles"."""
    size, colour, shape = o.triple if isinstance(o, WorldObject) else o
    if count == 1:
        return f"a {size} {colour} {shape}"
    return f"{NUM_EN[count]} {size} {colour} {SHAPE_PLURAL[shape]}"


def mention_zh(o: WorldObject | tuple[str, str, str], count: int | None = 1) -> str:
    """ "一个小的红色圆形" / "两个小的红色圆形"; ``count=None`` drops the classifier ("小的红色圆形")."""
    size, colour, shape = o.triple if isinstance(o, WorldObject) else o
    core = f"{SIZE_ZH[size]}的{COLOUR_ZH[colour]}{SHAPE_ZH[shape]}"
    return core if count is None else f"{NUM_ZH[count]}个{core}"


def _join_en(items: list[str]) -> str:
    return items[0] if len(items) == 1 else ", ".join(items[:-1]) + " and " + items[-1]


def _join_zh(items: list[str]) -> str:
    return items[0] if len(items) == 1 else "、".join(items[:-1]) + "和" + items[-1]


def _groups(objs: Sequence[WorldObject]) -> list[tuple[tuple[str, str, str], int]]:
    """Identical (size, colour, shape) objects grouped, in order of first (left-most) appearance."""
    counts: dict[tuple[str, str, str], int] = {}
    for o in sorted(objs, key=lambda o: o.cx):
        counts[o.triple] = counts.get(o.triple, 0) + 1
    return list(counts.items())


# ---------------------------------------------------------------------------------- captions


def make_captions(
    objects: Sequence[WorldObject],
    rng: random.Random | None = None,
    max_relation_captions: int = 2,
    tau: float = 0.0,
) -> dict[str, list[str]]:
    """Captions in ``en`` and ``zh`` (parallel lists). Every caption mentions every object once with
    size, colour and shape, so :func:`parse_mentions` recovers the scene's object multiset.

    Templates (EN / ZH): list "two small red circles and a large blue star" / "两个小的红色圆形和一个大的蓝色星形";
    "there are ..." / "图中有..."; "three objects: ..." / "三个物体：..."; "from left to right: a ..., a ... and a ..."
    / "从左到右依次是..." (only when the left-to-right order is decisive with centre margin ``tau``); relation "a small red circle to the
    left of a large blue star[, and <rest>]" / "一个小的红色圆形在大的蓝色星形的左边[，还有<rest>]" (only for
    pairs whose dominant direction holds decisively; at most ``max_relation_captions``).
    """
    rng = rng or random.Random(0)
    objs = sorted(objects, key=lambda o: o.cx)
    n = len(objs)
    if n == 0:
        return {"en": ["an empty picture"], "zh": ["一张空白的图片"]}
    groups = _groups(objs)
    g_en = _join_en([mention_en(t, c) for t, c in groups])
    g_zh = _join_zh([mention_zh(t, c) for t, c in groups])
    en = [
        g_en,
        f"there {'is' if groups[0][1] == 1 else 'are'} {g_en}",
        f"{NUM_EN[n]} object{'s' if n > 1 else ''}: {g_en}",
    ]
    zh = [g_zh, f"图中有{g_zh}", f"{NUM_ZH[n]}个物体：{g_zh}"]
    if n >= 2 and ordered(objs, "left", tau) is not None:
        en.append("from left to right: " + _join_en([mention_en(o) for o in objs]))
        zh.append("从左到右依次是" + _join_zh([mention_zh(o) for o in objs]))
    pairs = []
    for i in range(n):
        for j in range(i + 1, n):
            a, b = objs[i], objs[j]
            dx, dy = b.cx - a.cx, b.cy - a.cy
            rel = ("left" if dx > 0 else "right") if abs(dx) >= abs(dy) else ("above" if dy > 0 else "below")
            if relation(a, b, rel) is True:
                pairs.append((i, j, rel))
    rng.shuffle(pairs)
    for i, j, rel in pairs[:max_relation_captions]:
        if rng.random() < 0.5:
            i, j, rel = j, i, INVERSE[rel]
        rest = _groups([o for k, o in enumerate(objs) if k not in (i, j)])
        e = f"{mention_en(objs[i])} {REL_EN[rel]} {mention_en(objs[j])}"
        z = f"{mention_zh(objs[i])}在{mention_zh(objs[j], None)}的{REL_ZH[rel]}"
        if rest:
            e += ", and also " + _join_en([mention_en(t, c) for t, c in rest])
            z += "，还有" + _join_zh([mention_zh(t, c) for t, c in rest])
        en.append(e)
        zh.append(z)
    return {"en": en, "zh": zh}


# --------------------------------------------------------------------------------------- refs


def _unique(objs: Sequence[WorldObject], d: Desc) -> int | None:
    hits = [k for k, o in enumerate(objs) if _matches(o, d)]
    return hits[0] if len(hits) == 1 else None


def make_refs(objects: Sequence[WorldObject], tau: float) -> list[Ref]:
    """All referring expressions (EN and ZH) with a unique referent in ``objects``.

    ``target_index`` indexes ``objects`` as given. Kinds: ``attribute`` ("the red star" / "红色的星形"),
    ``relation`` ("the star above the green circle" / "绿色圆形上面的星形") and ``ordinal``
    ("the leftmost triangle" / "最左边的三角形", "the second circle from the left" / "从左数第二个圆形").
    ``tau`` is the decisive margin (pixels) between centres for ordinals.
    """
    objs = list(objects)
    refs: list[Ref] = []
    seen: set[tuple[str, str]] = set()

    def add(en: str, zh: str, kind: str, t: int, anchor: int | None = None) -> None:
        if ("en", en) in seen:
            return
        seen.add(("en", en))
        refs.append(Ref(en, "en", kind, t, objs[t].box, anchor))
        refs.append(Ref(zh, "zh", kind, t, objs[t].box, anchor))

    # attribute: the descriptor alone singles out the target
    for t, o in enumerate(objs):
        for m in _ATTR_MASKS:
            d = _desc(o, m)
            if _unique(objs, d) == t:
                add(f"the {desc_en(d)}", desc_zh(d), "attribute", t)

    # relation: "the <D_t> <rel> the <D_a>"; the anchor is unique by attributes, and among the
    # other objects matching D_t the target is the only one for which the relation holds.
    for a, anchor in enumerate(objs):
        da = next((_desc(anchor, m) for m in _ANCHOR_MASKS if _unique(objs, _desc(anchor, m)) == a), None)
        if da is None:
            continue
        for t, target in enumerate(objs):
            if t == a:
                continue
            for rel in RELATIONS:
                if relation(target, anchor, rel) is not True:
                    continue
                for m in _REL_TARGET_MASKS:
                    dt = _desc(target, m)
                    others = [o for k, o in enumerate(objs) if k not in (a, t) and _matches(o, dt)]
                    if all(relation(o, anchor, rel) is False for o in others):
                        add(
                            f"the {desc_en(dt)} {REL_EN[rel]} the {desc_en(da)}",
                            f"{desc_zh(da, True)}{REL_ZH[rel]}的{desc_zh(dt, True)}",
                            "relation",
                            t,
                            a,
                        )
                        break

    # ordinal: extreme / second along a direction among the objects matching a descriptor
    for m in _ORDINAL_MASKS:
        classes: dict[Desc, list[int]] = {}
        for k, o in enumerate(objs):
            classes.setdefault(_desc(o, m), []).append(k)
        for d, members in classes.items():
            if len(members) < 2:
                continue
            sub = [objs[k] for k in members]
            for direction in DIRECTIONS:
                order = sorted(range(len(sub)), key=lambda i, dr=direction: _proj(sub[i], dr)[0])
                first = order[0]
                if all(precedes(sub[first], sub[j], direction, tau) for j in order[1:]):
                    add(
                        f"the {_EXTREME_EN[direction]} {desc_en(d)}",
                        f"{_EXTREME_ZH[direction]}{desc_zh(d, True)}",
                        "ordinal",
                        members[first],
                    )
                    if len(sub) >= 3 and all(
                        precedes(sub[order[1]], sub[j], direction, tau) for j in order[2:]
                    ):
                        add(
                            f"the second {desc_en(d)} {_FROM_EN[direction]}",
                            f"{_FROM_ZH[direction]}第二个{desc_zh(d, True)}",
                            "ordinal",
                            members[order[1]],
                        )
    return refs


# ------------------------------------------------------------------------------------ parsing


def mention_word_objects(
    words: Sequence[str], objects: Sequence[tuple[str, str, str]], lang: str
) -> list[list[int]]:
    """For each word of a world caption (one entry per token, as `tokenizers/world` splits captions into words):
    the indices of `objects` ((size, colour, shape) triples) that it describes when it is the size, colour or shape
    word of a mention ("large red circle", "大的红色圆形"; every object with those three attributes), else ``[]``.
    Words outside a complete size-colour-shape run, and mentions no object matches, describe nothing."""
    if lang == "en":
        size_of = {s: s for s in SIZE_ZH}
        colour_of = {c: c for c in COLOUR_ZH}
        shape_of = {**{s: s for s in SHAPE_ZH}, **{p: s for s, p in SHAPE_PLURAL.items()}}
    elif lang == "zh":
        size_of = {f"{z}的": s for s, z in SIZE_ZH.items()}
        colour_of = {z: c for c, z in COLOUR_ZH.items()}
        shape_of = {z: s for s, z in SHAPE_ZH.items()}
    else:
        raise ValueError(f"unknown language {lang!r}")
    out: list[list[int]] = [[] for _ in words]
    run: list[int] = []  # positions of the size (and colour) word of the mention being read
    size = colour = None
    for i, word in enumerate(w.strip() for w in words):
        if word in size_of:
            run, size, colour = [i], size_of[word], None
        elif word in colour_of and len(run) == 1:
            run, colour = [*run, i], colour_of[word]
        elif word in shape_of and len(run) == 2:
            triple = (size, colour, shape_of[word])
            matches = [k for k, o in enumerate(objects) if tuple(o) == triple]
            for position in (*run, i):
                out[position] = matches
            run = []
        else:
            run = []
    return out


def _alt(words: Sequence[str]) -> str:
    return "|".join(re.escape(w) for w in sorted(words, key=len, reverse=True))


_EN_COUNT = {"a": 1, "an": 1, "one": 1, **{v: k for k, v in NUM_EN.items()}}
_EN_SHAPE = {**{s: s for s in SHAPE_PLURAL}, **{p: s for s, p in SHAPE_PLURAL.items()}}
_EN_SIZE = {"small": "small", "large": "large", "big": "large", "little": "small"}
_EN_RE = re.compile(
    rf"\b(?:(?P<count>{_alt(_EN_COUNT)}|\d+)\s+)?(?:(?P<size>{_alt(_EN_SIZE)})\s+)?"
    rf"(?P<colour>{_alt(COLOUR_ZH)})\s+(?P<shape>{_alt(_EN_SHAPE)})\b",
    re.IGNORECASE,
)
_ZH_COUNT = {v: k for k, v in NUM_ZH.items()} | {"二": 2}
_ZH_COLOUR = {v: k for k, v in COLOUR_ZH.items()}
_ZH_SHAPE = {v: k for k, v in SHAPE_ZH.items()}
_ZH_SIZE = {v: k for k, v in SIZE_ZH.items()}
_ZH_RE = re.compile(
    rf"(?:(?P<count>[{''.join(_ZH_COUNT)}]|\d+)个)?(?:(?P<size>[{''.join(_ZH_SIZE)}])的?)?"
    rf"(?P<colour>{_alt(_ZH_COLOUR)})的?(?P<size2>[{''.join(_ZH_SIZE)}])?(?P<shape>{_alt(_ZH_SHAPE)})"
)


def parse_mentions(caption: str, lang: str) -> list[tuple[str | None, str, str]]:
    """Object mentions in a caption, expanded by their counts, as ``(size | None, colour, shape)``.

    Inverts every caption template of :func:`make_captions` (and tolerates free variations such as a
    missing size, "big", "2 red circles", "两个红色的小圆形"). Mentions need a colour and a shape.
    """
    out: list[tuple[str | None, str, str]] = []
    if lang == "en":
        for m in _EN_RE.finditer(caption):
            c = m.group("count")
            n = 1 if c is None else (int(c) if c.isdigit() else _EN_COUNT[c.lower()])
            size = _EN_SIZE[m.group("size").lower()] if m.group("size") else None
            out += [(size, m.group("colour").lower(), _EN_SHAPE[m.group("shape").lower()])] * n
    elif lang == "zh":
        for m in _ZH_RE.finditer(caption):
            c = m.group("count")
            n = 1 if c is None else (int(c) if c.isdigit() else _ZH_COUNT[c])
            s = m.group("size") or m.group("size2")
            out += [
                (_ZH_SIZE[s] if s else None, _ZH_COLOUR[m.group("colour")], _ZH_SHAPE[m.group("shape")])
            ] * n
    else:
        raise ValueError(f"unsupported language {lang!r}")
    return out


def named_attributes(ref: Ref, target: WorldObject) -> tuple[str | None, str | None, str | None]:
    """Which of the target's (size, colour, shape) an expression names about the target, None where it does not:
    "the large red object" -> ("large", "red", None); "星形" -> (None, None, "star"). Only the target's own words
    count: in a relation the anchor's are cut off ("the star above the green circle" -> (None, None, "star");
    "绿色圆形上面的星形" likewise), in an ordinal the position words ("最左边的红色三角形" -> (None, "red", "triangle"))."""
    text = ref.text
    if ref.lang == "en":
        if ref.kind == "relation":  # "the <target> <rel> the <anchor>"
            text = text[: min(i for i in (text.find(f" {r} ") for r in REL_EN.values()) if i >= 0)]
        words = text.split()
        named = (target.size in words, target.colour in words, target.shape in words)
    else:  # "大的红色星形", "红色的物体", "星形"
        if ref.kind == "relation":  # "<anchor><rel>的<target>"
            text = text[max(text.rfind(f"{r}的") + len(r) + 1 for r in REL_ZH.values() if f"{r}的" in text) :]
        elif ref.kind == "ordinal":  # "最左边的<target>" / "从左数第二个<target>"
            for prefix in (*_EXTREME_ZH.values(), *(f"{p}第二个" for p in _FROM_ZH.values())):
                text = text.removeprefix(prefix)
        named = (
            text.startswith(SIZE_ZH[target.size]),
            COLOUR_ZH[target.colour] in text,
            SHAPE_ZH[target.shape] in text,
        )
    return tuple(value if on else None for value, on in zip(target.triple, named))  # type: ignore[return-value]
