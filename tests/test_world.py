"""Tests for the synthetic world (ofa.data.world): determinism, geometry, text truth, splits, I/O."""

from __future__ import annotations

import base64
import io
import json
import re
from collections import Counter

import numpy as np
import pytest
from PIL import Image

from ofa.data.world import (
    BACKGROUND_COLOURS,
    COLOUR_NAMES,
    COLOUR_ZH,
    HELDOUT_PAIRS,
    SHAPE_NAMES,
    SHAPE_ZH,
    SPLITS,
    Background,
    World,
    WorldConfig,
    WorldObject,
    make_captions,
    make_refs,
    parse_mentions,
    render,
    write_dataset,
)
from ofa.data.world.schema import float_box, pixel_box

WORLD = World(seed=0)
N_SCENES = 150  # per split for the text/geometry checks


@pytest.fixture(scope="module")
def scenes():
    return [s for split in ("train", "heldout") for s in WORLD.iter(split, N_SCENES)]


def make_obj(
    shape: str, colour: str, size: str, cx: float, cy: float, extent: float | None = None
) -> WorldObject:
    extent = extent or (20.0 if size == "small" else 40.0)
    box = pixel_box(float_box(shape, cx, cy, extent, 0.0))
    return WorldObject(shape, colour, size, box, (cx, cy), extent, 0.0, (200, 30, 30))


# ------------------------------------------------------------------------------ determinism


def test_deterministic_per_seed():
    a, b = WORLD.scene("train", 7), World(WorldConfig(seed=0)).scene("train", 7)
    assert a.objects == b.objects and a.captions == b.captions and a.refs == b.refs
    assert a.background == b.background and a.image.tobytes() == b.image.tobytes()
    other = World(seed=1).scene("train", 7)
    assert other.objects != a.objects
    assert WORLD.scene("val", 7).objects != a.objects
    assert [s.objects for s in World(seed=1).iter("val", 5)] != [s.objects for s in WORLD.iter("val", 5)]


def test_golden_layout_is_stable():
    # Pins the sampling procedure: any change here silently changes every generated dataset.
    objs, bg = WORLD.layout("train", 1)
    assert [(o.triple, o.box) for o in objs] == GOLDEN_TRAIN_1
    assert bg == GOLDEN_TRAIN_1_BG


GOLDEN_TRAIN_1 = [
    (("small", "orange", "triangle"), (21, 105, 39, 121)),
    (("small", "black", "star"), (67, 2, 90, 25)),
    (("small", "black", "circle"), (74, 95, 92, 113)),
]
GOLDEN_TRAIN_1_BG = Background("grey", "vgrad")


# ---------------------------------------------------------------------------------- geometry


def test_objects_inside_and_disjoint(scenes):
    for s in scenes:
        n = s.image_size
        assert 1 <= len(s.objects) <= 4 and s.image.size == (n, n) and s.image.mode == "RGB"
        for o in s.objects:
            x0, y0, x1, y1 = o.box
            assert 0 <= x0 < x1 <= n and 0 <= y0 < y1 <= n
        for i, a in enumerate(s.objects):
            for b in s.objects[i + 1 :]:
                # at least one pixel of background between any two boxes
                assert (
                    a.box[2] < b.box[0] or b.box[2] < a.box[0] or a.box[3] < b.box[1] or b.box[3] < a.box[1]
                )
        assert [o.cx for o in s.objects] == sorted(o.cx for o in s.objects)


def test_sizes_are_categorical(scenes):
    small = [o.extent for s in scenes for o in s.objects if o.size == "small"]
    large = [o.extent for s in scenes for o in s.objects if o.size == "large"]
    assert max(small) * 1.4 < min(large)


