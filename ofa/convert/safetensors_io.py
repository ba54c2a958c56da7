"""Byte-reproducible safetensors files.

safetensors writes the ``__metadata__`` entries of the JSON header in a random order (a Rust ``HashMap``;
safetensors issue #584), so the same tensors and metadata saved twice can differ byte for byte and a checksum
cannot tell whether an export reproduced a shipped file. `save_safetensors` writes with the library, then
rewrites the header canonically (keys sorted, compact JSON, space-padded to a multiple of 8 bytes as the format
allows); the tensor bytes are copied unchanged.
"""

from __future__ import annotations

import json
import os
import shutil
import struct
from collections.abc import Mapping
from pathlib import Path
from typing import Any

HEADER_LENGTH = struct.Struct("<Q")  # the format's little-endian u64 header size


def save_safetensors(
    tensors: Mapping[str, Any], path: str | Path, metadata: dict[str, str] | None = None
) -> None:
    """Write `tensors` (all torch tensors or all numpy arrays) to `path` with a canonical header.

    Not atomic by itself: callers write to a staging name and move it into place."""
    path = Path(path)
    raw = path.with_name(path.name + ".raw")
    if all(type(t).__module__.startswith("numpy") for t in tensors.values()):
        from safetensors.numpy import save_file
    else:
        from safetensors.torch import save_file
    try:
        save_file(dict(tensors), str(raw), metadata=metadata)
        with open(raw, "rb") as src, open(path, "wb") as dst:
            (size,) = HEADER_LENGTH.unpack(src.read(HEADER_LENGTH.size))
            header = json.loads(src.read(size))
            text = json.dumps(header, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()
            text += b" " * (-len(text) % 8)
            dst.write(HEADER_LENGTH.pack(len(text)))
            dst.write(text)
            shutil.copyfileobj(src, dst, 16 << 20)
    finally:
        if raw.exists():
            os.unlink(raw)
