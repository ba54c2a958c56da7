"""`train(recipe)`: build the model, data and Lightning `Trainer` a recipe describes, fit, export `final/`.

Output folder (``train.output_dir``)::

    checkpoints/step=000100.ckpt   resumable Lightning checkpoints (atomic, weights-only loadable)
    train_log.jsonl                one line per optimizer step: {"step", "loss", "lr"} (global rank 0)
    logs/                          Lightning CSV logs (train/*, eval/*)
    recipe.yaml                    the validated recipe, overrides applied
    final/                         config.json + model.safetensors + tokenizer files + recipe.yaml
"""

from __future__ import annotations

import dataclasses
import json
import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import torch
from lightning.pytorch.callbacks import ModelCheckpoint, RichProgressBar, TQDMProgressBar
from lightning.pytorch.loggers import CSVLogger
from lightning.pytorch.strategies import DDPStrategy

from ofa.models import OFAConfig, OFAModel
from ofa.tokenization import OFATokenizer
from ofa.tokenization.image import IMAGE_TOKENIZER_DIR
from ofa.tokenization.text import TokenizerError

from .callbacks import CHECKPOINT_PATTERN, AtomicCheckpointIO, PeriodicEval, latest_checkpoint
from .data import (
    MixtureDataModule,
    blocked_targets_report,
    image_tokenizer_path,
    load_recipe_image_tokenizer,
    make_tasks,
)
from .memory import keep_freed_memory
from .module import OFALightningModule, unmatched_prefixes
from .recipe import (
    DEFAULT_TOKENIZER,
    INIT_FROM_FIELDS,
    VOCAB_FIELDS,
    Recipe,
    RecipeError,
    model_config,
    resolve_path,
    tokenizer_vocab,
)

PRECISIONS = {"32": "32-true", "bf16-mixed": "bf16-mixed", "16-mixed": "16-mixed"}
EXPORT_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


@dataclass
class TrainResult:
    output_dir: Path
    final_dir: Path
    global_step: int
    resumed_from: Path | None
    is_global_zero: bool = True


def load_tokenizer(recipe: Recipe) -> OFATokenizer:
    """`tokenizer.path`, or when it is null the `model.init_from` checkpoint's tokenizer (else the default one)."""
    if recipe.tokenizer.path is None and recipe.model.init_from is not None:
        path = resolve_path(recipe.model.init_from)
        if not path.is_dir():
            raise RecipeError(
                f"{recipe.source}: model.init_from: {path} is not a checkpoint folder, so it gives no tokenizer "
                "(tokenizer.path is null); set tokenizer.path"
            )
        try:
            return OFATokenizer.from_pretrained(path)
        except TokenizerError as err:
            raise RecipeError(
                f"{recipe.source}: tokenizer.path is null, so the tokenizer comes from model.init_from, but {err}; "
                "set tokenizer.path to the checkpoint's tokenizer folder"
            ) from None
    path = resolve_path(recipe.tokenizer.path or DEFAULT_TOKENIZER)
    if not path.exists():
        raise RecipeError(f"{recipe.source}: tokenizer.path: {path} does not exist")
    return OFATokenizer.from_pretrained(path)


def build_model(recipe: Recipe, tokenizer: OFATokenizer) -> OFAModel:
    """A fresh model from the recipe's config, or the `model.init_from` checkpoint with runtime overrides."""
    if recipe.model.init_from is None:
        return OFAModel(model_config(recipe, tokenizer))
    from ofa.convert import load_checkpoint

    path = resolve_path(recipe.model.init_from)
    config, state = load_checkpoint(path)
    values = config.to_dict()
    for key in VOCAB_FIELDS:
        expected = tokenizer_vocab(tokenizer)[key]
        if values[key] != expected:
            raise RecipeError(
                f"{recipe.source}: model.init_from {path} has {key}={values[key]}, the tokenizer gives {expected}"
            )
    values.update({k: v for k, v in recipe.model.config.items() if k in INIT_FROM_FIELDS})
    if recipe.train.gradient_checkpointing:
        values["gradient_checkpointing"] = True
    model = OFAModel(OFAConfig.from_dict(values))
    if model.retrieval is not None and not any(k.startswith("retrieval.") for k in state):
        # `retrieval_dim` added to a checkpoint without a head: the head starts from its fresh initialisation.
        state = {**state, **{f"retrieval.{k}": v for k, v in model.retrieval.state_dict().items()}}
    model.load_state_dict_strict(state, source=str(path))
    return model


