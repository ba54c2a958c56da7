"""Training recipes: one YAML file, loaded into dataclasses with strict validation.

Every key is checked: an unknown key anywhere, or a value of the wrong type, raises `RecipeError` naming the
file and the dotted key path (``tasks/world/tiny.yaml: train.max_step: unknown key``). Command-line overrides
are dotted ``key=value`` strings whose values are read as YAML (``train.max_steps=30``, ``train.betas=[0.9,0.98]``,
``data.mixture.0.weight=2``); they are applied to the raw mapping before validation, so they are checked
exactly like the file.

A top-level ``recipe`` key says which trainer a file is for: ``model`` (the default, this schema) or
``image_tokenizer`` (``tasks/world/vq.yaml``, checked by ``ofa.training.image_tokenizer``); ``ofa train``
dispatches on it.

Relative paths (``tokenizer.path``, ``model.init_from``, ``train.output_dir``, ``train.resume``) resolve against
the current directory; ``tokenizer.path`` and ``model.init_from`` fall back to the repository root (the folder
that holds the ``ofa`` package) when they do not exist there, so the shipped recipes work from anywhere.
"""

from __future__ import annotations

import copy
import dataclasses
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Union

import yaml

from ofa.models import OFAConfig

REPO_ROOT = Path(__file__).resolve().parents[2]


class RecipeError(ValueError):
    """A recipe file or override that cannot describe a training run; one line naming the key and file."""


# ------------------------------------------------------------------------------------------------ schema
@dataclass
class ModelSection:
    """The network: an official size (`preset`) and/or explicit `OFAConfig` fields, or a checkpoint to fine-tune.

    Vocabulary fields (`vocab_size`, `num_codes`, `num_bins`, special ids) always come from the tokenizer.
    With `init_from`, the architecture comes from the checkpoint and `config` may only change
    regularisation/runtime fields (`INIT_FROM_FIELDS`), or add a retrieval head (`retrieval_dim`).
    """

    preset: str | None = None
    config: dict[str, Any] = field(default_factory=dict)
    init_from: str | None = None


@dataclass
class TokenizerSection:
    """`path`: a tokenizer folder; null: `model.init_from`'s own tokenizer when fine-tuning, else `DEFAULT_TOKENIZER`
    (a checkpoint then always comes with the vocabulary it was trained with)."""

    path: str | None = None


DEFAULT_TOKENIZER = "tokenizers/world"


@dataclass
class MixtureComponent:
    """One (task, language) stream of the training mixture, drawn with probability weight / sum(weights).

    `size` bounds the source (sample index = global index mod size): a fixed small data set; None = unbounded
    (world) or the whole file. With `data.kind: files`, `path` names the data file and `format` its format
    (`ofa.data.formats.FORMATS`; null: told from the file name); `split` is then unused.
    """

    task: str
    lang: str = "en"
    weight: float = 1.0
    split: str = "train"
    size: int | None = None
    path: str | None = None
    format: str | None = None


@dataclass
class RetrievalSection:
    """Contrastive image-text pairs trained beside the mixture (`ofa.training.retrieval`; the model needs
    `retrieval_dim`). Every optimizer step takes `batch_size` pairs, split over devices and accumulation
    micro-steps like the mixture; the step loss adds `weight` x the contrastive loss to the mixture's.
    """

    batch_size: int = 32  # global: pairs per optimizer step
    weight: float = 1.0
    langs: list[str] = field(default_factory=lambda: ["en"])  # each pair's language is drawn from these
    split: str = "train"
    size: int | None = None  # bound the scenes (pair index mod size); None: every pair a new scene
    local_loss: bool = True  # each rank scores its own rows only (less memory; the same gradient)
    # data.kind: files: the pairs file (retrieval formats of `ofa.data.formats`; its texts are in langs[0])
    path: str | None = None
    format: str | None = None  # null: told from the file name


