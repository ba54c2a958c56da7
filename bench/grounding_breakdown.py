"""Where grounding goes wrong on world scenes: every referring expression of N scenes, by kind and language.

    python bench/grounding_breakdown.py CHECKPOINT [CHECKPOINT ...] [--split heldout] [--scenes 100]

For each expression the predicted box (the checkpoint's grounding search, as `OFA.ground`) is compared with
the referent and with every other object of the scene:

* `right`: IoU >= 0.5 with the referent (Acc@0.5 over all expressions of the scenes);
* `other object`: not the referent, but IoU >= 0.5 with another object: the model localised an object and
  picked the wrong one (a binding error); `the anchor` counts those of them on the other object a relation
  expression mentions ("the green circle" of "the star above the green circle");
* `no object`: IoU < 0.5 with every object (a localisation error); `near the referent` counts those of them
  with IoU >= 0.25 with the referent (the right object, boxed too loosely or too tightly).

Unlike `ofa eval` (one expression per scene), every expression of every scene is scored, so multi-object
scenes weigh more. Prints a Markdown table per checkpoint: rows by expression kind, then by the number of objects
in the scene (with one object any box on it is right; with k objects, picking one at random is right 1/k of the time),
then by the referent's size, then the attribute expressions by the words they use ("size+colour": "the large red
object"; "shape": "the star"), then the ordinals by position and words ("extreme, shape": "the leftmost star";
"second, object": "the second object from the left"). The last column is what picking one of the scene's objects at
random would get right.
"""

from __future__ import annotations

import argparse
import time
from collections import Counter, defaultdict

import torch

from ofa import OFA
from ofa.data.world import Ref, World, WorldObject, named_attributes
from ofa.evaluation.metrics import box_iou

KINDS = ("attribute", "relation", "ordinal")
WORD_KINDS = ("size", "colour", "shape")
NEAR_IOU = 0.25


def outcome(ious: list[float], target: int) -> str:
    """right / other (IoU >= 0.5 with another object) / near (no object, but IoU >= 0.25 with the referent) / far."""
    if ious[target] >= 0.5:
        return "right"
    if max(ious) >= 0.5:
        return "other"
    return "near" if ious[target] >= NEAR_IOU else "far"


def attribute_words(ref: Ref, target: WorldObject) -> str:
    """Which of the target's size / colour / shape an expression names about it, e.g. "size+shape"."""
    named = named_attributes(ref, target)
    return "+".join(kind for kind, value in zip(WORD_KINDS, named) if value is not None)


def breakdown(checkpoint: str, split: str, scenes: int, batch_size: int) -> dict[tuple[str, str], Counter]:
    """(lang, kind or "all" or "N objects" ...) -> Counter of n / right / other / anchor / none / near / random."""
    model = OFA.from_pretrained(checkpoint)
    world = World(seed=0, image_size=model.image_size)
    counts: dict[tuple[str, str], Counter] = defaultdict(Counter)
    for lang in ("en", "zh"):
        items = [(s, r) for s in world.iter(split, scenes) for r in s.refs_for(lang)]
        results = model.ground([s.image for s, _ in items], [r.text for _, r in items], batch_size=batch_size)
        for (scene, ref), result in zip(items, results):
            pred = torch.tensor([list(result.box)], dtype=torch.float64)
            ious = [
                float(box_iou(pred, torch.tensor([list(o.box)], dtype=torch.float64))[0])
                for o in scene.objects
            ]
            result_kind = outcome(ious, ref.target_index)
            target = scene.objects[ref.target_index]
            keys = [(lang, ref.kind), (lang, "all"), (lang, f"{len(scene.objects)} objects")]
            keys.append((lang, f"{target.size} referent"))
            if ref.kind == "attribute":
                keys.append((lang, "attribute: " + attribute_words(ref, target)))
            if ref.kind == "ordinal":
                # "leftmost" / "second ... from the left", then the words about the referent
                position = "second" if ("second" in ref.text or "第二" in ref.text) else "extreme"
                keys.append((lang, f"ordinal: {position}, {attribute_words(ref, target) or 'object'}"))
            on_anchor = result_kind == "other" and ious.index(max(ious)) == ref.anchor_index
            for key in keys:
                counts[key].update(
                    n=1,
                    right=int(result_kind == "right"),
                    other=int(result_kind == "other"),
                    anchor=int(on_anchor),
                    none=int(result_kind in ("near", "far")),
                    near=int(result_kind == "near"),
                )
                counts[key]["random"] += 1 / len(
                    scene.objects
                )  # expected right when picking an object at random
    return counts


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("checkpoints", nargs="+")
    parser.add_argument("--split", default="heldout")
    parser.add_argument("--scenes", type=int, default=100)
    parser.add_argument("--batch-size", type=int, default=64)
    args = parser.parse_args()
    for checkpoint in args.checkpoints:
        start = time.perf_counter()
        counts = breakdown(checkpoint, args.split, args.scenes, args.batch_size)
        print(
            f"\n{checkpoint}, split {args.split}, {args.scenes} scenes ({time.perf_counter() - start:.0f} s)\n"
        )
        print(
            "| lang | kind | expressions | right | other object | the anchor | no object "
            "| no object, near the referent | an object at random |"
        )
        print("|---|---|---|---|---|---|---|---|---|")
        for lang in ("en", "zh"):
            by_objects = sorted(k for (lg, k) in counts if lg == lang and k.endswith(" objects"))
            by_size = sorted(k for (lg, k) in counts if lg == lang and k.endswith(" referent"))
            by_words = sorted(
                k for (lg, k) in counts if lg == lang and k.startswith(("attribute: ", "ordinal: "))
            )
            for kind in (*KINDS, "all", *by_objects, *by_size, *by_words):
                c = counts[(lang, kind)]
                n = max(1, c["n"])
                print(
                    f"| {lang} | {kind} | {c['n']} | {c['right'] / n:.3f} | {c['other'] / n:.3f} "
                    f"| {c['anchor'] / n:.3f} "
                    f"| {c['none'] / n:.3f} | {c['near'] / n:.3f} | {c['random'] / n:.3f} |"
                )


if __name__ == "__main__":
    main()
