"""How fast can an image stem learn colour and shape of single world objects? A pooled linear probe.

    python bench/stem_shape_probe.py --stem resnet --steps 800     # the official trunk, [1,1,1] width 32
    python bench/stem_shape_probe.py --stem convnet --steps 400    # plain 3x3 conv stages 32-64-128-256

Trains stem + global average pool + one linear layer (colour and shape logits) on one-object train scenes at
96 px (AdamW, lr 2e-3, batch 32, 1 thread) and prints validation accuracy every 50 steps (128 val scenes,
eval-mode BatchNorm). Measured 2026-12-02 on the 2-core CPU (under load): val shape accuracy after 400
steps 0.90 (resnet) and 0.86 (convnet); colour ~1.0 for both from step 100-300. So with direct supervision the
official trunk learns shape within a few hundred steps: the slow part of the world recipe is elsewhere.
"""

from __future__ import annotations

import argparse
import time

import torch
import torch.nn.functional as F
from torch import nn

from ofa.data.images import image_to_tensor
from ofa.data.world import World, WorldConfig
from ofa.data.world.vocab import COLOUR_NAMES, SHAPE_NAMES
from ofa.models.convnet import ConvStem
from ofa.models.resnet import ResNetTrunk


def batch(world: World, split: str, start: int, n: int, size: int) -> tuple[torch.Tensor, ...]:
    images, colours, shapes = [], [], []
    for i in range(start, start + n):
        scene = world.scene(split, i)
        obj = scene.objects[0]
        images.append(image_to_tensor(scene.image, size))
        colours.append(COLOUR_NAMES.index(obj.colour))
        shapes.append(SHAPE_NAMES.index(obj.shape))
    return torch.stack(images), torch.tensor(colours), torch.tensor(shapes)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--stem", choices=["resnet", "convnet"], default="convnet")
    parser.add_argument("--steps", type=int, default=400)
    parser.add_argument("--size", type=int, default=96)
    parser.add_argument("--lr", type=float, default=2e-3)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    torch.set_num_threads(1)
    torch.manual_seed(args.seed)
    world = World(WorldConfig(image_size=args.size, max_objects=1))
    stem = ResNetTrunk([1, 1, 1], 32) if args.stem == "resnet" else ConvStem([32, 64, 128, 256])
    head = nn.Linear(stem.out_channels, len(COLOUR_NAMES) + len(SHAPE_NAMES))
    optimizer = torch.optim.AdamW([*stem.parameters(), *head.parameters()], lr=args.lr)
    n_colours = len(COLOUR_NAMES)
    val = batch(world, "val", 0, 128, args.size)
    start = time.perf_counter()
    for step in range(args.steps):
        images, colours, shapes = batch(world, "train", step * 32, 32, args.size)
        logits = head(stem(images).mean((2, 3)))
        loss = F.cross_entropy(logits[:, :n_colours], colours) + F.cross_entropy(
            logits[:, n_colours:], shapes
        )
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        if (step + 1) % 50 == 0:
            stem.eval()
            with torch.no_grad():
                logits = head(stem(val[0]).mean((2, 3)))
            stem.train()
            colour_acc = (logits[:, :n_colours].argmax(1) == val[1]).float().mean()
            shape_acc = (logits[:, n_colours:].argmax(1) == val[2]).float().mean()
            print(
                f"{args.stem} step {step + 1}: train loss {loss.item():.2f}, val colour acc {colour_acc:.2f}, "
                f"val shape acc {shape_acc:.2f} ({time.perf_counter() - start:.0f} s)",
                flush=True,
            )


if __name__ == "__main__":
    main()