@dataclass
class DataSection:
    """Where samples come from. `kind: world` is the synthetic world (`world`: `WorldConfig` overrides);
    `kind: files` reads every mixture component (and `retrieval`) from its own data file (`path`, `format`).
    """

    kind: Literal["world", "files"] = "world"
    world: dict[str, Any] = field(default_factory=dict)
    mixture: list[MixtureComponent] = field(default_factory=list)
    image_size: int | None = None  # None: the model's image_size
    max_source_length: int = 128
    max_target_length: int = 64
    num_workers: int = 0
    # World only: consecutive global samples come in groups of this many that share a mixture component; a group
    # of grounding samples shares one scene, each expression about a different object (`WorldSource`).
    samples_per_scene: int = 1
    # Per task constructor options, e.g. {caption: {train_target: first}} (see each task's docstring).
    task_options: dict[str, Any] = field(default_factory=dict)
    retrieval: RetrievalSection | None = None  # contrastive pairs beside the mixture; null: none


@dataclass
class TrainSection:
    max_steps: int = 1000
    batch_size: int = 32  # global: samples per optimizer step over all devices and accumulation micro-steps
    accumulate_grad_batches: int = 1
    lr: float = 1e-4
    weight_decay: float = 0.01
    betas: list[float] = field(default_factory=lambda: [0.9, 0.999])
    eps: float = 1e-8
    warmup_steps: int = 0
    schedule: Literal["cosine", "linear", "constant"] = "cosine"
    min_lr_ratio: float = 0.0
    label_smoothing: float = 0.1
    # > 0: a <bin_k> target is a Gaussian of this std (in bins) around k (`ordinal_bin_loss_sum`); 0: one-hot.
    bin_label_sigma: float = 0.0
    # > 0: grounding samples also train the encoder's image tokens to point at the referent's patch cells
    # (`OFALightningModule.referent_cell_loss_sum`; the small head is not part of the exported model), times this weight.
    referent_cell_weight: float = 0.0
    # > 0: at each box step of a grounding sample, head 0 of the cross-attention of the decoder layers in
    # `attention_layers` (default: the last) is trained to attend to the referent's patch cells
    # (`OFALightningModule.object_attention_loss_sum`; no parameters), times this weight.
    referent_attention_weight: float = 0.0
    # > 0: the same head, at each size/colour/shape word of a world caption, to the cells of the objects it names.
    caption_attention_weight: float = 0.0
    # Decoder layers whose cross-attention head 0 those two terms supervise (each layer's term counts in full);
    # negative indices count from the last layer.
    attention_layers: list[int] = field(default_factory=lambda: [-1])
    # How many heads of each such layer (heads 0..n-1) those terms supervise, averaged over the heads, so the
    # weight means the same for any n. On the world, 4 instead of 1 grounded worse (checkpoints/ofa-world-tiny).
    attention_heads: int = 1
    # > 0: at each box step of a grounding sample, head 0 of the FIRST decoder layer's cross-attention is trained
    # to attend to the expression's source tokens, uniformly (`OFALightningModule.expression_attention_loss_sum`;
    # no parameters), times this weight: the box query then carries the words the referent is matched by.
    expression_attention_weight: float = 0.0
    # > 0: the keys of the head the object-attention terms supervise (head 0 of the `attention_layers`) are also
    # trained, through small linear heads that are not exported, to tell the size / colour / shape of the world
    # object at each patch cell (caption samples with object boxes), times this weight: a key that does not hold an
    # attribute gives the query no gradient to match it (`OFALightningModule.key_attribute_loss_sum`).
    key_attribute_weight: float = 0.0
    # > 0: the same head's query at each box step of a grounding sample is trained, through small linear heads that
    # are not exported, to tell the size / colour / shape the (world attribute) expression names, times this
    # weight: with keys and query both holding an attribute, the attention term can learn to match it.
    query_attribute_weight: float = 0.0
    # The expression kinds whose named attributes that term supervises (attribute | relation | ordinal; a sample
    # without a kind counts as attribute). In a relation only the target's words count, not the anchor's.
    query_attribute_kinds: list[Literal["attribute", "relation", "ordinal"]] = field(
        default_factory=lambda: ["attribute"]
    )
    # Teacher forcing: each text token of the decoder input becomes <unk> with this probability, so the next
    # word must come from the image more than from the previous word (`decoder_input_dropout`).
    decoder_input_dropout: float = 0.0
    clip_grad_norm: float | None = 1.0
    precision: Literal["32", "bf16-mixed", "16-mixed"] = "32"
    gradient_checkpointing: bool = False
    # ResNet BatchNorm: `train` (per-device batch statistics), `sync` (statistics over all devices; GPU only),
    # `frozen` (running statistics, affine weights still trained: the same maths on any device layout).
    batchnorm: Literal["train", "sync", "frozen"] = "train"
    # Parameter-name prefixes kept fixed (no gradient; their BatchNorm layers use running statistics),
    # e.g. [encoder.embed_images] after stem_pretrain.
    freeze: list[str] = field(default_factory=list)
    # Parameter-name prefix -> learning-rate multiplier, e.g. {encoder.embed_images: 0.1} (first match wins).
    lr_scale: dict[str, float] = field(default_factory=dict)
    strategy: Literal["auto", "ddp", "fsdp"] = "auto"
    devices: int | str = "auto"
    num_nodes: int = 1
    accelerator: str = "auto"
    seed: int = 0
    num_threads: int | None = None  # CPU intra-op threads per process (torch.set_num_threads); null: default
    # Flush denormal floats to zero in CPU arithmetic (x86 FTZ/DAZ): late in training they made steps ~1.6x slower.
    flush_denormal: bool = True
    # CPU (glibc): freed memory stays in the process instead of going back to the OS, so each step's buffers are
    # not page-faulted in again (ofa/training/memory.py). For the rest of the process; resident size stays at peak.
    keep_freed_memory: bool = True
    checkpoint_every: int = 1000
    eval_every: int = 0  # 0: no periodic evaluation
    log_every: int = 10
    output_dir: str = "runs/world-tiny"
    resume: str = "auto"  # auto (latest checkpoint in output_dir, if any) | none | path to a .ckpt
    export_dtype: Literal["float32", "bfloat16", "float16"] = "float32"
    progress_bar: Literal["auto", "rich", "tqdm", "none"] = "auto"


