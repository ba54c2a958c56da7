"""Lightning plug-ins of the training loop: atomic, weights-only checkpoints and periodic decoding evaluation."""

from __future__ import annotations

import logging
import math
import os
import re
import tempfile
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import torch
from lightning.fabric.plugins import TorchCheckpointIO

from ofa.data.sources import WorldSource
from ofa.generation import generate
from ofa.tasks import Example, collate

log = logging.getLogger(__name__)
CHECKPOINT_PATTERN = re.compile(r"step=(\d+)\.ckpt$")


class AtomicCheckpointIO(TorchCheckpointIO):
    """Writes to a temporary file in the target folder, fsyncs, then `os.replace`s: never a partial checkpoint.

    Loads with ``torch.load(weights_only=True)``: checkpoints hold only tensors and plain Python values
    (the RNG states are tensors, the model config a dict), so no arbitrary object is ever unpickled.
    """

    def save_checkpoint(
        self, checkpoint: dict[str, Any], path: Any, storage_options: Any | None = None
    ) -> None:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
        try:
            with os.fdopen(fd, "wb") as f:
                torch.save(checkpoint, f)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
        try:  # make the rename itself durable
            dir_fd = os.open(path.parent, os.O_RDONLY)
            try:
                os.fsync(dir_fd)
            finally:
                os.close(dir_fd)
        except OSError:  # pragma: no cover - e.g. file systems without directory fsync
            pass

    def load_checkpoint(
        self, path: Any, map_location: Any = None, weights_only: bool | None = None
    ) -> dict[str, Any]:
        return torch.load(path, map_location=map_location or "cpu", weights_only=True)


def latest_checkpoint(directory: str | Path) -> Path | None:
    """The `step=N.ckpt` with the largest N in `directory` (temporary files are ignored), or None."""
    directory = Path(directory)
    if not directory.is_dir():
        return None
    found = []
    for path in directory.iterdir():
        match = CHECKPOINT_PATTERN.search(path.name)
        if match and path.name.startswith("step="):
            found.append((int(match.group(1)), path))
    return max(found)[1] if found else None


class PeriodicEval(pl.Callback):
    """Every `every` optimizer steps: decode `samples` examples per (task, lang) of the eval split, score, log.

    Runs on global rank 0 with the unwrapped model (other ranks wait at their next collective), inside
    `torch.random.fork_rng` so training's random streams are untouched. Not available under FSDP (the
    weights are sharded). If the metrics cannot be imported the scores are skipped with a logged message.
    """

    def __init__(
        self,
        every: int,
        tasks: dict[str, Any],
        world: Any,
        components: list[tuple[str, str]],
        split: str,
        samples: int,
        batch_size: int,
    ) -> None:
        self.every, self.tasks, self.world = every, tasks, world
        self.components, self.split, self.samples, self.batch_size = components, split, samples, batch_size
        self._done_step = -1
        self._examples: dict[tuple[str, str], list[Example]] = {}

    def examples(self, task: str, lang: str) -> list[Example]:
        key = (task, lang)
        if key not in self._examples:
            source = WorldSource(self.world, self.split, task, lang)
            self._examples[key] = [
                self.tasks[task].build(source[i], train=False) for i in range(self.samples)
            ]
        return self._examples[key]

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, *args: Any) -> None:
        step = trainer.global_step
        if self.every <= 0 or step == 0 or step % self.every or step == self._done_step:
            return
        self._done_step = step
        if not trainer.is_global_zero:
            return
        if "fsdp" in type(trainer.strategy).__name__.lower():
            log.warning("periodic evaluation is skipped under FSDP (sharded weights)")
            return
        metrics = self.evaluate(pl_module.model)
        for logger in trainer.loggers:
            logger.log_metrics(metrics, step=step)
        if metrics:
            shown = ", ".join(f"{k}={v:.4g}" for k, v in metrics.items())
            pl_module.print(f"eval @ step {step}: {shown}")

    @torch.no_grad()
    def evaluate(self, model: torch.nn.Module) -> dict[str, float]:
        """Decode and score every (task, lang); returns ``{"eval/{task}_{lang}/{metric}": value}``."""
        was_training = model.training
        model.eval()
        results: dict[str, float] = {}
        devices = [model.device] if model.device.type == "cuda" else []
        try:
            with torch.random.fork_rng(devices=devices):
                for task_name, lang in self.components:
                    task = self.tasks[task_name]
                    examples = self.examples(task_name, lang)
                    predictions = self.decode(model, task, examples)
                    try:
                        scores = task.score(predictions, examples)
                    except ImportError as err:
                        log.warning("eval: scoring %s/%s skipped (%s)", task_name, lang, err)
                        continue
                    for metric, value in scores.items():
                        if isinstance(value, int | float) and not math.isnan(float(value)):
                            results[f"eval/{task_name}_{lang}/{metric}"] = float(value)
        finally:
            model.train(was_training)
        return results

    def decode(self, model: torch.nn.Module, task: Any, examples: list[Example]) -> list[Any]:
        tok = task.tokenizer
        gen_config = task.generation_config()
        predictions = []
        for start in range(0, len(examples), self.batch_size):
            chunk = examples[start : start + self.batch_size]
            batch = collate(chunk, tok.pad_id, tok.bos_id).to(model.device)
            hyps = generate(
                model,
                {
                    "input_ids": batch.input_ids,
                    "patch_images": batch.patch_images,
                    "patch_masks": batch.patch_masks,
                },
                gen_config,
                constraints=[task.constraint(e) for e in chunk],
                code_masks=batch.code_masks,
            )
            predictions.extend(task.parse(h[0].tokens.tolist(), e) for h, e in zip(hyps, chunk))
        return predictions


__all__ = ["AtomicCheckpointIO", "PeriodicEval", "latest_checkpoint"]