def test_boxes_are_tight(scenes):
    for s in scenes[:100]:
        img = np.asarray(s.image).astype(float)
        bg = np.array(BACKGROUND_COLOURS[s.background.colour], float)
        n = s.image_size
        for o in s.objects:
            x0, y0, x1, y1 = o.box
            rgb = np.array(o.rgb, float)
            X0, Y0, X1, Y1 = max(0, x0 - 1), max(0, y0 - 1), min(n, x1 + 1), min(n, y1 + 1)
            # pixels at least ~half covered by the object's colour, in the box grown by 1 px
            ys, xs = np.nonzero(
                np.linalg.norm(img[Y0:Y1, X0:X1] - rgb, axis=-1) < 0.5 * np.linalg.norm(rgb - bg)
            )
            xs, ys = xs + X0, ys + Y0
            assert len(xs) > 0
            assert xs.min() >= x0 and ys.min() >= y0 and xs.max() < x1 and ys.max() < y1, (o, s.index)
            slack = (xs.min() - x0, ys.min() - y0, x1 - 1 - xs.max(), y1 - 1 - ys.max())
            assert max(slack) <= 2, (o.shape, slack)


def test_render_reproduces_scene_and_scales():
    s = WORLD.scene("train", 11)
    assert render(s.objects, s.image_size, s.background).tobytes() == s.image.tobytes()
    big = [o.scaled(2) for o in s.objects]
    for o, b in zip(s.objects, big):
        assert all(abs(2 * u - v) <= 2 for u, v in zip(o.box, b.box))
    img = render(big, 2 * s.image_size, Background("sky", "noise"))
    assert img.size == (256, 256)


# ---------------------------------------------------------------------------------- captions

_EN_REL = {"to the left of": "left", "to the right of": "right", "above": "above", "below": "below"}
_ZH_REL = {"左边": "left", "右边": "right", "上面": "above", "下面": "below"}


def box_rel(a: WorldObject, b: WorldObject, rel: str) -> bool:
    """Plain geometric reading: a's box lies entirely on that side of b's box."""
    return {
        "left": a.box[2] <= b.box[0],
        "right": a.box[0] >= b.box[2],
        "above": a.box[3] <= b.box[1],
        "below": a.box[1] >= b.box[3],
    }[rel]


def check_caption(caption: str, lang: str, objects: list[WorldObject]) -> None:
    mentions = parse_mentions(caption, lang)
    assert Counter(mentions) == Counter(o.triple for o in objects), (caption, [o.triple for o in objects])
    if lang == "en":
        m = re.search(r" (to the left of|to the right of|above|below) ", caption)
        rel = _EN_REL[m.group(1)] if m else None
        ltr = caption.startswith("from left to right")
    else:
        m = re.search(r"在.+的(左边|右边|上面|下面)", caption)
        rel = _ZH_REL[m.group(1)] if m else None
        ltr = caption.startswith("从左到右")
    if rel:
        a_t, b_t = mentions[0], mentions[1]
        assert any(
            box_rel(a, b, rel)
            for a in objects
            for b in objects
            if a is not b and a.triple == a_t and b.triple == b_t
        ), caption
    if ltr:
        assert mentions == [o.triple for o in sorted(objects, key=lambda o: o.cx)]
        xs = [o.box for o in sorted(objects, key=lambda o: o.cx)]
        assert all(p[0] <= q[0] and p[2] <= q[2] for p, q in zip(xs, xs[1:]))


def test_every_caption_is_true(scenes):
    kinds = Counter()
    for s in scenes:
        assert len(s.captions["en"]) == len(s.captions["zh"]) >= 3
        for lang in ("en", "zh"):
            for c in s.captions[lang]:
                check_caption(c, lang, s.objects)
                kinds[lang, "rel" if re.search(r"(of|above|below) a|在.+的", c) else "other"] += 1
    assert kinds["en", "rel"] > 50 and kinds["zh", "rel"] > 50


def test_parse_mentions_examples():
    assert parse_mentions("two small red circles and a large blue star", "en") == [
        ("small", "red", "circle"),
        ("small", "red", "circle"),
        ("large", "blue", "star"),
    ]
    assert (
        parse_mentions(
            "a small red circle to the left of a large blue star, and also three large black crosses", "en"
        )
        == [("small", "red", "circle"), ("large", "blue", "star")] + [("large", "black", "cross")] * 3
    )
    assert parse_mentions("there are 2 big green hexagons and one cyan diamond", "en") == [
        ("large", "green", "hexagon")
    ] * 2 + [(None, "cyan", "diamond")]
    assert parse_mentions("两个小的红色圆形和一个大的蓝色星形", "zh") == [
        ("small", "red", "circle"),
        ("small", "red", "circle"),
        ("large", "blue", "star"),
    ]
    assert (
        parse_mentions("一个小的红色圆形在大的蓝色星形的左边，还有三个黑色的大十字形", "zh")
        == [("small", "red", "circle"), ("large", "blue", "star")] + [("large", "black", "cross")] * 3
    )
    assert parse_mentions("三个物体：一个紫色正方形", "zh") == [(None, "purple", "square")]
    assert parse_mentions("a picture of nothing", "en") == []