@dataclass
class EvalSection:
    """Periodic evaluation: `samples` examples per (task, lang) of the mixture, from `split`."""

    split: str = "val"
    samples: int = 32
    batch_size: int = 16
    search: dict[str, dict[str, Any]] = field(default_factory=dict)  # task -> GenerationConfig overrides


@dataclass
class StemPretrainSection:
    """A first stage that trains the image stem alone on dense per-patch targets of world scenes (colour,
    shape, size and box of the object at each patch; `ofa.training.stem_pretrain`). Pair it with
    `train.freeze: [encoder.embed_images]` to keep what it learned. Skipped when a run resumes."""

    steps: int = 600
    batch_size: int = 32
    lr: float = 2e-3
    weight_decay: float = 0.01
    warmup_steps: int = 60
    box_weight: float = 1.0
    val_scenes: int = 256  # `val` scenes scored at the end (stem_pretrain.json in train.output_dir)


@dataclass
class Recipe:
    model: ModelSection = field(default_factory=ModelSection)
    tokenizer: TokenizerSection = field(default_factory=TokenizerSection)
    data: DataSection = field(default_factory=DataSection)
    stem_pretrain: StemPretrainSection | None = None  # null: the stem trains with the seq2seq loss only
    train: TrainSection = field(default_factory=TrainSection)
    eval: EvalSection = field(default_factory=EvalSection)
    source: str = field(default="<recipe>", metadata={"internal": True})

    def to_dict(self) -> dict[str, Any]:
        """Plain mapping (YAML-serialisable) of the validated recipe, without internal fields."""
        values = dataclasses.asdict(self)
        values.pop("source")
        return values

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.to_dict(), sort_keys=False, allow_unicode=True)


