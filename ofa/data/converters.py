"""Writers of the data-file formats (`ofa.data.formats`), converters between them, and coco-mini as task samples.

`write_samples(samples, dst, fmt)` writes task samples (the dicts `ofa.tasks` document, e.g. what
`open_sample_file` reads) in any format of `ofa.data.formats.FORMATS`; `convert_sample_file(src, dst, task, fmt)`
reads one file and writes another; `coco_mini_samples(annotations, task, lang)` turns the records of a coco-mini
``annotations.json`` (``{image, captions_en, captions_zh, refs: [{text, text_zh, box}], coco_id, ...}``) into
caption, grounding or retrieval samples. Example::

    from ofa.data.converters import coco_mini_samples, write_samples
    refs = coco_mini_samples("../shared/data/coco-mini/annotations.json", "grounding", "en")
    write_samples(refs, "out/refs_train.jsonl", "refs_jsonl")     # images named relative to out/
    write_samples(refs, "out/refcoco_train.tsv", "ofa_tsv")       # images embedded as base64

Path-based formats (``coco_captions``, ``refs_jsonl``, ``pairs_*``) name a sample's image file relative to the
written file and never copy it; an image held in memory (``image_bytes`` or a PIL image, e.g. read from a TSV)
is written once into ``images_dir`` (default ``{dst stem}_images/``). Embedding formats (``ofa_tsv``,
``cnclip``) store the image file's bytes unchanged (a PIL image without its file is stored as PNG).
"""

from __future__ import annotations

import base64
import csv
import hashlib
import io
import json
import os
from collections.abc import Collection, Iterable, Mapping
from pathlib import Path
from typing import Any

from PIL import Image

from .formats import FORMATS, DataFormatError, open_sample_file

_EXTENSIONS = {"JPEG": "jpg", "PNG": "png", "WEBP": "webp", "GIF": "gif", "BMP": "bmp", "TIFF": "tiff"}


def _label(sample: Mapping[str, Any], number: int) -> str:
    return f"sample {sample.get('id', number)!r}"


def image_bytes(sample: Mapping[str, Any]) -> bytes:
    """The encoded image file of a sample: its ``image_bytes``, the file its ``image`` names, or a PNG."""
    if sample.get("image_bytes") is not None:
        return bytes(sample["image_bytes"])
    image = sample.get("image")
    if isinstance(image, (str, Path)):
        return Path(image).read_bytes()
    if isinstance(image, Image.Image):
        buffer = io.BytesIO()
        image.save(buffer, format="PNG")
        return buffer.getvalue()
    raise ValueError(f"sample {sample.get('id')!r}: the image must be a path, image_bytes or a PIL image")


class _ImageNamer:
    """Names each sample's image relative to the written file; writes in-memory images once into a folder."""

    def __init__(self, dst: Path, images_dir: Path | None) -> None:
        self.folder = dst.parent.resolve()
        self.images_dir = images_dir if images_dir is not None else dst.with_name(f"{dst.stem}_images")
        self.written: dict[str, str] = {}  # sha256 of an in-memory image -> its name (one file per image)

    def __call__(self, sample: Mapping[str, Any]) -> str:
        image = sample.get("image")
        if isinstance(image, (str, Path)):
            return Path(os.path.relpath(Path(image).resolve(), self.folder)).as_posix()
        data = image_bytes(sample)
        key = hashlib.sha256(data).hexdigest()
        if key not in self.written:
            kind = Image.open(io.BytesIO(data)).format or "PNG"
            self.images_dir.mkdir(parents=True, exist_ok=True)
            file = self.images_dir / f"{len(self.written):08d}.{_EXTENSIONS.get(kind, 'png')}"
            file.write_bytes(data)
            self.written[key] = Path(os.path.relpath(file.resolve(), self.folder)).as_posix()
        return self.written[key]


def _texts(sample: Mapping[str, Any], number: int) -> list[str]:
    """A caption sample's captions, or a pair sample's one text."""
    if "captions" in sample:
        return [str(c) for c in sample["captions"]]
    if isinstance(sample.get("text"), str):
        return [sample["text"]]
    raise ValueError(f"{_label(sample, number)}: needs 'captions' or 'text'")


def _image_key(sample: Mapping[str, Any], number: int) -> Any:
    """What says two samples show the same image: ``image_id`` (pairs), else ``id`` (caption samples)."""
    key = sample.get("image_id", sample.get("id"))
    return number if key is None else key


def _group_by_image(samples: Iterable[Mapping[str, Any]]) -> list[tuple[Any, Mapping[str, Any], list[str]]]:
    """(image key, first sample of the image, all its texts) in order of first appearance."""
    groups: dict[Any, tuple[Any, Mapping[str, Any], list[str]]] = {}
    for number, sample in enumerate(samples):
        key = _image_key(sample, number)
        if key not in groups:
            groups[key] = (key, sample, [])
        groups[key][2].extend(_texts(sample, number))
    return list(groups.values())


