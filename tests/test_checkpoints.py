"""Checkpoint formats: ours (round trip, shards, atomic writes), official fairseq `.pt`, and clear errors."""

from __future__ import annotations

import argparse
import re

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from ofa.convert import CheckpointError, detect_format, load_checkpoint
from ofa.models import OFAModel
from tests.test_model import batch, random_model, small_config


def fairseq_key(key: str) -> str:
    """Our (HF-port) name -> fairseq name, written from the architecture notes' table (section 11.3)."""
    if key.startswith("encoder.layers."):
        key = key.replace(".self_attn_mid_layer_norm.", ".attn_ln.")
    else:
        key = key.replace(".self_attn_mid_layer_norm.", ".self_attn_ln.")
    key = key.replace(".cross_attn_mid_layer_norm.", ".cross_attn_ln.")
    key = key.replace(".cross_attn_layer_norm.", ".encoder_attn_layer_norm.")
    key = key.replace(".cross_attn.", ".encoder_attn.")
    return key.replace(".ffn_layer_norm.", ".ffn_layernorm.")


def write_fairseq(model: OFAModel, file, heads_in_cfg: bool = True) -> None:
    state = {fairseq_key(k): v for k, v in model.state_dict().items()}
    state["decoder.output_projection.weight"] = state["encoder.embed_tokens.weight"]
    state["encoder.version"] = torch.tensor([3.0])
    state["decoder.version"] = torch.tensor([3.0])
    grid = model.config.code_grid
    state["decoder.image_position_idx"] = torch.zeros(1 + grid * grid + 769, dtype=torch.long)
    args = argparse.Namespace(
        arch="ofa_tiny",
        disable_entangle=True,
        attn_scale_factor=2.0,
        code_image_size=model.config.code_image_size,
    )
    if heads_in_cfg:
        args.encoder_attention_heads = args.decoder_attention_heads = model.config.encoder_attention_heads
    torch.save(
        {
            "model": state,
            "cfg": {"model": args, "task": {"patch_image_size": 64, "code_dict_size": 64, "num_bins": 40}},
            "extra_state": {"metrics": {"loss": np.float64(2.5)}},
        },
        file,
    )


def logits(model: OFAModel):
    ids, images, dec, code_masks = batch(model.config)
    with torch.no_grad():
        return model.decode(dec, model.encode(ids, images), code_masks).logits


def test_our_format_round_trip(tmp_path):
    model = random_model(small_config())
    model.save_pretrained(tmp_path / "ckpt")
    assert detect_format(tmp_path / "ckpt") == "ofa"
    assert sorted(p.name for p in (tmp_path / "ckpt").iterdir()) == ["config.json", "model.safetensors"]
    loaded = OFAModel.from_pretrained(tmp_path / "ckpt")
    assert loaded.config == model.config
    assert torch.equal(logits(loaded), logits(model))
    assert loaded.decoder.embed_tokens is loaded.encoder.embed_tokens  # tied after loading


def test_sharded_save_and_half_precision(tmp_path):
    model = random_model(small_config())
    model.save_pretrained(tmp_path / "ckpt", dtype=torch.bfloat16, max_shard_bytes=20_000)
    names = sorted(p.name for p in (tmp_path / "ckpt").iterdir())
    assert "model.safetensors.index.json" in names and sum(n.startswith("model-") for n in names) > 2
    loaded = OFAModel.from_pretrained(tmp_path / "ckpt")
    weight = model.encoder.embed_tokens.weight
    assert torch.equal(loaded.encoder.embed_tokens.weight, weight.to(torch.bfloat16).float())
    # Half-precision weights load as float32 by default, and stay half when asked.
    assert {p.dtype for p in loaded.parameters()} == {torch.float32}
    kept = OFAModel.from_pretrained(tmp_path / "ckpt", dtype=torch.bfloat16)
    assert {p.dtype for p in kept.parameters()} == {torch.bfloat16}
    # Saving again unsharded replaces the shards instead of leaving stale files.
    model.save_pretrained(tmp_path / "ckpt")
    assert sorted(p.name for p in (tmp_path / "ckpt").iterdir()) == ["config.json", "model.safetensors"]


def test_fairseq_checkpoint_loads_like_the_original(tmp_path):
    model = random_model(small_config())
    write_fairseq(model, tmp_path / "ofa_small.pt")
    assert detect_format(tmp_path / "ofa_small.pt") == "fairseq"
    loaded = OFAModel.from_pretrained(tmp_path / "ofa_small.pt")
    assert loaded.config.code_image_size == model.config.code_image_size
    assert loaded.config.encoder_attention_heads == 4
    torch.testing.assert_close(logits(loaded), logits(model), atol=0, rtol=0)
    # A folder holding one .pt is accepted too (the parity fixture layout).
    assert OFAModel.from_pretrained(tmp_path).config.d_model == model.config.d_model


