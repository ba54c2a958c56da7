"""Accuracy of the world-scene oracle (``ofa.evaluation.world_oracle.parse_scene``) on rendered world scenes.

For each image size it renders scenes of every split with the world's own renderer, parses them back and
reports the fraction of scenes whose object list (size, colour, shape multiset) is exact, the box error of the
objects of exact scenes (each matched to the detection of equal attributes with the nearest centre) and the
time per image. ``--degrade`` blurs (Gaussian, 1 px) or JPEG-compresses (quality 75) the images first.

    OMP_NUM_THREADS=1 python bench/world_oracle_accuracy.py                       # 500 scenes per split
    python bench/world_oracle_accuracy.py --per-split 100 --sizes 64 --degrade jpeg
"""

from __future__ import annotations

import argparse
import io
import time
from collections import Counter

from PIL import Image, ImageFilter

from ofa.data.world import SPLITS, World, render
from ofa.evaluation.world_oracle import parse_scene


def degrade(image: Image.Image, how: str) -> Image.Image:
    if how == "blur":
        return image.filter(ImageFilter.GaussianBlur(1))
    if how == "jpeg":
        buffer = io.BytesIO()
        image.save(buffer, "JPEG", quality=75)
        return Image.open(buffer).convert("RGB")
    return image


def measure(image_size: int, per_split: int, start: int, how: str) -> str:
    world = World(image_size=image_size)
    exact = objects = worst_box = 0
    misses: Counter[str] = Counter()
    seconds = 0.0
    for split in SPLITS:
        for index in range(start, start + per_split):
            truth, background = world.layout(split, index)
            image = degrade(render(truth, image_size, background, world.config.supersample), how)
            t0 = time.perf_counter()
            detected = parse_scene(image, world.config)
            seconds += time.perf_counter() - t0
            if sorted(d.triple for d in detected) != sorted(o.triple for o in truth):
                misses[split] += 1
                continue
            exact += 1
            for obj in truth:
                twin = min(
                    (d for d in detected if d.triple == obj.triple),
                    key=lambda d: (d.cx - obj.cx) ** 2 + (d.cy - obj.cy) ** 2,
                )
                worst_box = max(worst_box, max(abs(a - b) for a, b in zip(obj.box, twin.box)))
                objects += 1
    total = per_split * len(SPLITS)
    return (
        f"{image_size:4d} px {how:5s}: exact scenes {exact}/{total} = {100 * exact / total:.2f}%, "
        f"misses per split {dict(misses)}, max box error {worst_box} px over {objects} objects, "
        f"{1e3 * seconds / total:.1f} ms/image"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sizes", default="32,48,64,96,128", help="comma-separated image sizes")
    parser.add_argument("--per-split", type=int, default=500, help="scenes per split (4 splits)")
    parser.add_argument("--start", type=int, default=1000, help="first scene index of each split")
    parser.add_argument("--degrade", choices=("none", "blur", "jpeg"), default="none")
    args = parser.parse_args()
    for size in (int(s) for s in args.sizes.split(",")):
        print(measure(size, args.per_split, args.start, args.degrade), flush=True)


if __name__ == "__main__":
    main()
