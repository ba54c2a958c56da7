"""Dense supervised pre-training of the image stem on world scenes, the first stage of a world recipe.

Why. The official OFA starts from an ImageNet-trained ResNet; a small stem trained from scratch with only the
caption and grounding tokens as supervision learned colour but not shape (`bench/stem_feature_probe.py` on the
previous world checkpoint: shape readable from the stem at each object's patch about as badly as from random
weights), and in exploratory runs a stem that had learned shape lost it again when it kept training with the
seq2seq loss at the full learning rate. So a world recipe first trains the stem alone, then keeps it fixed
(`train.freeze`) or lets it learn on slowly (`train.lr_scale`):

* every cell of the stem's output grid gets the object whose box contains the cell centre (the nearest object
  centre wins), and every object also gets the cell that holds its centre (so small objects are never missed);
* per cell, a 1x1 convolution predicts the colour (or background), the shape, the size and the object's box as
  offsets of its edges from the cell centre in cell units; losses: cross entropy + `box_weight` x L1;
* scenes come from the `train` split at indices from `SCENE_OFFSET` on (never the held-out colour-shape pairs),
  AdamW with linear warm-up and cosine decay; the head is thrown away afterwards.

The stage is deterministic for a given recipe (seeded head, fixed scene indices) and runs on every process
identically; a resumed run skips it (the stem comes from the checkpoint).
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ofa.data.images import image_to_tensor
from ofa.data.world import World
from ofa.data.world.schema import WorldObject
from ofa.data.world.vocab import COLOUR_NAMES, SHAPE_NAMES

SCENE_OFFSET = 1 << 31  # stage scenes: train indices the mixture reaches only after 2**31 samples
IGNORE = -100


@dataclass
class DenseTargets:
    """Per-cell targets of a batch: (B, G, G) class indices (IGNORE where unused) and (B, G, G, 4) box offsets."""

    colour: Tensor  # len(COLOUR_NAMES) = background
    shape: Tensor
    size: Tensor
    box: Tensor
    has_object: Tensor  # (B, G, G) bool


def cell_assignment(objects: Sequence[WorldObject], image_size: int, grid: int) -> list[list[int | None]]:
    """`grid` x `grid` table of object indices (None: background), by the rule of the module docstring."""
    cell = image_size / grid
    table: list[list[int | None]] = [[None] * grid for _ in range(grid)]
    for r in range(grid):
        for c in range(grid):
            px, py = (c + 0.5) * cell, (r + 0.5) * cell
            best: tuple[float, int] | None = None
            for i, obj in enumerate(objects):
                x0, y0, x1, y1 = obj.box
                if x0 <= px < x1 and y0 <= py < y1:
                    dist = (obj.center[0] - px) ** 2 + (obj.center[1] - py) ** 2
                    if best is None or dist < best[0]:
                        best = (dist, i)
            table[r][c] = None if best is None else best[1]
    for i, obj in enumerate(objects):
        r = min(grid - 1, max(0, int(obj.center[1] // cell)))
        c = min(grid - 1, max(0, int(obj.center[0] // cell)))
        table[r][c] = i
    return table


def dense_targets(scenes: Sequence[Sequence[WorldObject]], image_size: int, grid: int) -> DenseTargets:
    """Targets for a batch of scenes (each a list of objects in pixel coordinates of `image_size`)."""
    n = len(scenes)
    colour = torch.full((n, grid, grid), len(COLOUR_NAMES), dtype=torch.long)
    shape = torch.full((n, grid, grid), IGNORE, dtype=torch.long)
    size = torch.full((n, grid, grid), IGNORE, dtype=torch.long)
    box = torch.zeros(n, grid, grid, 4)
    cell = image_size / grid
    for b, objects in enumerate(scenes):
        for r, row in enumerate(cell_assignment(objects, image_size, grid)):
            for c, index in enumerate(row):
                if index is None:
                    continue
                obj = objects[index]
                colour[b, r, c] = COLOUR_NAMES.index(obj.colour)
                shape[b, r, c] = SHAPE_NAMES.index(obj.shape)
                size[b, r, c] = int(obj.size == "large")
                cx, cy = (c + 0.5) * cell, (r + 0.5) * cell
                x0, y0, x1, y1 = obj.box
                box[b, r, c] = torch.tensor([x0 - cx, y0 - cy, x1 - cx, y1 - cy]) / cell
    return DenseTargets(colour, shape, size, box, shape != IGNORE)


class DenseHead(nn.Module):
    """1x1 convolution: colour (+ background), shape, size logits and 4 box offsets per cell."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.splits = (len(COLOUR_NAMES) + 1, len(SHAPE_NAMES), 2, 4)
        self.proj = nn.Conv2d(channels, sum(self.splits), 1)

    def forward(self, features: Tensor) -> tuple[Tensor, ...]:
        return torch.split(self.proj(features), self.splits, dim=1)


def dense_loss(outputs: tuple[Tensor, ...], targets: DenseTargets, box_weight: float) -> Tensor:
    colour, shape, size, box = outputs
    loss = F.cross_entropy(colour, targets.colour)
    if targets.has_object.any():
        loss = loss + F.cross_entropy(shape, targets.shape, ignore_index=IGNORE)
        loss = loss + F.cross_entropy(size, targets.size, ignore_index=IGNORE)
        pred = box.permute(0, 2, 3, 1)[targets.has_object]
        loss = loss + box_weight * F.l1_loss(pred, targets.box[targets.has_object])
    return loss