def _json_id(value: Any, fallback: int) -> int | str:
    return value if isinstance(value, (int, str)) and not isinstance(value, bool) else fallback


def _box(sample: Mapping[str, Any], number: int) -> list[float]:
    box = sample.get("box")
    if box is None or len(box) != 4:
        raise ValueError(f"{_label(sample, number)}: a grounding sample needs a box [x0, y0, x1, y1]")
    return [float(v) for v in box]


def _write_coco_captions(samples: Iterable[Mapping[str, Any]], dst: Path, name: _ImageNamer) -> None:
    images, annotations = [], []
    for number, (key, sample, texts) in enumerate(_group_by_image(samples)):
        image_id = _json_id(key, number)
        images.append({"id": image_id, "file_name": name(sample)})
        annotations.extend({"id": len(annotations), "image_id": image_id, "caption": text} for text in texts)
    data = {"images": images, "annotations": annotations}
    dst.write_text(json.dumps(data, ensure_ascii=False, indent=1) + "\n", encoding="utf-8")


def _write_refs_jsonl(samples: Iterable[Mapping[str, Any]], dst: Path, name: _ImageNamer) -> None:
    with dst.open("w", encoding="utf-8") as out:
        for number, sample in enumerate(samples):
            record = {"image": name(sample), "text": sample["text"], "box": _box(sample, number)}
            record["lang"] = sample.get("lang", "en")
            record["id"] = _json_id(sample.get("id"), number)
            if sample.get("image_id") is not None:
                record["image_id"] = _json_id(sample["image_id"], number)
            out.write(json.dumps(record, ensure_ascii=False) + "\n")


def _tsv_field(value: Any, what: str, sample: Mapping[str, Any], number: int) -> str:
    text = str(value)
    if any(c in text for c in "\t\r\n"):
        raise ValueError(
            f"{_label(sample, number)}: the {what} holds a tab or line break, which a TSV cannot"
        )
    return text


def _write_ofa_tsv(samples: Iterable[Mapping[str, Any]], dst: Path) -> None:
    with dst.open("w", encoding="utf-8") as out:
        for number, sample in enumerate(samples):
            image = sample.get("image")
            default_image_id = Path(image).stem if isinstance(image, (str, Path)) else number
            fields = [
                _tsv_field(sample.get("id", number), "id", sample, number),
                _tsv_field(sample.get("image_id", default_image_id), "image id", sample, number),
                _tsv_field(sample["text"], "text", sample, number),
                ",".join(repr(v) for v in _box(sample, number)),
                # The official reader decodes with urlsafe_b64decode; ours reads either alphabet.
                base64.urlsafe_b64encode(image_bytes(sample)).decode("ascii"),
            ]
            out.write("\t".join(fields) + "\n")


def _int_id(value: Any) -> int | None:
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    if isinstance(value, str) and value.isascii() and value.isdigit():
        return int(value)
    return None


def _write_cnclip(samples: Iterable[Mapping[str, Any]], dst: Path) -> None:
    from .retrieval_formats import write_retrieval_dataset

    groups = _group_by_image(samples)
    ids = [_int_id(key) for key, _, _ in groups]
    if None in ids or len(set(ids)) != len(ids):  # Chinese-CLIP ids are distinct integers: number the images
        ids = list(range(len(groups)))
    items, text_count = [], 0
    for image_id, (_, sample, texts) in zip(ids, groups):
        text_ids = list(range(text_count, text_count + len(texts)))
        text_count += len(texts)
        items.append(
            {"image_id": image_id, "texts": texts, "text_ids": text_ids, "image_bytes": image_bytes(sample)}
        )
    write_retrieval_dataset(items, dst, "cnclip")


def _write_pairs(samples: Iterable[Mapping[str, Any]], dst: Path, name: _ImageNamer, fmt: str) -> None:
    with dst.open("w", encoding="utf-8", newline="" if fmt == "pairs_csv" else None) as out:
        writer = csv.writer(out) if fmt == "pairs_csv" else None
        if writer is not None:
            writer.writerow(["image", "text", "image_id", "text_id"])
        text_id = 0
        for number, (key, sample, texts) in enumerate(_group_by_image(samples)):
            image, image_id = name(sample), _json_id(key, number)
            for text in texts:
                if writer is not None:
                    writer.writerow([image, text, image_id, text_id])
                else:
                    record = {"image": image, "text": text, "image_id": image_id, "text_id": text_id}
                    out.write(json.dumps(record, ensure_ascii=False) + "\n")
                text_id += 1


