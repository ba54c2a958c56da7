"""Offline code extraction: tokenize a whole image collection once and store the codes compactly.

`extract_file_codes` (`ofa extract-codes`) does it for every distinct image of a caption data file, keyed by
the image ids its `text_to_image` samples carry, so training reads targets instead of re-encoding each epoch.

The file is safetensors: `codes` (N, h, w) uint16 and, for integer image ids, `ids` (N,) int64; string ids
are kept as a JSON list in the header metadata. The metadata also records `codebook_size` and
`image_size`, so a reader can check that the codes fit its vocabulary.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from PIL import Image

from ofa.data.images import ImageError, ImageLike, load_image
from ofa.tokenization.image.configuration import ImageTokenizerError
from ofa.tokenization.image.modeling import ImageTokenizer

if TYPE_CHECKING:
    from ofa.data.formats import SampleFile

CODES_FORMAT = "ofa-image-codes"


def image_to_unit_tensor(image: ImageLike, size: int) -> torch.Tensor:
    """(3, size, size) float in [0, 1]: shorter side resized to `size` (Lanczos, as OFA's code extraction
    does), then centre-cropped to a square."""
    picture = load_image(image)
    width, height = picture.size
    scale = size / min(width, height)
    resized = picture.resize(
        (max(size, round(width * scale)), max(size, round(height * scale))), Image.LANCZOS
    )
    left = (resized.width - size) // 2
    top = (resized.height - size) // 2
    cropped = resized.crop((left, top, left + size, top + size))
    array = np.asarray(cropped, dtype=np.float32) / 255.0
    return torch.from_numpy(array).permute(2, 0, 1).contiguous()


@dataclass
class ImageCodes:
    """Codes read back from `extract_codes`: `codes[i]` (h, w) uint16 belongs to image `ids[i]`."""

    ids: list[int] | list[str]
    codes: np.ndarray
    codebook_size: int
    image_size: int
    path: Path | None = None  # the file it was read from, for messages

    @property
    def grid(self) -> tuple[int, int]:
        """(h, w): codes per image side."""
        return int(self.codes.shape[1]), int(self.codes.shape[2])

    def __len__(self) -> int:
        return len(self.ids)

    def as_tensor(self) -> torch.Tensor:
        """All codes as an int64 tensor (N, h, w), ready for `ImageTokenizer.decode`."""
        return torch.from_numpy(self.codes.astype(np.int64))


def _batches(
    items: Iterable[tuple[int | str, ImageLike]], size: int
) -> Iterator[list[tuple[int | str, ImageLike]]]:
    batch: list[tuple[int | str, ImageLike]] = []
    for item in items:
        batch.append(item)
        if len(batch) == size:
            yield batch
            batch = []
    if batch:
        yield batch


def extract_codes(
    tokenizer: ImageTokenizer,
    images: Iterable[tuple[int | str, ImageLike]],
    out_path: str | Path,
    image_size: int | None = None,
    batch_size: int = 32,
) -> int:
    """Encode `(image_id, image)` pairs and write their codes to `out_path` (safetensors); return the count.

    Images are anything `ofa.data.images.load_image` accepts (paths, PIL images, arrays), resized and
    centre-cropped to `image_size` (default: the tokenizer's resolution). Ids must be all integers or all
    strings, and unique. The file is written to a temporary name and moved into place at the end.
    """
    from ofa.convert.safetensors_io import save_safetensors

    size = tokenizer.config.resolution if image_size is None else int(image_size)
    tokenizer.grid(size)  # validates the size
    if batch_size < 1:
        raise ImageTokenizerError(f"batch_size must be positive, got {batch_size}")
    device = tokenizer.quant_conv.weight.device
    ids: list[int | str] = []
    chunks: list[np.ndarray] = []
    for batch in _batches(images, batch_size):
        tensors = []
        for item in batch:
            if not isinstance(item, tuple) or len(item) != 2:
                raise ImageTokenizerError("images must yield (image_id, image) pairs")
            image_id, image = item
            try:
                tensors.append(image_to_unit_tensor(image, size))
            except ImageError as err:
                raise ImageTokenizerError(f"image {image_id!r}: {err}") from None
            ids.append(image_id)
        codes = tokenizer.encode(torch.stack(tensors).to(device))
        chunks.append(codes.cpu().numpy().astype(np.uint16))
    if not ids:
        raise ImageTokenizerError("no images to extract codes from")
    int_ids = all(isinstance(i, (int, np.integer)) and not isinstance(i, bool) for i in ids)
    if not int_ids and not all(isinstance(i, str) for i in ids):
        raise ImageTokenizerError("image ids must be all integers or all strings")
    if len(set(ids)) != len(ids):
        raise ImageTokenizerError("image ids are not unique")
    tensors_out = {"codes": np.ascontiguousarray(np.concatenate(chunks))}
    metadata = {
        "format": CODES_FORMAT,
        "codebook_size": str(tokenizer.codebook_size),
        "image_size": str(size),
    }
    if int_ids:
        tensors_out["ids"] = np.asarray(ids, dtype=np.int64)
    else:
        metadata["string_ids"] = json.dumps(ids, ensure_ascii=False)
    out_path = Path(out_path)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    partial = out_path.with_name(out_path.name + ".partial")
    save_safetensors(tensors_out, partial, metadata=metadata)
    os.replace(partial, out_path)
    return len(ids)


def read_codes(path: str | Path) -> ImageCodes:
    """Read a file written by `extract_codes`."""
    from safetensors import SafetensorError, safe_open

    path = Path(path)
    if not path.is_file():
        raise ImageTokenizerError(f"{path}: no such codes file")
    try:
        with safe_open(str(path), framework="np") as handle:
            metadata = handle.metadata() or {}
            names = set(handle.keys())
            if metadata.get("format") != CODES_FORMAT or "codes" not in names:
                raise ImageTokenizerError(f"{path}: not an image-codes file (format != {CODES_FORMAT!r})")
            codes = handle.get_tensor("codes")
            ids = handle.get_tensor("ids").tolist() if "ids" in names else json.loads(metadata["string_ids"])
    except (SafetensorError, OSError, KeyError, json.JSONDecodeError) as err:
        raise ImageTokenizerError(f"{path}: not a readable image-codes file: {err}") from None
    if codes.dtype != np.uint16 or codes.ndim != 3 or len(ids) != codes.shape[0]:
        raise ImageTokenizerError(f"{path}: codes {codes.dtype} {codes.shape} do not match {len(ids)} ids")
    return ImageCodes(ids, codes, int(metadata["codebook_size"]), int(metadata["image_size"]), path)


def _distinct_images(samples: SampleFile) -> Iterator[tuple[int | str, ImageLike]]:
    """(image id, image) once per id, in file order; each image is read only when it is encoded."""
    first: dict[Any, int] = {}
    for index in range(len(samples)):
        first.setdefault(samples.sample_id(index), index)
    as_strings = not all(isinstance(i, (int, np.integer)) and not isinstance(i, bool) for i in first)
    for image_id, index in first.items():
        yield (str(image_id) if as_strings else int(image_id)), samples[index]["image"]


def extract_file_codes(
    tokenizer: ImageTokenizer,
    data: str | Path,
    out_path: str | Path,
    fmt: str | None = None,
    lang: str = "en",
    batch_size: int = 32,
) -> int:
    """Encode every distinct image of a caption data file once (`extract_codes`); return the image count.

    The file is read as `text_to_image` samples (`ofa.data.formats`: coco_captions, cnclip, pairs_*), and each
    image's codes are stored under the ``id`` those samples carry, which is how training finds them
    (`data.task_options.text_to_image.codes`). Ids mixing integers and strings are all stored as strings.
    """
    from ofa.data.formats import open_sample_file

    samples = open_sample_file(data, "text_to_image", lang, fmt)
    return extract_codes(tokenizer, _distinct_images(samples), out_path, batch_size=batch_size)
