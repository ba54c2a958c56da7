"""Run the fine-tuning recipes on coco-mini (real COCO photos) and print one table: metric, steps, wall time.

    python bench/finetune_coco_mini.py [--steps 150] [--threads 1] [--init-from checkpoints/ofa-world-tiny]
                                       [--only caption_coco grounding_refs ...] [--keep DIR]

1. Converts ``$OFA_SHARED/data/coco-mini`` (default ``../shared``) into every recipe's format in a temporary
   folder (the photos are referenced, never copied): COCO caption JSON, refs JSONL (EN + ZH), the official OFA
   grounding TSV and a Chinese-CLIP ``_imgs.tsv`` + ``_texts.jsonl``. Held out: every 5th image by COCO id.
2. Runs each recipe with ``ofa train`` (one process, ``train.num_threads``): 200 steps (retrieval, whose steps
   also encode 32 pairs: 150), about 3 minutes each at one thread on a loaded 2-core CPU; ``--steps`` sets all.
3. Scores the export on the held-out images with ``ofa eval --data`` and prints the table, next to what needs
   no model: the whole-image box for grounding (computed from the annotations) and chance for retrieval.

Without ``--init-from`` (or when the world checkpoint is absent) the model starts from random weights with the
world recipe's architecture (``tasks/world/tiny.yaml``), which says how far a few minutes of CPU get from
nothing, not what fine-tuning a trained model gives.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from datetime import date
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from ofa.data.converters import coco_mini_samples, load_coco_mini, write_samples  # noqa: E402

WORLD_CHECKPOINT = REPO / "checkpoints" / "ofa-world-tiny"
HELDOUT_EVERY = 5  # every 5th image (sorted by COCO id) is held out


def split_ids(records: list[dict]) -> tuple[set[int], set[int]]:
    """(train ids, held-out ids): a fixed split of the COCO ids."""
    ids = sorted(r["coco_id"] for r in records)
    heldout = set(ids[::HELDOUT_EVERY])
    return set(ids) - heldout, heldout


def convert(records: list[dict], out: Path) -> dict[str, Path]:
    """Every data file the runs read, for the train and held-out images."""
    train, heldout = split_ids(records)
    paths: dict[str, Path] = {}
    for split, ids in (("train", train), ("heldout", heldout)):
        captions = coco_mini_samples(records, "caption", "en", ids)
        refs = coco_mini_samples(records, "grounding", "en", ids)
        refs_zh = coco_mini_samples(records, "grounding", "zh", ids)
        pairs = coco_mini_samples(records, "retrieval", "en", ids)
        paths[f"captions_{split}"] = write_samples(captions, out / f"captions_{split}.json", "coco_captions")
        paths[f"refs_{split}"] = write_samples(refs + refs_zh, out / f"refs_{split}.jsonl", "refs_jsonl")
        paths[f"tsv_{split}"] = write_samples(refs, out / f"refcoco_{split}.tsv", "ofa_tsv")
        paths[f"cnclip_{split}"] = write_samples(pairs, out / "cnclip" / f"{split}_imgs.tsv", "cnclip")
    return paths


def runs(paths: dict[str, Path]) -> list[dict]:
    """(name, recipe, overrides, evaluations) of each run."""
    return [
        {
            "name": "caption_coco",
            "format": "coco_captions",
            "recipe": "tasks/caption_coco/finetune.yaml",
            "overrides": [f"data.mixture.0.path={paths['captions_train']}"],
            "evals": [("caption", "en", paths["captions_heldout"])],
            "steps": 200,
        },
        {
            "name": "grounding_refs",
            "format": "refs_jsonl (en + zh)",
            "recipe": "tasks/grounding_refs/finetune.yaml",
            "overrides": [
                f"data.mixture=[{{task: grounding, lang: en, path: {paths['refs_train']}}},"
                f" {{task: grounding, lang: zh, path: {paths['refs_train']}}}]"
            ],
            "evals": [("grounding", "en", paths["refs_heldout"]), ("grounding", "zh", paths["refs_heldout"])],
            "steps": 200,
        },
        {
            "name": "grounding_refs (OFA TSV)",
            "format": "ofa_tsv (en)",
            "recipe": "tasks/grounding_refs/finetune.yaml",
            "overrides": [f"data.mixture.0.path={paths['tsv_train']}"],
            "evals": [("grounding", "en", paths["tsv_heldout"])],
            "steps": 200,
        },
        {
            "name": "retrieval_cnclip",
            "format": "cnclip (en texts)",
            "recipe": "tasks/retrieval_cnclip/finetune.yaml",
            "overrides": [
                f"data.mixture=[{{task: caption, lang: en, path: {paths['cnclip_train']}}}]",
                f"data.retrieval.path={paths['cnclip_train']}",
                "data.retrieval.langs=[en]",
            ],
            "evals": [
                ("retrieval", "en", paths["cnclip_heldout"]),
                ("caption", "en", paths["cnclip_heldout"]),
            ],
            "steps": 150,
        },
    ]


def iou(a: list[float], b: list[float]) -> float:
    inter = max(0.0, min(a[2], b[2]) - max(a[0], b[0])) * max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    return inter / ((a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter)


def baseline(records: list[dict], task: str, lang: str, ids: set[int]) -> str:
    """What a model that ignores the input scores: the whole-image box (grounding), chance (retrieval)."""
    sizes = {r["coco_id"]: (r["width"], r["height"]) for r in records}
    if task == "grounding":
        refs = coco_mini_samples(records, "grounding", lang, ids)
        hits = [iou(s["box"], [0, 0, *sizes[s["image_id"]]]) >= 0.5 for s in refs]
        return f"whole-image box: Acc@0.5 {sum(hits) / len(hits):.3f}"
    if task == "retrieval":
        n = len({s["image_id"] for s in coco_mini_samples(records, "retrieval", lang, ids)})
        return f"chance: R@1 {100 / n:.1f}, R@5 {500 / n:.1f}"
    return "–"


def model_overrides(recipe: str, init_from: Path | None) -> list[str]:
    """Start from `init_from`, or from random weights with the world recipe's architecture."""
    if init_from is not None:
        return [f"model.init_from={init_from}"]
    world = yaml.safe_load((REPO / "tasks/world/tiny.yaml").read_text())["model"]["config"]
    config = {**world, **yaml.safe_load((REPO / recipe).read_text())["model"].get("config", {})}
    return ["model.init_from=null", "model.config=" + json.dumps(config)]