def test_official_hf_folder_round_trips_through_our_format(ofa_fixture, tmp_path):
    config, state = load_checkpoint(ofa_fixture)
    model = OFAModel.from_pretrained(ofa_fixture)
    model.save_pretrained(tmp_path / "ours")
    again = OFAModel.from_pretrained(tmp_path / "ours")
    assert again.config == config
    for key, value in model.state_dict().items():
        assert torch.equal(again.state_dict()[key], value), key


def test_cli_convert_writes_our_format(tmp_path):
    from ofa.cli import main

    model = random_model(small_config())
    write_fairseq(model, tmp_path / "in.pt")
    assert main(["convert", str(tmp_path / "in.pt"), str(tmp_path / "out"), "--dtype", "float32"]) == 0
    assert torch.equal(logits(OFAModel.from_pretrained(tmp_path / "out")), logits(model))


class Evil:
    def __reduce__(self):
        return (print, ("this must never run",))


def test_loading_refuses_arbitrary_objects(tmp_path):
    torch.save({"model": {"x": torch.zeros(1)}, "cfg": Evil()}, tmp_path / "evil.pt")
    with pytest.raises(CheckpointError, match=r"evil\.pt.*refuses to unpickle"):
        load_checkpoint(tmp_path / "evil.pt")


def test_legacy_pickle_format_loads_and_still_refuses_objects(tmp_path):
    """torch.save(..., _use_new_zipfile_serialization=False): no zip to scan, the same allow-list applies."""
    model = random_model(small_config())
    write_fairseq(model, tmp_path / "zip.pt")
    raw = torch.load(tmp_path / "zip.pt", weights_only=False)
    torch.save(raw, tmp_path / "legacy.pt", _use_new_zipfile_serialization=False)
    assert torch.equal(logits(OFAModel.from_pretrained(tmp_path / "legacy.pt")), logits(model))
    torch.save({"model": {}, "cfg": Evil()}, tmp_path / "evil.pt", _use_new_zipfile_serialization=False)
    with pytest.raises(CheckpointError, match=r"evil\.pt.*refuses to unpickle"):
        load_checkpoint(tmp_path / "evil.pt")


def test_corrupt_and_truncated_files_name_the_file(tmp_path):
    model = random_model(small_config())
    model.save_pretrained(tmp_path / "ckpt")
    weights = tmp_path / "ckpt" / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:1000])
    with pytest.raises(CheckpointError, match=r"model\.safetensors.*(corrupt|truncated)"):
        OFAModel.from_pretrained(tmp_path / "ckpt")
    write_fairseq(model, tmp_path / "cut.pt")
    data = (tmp_path / "cut.pt").read_bytes()
    (tmp_path / "cut.pt").write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match=r"cut\.pt"):
        load_checkpoint(tmp_path / "cut.pt")


def test_mismatched_and_unknown_checkpoints(tmp_path):
    model = random_model(small_config())
    model.save_pretrained(tmp_path / "ckpt")
    state = load_file(str(tmp_path / "ckpt" / "model.safetensors"))
    state.pop("decoder.layers.1.fc2.bias")
    from safetensors.torch import save_file

    save_file(state, str(tmp_path / "ckpt" / "model.safetensors"))
    with pytest.raises(CheckpointError, match=r"missing decoder\.layers\.1\.fc2\.bias"):
        OFAModel.from_pretrained(tmp_path / "ckpt")
    with pytest.raises(CheckpointError, match="no such file"):
        OFAModel.from_pretrained(tmp_path / "nowhere")
    (tmp_path / "empty").mkdir()
    with pytest.raises(CheckpointError, match="not an OFA checkpoint"):
        OFAModel.from_pretrained(tmp_path / "empty")
    (tmp_path / "notes.txt").write_text("hello")
    with pytest.raises(CheckpointError, match="not a checkpoint"):
        OFAModel.from_pretrained(tmp_path / "notes.txt")
    torch.save({"weights": {}}, tmp_path / "other.pt")
    with pytest.raises(CheckpointError, match="'model' entry"):
        OFAModel.from_pretrained(tmp_path / "other.pt")


def test_missing_head_count_is_a_clear_error(tmp_path):
    model = random_model(small_config(scale_heads=False))
    write_fairseq(model, tmp_path / "noheads.pt", heads_in_cfg=False)
    with pytest.raises(CheckpointError, match=re.escape("attention heads is not recorded")):
        OFAModel.from_pretrained(tmp_path / "noheads.pt")
