"""Image-text retrieval datasets on disk: one streaming reader interface over three formats, writers, converters.

Every reader yields image-centric samples in file order, one per image, never loading the whole dataset:

* ``image``: the :class:`PIL.Image.Image`, in the mode it was stored in (Chinese-CLIP converts to RGB only
  after resizing, so nothing is converted here); pixels are decoded when read unless ``decode=False``.
* ``image_bytes``: the encoded file exactly as stored; writers copy it, so converting never re-encodes.
* ``image_id``: ``int`` for a canonical decimal id (Chinese-CLIP ids are integers), else the ``str``.
* ``texts``: every text paired with this image (``[]`` for an image without text).
* ``text_ids``: their ids, parallel to ``texts``; a text paired with several images appears in each
  image's sample with the same id.

Formats (the ``fmt`` names of :data:`FORMATS`)
    ``cnclip``: Chinese-CLIP's official layout, named by its ``{split}_imgs.tsv`` (or ``{split}_texts.jsonl``).
        ``{split}_imgs.tsv``: lines ``image_id<TAB>base64 of the image file``, written with the standard
        alphabet and read with either alphabet, as the official reader (``urlsafe_b64decode``) does.
        ``{split}_texts.jsonl``: lines ``{"text_id": int, "text": str, "image_ids": [int, ...]}``; images and
        texts are many-to-many. ``image_ids`` may be absent (test splits without pairs). The texts file is
        held in memory; images are read line by line, and random access (``reader[i]``,
        ``reader.get(image_id)``) seeks to byte offsets found in one pass, instead of the official 1 TiB LMDB.
    ``jsonl`` / ``csv``: one (image path, text) pair per row, the path relative to the file (absolute works).
        JSONL rows ``{"image": path, "text": str, "image_id"?: id, "text_id"?: id}``; CSV columns
        ``image,text[,image_id,text_id]`` with a header. Consecutive rows with the same image (and
        ``image_id``) form one sample; a row without text (JSONL: no ``text`` or ``null``; CSV: an empty
        cell) is an image without text. Missing ids default to counters from 0 (images, text rows).
    ``wds``: webdataset tar shards (a ``.tar``, a directory of them, a brace pattern or a list), one sample
        per key: ``{key}.jpg|jpeg|png|webp|...`` plus ``{key}.json`` (``{"image_id", "texts", "text_ids"}``)
        and/or ``{key}.txt`` (one caption, what open_clip reads). ``.json`` texts win over ``.txt``.

Example::

    from ofa.data.retrieval_formats import open_retrieval_dataset, convert_retrieval_dataset
    for sample in open_retrieval_dataset("MUGE/valid_imgs.tsv"):
        print(sample["image_id"], sample["image"].size, sample["texts"])
    convert_retrieval_dataset("MUGE/valid_imgs.tsv", "muge_valid_wds", "wds")
"""

from __future__ import annotations

import base64
import binascii
import csv
import io
import json
import os
import tarfile
from abc import ABC, abstractmethod
from array import array
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any, ClassVar, TypedDict

from PIL import Image

from .formats import DataFormatError

FORMATS: tuple[str, ...] = ("cnclip", "jsonl", "csv", "wds")
Id = int | str

# PIL format name -> file extension used when writing image files and shard members.
_EXTENSIONS: dict[str, str] = {
    "PNG": "png",
    "JPEG": "jpg",
    "WEBP": "webp",
    "GIF": "gif",
    "BMP": "bmp",
    "TIFF": "tiff",
}
_WDS_IMAGE_KEYS: tuple[str, ...] = ("jpg", "jpeg", "png", "webp", "gif", "bmp", "tif", "tiff")
_URLSAFE_TO_STANDARD = bytes.maketrans(b"-_", b"+/")
_CNCLIP_IMGS, _CNCLIP_TEXTS = "_imgs.tsv", "_texts.jsonl"


class RetrievalSample(TypedDict):
    """One image with all its texts (see the module docstring)."""

    image: Image.Image
    image_bytes: bytes
    image_id: Id
    texts: list[str]
    text_ids: list[Id]


# ------------------------------------------------------------------------------ shared helpers