INIT_FROM_FIELDS = frozenset(
    {
        "dropout",
        "attention_dropout",
        "activation_dropout",
        "encoder_drop_path_rate",
        "decoder_drop_path_rate",
        "resnet_drop_path_rate",
        "attn_implementation",
        "gradient_checkpointing",
        "retrieval_dim",  # adds a fresh retrieval head to a checkpoint without one
    }
)
VOCAB_FIELDS = (
    "vocab_size",
    "num_codes",
    "num_bins",
    "bos_token_id",
    "pad_token_id",
    "eos_token_id",
    "unk_token_id",
)


# ------------------------------------------------------------------------------------------ validation
def _type_name(tp: Any) -> str:
    origin = typing.get_origin(tp)
    if origin is Literal:
        return " | ".join(repr(a) for a in typing.get_args(tp))
    if origin in (Union, types.UnionType):
        return " | ".join(_type_name(a) for a in typing.get_args(tp))
    if origin is not None:
        return str(tp).replace("typing.", "")
    return "null" if tp is type(None) else getattr(tp, "__name__", str(tp))


def _convert(value: Any, tp: Any, path: str, where: str) -> Any:
    """Check `value` against the annotation `tp`; return it (converted where YAML is ambiguous)."""
    origin = typing.get_origin(tp)
    fail = RecipeError(f"{where}: {path}: expected {_type_name(tp)}, got {value!r}")
    if tp is Any:
        return value
    if origin in (Union, types.UnionType):
        sections = [o for o in typing.get_args(tp) if dataclasses.is_dataclass(o)]
        if isinstance(value, dict) and sections:  # a mapping means the section: its own error names the key
            return _build(sections[0], value, path, where)
        if value is None and type(None) in typing.get_args(tp):  # null switches an optional section off
            return None
        for option in typing.get_args(tp):
            try:
                return _convert(value, option, path, where)
            except RecipeError:
                continue
        raise fail
    if origin is Literal:
        choices = typing.get_args(tp)
        for choice in choices:  # YAML reads `precision: 32` as an int
            if value == choice or (isinstance(value, int | float) and str(value) == choice):
                return choice
        raise fail
    if tp is type(None):
        if value is None:
            return None
        raise fail
    if dataclasses.is_dataclass(tp):
        return _build(tp, value, path, where)
    if origin is list:
        if not isinstance(value, list):
            raise fail
        (item,) = typing.get_args(tp)
        return [_convert(v, item, f"{path}.{i}", where) for i, v in enumerate(value)]
    if origin is tuple:
        if not isinstance(value, list | tuple):
            raise fail
        args = typing.get_args(tp)
        if len(args) == 2 and args[1] is Ellipsis:
            return tuple(_convert(v, args[0], f"{path}.{i}", where) for i, v in enumerate(value))
        if len(args) != len(value):
            raise fail
        return tuple(_convert(v, a, f"{path}.{i}", where) for i, (v, a) in enumerate(zip(value, args)))
    if origin is dict:
        if not isinstance(value, dict):
            raise fail
        key_tp, val_tp = typing.get_args(tp)
        return {
            _convert(k, key_tp, path, where): _convert(v, val_tp, f"{path}.{k}", where)
            for k, v in value.items()
        }
    if tp is bool:
        if isinstance(value, bool):
            return value
        raise fail
    if tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        raise fail
    if tp is float:
        if isinstance(value, int | float) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str):  # PyYAML reads `3e-4` (no dot) as a string
            try:
                return float(value)
            except ValueError:
                pass
        raise fail
    if tp is str:
        if isinstance(value, str):
            return value
        raise fail
    raise RecipeError(f"{where}: {path}: unsupported annotation {tp}")  # pragma: no cover


def _build(cls: type, values: Any, path: str, where: str) -> Any:
    if values is None:
        values = {}
    if not isinstance(values, dict):
        raise RecipeError(f"{where}: {path or 'recipe'}: expected a mapping, got {values!r}")
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls) if not f.metadata.get("internal")}
    for key in values:
        if key not in fields:
            dotted = f"{path}.{key}" if path else str(key)
            raise RecipeError(f"{where}: {dotted}: unknown key (known: {', '.join(sorted(fields))})")
    kwargs = {}
    for name, f in fields.items():
        dotted = f"{path}.{name}" if path else name
        if name in values:
            kwargs[name] = _convert(values[name], hints[name], dotted, where)
        elif f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
            raise RecipeError(f"{where}: {dotted}: required key is missing")
    return cls(**kwargs)


