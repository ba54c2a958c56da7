"""Image captioning.

Sample: ``{"image": PIL image | path | array, "captions": [str, ...], "lang": "en" | "zh", "id": any}``;
optionally ``"objects"`` (world scenes: (size, colour, shape) per object) for the object-F1 metric, and
``"object_boxes"`` (their pixel boxes): a training example then lists in ``meta["attend"]`` (target position,
boxes) for every size/colour/shape word of the target, the objects that word describes (`mention_word_objects`;
used by ``train.caption_attention_weight``).
Training picks one caption at random (``train_target="random"``) or always the first one (``"first"``: for world
scenes the canonical caption, objects from left to right); evaluation scores the generated caption against all.
"""

from __future__ import annotations

from typing import Any

from ofa.generation import Constraint, TokenRange

from .base import Example, Task, TaskError, clean_text, register_task


@register_task
class CaptionTask(Task):
    name = "caption"
    prompts = {"en": " what does the image describe?", "zh": "图片描述了什么？"}
    TRAIN_TARGETS = ("random", "first")

    def __init__(self, *args: Any, train_target: str = "random", **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        if train_target not in self.TRAIN_TARGETS:
            raise TaskError(
                f"caption: train_target must be one of {self.TRAIN_TARGETS}, got {train_target!r}"
            )
        self.train_target = train_target

    def build(self, sample: dict[str, Any], train: bool = False, rng: Any = None) -> Example:
        lang = self.language(sample)
        captions = [c for c in sample.get("captions", []) if isinstance(c, str) and c.strip()]
        if not captions:
            raise TaskError(f"caption: sample {sample.get('id', '?')} has no non-empty caption")
        image, size = self.load_image(sample)
        pick_random = train and rng is not None and self.train_target == "random"
        chosen = rng.choice(captions) if pick_random else captions[0]
        target_text = " " + clean_text(chosen) if lang == "en" else chosen.strip()
        meta = {"id": sample.get("id"), "lang": lang, "references": captions, "image_size": size}
        if "objects" in sample:
            meta["objects"] = sample["objects"]
            if sample.get("object_boxes") is not None:  # train.key_attribute_weight
                meta["object_boxes"] = [[float(v) for v in box] for box in sample["object_boxes"]]
        target = self.encode_text_target(target_text)
        if train and "objects" in sample and sample.get("object_boxes") is not None:
            meta["attend"] = self.attend_targets(target, sample["objects"], sample["object_boxes"], lang)
        return Example(self.name, self.encode_source(self.prompts[lang]), target, image, meta=meta)

    def attend_targets(
        self, target: list[int], objects: list[Any], boxes: list[Any], lang: str
    ) -> list[tuple[int, list[list[float]]]]:
        """(target position, boxes of the objects the token there describes) for the attribute words of a world
        caption; none for tokenizers that split the world's words into pieces."""
        from ofa.data.world import mention_word_objects

        words = [self.tokenizer.decode([i]) for i in target]
        matches = mention_word_objects(words, [tuple(o) for o in objects], lang)
        return [(p, [list(map(float, boxes[k])) for k in m]) for p, m in enumerate(matches) if m]

    def default_search(self) -> dict[str, Any]:
        # Official caption evaluation: beam 5, max 16 tokens, no 3-gram repeats (evaluate_caption.sh).
        return {"strategy": "beam", "beam_size": 5, "max_len_b": 16, "no_repeat_ngram_size": 3}

    def constraint(self, example: Example) -> Constraint | None:
        """Only text tokens (no <mask>, codes or bins), and eos."""
        tok = self.tokenizer
        text_end = (
            tok.mask_id
            if tok.mask_id is not None and tok.mask_id == tok.text_range[1] - 1
            else tok.text_range[1]
        )
        return TokenRange.union([(4, text_end), (tok.eos_id, tok.eos_id + 1)])

    def parse(self, tokens: list[int], example: Example) -> str:
        return self.tokenizer.decode(tokens, skip_special_tokens=True)

    def score(self, predictions: list[str], examples: list[Example]) -> dict[str, float]:
        from ofa.evaluation.metrics import caption_metrics, object_f1

        langs = {e.meta["lang"] for e in examples}
        if len(langs) != 1:
            raise TaskError(f"caption: score one language at a time, got {sorted(langs)}")
        lang = langs.pop()
        keys = list(range(len(examples)))
        results = caption_metrics(
            {k: p for k, p in zip(keys, predictions)},
            {k: e.meta["references"] for k, e in zip(keys, examples)},
            lang=lang,
        )
        if all("objects" in e.meta for e in examples):
            from ofa.data.world import parse_mentions

            mentions = [parse_mentions(p, lang) for p in predictions]
            results.update(object_f1(mentions, [[tuple(o) for o in e.meta["objects"]] for e in examples]))
        return results