def _devices(recipe: Recipe) -> int | str:
    """`train.devices`, with `auto` on CPU meaning one process (Lightning's `auto` is one CPU device anyway, but
    DDP around it would start a process group and fail in notebooks); on GPUs `auto` stays every visible GPU."""
    t = recipe.train
    if t.devices != "auto":
        return t.devices
    if t.accelerator == "cpu":
        return 1
    if t.accelerator in ("auto", "gpu", "cuda"):  # no GPU (or one): one process, as on CPU
        return 1 if torch.cuda.device_count() <= 1 else "auto"
    return "auto"


def _strategy(recipe: Recipe) -> Any:
    t = recipe.train
    if t.strategy == "fsdp":
        return "fsdp"
    single = t.num_nodes == 1 and _devices(recipe) == 1
    if t.strategy == "ddp" or (t.strategy == "auto" and not single):
        # Some parameters (e.g. the image-code embeddings) are unused by batches without code targets.
        return DDPStrategy(find_unused_parameters=True)
    return "auto"


def _progress_bar(recipe: Recipe) -> pl.Callback | None:
    mode = recipe.train.progress_bar
    if mode == "none":
        return None
    if mode == "rich" or (mode == "auto" and sys.stdout.isatty()):
        try:
            return RichProgressBar()
        except (ImportError, ModuleNotFoundError):  # `rich` not installed
            if mode == "rich":
                raise RecipeError(
                    f"{recipe.source}: train.progress_bar: rich needs `pip install rich`"
                ) from None
    return TQDMProgressBar(refresh_rate=recipe.train.log_every)


def _resume_path(recipe: Recipe, checkpoint_dir: Path) -> Path | None:
    resume = recipe.train.resume
    if resume == "none":
        return None
    if resume == "auto":
        return latest_checkpoint(checkpoint_dir)
    path = Path(resume).expanduser()
    if not path.is_file():
        raise RecipeError(f"{recipe.source}: train.resume: checkpoint {path} does not exist")
    return path


def _trim_history(path: Path, resumed_from: Path | None) -> None:
    """Drop history lines of steps after the resumed checkpoint (they will be trained again)."""
    if not path.exists():
        return
    keep_until = 0
    if resumed_from is not None:
        match = CHECKPOINT_PATTERN.search(resumed_from.name)
        if match is None:
            return
        keep_until = int(match.group(1))
    lines = [line for line in path.read_text().splitlines() if line.strip()]
    kept = [line for line in lines if json.loads(line)["step"] <= keep_until]
    path.write_text("".join(line + "\n" for line in kept))


def read_history(output_dir: str | Path) -> dict[int, dict[str, float]]:
    """`train_log.jsonl` as {step: {"loss", "lr"}} (a step logged twice keeps its last line)."""
    out: dict[int, dict[str, float]] = {}
    path = Path(output_dir) / "train_log.jsonl"
    for line in path.read_text().splitlines():
        if line.strip():
            record = json.loads(line)
            out[int(record.pop("step"))] = record
    return out


def export_final(
    config: OFAConfig, weights: dict[str, torch.Tensor], tokenizer: OFATokenizer, recipe: Recipe, folder: Path
) -> None:
    """Write `folder` in our format: model (config.json + safetensors), tokenizer files, recipe.yaml."""
    config = dataclasses.replace(config, gradient_checkpointing=False)
    with torch.device("meta"):
        model = OFAModel(config)
    state = {k: v.detach().cpu() for k, v in weights.items() if k not in OFAModel.tied_weights}
    model.load_state_dict_strict(state, source="trained model")
    model.save_pretrained(folder, dtype=EXPORT_DTYPES[recipe.train.export_dtype])
    tokenizer.save_pretrained(folder)
    image_tokenizer = image_tokenizer_path(recipe)
    if image_tokenizer is not None:  # what turns generated codes back into pictures
        key = "data.task_options.text_to_image.image_tokenizer"
        load_recipe_image_tokenizer(recipe, image_tokenizer, key).save_pretrained(
            folder / IMAGE_TOKENIZER_DIR
        )
    (folder / "recipe.yaml").write_text(recipe.to_yaml(), encoding="utf-8")


