"""Image-text retrieval with the unified model's own encoder (contrastive, not generative).

Sample: ``{"image": PIL image | path | array, "text": str, "lang": "en" | "zh", "id": any}``; optionally
``"image_id"`` (default: ``"id"``), the key that says which samples show the same image.

An `Example` holds the image side as usual (``image`` + ``source`` = the image instruction, the caption
prompt of the sample's language, see `ofa.models.retrieval`) and the text side in ``meta["text_ids"]``
(the text itself: English cleaned as captions are, Chinese stripped). ``target`` is empty: there is nothing
to decode. `collate_pairs` pads a list of them into a `PairBatch`; `embed_examples` runs a model over them.

Metric: Chinese-CLIP many-to-many recall (`ofa.evaluation.retrieval`): the text->image queries are the
distinct texts, each correct for every image it was paired with; the image->text queries are the distinct
images. ``score`` takes one ``(image_embedding, text_embedding)`` pair per example.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Any

import torch
from torch import Tensor

from .base import Example, Task, TaskError, clean_text, register_task
from .caption import CaptionTask


@dataclass
class PairBatch:
    """Padded image-text pairs: row i of the images goes with row i of the texts."""

    patch_images: Tensor  # (N, 3, S, S)
    image_input_ids: Tensor  # (N, Lp) the image instruction, padded
    text_input_ids: Tensor  # (N, Lt) the texts, padded
    meta: list[dict[str, Any]]

    def __len__(self) -> int:
        return self.patch_images.size(0)

    def to(self, device: torch.device | str) -> PairBatch:
        return replace(
            self,
            patch_images=self.patch_images.to(device),
            image_input_ids=self.image_input_ids.to(device),
            text_input_ids=self.text_input_ids.to(device),
        )


def _pad(rows: Sequence[Sequence[int]], pad_id: int) -> Tensor:
    out = torch.full((len(rows), max(len(r) for r in rows)), pad_id, dtype=torch.long)
    for i, row in enumerate(rows):
        out[i, : len(row)] = torch.tensor(list(row), dtype=torch.long)
    return out


def collate_pairs(examples: Sequence[Example], pad_id: int) -> PairBatch:
    """Stack the images and right-pad the instructions and texts of retrieval examples."""
    if not examples:
        raise ValueError("cannot collate an empty list of pairs")
    wrong = [e.task for e in examples if e.task != RetrievalTask.name or e.image is None]
    if wrong:
        raise ValueError(f"collate_pairs takes retrieval examples with images, got {wrong[:3]}")
    return PairBatch(
        patch_images=torch.stack([e.image for e in examples]),
        image_input_ids=_pad([e.source for e in examples], pad_id),
        text_input_ids=_pad([e.meta["text_ids"] for e in examples], pad_id),
        meta=[e.meta for e in examples],
    )


@torch.no_grad()
def embed_examples(
    model: Any, examples: Sequence[Example], pad_id: int, batch_size: int = 32
) -> tuple[Tensor, Tensor]:
    """(image embeddings, text embeddings), each (N, retrieval_dim) float32 on CPU, in example order."""
    images, texts = [], []
    for start in range(0, len(examples), batch_size):
        batch = collate_pairs(examples[start : start + batch_size], pad_id).to(model.device)
        images.append(model.embed_images(batch.patch_images.to(model.dtype), batch.image_input_ids).cpu())
        texts.append(model.embed_texts(batch.text_input_ids).cpu())
    return torch.cat(images), torch.cat(texts)


@register_task
class RetrievalTask(Task):
    """Image-text pairs for the contrastive loss and recall@k; see the module docstring."""

    name = "retrieval"
    # The image instruction: the caption prompt, so retrieval pools what the caption decoder reads.
    prompts = dict(CaptionTask.prompts)

    def text_ids(self, text: str, lang: str) -> list[int]:
        """Token ids of a text as the text side sees it: bos, the cleaned text, eos (truncated)."""
        if not isinstance(text, str) or not text.strip():
            raise TaskError("retrieval: the text is empty")
        return self.encode_source(" " + clean_text(text) if lang == "en" else text.strip())

    def image_prompt_ids(self, lang: str) -> list[int]:
        """Token ids of the image instruction in `lang`."""
        return self.encode_source(self.prompts[lang])

    def build(self, sample: dict[str, Any], train: bool = False, rng: Any = None) -> Example:
        lang = self.language(sample)
        text = sample.get("text")
        if not isinstance(text, str) or not text.strip():
            raise TaskError(f"retrieval: sample {sample.get('id', '?')} has no text")
        image, size = self.load_image(sample)
        meta = {
            "id": sample.get("id"),
            "image_id": sample.get("image_id", sample.get("id")),
            "lang": lang,
            "text": text,
            "text_ids": self.text_ids(text, lang),
            "image_size": size,
        }
        return Example(self.name, self.image_prompt_ids(lang), [], image, meta=meta)

    def parse(self, tokens: list[int], example: Example) -> Any:
        raise TaskError("retrieval is scored from embeddings (embed_examples), not from generated tokens")

    def score(self, predictions: list[tuple[Tensor, Tensor]], examples: list[Example]) -> dict[str, float]:
        """Many-to-many recall (x100) from one (image embedding, text embedding) pair per example."""
        from ofa.evaluation.retrieval import retrieval_metrics

        if len(predictions) != len(examples) or not examples:
            raise TaskError(f"retrieval: {len(predictions)} predictions for {len(examples)} examples")
        image_rows: dict[Any, Tensor] = {}
        text_rows: dict[tuple[str, str], Tensor] = {}
        text_to_images: dict[tuple[str, str], list[Any]] = {}
        for (image_vec, text_vec), example in zip(predictions, examples):
            image_id = example.meta["image_id"]
            if image_id is None:
                raise TaskError("retrieval: scoring needs an 'image_id' (or 'id') on every sample")
            lang = example.meta["lang"]
            raw = example.meta["text"]
            key = (lang, clean_text(raw) if lang == "en" else raw.strip())
            image_rows.setdefault(image_id, torch.as_tensor(image_vec))
            text_rows.setdefault(key, torch.as_tensor(text_vec))
            positives = text_to_images.setdefault(key, [])
            if image_id not in positives:
                positives.append(image_id)
        text_ids, image_ids = list(text_rows), list(image_rows)
        return retrieval_metrics(
            torch.stack([text_rows[k] for k in text_ids]),
            torch.stack([image_rows[k] for k in image_ids]),
            text_to_images,
            text_ids,
            image_ids,
        )


__all__ = ["PairBatch", "RetrievalTask", "collate_pairs", "embed_examples"]
