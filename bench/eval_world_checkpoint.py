"""Score a world checkpoint on a split for caption and grounding in English and Chinese; print a Markdown table.

    python bench/eval_world_checkpoint.py checkpoints/ofa-world-tiny [--split heldout] [--samples 500]

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
)


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
    for task in ("caption", "grounding"):
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
        en, zh = results[f"{task}/en"].get(key), results[f"{task}/zh"].get(key)
        print(f"| {label} | {en:.3f} | {zh:.3f} |")
    if args.json_path:
        args.json_path.write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
