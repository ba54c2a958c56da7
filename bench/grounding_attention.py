"""Does grounding read the expression? Attention and box choices on world scenes with 3 or 4 objects.

    python bench/grounding_attention.py CHECKPOINT [CHECKPOINT ...] [--split val] [--scenes 100] [--lang en]
        [--examples 2]

For every referring expression of the scenes with at least three objects (so that guessing is rarely right):

* `box right`: the predicted box (the checkpoint's grounding search, as `OFA.ground`) has IoU >= 0.5 with the
  referent;
* `attention right`: at the first box step (bos in, x0 out) of a teacher-forced pass, the object whose patch cells
  (`referent_cell_targets`) hold the most of head 0's mass in the last decoder layer's cross-attention is the
  referent (the head `train.referent_attention_weight` supervises);
* `box follows attention`: the box has IoU >= 0.5 with that most-attended object, right or not;
* `same pick per scene`: the share of expressions whose boxed object is the one the model boxes most often in that
  scene, next to the same share for the referents themselves. A model that reads the expression picks as varied
  objects as the referents are; one that ignores it picks the same object whatever the expression says.

``--examples N`` also prints, per checkpoint, the first N objects (with their scenes) that got the box of at least
three expressions that refer to other objects.
"""

from __future__ import annotations

import argparse
import math
import time
from collections import Counter

import torch

from ofa import OFA
from ofa.data.world import World, WorldObject
from ofa.evaluation.metrics import box_iou
from ofa.tasks import Example, collate
from ofa.training.module import referent_cell_targets


def first_step_head0(model: OFA, examples: list[Example], batch_size: int) -> list[torch.Tensor]:
    """Per example: head 0's cross-attention at decoder step 0 of the last layer over the patch keys."""
    tok = model.tokenizer
    cross = model.model.decoder.layers[-1].cross_attn
    captured: dict[str, tuple] = {}
    # Returns None: a forward hook's return value would replace the layer output.
    handle = cross.register_forward_hook(lambda _m, args, _out: captured.setdefault("args", args) and None)
    rows: list[torch.Tensor] = []
    try:
        for start in range(0, len(examples), batch_size):
            captured.clear()
            b = collate(examples[start : start + batch_size], tok.pad_id, tok.bos_id)
            with torch.inference_mode():
                enc = model.model.encode(b.input_ids, b.patch_images.to(model.model.dtype), b.patch_masks)
                model.model.decode(b.decoder_input_ids[:, :1], enc, b.code_masks)
                hidden, key, _value, bias, layer = captured["args"]
                probs = cross.probabilities(hidden, key, bias, layer)[:, 0, 0]  # head 0, step 0
            patches = probs.shape[-1] - b.input_ids.shape[1]  # image patches come first among the keys
            rows.extend(probs[:, :patches])
    finally:
        handle.remove()
    return rows


def describe(obj: WorldObject) -> str:
    return f"{obj.size} {obj.colour} {obj.shape}"


def diagnose(
    checkpoint: str, split: str, scenes: int, lang: str, batch_size: int
) -> tuple[Counter, list[str]]:
    """The counts of the table, and one line per scene where an object took >= 3 other objects' expressions."""
    model = OFA.from_pretrained(checkpoint)
    world = World(seed=0, image_size=model.image_size)
    task = model.tasks["grounding"]
    items = [(s, r) for s in world.iter(split, scenes) if len(s.objects) >= 3 for r in s.refs_for(lang)]
    boxes = model.ground([s.image for s, _ in items], [r.text for _, r in items], batch_size=batch_size)
    examples = [task.build({"image": s.image, "text": r.text, "lang": lang}) for s, r in items]
    attention = first_step_head0(model, examples, batch_size)
    counts: Counter = Counter()
    picks: dict[int, list[int]] = {}
    referents: dict[int, list[int]] = {}
    wrong: dict[int, dict[int, list[str]]] = {}  # scene -> boxed object -> expressions about other objects
    by_index = {}
    for (scene, ref), result, probs in zip(items, boxes, attention):
        grid = math.isqrt(probs.numel())
        fractions = torch.tensor([[v / scene.image_size for v in o.box] for o in scene.objects])
        cells = referent_cell_targets(fractions, grid) > 0
        mass = [float(probs[c].sum()) for c in cells]
        attended = max(range(len(mass)), key=mass.__getitem__)
        pred = torch.tensor([list(result.box)], dtype=torch.float64)
        ious = [
            float(box_iou(pred, torch.tensor([list(o.box)], dtype=torch.float64))[0]) for o in scene.objects
        ]
        boxed = max(range(len(ious)), key=ious.__getitem__)
        on_object = ious[boxed] >= 0.5
        counts.update(
            n=1,
            box_right=int(on_object and boxed == ref.target_index),
            attention_right=int(attended == ref.target_index),
            box_follows_attention=int(on_object and boxed == attended),
        )
        picks.setdefault(scene.index, []).append(boxed if on_object else -1)
        by_index[scene.index] = scene
        if on_object and boxed != ref.target_index:
            wrong.setdefault(scene.index, {}).setdefault(boxed, []).append(f'"{ref.text}"')
        referents.setdefault(scene.index, []).append(ref.target_index)
    for name, table in (("same_pick", picks), ("same_referent", referents)):
        counts[name] = sum(Counter(v).most_common(1)[0][1] for v in table.values())
    cases = [
        f"scene {index} ({', '.join(describe(o) for o in by_index[index].objects)}): the "
        f"{describe(by_index[index].objects[boxed])} boxed for {', '.join(texts)}"
        for index, per_object in wrong.items()
        for boxed, texts in per_object.items()
        if len(texts) >= 3
    ]
    return counts, cases


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("checkpoints", nargs="+")
    parser.add_argument("--split", default="val")
    parser.add_argument("--scenes", type=int, default=100)
    parser.add_argument("--lang", default="en", choices=("en", "zh"))
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument(
        "--examples", type=int, default=0, help="objects to print that took others' expressions"
    )
    args = parser.parse_args()
    print(f"split {args.split}, {args.scenes} scenes (those with 3-4 objects), {args.lang}\n")
    print("| checkpoint | expressions | box right | attention right | box follows attention "
          "| same pick per scene (referents) | seconds |")  # fmt: skip
    print("|---|---|---|---|---|---|---|")
    cases: dict[str, list[str]] = {}
    for checkpoint in args.checkpoints:
        start = time.perf_counter()
        c, cases[checkpoint] = diagnose(checkpoint, args.split, args.scenes, args.lang, args.batch_size)
        n = max(1, c["n"])
        print(
            f"| {checkpoint} | {c['n']} | {c['box_right'] / n:.3f} | {c['attention_right'] / n:.3f} "
            f"| {c['box_follows_attention'] / n:.3f} | {c['same_pick'] / n:.3f} ({c['same_referent'] / n:.3f}) "
            f"| {time.perf_counter() - start:.0f} |"
        )

    for checkpoint, lines in cases.items():
        if args.examples:
            print(
                f"\n{checkpoint}: {len(lines)} objects took the box of >= 3 expressions about other objects"
            )
            for line in lines[: args.examples]:
                print(f"* {line}")


if __name__ == "__main__":
    main()
