"""bench/retrieval_side_by_side.py: the dual encoder trains on the unified trainer's pairs, its size search,
its pixels, and the oracle ceiling of the evaluation."""

from __future__ import annotations

import importlib.util
import json
import shutil
import sys
from pathlib import Path

import pytest
import torch

from ofa.data.world import World
from ofa.retrieval import CNCLIPModel, CNCLIPTokenizer, build_open_clip_model
from ofa.training.data import MixtureDataModule
from ofa.training.recipe import load_recipe
from ofa.training.run import build_model, export_final, load_tokenizer

REPO = Path(__file__).resolve().parents[1]


def _load_bench():
    spec = importlib.util.spec_from_file_location(
        "retrieval_side_by_side", REPO / "bench" / "retrieval_side_by_side.py"
    )
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up
    spec.loader.exec_module(module)
    return module


sbs = _load_bench()


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> Path:
    """An untrained small unified model with a retrieval head, exported as `ofa train` does, whose recipe
    trains two languages of pairs with two accumulation micro-steps."""
    recipe = load_recipe(
        REPO / "tasks" / "world" / "tiny.yaml",
        [
            "model.config.d_model=64",
            "model.config.encoder_layers=1",
            "model.config.decoder_layers=1",
            "model.config.encoder_ffn_dim=128",
            "model.config.decoder_ffn_dim=128",
            "model.config.convnet_channels=[8, 16, 32, 64]",
            "model.config.retrieval_dim=16",
            "data.retrieval={batch_size: 8, langs: [zh, en]}",
            "train.batch_size=4",
            "train.accumulate_grad_batches=2",
        ],
    )
    tokenizer = load_tokenizer(recipe)
    model = build_model(recipe, tokenizer)
    folder = tmp_path_factory.mktemp("unified") / "final"
    export_final(model.config, model.state_dict(), tokenizer, recipe, folder)
    return folder


def test_dual_encoder_trains_on_the_unified_trainers_pairs(checkpoint: Path) -> None:
    unified = sbs.load_unified(checkpoint, "cpu")
    pairs, sampler = sbs.pair_stream(unified)
    # The trainer's own DataLoader (one process): each window is the step's micro-batches with their pairs.
    trainer_data = MixtureDataModule(unified.recipe, unified.ofa.tokenizer, unified.image_size)
    windows = iter(trainer_data.train_dataloader().loader)
    seen = []
    for step in range(2):
        micro = sbs.step_pairs(pairs, sampler, step)
        window = next(windows)
        assert [len(m) for m in micro] == [4, 4] and len(window) == 2
        for examples, batch in zip(micro, window):
            assert torch.equal(torch.stack([e.image for e in examples]), batch.pairs.patch_images)
            assert [e.meta["text"] for e in examples] == [m["text"] for m in batch.pairs.meta]
            seen += [e.meta["text"] for e in examples]
    assert len(set(seen)) > 8  # new scenes every step, both languages
    assert {e.meta["lang"] for m in sbs.step_pairs(pairs, sampler, 0) for e in m} == {"zh", "en"}


def test_a_checkpoint_without_retrieval_head_is_refused(checkpoint: Path, tmp_path: Path) -> None:
    copy = shutil.copytree(checkpoint, tmp_path / "final")
    config = json.loads((copy / "config.json").read_text())
    (copy / "config.json").write_text(json.dumps({**config, "retrieval_dim": None}))
    with pytest.raises(sbs.SideBySideError, match="no retrieval head"):
        sbs.load_unified(copy, "cpu")


def test_size_search_finds_the_matching_shape() -> None:
    base = {"embed_dim": 32, "image_size": 32, "patch_size": 8, "vocab_size": 21128}
    target = sbs.count_params(sbs.dual_encoder_config(128, 3, 2, **base))
    config, count = sbs.choose_size(target, base)
    kw = config.clip_kwargs
    assert (kw["vision_width"], kw["vision_layers"], kw["text_num_hidden_layers"]) == (128, 3, 2)
    assert count == target == sum(p.numel() for p in build_open_clip_model(config).parameters())
    assert sbs.count_params(config, "non-embedding") == target - 21128 * 128
    assert sbs.patch_size_for(96) == 8 and sbs.patch_size_for(224) == 16


def test_pixels_are_chinese_clips_preprocessing(tmp_path: Path) -> None:
    from ofa.data.images import image_to_tensor

    vocab = tmp_path / "vocab.txt"
    vocab.write_text("[PAD]\n[UNK]\n[CLS]\n[SEP]\n")
    base = {"embed_dim": 16, "image_size": 96, "patch_size": 8, "vocab_size": 4}
    config = sbs.dual_encoder_config(64, 1, 1, **base)
    wrapper = CNCLIPModel(build_open_clip_model(config), CNCLIPTokenizer(vocab), config)
    image = World(seed=0, image_size=96).scene("heldout", 0).image
    expected = wrapper.preprocess_image(image)
    assert torch.allclose(sbs.clip_pixels(image_to_tensor(image, 96)), expected, atol=1e-5)


def test_oracle_ceiling_under_both_annotations() -> None:
    captions = [["a", "b"], ["a"], ["c"]]
    metrics = sbs.score(*sbs.oracle_features(captions), captions)
    # own: the second "a" (scene 1) ranks scene 0 first, and scene 1's only text ties behind scene 0's copy
    assert metrics["own"]["t2i_R@1"] == pytest.approx(75.0)
    assert metrics["own"]["i2t_R@1"] == pytest.approx(200 / 3)
    assert metrics["own"]["i2t_R@5"] == pytest.approx(100.0)
    assert all(v == pytest.approx(100.0) for v in metrics["same-text"].values())
