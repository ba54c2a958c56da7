"""Decode samples that want different search settings in one `generate` call.

`generate` takes one :class:`GenerationConfig` per batch. A mixed batch (captions, boxes and free text) shares
the settings that shape the search itself and keeps the ones that only mask tokens per sample:

* shared: the strategy (greedy rows join a beam search as beam 1 would; sampling cannot mix), the **largest**
  beam size, and the fields that must agree (length penalty, temperature, ...), else `MixedSearchError`;
* per sample, through :class:`SampleLimits`: ``min_len``, ``max_len`` (from the sample's own source length)
  and ``no_repeat_ngram_size``. These only ever send log-probs to -inf after the softmax, exactly as the
  global rules do, so a sample decodes the same tokens with the same scores as alone whenever its beam size
  equals the shared one (always, with greedy search).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import torch
from torch import Tensor

from ofa.generation import Constraint, GenerationConfig, StepInfo, no_repeat_ngram_mask

# Settings every sample of one mixed batch must share because they change scores, not just masks.
SHARED_FIELDS = (
    "len_penalty", "normalize_scores", "unk_penalty", "temperature", "top_k", "top_p", "num_return_sequences",
    "use_cache", "seed", "guidance_scale", "bos_token_id", "pad_token_id", "eos_token_id", "unk_token_id",
)  # fmt: skip


class MixedSearchError(ValueError):
    """Samples of one batch need search settings that cannot share one pass."""


class SampleLimits(Constraint):
    """A sample's own length limits and n-gram blocking around its task constraint (``inner``, may be None).

    ``allowed`` is the inner constraint's, evaluated as if the search ran with this sample's ``max_len``.
    After the softmax: every id but eos at ``step >= max_len``, eos at ``step < min_len`` and repeated
    n-grams are banned, which is what `step_log_probs` does with the same values in the config.
    """

    def __init__(
        self, inner: Constraint | None, min_len: int, max_len: int, no_repeat_ngram_size: int
    ) -> None:
        self.inner = inner
        self.min_len = int(min_len)
        self.max_len = int(max_len)
        self.no_repeat_ngram_size = int(no_repeat_ngram_size)

    def _key(self) -> tuple:
        return (self.inner, self.min_len, self.max_len, self.no_repeat_ngram_size)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, SampleLimits) and self._key() == other._key()

    def __hash__(self) -> int:
        return hash(self._key())

    def __repr__(self) -> str:
        return (
            f"SampleLimits({self.inner!r}, min_len={self.min_len}, max_len={self.max_len}, "
            f"no_repeat_ngram_size={self.no_repeat_ngram_size})"
        )

    def _own(self, info: StepInfo) -> StepInfo:
        return dataclasses.replace(info, max_len=self.max_len)

    def allowed(self, prefix: Tensor, info: StepInfo) -> Tensor:
        if self.inner is None:
            return torch.ones(info.vocab_size, dtype=torch.bool, device=info.device)
        return self.inner.allowed(prefix, self._own(info))

    def banned_after_softmax(self, prefix: Tensor, info: StepInfo) -> Tensor | None:
        rows = prefix.size(0)
        banned = torch.zeros(rows, info.vocab_size, dtype=torch.bool, device=info.device)
        if self.inner is not None:
            inner = self.inner.banned_after_softmax(prefix, self._own(info))
            if inner is not None:
                banned |= inner.expand(rows, -1)
        if info.step >= self.max_len:
            banned[:] = True
            banned[:, info.eos_token_id] = False
        if info.step < self.min_len:
            banned[:, info.eos_token_id] = True
        if self.no_repeat_ngram_size > 0:
            banned |= no_repeat_ngram_mask(prefix, self.no_repeat_ngram_size, info.vocab_size).to(
                banned.device
            )
        return banned


def merge_search(
    configs: Sequence[GenerationConfig],
    constraints: Sequence[Constraint | None],
    source_lengths: Sequence[int],
) -> tuple[GenerationConfig, list[Constraint | None]]:
    """One config for a batch plus per-sample constraints that keep each sample's own limits.

    When every sample has the same config it is returned unchanged with the constraints as given. Otherwise
    see the module docstring. ``source_lengths`` are the unpadded source lengths (for ``max_len_a``).
    """
    if len(configs) != len(constraints) or len(configs) != len(source_lengths):
        raise ValueError("merge_search needs one config, constraint and source length per sample")
    first = configs[0]
    if all(c == first for c in configs):
        return first, list(constraints)
    for name in SHARED_FIELDS:
        values = {repr(getattr(c, name)) for c in configs}
        if len(values) > 1:
            raise MixedSearchError(
                f"cannot decode these samples in one batch: they need different {name} ({', '.join(sorted(values))})"
            )
    strategies = {c.strategy for c in configs}
    if "sample" in strategies and len(strategies) > 1:
        raise MixedSearchError("cannot decode sampled and searched samples in one batch; use one strategy")
    max_lens = [c.max_length(n) for c, n in zip(configs, source_lengths)]
    if strategies == {"greedy"} or strategies == {"sample"}:
        strategy, beam_size = strategies.pop(), first.beam_size
    else:  # greedy is beam search with one beam
        strategy = "beam"
        beam_size = max(c.beam_size if c.strategy == "beam" else 1 for c in configs)
    merged = first.replace(
        strategy=strategy,
        beam_size=beam_size,
        max_len_a=0.0,
        max_len_b=max(max_lens),
        min_len=0,
        no_repeat_ngram_size=0,
        generator=first.generator,
    )
    wrapped: list[Constraint | None] = [
        SampleLimits(inner, c.min_len, cap, c.no_repeat_ngram_size)
        for inner, c, cap in zip(constraints, configs, max_lens)
    ]
    return merged, wrapped


__all__ = ["SHARED_FIELDS", "MixedSearchError", "SampleLimits", "merge_search"]
