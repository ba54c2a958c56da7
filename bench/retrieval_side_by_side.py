"""Retrieval side by side: the unified model's retrieval head vs a Chinese-CLIP dual encoder, same data and steps.

(a) is a trained checkpoint folder with a retrieval head (`retrieval_dim` in its config.json), e.g. a run's
`final/`. (b) is trained here from scratch: a Chinese-CLIP-architecture dual encoder built as an open_clip
`CustomTextCLIP` by the project's own builder (`ofa.retrieval.cnclip.build_open_clip_model`): a ViT image
tower and an HF BERT text tower ([CLS] pooling, linear projection, QuickGELU), tokenised exactly like
Chinese-CLIP (BERT-Chinese vocab of the installed `cn_clip`, context length 52, its dataset text clean-up).

Same data. (b) trains on exactly the pairs the unified trainer drew for (a): the `PairStream` of
`MixtureDataModule` built from (a)'s `recipe.yaml`, with the step -> pair indices of `PairedWindowSampler`
(one process; gradient-accumulation micro-steps are separate contrastive batches, as in the trainer). Its
images are the same pixels, only re-normalised from OFA's [-1, 1] to CLIP's mean/std, which at the world
resolution is exactly Chinese-CLIP's eval preprocessing. Same number of steps (`train.max_steps`), the same
AdamW parameter groups (`parameter_groups`), lr, betas, eps, weight decay, warm-up and schedule (`lr_lambda`),
gradient clipping, seed and dropout as the recipe; loss = open_clip's `ClipLoss` (`ofa.training.contrastive`);
`logit_scale` starts at log(1/0.07) and is clamped to [0, log 100] after every step, as open_clip trains.
(a)'s loss also has the generative tasks of its mixture; (b) only the contrastive one.

Size of (b). `--match total` (default) matches the *total* parameter count, embeddings included: all unique
parameters of (a) (encoder, decoder, image stem, token tables, retrieval head) against all of (b), whose
BERT-Chinese word table alone is 21128 x width. The world uses few of those rows, so this is the stricter
budget for (b) and the one the plain reading of "similar parameter count" gives. `--match non-embedding` leaves
the token-embedding tables out on both sides (OFA's `embed_tokens`, BERT's `word_embeddings`). The search:
one width for both towers from 64..1024 (ViT head width 64 as Chinese-CLIP; BERT heads = width/64, FFN 4 x
width, 512 positions), 1..12 ViT layers, BERT layers within one of the ViT's, embedding dimension = (a)'s
`retrieval_dim`; the closest count wins (ties: the wider, then the deeper ViT: at one width a ViT layer
and a BERT layer have the same count). `--width/--vision-layers/--text-layers` fix it.
Patch size: the largest divisor of the image size giving at least 12 patches a side (8 at 96 px; 16 at 224,
as ViT-B/16), or `--patch-size`.

Evaluation on the `heldout` split: gallery = the first `--gallery-size` scenes, queries = every caption of
those scenes in `--lang` (up to 5 each). `ofa.evaluation.retrieval.retrieval_metrics` (Chinese-CLIP's definition)
gives text->image and image->text R@1/5/10 (x100). Two annotations: `own` (the brief's: a caption's only
positive is its own scene, every caption its own text id, as Chinese-CLIP's annotation files do) and
`same-text` (every gallery scene with an identical caption text is a positive, the rule of
`RetrievalTask.score`). Several world scenes share a caption (e.g. one-object scenes "一个大的橙色菱形"), and
identical texts get identical embeddings, so under `own` no model can beat the `oracle` row (it scores only
whether the text is one of the scene's captions, preferring the scene that shows it first in the gallery). On
the first 1,000 heldout scenes (world seed 0) 4,068 of the 4,796 captions are distinct, in Chinese as in
English: the `own` ceiling is t2i R@1 84.8 and i2t R@1 76.4, so an R@1 of 90 can only be reached under
`same-text` (whose ceiling is 100).

    # the full comparison: RUN/final = a world run trained with model.config.retrieval_dim and data.retrieval
    OMP_NUM_THREADS=1 python bench/retrieval_side_by_side.py --unified RUN/final --gallery-size 1000 \\
        --lang zh --threads 1 --json runs/retrieval-side-by-side/zh.json
    # evaluate again without retraining (b), or in English
    python bench/retrieval_side_by_side.py --unified RUN/final --skip-train --lang en \\
        --json runs/retrieval-side-by-side/en.json
    # a smoke test: a 20-step unified run, (b) for 5 steps, 50 scenes
    OMP_NUM_THREADS=1 python -m ofa.cli train tasks/world/tiny.yaml train.max_steps=20 \\
        model.config.retrieval_dim=64 'data.retrieval={batch_size: 16, langs: [zh]}' \\
        train.output_dir=/tmp/sbs/unified train.eval_every=0 train.progress_bar=none train.num_threads=1
    OMP_NUM_THREADS=1 python bench/retrieval_side_by_side.py --unified /tmp/sbs/unified/final --steps 5 \\
        --gallery-size 50 --out /tmp/sbs/out --threads 1

(b) is saved under `--out`/dual_encoder: config.json (the `CNCLIPConfig` layout of `ofa.retrieval.cnclip`),
open_clip.safetensors (open_clip key names: load with `build_open_clip_model` + `load_state_dict`), train.json
(steps, seconds, seconds per step, which checkpoint's recipe it followed) and train_log.jsonl. (a)'s training time is
`--unified-seconds` if given, else estimated from its run's Lightning metrics.csv (mean step time x steps,
marked ~), else n/a; it covers its whole mixture, not only retrieval.

Cost, measured on the project's shared 2-core CPU with another training running (1 thread, 2026-12-02): (b) at
the tiny-recipe size (4.62M parameters, ViT 4x128/8 + BERT 5x128, 96 px) took 0.26 s per step with 16 pairs
and 0.59 s per step with 32 pairs; embedding 1,000 scenes and 4,796 captions took 8 s for (a), 10 s for (b).
"""