def _check(recipe: Recipe, where: str) -> None:
    """Cross-field checks that the types alone do not express."""
    from ofa.data.world import WorldConfig

    model = recipe.model
    hints = typing.get_type_hints(OFAConfig)
    for key, value in model.config.items():
        if key not in hints:
            raise RecipeError(f"{where}: model.config.{key}: unknown key (not an OFAConfig field)")
        model.config[key] = _convert(value, hints[key], f"model.config.{key}", where)
    if model.init_from is not None:
        for key in model.config:
            if key not in INIT_FROM_FIELDS:
                raise RecipeError(
                    f"{where}: model.config.{key}: cannot change the architecture of model.init_from; "
                    f"allowed: {', '.join(sorted(INIT_FROM_FIELDS))}"
                )
    world_hints = typing.get_type_hints(WorldConfig)
    for key, value in recipe.data.world.items():
        if key not in world_hints:
            raise RecipeError(f"{where}: data.world.{key}: unknown key (not a WorldConfig field)")
        recipe.data.world[key] = _convert(value, world_hints[key], f"data.world.{key}", where)
    try:
        WorldConfig(**recipe.data.world)
    except (TypeError, ValueError) as err:
        raise RecipeError(f"{where}: data.world: {err}") from None
    stem = recipe.stem_pretrain
    if stem is not None:
        if recipe.data.kind != "world":
            raise RecipeError(
                f"{where}: stem_pretrain: needs data.kind: world (its targets are the scene's objects)"
            )
        if model.init_from is not None:
            raise RecipeError(
                f"{where}: stem_pretrain: the stem of model.init_from is already trained; set stem_pretrain: null"
            )
        for key in ("steps", "batch_size", "val_scenes"):
            if getattr(stem, key) < 1:
                raise RecipeError(f"{where}: stem_pretrain.{key}: must be >= 1, got {getattr(stem, key)}")
        if stem.warmup_steps < 0 or not stem.lr > 0 or stem.box_weight < 0:
            raise RecipeError(f"{where}: stem_pretrain: needs warmup_steps >= 0, lr > 0 and box_weight >= 0")
    if not recipe.data.mixture:
        raise RecipeError(f"{where}: data.mixture: needs at least one component")
    from ofa.tasks import TASKS, get_task

    get_task("caption")  # registers the built-in tasks
    for i, comp in enumerate(recipe.data.mixture):
        if comp.task not in TASKS:
            raise RecipeError(
                f"{where}: data.mixture.{i}.task: unknown task {comp.task!r} (known: {sorted(TASKS)})"
            )
        if comp.lang not in TASKS[comp.task].prompts:
            raise RecipeError(f"{where}: data.mixture.{i}.lang: {comp.task} has no language {comp.lang!r}")
        if not comp.weight > 0:
            raise RecipeError(f"{where}: data.mixture.{i}.weight: must be > 0, got {comp.weight}")
        if comp.size is not None and comp.size < 1:
            raise RecipeError(f"{where}: data.mixture.{i}.size: must be >= 1, got {comp.size}")
        if comp.task == "retrieval":
            raise RecipeError(
                f"{where}: data.mixture.{i}.task: retrieval is contrastive, not generative; "
                "train it with a data.retrieval section"
            )
    _check_files(recipe, where)
    pairs = recipe.data.retrieval
    if pairs is not None:
        if pairs.batch_size < 2 or pairs.batch_size % recipe.train.accumulate_grad_batches:
            raise RecipeError(
                f"{where}: data.retrieval.batch_size: needs >= 2 pairs divisible by "
                f"train.accumulate_grad_batches={recipe.train.accumulate_grad_batches}, got {pairs.batch_size}"
            )
        if not pairs.weight > 0:
            raise RecipeError(f"{where}: data.retrieval.weight: must be > 0, got {pairs.weight}")
        bad = [lang for lang in pairs.langs if lang not in TASKS["retrieval"].prompts]
        if not pairs.langs or bad:
            raise RecipeError(f"{where}: data.retrieval.langs: choose from en, zh, got {pairs.langs}")
        if pairs.size is not None and pairs.size < 1:
            raise RecipeError(f"{where}: data.retrieval.size: must be >= 1, got {pairs.size}")
    from ofa.generation import GenerationConfig

    search_hints = typing.get_type_hints(GenerationConfig)
    settable = set(search_hints) - {
        "generator",
        "bos_token_id",
        "pad_token_id",
        "eos_token_id",
        "unk_token_id",
    }
    for task, settings in recipe.eval.search.items():
        if task not in TASKS:
            raise RecipeError(f"{where}: eval.search.{task}: unknown task (known: {sorted(TASKS)})")
        for key, value in settings.items():
            if key not in settable:
                raise RecipeError(
                    f"{where}: eval.search.{task}.{key}: unknown key (known: {', '.join(sorted(settable))})"
                )
            settings[key] = _convert(value, search_hints[key], f"eval.search.{task}.{key}", where)
    t = recipe.train
    positive = {
        "train.max_steps": t.max_steps,
        "train.batch_size": t.batch_size,
        "train.accumulate_grad_batches": t.accumulate_grad_batches,
        "train.num_nodes": t.num_nodes,
        "train.checkpoint_every": t.checkpoint_every,
        "train.log_every": t.log_every,
        "eval.batch_size": recipe.eval.batch_size,
        "data.samples_per_scene": recipe.data.samples_per_scene,
    }
    for key, value in positive.items():
        if value < 1:
            raise RecipeError(f"{where}: {key}: must be >= 1, got {value}")
    for key, value in {
        "train.warmup_steps": t.warmup_steps,
        "train.eval_every": t.eval_every,
        "eval.samples": recipe.eval.samples,
        "data.num_workers": recipe.data.num_workers,
    }.items():
        if value < 0:
            raise RecipeError(f"{where}: {key}: must be >= 0, got {value}")
    if len(t.betas) != 2 or not all(0 <= b < 1 for b in t.betas):
        raise RecipeError(f"{where}: train.betas: needs two values in [0, 1), got {t.betas}")
    if not 0 <= t.label_smoothing < 1:
        raise RecipeError(f"{where}: train.label_smoothing: must be in [0, 1), got {t.label_smoothing}")
    if t.bin_label_sigma < 0:
        raise RecipeError(f"{where}: train.bin_label_sigma: must be >= 0, got {t.bin_label_sigma}")
    if not 0 <= t.decoder_input_dropout < 1:
        raise RecipeError(
            f"{where}: train.decoder_input_dropout: must be in [0, 1), got {t.decoder_input_dropout}"
        )
    for name in (
        "referent_cell_weight",
        "referent_attention_weight",
        "caption_attention_weight",
        "expression_attention_weight",
        "key_attribute_weight",
        "query_attribute_weight",
    ):
        if getattr(t, name) < 0:
            raise RecipeError(f"{where}: train.{name}: must be >= 0, got {getattr(t, name)}")
    if not t.attention_layers or len(set(t.attention_layers)) != len(t.attention_layers):
        raise RecipeError(
            f"{where}: train.attention_layers: expected distinct layer indices, got {t.attention_layers}"
        )
    if t.attention_heads < 1:
        raise RecipeError(f"{where}: train.attention_heads: must be >= 1, got {t.attention_heads}")
    if not 0 <= t.min_lr_ratio <= 1:
        raise RecipeError(f"{where}: train.min_lr_ratio: must be in [0, 1], got {t.min_lr_ratio}")
    if isinstance(t.devices, str) and t.devices != "auto":
        raise RecipeError(f"{where}: train.devices: expected an int or 'auto', got {t.devices!r}")
    if t.batch_size % t.accumulate_grad_batches:
        raise RecipeError(
            f"{where}: train.batch_size={t.batch_size} is not divisible by "
            f"train.accumulate_grad_batches={t.accumulate_grad_batches}"
        )
    if any(not isinstance(v, (int, float)) or v < 0 for v in t.lr_scale.values()):
        raise RecipeError(f"{where}: train.lr_scale: multipliers must be numbers >= 0, got {t.lr_scale}")
    if any(not isinstance(p, str) or not p.strip(".") for p in t.freeze):
        raise RecipeError(f"{where}: train.freeze: expected parameter-name prefixes, got {t.freeze}")
    if t.resume not in ("auto", "none") and not t.resume.endswith(".ckpt"):
        raise RecipeError(f"{where}: train.resume: expected auto, none or a .ckpt path, got {t.resume!r}")


