"""Retrieval with a checkpoint that has a retrieval head: embeddings and ranked search in both directions.

What :meth:`ofa.api.OFA.embed_images`, :meth:`~ofa.api.OFA.embed_texts` and :meth:`~ofa.api.OFA.retrieve` run.
Embeddings come from the model's own encoder (`ofa.models.retrieval`): an image is encoded with the image
instruction of a language (the caption prompt), a text alone. A text query is compared with images encoded
under the text's language, so English and Chinese queries can share one gallery.

``retrieve`` ranks the gallery by cosine similarity and keeps the top ``k``; with ``rerank=True`` those ``k``
are ordered again by the image-text-matching probability ``p(yes) / (p(yes) + p(no))`` of the ITM prompt
(`ofa.tasks.itm`), ties broken by similarity.

Reranking is off by default because it must earn its place per checkpoint: with the shipped world checkpoint it
lowers text->image R@1 on 1,000 heldout scenes from 97.3 to 54.4 (Chinese) and from 97.1 to 39.1 (English), as
`python bench/retrieval_rerank.py checkpoints/ofa-world-tiny --gallery-size 1000 --k 5` measured (2026-12-05):
its image-text matching is weak (heldout ITM accuracy 59.6 % English, 71.0 % Chinese; chance is 50 %), while the
embedding alone already ranks well.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor

from ofa.models import NoRetrievalHeadError
from ofa.tasks import Example, get_task
from ofa.tasks.itm import ItmTask, match_probabilities
from ofa.tasks.retrieval import RetrievalTask

from .inference import InputError, _as_list, _chunks, _require_image, _require_text, detect_language

if TYPE_CHECKING:
    from .inference import OFA


@dataclass
class RetrievalHit:
    """One gallery item found for a query.

    ``index``: its position in the gallery. ``similarity``: cosine similarity of the two embeddings, in
    [-1, 1]. ``match_probability``: the ITM probability in [0, 1] that the text describes the image (only
    when reranked, else None).
    """

    index: int
    similarity: float
    match_probability: float | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _tasks(ofa: OFA) -> tuple[RetrievalTask, ItmTask]:
    if ofa.model.retrieval is None:
        raise NoRetrievalHeadError(
            "this checkpoint has no retrieval head (its config has retrieval_dim=None); "
            "embeddings and retrieval need a model trained with one"
        )
    caption = ofa.tasks["caption"]
    options = {"image_size": ofa.image_size, "max_source_length": caption.max_source_length}
    return get_task("retrieval")(ofa.tokenizer, **options), get_task("itm")(ofa.tokenizer, **options)


def _check_lang(lang: str | None) -> None:
    if lang is not None and lang not in RetrievalTask.prompts:
        raise InputError(f"lang must be one of {sorted(RetrievalTask.prompts)} or None, got {lang!r}")


def _languages(texts: list[str], lang: str | None) -> list[str]:
    _check_lang(lang)
    return [lang or detect_language(text) for text in texts]


def _load_images(task: RetrievalTask, images: list[Any]) -> list[Tensor]:
    return [task.load_image({"image": _require_image(image, "retrieval")})[0] for image in images]


def _image_embeddings(
    ofa: OFA, task: RetrievalTask, images: list[Tensor], lang: str, batch_size: int
) -> Tensor:
    prompt = torch.tensor([task.image_prompt_ids(lang)], device=ofa.device)
    out = []
    with torch.inference_mode():
        for _, chunk in _chunks(images, batch_size):
            pixels = torch.stack(chunk).to(device=ofa.device, dtype=ofa.model.dtype)
            out.append(ofa.model.embed_images(pixels, prompt.expand(len(chunk), -1)).float().cpu())
    return torch.cat(out)


def _text_embeddings(
    ofa: OFA, task: RetrievalTask, texts: list[str], langs: list[str], batch_size: int
) -> Tensor:
    pad = ofa.tokenizer.pad_id
    out = []
    with torch.inference_mode():
        for start, chunk in _chunks(texts, batch_size):
            rows = [task.text_ids(text, lang) for text, lang in zip(chunk, langs[start : start + len(chunk)])]
            ids = torch.full((len(rows), max(map(len, rows))), pad, dtype=torch.long)
            for i, row in enumerate(rows):
                ids[i, : len(row)] = torch.tensor(row)
            out.append(ofa.model.embed_texts(ids.to(ofa.device)).float().cpu())
    return torch.cat(out)


def _check_batch_size(batch_size: Any) -> None:
    if not isinstance(batch_size, int) or isinstance(batch_size, bool) or batch_size < 1:
        raise InputError(f"batch_size must be a positive integer, got {batch_size!r}")


def embed_images(ofa: OFA, images: Any, lang: str = "en", batch_size: int = 16) -> Tensor:
    """(N, retrieval_dim) L2-normalised float32 CPU embeddings; one image gives a (retrieval_dim,) vector."""
    task, _ = _tasks(ofa)
    _check_batch_size(batch_size)
    _check_lang(lang)
    lang = lang or "en"
    items, many = _as_list(images)
    if not items:
        return torch.zeros(0, ofa.model.config.retrieval_dim)
    embeddings = _image_embeddings(ofa, task, _load_images(task, items), lang, batch_size)
    return embeddings if many else embeddings[0]


def embed_texts(ofa: OFA, texts: Any, lang: str | None = None, batch_size: int = 16) -> Tensor:
    """(N, retrieval_dim) L2-normalised float32 CPU embeddings; one text gives a (retrieval_dim,) vector.

    ``lang`` None: per text, ``zh`` when it holds Chinese characters, else ``en``.
    """
    task, _ = _tasks(ofa)
    _check_batch_size(batch_size)
    items, many = _as_list(texts)
    items = [_require_text(text, "text") for text in items]
    if not items:
        return torch.zeros(0, ofa.model.config.retrieval_dim)
    embeddings = _text_embeddings(ofa, task, items, _languages(items, lang), batch_size)
    return embeddings if many else embeddings[0]


def _kind(values: list[Any], what: str) -> bool:
    """True for a list of texts, False for a list of images; mixed lists are refused."""
    texts = [isinstance(v, str) for v in values]
    if any(texts) and not all(texts):
        raise InputError(f"the {what} mix texts and images; give one kind")
    return all(texts)


def retrieve(
    ofa: OFA,
    queries: Any,
    gallery: Sequence[Any],
    k: int = 5,
    rerank: bool = False,
    lang: str | None = None,
    batch_size: int = 16,
) -> list[RetrievalHit] | list[list[RetrievalHit]]:
    """The best ``k`` gallery items per query, best first (see the module docstring).

    The queries decide the direction: strings are texts and search a gallery of images (paths allowed
    there); anything else is an image (PIL, array, tensor, `pathlib.Path`) and searches a gallery of texts.
    One query gives one list of hits, a list of queries a list of lists. ``lang``: the language of every
    text (queries or gallery); None detects it per text.
    """
    task, itm = _tasks(ofa)
    _check_batch_size(batch_size)
    if not isinstance(k, int) or isinstance(k, bool) or k < 1:
        raise InputError(f"k must be a positive integer, got {k!r}")
    query_list, many = _as_list(queries)
    gallery_list, _ = _as_list(gallery)
    if not gallery_list:
        raise InputError("the gallery is empty")
    if not query_list:
        return []
    text_queries = _kind(query_list, "queries")
    if text_queries:
        words = [g for g in gallery_list if isinstance(g, str) and not Path(g).expanduser().is_file()]
        if words:
            raise InputError(
                f"text queries search a gallery of images; gallery item {words[0]!r} is neither an image nor "
                "an image file"
            )
    elif not _kind(gallery_list, "gallery"):
        raise InputError("image queries search a gallery of texts; the gallery holds images")
    texts = [_require_text(t, "text") for t in (query_list if text_queries else gallery_list)]
    langs = _languages(texts, lang)
    images = _load_images(task, gallery_list if text_queries else query_list)
    text_emb = _text_embeddings(ofa, task, texts, langs, batch_size)
    image_emb = {
        language: _image_embeddings(ofa, task, images, language, batch_size)
        for language in dict.fromkeys(langs)
    }
    # similarity[t, i]: text t against image i, the image encoded under the text's language.
    similarity = torch.stack([image_emb[language] @ text_emb[t] for t, language in enumerate(langs)])
    if not text_queries:
        similarity = similarity.T  # rows: image queries, columns: gallery texts
    top = min(k, len(gallery_list))
    results = []
    for q in range(len(query_list)):
        order = torch.sort(similarity[q], descending=True, stable=True).indices[:top].tolist()
        results.append([RetrievalHit(int(g), float(similarity[q, g])) for g in order])
    if rerank:
        examples = []
        for q, hits in enumerate(results):
            for hit in hits:
                t, i = (q, hit.index) if text_queries else (hit.index, q)
                prompt = itm.encode_source(itm.prompt(texts[t], langs[t]))
                examples.append(
                    Example(itm.name, prompt, [ofa.tokenizer.eos_id], images[i], meta={"lang": langs[t]})
                )
        probabilities = iter(match_probabilities(ofa.model, itm, examples, batch_size).tolist())
        for hits in results:
            for hit in hits:
                hit.match_probability = float(next(probabilities))
            hits.sort(key=lambda h: (-h.match_probability, -h.similarity, h.index))
    return results if many else results[0]


__all__ = ["RetrievalHit", "embed_images", "embed_texts", "retrieve"]