from __future__ import annotations

import argparse
import csv
import datetime
import json
import math
import platform
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file
from torch import Tensor

from ofa.data.images import MEAN as OFA_MEAN
from ofa.data.images import STD as OFA_STD
from ofa.evaluation.harness import checkpoint_recipe
from ofa.evaluation.retrieval import retrieval_metrics
from ofa.retrieval.cnclip import (
    OPENAI_CLIP_MEAN,
    OPENAI_CLIP_STD,
    CNCLIPConfig,
    CNCLIPLoadError,
    CNCLIPModel,
    build_open_clip_model,
)
from ofa.retrieval.cnclip_tokenizer import (
    DEFAULT_CONTEXT_LENGTH,
    CNCLIPTokenizer,
    CNCLIPVocabError,
    resolve_vocab,
)
from ofa.tasks import Example, TaskError
from ofa.training.recipe import Recipe, RecipeError, recipe_from_dict

WIDTHS = (64, 128, 192, 256, 384, 512, 768, 1024)
MAX_LAYERS = 12
MIN_GRID = 12  # patches a side at least (ViT-B/16 at 224 px has 14)
HEAD_WIDTH = 64  # Chinese-CLIP's ViT head width; also the BERT head width here
BERT_POSITIONS = 512
MAX_LOGIT_SCALE = math.log(100.0)
WEIGHTS_FILE = "open_clip.safetensors"
DEFINITIONS = ("own", "same-text")


class SideBySideError(ValueError):
    """A problem with the inputs; printed as one line."""


# ------------------------------------------------------------------------------------------- (a): unified


@dataclass
class Unified:
    """The checkpoint (a) and what the script needs from its recipe."""

    path: Path
    ofa: Any  # ofa.api.OFA
    recipe: Recipe
    image_size: int
    params: int
    embedding_params: int


