"""Saved weights are byte-reproducible: the same tensors and metadata give the same file."""

from __future__ import annotations

import json
import struct

import numpy as np
import torch
from safetensors import safe_open
from safetensors.numpy import load_file as load_numpy
from safetensors.torch import load_file

from ofa.convert.safetensors_io import save_safetensors
from ofa.models import OFAModel
from tests.test_model import random_model, small_config

# Twelve entries: safetensors alone writes them in a random order (issue #584), so two saves almost surely differ.
METADATA = {f"key{i:02d}": f"value {i} 值" for i in range(12)}


def header(path) -> tuple[int, list[str], list[str]]:
    """(header size, top-level keys in file order, metadata keys in file order), read straight from the bytes."""
    data = path.read_bytes()
    (size,) = struct.unpack("<Q", data[:8])
    top = json.loads(data[8 : 8 + size], object_pairs_hook=lambda pairs: pairs)
    meta = dict(top)["__metadata__"]
    return size, [k for k, _ in top], [k for k, _ in meta]


def test_same_tensors_same_bytes_and_round_trip(tmp_path):
    tensors = {"b": torch.arange(6, dtype=torch.float16).reshape(2, 3), "a": torch.tensor([1, 2, 3])}
    for name in ("one", "two", "three"):
        save_safetensors(tensors, tmp_path / name, metadata=METADATA)
    first = (tmp_path / "one").read_bytes()
    assert (tmp_path / "two").read_bytes() == first and (tmp_path / "three").read_bytes() == first
    size, top, meta = header(tmp_path / "one")
    assert size % 8 == 0
    assert top == sorted(top) and meta == sorted(METADATA)
    loaded = load_file(tmp_path / "one")
    assert loaded.keys() == tensors.keys() and all(torch.equal(loaded[k], tensors[k]) for k in tensors)
    with safe_open(tmp_path / "one", "pt") as f:
        assert f.metadata() == METADATA
    assert sorted(p.name for p in tmp_path.iterdir()) == ["one", "three", "two"]  # no leftover .raw


def test_numpy_arrays(tmp_path):
    arrays = {
        "codes": np.arange(12, dtype=np.uint16).reshape(3, 4),
        "ids": np.array([7, 8, 9], dtype=np.int64),
    }
    save_safetensors(arrays, tmp_path / "a", metadata=METADATA)
    save_safetensors(arrays, tmp_path / "b", metadata=METADATA)
    assert (tmp_path / "a").read_bytes() == (tmp_path / "b").read_bytes()
    loaded = load_numpy(tmp_path / "a")
    assert all(np.array_equal(loaded[k], arrays[k]) for k in arrays)


def test_model_export_is_reproducible(tmp_path):
    model = random_model(small_config())
    model.save_pretrained(tmp_path / "one", dtype=torch.float16)
    model.save_pretrained(tmp_path / "two", dtype=torch.float16)
    for name in ("model.safetensors", "config.json"):
        assert (tmp_path / "one" / name).read_bytes() == (tmp_path / "two" / name).read_bytes()
    loaded = OFAModel.from_pretrained(tmp_path / "one")
    weight = model.encoder.embed_tokens.weight
    assert torch.equal(loaded.encoder.embed_tokens.weight, weight.half().float())