@pytest.mark.parametrize("lang", ["en", "zh"])
def test_parse_mentions_roundtrips_all_templates(lang):
    # every shape x colour x size, in groups of 1-4 with duplicates, far apart so every template fires
    triples = [(sz, c, sh) for sh in SHAPE_NAMES for c in COLOUR_NAMES for sz in ("small", "large")]
    seen_templates = set()
    for k in range(0, len(triples), 3):
        group = triples[k : k + 3]
        objs = [make_obj(sh, c, sz, 20 + 30 * i, 20 + 30 * i) for i, (sz, c, sh) in enumerate(group)]
        objs.append(make_obj(group[0][2], group[0][1], group[0][0], 110, 110))  # a duplicate -> counts
        for caps_objs in (objs, objs[:1], objs[:2]):
            caps = make_captions(caps_objs, max_relation_captions=10)
            for c in caps[lang]:
                check_caption(c, lang, caps_objs)
                seen_templates.add(re.sub(r"[^a-z:从左到右图中有物体在的边面，]", "", c)[:6])
    assert len(seen_templates) >= 4


# --------------------------------------------------------------------------------------- refs

_SIZE_ZH = {"大": "large", "小": "small"}
_ZH_COLOUR = {v: k for k, v in COLOUR_ZH.items()}
_ZH_SHAPE = {v: k for k, v in SHAPE_ZH.items()}
_DIR = {
    "left": "left",
    "right": "right",
    "top": "top",
    "bottom": "bottom",
    "左": "left",
    "右": "right",
    "上": "top",
    "下": "bottom",
}


def parse_desc(text: str, lang: str) -> tuple:
    if lang == "en":
        words = text.split()
        shape = None if words[-1] == "object" else words[-1]
        assert shape is None or shape in SHAPE_NAMES, text
        size = next((w for w in words[:-1] if w in ("small", "large")), None)
        colour = next((w for w in words[:-1] if w in COLOUR_NAMES), None)
        assert len(words) - 1 == (size is not None) + (colour is not None), text
        return size, colour, shape
    colours = "|".join(_ZH_COLOUR)
    shapes = "|".join(list(_ZH_SHAPE) + ["物体"])
    m = re.fullmatch(rf"(?:([大小])的?)?(?:({colours})的?)?({shapes})", text)
    assert m, text
    return (_SIZE_ZH.get(m.group(1) or ""), _ZH_COLOUR.get(m.group(2) or ""), _ZH_SHAPE.get(m.group(3)))


def fits(o: WorldObject, d: tuple) -> bool:
    return all(v is None or v == getattr(o, f) for v, f in zip(d, ("size", "colour", "shape")))


