"""Readers for the on-disk data formats of the recipes and of `ofa eval --data`; each yields `ofa.tasks` samples.

`open_sample_file(path, task, lang, fmt)` returns a `SampleFile`: a random-access sequence of the sample dicts
the task documents (``len(f)``, ``f[i]`` a fresh dict with the image decoded on access, ``f[a:b]`` a list).
Training reads sample ``g mod len(f)``; metadata is held in memory, images stay on disk until asked for.

Formats (``fmt``; told from the file name when omitted, see `detect_format`) and the tasks they feed:

* ``coco_captions`` (``.json``), COCO caption style: ``{"images": [{"id", "file_name"}], "annotations":
  [{"image_id", "caption"}]}``; ``file_name`` relative to the JSON file's folder. caption: one sample per image
  with all its captions; retrieval: one (image, caption) pair per caption; text_to_image: one (caption, image)
  sample per caption whose ``id`` is the image's id (the key of its codes in `ofa extract-codes` files).
* ``refs_jsonl`` (``.jsonl``), RefCOCO style: one ``{"image", "text", "box": [x0, y0, x1, y1], "lang"?, "id"?}``
  per line; ``image`` relative to the file's folder, ``box`` in pixels. Records of another ``lang`` are skipped.
  grounding.
* ``ofa_tsv`` (``.tsv``), official OFA refcoco TSV, no header: ``uniq_id<TAB>image_id<TAB>text<TAB>x0,y0,x1,y1
  <TAB>base64 image`` (the official reader takes columns 0, 4, 2, 3; either base64 alphabet). grounding.
* ``cnclip`` (``{split}_imgs.tsv`` + ``{split}_texts.jsonl``), Chinese-CLIP
  (`ofa.data.retrieval_formats.ChineseCLIPReader`). caption: one sample per image with texts;
  retrieval, text_to_image: one per (image, text).
* ``pairs_jsonl`` / ``pairs_csv``: (image path, text) rows (`ofa.data.retrieval_formats.PairsReader`);
  consecutive rows of one image are one caption sample. caption, retrieval, text_to_image.

Only ``refs_jsonl`` records carry a language; every other sample gets the ``lang`` it is opened with. Webdataset
shards stream without random access: convert them to ``cnclip`` first (`convert_retrieval_dataset`).
"""

from __future__ import annotations

import base64
import binascii
import io
import json
import os
from collections import defaultdict
from collections.abc import Sequence
from pathlib import Path
from typing import IO, Any, ClassVar

from PIL import Image


class DataFormatError(ValueError):
    """A data file that does not follow its documented format; the message names the file and line."""


FORMATS: tuple[str, ...] = ("coco_captions", "refs_jsonl", "ofa_tsv", "cnclip", "pairs_jsonl", "pairs_csv")
TASK_FORMATS: dict[str, tuple[str, ...]] = {
    "caption": ("coco_captions", "cnclip", "pairs_jsonl", "pairs_csv"),
    "grounding": ("refs_jsonl", "ofa_tsv"),
    "retrieval": ("cnclip", "pairs_jsonl", "pairs_csv", "coco_captions"),
    "text_to_image": ("coco_captions", "cnclip", "pairs_jsonl", "pairs_csv"),
}
_URLSAFE_TO_STANDARD = bytes.maketrans(b"-_", b"+/")


# ------------------------------------------------------------------------------------------- JSON formats
def read_coco_captions(path: Path, lang: str = "en") -> list[dict[str, Any]]:
    """Caption samples (one per image that has a caption) of a COCO caption JSON file."""
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise DataFormatError(f"{path}: not readable COCO caption JSON: {err}") from None
    if not isinstance(data, dict) or "images" not in data or "annotations" not in data:
        raise DataFormatError(f"{path}: expected an object with 'images' and 'annotations'")
    captions: dict[Any, list[str]] = defaultdict(list)
    for number, ann in enumerate(data["annotations"]):
        if not isinstance(ann, dict) or not isinstance(ann.get("caption"), str) or "image_id" not in ann:
            raise DataFormatError(f"{path}: annotations[{number}] needs 'image_id' and a 'caption' string")
        captions[ann["image_id"]].append(ann["caption"])
    samples = []
    for number, img in enumerate(data["images"]):
        if not isinstance(img, dict) or "id" not in img or not isinstance(img.get("file_name"), str):
            raise DataFormatError(f"{path}: images[{number}] needs 'id' and a 'file_name' string")
        if captions.get(img["id"]):
            samples.append(
                {
                    "image": path.parent / img["file_name"],
                    "captions": captions[img["id"]],
                    "lang": lang,
                    "id": img["id"],
                }
            )
    return samples