def _parse_id(raw: str) -> Id:
    """An id read as text: ``int`` when it is a canonical decimal ("7"), else kept as written ("007", "a1")."""
    if raw.isascii() and raw.isdigit() and str(int(raw)) == raw:
        return int(raw)
    return raw


def _is_id(value: Any) -> bool:
    return isinstance(value, (int, str)) and not isinstance(value, bool)


def _open_image(data: bytes, decode: bool, where: str) -> Image.Image:
    try:
        image = Image.open(io.BytesIO(data))
        if decode:
            image.load()
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as err:
        raise DataFormatError(f"{where}: not a readable image ({err})") from None
    return image


def _sample(
    image: Image.Image, data: bytes, image_id: Id, texts: list[str], ids: list[Id]
) -> RetrievalSample:
    return {"image": image, "image_bytes": data, "image_id": image_id, "texts": texts, "text_ids": ids}


def _cnclip_paths(path: Path) -> tuple[Path, Path]:
    """``({split}_imgs.tsv, {split}_texts.jsonl)`` from either name."""
    for suffix in (_CNCLIP_IMGS, _CNCLIP_TEXTS):
        if path.name.endswith(suffix) and len(path.name) > len(suffix):
            split = path.name[: -len(suffix)]
            return path.with_name(split + _CNCLIP_IMGS), path.with_name(split + _CNCLIP_TEXTS)
    raise DataFormatError(f"{path}: a Chinese-CLIP dataset is named '{{split}}{_CNCLIP_IMGS}'")


# ------------------------------------------------------------------------------ readers


class RetrievalReader(ABC):
    """A retrieval dataset on disk, iterated as :class:`RetrievalSample` dicts in file order, streaming."""

    format: ClassVar[str]

    def __init__(self, decode: bool = True) -> None:
        self.decode = decode

    @abstractmethod
    def __iter__(self) -> Iterator[RetrievalSample]: ...


