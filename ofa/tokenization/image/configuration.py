"""Configuration of the VQGAN image tokenizer (taming-transformers layout) and its error type."""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any

QUANTIZERS = ("ema", "gumbel", "fsq")
# Taming normalises with GroupNorm(32 groups), so every feature width must be a multiple of 32.
NORM_GROUPS = 32


class ImageTokenizerError(ValueError):
    """A bad image-tokenizer config, checkpoint, image or code array; the message names the problem."""


@dataclass
class ImageTokenizerConfig:
    """Architecture and quantizer of a VQGAN image tokenizer.

    The autoencoder is taming-transformers' `Encoder`/`Decoder`: `len(channel_multipliers)` resolution
    levels, each with `num_res_blocks` ResNet blocks (attention after each block at the resolutions in
    `attn_resolutions`, and always in the middle block), so images shrink by
    `2 ** (len(channel_multipliers) - 1)` into a grid of codes.

    `quantizer` picks the codebook:

    * ``"gumbel"``: taming's `GumbelQuantize` (OFA's official tokenizer): a 1x1 conv to `codebook_size`
      logits, Gumbel-softmax while training (KL to the uniform prior weighted by `kl_weight`), argmax at
      inference.
    * ``"ema"``: nearest-neighbour vector quantization with an EMA codebook (`ema_decay`), a commitment loss
      (`commitment_weight`), k-means initialisation and restarts of codes whose EMA usage falls below
      `dead_code_threshold` (``vector-quantize-pytorch``).
    * ``"fsq"``: finite scalar quantization (Mentzer et al., 2023, ``vector-quantize-pytorch``'s `FSQ`):
      latent channel i is bounded and rounded to `fsq_levels[i]` values and the code is the mixed-radix
      number of those digits, so `embed_dim` = len(fsq_levels) and `codebook_size` = their product. There is
      no codebook to learn and so none to collapse: on world scenes the EMA codebook lost the object colours.
    """

    resolution: int = 64
    in_channels: int = 3
    out_channels: int = 3
    channels: int = 32
    channel_multipliers: tuple[int, ...] = (1, 1, 2, 2)
    num_res_blocks: int = 1
    attn_resolutions: tuple[int, ...] = (8,)
    z_channels: int = 64
    embed_dim: int = 32
    codebook_size: int = 512
    dropout: float = 0.0
    quantizer: str = "ema"
    # "ema" quantizer
    commitment_weight: float = 0.25
    ema_decay: float = 0.99
    dead_code_threshold: float = 1.0
    kmeans_init: bool = True
    # "gumbel" quantizer
    kl_weight: float = 5e-4
    temperature: float = 1.0
    straight_through: bool = True
    # "fsq" quantizer
    fsq_levels: tuple[int, ...] = (8, 8, 8)

    def __post_init__(self) -> None:
        self.channel_multipliers = tuple(int(m) for m in self.channel_multipliers)
        self.attn_resolutions = tuple(int(r) for r in self.attn_resolutions)
        self.fsq_levels = tuple(int(n) for n in self.fsq_levels)
        if self.quantizer not in QUANTIZERS:
            raise ImageTokenizerError(f"quantizer must be one of {QUANTIZERS}, got {self.quantizer!r}")
        positive = ("resolution", "in_channels", "out_channels", "channels", "num_res_blocks", "z_channels")
        for name in (*positive, "embed_dim"):
            if int(getattr(self, name)) < 1:
                raise ImageTokenizerError(f"{name} must be positive, got {getattr(self, name)}")
        if not self.channel_multipliers or min(self.channel_multipliers) < 1:
            raise ImageTokenizerError(f"channel_multipliers must be positive, got {self.channel_multipliers}")
        widths = [self.channels * m for m in self.channel_multipliers]
        if any(w % NORM_GROUPS for w in widths):
            raise ImageTokenizerError(
                f"every width channels x multiplier must be a multiple of {NORM_GROUPS} (GroupNorm), got {widths}"
            )
        if not 2 <= self.codebook_size <= 65536:
            raise ImageTokenizerError(
                f"codebook_size must be in [2, 65536] (codes are stored as uint16), got {self.codebook_size}"
            )
        if self.resolution % self.factor:
            raise ImageTokenizerError(
                f"resolution {self.resolution} is not a multiple of the downsampling factor {self.factor}"
            )
        if self.quantizer == "fsq":
            if not self.fsq_levels or min(self.fsq_levels) < 2:
                raise ImageTokenizerError(f"fsq_levels must be integers >= 2, got {list(self.fsq_levels)}")
            if self.embed_dim != len(self.fsq_levels) or self.codebook_size != math.prod(self.fsq_levels):
                raise ImageTokenizerError(
                    f"fsq: embed_dim must be len(fsq_levels) = {len(self.fsq_levels)} and codebook_size their "
                    f"product {math.prod(self.fsq_levels)}, got {self.embed_dim} and {self.codebook_size}"
                )
        if not 0.0 < self.ema_decay < 1.0:
            raise ImageTokenizerError(f"ema_decay must be in (0, 1), got {self.ema_decay}")

    @property
    def factor(self) -> int:
        """How many pixels one code covers along each side."""
        return 2 ** (len(self.channel_multipliers) - 1)

    @property
    def grid(self) -> int:
        """Codes per side at the nominal `resolution`."""
        return self.resolution // self.factor

    @classmethod
    def world(cls, **overrides: Any) -> ImageTokenizerConfig:
        """The small tokenizer of the synthetic world (tasks/world/vq.yaml): 64 px -> 8x8 codes, FSQ 8x8x8."""
        values: dict[str, Any] = dict(quantizer="fsq", embed_dim=3, fsq_levels=(8, 8, 8), codebook_size=512)
        values.update(overrides)
        return cls(**values)

    @classmethod
    def official_gumbel_f8(cls, **overrides: Any) -> ImageTokenizerConfig:
        """The taming "Gumbel f8" VQGAN that OFA's text-to-image uses: 8192 codes, 256 px -> 32x32."""
        values: dict[str, Any] = dict(
            resolution=256,
            channels=128,
            channel_multipliers=(1, 1, 2, 4),
            num_res_blocks=2,
            attn_resolutions=(32,),
            z_channels=256,
            embed_dim=256,
            codebook_size=8192,
            quantizer="gumbel",
            kl_weight=1e-8,
        )
        values.update(overrides)
        return cls(**values)

    def to_dict(self) -> dict[str, Any]:
        values = dataclasses.asdict(self)
        values["channel_multipliers"] = list(self.channel_multipliers)
        values["attn_resolutions"] = list(self.attn_resolutions)
        values["fsq_levels"] = list(self.fsq_levels)
        return values

    @classmethod
    def from_dict(cls, values: dict[str, Any], source: str = "config") -> ImageTokenizerConfig:
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ImageTokenizerError(f"{source}: unknown image-tokenizer config keys {unknown}")
        try:
            return cls(**values)
        except (TypeError, ImageTokenizerError) as err:
            raise ImageTokenizerError(f"{source}: {err}") from None
