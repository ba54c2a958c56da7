"""One evaluation harness for every task: `ofa eval CHECKPOINT --task T (--split S | --data FILE) [--lang L]`.

It builds the task's examples, decodes them in batches with the task's search settings and per-sample
constraints, parses the outputs and scores them with the task's metric. The result is a flat JSON object
of metric name -> value (plus `samples`, `seconds`).
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import torch
import yaml

from ofa.data.formats import read_samples
from ofa.data.sources import WorldSource
from ofa.data.world import World
from ofa.generation import generate
from ofa.models import OFAModel
from ofa.tasks import Example, Task, TaskError, collate, get_task
from ofa.tokenization import OFATokenizer


def checkpoint_recipe(checkpoint: Path) -> dict[str, Any]:
    """The `recipe.yaml` a checkpoint was exported with, as plain data ({} when absent)."""
    path = checkpoint / "recipe.yaml"
    if not path.is_file():
        return {}
    try:
        recipe = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except (yaml.YAMLError, UnicodeDecodeError) as err:
        raise TaskError(f"{path}: not valid YAML ({' '.join(str(err).split())})") from None
    if not isinstance(recipe, dict):
        raise TaskError(f"{path}: expected a mapping of recipe sections")
    return recipe


def checkpoint_image_tokenizer(checkpoint: Path, device: str = "cpu") -> Any:
    """The image tokenizer in a checkpoint's `image_tokenizer/` folder; TaskError when there is none."""
    from ofa.tokenization.image import IMAGE_TOKENIZER_DIR, ImageTokenizer, ImageTokenizerError

    folder = checkpoint / IMAGE_TOKENIZER_DIR
    if not folder.is_dir():
        raise TaskError(
            f"{checkpoint}: no {IMAGE_TOKENIZER_DIR}/ folder: this checkpoint cannot draw pictures"
        )
    try:
        return ImageTokenizer.from_pretrained(folder, device=device)
    except ImageTokenizerError as err:
        raise TaskError(str(err)) from None


def world_for_checkpoint(checkpoint: Path, model: OFAModel) -> World:
    """The world a checkpoint was trained on: `data.world` of its `recipe.yaml`, else the defaults."""
    settings: dict[str, Any] = {"image_size": model.config.image_size}
    settings.update((checkpoint_recipe(checkpoint).get("data") or {}).get("world") or {})
    return World(**settings)


def predict(
    model: OFAModel, task: Task, examples: list[Example], batch_size: int = 32, **search: Any
) -> list[Any]:
    """Decode `examples` in batches; returns `task.parse` of the best hypothesis of each."""
    tokenizer = task.tokenizer
    config = task.generation_config(**search)
    predictions: list[Any] = []
    for start in range(0, len(examples), batch_size):
        chunk = examples[start : start + batch_size]
        batch = collate(chunk, tokenizer.pad_id, tokenizer.bos_id).to(model.device)
        inputs = {
            "input_ids": batch.input_ids,
            "patch_images": batch.patch_images,
            "patch_masks": batch.patch_masks,
        }
        if inputs["patch_images"] is not None:
            inputs["patch_images"] = inputs["patch_images"].to(model.dtype)
        with torch.no_grad():
            hyps = generate(
                model,
                inputs,
                config,
                constraints=[task.constraint(e) for e in chunk],
                code_masks=batch.code_masks,
            )
        predictions.extend(task.parse(h[0].tokens.tolist(), e) for h, e in zip(hyps, chunk))
    return predictions


def evaluate(
    checkpoint: str | Path,
    task_name: str,
    split: str | None = None,
    data: str | Path | None = None,
    lang: str = "en",
    samples: int = 500,
    batch_size: int = 32,
    device: str = "cpu",
    **search: Any,
) -> dict[str, float]:
    """Score a checkpoint on a world split or a data file; see the module docstring.

    Search settings: the task's defaults, then the checkpoint recipe's `eval.search.<task>`, then `search`.
    """
    if (split is None) == (data is None):
        raise TaskError("give exactly one of --split (the synthetic world) or --data (a file)")
    checkpoint = Path(checkpoint)
    model = OFAModel.from_pretrained(checkpoint, device=device)
    tokenizer = OFATokenizer.from_pretrained(checkpoint)
    # The checkpoint's own length limits and search settings (eval.search), as the trainer evaluated it.
    recipe = checkpoint_recipe(checkpoint)
    data_section = recipe.get("data") or {}
    lengths = {
        k: int(data_section[k]) for k in ("max_source_length", "max_target_length") if data_section.get(k)
    }
    search = {**((recipe.get("eval") or {}).get("search") or {}).get(task_name, {}), **search}
    options: dict[str, Any] = {}
    if task_name == "text_to_image":  # codes -> pictures for the oracle; plain sampling (no guidance)
        options["image_tokenizer"] = checkpoint_image_tokenizer(checkpoint, device)
    task = get_task(task_name)(tokenizer, image_size=model.config.image_size, **lengths, **options)
    start = time.perf_counter()
    if split is not None:
        source = WorldSource(world_for_checkpoint(checkpoint, model), split, task_name, lang)
        raw = [source[i] for i in range(samples)]
    else:
        raw = read_samples(Path(data), task_name, lang)[:samples]
    examples = [task.build(sample) for sample in raw]
    if task_name == "retrieval":  # scored from embeddings, nothing to decode
        from ofa.tasks.retrieval import embed_examples

        predictions = list(zip(*embed_examples(model, examples, tokenizer.pad_id, batch_size)))
    else:
        predictions = predict(model, task, examples, batch_size, **search)
    results = task.score(predictions, examples)
    results.update(samples=len(examples), seconds=round(time.perf_counter() - start, 1))
    return results