class ChineseCLIPReader(RetrievalReader):
    """Chinese-CLIP's ``{split}_imgs.tsv`` + ``{split}_texts.jsonl``, read as the official scripts read them.

    Iteration streams the TSV. ``len(reader)``, ``reader[i]`` (i-th image line) and ``reader.get(image_id)``
    build a byte-offset index in one pass on first use, so random access works without loading images
    (usable as a map-style torch ``Dataset``; each worker process opens its own file handle).
    """

    format = "cnclip"

    def __init__(self, imgs_tsv: str | Path, texts_jsonl: str | Path | None = None, *, decode: bool = True):
        super().__init__(decode)
        imgs_tsv = Path(imgs_tsv)
        self.imgs_path, default_texts = _cnclip_paths(imgs_tsv) if texts_jsonl is None else (imgs_tsv, None)
        self.texts_path = Path(texts_jsonl) if texts_jsonl is not None else default_texts
        for path in (self.imgs_path, self.texts_path):
            if not path.is_file():
                raise DataFormatError(f"{path}: no such file")
        # image id (as written in the TSV) -> [(text_id, text)], and -> (line, text_id) of its first mention
        self._texts_by_image: dict[str, list[tuple[Id, str]]] = {}
        self._first_mention: dict[str, tuple[int, Id]] = {}
        for number, text_id, text, image_ids in self.text_records():
            for image_id in image_ids:
                key = str(image_id)
                self._texts_by_image.setdefault(key, []).append((text_id, text))
                self._first_mention.setdefault(key, (number, text_id))
        self._index: tuple[list[str], array, array, dict[str, int]] | None = None
        self._handle: IO[bytes] | None = None
        self._handle_pid = -1

    def text_records(self) -> Iterator[tuple[int, Id, str, list[Id]]]:
        """``(line number, text_id, text, image_ids)`` of every line of the texts file, including texts
        without images (which image-centric samples cannot show)."""
        with self.texts_path.open(encoding="utf-8") as lines:
            for number, line in enumerate(lines, start=1):
                if line.strip():
                    yield (number, *self._parse_text_line(line, number))

    def _parse_text_line(self, line: str, number: int) -> tuple[Id, str, list[Id]]:
        where = f"{self.texts_path}, line {number}"
        try:
            record = json.loads(line)
        except json.JSONDecodeError as err:
            raise DataFormatError(f"{where}: not a JSON object ({err.msg})") from None
        if not isinstance(record, dict) or "text_id" not in record or "text" not in record:
            raise DataFormatError(
                f"{where}: expected {{'text_id', 'text', 'image_ids'}}, got {line.strip()[:80]}"
            )
        text_id, text, image_ids = record["text_id"], record["text"], record.get("image_ids", [])
        if not _is_id(text_id):
            raise DataFormatError(f"{where}: text_id must be an integer, got {text_id!r}")
        if not isinstance(text, str):
            raise DataFormatError(f"{where}: text must be a string, got {text!r}")
        if not isinstance(image_ids, list) or not all(_is_id(i) for i in image_ids):
            raise DataFormatError(f"{where}: image_ids must be a list of integers, got {image_ids!r}")
        return text_id, text, image_ids

    def _lines(self) -> Iterator[tuple[int, int, bytes]]:
        """``(line number, byte offset, stripped line)`` of each non-blank TSV line."""
        with self.imgs_path.open("rb") as lines:
            offset = 0
            for number, raw in enumerate(lines, start=1):
                line = raw.strip()
                if line:
                    yield number, offset, line
                offset += len(raw)

    def _split(self, line: bytes, number: int) -> tuple[str, bytes]:
        key, tab, b64 = line.partition(b"\t")
        if not tab or b"\t" in b64:
            fields = line.count(b"\t") + 1
            raise DataFormatError(
                f"{self.imgs_path}, line {number}: expected 'image_id<TAB>base64 image', "
                f"found {fields} tab-separated field(s)"
            )
        try:
            return key.strip().decode("utf-8"), b64.strip()
        except UnicodeDecodeError:
            raise DataFormatError(f"{self.imgs_path}, line {number}: image id is not UTF-8") from None

    def _to_sample(self, key: str, b64: bytes, number: int) -> RetrievalSample:
        where = f"{self.imgs_path}, line {number} (image {key})"
        try:
            data = base64.b64decode(b64.translate(_URLSAFE_TO_STANDARD), validate=True)
        except binascii.Error as err:
            raise DataFormatError(f"{where}: image is not valid base64 ({err})") from None
        image = _open_image(data, self.decode, where)
        pairs = self._texts_by_image.get(key, [])
        return _sample(image, data, _parse_id(key), [t for _, t in pairs], [i for i, _ in pairs])

    def _check_mentions(self, keys: Iterable[str]) -> None:
        unseen = self._first_mention.keys() - set(keys)
        if unseen:
            number, text_id = min(self._first_mention[k] for k in unseen)
            missing = next(k for k in unseen if self._first_mention[k] == (number, text_id))
            raise DataFormatError(
                f"{self.texts_path}, line {number}: text {text_id} is paired with image {missing}, "
                f"which {self.imgs_path} does not contain"
            )

    def __iter__(self) -> Iterator[RetrievalSample]:
        seen: set[str] = set()
        for number, _, line in self._lines():
            key, b64 = self._split(line, number)
            if key in seen:
                raise DataFormatError(
                    f"{self.imgs_path}, line {number}: image id {key} appears a second time"
                )
            seen.add(key)
            yield self._to_sample(key, b64, number)
        self._check_mentions(seen)

    # random access ---------------------------------------------------------------------------

    def _ensure_index(self) -> tuple[list[str], array, array, dict[str, int]]:
        if self._index is None:
            keys: list[str] = []
            offsets, numbers = array("q"), array("q")
            position: dict[str, int] = {}
            for number, offset, line in self._lines():
                key, _ = self._split(line, number)
                if key in position:
                    raise DataFormatError(
                        f"{self.imgs_path}, line {number}: image id {key} appears a second time"
                    )
                position[key] = len(keys)
                keys.append(key)
                offsets.append(offset)
                numbers.append(number)
            self._check_mentions(position)
            self._index = (keys, offsets, numbers, position)
        return self._index

    def __len__(self) -> int:
        return len(self._ensure_index()[0])

    @property
    def image_ids(self) -> list[Id]:
        """Image ids in file order (builds the index)."""
        return [_parse_id(k) for k in self._ensure_index()[0]]

    def __getitem__(self, index: int) -> RetrievalSample:
        keys, offsets, numbers, _ = self._ensure_index()
        if not -len(keys) <= index < len(keys):
            raise IndexError(f"image index {index} out of range for {len(keys)} images")
        if self._handle is None or self._handle_pid != os.getpid():
            self._handle, self._handle_pid = self.imgs_path.open("rb"), os.getpid()
        self._handle.seek(offsets[index])
        key, b64 = self._split(self._handle.readline().strip(), numbers[index])
        return self._to_sample(key, b64, numbers[index])

    def get(self, image_id: Id) -> RetrievalSample:
        """The sample of ``image_id`` (builds the index); ``KeyError`` if the TSV has no such image."""
        position = self._ensure_index()[3].get(str(image_id))
        if position is None:
            raise KeyError(f"{self.imgs_path} has no image {image_id!r}")
        return self[position]

    def __getstate__(self) -> dict[str, Any]:
        # open files do not cross process boundaries (DataLoader workers); each process reopens
        return {**self.__dict__, "_handle": None, "_handle_pid": -1}


