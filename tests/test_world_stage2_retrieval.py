"""`tasks/world/tiny_retrieval.yaml`: stage 2 adds retrieval + image-text matching to the shipped world model."""

from __future__ import annotations

import torch

from ofa.training.recipe import load_recipe

from .test_training import REPO, losses, run_in_process


def test_stage2_retrieval_recipe_trains_from_the_shipped_checkpoint(tmp_path):
    from ofa.models import OFAModel

    out = tmp_path / "stage2"
    recipe = load_recipe(
        REPO / "tasks/world/tiny_retrieval.yaml",
        [
            f"model.init_from={REPO / 'checkpoints/ofa-world-tiny'}",
            "train.max_steps=3",
            "train.batch_size=8",
            "data.retrieval.batch_size=4",
            "train.eval_every=0",
            "train.num_threads=1",
            "train.progress_bar=none",
            f"train.output_dir={out}",
        ],
    )
    assert {(c.task, c.lang) for c in recipe.data.mixture} >= {("itm", "en"), ("itm", "zh")}
    run_in_process(recipe.to_dict())
    assert len(losses(out)) == 3 and len(losses(out, "retrieval_loss")) == 3
    model = OFAModel.from_pretrained(out / "final")
    assert model.config.retrieval_dim == 128
    with torch.no_grad():
        embedding = model.embed_texts(torch.tensor([[0, 10, 11, 2]]))
    assert embedding.shape == (1, 128) and torch.allclose(embedding.norm(dim=-1), torch.ones(1), atol=1e-5)
