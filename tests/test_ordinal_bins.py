"""Ordinal treatment of `<bin_k>` tokens: Gaussian bin targets in the loss and sinusoidal bin embeddings."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from ofa.models import OFAModel
from ofa.models.modeling_ofa import sinusoidal_bin_embeddings
from ofa.training.module import ordinal_bin_loss_sum

from .test_model import small_config


def test_tiny_sigma_is_torch_label_smoothed_cross_entropy():
    torch.manual_seed(0)
    logits = torch.randn(7, 12)
    targets = torch.tensor([0, 1, 5, 9, 11, 1, 8])  # pad 1; bins 8..11
    expected = F.cross_entropy(logits, targets, ignore_index=1, label_smoothing=0.1, reduction="sum")
    got = ordinal_bin_loss_sum(
        logits, targets, pad_id=1, label_smoothing=0.1, bin_start=8, num_bins=4, sigma=1e-3
    )
    assert torch.allclose(got, expected, atol=1e-5)


def test_gaussian_bin_target_hand_computed():
    # vocabulary of 6, bins at ids 3, 4, 5; target <bin_1> (id 4), sigma 1 bin, no uniform smoothing:
    # target distribution over the bins is (e^-0.5, 1, e^-0.5) / (1 + 2 e^-0.5).
    logits = torch.tensor([[0.3, -1.0, 0.5, 1.0, 2.0, 0.0]])
    log_p = [v - math.log(sum(math.exp(x) for x in logits[0].tolist())) for v in logits[0].tolist()]
    w = [math.exp(-0.5), 1.0, math.exp(-0.5)]
    expected = -sum(wi * lp for wi, lp in zip(w, log_p[3:])) / sum(w)
    got = ordinal_bin_loss_sum(
        logits, torch.tensor([4]), pad_id=1, label_smoothing=0.0, bin_start=3, num_bins=3, sigma=1.0
    )
    assert abs(got.item() - expected) < 1e-5
    # a one-bin miss costs less than a far miss
    near = ordinal_bin_loss_sum(logits, torch.tensor([5]), 1, 0.0, 3, 3, 1.0)
    far = ordinal_bin_loss_sum(
        torch.tensor([[0.3, -1.0, 0.5, 2.0, 1.0, 0.0]]), torch.tensor([5]), 1, 0.0, 3, 3, 1.0
    )
    assert near < far


def test_sinusoidal_bin_embeddings_are_ordinal_and_placed_on_the_bins():
    rows = sinusoidal_bin_embeddings(256, 192)
    assert rows.shape == (256, 192) and torch.allclose(rows.norm(dim=1), torch.ones(256), atol=1e-5)
    sim = rows @ rows[100]
    assert sim[100] > sim[101] > sim[103] > sim[110].abs() and sim[101] > 0.8
    assert sim[[0, 30, 170, 255]].abs().max() < 0.3  # far bins are nearly orthogonal

    config = small_config(vocab_size=600, num_bins=256, bin_embedding_init="sinusoidal")
    table = OFAModel(config).encoder.embed_tokens.weight
    assert torch.allclose(table[config.bin_start :], sinusoidal_bin_embeddings(256, 32))
    assert not torch.allclose(table[config.bin_start - 64 : config.bin_start], torch.zeros(64, 32))
