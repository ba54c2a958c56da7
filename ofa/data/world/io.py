"""Writing world splits to disk in the formats the real-data recipes read (see package docstring)."""

from __future__ import annotations

import base64
import io
import json
from collections.abc import Sequence
from pathlib import Path

from ..retrieval_formats import write_retrieval_dataset
from .core import World
from .vocab import LANGS

FORMATS: tuple[str, ...] = ("coco", "refs", "cnclip", "objects")


def _png(image) -> bytes:
    buf = io.BytesIO()
    image.save(buf, format="PNG")
    return buf.getvalue()


def write_dataset(
    world: World,
    out_dir: str | Path,
    split: str,
    n: int,
    formats: Sequence[str] = FORMATS,
    start: int = 0,
    langs: Sequence[str] = ("en", "zh"),
    clip_lang: str = "zh",
) -> dict[str, Path]:
    """Write scenes ``start .. start+n-1`` of ``split`` under ``out_dir``; returns ``{name: path}``.

    ``formats`` is any subset of ``FORMATS``: ``coco`` (PNGs + ``captions_{split}_{lang}.json``),
    ``refs`` (PNGs + ``refs_{split}.jsonl``), ``cnclip`` (``{split}_imgs.tsv`` +
    ``{split}_texts.jsonl`` with ``clip_lang`` captions), ``objects`` (``objects_{split}.jsonl``).
    Image ids are the scene indices.
    """
    unknown = set(formats) - set(FORMATS)
    if unknown:
        raise ValueError(f"unknown formats {sorted(unknown)}; expected a subset of {FORMATS}")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    want_png = "coco" in formats or "refs" in formats
    img_dir = out / "images" / split
    if want_png:
        img_dir.mkdir(parents=True, exist_ok=True)

    coco = {lang: {"images": [], "annotations": []} for lang in langs}
    paths: dict[str, Path] = {}
    files = {}
    if "refs" in formats:
        paths["refs"] = out / f"refs_{split}.jsonl"
        files["refs"] = paths["refs"].open("w", encoding="utf-8")
    if "cnclip" in formats:
        paths["cnclip_imgs"] = out / f"{split}_imgs.tsv"
        paths["cnclip_texts"] = out / f"{split}_texts.jsonl"
        files["imgs"] = paths["cnclip_imgs"].open("w", encoding="utf-8")
        files["texts"] = paths["cnclip_texts"].open("w", encoding="utf-8")
    if "objects" in formats:
        paths["objects"] = out / f"objects_{split}.jsonl"
        files["objects"] = paths["objects"].open("w", encoding="utf-8")

    text_id = 0
    ann_id = 0
    try:
        for scene in world.iter(split, n, start):
            png = _png(scene.image)
            rel = f"images/{split}/{split}_{scene.index:06d}.png"
            w, h = scene.image.size
            if want_png:
                (out / rel).write_bytes(png)
            if "coco" in formats:
                for lang in langs:
                    coco[lang]["images"].append(
                        {"id": scene.index, "file_name": rel, "width": w, "height": h}
                    )
                    for cap in scene.captions[lang]:
                        coco[lang]["annotations"].append(
                            {"id": ann_id, "image_id": scene.index, "caption": cap}
                        )
                        ann_id += 1
            if "refs" in formats:
                for r in scene.refs:
                    if r.lang in langs:
                        rec = {
                            "image": rel,
                            "image_id": scene.index,
                            "text": r.text,
                            "box": list(r.box),
                            "lang": r.lang,
                            "kind": r.kind,
                            "target_index": r.target_index,
                        }
                        files["refs"].write(json.dumps(rec, ensure_ascii=False) + "\n")
            if "cnclip" in formats:
                files["imgs"].write(f"{scene.index}\t{base64.b64encode(png).decode('ascii')}\n")
                for cap in scene.captions[clip_lang]:
                    rec = {"text_id": text_id, "text": cap, "image_ids": [scene.index]}
                    files["texts"].write(json.dumps(rec, ensure_ascii=False) + "\n")
                    text_id += 1
            if "objects" in formats:
                rec = {"image_id": scene.index, "image": rel, **scene.to_dict()}
                files["objects"].write(json.dumps(rec, ensure_ascii=False) + "\n")
    finally:
        for f in files.values():
            f.close()

    if "coco" in formats:
        for lang in langs:
            p = out / f"captions_{split}_{lang}.json"
            p.write_text(json.dumps(coco[lang], ensure_ascii=False), encoding="utf-8")
            paths[f"coco_{lang}"] = p
    if want_png:
        paths["images"] = img_dir
    return paths


def write_world_retrieval(
    world: World,
    dst: str | Path,
    split: str,
    n: int,
    fmt: str = "cnclip",
    start: int = 0,
    langs: Sequence[str] = ("zh",),
    **options,
) -> dict[str, Path]:
    """Write scenes ``start .. start+n-1`` of ``split`` as an image-text retrieval dataset.

    ``fmt`` and ``dst`` as in :func:`ofa.data.retrieval_formats.open_retrieval_writer` (``cnclip``:
    ``.../{split}_imgs.tsv``; ``jsonl`` / ``csv``: the pairs file; ``wds``: the shard directory). Each scene
    is one PNG whose texts are its captions in ``langs`` order (e.g. ``("en", "zh")`` for both); image ids
    are the scene indices, text ids count from 0. Returns the written paths.
    """
    unknown = set(langs) - set(LANGS)
    if unknown:
        raise ValueError(f"unknown caption languages {sorted(unknown)}; expected a subset of {LANGS}")

    def samples():
        text_id = 0
        for scene in world.iter(split, n, start):
            texts = [caption for lang in langs for caption in scene.captions[lang]]
            ids = list(range(text_id, text_id + len(texts)))
            text_id += len(texts)
            yield {"image": scene.image, "image_id": scene.index, "texts": texts, "text_ids": ids}

    return write_retrieval_dataset(samples(), dst, fmt, **options)