class PairsReader(RetrievalReader):
    """(image path, text) rows of a ``.jsonl`` or ``.csv`` file; consecutive rows of one image are one sample."""

    def __init__(self, path: str | Path, *, decode: bool = True):
        super().__init__(decode)
        self.path = Path(path)
        if self.path.suffix not in (".jsonl", ".csv"):
            raise DataFormatError(f"{self.path}: a pairs file ends in .jsonl or .csv")
        if not self.path.is_file():
            raise DataFormatError(f"{self.path}: no such file")
        self.format = self.path.suffix[1:]

    def _rows(self) -> Iterator[tuple[int, str, Id | None, str | None, Id | None]]:
        """``(line number, image path, image_id, text, text_id)``; absent values are ``None``."""
        with self.path.open(encoding="utf-8", newline="" if self.format == "csv" else None) as lines:
            if self.format == "csv":
                reader = csv.DictReader(lines)
                missing = {"image", "text"} - set(reader.fieldnames or ())
                if missing:
                    raise DataFormatError(
                        f"{self.path}, line 1: the header lacks column(s) {sorted(missing)}"
                    )
                for row in reader:
                    where = f"{self.path}, line {reader.line_num}"
                    if None in row or any(value is None for value in row.values()):
                        raise DataFormatError(f"{where}: expected {len(reader.fieldnames)} fields")
                    ids = [_parse_id(row[c]) if row.get(c) else None for c in ("image_id", "text_id")]
                    yield reader.line_num, row["image"], ids[0], row["text"] or None, ids[1]
                return
            for number, line in enumerate(lines, start=1):
                if line.strip():
                    yield (number, *self._parse_json_row(line, f"{self.path}, line {number}"))

    @staticmethod
    def _parse_json_row(line: str, where: str) -> tuple[str, Id | None, str | None, Id | None]:
        try:
            row = json.loads(line)
        except json.JSONDecodeError as err:
            raise DataFormatError(f"{where}: not a JSON object ({err.msg})") from None
        if not isinstance(row, dict) or not isinstance(row.get("image"), str):
            raise DataFormatError(
                f"{where}: expected {{'image': path, 'text': str}}, got {line.strip()[:80]}"
            )
        text = row.get("text")
        if text is not None and not isinstance(text, str):
            raise DataFormatError(f"{where}: text must be a string, got {text!r}")
        for name in ("image_id", "text_id"):
            if row.get(name) is not None and not _is_id(row[name]):
                raise DataFormatError(f"{where}: {name} must be an integer or a string, got {row[name]!r}")
        return row["image"], row.get("image_id"), text, row.get("text_id")

    def __iter__(self) -> Iterator[RetrievalSample]:
        group: dict[str, Any] | None = None
        images = text_rows = 0
        for number, image, image_id, text, text_id in self._rows():
            if group is None or (image, image_id) != group["key"]:
                if group is not None:
                    yield self._load(group)
                group = {"key": (image, image_id), "line": number, "texts": [], "text_ids": []}
                group["image_id"] = images if image_id is None else image_id
                images += 1
            if text is not None:
                group["texts"].append(text)
                group["text_ids"].append(text_rows if text_id is None else text_id)
                text_rows += 1
        if group is not None:
            yield self._load(group)

    def _load(self, group: dict[str, Any]) -> RetrievalSample:
        where = f"{self.path}, line {group['line']}"
        file = self.path.parent / group["key"][0]
        try:
            data = file.read_bytes()
        except OSError as err:
            reason = "not found" if isinstance(err, FileNotFoundError) else f"unreadable ({err.strerror})"
            raise DataFormatError(f"{where}: image file {file} {reason}") from None
        image = _open_image(data, self.decode, f"{where}: {file}")
        return _sample(image, data, group["image_id"], group["texts"], group["text_ids"])