def read_refs_jsonl(path: Path, lang: str | None = None) -> list[dict[str, Any]]:
    """Grounding samples of a referring-expression JSONL file (records of another `lang` skipped)."""
    samples = []
    try:
        lines = Path(path).read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as err:
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
        if "image_id" in record:
            sample["image_id"] = record["image_id"]
        if lang is None or sample["lang"] == lang:
            samples.append(sample)
    return samples


# ------------------------------------------------------------------------------------- random access
class SampleFile(Sequence):
    """A data file as a sequence of task samples; subclasses fill `_entries` and build samples from them."""

    format: ClassVar[str]

    def __init__(self, path: Path, task: str, lang: str) -> None:
        self.path, self.task, self.lang = Path(path), task, lang
        self._entries: list[Any] = []

    def __len__(self) -> int:
        return len(self._entries)

    def __getitem__(self, index: int | slice) -> Any:
        if isinstance(index, slice):
            return [self[i] for i in range(*index.indices(len(self)))]
        if not -len(self) <= index < len(self):
            raise IndexError(f"{self.path}: sample {index} out of range for {len(self)} samples")
        return self._sample(self._entries[index])

    def _sample(self, entry: Any) -> dict[str, Any]:
        return dict(entry)  # a copy: callers may modify what they get

    def sample_id(self, index: int) -> Any:
        """The ``id`` of sample `index`, without reading its image."""
        return self._entries[index]["id"]

    def __repr__(self) -> str:
        return f"{type(self).__name__}({str(self.path)!r}, task={self.task!r}, lang={self.lang!r}, n={len(self)})"


def _check_image_files(samples: list[dict[str, Any]], path: Path) -> None:
    """Fail at opening, not in the middle of a run, when an image file a sample names is missing."""
    checked: set[Path] = set()
    for sample in samples:
        image = Path(sample["image"])
        if image not in checked:
            if not image.is_file():
                raise DataFormatError(f"{path}: image file {image} (sample {sample.get('id')}) not found")
            checked.add(image)


def _per_caption(pairs: list[dict[str, Any]], task: str) -> list[dict[str, Any]]:
    """Retrieval pairs (``id`` the caption's, ``image_id`` the image's) as `task` samples: text_to_image
    keys each sample by its image (the id its precomputed codes are stored under); retrieval keeps them."""
    if task != "text_to_image":
        return pairs
    return [{"image": p["image"], "text": p["text"], "lang": p["lang"], "id": p["image_id"]} for p in pairs]


class CocoCaptionFile(SampleFile):
    format = "coco_captions"

    def __init__(self, path: Path, task: str, lang: str) -> None:
        super().__init__(path, task, lang)
        images = read_coco_captions(self.path, lang)
        _check_image_files(images, self.path)
        if task == "caption":
            self._entries = images
        else:  # retrieval, text_to_image: one pair per caption
            pairs = [
                {"image": s["image"], "text": text, "lang": lang, "id": f"{s['id']}/{k}", "image_id": s["id"]}
                for s in images
                for k, text in enumerate(s["captions"])
            ]
            self._entries = _per_caption(pairs, task)


class RefsJsonlFile(SampleFile):
    format = "refs_jsonl"

    def __init__(self, path: Path, task: str, lang: str) -> None:
        super().__init__(path, task, lang)
        self._entries = read_refs_jsonl(self.path, lang)
        _check_image_files(self._entries, self.path)


def decode_base64_image(b64: bytes | str, where: str) -> tuple[Image.Image, bytes]:
    """(decoded PIL image, the encoded file) from base64 in either alphabet (standard or URL-safe)."""
    raw = b64.encode("ascii", "replace") if isinstance(b64, str) else b64
    try:
        data = base64.b64decode(raw.strip().translate(_URLSAFE_TO_STANDARD), validate=True)
    except binascii.Error as err:
        raise DataFormatError(f"{where}: image is not valid base64 ({err})") from None
    try:
        image = Image.open(io.BytesIO(data))
        image.load()
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as err:
        raise DataFormatError(f"{where}: not a readable image ({err})") from None
    return image, data


def parse_region(text: str, where: str) -> list[float]:
    """``"x0,y0,x1,y1"`` (the official TSV's region_coord) -> 4 floats with x0 <= x1, y0 <= y1."""
    try:
        box = [float(v) for v in text.split(",")]
    except ValueError:
        box = []
    if len(box) != 4 or box[0] > box[2] or box[1] > box[3]:
        raise DataFormatError(f"{where}: region {text!r} is not 'x0,y0,x1,y1' with x0 <= x1 and y0 <= y1")
    return box