def resolve(text: str, lang: str, objs: list[WorldObject]) -> list[int]:
    """Independent resolver: every object index the expression can denote under plain geometry."""
    idx = range(len(objs))
    if lang == "en":
        ext = re.fullmatch(r"the (left|right|top|bottom)most (.+)", text)
        sec = re.fullmatch(r"the second (.+) from the (left|right|top|bottom)", text)
        rel = re.fullmatch(r"the (.+?) (to the left of|to the right of|above|below) the (.+)", text)
        if ext:
            kind, direction, d = "ext", ext.group(1), parse_desc(ext.group(2), lang)
        elif sec:
            kind, direction, d = "sec", sec.group(2), parse_desc(sec.group(1), lang)
        elif rel:
            kind, r, d, da = (
                "rel",
                _EN_REL[rel.group(2)],
                parse_desc(rel.group(1), lang),
                parse_desc(rel.group(3), lang),
            )
        else:
            assert text.startswith("the "), text
            kind, d = "attr", parse_desc(text[4:], lang)
    else:
        ext = re.fullmatch(r"最([左右上下])[边面]的(.+)", text)
        sec = re.fullmatch(r"从([左右上下])数第二个(.+)", text)
        rel = re.fullmatch(r"(.+?)(左边|右边|上面|下面)的(.+)", text)
        if ext:
            kind, direction, d = "ext", _DIR[ext.group(1)], parse_desc(ext.group(2), lang)
        elif sec:
            kind, direction, d = "sec", _DIR[sec.group(1)], parse_desc(sec.group(2), lang)
        elif rel:
            kind, r, d, da = (
                "rel",
                _ZH_REL[rel.group(2)],
                parse_desc(rel.group(3), lang),
                parse_desc(rel.group(1), lang),
            )
        else:
            kind, d = "attr", parse_desc(text, lang)
    cands = [i for i in idx if fits(objs[i], d)]
    if kind == "attr":
        return cands
    if kind == "rel":
        anchors = [i for i in idx if fits(objs[i], da)]
        assert len(anchors) == 1, text  # the anchor itself must be unambiguous
        a = anchors[0]
        return [i for i in cands if i != a and box_rel(objs[i], objs[a], r)]
    # ordinals: centre order and edge order must agree (else the expression is ambiguous)
    sign = -1 if direction in ("right", "bottom") else 1
    ax = 0 if direction in ("left", "right") else 1
    by_centre = sorted(cands, key=lambda i: sign * objs[i].center[ax])
    by_near = sorted(cands, key=lambda i: sign * objs[i].box[ax + (2 if sign < 0 else 0)])
    by_far = sorted(cands, key=lambda i: sign * objs[i].box[ax + (0 if sign < 0 else 2)])
    k = 0 if kind == "ext" else 1
    if len(cands) < k + 2:
        return []
    picks = {by_centre[k], by_near[k], by_far[k]}
    return list(picks)


def test_every_ref_resolves_to_its_target(scenes):
    kinds = Counter()
    for s in scenes:
        for r in s.refs:
            assert resolve(r.text, r.lang, s.objects) == [r.target_index], (r, [o.triple for o in s.objects])
            assert r.box == s.objects[r.target_index].box
            kinds[r.lang, r.kind] += 1
        assert len(s.refs_for("en")) == len(s.refs_for("zh"))
    for lang in ("en", "zh"):
        for kind in ("attribute", "relation", "ordinal"):
            assert kinds[lang, kind] > 100, kinds


def test_refs_on_handmade_scenes():
    # red circle left, blue circle right, green square bottom-middle
    objs = [
        make_obj("circle", "red", "small", 20, 30),
        make_obj("circle", "blue", "large", 100, 30),
        make_obj("square", "green", "small", 60, 100),
    ]
    got = {r.text: r.target_index for r in make_refs(objs, tau=5)}
    assert got["the leftmost circle"] == 0 and got["最左边的圆形"] == 0
    assert got["the rightmost circle"] == 1 and got["the large circle"] == 1
    assert got["the circle to the left of the blue circle"] == 0
    assert got["蓝色圆形左边的圆形"] == 0
    assert got["the square below the red circle"] == 2 and got["红色圆形下面的正方形"] == 2
    assert got["the bottommost object"] == 2 and got["the second object from the left"] == 2
    assert got["从左数第二个物体"] == 2
    assert "the circle" not in got and "the small object" not in got
    # two circles with almost equal x: no left/right ordinal, but top/bottom is fine
    objs = [make_obj("circle", "red", "small", 50, 30), make_obj("circle", "red", "small", 52, 90)]
    texts = {r.text: r.target_index for r in make_refs(objs, tau=5)}
    assert not any("left" in t or "right" in t or "左" in t or "右" in t for t in texts)
    assert texts["the topmost circle"] == 0 and texts["最下面的圆形"] == 1
    # star B is left of the anchor by centre but overlaps it in x: "left of" is undecided -> not emitted
    objs = [
        make_obj("star", "red", "small", 15, 100),
        make_obj("star", "blue", "small", 50, 15),
        make_obj("square", "green", "large", 64, 64),
    ]
    texts = {r.text: r.target_index for r in make_refs(objs, tau=5)}
    assert "the star to the left of the green square" not in texts
    assert texts["the star above the green square"] == 1
    assert texts["the red star"] == 0