class WebDatasetReader(RetrievalReader):
    """webdataset tar shards, streamed member by member through ``webdataset``'s tar iterator."""

    format = "wds"

    def __init__(self, shards: str | Path | Sequence[str | Path], *, decode: bool = True):
        super().__init__(decode)
        self.shards = _expand_shards(shards)

    def __iter__(self) -> Iterator[RetrievalSample]:
        # imported here: webdataset pulls in torch, and the other formats do not need it
        from webdataset.tariterators import group_by_keys, tar_file_expander

        text_count = 0
        for shard in self.shards:
            with shard.open("rb") as stream:
                records = group_by_keys(tar_file_expander([{"url": str(shard), "stream": stream}]))
                while True:
                    try:
                        record = next(records)
                    except StopIteration:
                        break
                    except (tarfile.TarError, OSError, ValueError) as err:
                        reason = str(err.args[0]).split(" @ ")[0] if err.args else type(err).__name__
                        raise DataFormatError(f"{shard}: not a readable tar shard ({reason})") from None
                    sample = self._to_sample(shard, record, text_count)
                    text_count += len(sample["texts"])
                    yield sample

    def _to_sample(self, shard: Path, record: dict[str, Any], text_count: int) -> RetrievalSample:
        key = record["__key__"]
        where = f"{shard}, sample {key}"
        image_key = next((k for k in _WDS_IMAGE_KEYS if k in record), None)
        if image_key is None:
            raise DataFormatError(f"{where}: no image member (.{', .'.join(_WDS_IMAGE_KEYS)})")
        meta: dict[str, Any] = {}
        if "json" in record:
            try:
                meta = json.loads(record["json"])
            except (json.JSONDecodeError, UnicodeDecodeError) as err:
                raise DataFormatError(f"{where}: {key}.json is not JSON ({err})") from None
            if not isinstance(meta, dict):
                raise DataFormatError(f"{where}: {key}.json must hold an object")
        if "texts" in meta:
            texts = meta["texts"]
            if not isinstance(texts, list) or not all(isinstance(t, str) for t in texts):
                raise DataFormatError(f"{where}: 'texts' in {key}.json must be a list of strings")
        elif "txt" in record:
            caption = record["txt"].decode("utf-8", errors="replace").strip()
            texts = [caption] if caption else []
        else:
            texts = []
        text_ids = meta.get("text_ids", list(range(text_count, text_count + len(texts))))
        if not isinstance(text_ids, list) or len(text_ids) != len(texts) or not all(map(_is_id, text_ids)):
            raise DataFormatError(f"{where}: 'text_ids' in {key}.json must be {len(texts)} ids, one per text")
        image_id = meta.get("image_id", _parse_id(key.rsplit("/", 1)[-1]))
        if not _is_id(image_id):
            raise DataFormatError(f"{where}: 'image_id' in {key}.json must be an integer or a string")
        data = record[image_key]
        return _sample(
            _open_image(data, self.decode, f"{where}.{image_key}"), data, image_id, texts, text_ids
        )


def _expand_shards(shards: str | Path | Sequence[str | Path]) -> list[Path]:
    if isinstance(shards, (str, Path)):
        if isinstance(shards, str) and "{" in shards:
            from braceexpand import braceexpand  # a webdataset dependency

            paths = [Path(p) for p in braceexpand(shards)]
        elif Path(shards).is_dir():
            paths = sorted(Path(shards).glob("*.tar"))
            if not paths:
                raise DataFormatError(f"{shards}: a directory without .tar shards")
        else:
            paths = [Path(shards)]
    else:
        paths = [Path(p) for p in shards]
    for path in paths:
        if not path.is_file():
            raise DataFormatError(f"{path}: no such shard")
    return paths