def ofa(*args: str, threads: int) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads)}
    return subprocess.run(
        [sys.executable, "-m", "ofa.cli", *args], cwd=REPO, env=env, capture_output=True, text=True
    )


HEADLINE = {"caption": "CIDEr", "grounding": "Acc@0.5", "retrieval": "t2i_mean_recall"}
SHOWN = {
    "caption": ("CIDEr", "BLEU-4"),
    "grounding": ("Acc@0.5", "mean_IoU"),
    "retrieval": ("t2i_R@1", "t2i_R@5", "i2t_R@1", "i2t_R@5"),
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, help="steps of every run (default: 200, retrieval 150)")
    parser.add_argument("--threads", type=int, default=1, help="train.num_threads and eval threads")
    parser.add_argument(
        "--init-from", type=Path, help=f"checkpoint to fine-tune (default {WORLD_CHECKPOINT})"
    )
    parser.add_argument("--only", nargs="*", help="run only these (by name prefix)")
    parser.add_argument("--keep", type=Path, help="write data and runs here instead of a temporary folder")
    parser.add_argument("--json", type=Path, help="also write the results as JSON")
    args = parser.parse_args()

    shared = Path(os.environ.get("OFA_SHARED", REPO.parent / "shared"))
    annotations = shared / "data" / "coco-mini" / "annotations.json"
    if not annotations.is_file():
        sys.exit(f"coco-mini not found at {annotations.parent} (set OFA_SHARED)")
    init_from = args.init_from or (WORLD_CHECKPOINT if WORLD_CHECKPOINT.is_dir() else None)
    records = load_coco_mini(annotations)
    train_ids, heldout_ids = split_ids(records)

    with tempfile.TemporaryDirectory(prefix="coco-mini-") as tmp:
        work = args.keep or Path(tmp)
        start = time.perf_counter()
        paths = convert(records, work / "data")
        print(f"converted coco-mini ({len(train_ids)} train / {len(heldout_ids)} held-out images) into every "
              f"format in {time.perf_counter() - start:.1f} s")  # fmt: skip
        results = []
        for run in runs(paths):
            if args.only and not any(run["name"].startswith(p) for p in args.only):
                continue
            steps = args.steps or run["steps"]
            out = work / "runs" / run["name"].replace(" ", "_").replace("(", "").replace(")", "")
            overrides = [
                *run["overrides"],
                *model_overrides(run["recipe"], init_from),
                f"train.max_steps={steps}",
                f"train.num_threads={args.threads}",
                f"train.checkpoint_every={steps}",
                "train.accelerator=cpu",
                "train.progress_bar=none",
                "train.resume=none",
                "train.log_every=1",
                f"train.output_dir={out}",
            ]
            start = time.perf_counter()
            done = ofa("train", run["recipe"], *overrides, "--json", threads=args.threads)
            train_s = time.perf_counter() - start
            if done.returncode != 0:
                sys.exit(f"{run['name']}: ofa train failed:\n{done.stderr[-3000:]}")
            history = [json.loads(line) for line in (out / "train_log.jsonl").read_text().splitlines()]
            losses = {key: [h[key] for h in history if key in h] for key in ("loss", "retrieval_loss")}
            for task, lang, data in run["evals"]:
                metrics_path = out / f"eval_{task}_{lang}.json"
                start = time.perf_counter()
                done = ofa(
                    "eval", str(out / "final"), "--task", task, "--data", str(data), "--lang", lang,
                    "--samples", "100000", "--json-path", str(metrics_path), threads=args.threads,
                )  # fmt: skip
                if done.returncode != 0:
                    sys.exit(f"{run['name']}: ofa eval {task} failed:\n{done.stderr[-3000:]}")
                metrics = json.loads(metrics_path.read_text())
                results.append(
                    {
                        "run": run["name"],
                        "format": run["format"],
                        "task": f"{task} ({lang})",
                        "metrics": {k: metrics[k] for k in SHOWN[task] if k in metrics},
                        "samples": metrics["samples"],
                        "baseline": baseline(records, task, lang, heldout_ids),
                        "steps": steps,
                        **{
                            f"{key}_first_last": [round(sum(v[:10]) / 10, 3), round(sum(v[-10:]) / 10, 3)]
                            for key, v in losses.items()
                            if len(v) >= 10
                        },
                        "train_s": round(train_s, 1),
                        "eval_s": round(time.perf_counter() - start, 1),
                    }
                )
                print(json.dumps(results[-1]), flush=True)

    init = f"init_from {init_from}" if init_from else "random init (world tiny architecture)"
    print(f"\n{init}; {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, "
          f"{args.threads} thread(s), {date.today()}")  # fmt: skip
    print("| run | data format | eval (held-out) | samples | metrics | no-model baseline | steps "
          "| loss, mean of first → last 10 steps | train s | eval s |")  # fmt: skip
    print("|---|---|---|---|---|---|---|---|---|---|")
    for r in results:
        metrics = ", ".join(f"{k} {v:.3f}" for k, v in r["metrics"].items())
        loss = "; ".join(
            f"{key.removesuffix('_first_last')} {r[key][0]} → {r[key][1]}"
            for key in r
            if key.endswith("_first_last")
        )
        print(f"| {r['run']} | {r['format']} | {r['task']} | {r['samples']} | {metrics} | {r['baseline']} "
              f"| {r['steps']} | {loss} | {r['train_s']} | {r['eval_s']} |")  # fmt: skip
    if args.json:
        args.json.write_text(json.dumps({"init": init, "results": results}, indent=1) + "\n")


if __name__ == "__main__":
    main()
