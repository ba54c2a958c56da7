"""Retrieval with the short queries people type ("红色的圆形", "red circle"), not whole world captions.

    python bench/retrieval_phrases.py CHECKPOINT [CHECKPOINT ...] [--split heldout] [--gallery-size 1000]

Every (colour, shape) pair of the world is one query per language: Chinese "{colour}的{shape}" (红色的圆形),
English "{colour} {shape}" (red circle). The gallery is the first `--gallery-size` scenes of the split; a
retrieved scene is right when it has an object of that colour and shape (any size). P@1: the share of queries
whose top scene is right; P@5: the mean share of right scenes in the top 5. Only pairs present in the gallery
count, split into held-out pairs (never seen in training) and seen pairs. `OFA.retrieve` without reranking.
"""

from __future__ import annotations

import argparse
import platform
import time

import torch

from ofa import OFA
from ofa.data.world import World
from ofa.data.world.vocab import COLOUR_NAMES, COLOUR_ZH, HELDOUT_PAIRS, SHAPE_NAMES, SHAPE_ZH

K = 5


def phrase(colour: str, shape: str, lang: str) -> str:
    return f"{COLOUR_ZH[colour]}的{SHAPE_ZH[shape]}" if lang == "zh" else f"{colour} {shape}"


def score(model: OFA, split: str, size: int, lang: str) -> dict[str, tuple[int, float, float]]:
    """pair kind -> (queries, P@1, P@5)."""
    world = World(seed=0, image_size=model.image_size)
    scenes = list(world.iter(split, size))
    contents = [{(o.colour, o.shape) for o in s.objects} for s in scenes]
    pairs = [(c, s) for c in COLOUR_NAMES for s in SHAPE_NAMES if any((c, s) in have for have in contents)]
    hits = model.retrieve([phrase(c, s, lang) for c, s in pairs], [s.image for s in scenes], k=K, lang=lang)
    rows: dict[str, list[tuple[bool, float]]] = {"held-out pairs": [], "seen pairs": []}
    for pair, found in zip(pairs, hits):
        right = [pair in contents[h.index] for h in found]
        rows["held-out pairs" if pair in HELDOUT_PAIRS else "seen pairs"].append((right[0], sum(right) / K))
    rows["all"] = rows["held-out pairs"] + rows["seen pairs"]
    return {
        kind: (len(r), sum(a for a, _ in r) / max(1, len(r)), sum(b for _, b in r) / max(1, len(r)))
        for kind, r in rows.items()
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("checkpoints", nargs="+")
    parser.add_argument("--split", default="heldout")
    parser.add_argument("--gallery-size", type=int, default=1000)
    args = parser.parse_args()
    print(
        f"{args.split}, gallery {args.gallery_size}; {platform.machine()}, {torch.get_num_threads()} threads, "
        f"torch {torch.__version__}, {time.strftime('%Y-%m-%d')}"
    )
    for checkpoint in args.checkpoints:
        model = OFA.from_pretrained(checkpoint)
        print(f"\n{checkpoint}\n\n| lang | pairs | queries | P@1 | P@{K} |\n|---|---|---|---|---|")
        for lang in ("zh", "en"):
            for kind, (n, p1, p5) in score(model, args.split, args.gallery_size, lang).items():
                print(f"| {lang} | {kind} | {n} | {p1:.3f} | {p5:.3f} |")


if __name__ == "__main__":
    main()
