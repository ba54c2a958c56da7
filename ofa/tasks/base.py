"""What every task is made of, and the registry that finds tasks by name.

A task turns a *sample* (a plain dict a dataset yields, documented per task) into an `Example`:
source token ids (instruction prompt), an optional image tensor, the target ids, the decoder mode. It also
owns how to search (settings and per-sample constraints), how to read a generated sequence back and how to
score. Adding a task = one new module with a `@register_task` class, nothing else edited.
"""

from __future__ import annotations

import re
from abc import ABC, abstractmethod
from dataclasses import dataclass, field, replace
from typing import Any, ClassVar

import torch
from torch import Tensor

from ofa.data.images import image_to_tensor, load_image
from ofa.generation import Constraint, GenerationConfig
from ofa.tokenization import OFATokenizer

LANGUAGES = ("en", "zh")
TASKS: dict[str, type[Task]] = {}


class TaskError(ValueError):
    """A sample a task cannot use; the message names the sample and the problem."""


def register_task(cls: type[Task]) -> type[Task]:
    if cls.name in TASKS:
        raise ValueError(f"task {cls.name!r} registered twice")
    TASKS[cls.name] = cls
    return cls


def get_task(name: str) -> type[Task]:
    import ofa.tasks  # noqa: F401  (imports every task module, which registers it)

    if name not in TASKS:
        raise TaskError(f"unknown task {name!r}; known tasks: {sorted(TASKS)}")
    return TASKS[name]


@dataclass
class Example:
    """One model input/target pair. `target` ends with eos; the decoder reads `[bos] + target[:-1]`."""

    task: str
    source: list[int]
    target: list[int]
    image: Tensor | None = None
    code_mode: bool = False
    meta: dict[str, Any] = field(default_factory=dict)


@dataclass
class Batch:
    """A padded batch: what `OFAModel.forward` and the loss need, plus each example's metadata."""

    input_ids: Tensor  # (B, L) padded with pad
    patch_images: Tensor | None  # (B, 3, S, S); zeros where a sample has no image
    patch_masks: Tensor | None  # (B,) bool, False where the image is absent
    decoder_input_ids: Tensor  # (B, T) = [bos] + target[:-1], padded
    target_ids: Tensor  # (B, T) padded with pad (ignored by the loss)
    code_masks: Tensor  # (B,) bool
    tasks: list[str]
    meta: list[dict[str, Any]]

    def to(self, device: torch.device | str) -> Batch:
        move = lambda t: t.to(device) if isinstance(t, Tensor) else t  # noqa: E731
        return replace(
            self,
            **{
                k: move(getattr(self, k))
                for k in (
                    "input_ids",
                    "patch_images",
                    "patch_masks",
                    "decoder_input_ids",
                    "target_ids",
                    "code_masks",
                )
            },
        )


def collate(examples: list[Example], pad_id: int, bos_id: int) -> Batch:
    """Pad sources and targets on the right; stack images, filling absent ones with zeros (masked)."""
    if not examples:
        raise ValueError("cannot collate an empty batch")
    batch = len(examples)
    src_len = max(len(e.source) for e in examples)
    tgt_len = max(len(e.target) for e in examples)
    input_ids = torch.full((batch, src_len), pad_id, dtype=torch.long)
    decoder_input_ids = torch.full((batch, tgt_len), pad_id, dtype=torch.long)
    target_ids = torch.full((batch, tgt_len), pad_id, dtype=torch.long)
    for i, e in enumerate(examples):
        input_ids[i, : len(e.source)] = torch.tensor(e.source)
        target_ids[i, : len(e.target)] = torch.tensor(e.target)
        decoder_input_ids[i, : len(e.target)] = torch.tensor([bos_id, *e.target[:-1]])
    images = [e.image for e in examples]
    patch_images = patch_masks = None
    if any(img is not None for img in images):
        shape = next(img for img in images if img is not None).shape
        patch_images = torch.stack([img if img is not None else torch.zeros(shape) for img in images])
        patch_masks = torch.tensor([img is not None for img in images])
    return Batch(
        input_ids=input_ids,
        patch_images=patch_images,
        patch_masks=patch_masks,
        decoder_input_ids=decoder_input_ids,
        target_ids=target_ids,
        code_masks=torch.tensor([e.code_mode for e in examples]),
        tasks=[e.task for e in examples],
        meta=[e.meta for e in examples],
    )


