"""The factorized stem: colour transforms against hand-computed cases, a colour path blind to layout, jitter only
while training, and a model that saves and loads with it."""

from __future__ import annotations

import math

import pytest
import torch

from ofa.models import ConfigError, OFAConfig, OFAModel
from ofa.models.convnet import ConvStem
from ofa.models.factorized_stem import ColourPath, FactorizedStem, colour_matrices, random_colour_matrices

RED, GREEN, BLUE = torch.tensor([1.0, -1, -1]), torch.tensor([-1.0, 1, -1]), torch.tensor([-1.0, -1, 1])


def _one(theta: float, saturation: float = 1.0, sign: float = 1.0) -> torch.Tensor:
    return colour_matrices(torch.tensor([theta]), torch.tensor([saturation]), torch.tensor([sign]))[0]


def test_a_third_turn_about_the_grey_axis_cycles_red_green_blue() -> None:
    m = _one(2 * math.pi / 3)
    torch.testing.assert_close(m @ RED, GREEN, atol=1e-6, rtol=0)
    torch.testing.assert_close(m @ GREEN, BLUE, atol=1e-6, rtol=0)
    torch.testing.assert_close(m @ BLUE, RED, atol=1e-6, rtol=0)


def test_no_turn_is_the_identity_and_the_sign_negates() -> None:
    torch.testing.assert_close(_one(0.0), torch.eye(3), atol=1e-6, rtol=0)
    torch.testing.assert_close(_one(0.0, sign=-1.0), -torch.eye(3), atol=1e-6, rtol=0)


def test_greys_stay_grey_and_chroma_is_scaled() -> None:
    matrices = random_colour_matrices(64, torch.device("cpu"), torch.float32)
    grey = torch.tensor([0.3, 0.3, 0.3])
    out = matrices @ grey
    torch.testing.assert_close(out.abs(), grey.expand(64, 3), atol=1e-6, rtol=0)
    # red's chroma (its part orthogonal to grey) keeps its direction's length times the saturation in [0.5, 1.5]
    u = torch.full((3,), 1 / math.sqrt(3))
    chroma = RED - (RED @ u) * u
    norms = ((matrices @ chroma) - ((matrices @ chroma) @ u)[:, None] * u).norm(dim=1) / chroma.norm()
    assert norms.min() >= 0.5 - 1e-5 and norms.max() <= 1.5 + 1e-5
    assert (out.sum(1) < 0).any() and (out.sum(1) > 0).any()  # both signs drawn


def test_the_colour_path_ignores_where_pixels_lie_inside_a_cell() -> None:
    torch.manual_seed(0)
    path = ColourPath(8).eval()
    image = torch.rand(1, 3, 32, 32) * 2 - 1
    # shuffle the 4x4 blocks inside each 16x16 cell: same colours, another layout (a "shape")
    blocks = image.unfold(2, 4, 4).unfold(3, 4, 4)  # (1, 3, 8, 8, 4, 4)
    shuffled = blocks.clone()
    for cr in range(2):
        for cc in range(2):
            cell = blocks[:, :, cr * 4 : cr * 4 + 4, cc * 4 : cc * 4 + 4].reshape(1, 3, 16, 4, 4)
            perm = torch.randperm(16)
            shuffled[:, :, cr * 4 : cr * 4 + 4, cc * 4 : cc * 4 + 4] = cell[:, :, perm].reshape(
                1, 3, 4, 4, 4, 4
            )
    moved = shuffled.permute(0, 1, 2, 4, 3, 5).reshape(1, 3, 32, 32)
    assert not torch.equal(moved, image)
    torch.testing.assert_close(path(moved, (2, 2)), path(image, (2, 2)), atol=1e-5, rtol=0)
    # ...but a different colour mix in a cell changes it
    recoloured = image.clone()
    recoloured[:, :, :16, :16] = -recoloured[:, :, :16, :16]
    assert not torch.allclose(path(recoloured, (2, 2))[..., 0, 0], path(image, (2, 2))[..., 0, 0], atol=1e-3)


def test_the_shape_path_sees_jittered_colours_only_while_training() -> None:
    seen: list[torch.Tensor] = []
    stem = FactorizedStem(ConvStem([8, 16]), colour_channels=4, colour_jitter=True)
    stem.shape_path.register_forward_pre_hook(lambda _m, args: seen.append(args[0].detach()))
    image = torch.rand(2, 3, 16, 16) * 2 - 1
    stem.train()
    out = stem(image)
    assert out.shape == (2, 16 + 4, 4, 4) and stem.out_channels == 20
    assert not torch.allclose(seen[-1], image)
    # the jittered copy is a per-image linear colour map of the original
    for b in range(2):
        solution = torch.linalg.lstsq(image[b].reshape(3, -1).T, seen[-1][b].reshape(3, -1).T).solution
        torch.testing.assert_close(
            image[b].reshape(3, -1).T @ solution, seen[-1][b].reshape(3, -1).T, atol=1e-4, rtol=0
        )
    stem.eval()
    stem(image)
    assert torch.equal(seen[-1], image)


def _config(**overrides: object) -> OFAConfig:
    return OFAConfig(
        vocab_size=400,
        num_codes=64,
        num_bins=32,
        d_model=32,
        encoder_layers=1,
        decoder_layers=1,
        encoder_attention_heads=2,
        decoder_attention_heads=2,
        encoder_ffn_dim=64,
        decoder_ffn_dim=64,
        image_stem="convnet",
        convnet_channels=[8, 16, 16, 24],
        image_size=64,
        code_image_size=32,
        max_source_positions=64,
        max_target_positions=64,
        **overrides,
    )


def test_a_model_with_the_factorized_stem_saves_and_loads(tmp_path) -> None:
    torch.manual_seed(0)
    model = OFAModel(_config(stem_colour_channels=6, stem_colour_jitter=True)).eval()
    assert isinstance(model.encoder.embed_images, FactorizedStem)
    assert model.encoder.image_proj.in_features == 24 + 6 == model.config.image_feature_dim
    images = torch.rand(2, 3, 64, 64) * 2 - 1
    ids = torch.tensor([[0, 5, 6, 2], [0, 7, 2, 1]])
    out = model.encoder(input_ids=ids, patch_images=images).last_hidden_state
    model.save_pretrained(tmp_path)
    loaded = OFAModel.from_pretrained(tmp_path).eval()
    assert loaded.config.stem_colour_channels == 6 and loaded.config.stem_colour_jitter
    torch.testing.assert_close(loaded.encoder(input_ids=ids, patch_images=images).last_hidden_state, out)


def test_plain_stems_are_unchanged_and_bad_widths_are_refused() -> None:
    assert isinstance(OFAModel(_config()).encoder.embed_images, ConvStem)
    with pytest.raises(ConfigError, match="stem_colour_channels"):
        _config(stem_colour_channels=-1)
