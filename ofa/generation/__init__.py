"""Sequence generation for OFA: fairseq-exact beam search, greedy search and sampling with a KV cache.

Typical use::

    from ofa.generation import GenerationConfig, TokenRange, generate

    cfg = GenerationConfig(beam_size=5, max_len_b=16, no_repeat_ngram_size=3)   # OFA caption settings
    hyps = generate(model, {"input_ids": ids, "patch_images": images}, cfg)
    best_tokens = [h[0].tokens for h in hyps]

Grounding with strict bins: ``constraints=[TokenRange(bin_start, bin_end, exact_length=4)] * B``.
"""

from .config import GenerationConfig
from .constraints import Constraint, ConstraintSet, PrefixTrie, StepInfo, TokenRange
from .logits import (
    ban_ids_in_prefix,
    first_blocked_position,
    no_repeat_ngram_mask,
    step_log_probs,
    top_k_top_p_filter,
)
from .search import (
    Hypothesis,
    Seq2SeqModel,
    beam_search,
    fixed_length_greedy,
    generate,
    greedy_search,
    sample,
)

__all__ = [
    "Constraint",
    "ConstraintSet",
    "GenerationConfig",
    "Hypothesis",
    "PrefixTrie",
    "Seq2SeqModel",
    "StepInfo",
    "TokenRange",
    "ban_ids_in_prefix",
    "beam_search",
    "first_blocked_position",
    "fixed_length_greedy",
    "generate",
    "greedy_search",
    "no_repeat_ngram_mask",
    "sample",
    "step_log_probs",
    "top_k_top_p_filter",
]
