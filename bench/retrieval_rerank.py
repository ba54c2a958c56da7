"""Does image-text matching reranking help retrieval? Text->image R@1 with and without it, as `OFA.retrieve` runs.

    python bench/retrieval_rerank.py CHECKPOINT [--split heldout] [--gallery-size 200] [--k 5] [--langs zh en]

Gallery: the first `--gallery-size` scenes of the split. Queries: the first caption of each scene in the
language. A query hits at rank r if the gallery item there has the query among its own captions (scenes that
share a caption text all count, the rule of `RetrievalTask.score`). `OFA.retrieve(..., rerank=False)` ranks by
embedding similarity; `rerank=True` reorders its top `--k` by the ITM probability, so R@k is the same for both
and only the order inside the top k changes. Prints R@1 of both, R@k, and the seconds per query of each.
"""

from __future__ import annotations

import argparse
import platform
import time

import torch

from ofa import OFA
from ofa.data.world import World


def score(model: OFA, split: str, size: int, k: int, lang: str, batch_size: int) -> dict[str, float]:
    world = World(seed=0, image_size=model.image_size)
    scenes = list(world.iter(split, size))
    gallery = [s.image for s in scenes]
    queries = [s.captions[lang][0] for s in scenes]
    owners = [set(s.captions[lang]) for s in scenes]
    row: dict[str, float] = {}
    for rerank in (False, True):
        start = time.perf_counter()
        hits = model.retrieve(queries, gallery, k=k, rerank=rerank, lang=lang, batch_size=batch_size)
        seconds = time.perf_counter() - start
        top1 = [query in owners[found[0].index] for query, found in zip(queries, hits)]
        name = "rerank" if rerank else "similarity"
        row[f"R@1 {name}"] = 100 * sum(top1) / len(queries)
        row[f"s/query {name}"] = seconds / len(queries)
        if not rerank:  # reranking only reorders the same k, so R@k is the similarity ranking's
            topk = [any(query in owners[h.index] for h in found) for query, found in zip(queries, hits)]
            row[f"R@{k}"] = 100 * sum(topk) / len(queries)
    return row


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("checkpoint")
    parser.add_argument("--split", default="heldout")
    parser.add_argument("--gallery-size", type=int, default=200)
    parser.add_argument("--k", type=int, default=5)
    parser.add_argument("--langs", nargs="+", default=["zh", "en"], choices=["zh", "en"])
    parser.add_argument("--batch-size", type=int, default=64)
    args = parser.parse_args()
    model = OFA.from_pretrained(args.checkpoint)
    print(
        f"{args.checkpoint}, {args.split}, gallery {args.gallery_size}, k {args.k}; "
        f"{platform.machine()}, {torch.get_num_threads()} threads, torch {torch.__version__}, "
        f"{time.strftime('%Y-%m-%d')}\n"
    )
    print(
        f"| lang | t2i R@1, similarity | t2i R@1, ITM reranked | R@{args.k} | s/query similarity | s/query reranked |"
    )
    print("|---|---|---|---|---|---|")
    for lang in args.langs:
        r = score(model, args.split, args.gallery_size, args.k, lang, args.batch_size)
        print(
            f"| {lang} | {r['R@1 similarity']:.1f} | {r['R@1 rerank']:.1f} | {r[f'R@{args.k}']:.1f} "
            f"| {r['s/query similarity']:.4f} | {r['s/query rerank']:.4f} |"
        )


if __name__ == "__main__":
    main()
