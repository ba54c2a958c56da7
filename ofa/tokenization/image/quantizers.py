"""Codebooks: taming's Gumbel quantizer (OFA's official tokenizer) and a trainable EMA vector quantizer.

Both map latents (B, D, h, w) to codes (B, h, w) and back, and return a loss term while training.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn


@dataclass
class QuantizerOutput:
    """`quantized` (B, D, h, w) latents fed to the decoder, `codes` (B, h, w) and the quantizer's loss."""

    quantized: Tensor
    codes: Tensor
    loss: Tensor


class GumbelQuantizer(nn.Module):
    """Taming's `GumbelQuantize`: `proj` (1x1 conv) scores every code, `embed` holds the code vectors.

    Training draws a Gumbel-softmax sample (hard one-hot with a straight-through gradient when
    `straight_through`) at `temperature` and adds `kl_weight` x KL(softmax(logits) || uniform).
    Inference takes the argmax of the logits. (The official code samples Gumbel noise at inference too, so
    its codes are one draw from softmax(logits); the argmax is that distribution's mode.)
    """

    def __init__(
        self,
        embed_dim: int,
        codebook_size: int,
        kl_weight: float = 5e-4,
        temperature: float = 1.0,
        straight_through: bool = True,
    ) -> None:
        super().__init__()
        self.codebook_size = codebook_size
        self.kl_weight = kl_weight
        self.temperature = temperature
        self.straight_through = straight_through
        self.proj = nn.Conv2d(embed_dim, codebook_size, kernel_size=1)
        self.embed = nn.Embedding(codebook_size, embed_dim)

    @property
    def codebook(self) -> Tensor:
        return self.embed.weight

    def codes(self, latents: Tensor) -> Tensor:
        return self.proj(latents).argmax(dim=1)

    def lookup(self, codes: Tensor) -> Tensor:
        return self.embed(codes).permute(0, 3, 1, 2)

    def forward(self, latents: Tensor) -> QuantizerOutput:
        logits = self.proj(latents)
        if self.training:
            one_hot = F.gumbel_softmax(logits, tau=self.temperature, dim=1, hard=self.straight_through)
        else:
            one_hot = F.one_hot(logits.argmax(dim=1), self.codebook_size).permute(0, 3, 1, 2).to(logits.dtype)
        quantized = torch.einsum("bkhw,kd->bdhw", one_hot, self.embed.weight)
        log_probs = F.log_softmax(logits, dim=1)
        kl_to_uniform = (log_probs.exp() * (log_probs + math.log(self.codebook_size))).sum(dim=1).mean()
        return QuantizerOutput(quantized, one_hot.argmax(dim=1), self.kl_weight * kl_to_uniform)


class EMAVectorQuantizer(nn.Module):
    """Nearest-neighbour codebook with EMA updates, commitment loss and dead-code restarts.

    Training runs `vector_quantize_pytorch.VectorQuantize` (k-means initialisation on the first batch, EMA
    cluster statistics, replacement of codes whose EMA usage drops below `dead_code_threshold` by encoder
    outputs of the batch, rotation-trick gradients). Inference is a plain nearest-neighbour search over
    `codebook`, so encoding never changes the codebook.
    """

    def __init__(
        self,
        embed_dim: int,
        codebook_size: int,
        decay: float = 0.99,
        commitment_weight: float = 0.25,
        dead_code_threshold: float = 1.0,
        kmeans_init: bool = True,
    ) -> None:
        super().__init__()
        from vector_quantize_pytorch import VectorQuantize

        self.codebook_size = codebook_size
        self.commitment_weight = commitment_weight
        self.vq = VectorQuantize(
            dim=embed_dim,
            codebook_size=codebook_size,
            decay=decay,
            commitment_weight=commitment_weight,
            threshold_ema_dead_code=dead_code_threshold,
            kmeans_init=kmeans_init,
            rotation_trick=True,
            accept_image_fmap=True,
        )

    @property
    def codebook(self) -> Tensor:
        return self.vq.codebook

    def codes(self, latents: Tensor) -> Tensor:
        flat = latents.permute(0, 2, 3, 1).reshape(-1, latents.shape[1]).float()
        codebook = self.codebook.float()
        # argmin ||z - e||^2 = argmin (||e||^2 - 2 z.e); ||z||^2 is the same for every code.
        distances = codebook.pow(2).sum(dim=1) - 2 * flat @ codebook.t()
        return distances.argmin(dim=1).view(latents.shape[0], *latents.shape[2:])

    def lookup(self, codes: Tensor) -> Tensor:
        return F.embedding(codes, self.codebook).permute(0, 3, 1, 2)

    def forward(self, latents: Tensor) -> QuantizerOutput:
        if self.training:
            quantized, codes, loss = self.vq(latents)
            return QuantizerOutput(quantized, codes, loss.reshape(()))
        codes = self.codes(latents)
        quantized = self.lookup(codes).to(latents.dtype)
        loss = self.commitment_weight * F.mse_loss(latents, quantized)
        return QuantizerOutput(quantized, codes, loss)


class FiniteScalarQuantizer(nn.Module):
    """FSQ: `len(levels)` latent channels, each bounded and rounded to `levels[i]` values (straight-through).

    The code of a cell is the mixed-radix number of its digits, in [0, prod(levels)); `codebook` is the
    implicit grid of all digit vectors. Runs ``vector_quantize_pytorch.FSQ``; no loss term, nothing learnt.
    """

    def __init__(self, levels: tuple[int, ...]) -> None:
        super().__init__()
        from vector_quantize_pytorch import FSQ

        self.codebook_size = math.prod(levels)
        self.fsq = FSQ(levels=list(levels))

    @property
    def codebook(self) -> Tensor:
        return self.fsq.implicit_codebook

    def codes(self, latents: Tensor) -> Tensor:
        return self.fsq(latents.float())[1].long()

    def lookup(self, codes: Tensor) -> Tensor:
        return self.fsq.indices_to_codes(codes)

    def forward(self, latents: Tensor) -> QuantizerOutput:
        quantized, codes = self.fsq(latents.float())
        return QuantizerOutput(quantized.to(latents.dtype), codes.long(), latents.new_zeros(()))
