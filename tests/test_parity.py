"""Parity with the official OFA implementation, on the fixture in `OFA_PARITY_FIXTURE`.

The fixture holds official outputs for random weights (see its README). The checkpoint in it may be an HF-port
folder or a fairseq `.pt`; both go through the public `OFAModel.from_pretrained`. Tolerance: 1e-4 absolute
(plus 1e-5 relative, for the ResNet features whose values reach ~10 and whose float32 reference itself differs
from a float64 recomputation by ~5e-5).
"""

from __future__ import annotations

import hashlib
import json

import pytest
import torch
from safetensors.torch import load_file

from ofa.generation import GenerationConfig, TokenRange, fixed_length_greedy, generate
from ofa.models import OFAModel
from ofa.models.attention import full_image_bucket_table, full_token_bucket_table
from tests.conftest import ofa_fixture_dir

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
    """Our closed-form buckets rebuild the official relative-position tables bit for bit."""
    buffers_file = ofa_fixture / "buffers.safetensors"
    if not buffers_file.exists():
        pytest.skip(f"{buffers_file} not in this fixture")
    buffers = load_file(str(buffers_file))
    config = OFAModel.from_pretrained(ofa_fixture).config
    token = full_token_bucket_table(config.token_bucket_size, config.max_source_positions)
    image = full_image_bucket_table(config.image_bucket_size)
    assert torch.equal(token[0], buffers["encoder.token_rp_bucket.row0"])
    assert torch.equal(token[:, 0], buffers["encoder.token_rp_bucket.col0"])
    ids = buffers["encoder.image_rp_bucket.used_ids"]
    assert torch.equal(image[ids][:, ids], buffers["encoder.image_rp_bucket.used_block"])


def test_bucket_tables_match_official_fingerprints():
    """Fingerprints of the full official 1024x1024 / 1765x1765 tables (fixture README; int64 LE, row-major)."""
    token = full_token_bucket_table(256, 1024)
    image = full_image_bucket_table(42)
    assert int(token.sum()) == 267386880 and int(image.sum()) == 10740994071
    assert hashlib.sha256(token.numpy().tobytes()).hexdigest() == (
        "20c31e82a79b5e99e560102fc14acca443cae87bcddffeb9021430a3dd46e46c"
    )
    assert hashlib.sha256(image.numpy().tobytes()).hexdigest() == (
        "f982ef63073e509c2bee49d3c0fcd15ab78c40b214d286478c0f58bad925b756"
    )


# ------------------------------------------------------------------------------------ official decodes
@pytest.fixture(scope="module")
def fixture_model(ofa_fixture, tensors):
    return OFAModel.from_pretrained(ofa_fixture), tensors[0]


def _json(folder, name):
    return json.loads((folder / name).read_text())


def _greedy_runs(folder):
    path = folder / "greedy.json"
    return list(json.loads(path.read_text())["runs"]) if path.exists() else []


@pytest.mark.parametrize("use_cache", [True, False])
@pytest.mark.parametrize("run", _greedy_runs(ofa_fixture_dir()))
def test_official_greedy_runs(ofa_fixture, fixture_model, run, use_cache):
    """greedy.json: fixed-length greedy under four settings; every vocabulary range is read from the file."""
    model, inputs = fixture_model
    greedy = _json(ofa_fixture, "greedy.json")
    spec = greedy["runs"][run]
    t2i = spec["encoder_inputs"].startswith("t2i")
    with torch.no_grad():
        enc = (
            model.encode(inputs["t2i_input_ids"])
            if t2i
            else model.encode(inputs["input_ids"], inputs["patch_images"])
        )
    code_masks = torch.tensor(spec["code_masks"]) if spec["code_masks"] is not None else None
    allowed = TokenRange(*spec["allowed_id_range"]) if isinstance(spec["allowed_id_range"], list) else None
    tokens = fixed_length_greedy(
        model, enc, greedy["steps"], allowed=allowed, ban_prefix_ids=spec["ban_ids_in_prefix"],
        code_masks=code_masks, use_cache=use_cache,
    )  # fmt: skip
    assert tokens.tolist() == spec["tokens"]


def _beam_runs(folder):
    path = folder / "beam.json"
    return list(json.loads(path.read_text())["runs"]) if path.exists() else []


@pytest.mark.parametrize("use_cache", [True, False])
@pytest.mark.parametrize("run", _beam_runs(ofa_fixture_dir()))
def test_official_beam_search(ofa_fixture, fixture_model, run, use_cache):
    """beam.json: the official top-5 hypotheses, in order, with scores within 1e-4."""
    model, inputs = fixture_model
    beam = _json(ofa_fixture, "beam.json")
    spec, vocab = beam["runs"][run], beam["vocab"]
    s = spec["settings"]
    config = GenerationConfig(
        strategy="beam", beam_size=s["beam_size"], max_len_a=s["max_len_a"], max_len_b=s["max_len_b"],
        min_len=s["min_len"], no_repeat_ngram_size=s["no_repeat_ngram_size"], len_penalty=s["len_penalty"],
        normalize_scores=s["normalize_scores"], unk_penalty=s["unk_penalty"], temperature=s["temperature"],
        use_cache=use_cache, bos_token_id=vocab["bos"], pad_token_id=vocab["pad"], eos_token_id=vocab["eos"],
        unk_token_id=vocab["unk"],
    )  # fmt: skip
    constraint = None
    if s["constraint_range"]:
        constraint = TokenRange(*map(int, s["constraint_range"].split(",")), keep_special=True)
    elif s["constraint_trie"]:  # the strict variant: only bins for max_len steps, then only eos
        constraint = TokenRange(vocab["bin_start"], vocab["size"], exact_length=spec["max_len"])
    batch = inputs["input_ids"].size(0)
    got = generate(
        model, {"input_ids": inputs["input_ids"], "patch_images": inputs["patch_images"]}, config,
        constraints=None if constraint is None else [constraint] * batch,
    )  # fmt: skip
    assert config.max_length(inputs["input_ids"].size(1)) == spec["max_len"]
    for hyps, want in zip(got, spec["hypotheses"]):
        assert [h.tokens.tolist() for h in hyps] == [w["tokens"] for w in want]
        for h, w in zip(hyps, want):
            assert h.score == pytest.approx(w["score"], abs=1e-4)
            assert h.positional_scores.tolist() == pytest.approx(w["positional_scores"], abs=1e-4)