class OFAGroundingTSV(SampleFile):
    """The official refcoco TSV (module docstring). One pass finds each line's byte offset and reads its text,
    box and ids; images are decoded from their line when a sample is asked for (each process opens its own file
    handle, so it works in DataLoader workers)."""

    format = "ofa_tsv"
    COLUMNS = 5

    def __init__(self, path: Path, task: str, lang: str) -> None:
        super().__init__(path, task, lang)
        try:
            handle = self.path.open("rb")
        except OSError as err:
            raise DataFormatError(f"{self.path}: cannot read: {err.strerror or err}") from None
        with handle:
            offset = 0
            for number, raw in enumerate(handle, start=1):
                if raw.strip():
                    uniq_id, image_id, text, region, _ = self._fields(raw, number)
                    box = parse_region(region, f"{self.path}, line {number}")
                    self._entries.append((offset, number, uniq_id, image_id, text, box))
                offset += len(raw)
        self._handle: IO[bytes] | None = None
        self._handle_pid = -1

    def _fields(self, raw: bytes, number: int) -> tuple[str, str, str, str, bytes]:
        where = f"{self.path}, line {number}"
        fields = raw.rstrip(b"\r\n").split(b"\t")
        if len(fields) != self.COLUMNS:
            raise DataFormatError(
                f"{where}: expected {self.COLUMNS} tab-separated fields "
                f"(uniq_id, image_id, text, x0,y0,x1,y1, base64 image), found {len(fields)}"
            )
        try:
            uniq_id, image_id, text, region = (f.decode("utf-8").strip() for f in fields[:4])
        except UnicodeDecodeError:
            raise DataFormatError(f"{where}: the text fields are not UTF-8") from None
        return uniq_id, image_id, text, region, fields[4]

    def _sample(self, entry: Any) -> dict[str, Any]:
        offset, number, uniq_id, image_id, text, box = entry
        if self._handle is None or self._handle_pid != os.getpid():
            self._handle, self._handle_pid = self.path.open("rb"), os.getpid()
        self._handle.seek(offset)
        b64 = self._fields(self._handle.readline(), number)[-1]
        image, data = decode_base64_image(b64, f"{self.path}, line {number} (uniq_id {uniq_id})")
        return {
            "image": image,
            "image_bytes": data,
            "text": text,
            "box": list(box),
            "lang": self.lang,
            "id": uniq_id,
            "image_id": image_id,
        }

    def sample_id(self, index: int) -> Any:
        return self._entries[index][2]

    def __getstate__(self) -> dict[str, Any]:
        # open files do not cross process boundaries (DataLoader workers); each process reopens
        return {**self.__dict__, "_handle": None, "_handle_pid": -1}


class ChineseCLIPFile(SampleFile):
    """Chinese-CLIP's image TSV + texts JSONL through `ChineseCLIPReader`'s byte-offset random access."""

    format = "cnclip"

    def __init__(self, path: Path, task: str, lang: str) -> None:
        from .retrieval_formats import ChineseCLIPReader, open_retrieval_dataset

        super().__init__(path, task, lang)
        reader = open_retrieval_dataset(self.path, "cnclip")
        assert isinstance(reader, ChineseCLIPReader)
        self.reader = reader
        texts: dict[str, list[tuple[Any, str]]] = defaultdict(list)
        for _, text_id, text, image_ids in reader.text_records():
            for image_id in image_ids:
                texts[str(image_id)].append((text_id, text))
        self._image_ids = reader.image_ids  # builds the offset index, checks the pairing
        for position, image_id in enumerate(self._image_ids):
            pairs = texts.get(str(image_id), [])
            if task == "caption" and pairs:
                self._entries.append((position, None))
            elif task in ("retrieval", "text_to_image"):
                self._entries.extend((position, pair) for pair in pairs)

    def sample_id(self, index: int) -> Any:
        position, pair = self._entries[index]
        return self._image_ids[position] if pair is None or self.task == "text_to_image" else pair[0]

    def _sample(self, entry: Any) -> dict[str, Any]:
        position, pair = entry
        record = self.reader[position]
        base = {"image": record["image"], "image_bytes": record["image_bytes"], "lang": self.lang}
        if pair is None:
            return {**base, "captions": list(record["texts"]), "id": record["image_id"]}
        text_id, text = pair
        if self.task == "text_to_image":  # keyed by the image, like its precomputed codes
            return {**base, "text": text, "id": record["image_id"]}
        return {**base, "text": text, "id": text_id, "image_id": record["image_id"]}