def _check_files(recipe: Recipe, where: str) -> None:
    """`data.kind: files` needs a `path` on every component (and on `data.retrieval`), in a format that holds
    the component's task; `kind: world` takes none. Whether the files exist is checked when they are opened."""
    from ofa.data.formats import DataFormatError, check_format

    data = recipe.data
    files = data.kind == "files"
    sections = [(f"data.mixture.{i}", comp.task, comp) for i, comp in enumerate(data.mixture)]
    if data.retrieval is not None:
        sections.append(("data.retrieval", "retrieval", data.retrieval))
    if files and data.samples_per_scene != 1:
        raise RecipeError(f"{where}: data.samples_per_scene: only read with data.kind: world (files: keep 1)")
    for key, task, section in sections:
        if not files:
            for name in ("path", "format"):
                if getattr(section, name) is not None:
                    raise RecipeError(f"{where}: {key}.{name}: only read with data.kind: files")
            continue
        if section.path is None:
            raise RecipeError(f"{where}: {key}.path: data.kind: files needs a data file for every source")
        if section.format is not None:
            try:
                check_format(task, section.format)
            except DataFormatError as err:
                raise RecipeError(f"{where}: {key}.format: {err}") from None
    if files:
        if data.world:
            raise RecipeError(f"{where}: data.world: only read with data.kind: world")
        if data.retrieval is not None and len(data.retrieval.langs) != 1:
            raise RecipeError(
                f"{where}: data.retrieval.langs: a pairs file has one language; give one, got {data.retrieval.langs}"
            )
        if recipe.train.eval_every > 0:
            raise RecipeError(
                f"{where}: train.eval_every: periodic evaluation reads world splits; with data.kind: files set "
                "it to 0 and score the export with `ofa eval CKPT --task T --data FILE`"
            )