# ------------------------------------------------------------------------------------- splits


def test_heldout_pairs_only_in_heldout_split():
    held = set(HELDOUT_PAIRS)
    assert len(held) >= 5
    assert {c for c, _ in held} <= set(COLOUR_NAMES) and {s for _, s in held} == set(SHAPE_NAMES)
    seen = set()
    for split, n in (("train", 2000), ("val", 300), ("test", 300)):
        for i in range(n):
            objs, _ = WORLD.layout(split, i)
            assert not held & {o.pair for o in objs}, (split, i)
            seen |= {o.pair for o in objs}
    assert len(seen) == len(COLOUR_NAMES) * len(SHAPE_NAMES) - len(held)  # all other pairs do occur
    held_seen = set()
    for i in range(300):
        pairs = {o.pair for o in WORLD.layout("heldout", i)[0]}
        assert pairs & held, i
        held_seen |= pairs & held
    assert held_seen == held
    assert set(SPLITS) == {"train", "val", "test", "heldout"}
    with pytest.raises(ValueError):
        WORLD.layout("nope", 0)


def test_config_overrides():
    w = World(image_size=96, max_objects=2, seed=3)
    s = w.scene("val", 0)
    assert s.image.size == (96, 96) and len(s.objects) <= 2
    with pytest.raises(TypeError):
        World(nonsense=1)
    with pytest.raises(ValueError):
        WorldConfig(heldout_pairs=(("pink", "circle"),))


# ---------------------------------------------------------------------------------------- I/O


def test_write_dataset_reads_back(tmp_path):
    n = 4
    paths = write_dataset(WORLD, tmp_path, "val", n)
    scenes = list(WORLD.iter("val", n))
    for lang in ("en", "zh"):
        coco = json.loads(paths[f"coco_{lang}"].read_text(encoding="utf-8"))
        assert [im["id"] for im in coco["images"]] == list(range(n))
        for s, im in zip(scenes, coco["images"]):
            assert (im["width"], im["height"]) == s.image.size
            png = Image.open(tmp_path / im["file_name"])
            assert np.array_equal(np.asarray(png.convert("RGB")), np.asarray(s.image))
            caps = [a["caption"] for a in coco["annotations"] if a["image_id"] == s.index]
            assert caps == s.captions[lang]
    refs = [json.loads(line) for line in paths["refs"].read_text(encoding="utf-8").splitlines()]
    assert len(refs) == sum(len(s.refs) for s in scenes)
    for r in refs:
        assert set(r) >= {"image", "text", "box", "lang"} and (tmp_path / r["image"]).exists()
        assert r["box"] == list(scenes[r["image_id"]].objects[r["target_index"]].box)
    imgs = {}
    for line in paths["cnclip_imgs"].read_text().splitlines():
        image_id, b64 = line.split("\t")
        imgs[int(image_id)] = Image.open(io.BytesIO(base64.b64decode(b64))).convert("RGB")
    assert sorted(imgs) == list(range(n))
    assert np.array_equal(np.asarray(imgs[2]), np.asarray(scenes[2].image))
    texts = [json.loads(line) for line in paths["cnclip_texts"].read_text(encoding="utf-8").splitlines()]
    assert [t["text_id"] for t in texts] == list(range(len(texts)))
    assert all(
        len(t["image_ids"]) == 1 and t["text"] in scenes[t["image_ids"][0]].captions["zh"] for t in texts
    )
    objs = [json.loads(line) for line in paths["objects"].read_text(encoding="utf-8").splitlines()]
    assert [o["objects"][0]["box"] for o in objs] == [list(s.objects[0].box) for s in scenes]
    with pytest.raises(ValueError):
        write_dataset(WORLD, tmp_path, "val", 1, formats=("bogus",))
