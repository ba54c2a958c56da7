"""Image-text matching: does the text describe the image? Answered " yes" / " no" by the decoder.

Sample: ``{"image": ..., "text": str, "match": bool, "lang": "en" | "zh", "id": any}`` (``match`` is needed
for training and scoring). Prompt: official OFA ``' does the image describe " {} "?'`` (English text cleaned
as captions are); Chinese ``"图片描述的是“{}”吗？"``. Target: ``" yes"`` / ``" no"`` (official), ``"是"`` /
``"否"``, then eos. Decoding is restricted to the two answers (a closed answer set). Metric: accuracy.

`match_probabilities` scores both answers by teacher forcing and returns ``p(yes) / (p(yes) + p(no))``
per example, the matching probability retrieval reranks with (`ofa.api.OFA.retrieve`).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor

from ofa.generation import Constraint, PrefixTrie

from .base import Example, Task, TaskError, clean_text, collate, register_task


@register_task
class ItmTask(Task):
    name = "itm"
    prompts = {"en": ' does the image describe " {} "?', "zh": "图片描述的是“{}”吗？"}
    answers = {"en": (" yes", " no"), "zh": ("是", "否")}  # (match, no match)

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        # One trie object per language, so rows of one language share the constraint in a batch.
        self._tries = {
            lang: PrefixTrie(self.answer_ids(lang), self.tokenizer.eos_id) for lang in self.prompts
        }

    def prompt(self, text: str, lang: str) -> str:
        statement = clean_text(text) if lang == "en" else text.strip()
        if not statement:
            raise TaskError("itm: the text is empty")
        return self.prompts[lang].format(statement)

    def answer_ids(self, lang: str) -> tuple[list[int], list[int]]:
        """Token ids (no bos, no eos) of the yes and the no answer in `lang`."""
        yes, no = (self.tokenizer.encode(a)[1:-1] for a in self.answers[lang])
        return yes, no

    def build(self, sample: dict[str, Any], train: bool = False, rng: Any = None) -> Example:
        lang = self.language(sample)
        text = sample.get("text")
        if not isinstance(text, str) or not text.strip():
            raise TaskError(f"itm: sample {sample.get('id', '?')} has no text")
        match = sample.get("match")
        if match is not None and not isinstance(match, bool):
            raise TaskError(
                f"itm: sample {sample.get('id', '?')}: 'match' must be true or false, got {match!r}"
            )
        if match is None and train:
            raise TaskError(f"itm: training sample {sample.get('id', '?')} has no 'match'")
        image, size = self.load_image(sample)
        meta = {"id": sample.get("id"), "lang": lang, "text": text, "image_size": size}
        target = [self.tokenizer.eos_id]
        if match is not None:
            meta["match"] = match
            yes, no = self.answer_ids(lang)
            target = [*(yes if match else no), self.tokenizer.eos_id]
        return Example(self.name, self.encode_source(self.prompt(text, lang)), target, image, meta=meta)

    def default_search(self) -> dict[str, Any]:
        longest = max(len(ids) for lang in self.prompts for ids in self.answer_ids(lang))
        return {"strategy": "greedy", "beam_size": 1, "max_len_b": longest + 1, "no_repeat_ngram_size": 0}

    def constraint(self, example: Example) -> Constraint | None:
        return self._tries[example.meta["lang"]]

    def parse(self, tokens: list[int], example: Example) -> bool | None:
        """True for the yes answer, False for no, None for anything else."""
        body = [t for t in tokens if t != self.tokenizer.eos_id]
        yes, no = self.answer_ids(example.meta["lang"])
        return True if body == yes else False if body == no else None

    def score(self, predictions: list[bool | None], examples: list[Example]) -> dict[str, float]:
        missing = [e.meta.get("id") for e in examples if "match" not in e.meta]
        if missing:
            raise TaskError(f"itm: cannot score samples without 'match': {missing[:5]}")
        if not examples:
            raise TaskError("itm: nothing to score")
        truth = [e.meta["match"] for e in examples]
        correct = sum(p is t for p, t in zip(predictions, truth))
        positives = sum(truth)
        hits = sum(p is True and t for p, t in zip(predictions, truth))
        rejections = sum(p is False and not t for p, t in zip(predictions, truth))
        return {
            "accuracy": 100.0 * correct / len(examples),
            "yes_recall": 100.0 * hits / positives if positives else float("nan"),
            "no_recall": 100.0 * rejections / (len(examples) - positives)
            if positives < len(examples)
            else float("nan"),
        }


@torch.no_grad()
def match_probabilities(
    model: Any, task: ItmTask, examples: Sequence[Example], batch_size: int = 16
) -> Tensor:
    """``p(yes) / (p(yes) + p(no))`` per example (float32, CPU), each answer scored with its eos by teacher
    forcing: one encoder pass per chunk, then one decoder pass per answer."""
    tok = task.tokenizer
    out = []
    for start in range(0, len(examples), batch_size):
        chunk = list(examples[start : start + batch_size])
        answers = [
            collate(
                [
                    Example(e.task, e.source, [*task.answer_ids(e.meta["lang"])[k], tok.eos_id], e.image)
                    for e in chunk
                ],
                tok.pad_id,
                tok.bos_id,
            ).to(model.device)
            for k in (0, 1)
        ]
        first = answers[0]
        images = first.patch_images.to(model.dtype) if first.patch_images is not None else None
        encoder_out = model.encode(first.input_ids, images, first.patch_masks)
        scores = []
        for batch in answers:
            log_probs = model.decode(batch.decoder_input_ids, encoder_out).logits.float().log_softmax(-1)
            picked = log_probs.gather(-1, batch.target_ids.unsqueeze(-1)).squeeze(-1)
            scores.append(picked.masked_fill(batch.target_ids.eq(tok.pad_id), 0.0).sum(-1))
        out.append(torch.sigmoid(scores[0] - scores[1]).cpu())
    return torch.cat(out) if out else torch.zeros(0)


__all__ = ["ItmTask", "match_probabilities"]