# ---------------------------------------------------------------------------------------------- loading
def parse_override(text: str) -> tuple[list[str], Any]:
    """``"train.max_steps=30"`` -> (["train", "max_steps"], 30); the value is read as YAML."""
    key, sep, raw = text.partition("=")
    key = key.strip()
    if not sep or not key or any(not part for part in key.split(".")):
        raise RecipeError(f"override {text!r}: expected dotted.key=value")
    try:
        value = yaml.safe_load(raw) if raw.strip() else None
    except yaml.YAMLError as err:
        raise RecipeError(
            f"override {text!r}: value is not valid YAML ({' '.join(str(err).split())})"
        ) from None
    return key.split("."), value


def apply_overrides(values: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """A copy of `values` with each ``key=value`` override set (numeric parts index lists)."""
    values = copy.deepcopy(values)
    for text in overrides:
        parts, value = parse_override(text)
        node: Any = values
        for depth, part in enumerate(parts):
            last = depth == len(parts) - 1
            where = ".".join(parts[: depth + 1])
            if isinstance(node, list):
                if not part.isdigit() or int(part) >= len(node):
                    raise RecipeError(f"override {text!r}: {where}: no such list item (list has {len(node)})")
                index: Any = int(part)
            elif isinstance(node, dict):
                index = part
            else:
                raise RecipeError(f"override {text!r}: {'.'.join(parts[:depth])} is not a mapping")
            if last:
                node[index] = value
            else:
                if isinstance(node, dict) and node.get(index) is None:
                    node[index] = {}
                node = node[index]
    return values


def recipe_from_dict(
    values: dict[str, Any], overrides: list[str] | None = None, source: str = "<recipe>"
) -> Recipe:
    """Validate a mapping (plus overrides) into a `Recipe`."""
    values = apply_overrides(values or {}, list(overrides or []))
    where = source + (" (with overrides)" if overrides else "")
    kind = recipe_kind(values, where)
    if kind != "model":
        raise RecipeError(
            f"{where}: recipe: {kind} is not a model recipe (train it with `ofa train {source}`)"
        )
    values.pop("recipe", None)
    recipe = _build(Recipe, values, "", where)
    recipe.source = source
    _check(recipe, where)
    return recipe


def load_recipe(path: str | Path, overrides: list[str] | None = None) -> Recipe:
    """Read a YAML recipe and apply dotted ``key=value`` overrides; raise `RecipeError` on any bad key."""
    return recipe_from_dict(read_recipe_file(path), overrides, source=str(path))


def read_recipe_file(path: str | Path) -> dict[str, Any]:
    """The top-level mapping of a YAML recipe file (an empty file is `{}`); `RecipeError` if it is not one."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as err:
        raise RecipeError(f"cannot read recipe {path}: {err.strerror or err}") from None
    try:
        values = yaml.safe_load(text)
    except yaml.YAMLError as err:
        raise RecipeError(f"{path}: not valid YAML ({' '.join(str(err).split())})") from None
    if values is None:
        values = {}
    if not isinstance(values, dict):
        raise RecipeError(f"{path}: the recipe must be a mapping of sections")
    return values


RECIPE_KINDS = ("model", "image_tokenizer")


def recipe_kind(values: dict[str, Any], source: str) -> str:
    """Which trainer a recipe is for: its top-level `recipe` key, `model` when absent."""
    kind = values.get("recipe", "model")
    if kind not in RECIPE_KINDS:
        raise RecipeError(f"{source}: recipe: unknown trainer {kind!r} (known: {', '.join(RECIPE_KINDS)})")
    return kind


def resolve_path(path: str | Path, fallback_to_repo: bool = True) -> Path:
    """A relative path against the current directory, else (if it exists there) the repository root."""
    path = Path(path).expanduser()
    if path.is_absolute() or path.exists() or not fallback_to_repo:
        return path
    candidate = REPO_ROOT / path
    return candidate if candidate.exists() else path


def tokenizer_vocab(tokenizer: Any) -> dict[str, int]:
    """The `OFAConfig` vocabulary fields a tokenizer fixes."""
    return {
        "vocab_size": tokenizer.vocab_size,
        "num_codes": tokenizer.num_codes,
        "num_bins": tokenizer.num_bins,
        "bos_token_id": tokenizer.bos_id,
        "pad_token_id": tokenizer.pad_id,
        "eos_token_id": tokenizer.eos_id,
        "unk_token_id": tokenizer.unk_id,
    }


def model_config(recipe: Recipe, tokenizer: Any) -> OFAConfig:
    """The `OFAConfig` a recipe describes (preset, then `model.config`), vocabulary taken from the tokenizer."""
    from ofa.models import ConfigError

    vocab = tokenizer_vocab(tokenizer)
    for key in VOCAB_FIELDS:
        if key in recipe.model.config and recipe.model.config[key] != vocab[key]:
            raise RecipeError(
                f"{recipe.source}: model.config.{key}={recipe.model.config[key]} disagrees with the tokenizer "
                f"({vocab[key]}); leave it out, it is set from the tokenizer"
            )
    values = {**recipe.model.config, **vocab}
    if recipe.train.gradient_checkpointing:
        values["gradient_checkpointing"] = True
    try:
        if recipe.model.preset is not None:
            return OFAConfig.preset(recipe.model.preset, **values)
        return OFAConfig.from_dict(values)
    except (ConfigError, TypeError) as err:
        raise RecipeError(f"{recipe.source}: model: {err}") from None


__all__ = [
    "DataSection",
    "EvalSection",
    "MixtureComponent",
    "ModelSection",
    "Recipe",
    "RecipeError",
    "RetrievalSection",
    "TokenizerSection",
    "TrainSection",
    "apply_overrides",
    "load_recipe",
    "model_config",
    "parse_override",
    "recipe_from_dict",
    "resolve_path",
]