def check_text_to_image(recipe: Recipe, tasks: dict[str, Any], config: OFAConfig) -> None:
    """A `text_to_image` mixture needs an image tokenizer whose code grid is the model's."""
    task = tasks.get("text_to_image")
    if task is None:
        return
    key = f"{recipe.source}: data.task_options.text_to_image.image_tokenizer"
    if task.image_tokenizer is None:
        raise RecipeError(
            f"{key}: text_to_image learns the codes of an image tokenizer; name its folder "
            "(one written by `ofa train tasks/world/vq.yaml`, e.g. tokenizers/world-vq)"
        )
    if task.code_grid != config.code_grid:
        raise RecipeError(
            f"{key}: its code grid is {task.code_grid}x{task.code_grid} but the model's is "
            f"{config.code_grid}x{config.code_grid} (model.config.code_image_size / 8)"
        )


def _pretrain_stem(
    recipe: Recipe, model: OFAModel, datamodule: MixtureDataModule, image_size: int, output_dir: Path
) -> None:
    """The `stem_pretrain` stage, identical on every process (DDP then starts from rank 0's copy anyway)."""
    from .stem_pretrain import pretrain_stem, write_summary

    t = recipe.train
    use_cuda = torch.cuda.is_available() and t.accelerator in ("auto", "gpu", "cuda")
    device = torch.device(f"cuda:{int(os.environ.get('LOCAL_RANK', 0))}" if use_cuda else "cpu")
    rank_zero = _is_rank_zero()
    summary = pretrain_stem(
        model.encoder.embed_images,
        datamodule.world,
        image_size,
        recipe.stem_pretrain,
        t.seed,
        device,
        log=print if rank_zero else (lambda *_: None),
    )
    if rank_zero:
        write_summary(summary, output_dir)


def _is_rank_zero() -> bool:
    """Before Lightning sets up the processes: rank 0 of node 0 by the launcher's environment."""
    return (
        int(os.environ.get("RANK", os.environ.get("NODE_RANK", 0))) == 0
        and int(os.environ.get("LOCAL_RANK", 0)) == 0
    )


def train(recipe: Recipe, callbacks: list[pl.Callback] | None = None) -> TrainResult:
    """Run (or resume) the training a recipe describes; returns where everything was written."""
    # Each step frees and re-allocates the same large buffers; glibc would hand them back to the OS and fault them
    # in again every step (~6,000 page faults a step in the world recipe; ofa/training/memory.py).
    if recipe.train.keep_freed_memory:
        keep_freed_memory()
    # As a model grows confident, tiny values (probabilities of ruled-out tokens, their gradients) become denormal
    # floats, which x86 CPUs compute many times slower: without flushing, a world run lost a third of its
    # throughput over 3,800 steps (`train.flush_denormal`). Only CPU arithmetic is affected; restored afterwards.
    flushed = recipe.train.flush_denormal and torch.set_flush_denormal(True)
    try:
        return _train(recipe, callbacks)
    finally:
        if flushed:
            torch.set_flush_denormal(False)


