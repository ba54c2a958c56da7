"""Does a checkpoint's image stem (or encoder) tell shapes apart? A linear probe at each object's patch.

    python bench/stem_feature_probe.py checkpoints/ofa-world-tiny            # the shipped stem
    python bench/stem_feature_probe.py checkpoints/ofa-world-tiny --random   # same architecture, random weights

For 1,500 `train` and 300 `val` world scenes (96 px), takes the stem's output feature (and the encoder's output
state) at the grid cell holding each object's centre, standardises them, fits one linear layer per attribute
(colour: 8 classes, shape: 7) with Adam on the train objects and prints the accuracy on the val objects and on
the objects of held-out colour-shape pairs in 300 `heldout` scenes (a probe that reads shape there reads it apart
from colour). Eval-mode BatchNorm, 2 threads.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from ofa.data.images import image_to_tensor
from ofa.data.world import World, WorldConfig
from ofa.data.world.vocab import COLOUR_NAMES, HELDOUT_PAIRS, SHAPE_NAMES
from ofa.models import OFAModel


@torch.no_grad()
def object_features(
    model: OFAModel, world: World, split: str, count: int, where: str
) -> tuple[torch.Tensor, ...]:
    size = model.config.image_size
    rows, colours, shapes = [], [], []
    for i in range(count):
        scene = world.scene(split, i)
        image = image_to_tensor(scene.image, size)[None]
        grid = model.encoder.embed_images(image)[0]  # (C, h, w)
        h, w = grid.shape[1:]
        if where == "encoder":
            grid = model.encoder(patch_images=image).last_hidden_state[0, : h * w].T.reshape(-1, h, w)
        for obj in scene.objects:
            r = min(h - 1, int(obj.center[1] * h / world.config.image_size))
            c = min(w - 1, int(obj.center[0] * w / world.config.image_size))
            rows.append(grid[:, r, c])
            colours.append(COLOUR_NAMES.index(obj.colour))
            shapes.append(SHAPE_NAMES.index(obj.shape))
    return torch.stack(rows), torch.tensor(colours), torch.tensor(shapes)


def probe(
    train_x: torch.Tensor,
    train_y: torch.Tensor,
    evals: list[tuple[torch.Tensor, torch.Tensor]],
    classes: int,
) -> list[float]:
    head = nn.Linear(train_x.shape[1], classes)
    optimizer = torch.optim.Adam(head.parameters(), 1e-2)
    for _ in range(300):
        loss = F.cross_entropy(head(train_x), train_y)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    with torch.no_grad():
        return [(head(x).argmax(1) == y).float().mean().item() for x, y in evals]


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("checkpoint", type=Path)
    parser.add_argument(
        "--random", action="store_true", help="the checkpoint's architecture with fresh weights"
    )
    args = parser.parse_args()
    torch.set_num_threads(2)
    torch.manual_seed(0)
    model = OFAModel.from_pretrained(args.checkpoint)
    if args.random:
        model = OFAModel(model.config)
    model.eval()
    world = World(WorldConfig(image_size=96))
    for where in ("stem", "encoder"):
        train_x, train_c, train_s = object_features(model, world, "train", 1500, where)
        val_x, val_c, val_s = object_features(model, world, "val", 300, where)
        held_x, held_c, held_s = object_features(model, world, "heldout", 300, where)
        pairs = {(COLOUR_NAMES.index(c), SHAPE_NAMES.index(s)) for c, s in HELDOUT_PAIRS}
        keep = torch.tensor([(int(c), int(s)) in pairs for c, s in zip(held_c, held_s)])
        held_x, held_c, held_s = held_x[keep], held_c[keep], held_s[keep]
        mean, std = train_x.mean(0), train_x.std(0) + 1e-5
        train_x, val_x, held_x = (train_x - mean) / std, (val_x - mean) / std, (held_x - mean) / std
        colour = probe(train_x, train_c, [(val_x, val_c), (held_x, held_c)], len(COLOUR_NAMES))
        shape = probe(train_x, train_s, [(val_x, val_s), (held_x, held_s)], len(SHAPE_NAMES))
        print(
            f"{where}: val colour / shape accuracy {colour[0]:.3f} / {shape[0]:.3f} ({len(val_c)} objects); "
            f"held-out pairs {colour[1]:.3f} / {shape[1]:.3f} ({len(held_c)} objects)"
        )


if __name__ == "__main__":
    main()
