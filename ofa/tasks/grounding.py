"""Visual grounding: the box a referring expression describes.

Sample: ``{"image": ..., "text": "the red star", "box": [x0, y0, x1, y1] (pixels), "lang": "en" | "zh", "id": any}``.
Target = the box as 4 location tokens ``<bin_x0> <bin_y0> <bin_x1> <bin_y1>`` after the official square resize
(``box / image_size * (num_bins - 1)``, rounded), then eos. Decoding allows only bins for exactly 4 steps.
"""

from __future__ import annotations

from typing import Any

import torch

from ofa.generation import Constraint, TokenRange

from .base import Example, Task, TaskError, clean_text, register_task


@register_task
class GroundingTask(Task):
    name = "grounding"
    prompts = {"en": ' which region does the text " {} " describe?', "zh": "文字“{}”描述的是哪个区域？"}

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._filler_sources: dict[str, list[list[int]]] = {}

    def prompt(self, text: str, lang: str) -> str:
        expression = clean_text(text) if lang == "en" else text.strip()
        if not expression:
            raise TaskError("grounding: the referring expression is empty")
        return self.prompts[lang].format(expression)

    def build(self, sample: dict[str, Any], train: bool = False, rng: Any = None) -> Example:
        lang = self.language(sample)
        text = sample.get("text")
        if not isinstance(text, str) or not text.strip():
            raise TaskError(f"grounding: sample {sample.get('id', '?')} has an empty expression")
        image, (w, h) = self.load_image(sample)
        meta = {"id": sample.get("id"), "lang": lang, "image_size": (w, h), "text": text}
        target = [self.tokenizer.eos_id]
        if sample.get("box") is not None:
            try:
                ids = self.tokenizer.box_to_ids(list(sample["box"]), w, h, max_image_size=self.image_size)
            except ValueError as err:
                raise TaskError(f"grounding: sample {sample.get('id', '?')}: {err}") from None
            target = [int(i) for i in ids] + target
            meta["box"] = [float(v) for v in sample["box"]]
            # object attention (train.referent_attention_weight): the referent, at each box token
            meta["attend"] = [(step, [meta["box"]]) for step in range(len(ids))]
            if sample.get("named") is not None:  # train.query_attribute_weight: what the expression names
                meta["named"] = list(sample["named"])
                meta["kind"] = sample.get("kind")
        elif train:
            raise TaskError(f"grounding: training sample {sample.get('id', '?')} has no box")
        source = self.encode_source(self.prompt(text, lang))
        # expression attention (train.expression_attention_weight): the source tokens of the expression, found as
        # the tokens that differ from the prompt around a one-character filler (two fillers: the expression may
        # start or end like one of them)
        if lang not in self._filler_sources:  # the same two prompts for every sample of a language
            self._filler_sources[lang] = [self.encode_source(self.prompts[lang].format(f)) for f in "01"]
        spans = [self._expression_span(source, filler) for filler in self._filler_sources[lang]]
        meta["expression"] = (min(a for a, _ in spans), max(b for _, b in spans))
        return Example(self.name, source, target, image, meta=meta)

    @staticmethod
    def _expression_span(source: list[int], filler: list[int]) -> tuple[int, int]:
        """[start, end) of the source tokens that are not the prompt's: its common prefix and suffix with the
        prompt built around a filler expression are cut off."""
        limit = min(len(source), len(filler))
        start = 0
        while start < limit and source[start] == filler[start]:
            start += 1
        suffix = 0
        while suffix < limit - start and source[-1 - suffix] == filler[-1 - suffix]:
            suffix += 1
        return start, len(source) - suffix

    def default_search(self) -> dict[str, Any]:
        # Official refcoco evaluation: beam 5, exactly 4 tokens; here restricted to bins (see constraint).
        return {"strategy": "beam", "beam_size": 5, "max_len_b": 4, "min_len": 4, "no_repeat_ngram_size": 3}

    def constraint(self, example: Example) -> Constraint | None:
        lo, hi = self.tokenizer.bin_range
        return TokenRange(lo, hi, exact_length=4)

    def parse(self, tokens: list[int], example: Example) -> list[float]:
        """4 bins -> pixel box in the original image (NaNs when the output is not 4 bins)."""
        bins = [t for t in tokens if t != self.tokenizer.eos_id][:4]
        if len(bins) != 4 or not all(bool(self.tokenizer.is_bin_id(t)) for t in bins):
            return [float("nan")] * 4
        w, h = example.meta["image_size"]
        box = self.tokenizer.ids_to_box(torch.tensor(bins), w, h, max_image_size=self.image_size)
        return [float(v) for v in box]

    def score(self, predictions: list[list[float]], examples: list[Example]) -> dict[str, float]:
        from ofa.evaluation.metrics import grounding_metrics

        missing = [e.meta.get("id") for e in examples if "box" not in e.meta]
        if missing:
            raise TaskError(f"grounding: cannot score samples without a reference box: {missing[:5]}")
        return grounding_metrics(torch.tensor(predictions), torch.tensor([e.meta["box"] for e in examples]))