def _batch(world: World, split: str, start: int, count: int, image_size: int) -> tuple[Tensor, list]:
    scenes = [world.scene(split, i) for i in range(start, start + count)]
    images = torch.stack([image_to_tensor(s.image, image_size) for s in scenes])
    scale = image_size / world.config.image_size
    objects = [[_scaled(o, scale) for o in s.objects] for s in scenes]
    return images, objects


def _scaled(obj: WorldObject, scale: float) -> WorldObject:
    if scale == 1:
        return obj
    box = tuple(v * scale for v in obj.box)
    return replace(obj, box=box, center=(obj.center[0] * scale, obj.center[1] * scale))


@torch.no_grad()
def evaluate_stem(
    stem: nn.Module, head: DenseHead, images: Tensor, targets: DenseTargets
) -> dict[str, float]:
    """Per-cell accuracies on object cells (colour, shape, size) and the mean box IoU at object cells."""
    was_training = stem.training
    stem.eval()
    colour, shape, size, box = head(stem(images))
    stem.train(was_training)
    obj = targets.has_object
    result = {
        "colour_acc": (colour.argmax(1) == targets.colour)[obj].float().mean().item(),
        "shape_acc": (shape.argmax(1) == targets.shape)[obj].float().mean().item(),
        "size_acc": (size.argmax(1) == targets.size)[obj].float().mean().item(),
        "background_acc": (colour.argmax(1) == targets.colour)[~obj].float().mean().item(),
    }
    pred, true = box.permute(0, 2, 3, 1)[obj], targets.box[obj]
    lo, hi = torch.maximum(pred[:, :2], true[:, :2]), torch.minimum(pred[:, 2:], true[:, 2:])
    inter = (hi - lo).clamp(min=0).prod(1)
    area = lambda b: (b[:, 2:] - b[:, :2]).clamp(min=0).prod(1)  # noqa: E731
    result["box_iou"] = (inter / (area(pred) + area(true) - inter).clamp(min=1e-6)).mean().item()
    return {k: round(v, 4) for k, v in result.items()}


def pretrain_stem(
    stem: nn.Module,
    world: World,
    image_size: int,
    section: Any,
    seed: int,
    device: torch.device | str = "cpu",
    log: Any = print,
) -> dict[str, Any]:
    """Train `stem` in place with the dense targets (`section`: a recipe's `StemPretrainSection`); returns a
    summary (settings, validation accuracies before the head is discarded, seconds)."""
    device = torch.device(device)
    original = next(stem.parameters()).device
    trainable = [p.requires_grad for p in stem.parameters()]
    for p in stem.parameters():
        p.requires_grad_(True)  # the stage trains the stem even if the recipe freezes it afterwards
    stem.to(device).train()
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        torch.manual_seed(seed)
        head = DenseHead(stem.out_channels).to(device)
    grid = stem(torch.zeros(1, 3, image_size, image_size, device=device)).shape[-1]
    params = [*stem.parameters(), *head.parameters()]
    optimizer = torch.optim.AdamW(params, lr=section.lr, weight_decay=section.weight_decay)
    warmup, steps = section.warmup_steps, section.steps

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        return 0.5 * (1 + math.cos(math.pi * (step - warmup) / max(1, steps - warmup)))

    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, factor)
    val_images, val_objects = _batch(world, "val", SCENE_OFFSET, section.val_scenes, image_size)
    val_targets = dense_targets(val_objects, image_size, grid)
    start = time.perf_counter()
    loss = torch.zeros(())
    for step in range(steps):
        images, objects = _batch(
            world, "train", SCENE_OFFSET + step * section.batch_size, section.batch_size, image_size
        )
        targets = dense_targets(objects, image_size, grid)
        targets = DenseTargets(*(t.to(device) for t in vars(targets).values()))
        loss = dense_loss(head(stem(images.to(device))), targets, section.box_weight)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        scheduler.step()
        if (step + 1) % max(1, steps // 6) == 0 or step + 1 == steps:
            log(
                f"stem pre-training step {step + 1}/{steps}: loss {loss.item():.3f} ({time.perf_counter() - start:.0f} s)"
            )
    val_targets = DenseTargets(*(t.to(device) for t in vars(val_targets).values()))
    metrics = evaluate_stem(stem, head, val_images.to(device), val_targets)
    stem.to(original)
    for p, flag in zip(stem.parameters(), trainable):
        p.requires_grad_(flag)
    summary = {
        "steps": steps,
        "batch_size": section.batch_size,
        "grid": grid,
        "final_loss": round(loss.item(), 4),
        "seconds": round(time.perf_counter() - start, 1),
        "val": metrics,
        "val_scenes": section.val_scenes,
    }
    log(f"stem pre-training done: {json.dumps(metrics)}")
    return summary


def write_summary(summary: dict[str, Any], output_dir: Path) -> None:
    output_dir.mkdir(parents=True, exist_ok=True)
    (output_dir / "stem_pretrain.json").write_text(json.dumps(summary, indent=2) + "\n", encoding="utf-8")


__all__ = ["DenseHead", "DenseTargets", "cell_assignment", "dense_targets", "evaluate_stem", "pretrain_stem"]
