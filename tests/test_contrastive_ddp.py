"""The contrastive loss over 2 gloo processes gives the gradients of one process on the whole batch.

Each process embeds its half of 8 image-text pairs with a tiny random `OFAModel`, computes open_clip's
`ClipLoss` (embeddings all-gathered with gradients) and averages the parameter gradients over the processes,
as DDP does. The reference is the same loss in one process over all 8 pairs, computed by hand.
"""

from __future__ import annotations

import os
import socket

import pytest
import torch
import torch.nn.functional as F

from ofa.models import OFAConfig, OFAModel

PAIRS, WORLD = 8, 2
TINY = {
    "vocab_size": 600,
    "num_codes": 64,
    "num_bins": 32,
    "d_model": 32,
    "encoder_layers": 1,
    "decoder_layers": 1,
    "encoder_attention_heads": 2,
    "decoder_attention_heads": 2,
    "encoder_ffn_dim": 64,
    "decoder_ffn_dim": 64,
    "resnet_layers": [1, 1, 1],
    "resnet_width": 8,
    "image_size": 32,
    "code_image_size": 64,
    "max_source_positions": 32,
    "max_target_positions": 16,
    "image_bucket_size": 8,
    "token_bucket_size": 16,
    "dropout": 0.0,
    "retrieval_dim": 8,
}


def make_inputs() -> tuple[OFAModel, dict[str, torch.Tensor]]:
    """A seeded tiny model and 8 pairs; texts of different lengths, so padding is exercised."""
    torch.manual_seed(0)
    model = OFAModel(OFAConfig(**TINY)).eval()  # BatchNorm on running statistics: no cross-sample coupling
    images = torch.randn(PAIRS, 3, 32, 32)
    prompt = torch.tensor([[0, 11, 12, 13, 2]]).expand(PAIRS, -1)
    texts = torch.full((PAIRS, 9), 1, dtype=torch.long)
    for i in range(PAIRS):
        length = 3 + i % 6
        texts[i, :length] = torch.randint(4, 400, (length,))
        texts[i, 0], texts[i, length - 1] = 0, 2
    return model, {"images": images, "prompt": prompt, "texts": texts}


def gradients(model: OFAModel) -> dict[str, torch.Tensor]:
    return {n: p.grad.detach().clone() for n, p in model.named_parameters() if p.grad is not None}


def worker(rank: int, port: int, out_file: str) -> None:
    import torch.distributed as dist

    from ofa.training.contrastive import clip_loss

    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=WORLD)
    try:
        results = {}
        for local_loss in (True, False):
            model, data = make_inputs()
            rows = slice(rank * PAIRS // WORLD, (rank + 1) * PAIRS // WORLD)
            images = model.embed_images(data["images"][rows], data["prompt"][rows])
            texts = model.embed_texts(data["texts"][rows])
            loss = clip_loss(WORLD, rank, local_loss)(images, texts, model.retrieval.scale())
            loss.backward()
            grads = gradients(model)
            for g in grads.values():  # DDP: the mean of the ranks' gradients
                dist.all_reduce(g)
                g /= WORLD
            results[local_loss] = grads
        if rank == 0:
            torch.save(results, out_file)
    finally:
        dist.destroy_process_group()


def reference_gradients() -> dict[str, torch.Tensor]:
    """One process, all pairs, CLIP's symmetric cross entropy written out (1 thread, as the workers)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # the float reduction order then matches the workers' more closely
    try:
        model, data = make_inputs()
        images = model.embed_images(data["images"], data["prompt"])
        texts = model.embed_texts(data["texts"])
        logits = model.retrieval.scale() * images @ texts.T
        labels = torch.arange(PAIRS)
        ((F.cross_entropy(logits, labels) + F.cross_entropy(logits.T, labels)) / 2).backward()
        return gradients(model)
    finally:
        torch.set_num_threads(threads)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_two_gloo_processes_match_one_process(tmp_path):
    import torch.multiprocessing as mp

    out_file = tmp_path / "grads.pt"
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    mp.spawn(worker, args=(free_port(), str(out_file)), nprocs=WORLD, join=True)
    distributed = torch.load(out_file, weights_only=True)
    reference = reference_gradients()
    assert "retrieval.logit_scale" in reference and "encoder.embed_images.conv1.weight" in reference
    for local_loss, grads in distributed.items():
        assert grads.keys() == reference.keys(), local_loss
        for name, expected in reference.items():
            assert expected.abs().max() > 0, name  # every parameter the loss reaches gets a gradient
            # rtol covers float summation order (sums over many tokens); a gradient lost across
            # processes (gather without grad) is off by tens of percent.
            close = torch.allclose(grads[name], expected, atol=1e-6, rtol=1e-5)
            assert close, f"{name} {local_loss=}: max diff {(grads[name] - expected).abs().max():.3g}"


def test_one_process_clip_loss_is_the_symmetric_cross_entropy():
    from ofa.training.contrastive import clip_loss

    torch.manual_seed(0)
    images = F.normalize(torch.randn(5, 4), dim=-1)
    texts = F.normalize(torch.randn(5, 4), dim=-1)
    scale = torch.tensor(3.0)
    logits = (scale * images @ texts.T).tolist()
    by_hand = 0.0
    for i in range(5):  # -log softmax of the diagonal, rows (image->text) and columns (text->image)
        row = torch.tensor(logits[i])
        col = torch.tensor([logits[j][i] for j in range(5)])
        by_hand += float(torch.logsumexp(row, 0) - row[i] + torch.logsumexp(col, 0) - col[i]) / 10
    assert float(clip_loss()(images, texts, scale)) == pytest.approx(by_hand, abs=1e-6)
