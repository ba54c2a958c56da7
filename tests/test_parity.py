"""Parity with the official OFA implementation, on the fixture in `OFA_PARITY_FIXTURE`.

The fixture holds official outputs for random weights (see its README). The checkpoint in it may be an HF-port
folder or a fairseq `.pt`; both go through the public `OFAModel.from_pretrained`. Tolerance: 1e-4 absolute
(plus 1e-5 relative, for the ResNet features whose values reach ~10 and whose float32 reference itself differs
from a float64 recomputation by ~5e-5).
"""

from __future__ import annotations

import hashlib

import pytest
import torch
from safetensors.torch import load_file

from ofa.models import OFAModel
from ofa.models.attention import full_image_bucket_table, full_token_bucket_table

IMPLEMENTATIONS = ["eager", "sdpa", "flex"]


@pytest.fixture(scope="module")
def tensors(ofa_fixture):
    return load_file(str(ofa_fixture / "inputs.safetensors")), load_file(
        str(ofa_fixture / "expected.safetensors")
    )


@pytest.fixture(scope="module", params=IMPLEMENTATIONS)
def outputs(request, ofa_fixture, tensors):
    inputs, _ = tensors
    model = OFAModel.from_pretrained(ofa_fixture, attn_implementation=request.param)
    with torch.no_grad():
        features = model.encoder.embed_images(inputs["patch_images"])
        enc = model.encode(inputs["input_ids"], inputs["patch_images"], output_hidden_states=True)
        dec = model.decode(inputs["decoder_input_ids"], enc, output_hidden_states=True)
        t2i_enc = model.encode(inputs["t2i_input_ids"])
        t2i = model.decode(inputs["t2i_decoder_input_ids"], t2i_enc, code_masks=inputs["t2i_code_masks"])
    return {
        "image_features": features,
        "encoder_embedding_output": enc.hidden_states[0],
        "encoder_position_embedding": enc.position_embedding,
        "encoder_last_hidden_state": enc.last_hidden_state,
        "encoder_padding_mask": enc.padding_mask,
        "decoder_hidden_states": torch.stack(dec.hidden_states),
        "logits": dec.logits,
        "t2i_encoder_last_hidden_state": t2i_enc.last_hidden_state,
        "t2i_encoder_padding_mask": t2i_enc.padding_mask,
        "t2i_logits": t2i.logits,
    }


@pytest.mark.parametrize(
    "name",
    [
        "image_features",
        "encoder_embedding_output",
        "encoder_position_embedding",
        "encoder_last_hidden_state",
        "decoder_hidden_states",
        "logits",
        "t2i_encoder_last_hidden_state",
        "t2i_logits",
    ],
)
def test_tensor_matches_official(outputs, tensors, name):
    expected = tensors[1][name]
    got = outputs[name]
    assert got.shape == expected.shape
    torch.testing.assert_close(got, expected, atol=1e-4, rtol=1e-5)


@pytest.mark.parametrize("name", ["encoder_padding_mask", "t2i_encoder_padding_mask"])
def test_padding_masks_match_official(outputs, tensors, name):
    assert torch.equal(outputs[name], tensors[1][name])


def test_bucket_tables_equal_official_buffers(ofa_fixture):
    """Our closed-form buckets rebuild the official 1024x1024 and 1765x1765 tables bit for bit."""
    buffers = load_file(str(ofa_fixture / "buffers.safetensors"))
    token = full_token_bucket_table(256, 1024)
    image = full_image_bucket_table(42)
    assert torch.equal(token[0], buffers["encoder.token_rp_bucket.row0"])
    assert torch.equal(token[:, 0], buffers["encoder.token_rp_bucket.col0"])
    ids = buffers["encoder.image_rp_bucket.used_ids"]
    assert torch.equal(image[ids][:, ids], buffers["encoder.image_rp_bucket.used_block"])
    # Fingerprints of the full official tables, from the fixture README (int64 little-endian, row-major).
    assert int(token.sum()) == 267386880 and int(image.sum()) == 10740994071
    assert hashlib.sha256(token.numpy().tobytes()).hexdigest() == (
        "20c31e82a79b5e99e560102fc14acca443cae87bcddffeb9021430a3dd46e46c"
    )
    assert hashlib.sha256(image.numpy().tobytes()).hexdigest() == (
        "f982ef63073e509c2bee49d3c0fcd15ab78c40b214d286478c0f58bad925b756"
    )
