"""Training our VQGAN: reconstruction + codebook losses, one optimisation step, PSNR and codebook usage.

No adversarial or perceptual (LPIPS) term: both need networks or weights beyond the tokenizer. An optional
image-gradient L1 term sharpens edges without any pretrained network.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from ofa.tokenization.image.modeling import ImageTokenizer


@dataclass
class VQLossConfig:
    """Weights of the loss terms; reconstruction terms are on the [0, 1] pixel scale."""

    l1_weight: float = 1.0
    l2_weight: float = 0.0
    gradient_weight: float = 0.0
    quantizer_weight: float = 1.0


def psnr(reconstruction: Tensor, target: Tensor) -> Tensor:
    """Mean over images of the PSNR in dB of [0, 1] images (the reconstruction is clamped to [0, 1] first)."""
    mse = (reconstruction.clamp(0, 1) - target).pow(2).flatten(1).mean(dim=1)
    return (-10.0 * torch.log10(mse.clamp_min(1e-10))).mean()


def codebook_usage(codes: Tensor, codebook_size: int) -> tuple[float, float]:
    """(fraction of the codebook used, perplexity of the code histogram) over a batch of codes."""
    counts = torch.bincount(codes.flatten(), minlength=codebook_size).float()
    probs = counts / counts.sum().clamp_min(1.0)
    entropy = -(probs * probs.clamp_min(1e-12).log()).sum()
    return (counts > 0).float().mean().item(), entropy.exp().item()


def _image_gradients(images: Tensor) -> tuple[Tensor, Tensor]:
    return images[..., :, 1:] - images[..., :, :-1], images[..., 1:, :] - images[..., :-1, :]


def vq_loss(
    model: ImageTokenizer, images: Tensor, config: VQLossConfig | None = None
) -> tuple[Tensor, dict[str, float]]:
    """Total loss of a forward pass over images (B, C, H, W) in [0, 1], and its metrics as floats."""
    config = config or VQLossConfig()
    output = model(images)
    reconstruction = output.reconstruction
    l1 = F.l1_loss(reconstruction, images)
    l2 = F.mse_loss(reconstruction, images)
    total = config.l1_weight * l1 + config.l2_weight * l2 + config.quantizer_weight * output.quantizer_loss
    metrics = {"l1": l1.item(), "l2": l2.item(), "quantizer": output.quantizer_loss.item()}
    if config.gradient_weight:
        gradient = sum(
            F.l1_loss(a, b)
            for a, b in zip(_image_gradients(reconstruction), _image_gradients(images), strict=True)
        )
        total = total + config.gradient_weight * gradient
        metrics["gradient"] = gradient.item()
    usage, perplexity = codebook_usage(output.codes, model.codebook_size)
    metrics.update(
        loss=total.item(),
        psnr=psnr(reconstruction.detach(), images).item(),
        usage=usage,
        perplexity=perplexity,
    )
    return total, metrics


def train_step(
    model: ImageTokenizer,
    optimizer: torch.optim.Optimizer,
    images: Tensor,
    config: VQLossConfig | None = None,
    max_grad_norm: float | None = 1.0,
) -> dict[str, float]:
    """One optimisation step on a batch of images in [0, 1]; returns the metrics of `vq_loss`.

    The EMA codebook is updated inside the forward pass (it has no gradient); the Gumbel codebook is
    trained by the optimizer.
    """
    model.train()
    optimizer.zero_grad(set_to_none=True)
    loss, metrics = vq_loss(model, images, config)
    loss.backward()
    if max_grad_norm is not None:
        metrics["grad_norm"] = float(torch.nn.utils.clip_grad_norm_(model.parameters(), max_grad_norm))
    optimizer.step()
    return metrics
