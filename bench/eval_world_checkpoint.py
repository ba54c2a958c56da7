"""Score a world checkpoint on a split for every task it was trained on, English and Chinese; a Markdown table.

    python bench/eval_world_checkpoint.py checkpoints/ofa-world-tiny [--split heldout] [--samples 500]

Rows: caption and grounding always; image-text matching (`itm`) when the checkpoint's recipe trained it;
retrieval when the model has a retrieval head (`retrieval_dim`): a gallery of `--samples` scenes, one caption
each, R@1 x100 with every scene whose caption is the same text counted as a positive (`RetrievalTask.score`).

Each cell is what `ofa eval CKPT --task T --split S --lang L --samples N` prints (same harness, same search
settings: the checkpoint's recipe), so the model card's table can be checked one command at a time.
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path

import torch

from ofa.evaluation.harness import evaluate

ROWS = (
    ("caption", "object_f1", "caption object-F1"),
    ("caption", "CIDEr", "caption CIDEr"),
    ("caption", "BLEU-4", "caption BLEU-4"),
    ("grounding", "Acc@0.5", "grounding Acc@0.5"),
    ("grounding", "mean_IoU", "grounding mean IoU"),
    ("itm", "accuracy", "image-text matching accuracy (%)"),
    ("retrieval", "t2i_R@1", "retrieval text->image R@1 (x100)"),
    ("retrieval", "i2t_R@1", "retrieval image->text R@1 (x100)"),
)


def trained_tasks(checkpoint: Path) -> list[str]:
    """caption + grounding, plus itm if the checkpoint's recipe trained it, plus retrieval if it has the head."""
    from ofa.evaluation.harness import checkpoint_recipe

    recipe = checkpoint_recipe(checkpoint)
    mixture = {c.get("task") for c in (recipe.get("data") or {}).get("mixture") or []}
    config = json.loads((checkpoint / "config.json").read_text())
    tasks = ["caption", "grounding"]
    tasks += ["itm"] if "itm" in mixture else []
    tasks += ["retrieval"] if config.get("retrieval_dim") else []
    return tasks


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("checkpoint", type=Path)
    parser.add_argument("--split", default="heldout")
    parser.add_argument("--samples", type=int, default=500)
    parser.add_argument("--json-path", type=Path, default=None)
    args = parser.parse_args()
    results: dict[str, dict[str, float]] = {}
    tasks = trained_tasks(args.checkpoint)
    for task in tasks:
        for lang in ("en", "zh"):
            start = time.perf_counter()
            results[f"{task}/{lang}"] = evaluate(
                args.checkpoint, task, split=args.split, lang=lang, samples=args.samples
            )
            print(f"{task}/{lang}: {time.perf_counter() - start:.0f} s", flush=True)
    print(
        f"\n{args.split} split, {args.samples} samples per row; {platform.processor() or platform.machine()}, "
        f"{torch.get_num_threads()} threads, torch {torch.__version__}, {time.strftime('%Y-%m-%d')}\n"
    )
    print("| metric | English | Chinese |\n|---|---|---|")
    for task, key, label in ROWS:
        if task not in tasks:
            continue
        en, zh = results[f"{task}/en"].get(key), results[f"{task}/zh"].get(key)
        print(f"| {label} | {en:.3f} | {zh:.3f} |")
    if args.json_path:
        args.json_path.write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