def clean_text(text: str, max_words: int | None = None) -> str:
    """The official `pre_caption` for English: lower-case, punctuation to spaces, collapse whitespace."""
    text = re.sub(r"([.!\"()*#:;~])", " ", text.lower())
    text = re.sub(r"\s{2,}", " ", text.replace("-", " ").replace("/", " ")).rstrip("\n").strip(" ")
    words = text.split(" ")
    if max_words is not None and len(words) > max_words:
        text = " ".join(words[:max_words])
    return text


class Task(ABC):
    """Base class: prompts per language, sample -> Example, search settings, output parsing and metric."""

    name: ClassVar[str]
    prompts: ClassVar[dict[str, str]]
    uses_image: ClassVar[bool] = True

    def __init__(
        self,
        tokenizer: OFATokenizer,
        image_size: int = 256,
        max_source_length: int = 128,
        max_target_length: int = 64,
        search: dict[str, Any] | None = None,
    ) -> None:
        self.tokenizer = tokenizer
        self.image_size = image_size
        self.max_source_length = max_source_length
        self.max_target_length = max_target_length
        self.search_overrides = dict(search or {})

    # ---- inputs
    def language(self, sample: dict[str, Any]) -> str:
        lang = sample.get("lang", "en")
        if lang not in self.prompts:
            raise TaskError(
                f"{self.name}: language {lang!r} not supported (choose from {sorted(self.prompts)})"
            )
        return lang

    def encode_source(self, text: str) -> list[int]:
        ids = self.tokenizer.encode(text)
        if len(ids) > self.max_source_length:
            ids = ids[: self.max_source_length - 1] + [self.tokenizer.eos_id]
        return ids

    def encode_text_target(self, text: str) -> list[int]:
        ids = self.tokenizer.encode(text)[1:]  # drop bos: the decoder input starts with it
        if len(ids) > self.max_target_length:
            ids = ids[: self.max_target_length - 1] + [self.tokenizer.eos_id]
        return ids

    def load_image(self, sample: dict[str, Any]) -> tuple[Tensor, tuple[int, int]]:
        """(normalised square tensor, original (width, height))."""
        if sample.get("image") is None:
            raise TaskError(f"{self.name}: sample {sample.get('id', '?')} has no image")
        image = load_image(sample["image"])
        return image_to_tensor(image, self.image_size), image.size

    @abstractmethod
    def build(self, sample: dict[str, Any], train: bool = False, rng: Any = None) -> Example:
        """Sample -> Example. `rng` (a `random.Random`) picks among several targets while training."""

    # ---- search
    def default_search(self) -> dict[str, Any]:
        return {"strategy": "beam", "beam_size": 5, "max_len_b": 16, "no_repeat_ngram_size": 3}

    def generation_config(self, **overrides: Any) -> GenerationConfig:
        tok = self.tokenizer
        values = {**self.default_search(), **self.search_overrides, **overrides}
        return GenerationConfig(
            bos_token_id=tok.bos_id,
            pad_token_id=tok.pad_id,
            eos_token_id=tok.eos_id,
            unk_token_id=tok.unk_id,
            **values,
        )

    def constraint(self, example: Example) -> Constraint | None:
        return None

    # ---- outputs
    @abstractmethod
    def parse(self, tokens: list[int], example: Example) -> Any:
        """A generated token list (no bos, may end in eos) -> the task's prediction."""

    @abstractmethod
    def score(self, predictions: list[Any], examples: list[Example]) -> dict[str, float]:
        """Metric name -> value over a whole evaluation set."""
