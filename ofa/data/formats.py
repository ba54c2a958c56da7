"""Readers for the on-disk data formats of the recipes; each yields the sample dicts of `ofa.tasks`.

* Captions, COCO style (``.json``): ``{"images": [{"id", "file_name", ...}], "annotations": [{"image_id",
  "caption"}]}``; ``file_name`` is relative to the JSON file's folder. One sample per image, all its captions.
* Referring expressions, RefCOCO style (``.jsonl``): one ``{"image", "text", "box": [x0, y0, x1, y1], "lang"}``
  per line; ``image`` is relative to the file's folder; ``box`` in pixels.
"""

from __future__ import annotations

import json
from collections import defaultdict
from pathlib import Path
from typing import Any


class DataFormatError(ValueError):
    """A data file that does not follow its documented format; the message names the file and line."""


def read_coco_captions(path: Path, lang: str = "en") -> list[dict[str, Any]]:
    try:
        data = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as err:
        raise DataFormatError(f"{path}: not readable COCO caption JSON: {err}") from None
    if not isinstance(data, dict) or "images" not in data or "annotations" not in data:
        raise DataFormatError(f"{path}: expected an object with 'images' and 'annotations'")
    captions: dict[Any, list[str]] = defaultdict(list)
    for ann in data["annotations"]:
        captions[ann["image_id"]].append(ann["caption"])
    return [
        {
            "image": path.parent / img["file_name"],
            "captions": captions[img["id"]],
            "lang": lang,
            "id": img["id"],
        }
        for img in data["images"]
        if captions.get(img["id"])
    ]


def read_refs_jsonl(path: Path, lang: str | None = None) -> list[dict[str, Any]]:
    samples = []
    try:
        lines = path.read_text().splitlines()
    except OSError as err:
        raise DataFormatError(f"{path}: cannot read: {err}") from None
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
            sample = {
                "image": path.parent / record["image"],
                "text": record["text"],
                "box": record["box"],
                "lang": record.get("lang", "en"),
                "id": record.get("id", f"{path.name}:{number}"),
            }
        except (json.JSONDecodeError, KeyError, TypeError) as err:
            raise DataFormatError(
                f"{path}, line {number}: not a referring-expression record ({err})"
            ) from None
        if lang is None or sample["lang"] == lang:
            samples.append(sample)
    return samples


def read_samples(path: Path, task: str, lang: str = "en") -> list[dict[str, Any]]:
    """Samples of `task` from a data file, by task and extension."""
    if not path.is_file():
        raise DataFormatError(f"{path}: no such data file")
    if task == "caption" and path.suffix == ".json":
        return read_coco_captions(path, lang)
    if task == "grounding" and path.suffix == ".jsonl":
        return read_refs_jsonl(path, lang)
    raise DataFormatError(f"{path}: no reader for task {task!r} and a {path.suffix or 'extensionless'} file")