def detect_retrieval_format(src: str | Path | Sequence[str | Path]) -> str:
    """The :data:`FORMATS` name that ``src`` is written in, told from its name (or shard directory)."""
    if not isinstance(src, (str, Path)) or (isinstance(src, str) and "{" in src):
        return "wds"
    path = Path(src)
    if path.is_dir():
        if any(path.glob("*.tar")):
            return "wds"
        raise DataFormatError(
            f"{path}: a directory without .tar shards (name a Chinese-CLIP dataset by its _imgs.tsv)"
        )
    if path.name.endswith((_CNCLIP_IMGS, _CNCLIP_TEXTS)):
        return "cnclip"
    if path.suffix in (".jsonl", ".csv", ".tar"):
        return {".jsonl": "jsonl", ".csv": "csv", ".tar": "wds"}[path.suffix]
    raise DataFormatError(
        f"{path}: cannot tell the retrieval format from the name; pass fmt= one of {FORMATS}"
    )


def open_retrieval_dataset(
    src: str | Path | Sequence[str | Path], fmt: str | None = None, *, decode: bool = True
) -> RetrievalReader:
    """A streaming reader of the retrieval dataset at ``src`` (format from the name unless ``fmt`` is given).

    ``src``: a ``{split}_imgs.tsv`` or ``{split}_texts.jsonl`` (``cnclip``), a ``.jsonl`` or ``.csv`` of
    pairs, a ``.tar`` shard, a directory of shards, a brace pattern or a list of shards (``wds``).
    ``decode=False`` opens images without decoding their pixels (for converting).
    """
    fmt = fmt or detect_retrieval_format(src)
    if fmt == "wds":
        return WebDatasetReader(src, decode=decode)
    if not isinstance(src, (str, Path)):
        raise DataFormatError(f"format {fmt!r} reads one path, got {type(src).__name__}")
    if fmt == "cnclip":
        return ChineseCLIPReader(_cnclip_paths(Path(src))[0], decode=decode)
    if fmt in ("jsonl", "csv"):
        if Path(src).suffix != f".{fmt}":
            raise DataFormatError(f"{src}: a {fmt} pairs file must end in .{fmt}")
        return PairsReader(src, decode=decode)
    raise DataFormatError(f"unknown retrieval format {fmt!r}; expected one of {FORMATS}")


# ------------------------------------------------------------------------------ writers


@dataclass
class _Item:
    image_id: Id
    texts: list[str]
    text_ids: list[Id]
    data: bytes
    extension: str


