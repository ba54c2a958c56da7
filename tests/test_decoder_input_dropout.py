"""`train.decoder_input_dropout`: text tokens of the teacher-forced decoder input become <unk>."""

from __future__ import annotations

import torch

from ofa.training.module import decoder_input_dropout

from .test_training import losses, run_in_process, tiny_recipe


def test_only_text_tokens_are_dropped_at_the_given_rate():
    torch.manual_seed(0)
    # specials 0..3, text 4..99, codes/bins 100..
    ids = torch.randint(0, 140, (200, 50))
    ids[:, 0] = 0
    got = decoder_input_dropout(ids, 0.3, text_start=4, text_end=100, unk_id=3)
    text = (ids >= 4) & (ids < 100)
    assert torch.equal(got[~text], ids[~text])  # bos, pad, eos, unk and location/code tokens untouched
    changed = got != ids
    assert bool((got[changed] == 3).all()) and bool(text[changed].all())
    rate = changed.sum().item() / text.sum().item()
    assert 0.28 < rate < 0.32, rate
    assert torch.equal(decoder_input_dropout(ids, 0.0, 4, 100, 3), ids)


def test_recipe_with_dropout_trains_and_resumes_the_same(tmp_path):
    settings = {"max_steps": 6, "checkpoint_every": 3, "schedule": "constant", "decoder_input_dropout": 0.3}
    run_in_process(tiny_recipe(tmp_path / "a", **settings))
    whole = losses(tmp_path / "a")
    run_in_process(tiny_recipe(tmp_path / "b", **{**settings, "max_steps": 3}))
    run_in_process(tiny_recipe(tmp_path / "b", **settings))  # resumes from step 3 with its RNG state
    assert losses(tmp_path / "b") == whole
    run_in_process(tiny_recipe(tmp_path / "c", **{**settings, "decoder_input_dropout": 0.0}))
    assert losses(tmp_path / "c")[1:] != whole[1:]  # the dropout is active