def write_samples(
    samples: Iterable[Mapping[str, Any]], dst: str | Path, fmt: str, *, images_dir: str | Path | None = None
) -> Path:
    """Write task samples to `dst` in format `fmt` (module docstring); returns `dst`.

    Caption samples (``captions``) and pair samples (``text`` + ``image_id``) feed ``coco_captions``, ``cnclip``
    and ``pairs_*``, grouped by image; grounding samples (``text`` + ``box``) feed ``refs_jsonl`` and ``ofa_tsv``.
    A ``cnclip`` destination is named ``{split}_imgs.tsv`` (its ``{split}_texts.jsonl`` is written beside it).
    """
    if fmt not in FORMATS:
        raise ValueError(f"unknown data format {fmt!r}; known: {', '.join(FORMATS)}")
    dst = Path(dst)
    dst.parent.mkdir(parents=True, exist_ok=True)
    name = _ImageNamer(dst, Path(images_dir) if images_dir is not None else None)
    if fmt == "coco_captions":
        _write_coco_captions(samples, dst, name)
    elif fmt == "refs_jsonl":
        _write_refs_jsonl(samples, dst, name)
    elif fmt == "ofa_tsv":
        _write_ofa_tsv(samples, dst)
    elif fmt == "cnclip":
        _write_cnclip(samples, dst)
    else:
        _write_pairs(samples, dst, name, fmt)
    return dst


def convert_sample_file(
    src: str | Path,
    dst: str | Path,
    task: str,
    fmt: str,
    *,
    src_fmt: str | None = None,
    lang: str = "en",
    images_dir: str | Path | None = None,
) -> Path:
    """Read the `task` samples of `src` (`open_sample_file`) and write them to `dst` in `fmt`; returns `dst`."""
    if Path(src).resolve() == Path(dst).resolve():
        raise ValueError(f"{src}: converting a file onto itself")
    return write_samples(open_sample_file(src, task, lang, src_fmt), dst, fmt, images_dir=images_dir)


# ----------------------------------------------------------------------------------------------- coco-mini
def load_coco_mini(annotations: str | Path) -> list[dict[str, Any]]:
    """The records of a coco-mini ``annotations.json`` (a list), each ``image`` made an absolute path."""
    path = Path(annotations).expanduser()
    try:
        records = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise DataFormatError(f"{path}: not a readable coco-mini annotations file ({err})") from None
    if not isinstance(records, list) or not all(isinstance(r, dict) and "image" in r for r in records):
        raise DataFormatError(f"{path}: expected a list of records with 'image', 'captions_en', 'refs', ...")
    root = path.parent.resolve()
    return [{**r, "image": root / r["image"]} for r in records]


def coco_mini_samples(
    annotations: str | Path | list[dict[str, Any]],
    task: str,
    lang: str = "en",
    coco_ids: Collection[int] | None = None,
) -> list[dict[str, Any]]:
    """Task samples of coco-mini (records of `coco_ids` only, when given), in file order.

    caption: one per image with captions in `lang`; grounding: one per ref (``text`` or ``text_zh``; id
    ``"{coco_id}-{k}"``); retrieval: one pair per caption (id ``"{coco_id}-{k}"``, ``image_id`` the coco id).
    """
    records = annotations if isinstance(annotations, list) else load_coco_mini(annotations)
    if lang not in ("en", "zh"):
        raise ValueError(f"coco-mini has English and Chinese text, not {lang!r}")
    samples: list[dict[str, Any]] = []
    for record in records:
        coco_id = record["coco_id"]
        if coco_ids is not None and coco_id not in coco_ids:
            continue
        base = {"image": Path(record["image"]), "lang": lang}
        captions = record.get(f"captions_{lang}") or []
        if task == "caption" and captions:
            samples.append({**base, "captions": list(captions), "id": coco_id})
        elif task == "retrieval":
            samples.extend(
                {**base, "text": text, "id": f"{coco_id}-{k}", "image_id": coco_id}
                for k, text in enumerate(captions)
            )
        elif task == "grounding":
            for k, ref in enumerate(record.get("refs") or []):
                text = ref["text"] if lang == "en" else ref.get("text_zh")
                if text:
                    samples.append(
                        {
                            **base,
                            "text": text,
                            "box": list(ref["box"]),
                            "id": f"{coco_id}-{k}",
                            "image_id": coco_id,
                        }
                    )
        elif task not in ("caption", "retrieval", "grounding"):
            raise ValueError(f"coco-mini has caption, grounding and retrieval samples, not {task!r}")
    return samples


__all__ = ["coco_mini_samples", "convert_sample_file", "image_bytes", "load_coco_mini", "write_samples"]
