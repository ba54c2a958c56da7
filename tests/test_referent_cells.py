"""The referent-cell auxiliary loss of grounding samples (`train.referent_cell_weight`)."""

from __future__ import annotations

import math
from types import SimpleNamespace

import pytest
import torch

from ofa.training.module import referent_cell_targets

from .test_training import losses, run_in_process, tiny_recipe


def test_targets_cover_the_cells_whose_centre_is_inside_the_box():
    # 4x4 grid, cell centres at 0.125, 0.375, 0.625, 0.875 of the image.
    got = referent_cell_targets(torch.tensor([[0.0, 0.0, 0.5, 0.5], [0.3, 0.55, 0.9, 0.7]]), 4)
    first = torch.zeros(16)
    first[[0, 1, 4, 5]] = 0.25  # rows 0-1, columns 0-1
    second = torch.zeros(16)
    second[[9, 10, 11]] = 1 / 3  # row 2 (0.625), columns 1-3
    assert torch.allclose(got, torch.stack([first, second]))


def test_a_box_between_cell_centres_gets_the_cell_holding_its_centre():
    # No cell centre in [0.8, 0.85] x [0.15, 0.2]; the centre (0.825, 0.175) lies in row 0, column 3.
    got = referent_cell_targets(torch.tensor([[0.8, 0.15, 0.85, 0.2]]), 4)
    expected = torch.zeros(1, 16)
    expected[0, 3] = 1.0
    assert torch.equal(got, expected)


def test_loss_is_the_hand_computed_cross_entropy_over_grounding_samples_only():
    from ofa.models import OFAModel
    from ofa.training.module import OFALightningModule
    from ofa.training.recipe import TrainSection

    from .test_model import small_config

    module = OFALightningModule(OFAModel(small_config()), TrainSection(referent_cell_weight=1.0), pad_id=1)
    with torch.no_grad():
        module.referent_head.weight.zero_()
        module.referent_head.weight[0, 0] = 1.0  # score = first hidden feature
        module.referent_head.bias.zero_()
    grid, text = 2, 3
    hidden = torch.zeros(2, grid * grid + text, module.model.config.d_model)
    hidden[1, :4, 0] = torch.tensor([2.0, 0.0, 0.0, 1.0])
    batch = SimpleNamespace(
        batch=SimpleNamespace(
            tasks=["caption", "grounding"],
            meta=[{}, {"box": [0.0, 0.0, 40.0, 20.0], "image_size": (80, 80)}],  # cell 0 only
            patch_images=torch.zeros(2, 3, 8, 8),
            input_ids=torch.zeros(2, text, dtype=torch.long),
        )
    )
    got = module.referent_cell_loss_sum(batch, hidden)
    expected = -(2.0 - math.log(math.exp(2.0) + 2 + math.exp(1.0)))
    assert got.item() == pytest.approx(expected, abs=1e-6)


def test_training_with_the_head_lowers_it_and_export_leaves_it_behind(tmp_path):
    from safetensors.torch import load_file

    out = tmp_path / "run"
    values = tiny_recipe(
        out,
        size=4,
        max_steps=30,
        lr=3e-3,
        schedule="constant",
        warmup_steps=0,
        referent_cell_weight=1.0,
        checkpoint_every=30,
    )
    run_in_process(values)
    curve = losses(out, "referent_loss")
    assert len(curve) == 30 and len(losses(out)) == 30
    assert sum(curve[-5:]) / 5 < sum(curve[:5]) / 5 - 0.1, curve
    assert not any("referent" in k for k in load_file(out / "final/model.safetensors"))
    ckpt = torch.load(out / "checkpoints/step=000030.ckpt", weights_only=True)
    assert "referent_head.weight" in ckpt["state_dict"]  # resumable with its head