def _png(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def _item(sample: Mapping[str, Any]) -> _Item:
    """Checks a sample to write; ``image_bytes`` are written as they are, else ``image`` is saved as PNG."""
    missing = [k for k in ("image_id", "texts", "text_ids") if k not in sample]
    if missing:
        raise ValueError(f"a retrieval sample needs {missing}; it has {sorted(sample)}")
    image_id, texts, text_ids = sample["image_id"], sample["texts"], sample["text_ids"]
    if not _is_id(image_id):
        raise ValueError(f"image_id must be an integer or a string, got {image_id!r}")
    if not isinstance(texts, list) or not all(isinstance(t, str) for t in texts):
        raise ValueError(f"image {image_id}: texts must be a list of strings")
    if not isinstance(text_ids, list) or len(text_ids) != len(texts) or not all(map(_is_id, text_ids)):
        raise ValueError(f"image {image_id}: text_ids must be {len(texts)} ids, one per text")
    data = sample.get("image_bytes")
    if data is None:
        if not isinstance(sample.get("image"), Image.Image):
            raise ValueError(f"image {image_id}: the sample has neither image_bytes nor a PIL image")
        data = _png(sample["image"])
    image_format = _open_image(data, False, f"image {image_id}").format
    if image_format not in _EXTENSIONS:
        raise ValueError(
            f"image {image_id}: cannot store a {image_format} image; use one of {sorted(_EXTENSIONS)}"
        )
    return _Item(image_id, texts, text_ids, data, _EXTENSIONS[image_format])


class RetrievalWriter(ABC):
    """Writes :class:`RetrievalSample`-like dicts in one format; use as a context manager.

    A sample needs ``image_id``, ``texts``, ``text_ids`` and ``image_bytes`` (copied verbatim) or ``image``
    (a PIL image, saved as PNG). After :meth:`close`, ``paths`` names what was written and ``count`` is
    the number of images.
    """

    format: ClassVar[str]

    def __init__(self) -> None:
        self.count = 0
        self.paths: dict[str, Path] = {}

    def write(self, sample: Mapping[str, Any]) -> None:
        """Append one image with its texts."""
        self._write(_item(sample))
        self.count += 1

    @abstractmethod
    def _write(self, item: _Item) -> None: ...

    @abstractmethod
    def close(self) -> dict[str, Path]:
        """Finish the files; returns ``paths``."""

    def __enter__(self) -> RetrievalWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class ChineseCLIPWriter(RetrievalWriter):
    """Writes ``{split}_imgs.tsv`` as it goes and ``{split}_texts.jsonl`` at :meth:`close` (a text's
    ``image_ids`` are only known once every image is written). Ids must be integers, as the official
    scripts require."""

    format = "cnclip"

    def __init__(self, imgs_tsv: str | Path):
        super().__init__()
        self.imgs_path, self.texts_path = _cnclip_paths(Path(imgs_tsv))
        self.imgs_path.parent.mkdir(parents=True, exist_ok=True)
        self._imgs = self.imgs_path.open("w", encoding="utf-8")
        self._texts: dict[int, tuple[str, list[int]]] = {}
        self._images: set[int] = set()

    def _write(self, item: _Item) -> None:
        for what, value in [("image id", item.image_id)] + [("text id", i) for i in item.text_ids]:
            if not isinstance(value, int):
                raise ValueError(
                    f"Chinese-CLIP {what}s are integers; image {item.image_id!r} has {what} {value!r}"
                )
        if item.image_id in self._images:
            raise ValueError(f"image id {item.image_id} is written twice")
        self._images.add(item.image_id)
        self._imgs.write(f"{item.image_id}\t{base64.b64encode(item.data).decode('ascii')}\n")
        for text_id, text in zip(item.text_ids, item.texts):
            known = self._texts.setdefault(text_id, (text, []))
            if known[0] != text:
                raise ValueError(f"text id {text_id} has two texts: {known[0]!r} and {text!r}")
            known[1].append(item.image_id)

    def close(self) -> dict[str, Path]:
        if self._imgs.closed:
            return self.paths
        self._imgs.close()
        with self.texts_path.open("w", encoding="utf-8") as out:
            for text_id, (text, image_ids) in self._texts.items():
                record = {"text_id": text_id, "text": text, "image_ids": image_ids}
                out.write(json.dumps(record, ensure_ascii=False) + "\n")
        self.paths = {"imgs": self.imgs_path, "texts": self.texts_path}
        return self.paths


class PairsWriter(RetrievalWriter):
    """One row per (image, text) in a ``.jsonl`` or ``.csv``; image files go to ``images_dir`` (default
    ``{stem}_images/`` beside the file) and rows name them relative to the file."""

    def __init__(self, path: str | Path, images_dir: str | Path | None = None):
        super().__init__()
        self.path = Path(path)
        if self.path.suffix not in (".jsonl", ".csv"):
            raise ValueError(f"{self.path}: a pairs file ends in .jsonl or .csv")
        self.format = self.path.suffix[1:]
        self.images_dir = (
            Path(images_dir) if images_dir is not None else self.path.with_name(f"{self.path.stem}_images")
        )
        self.images_dir.mkdir(parents=True, exist_ok=True)
        self._out = self.path.open("w", encoding="utf-8", newline="" if self.format == "csv" else None)
        if self.format == "csv":
            self._csv = csv.writer(self._out)
            self._csv.writerow(["image", "text", "image_id", "text_id"])

    def _write(self, item: _Item) -> None:
        file = self.images_dir / f"{self.count:08d}.{item.extension}"
        file.write_bytes(item.data)
        image = Path(os.path.relpath(file, self.path.parent)).as_posix()
        rows = [(t, i) for t, i in zip(item.texts, item.text_ids)] or [(None, None)]
        for text, text_id in rows:
            if self.format == "csv":
                self._csv.writerow([image, text or "", item.image_id, "" if text_id is None else text_id])
            else:
                record = {"image": image, "image_id": item.image_id}
                if text is not None:
                    record.update(text=text, text_id=text_id)
                self._out.write(json.dumps(record, ensure_ascii=False) + "\n")

    def close(self) -> dict[str, Path]:
        self._out.close()
        self.paths = {self.format: self.path, "images": self.images_dir}
        return self.paths


class WebDatasetWriter(RetrievalWriter):
    """``shard-000000.tar``, ... in ``out_dir`` (which must hold no shards yet) through ``webdataset``'s
    ShardWriter, ``shard_size`` images each; keys are running numbers, ids and texts live in ``.json``."""

    format = "wds"

    def __init__(self, out_dir: str | Path, shard_size: int = 1000):
        super().__init__()
        from webdataset import ShardWriter  # imported here: webdataset pulls in torch

        self.out_dir = Path(out_dir).resolve()  # absolute, so webdataset never reads it as a URL scheme
        if self.out_dir.exists() and any(self.out_dir.glob("*.tar")):
            raise ValueError(f"{self.out_dir} already holds .tar shards; write to an empty directory")
        if shard_size < 1:
            raise ValueError(f"shard_size must be positive, got {shard_size}")
        self.out_dir.mkdir(parents=True, exist_ok=True)
        pattern = str(self.out_dir).replace("%", "%%") + "/shard-%06d.tar"
        self._shards = ShardWriter(pattern, maxcount=shard_size, verbose=0, encoder=False, mtime=0)
        self._open = True

    def _write(self, item: _Item) -> None:
        meta = {"image_id": item.image_id, "texts": item.texts, "text_ids": item.text_ids}
        record = {"__key__": f"{self.count:09d}", item.extension: item.data}
        record["json"] = json.dumps(meta, ensure_ascii=False).encode("utf-8")
        if item.texts:
            record["txt"] = item.texts[0].encode("utf-8")
        self._shards.write(record)

    def close(self) -> dict[str, Path]:
        if self._open:
            self._shards.close()
            self._open = False
        self.paths = {"shards": self.out_dir}
        return self.paths


def open_retrieval_writer(dst: str | Path, fmt: str, **options: Any) -> RetrievalWriter:
    """A writer of format ``fmt`` at ``dst``: the ``{split}_imgs.tsv`` path (``cnclip``), the ``.jsonl`` /
    ``.csv`` file (options: ``images_dir``), or the shard directory (``wds``; options: ``shard_size``)."""
    if fmt == "cnclip":
        return ChineseCLIPWriter(dst, **options)
    if fmt in ("jsonl", "csv"):
        if Path(dst).suffix != f".{fmt}":
            raise ValueError(f"{dst}: a {fmt} pairs file must end in .{fmt}")
        return PairsWriter(dst, **options)
    if fmt == "wds":
        return WebDatasetWriter(dst, **options)
    raise ValueError(f"unknown retrieval format {fmt!r}; expected one of {FORMATS}")


def write_retrieval_dataset(
    samples: Iterable[Mapping[str, Any]], dst: str | Path, fmt: str, **options: Any
) -> dict[str, Path]:
    """Writes ``samples`` (see :class:`RetrievalWriter`) to ``dst`` in ``fmt``; returns the written paths."""
    with open_retrieval_writer(dst, fmt, **options) as writer:
        for sample in samples:
            writer.write(sample)
    return writer.paths


def convert_retrieval_dataset(
    src: str | Path | Sequence[str | Path],
    dst: str | Path,
    fmt: str,
    *,
    src_fmt: str | None = None,
    **options: Any,
) -> dict[str, Path]:
    """Copies the retrieval dataset at ``src`` into format ``fmt`` at ``dst``, streaming, image files
    byte for byte. Texts without any image (possible in ``cnclip``) have no sample and are not carried."""
    reader = open_retrieval_dataset(src, src_fmt, decode=False)
    if isinstance(src, (str, Path)) and Path(src).resolve() == Path(dst).resolve():
        raise ValueError(f"{src}: converting a dataset onto itself")
    return write_retrieval_dataset(reader, dst, fmt, **options)
