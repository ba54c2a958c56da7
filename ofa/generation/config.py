"""Search settings for :func:`ofa.generation.generate`.

The names and defaults follow fairseq's ``SequenceGenerator`` (which OFA's evaluation scripts use), so a
fairseq command line translates one to one: ``--beam 5 --max-len-b 16 --no-repeat-ngram-size 3`` becomes
``GenerationConfig(beam_size=5, max_len_b=16, no_repeat_ngram_size=3)``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace
from typing import Literal

import torch

Strategy = Literal["greedy", "beam", "sample"]
STRATEGIES: tuple[str, ...] = ("greedy", "beam", "sample")


@dataclass
class GenerationConfig:
    """How to search.

    Lengths count generated tokens, not bos: the decoder starts from ``[bos]`` and step ``s`` chooses the
    ``s+1``-th generated token. ``max_len = int(max_len_a * src_len + max_len_b)``, where ``src_len`` is
    ``input_ids.size(1)`` (image patches do not count). At step ``max_len`` only eos can be chosen, so a
    hypothesis holds at most ``max_len`` tokens plus eos. Eos is banned while ``step < min_len``.
    """

    strategy: Strategy = "beam"
    beam_size: int = 5
    max_len_a: float = 0.0
    max_len_b: int = 200
    min_len: int = 1
    no_repeat_ngram_size: int = 0
    len_penalty: float = 1.0
    normalize_scores: bool = True
    unk_penalty: float = 0.0
    temperature: float = 1.0
    # Sampling only: 0 / 1.0 switch the filter off.
    top_k: int = 0
    top_p: float = 1.0
    # Hypotheses returned per input. None: beam -> beam_size, greedy/sample -> 1.
    # For sampling this is the number of independent samples drawn per prompt (all in one batch).
    num_return_sequences: int | None = None
    use_cache: bool = True
    # Classifier-free guidance (greedy and sampling): logits = cond + guidance_scale * (cond - uncond), where
    # uncond comes from the unconditional inputs given to `generate`. 0 = unguided (the unconditional pass is
    # skipped); s here equals s + 1 in the "uncond + w * (cond - uncond)" convention.
    guidance_scale: float = 0.0
    # Sampling only: a seed makes a fresh torch.Generator on the model's device; a generator is used as is.
    seed: int | None = None
    generator: torch.Generator | None = field(default=None, repr=False, compare=False)
    bos_token_id: int = 0
    pad_token_id: int = 1
    eos_token_id: int = 2
    unk_token_id: int = 3

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        """Raise ValueError on settings that cannot work, naming the field."""
        if self.strategy not in STRATEGIES:
            raise ValueError(f"strategy must be one of {STRATEGIES}, got {self.strategy!r}")
        if self.beam_size < 1:
            raise ValueError(f"beam_size must be >= 1, got {self.beam_size}")
        if self.max_len_a < 0 or self.max_len_b < 0:
            raise ValueError(f"max_len_a and max_len_b must be >= 0, got {self.max_len_a}, {self.max_len_b}")
        if self.min_len < 0:
            raise ValueError(f"min_len must be >= 0, got {self.min_len}")
        if self.no_repeat_ngram_size < 0:
            raise ValueError(f"no_repeat_ngram_size must be >= 0, got {self.no_repeat_ngram_size}")
        if not self.temperature > 0:
            raise ValueError(f"temperature must be > 0, got {self.temperature}")
        if self.top_k < 0:
            raise ValueError(f"top_k must be >= 0 (0 = off), got {self.top_k}")
        if not 0.0 < self.top_p <= 1.0:
            raise ValueError(f"top_p must be in (0, 1] (1 = off), got {self.top_p}")
        if self.num_return_sequences is not None:
            if self.num_return_sequences < 1:
                raise ValueError(f"num_return_sequences must be >= 1, got {self.num_return_sequences}")
            if self.strategy == "beam" and self.num_return_sequences > self.beam_size:
                raise ValueError(
                    f"num_return_sequences ({self.num_return_sequences}) cannot exceed beam_size ({self.beam_size})"
                )
            if self.strategy == "greedy" and self.num_return_sequences != 1:
                raise ValueError(
                    "greedy search returns one sequence per input; use strategy='sample' or 'beam'"
                )
        ids = (self.bos_token_id, self.pad_token_id, self.eos_token_id, self.unk_token_id)
        if min(ids) < 0:
            raise ValueError(f"special token ids must be >= 0, got bos/pad/eos/unk = {ids}")
        if len({self.pad_token_id, self.eos_token_id}) != 2 or self.bos_token_id == self.pad_token_id:
            raise ValueError(f"pad must differ from bos and eos, got bos/pad/eos/unk = {ids}")
        if not math.isfinite(self.guidance_scale) or self.guidance_scale < 0:
            raise ValueError(
                f"guidance_scale must be a finite number >= 0 (0 = off), got {self.guidance_scale}"
            )
        if self.guidance_scale and self.strategy == "beam":
            raise ValueError(
                "classifier-free guidance (guidance_scale > 0) needs strategy 'sample' or 'greedy'"
            )
        if self.seed is not None and self.generator is not None:
            raise ValueError("give either seed or generator, not both")

    @property
    def special_ids(self) -> tuple[int, int, int, int]:
        return (self.bos_token_id, self.pad_token_id, self.eos_token_id, self.unk_token_id)

    @property
    def num_returned(self) -> int:
        """Hypotheses per input that the search returns."""
        if self.num_return_sequences is not None:
            return self.num_return_sequences
        return self.beam_size if self.strategy == "beam" else 1

    def max_length(self, src_len: int) -> int:
        """fairseq's ``max_len = int(max_len_a * src_len + max_len_b)``; also checks ``min_len <= max_len``."""
        max_len = int(self.max_len_a * src_len + self.max_len_b)
        if self.min_len > max_len:
            raise ValueError(
                f"min_len ({self.min_len}) is larger than max_len ({max_len} = {self.max_len_a} * {src_len} "
                f"+ {self.max_len_b}); no hypothesis could finish"
            )
        return max_len

    def replace(self, **changes: object) -> GenerationConfig:
        """A validated copy with some fields changed."""
        return replace(self, **changes)
