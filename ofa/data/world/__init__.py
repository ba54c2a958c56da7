"""A deterministic synthetic world of simple scenes for training and *exactly* scoring small OFA models.

Every task of the library has an exact answer here: captioning (object mentions, EN + ZH),
visual grounding (referring expressions with a unique referent and a tight box, EN + ZH),
image-text retrieval (Chinese-CLIP style pairs) and text-to-image (:func:`render` is the oracle).

Scenes
    1-4 non-overlapping objects on a pale background (5 colours x plain / vertical gradient /
    horizontal gradient / mild noise). Objects: 7 shapes (``SHAPES``: circle, square, triangle,
    star, hexagon, diamond, cross), 8 colours (``COLOURS``: red, green, blue, yellow, purple,
    orange, black, cyan), 2 sizes (small ~17-22 px, large ~35-42 px at 128 px), +-15 degree
    rotation and +-8% shade jitter. Drawn 4x supersampled then box-downsampled. ``WorldObject.box``
    is the tight geometric box ``(x0, y0, x1, y1)`` in pixels with exclusive x1/y1.

Determinism
    ``World(seed=s).scene(split, i)`` depends only on the config, ``split`` and ``i`` (sha256-seeded
    ``random.Random``; background noise from ``PCG64.random_raw``), so it is identical on any
    machine; object metadata and text are bit-stable, pixels are stable for a given Pillow version.

Splits (``SPLITS``)
    ``train``, ``val``, ``test``: no object ever has a held-out (colour, shape) pair.
    ``heldout``: every scene has at least one held-out pair (other objects drawn from all pairs).
    Held-out pairs (``HELDOUT_PAIRS``; each shape once, each colour at most once, black never):
    red triangle, green star, blue hexagon, yellow circle, purple square, orange diamond, cyan cross.

Text (see :mod:`ofa.data.world.language` for the exact truth conditions)
    ``Scene.captions = {"en": [...], "zh": [...]}`` (parallel lists). Every caption mentions every
    object exactly once as size + colour + shape, e.g. "two small red circles and a large blue star" /
    "两个小的红色圆形和一个大的蓝色星形", "a small red circle to the left of a large blue star" /
    "一个小的红色圆形在大的蓝色星形的左边"; :func:`parse_mentions` inverts all templates.
    ``Scene.refs``: :class:`Ref` (text, lang, kind, target_index, box, anchor_index) of kinds
    ``attribute`` ("the large square" / "大的正方形"), ``relation`` ("the star above the green circle" /
    "绿色圆形上面的星形") and ``ordinal`` ("the leftmost triangle" / "最左边的三角形",
    "the second circle from the left" / "从左数第二个圆形"); each is emitted only if exactly one object
    satisfies it and every other candidate decisively does not.

On-disk formats (:func:`write_dataset`, all paths relative to ``out_dir``; image ids = scene indices)
    ``images/{split}/{split}_{index:06d}.png``
        RGB PNG, ``image_size`` x ``image_size``.
    ``captions_{split}_{lang}.json`` (format ``coco``, one file per language)
        COCO captions: ``{"images": [{"id", "file_name", "width", "height"}],
        "annotations": [{"id", "image_id", "caption"}]}``; ``file_name`` is the PNG path above.
    ``refs_{split}.jsonl`` (format ``refs``, RefCOCO style, one expression per line)
        ``{"image": png path, "image_id", "text", "box": [x0, y0, x1, y1], "lang": "en"|"zh",
        "kind": "attribute"|"relation"|"ordinal", "target_index"}``; box in pixels, x1/y1 exclusive.
    ``{split}_imgs.tsv`` + ``{split}_texts.jsonl`` (format ``cnclip``, Chinese-CLIP style)
        TSV lines ``image_id \\t base64(PNG bytes)``; JSONL lines
        ``{"text_id": int, "text": caption, "image_ids": [image_id]}`` (``clip_lang`` captions, zh by default).
    ``objects_{split}.jsonl`` (format ``objects``)
        ``{"image_id", "image", **Scene.to_dict()}``: objects, background, captions and refs, for scoring.
    Image-text retrieval sets (:func:`write_world_retrieval`)
        any format of :mod:`ofa.data.retrieval_formats` (Chinese-CLIP TSV/JSONL, JSONL/CSV pairs,
        webdataset shards), with the captions of chosen languages as texts.

Example::

    from ofa.data.world import World, write_dataset
    world = World(seed=0)                      # or World(WorldConfig(image_size=96, max_objects=3))
    scene = world.scene("train", 0)
    scene.image.save("scene.png"); print(scene.captions["zh"][0], scene.refs_for("en")[0])
    write_dataset(world, "data/world", "train", 10_000)
"""

from .core import SPLITS, World, WorldConfig
from .io import FORMATS, write_dataset, write_world_retrieval
from .language import (
    RELATIONS,
    make_captions,
    make_refs,
    mention_en,
    mention_word_objects,
    mention_zh,
    named_attributes,
    ordered,
    parse_mentions,
    precedes,
    relation,
)
from .render import BACKGROUND_COLOURS, BACKGROUND_STYLES, coverage_mask, render
from .schema import Background, Box, Ref, Scene, WorldObject
from .vocab import (
    COLOUR_NAMES,
    COLOUR_ZH,
    COLOURS,
    HELDOUT_PAIRS,
    LANGS,
    SHAPE_NAMES,
    SHAPE_ZH,
    SHAPES,
    SIZE_ZH,
    SIZES,
    Colour,
    Shape,
)

__all__ = [
    "BACKGROUND_COLOURS",
    "BACKGROUND_STYLES",
    "COLOURS",
    "COLOUR_NAMES",
    "COLOUR_ZH",
    "FORMATS",
    "HELDOUT_PAIRS",
    "LANGS",
    "RELATIONS",
    "SHAPES",
    "SHAPE_NAMES",
    "SHAPE_ZH",
    "SIZES",
    "SIZE_ZH",
    "SPLITS",
    "Background",
    "Box",
    "Colour",
    "Ref",
    "Scene",
    "Shape",
    "World",
    "WorldConfig",
    "WorldObject",
    "coverage_mask",
    "make_captions",
    "make_refs",
    "mention_en",
    "mention_word_objects",
    "mention_zh",
    "named_attributes",
    "ordered",
    "parse_mentions",
    "precedes",
    "relation",
    "render",
    "write_dataset",
    "write_world_retrieval",
]