class PairsFile(SampleFile):
    """(image path, text) rows of a ``.jsonl`` / ``.csv`` (`PairsReader`'s row format and ids)."""

    def __init__(self, path: Path, task: str, lang: str) -> None:
        from .retrieval_formats import PairsReader

        super().__init__(path, task, lang)
        reader = PairsReader(self.path)
        self.format = f"pairs_{reader.format}"
        groups: list[dict[str, Any]] = []
        text_rows = 0
        # The rows only (no image is read): the same grouping and default ids as `PairsReader.__iter__`.
        for _, image, image_id, text, text_id in reader._rows():
            if not groups or (image, image_id) != groups[-1]["key"]:
                groups.append(
                    {
                        "key": (image, image_id),
                        "image": self.path.parent / image,
                        "id": len(groups) if image_id is None else image_id,
                        "texts": [],
                    }
                )
            if text is not None:
                groups[-1]["texts"].append((text_rows if text_id is None else text_id, text))
                text_rows += 1
        for group in groups:
            if task == "caption" and group["texts"]:
                captions = [t for _, t in group["texts"]]
                self._entries.append(
                    {"image": group["image"], "captions": captions, "lang": lang, "id": group["id"]}
                )
            elif task in ("retrieval", "text_to_image"):
                pairs = [
                    {"image": group["image"], "text": t, "lang": lang, "id": i, "image_id": group["id"]}
                    for i, t in group["texts"]
                ]
                self._entries.extend(_per_caption(pairs, task))
        _check_image_files(self._entries, self.path)


_FILE_CLASSES: dict[str, type[SampleFile]] = {
    "coco_captions": CocoCaptionFile,
    "refs_jsonl": RefsJsonlFile,
    "ofa_tsv": OFAGroundingTSV,
    "cnclip": ChineseCLIPFile,
    "pairs_jsonl": PairsFile,
    "pairs_csv": PairsFile,
}


def detect_format(path: str | Path, task: str) -> str:
    """The format name of a data file, told from its name (``.jsonl`` is refs for grounding, else pairs)."""
    path = Path(path)
    if path.name.endswith(("_imgs.tsv", "_texts.jsonl")):
        return "cnclip"
    by_suffix = {
        ".json": "coco_captions",
        ".tsv": "ofa_tsv",
        ".csv": "pairs_csv",
        ".jsonl": "refs_jsonl" if task == "grounding" else "pairs_jsonl",
    }
    if path.suffix in by_suffix:
        return by_suffix[path.suffix]
    raise DataFormatError(
        f"{path}: no reader for task {task!r} and a {path.suffix or 'extensionless'} file; "
        f"name the format (one of {', '.join(FORMATS)})"
    )


def check_format(task: str, fmt: str) -> None:
    """Raise `DataFormatError` unless format `fmt` holds samples of `task`."""
    if fmt not in FORMATS:
        raise DataFormatError(f"unknown data format {fmt!r}; known: {', '.join(FORMATS)}")
    if task not in TASK_FORMATS:
        raise DataFormatError(
            f"no data file format holds {task} samples (file tasks: {', '.join(TASK_FORMATS)})"
        )
    if fmt not in TASK_FORMATS[task]:
        raise DataFormatError(
            f"no reader for task {task!r} in format {fmt!r} (formats for {task}: {', '.join(TASK_FORMATS[task])})"
        )


def open_sample_file(path: str | Path, task: str, lang: str = "en", fmt: str | None = None) -> SampleFile:
    """The samples of `task` in the data file `path` (format from the name unless `fmt` is given)."""
    path = Path(path).expanduser()
    fmt = fmt or detect_format(path, task)
    check_format(task, fmt)
    if not path.is_file():
        raise DataFormatError(f"{path}: no such data file")
    return _FILE_CLASSES[fmt](path, task, lang)


def read_samples(path: Path, task: str, lang: str = "en", fmt: str | None = None) -> SampleFile:
    """Samples of `task` from a data file (`open_sample_file`); what `ofa eval --data` scores."""
    return open_sample_file(path, task, lang, fmt)


__all__ = [
    "FORMATS",
    "TASK_FORMATS",
    "ChineseCLIPFile",
    "CocoCaptionFile",
    "DataFormatError",
    "OFAGroundingTSV",
    "PairsFile",
    "RefsJsonlFile",
    "SampleFile",
    "check_format",
    "decode_base64_image",
    "detect_format",
    "open_sample_file",
    "parse_region",
    "read_coco_captions",
    "read_refs_jsonl",
    "read_samples",
]
