"""An image stem that keeps colour and shape apart: `stem_colour_channels > 0` and/or `stem_colour_jitter`.

Why. A stem trained from scratch on scenes where some colour-shape pairs never occur learns conjunctions: a linear
probe read objects of held-out pairs far worse than seen ones (shape 0.864, colour 0.592 vs 0.992 / 0.975 on
`val`, `bench/stem_feature_probe.py`, 2026-12-03), and the caption then named the seen pair the object resembled.
Two paths meant to keep the attributes apart, the first by construction, the second by what it is trained on:

* a **colour path** of per-pixel 1x1 conv-BN-ReLU layers (on the image averaged over 4x4 blocks: at full
  resolution the path was slower on CPU than the whole conv stem) averaged over each output cell: it sees no spatial
  context, so its feature is a soft colour histogram of the cell and carries no shape;
* the **shape path** (the usual stem) sees, while training, a copy of the image whose colours are randomised per
  sample (hue rotated about the grey axis by a uniform angle, saturation scaled by 0.5-1.5, inverted with
  probability 1/2), so every shape is seen in every hue and colour stops predicting anything it must output. In
  eval mode it sees the image as it is (the identity is one of the training draws).

The two are concatenated channel-wise; the encoder's projection maps them to `d_model` as before. The jitter draws
from torch's global RNG, which a training checkpoint saves (the resume test runs with this stem).

Measured (model card): with the recipe of 2026-12-03 the stem's shape reading of held-out-pair objects rose (linear
probe 0.947 vs 0.728) but seen pairs and grounding fell. With the longer recipe of 2026-12-04 heldout captions rose
from 0.866 / 0.874 to 0.917 / 0.928 (EN / ZH) but Chinese relation grounding fell; with the box query also told
what relation and ordinal expressions name (`train.query_attribute_kinds`) it is in `tasks/world/tiny.yaml` since
2026-12-05: captions 0.921 / 0.925, grounding 0.940 / 0.924 (with `train.seed=1` 0.883 / 0.885 and 0.834 / 0.806;
captions decoded with the 3-gram ban of then; without it 0.968 / 0.971 for the default seed).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from timm.layers import ConvNormAct
from torch import Tensor, nn

# In RGB, the projection onto the grey axis u = (1, 1, 1) / sqrt(3) and the cross-product matrix [u]_x
# (a quarter turn of the chroma plane about u).
GREY_PROJECTION = torch.full((3, 3), 1 / 3)
GREY_CROSS = torch.tensor([[0.0, -1.0, 1.0], [1.0, 0.0, -1.0], [-1.0, 1.0, 0.0]]) / math.sqrt(3)
# Without inversion, objects of held-out pairs were recalled far worse (0.30 vs 0.57, caption breakdown): brightness
# alone still tells colours apart, so the shape path tied shape to it again.
INVERT_PROBABILITY = 0.5


def colour_matrices(theta: Tensor, saturation: Tensor, sign: Tensor) -> Tensor:
    """(B, 3, 3) transforms of images normalised to [-1, 1] (mid-grey = 0) from (B,) hue angles, chroma scales and
    signs: grey component kept, chroma rotated by `theta` about the grey axis and scaled, all times `sign`."""
    dtype, device = theta.dtype, theta.device
    grey = GREY_PROJECTION.to(device=device, dtype=dtype)
    cross = GREY_CROSS.to(device=device, dtype=dtype)
    chroma = torch.eye(3, device=device, dtype=dtype) - grey
    theta, saturation, sign = (t.to(dtype).view(-1, 1, 1) for t in (theta, saturation, sign))
    rotation = torch.cos(theta) * chroma + torch.sin(theta) * cross
    return sign * (grey + saturation * rotation)


def random_colour_matrices(batch: int, device: torch.device, dtype: torch.dtype) -> Tensor:
    """`colour_matrices` with angle U(0, 2 pi), chroma scale U(0.5, 1.5), sign -1 with probability `INVERT_PROBABILITY`."""
    theta = torch.rand(batch, device=device, dtype=dtype) * (2 * math.pi)
    saturation = 0.5 + torch.rand(batch, device=device, dtype=dtype)
    sign = torch.where(torch.rand(batch, device=device) < INVERT_PROBABILITY, -1.0, 1.0)
    return colour_matrices(theta, saturation, sign)


class ColourPath(nn.Module):
    """Per-pixel 1x1 conv-BN-ReLU x 2 on 4x4-block means, averaged over the cells of the shape path's grid."""

    block = 4

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.layers = nn.Sequential(ConvNormAct(3, channels, 1), ConvNormAct(channels, channels, 1))

    def forward(self, images: Tensor, grid: tuple[int, int]) -> Tensor:
        pixels = F.avg_pool2d(images, self.block, ceil_mode=True)
        return F.adaptive_avg_pool2d(self.layers(pixels), grid)


class FactorizedStem(nn.Module):
    """`shape_path` (any stem with `out_channels`) on colour-jittered images while training, plus an optional
    `ColourPath` of `colour_channels`; output (B, shape + colour channels, h, w)."""

    def __init__(self, shape_path: nn.Module, colour_channels: int, colour_jitter: bool) -> None:
        super().__init__()
        self.shape_path = shape_path
        self.colour_path = ColourPath(colour_channels) if colour_channels > 0 else None
        self.colour_jitter = colour_jitter
        self.out_channels = shape_path.out_channels + colour_channels

    def forward(self, images: Tensor) -> Tensor:
        shape_input = images
        if self.colour_jitter and self.training:
            matrices = random_colour_matrices(images.shape[0], images.device, images.dtype)
            shape_input = torch.einsum("bij,bjhw->bihw", matrices, images)
        features = self.shape_path(shape_input)
        if self.colour_path is None:
            return features
        colour = self.colour_path(images, tuple(features.shape[-2:]))
        return torch.cat([features, colour.to(features.dtype)], dim=1)
