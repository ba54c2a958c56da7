"""Text-to-image for :class:`ofa.api.OFA`: guided sampling of code grids, decoding, and reranking.

Per prompt, ``n`` code grids are sampled in one batch (with classifier-free guidance the prompts' empty-caption
twins ride along in the same batch, see :func:`ofa.generation.generate`), decoded into pictures by the image
tokenizer and, optionally, reranked best first by an image-text scorer:

* :class:`CaptionLikelihoodScorer` (the default, "self-reranking"): the same model reads each picture back
  with the caption task and scores how likely the prompt is as its caption (teacher forced);
* :class:`OpenCLIPScorer`: cosine similarity under an open_clip model the user supplies;
* any callable ``scorer(images, texts) -> scores`` (higher is better).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from PIL import Image
from torch import Tensor

from ofa.generation import GenerationConfig, TokenRange, generate
from ofa.models import OFAModel
from ofa.tasks import Task, collate
from ofa.tasks.text_to_image import TextToImageTask

from .results import ImageResult, geometric_mean_probability

ImageTextScorer = Callable[[Sequence[Image.Image], Sequence[str]], Sequence[float]]


class CaptionLikelihoodScorer:
    """The model's own image-text score: how likely the text is as the caption of the picture.

    Each (picture, text) pair is run teacher-forced through the caption task (its prompt, its image
    preprocessing, its text target) and scored by the geometric mean of the caption tokens' probabilities
    (eos included) under the caption task's vocabulary constraint, i.e. ``exp`` of the mean log-likelihood.
    ``language`` maps a text to ``en`` or ``zh``.
    """

    def __init__(
        self,
        model: OFAModel,
        caption_task: Task,
        language: Callable[[str], str],
        batch_size: int = 32,
    ) -> None:
        self.model = model
        self.task = caption_task
        self.language = language
        self.batch_size = batch_size

    @torch.no_grad()
    def __call__(self, images: Sequence[Image.Image], texts: Sequence[str]) -> list[float]:
        if len(images) != len(texts):
            raise ValueError(f"got {len(images)} images for {len(texts)} texts")
        scores: list[float] = []
        for start in range(0, len(images), self.batch_size):
            pairs = zip(images[start : start + self.batch_size], texts[start : start + self.batch_size])
            examples = [
                self.task.build({"image": image, "captions": [text], "lang": self.language(text)})
                for image, text in pairs
            ]
            scores.extend(self._mean_log_likelihood(examples).exp().tolist())
        return scores

    def _mean_log_likelihood(self, examples: list) -> Tensor:
        tok = self.task.tokenizer
        batch = collate(examples, tok.pad_id, tok.bos_id).to(self.model.device)
        logits = self.model(
            input_ids=batch.input_ids,
            patch_images=batch.patch_images.to(self.model.dtype),
            patch_masks=batch.patch_masks,
            decoder_input_ids=batch.decoder_input_ids,
            code_masks=batch.code_masks,
        ).float()
        constraint = self.task.constraint(examples[0])
        if isinstance(constraint, TokenRange):  # the caption task's softmax runs over text tokens only
            allowed = torch.zeros(logits.size(-1), dtype=torch.bool, device=logits.device)
            for lo, hi in constraint.ranges:
                allowed[lo:hi] = True
            logits = logits.masked_fill(~allowed, float("-inf"))
        token_lp = logits.log_softmax(-1).gather(-1, batch.target_ids.unsqueeze(-1)).squeeze(-1)
        real = batch.target_ids != tok.pad_id
        # where, not a product: pad targets lie outside the constraint and have log-prob -inf.
        return torch.where(real, token_lp, 0.0).sum(-1) / real.sum(-1)


class OpenCLIPScorer:
    """Cosine similarity of an open_clip model's image and text embeddings.

    ``model`` has ``encode_image`` / ``encode_text`` (any ``open_clip`` CLIP), ``preprocess`` turns a PIL
    image into a (3, H, W) tensor and ``tokenizer`` a list of texts into token ids, as returned by
    ``open_clip.create_model_and_transforms`` and ``open_clip.get_tokenizer``.
    """

    def __init__(self, model: Any, preprocess: Callable, tokenizer: Callable, batch_size: int = 32) -> None:
        self.model = model.eval()
        self.preprocess = preprocess
        self.tokenizer = tokenizer
        self.batch_size = batch_size

    @torch.no_grad()
    def __call__(self, images: Sequence[Image.Image], texts: Sequence[str]) -> list[float]:
        if len(images) != len(texts):
            raise ValueError(f"got {len(images)} images for {len(texts)} texts")
        device = next(self.model.parameters()).device
        scores: list[float] = []
        for start in range(0, len(images), self.batch_size):
            chunk = slice(start, start + self.batch_size)
            pixels = torch.stack([self.preprocess(image) for image in images[chunk]]).to(device)
            tokens = self.tokenizer(list(texts[chunk])).to(device)
            image_emb = F.normalize(self.model.encode_image(pixels).float(), dim=-1)
            text_emb = F.normalize(self.model.encode_text(tokens).float(), dim=-1)
            scores.extend((image_emb * text_emb).sum(-1).tolist())
        return scores


def rank_best_first(results: Sequence[ImageResult], scores: Sequence[float]) -> list[ImageResult]:
    """Set each result's score and sort best first; equal scores keep their order."""
    if len(results) != len(scores):
        raise ValueError(f"the scorer returned {len(scores)} scores for {len(results)} images")
    for result, score in zip(results, scores):
        result.score = float(score)
    return sorted(results, key=lambda r: -r.score)