def _train(recipe: Recipe, callbacks: list[pl.Callback] | None) -> TrainResult:
    t = recipe.train
    if t.num_threads is not None:
        torch.set_num_threads(t.num_threads)
    tokenizer = load_tokenizer(recipe)
    pl.seed_everything(t.seed, workers=False, verbose=False)
    model = build_model(recipe, tokenizer)
    if recipe.data.retrieval is not None and model.retrieval is None:
        raise RecipeError(
            f"{recipe.source}: data.retrieval needs a model with a retrieval head: set model.config.retrieval_dim"
        )
    for key, prefixes in (("freeze", list(t.freeze)), ("lr_scale", list(t.lr_scale))):
        unmatched = unmatched_prefixes(model, prefixes)
        if unmatched:
            raise RecipeError(f"{recipe.source}: train.{key}: {unmatched} match no parameter of the model")
    image_size = recipe.data.image_size or model.config.image_size
    datamodule = MixtureDataModule(recipe, tokenizer, image_size)
    check_text_to_image(recipe, datamodule.tasks, model.config)
    search_tasks = make_tasks(recipe, tokenizer, image_size, search=True)
    if _is_rank_zero():
        for line in blocked_targets_report(datamodule.dataset, search_tasks):
            print(f"warning: {recipe.source}: {line}")

    output_dir = Path(t.output_dir).expanduser()
    checkpoint_dir = output_dir / "checkpoints"
    history = output_dir / "train_log.jsonl"
    resumed_from = _resume_path(recipe, checkpoint_dir)
    if recipe.stem_pretrain is not None and resumed_from is None:
        _pretrain_stem(recipe, model, datamodule, image_size, output_dir)
    module = OFALightningModule(
        model, t, tokenizer.pad_id, history_path=history, retrieval=recipe.data.retrieval
    )

    all_callbacks: list[pl.Callback] = [
        ModelCheckpoint(
            dirpath=checkpoint_dir,
            filename="step={step:06d}",
            auto_insert_metric_name=False,
            every_n_train_steps=t.checkpoint_every,
            save_top_k=-1,
            save_last=False,
            save_on_train_epoch_end=False,
        )
    ]
    if t.eval_every > 0:
        components = list(dict.fromkeys((c.task, c.lang) for c in recipe.data.mixture))
        all_callbacks.append(
            PeriodicEval(
                t.eval_every,
                search_tasks,
                datamodule.world,
                components,
                recipe.eval.split,
                recipe.eval.samples,
                recipe.eval.batch_size,
            )
        )
    bar = _progress_bar(recipe)
    if bar is not None:
        all_callbacks.append(bar)
    all_callbacks.extend(callbacks or [])

    try:
        trainer = pl.Trainer(
            accelerator=t.accelerator,
            devices=_devices(recipe),
            num_nodes=t.num_nodes,
            strategy=_strategy(recipe),
            precision=PRECISIONS[t.precision],
            max_steps=t.max_steps,
            max_epochs=-1,
            accumulate_grad_batches=t.accumulate_grad_batches,
            gradient_clip_val=t.clip_grad_norm or None,
            gradient_clip_algorithm="norm",
            sync_batchnorm=t.batchnorm == "sync",
            log_every_n_steps=t.log_every,
            callbacks=all_callbacks,
            logger=CSVLogger(output_dir, name="logs"),
            plugins=[AtomicCheckpointIO()],
            use_distributed_sampler=False,
            enable_progress_bar=bar is not None,
            enable_model_summary=False,
            num_sanity_val_steps=0,
            default_root_dir=output_dir,
        )
    except Exception as err:  # Lightning's MisconfigurationException & co: one clear line
        if isinstance(err, RecipeError):
            raise
        raise RecipeError(f"{recipe.source}: train: {' '.join(str(err).split())}") from None

    if trainer.is_global_zero:
        output_dir.mkdir(parents=True, exist_ok=True)
        (output_dir / "recipe.yaml").write_text(recipe.to_yaml(), encoding="utf-8")
        _trim_history(history, resumed_from)
    trainer.fit(module, datamodule=datamodule, ckpt_path=resumed_from, weights_only=True)

    state = trainer.strategy.lightning_module_state_dict()  # a collective under FSDP
    final = output_dir / "final"
    if trainer.is_global_zero:
        weights = {k.removeprefix("model."): v for k, v in state.items() if k.startswith("model.")}
        export_final(module.model.config, weights, tokenizer, recipe, final)
    trainer.strategy.barrier()
    return TrainResult(output_dir, final, trainer.global_step, resumed_from, trainer.is_global_zero)


__all__ = ["TrainResult", "build_model", "export_final", "load_tokenizer", "read_history", "train"]