def load_unified(path: Path, device: str) -> Unified:
    """Load (a); refuse a folder without a retrieval head or without the recipe of a world run."""
    if not (path / "config.json").is_file():
        raise SideBySideError(f"--unified {path}: not a checkpoint folder (no config.json)")
    config = json.loads((path / "config.json").read_text(encoding="utf-8"))
    if not config.get("retrieval_dim"):
        raise SideBySideError(
            f"--unified {path}: the checkpoint has no retrieval head (retrieval_dim is not set in config.json); "
            "train it with model.config.retrieval_dim and data.retrieval"
        )
    values = checkpoint_recipe(path)
    if not values:
        raise SideBySideError(
            f"--unified {path}: no recipe.yaml, so the pair stream it trained on is unknown"
        )
    recipe = recipe_from_dict(values, source=str(path / "recipe.yaml"))
    if recipe.data.retrieval is None:
        raise SideBySideError(
            f"{path / 'recipe.yaml'}: no data.retrieval section: (a) was not trained on pairs"
        )
    if recipe.data.kind != "world":
        raise SideBySideError(
            f"{path / 'recipe.yaml'}: data.kind is {recipe.data.kind!r}; this bench is world-only"
        )
    from ofa.api import OFA

    ofa = OFA.from_pretrained(path, device=device)
    model = ofa.model
    params = sum(p.numel() for p in model.parameters())  # unique: tied tables once
    tables = {id(m.weight): m.weight.numel() for n, m in model.named_modules() if n.endswith("embed_tokens")}
    image_size = recipe.data.image_size or model.config.image_size
    return Unified(path, ofa, recipe, image_size, params, sum(tables.values()))


def unified_train_seconds(unified: Unified, given: float | None, steps: int) -> tuple[str, float | None]:
    """(label, seconds): `--unified-seconds`, else an estimate from the run's metrics.csv, else n/a."""
    if given is not None:
        return f"{given:.0f}", given
    step_times = []
    batch = unified.recipe.train.batch_size
    for metrics in sorted(unified.path.parent.glob("logs/version_*/metrics.csv")):
        with metrics.open(encoding="utf-8") as f:
            for row in csv.DictReader(f):
                rate = row.get("train/samples_per_sec")
                if rate:
                    step_times.append(batch / float(rate))
    if not step_times:
        return "n/a", None
    seconds = sum(step_times) / len(step_times) * steps
    return f"~{seconds:.0f}", seconds


# -------------------------------------------------------------------------------------- (b): dual encoder


