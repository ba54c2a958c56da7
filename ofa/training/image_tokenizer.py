"""Train the world image tokenizer (a small VQGAN) from a YAML recipe and report PSNR and codebook usage.

    ofa train tasks/world/vq.yaml
    ofa train tasks/world/vq.yaml train.steps=50 train.eval_every=25 output=/tmp/vq

`ofa train` runs this trainer for recipes whose top-level `recipe` key is `image_tokenizer`. Scenes are
rendered on the fly from the synthetic world (a new batch every step), so there is no data set to prepare.
Each line printed is one JSON object: `train` lines (loss, L1, PSNR, batch codebook usage), `eval` lines on
fixed held-out scenes (PSNR, fraction of the codebook used, perplexity) and a final `done` line. The
tokenizer is saved to `output` at every evaluation and at the end. Bad input (a missing file, an unknown key)
raises `RecipeError` / `ImageTokenizerError`, which `ofa train` prints as one line before exiting with code 1.
"""

from __future__ import annotations

import dataclasses
import json
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from ofa.data.world import World
from ofa.tokenization.image import (
    ImageTokenizer,
    ImageTokenizerConfig,
    VQLossConfig,
    codebook_usage,
    image_to_unit_tensor,
    psnr,
    train_step,
)
from ofa.training.recipe import RecipeError, apply_overrides, read_recipe_file, recipe_kind


@dataclass
class DataSettings:
    seed: int = 0
    render_size: int = 96
    val_images: int = 256


@dataclass
class TrainSettings:
    steps: int = 20000
    batch_size: int = 32
    lr: float = 1e-3
    warmup_steps: int = 500
    weight_decay: float = 0.0
    max_grad_norm: float | None = 1.0
    log_every: int = 100
    eval_every: int = 1000
    seed: int = 0
    device: str = "auto"
    threads: int | None = None


def _section(cls: type, values: Any, name: str, source: str) -> Any:
    """Build a settings dataclass from a mapping; unknown keys and non-numeric numbers are errors."""
    values = values or {}
    if not isinstance(values, dict):
        raise RecipeError(f"{source}: {name}: expected a mapping")
    fields = {f.name: f for f in dataclasses.fields(cls)}
    for key, value in values.items():
        if key not in fields:
            raise RecipeError(f"{source}: {name}.{key}: unknown key (known: {', '.join(sorted(fields))})")
        kind = str(fields[key].type)
        try:  # PyYAML reads 1e-3 (no dot) as a string
            if value is not None and kind.startswith("float"):
                values[key] = float(value)
            elif value is not None and kind.startswith("int") and not isinstance(value, int):
                raise ValueError
        except (TypeError, ValueError):
            raise RecipeError(f"{source}: {name}.{key}: expected {kind}, got {value!r}") from None
    return cls(**values)


def load_settings(path: str | Path, overrides: list[str]) -> dict[str, Any]:
    """The checked settings of a YAML recipe file plus dotted ``key=value`` overrides."""
    return settings_from_dict(read_recipe_file(path), overrides, source=str(path))


def settings_from_dict(values: dict[str, Any], overrides: list[str], source: str) -> dict[str, Any]:
    """Check a recipe mapping (the `recipe` key, if any, must say `image_tokenizer`) into settings."""
    values = apply_overrides(values, overrides)
    source = source + (" (with overrides)" if overrides else "")
    kind = recipe_kind(values, source) if "recipe" in values else "image_tokenizer"
    if kind != "image_tokenizer":
        raise RecipeError(f"{source}: recipe: {kind} is not an image-tokenizer recipe")
    unknown = sorted(set(values) - {"recipe", "model", "data", "loss", "train", "output"})
    if unknown:
        raise RecipeError(f"{source}: unknown sections {unknown}")
    return {
        "model": ImageTokenizerConfig.from_dict(dict(values.get("model") or {}), source=f"{source}: model"),
        "data": _section(DataSettings, values.get("data"), "data", source),
        "loss": _section(VQLossConfig, values.get("loss"), "loss", source),
        "train": _section(TrainSettings, values.get("train"), "train", source),
        "output": Path(str(values.get("output", "checkpoints/world-vq"))),
    }


def scenes(world: World, split: str, start: int, count: int, size: int) -> torch.Tensor:
    """Scenes `start`.. of a world split as (count, 3, size, size) in [0, 1], resized as code extraction does."""
    return torch.stack(
        [image_to_unit_tensor(world.scene(split, i).image, size) for i in range(start, start + count)]
    )


@torch.no_grad()
def evaluate(model: ImageTokenizer, images: torch.Tensor, batch_size: int) -> dict[str, float]:
    """Held-out PSNR of encode -> decode, and codebook usage over all held-out codes."""
    model.eval()
    device = model.quant_conv.weight.device
    all_codes, scores = [], []
    for start in range(0, len(images), batch_size):
        batch = images[start : start + batch_size].to(device)
        codes = model.encode(batch)
        scores.append(psnr(model.decode(codes), batch).item() * len(batch))
        all_codes.append(codes.cpu())
    usage, perplexity = codebook_usage(torch.cat(all_codes), model.codebook_size)
    return {"val_psnr": sum(scores) / len(images), "val_usage": usage, "val_perplexity": perplexity}


def train(settings: dict[str, Any]) -> dict[str, float]:
    """Train, printing JSON lines and saving to `output` at each evaluation; the last evaluation's metrics."""
    config: ImageTokenizerConfig = settings["model"]
    data: DataSettings = settings["data"]
    run: TrainSettings = settings["train"]
    if run.threads:
        torch.set_num_threads(run.threads)
    device = torch.device(
        ("cuda" if torch.cuda.is_available() else "cpu") if run.device == "auto" else run.device
    )
    torch.manual_seed(run.seed)
    world = World(image_size=data.render_size, seed=data.seed)
    held_out = scenes(world, "val", 0, data.val_images, config.resolution)
    model = ImageTokenizer(config).to(device)
    optimizer = torch.optim.AdamW(
        model.parameters(), lr=run.lr, betas=(0.9, 0.99), weight_decay=run.weight_decay
    )

    def schedule(step: int) -> float:
        if step < run.warmup_steps:
            return (step + 1) / run.warmup_steps
        progress = (step - run.warmup_steps) / max(1, run.steps - run.warmup_steps)
        return 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))

    lr_schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, schedule)
    print(
        json.dumps(
            {
                "event": "start",
                "parameters": sum(p.numel() for p in model.parameters()),
                "grid": model.grid(),
                "device": str(device),
            }
        ),
        flush=True,
    )
    result: dict[str, float] = {}
    started = time.perf_counter()
    for step in range(run.steps):
        images = scenes(world, "train", step * run.batch_size, run.batch_size, config.resolution).to(device)
        metrics = train_step(model, optimizer, images, settings["loss"], run.max_grad_norm)
        lr_schedule.step()
        done = step + 1
        if done % run.log_every == 0 or done == run.steps:
            line = {
                "event": "train",
                "step": done,
                "lr": lr_schedule.get_last_lr()[0],
                "seconds": round(time.perf_counter() - started, 1),
            }
            line.update({k: round(v, 5) for k, v in metrics.items()})
            print(json.dumps(line), flush=True)
        if done % run.eval_every == 0 or done == run.steps:
            result = {"step": done, **evaluate(model, held_out, run.batch_size)}
            print(json.dumps({"event": "eval", **{k: round(v, 4) for k, v in result.items()}}), flush=True)
            model.save_pretrained(settings["output"])
    print(json.dumps({"event": "done", "output": str(settings["output"]), **result}), flush=True)
    return result
