"""Is CPU inference slowed by denormal floats? Captioning and grounding with flushing off and on, side by side.

    python bench/bench_inference_denormal.py [CHECKPOINT] [--scenes 128] [--rounds 5]

Training got ~1.6x slower late in a run from denormals (`train.flush_denormal`); this checks the same for beam
search. Alternates the two settings for `--rounds` rounds over the same `heldout` scenes (English captions, one
English expression per scene, batch 32, 2 threads) and prints the median seconds of each and their ratio. Also
checks that both settings give the same captions and boxes.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from ofa import OFA
from ofa.data.world import World


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("checkpoint", nargs="?", default="checkpoints/ofa-world-tiny")
    parser.add_argument("--scenes", type=int, default=128)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    torch.set_num_threads(2)
    model = OFA.from_pretrained(args.checkpoint)
    world = World(seed=0, image_size=model.image_size)
    scenes = [world.scene("heldout", i) for i in range(args.scenes)]
    images = [s.image for s in scenes]
    expressions = [s.refs_for("en")[0].text for s in scenes]
    model.caption(images[:4])  # warm-up
    times: dict[tuple[str, bool], list[float]] = {}
    outputs: dict[bool, tuple] = {}
    for _ in range(args.rounds):
        for flush in (False, True):
            torch.set_flush_denormal(flush)
            start = time.perf_counter()
            captions = model.caption(images, batch_size=32)
            middle = time.perf_counter()
            boxes = model.ground(images, expressions, batch_size=32)
            end = time.perf_counter()
            times.setdefault(("caption", flush), []).append(middle - start)
            times.setdefault(("ground", flush), []).append(end - middle)
            outputs[flush] = ([c.text for c in captions], [tuple(b.box) for b in boxes])
    torch.set_flush_denormal(False)
    print(f"{args.checkpoint}, {args.scenes} heldout scenes, median of {args.rounds} rounds, 2 threads")
    print("| task | flush off (s) | flush on (s) | off / on |")
    print("|---|---|---|---|")
    for task in ("caption", "ground"):
        off, on = statistics.median(times[(task, False)]), statistics.median(times[(task, True)])
        print(f"| {task} | {off:.2f} | {on:.2f} | {off / on:.2f} |")
    same = outputs[False] == outputs[True]
    print(f"same captions and boxes with both settings: {same}")


if __name__ == "__main__":
    main()