def patch_size_for(image_size: int) -> int:
    """The largest divisor of `image_size` that leaves at least `MIN_GRID` patches a side (>= 1)."""
    fitting = [p for p in range(1, image_size + 1) if image_size % p == 0 and image_size // p >= MIN_GRID]
    return max(fitting, default=1)


def dual_encoder_config(
    width: int,
    vision_layers: int,
    text_layers: int,
    embed_dim: int,
    image_size: int,
    patch_size: int,
    vocab_size: int,
    dropout: float = 0.0,
    attention_dropout: float = 0.0,
) -> CNCLIPConfig:
    """Chinese-CLIP constructor kwargs (`cn_clip.clip.model.CLIP`) of a ViT + BERT model of one width."""
    if image_size % patch_size:
        raise SideBySideError(f"patch size {patch_size} does not divide the image size {image_size}")
    kwargs = {
        "embed_dim": embed_dim,
        "image_resolution": image_size,
        "vision_layers": vision_layers,
        "vision_width": width,
        "vision_patch_size": patch_size,
        "vision_head_width": HEAD_WIDTH,
        "vocab_size": vocab_size,
        "text_hidden_size": width,
        "text_num_hidden_layers": text_layers,
        "text_num_attention_heads": max(1, width // HEAD_WIDTH),
        "text_intermediate_size": 4 * width,
        "text_max_position_embeddings": BERT_POSITIONS,
        "text_type_vocab_size": 2,
        "text_hidden_dropout_prob": dropout,
        "text_attention_probs_dropout_prob": attention_dropout,
    }
    return CNCLIPConfig(
        clip_kwargs=kwargs, context_length=DEFAULT_CONTEXT_LENGTH, input_resolution=image_size
    )


def count_params(config: CNCLIPConfig, match: str = "total") -> int:
    """Parameters of the open_clip model `config` describes (built on the meta device: no memory, no init)."""
    with torch.device("meta"):
        model = build_open_clip_model(config)
    total = sum(p.numel() for p in model.parameters())
    if match == "non-embedding":
        total -= model.text.transformer.embeddings.word_embeddings.weight.numel()
    return total


def choose_size(
    target: int,
    base: dict[str, Any],
    match: str = "total",
    width: int | None = None,
    vision_layers: int | None = None,
    text_layers: int | None = None,
) -> tuple[CNCLIPConfig, int]:
    """The (width, ViT layers, BERT layers) whose parameter count is closest to `target` (module docstring).

    `base`: the other `dual_encoder_config` arguments. Counts are additive in the layers, so each width is
    built three times (1+1, 2+1, 1+2 layers) and the rest is arithmetic; the winner is counted again in full.
    """
    best: tuple[float, int, int, int, int] | None = None  # (error, -width, |lv - lt|, -lv, lt)
    for w in [width] if width else WIDTHS:
        c11 = count_params(dual_encoder_config(w, 1, 1, **base), match)
        per_vision = count_params(dual_encoder_config(w, 2, 1, **base), match) - c11
        per_text = count_params(dual_encoder_config(w, 1, 2, **base), match) - c11
        for lv in [vision_layers] if vision_layers else range(1, MAX_LAYERS + 1):
            for lt in [text_layers] if text_layers else range(max(1, lv - 1), min(MAX_LAYERS, lv + 1) + 1):
                count = c11 + (lv - 1) * per_vision + (lt - 1) * per_text
                key = (abs(count - target) / target, -w, abs(lv - lt), -lv, lt)
                if best is None or key < best:
                    best = key
    assert best is not None
    config = dual_encoder_config(-best[1], -best[3], best[4], **base)
    return config, count_params(config, match)


def clip_pixels(ofa_pixels: Tensor) -> Tensor:
    """OFA-normalised pixels ([-1, 1], `ofa.data.images`) -> the same picture with CLIP's mean and std."""
    shape = (-1, 1, 1)
    rgb = ofa_pixels * torch.tensor(OFA_STD).view(shape) + torch.tensor(OFA_MEAN).view(shape)
    return (rgb - torch.tensor(OPENAI_CLIP_MEAN).view(shape)) / torch.tensor(OPENAI_CLIP_STD).view(shape)


def pair_stream(unified: Unified) -> tuple[Any, Any]:
    """(the unified trainer's `PairStream`, its `PairedWindowSampler` for one process)."""
    from ofa.training.data import MixtureDataModule, WindowSampler
    from ofa.training.retrieval import PairedWindowSampler

    recipe = unified.recipe
    pairs = MixtureDataModule(recipe, unified.ofa.tokenizer, unified.image_size).pairs
    windows = WindowSampler(recipe.train.batch_size, 1, 0, recipe.train.accumulate_grad_batches)
    return pairs, PairedWindowSampler(windows, recipe.data.retrieval.batch_size)


def step_pairs(pairs: Any, sampler: Any, step: int) -> list[list[Example]]:
    """The pairs of optimizer step `step`, one list per contrastive batch (accumulation micro-step)."""
    indices = sampler.pair_indices(step)
    p = sampler.per_micro
    return [[pairs[j] for j in indices[k : k + p]] for k in range(0, len(indices), p)]


def train_dual_encoder(
    model: Any,
    tokenizer: CNCLIPTokenizer,
    unified: Unified,
    steps: int,
    device: str,
    log_path: Path,
    log_every: int = 50,
) -> dict[str, Any]:
    """Train (b) on (a)'s pair stream with (a)'s optimizer settings; returns timing and the last loss."""
    from ofa.training.contrastive import clip_loss
    from ofa.training.module import lr_lambda, parameter_groups

    t = unified.recipe.train
    pairs, sampler = pair_stream(unified)
    optimizer = torch.optim.AdamW(
        parameter_groups(model, t.weight_decay), lr=t.lr, betas=(t.betas[0], t.betas[1]), eps=t.eps
    )
    schedule = lr_lambda(t.schedule, t.warmup_steps, steps, t.min_lr_ratio)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, schedule)
    loss_fn = clip_loss()
    model.train()
    log_path.unlink(missing_ok=True)
    start = last = time.perf_counter()
    last_step = 0
    for step in range(steps):
        micro = step_pairs(pairs, sampler, step)
        step_loss = 0.0
        for examples in micro:
            images = clip_pixels(torch.stack([e.image for e in examples])).to(device)
            texts = tokenizer([e.meta["text"] for e in examples], normalize=True).to(device)
            loss = loss_fn(
                model.encode_image(images, normalize=True),
                model.encode_text(texts, normalize=True),
                model.logit_scale.exp(),
            )
            (loss / len(micro)).backward()
            step_loss += loss.item() / len(micro)
        if t.clip_grad_norm is not None:
            torch.nn.utils.clip_grad_norm_(model.parameters(), t.clip_grad_norm)
        lr = optimizer.param_groups[0]["lr"]
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        scheduler.step()
        with torch.no_grad():  # open_clip's training loop: 0 <= logit_scale <= log(100)
            model.logit_scale.clamp_(0, MAX_LOGIT_SCALE)
        record = {"step": step + 1, "retrieval_loss": step_loss, "lr": lr}
        with log_path.open("a", encoding="utf-8") as f:
            f.write(json.dumps(record) + "\n")
        if (step + 1) % log_every == 0 or step + 1 == steps:
            now = time.perf_counter()
            per_step = (now - last) / (step + 1 - last_step)
            last, last_step = now, step + 1
            print(
                f"(b) step {step + 1}/{steps}  loss {step_loss:.4f}  lr {lr:.2e}  {per_step:.3f} s/step",
                flush=True,
            )
    seconds = time.perf_counter() - start
    model.eval()
    return {
        "steps": steps,
        "seconds": seconds,
        "seconds_per_step": seconds / max(steps, 1),
        "last_loss": step_loss,
    }


def save_dual_encoder(folder: Path, model: Any, config: CNCLIPConfig, info: dict[str, Any]) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    layout = {
        "clip_kwargs": config.clip_kwargs,
        "context_length": config.context_length,
        "input_resolution": config.input_resolution,
        "image_mean": list(config.image_mean),
        "image_std": list(config.image_std),
    }
    (folder / "config.json").write_text(json.dumps(layout, indent=2) + "\n", encoding="utf-8")
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    save_file(state, str(folder / WEIGHTS_FILE))
    (folder / "train.json").write_text(
        json.dumps(info, indent=2, ensure_ascii=False) + "\n", encoding="utf-8"
    )


def load_dual_encoder(folder: Path) -> tuple[Any, CNCLIPConfig, dict[str, Any]]:
    """(model, config, train.json) of a (b) saved by `save_dual_encoder`."""
    files = [folder / name for name in ("config.json", WEIGHTS_FILE, "train.json")]
    missing = [str(f) for f in files if not f.is_file()]
    if missing:
        raise SideBySideError(
            f"--skip-train: no trained dual encoder: {', '.join(missing)} missing; run without it"
        )
    config = CNCLIPConfig.from_source(files[0])
    model = build_open_clip_model(config)
    model.load_state_dict(load_file(str(files[1])), strict=True)
    return model.eval(), config, json.loads(files[2].read_text(encoding="utf-8"))


# ------------------------------------------------------------------------------------------- evaluation


def gallery(unified: Unified, size: int, lang: str) -> tuple[list[Any], list[list[str]]]:
    """The first `size` heldout scenes: (images, captions in `lang` per scene)."""
    from ofa.training.data import make_world

    world = make_world(unified.recipe, unified.image_size)
    scenes = [world.scene("heldout", i) for i in range(size)]
    return [s.image for s in scenes], [list(s.captions[lang]) for s in scenes]


def annotation(captions: Sequence[Sequence[str]], definition: str) -> tuple[dict[Any, list[int]], list[Any]]:
    """(text id -> positive scene indices, text ids in gallery order); a text id is (scene, caption number)."""
    text_ids = [(i, k) for i, texts in enumerate(captions) for k in range(len(texts))]
    if definition == "own":
        return {(i, k): [i] for i, k in text_ids}, text_ids
    scenes_of: dict[str, list[int]] = {}
    for i, texts in enumerate(captions):
        for text in texts:
            if i not in scenes_of.setdefault(text, []):
                scenes_of[text].append(i)
    return {(i, k): scenes_of[captions[i][k]] for i, k in text_ids}, text_ids


def oracle_features(captions: Sequence[Sequence[str]]) -> tuple[Tensor, Tensor]:
    """(text, image) features whose dot product is 2 for a scene's caption seen first in that scene, 1 for
    one seen first in an earlier scene, 0 otherwise: the best any model can do when identical texts embed
    identically (ties keep gallery order)."""
    vocab: dict[str, int] = {}
    first: dict[str, int] = {}
    for i, texts in enumerate(captions):
        for text in texts:
            vocab.setdefault(text, len(vocab))
            first.setdefault(text, i)
    flat = [text for texts in captions for text in texts]
    text_features = torch.zeros(len(flat), len(vocab))
    text_features[torch.arange(len(flat)), torch.tensor([vocab[x] for x in flat])] = 1.0
    image_features = torch.zeros(len(captions), len(vocab))
    for i, texts in enumerate(captions):
        for text in texts:
            image_features[i, vocab[text]] = 2.0 if first[text] == i else 1.0
    return text_features, image_features


def score(text_features: Tensor, image_features: Tensor, captions: Sequence[Sequence[str]]) -> dict[str, Any]:
    """retrieval_metrics (x100) under both annotations."""
    out = {}
    for definition in DEFINITIONS:
        mapping, text_ids = annotation(captions, definition)
        out[definition] = retrieval_metrics(
            text_features, image_features, mapping, text_ids, list(range(len(captions)))
        )
    return out


def embed_unified(
    unified: Unified, images: list[Any], texts: list[str], lang: str, batch: int
) -> tuple[Tensor, Tensor]:
    ofa = unified.ofa
    return ofa.embed_texts(texts, lang=lang, batch_size=batch), ofa.embed_images(
        images, lang=lang, batch_size=batch
    )


def embed_dual(
    wrapper: CNCLIPModel, unified: Unified, images: list[Any], texts: list[str], batch: int
) -> tuple[Tensor, Tensor]:
    """(text, image) embeddings of (b); images go through the same OFA pixels as in training."""
    from ofa.tasks.retrieval import RetrievalTask

    task = RetrievalTask(unified.ofa.tokenizer, image_size=unified.image_size)
    pixels = torch.stack([clip_pixels(task.load_image({"image": image})[0]) for image in images])
    image_features = wrapper.embed_images(pixels, batch_size=batch).cpu()
    return wrapper.embed_texts(texts, normalize_text=True, batch_size=batch).cpu(), image_features


# ------------------------------------------------------------------------------------------------ report

COLUMNS = (
    "model",
    "params",
    "train steps",
    "t2i R@1",
    "t2i R@5",
    "t2i R@10",
    "i2t R@1",
    "i2t R@5",
    "i2t R@10",
)
COLUMNS += ("train s",)


def table(rows: list[dict[str, Any]], definition: str) -> str:
    lines = ["| " + " | ".join(COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
    for row in rows:
        m = row["metrics"][definition]
        cells = [row["name"], row["params_label"], row["steps_label"]]
        cells += [f"{m[f'{d}_R@{k}']:.1f}" for d in ("t2i", "i2t") for k in (1, 5, 10)]
        cells.append(row["seconds_label"])
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--unified", type=Path, required=True, help="checkpoint folder of (a), e.g. RUN/final"
    )
    parser.add_argument("--out", type=Path, default=Path("runs/retrieval-side-by-side"))
    parser.add_argument("--skip-train", action="store_true", help="evaluate the (b) saved under --out")
    parser.add_argument("--steps", type=int, default=None, help="(b)'s steps (default: (a)'s steps)")
    parser.add_argument("--gallery-size", type=int, default=1000)
    parser.add_argument("--lang", choices=("zh", "en"), default="zh")
    parser.add_argument("--match", choices=("total", "non-embedding"), default="total")
    parser.add_argument("--width", type=int, default=None)
    parser.add_argument("--vision-layers", type=int, default=None)
    parser.add_argument("--text-layers", type=int, default=None)
    parser.add_argument("--patch-size", type=int, default=None)
    parser.add_argument(
        "--vocab", type=Path, default=None, help="BERT-Chinese vocab.txt (default: cn_clip's)"
    )
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--batch-size", type=int, default=64, help="evaluation batch size")
    parser.add_argument("--log-every", type=int, default=50)
    parser.add_argument("--unified-seconds", type=float, default=None, help="(a)'s training time, if known")
    parser.add_argument(
        "--unified-steps",
        type=int,
        default=None,
        help="(a)'s trained steps when it was exported from an intermediate step=N.ckpt "
        "(default: its recipe's train.max_steps, right for a run's final/)",
    )
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args(argv)
    for name in ("steps", "gallery_size", "width", "vision_layers", "text_layers", "patch_size", "threads"):
        value = getattr(args, name)
        if value is not None and value < 1:
            parser.error(f"--{name.replace('_', '-')} must be a positive integer, got {value}")
    return args


def print_sizes(unified: Unified, config: CNCLIPConfig, target: int, match: str) -> None:
    """One line: both parameter counts and (b)'s shape."""
    kw, count = config.clip_kwargs, count_params(config, match)
    print(
        f"(a) {unified.params:,} parameters ({unified.embedding_params:,} in token embeddings); (b) ViT "
        f"{kw['vision_layers']}x{kw['vision_width']}/{kw['vision_patch_size']} + BERT "
        f"{kw['text_num_hidden_layers']}x{kw['text_hidden_size']}, embed {kw['embed_dim']}: "
        f"{count_params(config):,} ({match} count {count:,}; target {target:,}, "
        f"{100 * (count - target) / target:+.1f}%)",
        flush=True,
    )


def run(args: argparse.Namespace) -> dict[str, Any]:
    if args.threads:
        torch.set_num_threads(args.threads)
    unified = load_unified(args.unified, args.device)
    recipe = unified.recipe
    tokenizer = CNCLIPTokenizer(resolve_vocab(args.vocab), DEFAULT_CONTEXT_LENGTH)
    folder = args.out / "dual_encoder"
    target = unified.params - (unified.embedding_params if args.match == "non-embedding" else 0)

    if args.skip_train:
        model, config, info = load_dual_encoder(folder)
        print_sizes(unified, config, target, args.match)
        if info.get("unified") != str(args.unified.resolve()):
            print(f"note: {folder} was trained for {info.get('unified')}", file=sys.stderr)
    else:
        config_model = unified.ofa.model.config
        base = {
            "embed_dim": int(config_model.retrieval_dim),
            "image_size": unified.image_size,
            "patch_size": args.patch_size or patch_size_for(unified.image_size),
            "vocab_size": len(tokenizer),
            "dropout": float(config_model.dropout),
            "attention_dropout": float(config_model.attention_dropout),
        }
        config, _ = choose_size(target, base, args.match, args.width, args.vision_layers, args.text_layers)
        print_sizes(unified, config, target, args.match)
        torch.manual_seed(recipe.train.seed)
        model = build_open_clip_model(config, pad_token_id=tokenizer.pad_id).to(args.device)
        steps = args.steps or args.unified_steps or recipe.train.max_steps
        folder.mkdir(parents=True, exist_ok=True)
        info = train_dual_encoder(
            model, tokenizer, unified, steps, args.device, folder / "train_log.jsonl", args.log_every
        )
        info |= {
            "unified": str(args.unified.resolve()),
            "unified_max_steps": recipe.train.max_steps,
            "pairs_per_step": recipe.data.retrieval.batch_size,
            "threads": torch.get_num_threads(),
            "device": args.device,
            "match": args.match,
            "date": datetime.date.today().isoformat(),
        }
        save_dual_encoder(folder, model.cpu(), config, info)
        model.to(args.device)
    wrapper = CNCLIPModel(model, tokenizer, config).eval()

    images, captions = gallery(unified, args.gallery_size, args.lang)
    texts = [text for group in captions for text in group]
    print(f"gallery: {len(images)} heldout scenes, {len(texts)} {args.lang} captions", flush=True)
    start = time.perf_counter()
    unified_metrics = score(*embed_unified(unified, images, texts, args.lang, args.batch_size), captions)
    unified_eval = time.perf_counter() - start
    start = time.perf_counter()
    dual_metrics = score(*embed_dual(wrapper, unified, images, texts, args.batch_size), captions)
    dual_eval = time.perf_counter() - start

    unified_steps = args.unified_steps or recipe.train.max_steps
    seconds_label, seconds = unified_train_seconds(unified, args.unified_seconds, unified_steps)
    dual_params = sum(p.numel() for p in model.parameters())
    rows = [
        {
            "name": "unified (a)",
            "params": unified.params,
            "params_label": f"{unified.params / 1e6:.2f}M",
            "steps": unified_steps,
            "steps_label": str(unified_steps),
            "train_seconds": seconds,
            "seconds_label": seconds_label,
            "eval_seconds": round(unified_eval, 1),
            "metrics": unified_metrics,
        },
        {
            "name": "dual encoder (b)",
            "params": dual_params,
            "params_label": f"{dual_params / 1e6:.2f}M",
            "steps": info["steps"],
            "steps_label": str(info["steps"]),
            "train_seconds": info["seconds"],
            "seconds_label": f"{info['seconds']:.0f}",
            "seconds_per_step": info["seconds_per_step"],
            "eval_seconds": round(dual_eval, 1),
            "config": config.clip_kwargs,
            "metrics": dual_metrics,
        },
        {
            "name": "oracle (caption text)",
            "params_label": "-",
            "steps_label": "-",
            "seconds_label": "-",
            "metrics": score(*oracle_features(captions), captions),
        },
    ]
    print(
        f"\nheldout split, {len(images)} scenes, {len(texts)} {args.lang} queries; R@k x100; "
        f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} threads, {args.device}, "
        f"torch {torch.__version__}, {datetime.date.today().isoformat()}"
    )
    for definition in DEFINITIONS:
        print(f"\npositives: {definition}\n\n{table(rows, definition)}")
    result = {
        "split": "heldout",
        "gallery_size": len(images),
        "queries": len(texts),
        "lang": args.lang,
        "date": datetime.date.today().isoformat(),
        "threads": torch.get_num_threads(),
        "device": args.device,
        "rows": [{k: v for k, v in row.items() if not k.endswith("_label")} for row in rows],
    }
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(result, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    return result


def main(argv: Sequence[str] | None = None) -> None:
    args = parse_args(argv)
    try:
        run(args)
    except (SideBySideError, RecipeError, TaskError, CNCLIPVocabError, CNCLIPLoadError) as err:
        sys.exit(f"error: {err}")


if __name__ == "__main__":
    main()
