"""The VQGAN convolutional encoder and decoder, laid out exactly as taming-transformers' so that its
checkpoints load by name (`encoder.down.0.block.1.norm1.weight`, `decoder.up.3.upsample.conv.bias`, ...).

Written from the architecture's description: swish activations, GroupNorm(32, eps 1e-6), pre-activation
ResNet blocks with a 1x1 shortcut when the width changes, single-head spatial self-attention, strided-conv
downsampling with (0, 1, 0, 1) zero padding and nearest-neighbour upsampling followed by a conv.
"""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn

from ofa.tokenization.image.configuration import NORM_GROUPS, ImageTokenizerConfig


def _norm(channels: int) -> nn.GroupNorm:
    return nn.GroupNorm(NORM_GROUPS, channels, eps=1e-6, affine=True)


def _conv3(in_channels: int, out_channels: int, stride: int = 1, padding: int = 1) -> nn.Conv2d:
    return nn.Conv2d(in_channels, out_channels, kernel_size=3, stride=stride, padding=padding)


class ResnetBlock(nn.Module):
    """norm -> swish -> conv, twice, plus the (1x1-projected when widths differ) input."""

    def __init__(self, in_channels: int, out_channels: int, dropout: float = 0.0) -> None:
        super().__init__()
        self.norm1 = _norm(in_channels)
        self.conv1 = _conv3(in_channels, out_channels)
        self.norm2 = _norm(out_channels)
        self.dropout = nn.Dropout(dropout)
        self.conv2 = _conv3(out_channels, out_channels)
        if in_channels != out_channels:
            self.nin_shortcut = nn.Conv2d(in_channels, out_channels, kernel_size=1)

    def forward(self, x: Tensor) -> Tensor:
        h = self.conv1(F.silu(self.norm1(x)))
        h = self.conv2(self.dropout(F.silu(self.norm2(h))))
        if hasattr(self, "nin_shortcut"):
            x = self.nin_shortcut(x)
        return x + h


class AttnBlock(nn.Module):
    """Single-head self-attention over all positions of a feature map, with a residual connection."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.norm = _norm(channels)
        self.q = nn.Conv2d(channels, channels, kernel_size=1)
        self.k = nn.Conv2d(channels, channels, kernel_size=1)
        self.v = nn.Conv2d(channels, channels, kernel_size=1)
        self.proj_out = nn.Conv2d(channels, channels, kernel_size=1)

    def forward(self, x: Tensor) -> Tensor:
        b, c, h, w = x.shape
        normed = self.norm(x)
        # (B, C, H, W) -> (B, 1 head, H*W, C)
        q, k, v = (proj(normed).flatten(2).transpose(1, 2).unsqueeze(1) for proj in (self.q, self.k, self.v))
        attended = F.scaled_dot_product_attention(q, k, v)
        attended = attended.squeeze(1).transpose(1, 2).reshape(b, c, h, w)
        return x + self.proj_out(attended)


class Downsample(nn.Module):
    """Halve the resolution with a stride-2 3x3 conv; padding only right and bottom, as taming does."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv = _conv3(channels, channels, stride=2, padding=0)

    def forward(self, x: Tensor) -> Tensor:
        return self.conv(F.pad(x, (0, 1, 0, 1)))


class Upsample(nn.Module):
    """Double the resolution (nearest neighbour), then a 3x3 conv."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv = _conv3(channels, channels)

    def forward(self, x: Tensor) -> Tensor:
        return self.conv(F.interpolate(x, scale_factor=2.0, mode="nearest"))


class _Level(nn.Module):
    """One resolution level: ResNet blocks, optional attention after each, optional resampling."""

    def __init__(self, in_channels: int, out_channels: int, blocks: int, attention: bool, dropout: float):
        super().__init__()
        widths = [in_channels] + [out_channels] * blocks
        self.block = nn.ModuleList(ResnetBlock(widths[i], widths[i + 1], dropout) for i in range(blocks))
        self.attn = nn.ModuleList(AttnBlock(out_channels) for _ in range(blocks if attention else 0))

    def run_blocks(self, h: Tensor) -> Tensor:
        for i, block in enumerate(self.block):
            h = block(h)
            if len(self.attn):
                h = self.attn[i](h)
        return h


class _Middle(nn.Module):
    def __init__(self, channels: int, dropout: float) -> None:
        super().__init__()
        self.block_1 = ResnetBlock(channels, channels, dropout)
        self.attn_1 = AttnBlock(channels)
        self.block_2 = ResnetBlock(channels, channels, dropout)

    def forward(self, h: Tensor) -> Tensor:
        return self.block_2(self.attn_1(self.block_1(h)))


class Encoder(nn.Module):
    """Images (B, in_channels, H, W) -> features (B, z_channels, H / factor, W / factor)."""

    def __init__(self, config: ImageTokenizerConfig) -> None:
        super().__init__()
        mults = config.channel_multipliers
        self.conv_in = _conv3(config.in_channels, config.channels)
        self.down = nn.ModuleList()
        resolution = config.resolution
        width = config.channels
        for level, mult in enumerate(mults):
            out_width = config.channels * mult
            stage = _Level(
                width, out_width, config.num_res_blocks, resolution in config.attn_resolutions, config.dropout
            )
            width = out_width
            if level != len(mults) - 1:
                stage.downsample = Downsample(width)
                resolution //= 2
            self.down.append(stage)
        self.mid = _Middle(width, config.dropout)
        self.norm_out = _norm(width)
        self.conv_out = _conv3(width, config.z_channels)

    def forward(self, x: Tensor) -> Tensor:
        h = self.conv_in(x)
        for stage in self.down:
            h = stage.run_blocks(h)
            if hasattr(stage, "downsample"):
                h = stage.downsample(h)
        h = self.mid(h)
        return self.conv_out(F.silu(self.norm_out(h)))


class Decoder(nn.Module):
    """Latents (B, z_channels, h, w) -> images (B, out_channels, h * factor, w * factor), unbounded."""

    def __init__(self, config: ImageTokenizerConfig) -> None:
        super().__init__()
        mults = config.channel_multipliers
        width = config.channels * mults[-1]
        resolution = config.resolution // config.factor
        self.conv_in = _conv3(config.z_channels, width)
        self.mid = _Middle(width, config.dropout)
        stages: list[_Level] = []
        for level in reversed(range(len(mults))):
            out_width = config.channels * mults[level]
            # One block more than the encoder per level, as in taming.
            stage = _Level(
                width,
                out_width,
                config.num_res_blocks + 1,
                resolution in config.attn_resolutions,
                config.dropout,
            )
            width = out_width
            if level != 0:
                stage.upsample = Upsample(width)
                resolution *= 2
            stages.insert(0, stage)
        # Indexed by level (0 = full resolution), so weight names match taming's.
        self.up = nn.ModuleList(stages)
        self.norm_out = _norm(width)
        self.conv_out = _conv3(width, config.out_channels)

    def forward(self, z: Tensor) -> Tensor:
        h = self.mid(self.conv_in(z))
        for stage in reversed(self.up):
            h = stage.run_blocks(h)
            if hasattr(stage, "upsample"):
                h = stage.upsample(h)
        return self.conv_out(F.silu(self.norm_out(h)))
