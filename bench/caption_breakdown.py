"""Which objects world captions miss: recall of held-out colour-shape pairs vs seen pairs, and why.

    python bench/caption_breakdown.py CHECKPOINT [CHECKPOINT ...] [--split heldout] [--scenes 200]

Every scene of the `heldout` split has at least one object whose (colour, shape) pair never occurs in
training. Per language, each object of N scenes is looked up in the parsed caption (`parse_mentions`,
matched as multisets like object-F1):

* `recalled`: its (size, colour, shape) is mentioned;
* `shape swapped`: not recalled, but its size and colour are mentioned with another shape (the typical
  compositional error: a seen pair written instead of the unseen one);
* `missed`: neither (left out, or colour / size wrong).

Rows split objects into held-out pairs and seen pairs. A second table counts the captions that name more (or
fewer) objects than the scene holds: a search that cannot write the canonical caption (a 3-gram ban, where world
captions repeat ", a small") wrote "two small blue star" for one star. The checkpoint's caption search is used
(`OFA.caption`); `--no-repeat-ngram-size N` overrides its n-gram ban.
"""

from __future__ import annotations

import argparse
import time
from collections import Counter, defaultdict

from ofa import OFA
from ofa.data.world import World
from ofa.data.world.language import parse_mentions
from ofa.data.world.vocab import HELDOUT_PAIRS


def breakdown(
    checkpoint: str, split: str, scenes: int, batch_size: int, search: dict | None = None
) -> dict[tuple[str, str], Counter]:
    """(lang, "held-out pair" | "seen pair") -> Counter of n / recalled / swapped / missed; (lang, "captions")
    -> Counter of n / more / fewer (mentions against the scene's objects)."""
    model = OFA.from_pretrained(checkpoint)
    world = World(seed=0, image_size=model.image_size)
    items = list(world.iter(split, scenes))
    held = set(HELDOUT_PAIRS)
    counts: dict[tuple[str, str], Counter] = defaultdict(Counter)
    for lang in ("en", "zh"):
        results = model.caption([s.image for s in items], lang=lang, batch_size=batch_size, **(search or {}))
        for scene, result in zip(items, results):
            mentions = Counter(parse_mentions(result.text, lang))
            named = sum(mentions.values())
            counts[(lang, "captions")]["n"] += 1
            counts[(lang, "captions")]["more"] += named > len(scene.objects)
            counts[(lang, "captions")]["fewer"] += named < len(scene.objects)
            # exact matches first, so a swap is only counted for objects no mention covers
            pending = []
            for o in scene.objects:
                kind = "held-out pair" if (o.colour, o.shape) in held else "seen pair"
                key = (o.size, o.colour, o.shape)
                unsized = (None, o.colour, o.shape)
                hit = key if mentions[key] > 0 else unsized if mentions[unsized] > 0 else None
                counts[(lang, kind)]["n"] += 1
                if hit is not None:
                    mentions[hit] -= 1
                    counts[(lang, kind)]["recalled"] += 1
                else:
                    pending.append((o, kind))
            for o, kind in pending:
                swap = next(
                    (m for m, c in mentions.items() if c > 0 and m[1] == o.colour and m[0] in (o.size, None)),
                    None,
                )
                if swap is not None:
                    mentions[swap] -= 1
                    counts[(lang, kind)]["swapped"] += 1
                else:
                    counts[(lang, kind)]["missed"] += 1
    return counts


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("checkpoints", nargs="+")
    parser.add_argument("--split", default="heldout")
    parser.add_argument("--scenes", type=int, default=200)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument(
        "--no-repeat-ngram-size", type=int, default=None, help="override the checkpoint's caption search"
    )
    args = parser.parse_args()
    search = {} if args.no_repeat_ngram_size is None else {"no_repeat_ngram_size": args.no_repeat_ngram_size}
    for checkpoint in args.checkpoints:
        start = time.perf_counter()
        counts = breakdown(checkpoint, args.split, args.scenes, args.batch_size, search)
        print(
            f"\n{checkpoint}, split {args.split}, {args.scenes} scenes ({time.perf_counter() - start:.0f} s)\n"
        )
        print("| lang | objects | n | recalled | shape swapped | missed |")
        print("|---|---|---|---|---|---|")
        for lang in ("en", "zh"):
            for kind in ("held-out pair", "seen pair"):
                c = counts[(lang, kind)]
                n = max(1, c["n"])
                print(
                    f"| {lang} | {kind} | {c['n']} | {c['recalled'] / n:.3f} | {c['swapped'] / n:.3f} "
                    f"| {c['missed'] / n:.3f} |"
                )
        print("\n| lang | captions | naming more objects than the scene holds | naming fewer |")
        print("|---|---|---|---|")
        for lang in ("en", "zh"):
            c = counts[(lang, "captions")]
            n = max(1, c["n"])
            print(f"| {lang} | {c['n']} | {c['more'] / n:.3f} | {c['fewer'] / n:.3f} |")


if __name__ == "__main__":
    main()
