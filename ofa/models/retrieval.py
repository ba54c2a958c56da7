"""Image-text retrieval inside the unified model: one encoder, two small projection heads, CLIP-style scores.

Images and texts go through the **same** OFA encoder, each with its own input:

* an image: its patches followed by the image instruction (the caption prompt of the sample's language,
  `ofa.tasks.retrieval`), so the pooled states are the ones the caption decoder reads;
* a text: the text itself (bos, tokens, eos), no image.

The encoder's last hidden states are mean-pooled over the non-pad positions (image patches and prompt
tokens for an image), projected by one linear map per modality (`image_proj`, `text_proj`, no bias) into
`retrieval_dim` dimensions and L2-normalised. Similarities are dot products; the contrastive loss scales them
by `exp(logit_scale)`, initialised at 1/0.07 and capped at 100 as in CLIP.

The head exists only when `OFAConfig.retrieval_dim` is set; its parameters are stored under `retrieval.*`.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

INIT_LOGIT_SCALE = math.log(1 / 0.07)  # CLIP
MAX_LOGIT_SCALE = 100.0


class NoRetrievalHeadError(ValueError):
    """The model has no retrieval head (its config has no `retrieval_dim`)."""


def mean_pool(hidden_states: Tensor, padding_mask: Tensor) -> Tensor:
    """Mean of `hidden_states` (B, S, D) over the positions where `padding_mask` (B, S; True = pad) is False."""
    keep = (~padding_mask).to(hidden_states.dtype).unsqueeze(-1)
    count = keep.sum(dim=1).clamp(min=1.0)
    return (hidden_states * keep).sum(dim=1) / count


class RetrievalHead(nn.Module):
    """The two projections into the shared embedding space and the learned temperature."""

    def __init__(self, d_model: int, retrieval_dim: int) -> None:
        super().__init__()
        self.image_proj = nn.Linear(d_model, retrieval_dim, bias=False)
        self.text_proj = nn.Linear(d_model, retrieval_dim, bias=False)
        self.logit_scale = nn.Parameter(torch.tensor(INIT_LOGIT_SCALE))
        nn.init.xavier_uniform_(self.image_proj.weight)
        nn.init.xavier_uniform_(self.text_proj.weight)

    def project(self, hidden_states: Tensor, padding_mask: Tensor, modality: str) -> Tensor:
        """Pooled, projected and L2-normalised (float32) embeddings (B, retrieval_dim) of one modality."""
        if modality not in ("image", "text"):
            raise ValueError(f"modality must be 'image' or 'text', got {modality!r}")
        proj = self.image_proj if modality == "image" else self.text_proj
        pooled = mean_pool(hidden_states, padding_mask)
        return F.normalize(proj(pooled).float(), dim=-1)

    def scale(self) -> Tensor:
        """The multiplier of the similarities in the contrastive loss: ``exp(logit_scale)``, at most 100."""
        return self.logit_scale.float().exp().clamp(max=MAX_LOGIT_SCALE)


__all__ = ["INIT_LOGIT_SCALE", "MAX_LOGIT_SCALE", "NoRetrievalHeadError", "RetrievalHead", "mean_pool"]