@torch.no_grad()
def generate_images(
    model: OFAModel,
    task: TextToImageTask,
    texts: Sequence[str],
    langs: Sequence[str],
    config: GenerationConfig,
    *,
    scorer: ImageTextScorer | None = None,
    batch_size: int = 8,
) -> list[list[ImageResult]]:
    """``config.num_returned`` pictures per text, best first (by ``scorer`` when given, else as sampled).

    ``batch_size`` texts are decoded per `generate` call, their samples (and guidance twins) in one batch.
    With ``config.guidance_scale > 0`` each text's twin is the task's empty-caption prompt in its language.
    """
    tok = task.tokenizer
    device = model.device
    per_text: list[list[ImageResult]] = []
    for start in range(0, len(texts), batch_size):
        chunk = list(zip(texts[start : start + batch_size], langs[start : start + batch_size]))
        examples = [task.build({"text": text, "lang": lang}) for text, lang in chunk]
        batch = collate(examples, tok.pad_id, tok.bos_id).to(device)
        unconditional = None
        if config.guidance_scale:
            twins = [task.unconditional_source(lang) for _, lang in chunk]
            width = max(len(t) for t in twins)
            unconditional = torch.tensor([t + [tok.pad_id] * (width - len(t)) for t in twins], device=device)
        hyps = generate(
            model,
            {"input_ids": batch.input_ids},
            config,
            constraints=[task.constraint(e) for e in examples],
            code_masks=batch.code_masks,
            unconditional_inputs=unconditional,
        )
        for (text, _), samples in zip(chunk, hyps):
            grids = [(task.parse_codes(h.tokens.tolist()), h) for h in samples]
            grids = [(codes, h) for codes, h in grids if codes is not None]
            if not grids:
                per_text.append([])
                continue
            pictures = task.codes_to_images(torch.stack([codes for codes, _ in grids]))
            per_text.append(
                [
                    ImageResult(picture, score, codes, text, score)
                    for picture, (codes, h) in zip(pictures, grids)
                    for score in [geometric_mean_probability(h.positional_scores[: codes.numel()].tolist())]
                ]
            )
    if scorer is None:
        return per_text
    flat = [r for results in per_text for r in results]
    scores = list(scorer([r.image for r in flat], [r.text for r in flat])) if flat else []
    if len(scores) != len(flat):
        raise ValueError(f"the scorer returned {len(scores)} scores for {len(flat)} images")
    ranked, offset = [], 0
    for results in per_text:
        ranked.append(rank_best_first(results, scores[offset : offset + len(results)]))
        offset += len(results)
    return ranked


__all__ = [
    "CaptionLikelihoodScorer",
    "ImageTextScorer",
    "OpenCLIPScorer",
    "generate_images",
    "rank_best_first",
]
