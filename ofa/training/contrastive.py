"""The contrastive image-text loss: open_clip's `ClipLoss`, always gathering embeddings with gradients.

Kept apart from the data stream (`ofa.training.retrieval`) so that using the loss does not import Lightning.
"""

from __future__ import annotations

from open_clip.loss import ClipLoss


def clip_loss(world_size: int = 1, rank: int = 0, local_loss: bool = True) -> ClipLoss:
    """open_clip's symmetric InfoNCE loss over the pairs of all ranks, gathered with gradients.

    Call it as ``loss(image_embeddings, text_embeddings, scale)`` with L2-normalised embeddings of this
    rank's pairs and ``scale = exp(logit_scale)``. ``local_loss=True``: each rank scores its own rows
    against every rank's columns (less memory); False: every rank scores the full matrix. Because the
    all-gather carries gradients (``gather_with_grad=True``), both give, after DDP's averaging over ranks,
    exactly the gradient of the loss over all ranks' pairs computed in one process.
    """
    return ClipLoss(local_loss=local_loss, gather_with_grad=True, rank=rank, world_size=world_size)


__all__ = ["clip_loss"]
