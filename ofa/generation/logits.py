"""From decoder logits to the per-step log-probs that every search scores with.

The order of operations is fairseq's (``SequenceGenerator._generate`` plus OFA's ``forward_decoder``) and
decides the numbers, so it is kept in one place:

1. divide by the temperature;
2. constraints: disallowed ids -> -inf (**before** the softmax, so log-probs renormalise over the rest);
3. ``log_softmax`` over all V ids (float32); this is the value that enters the score;
4. after the softmax, without renormalising: NaN -> -inf, pad -> -inf, unk -= unk_penalty, every id but eos
   -> -inf at ``step >= max_len``, eos -> -inf at ``step < min_len``, constraint post-softmax bans;
5. no-repeat-n-gram blocking over the prefix, bos included.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from .config import GenerationConfig

NEG_INF = float("-inf")


def no_repeat_ngram_mask(prefix: Tensor, n: int, vocab_size: int) -> Tensor:
    """Bool (rows, V): tokens y such that (last n-1 prefix tokens, y) already occurs in the prefix.

    This is fairseq's ``NGramRepeatBlock``: the prefix includes bos, which is an ordinary token here, and
    with ``n == 1`` every id in the prefix is banned. The n-grams are compared as tensors (one unfold),
    without a Python loop over rows or positions.
    """
    rows, length = prefix.shape
    banned = torch.zeros(rows, vocab_size + 1, dtype=torch.bool, device=prefix.device)
    num_windows = length - n + 1  # n-grams that lie completely inside the prefix
    if n <= 0 or num_windows <= 0:
        return banned[:, :vocab_size]
    followers = prefix[:, n - 1 :]  # last token of each n-gram, (rows, num_windows)
    if n == 1:
        match = torch.ones_like(followers, dtype=torch.bool)
    else:
        # (rows, num_windows, n-1): the first n-1 tokens of each n-gram
        heads = prefix[:, :-1].unfold(1, n - 1, 1)
        tail = prefix[:, length - n + 1 :].unsqueeze(1)  # the current last n-1 tokens
        match = (heads == tail).all(dim=2)
    # Non-matching windows scatter into a dummy column V, so duplicates never clear a True.
    target = torch.where(match, followers, torch.full_like(followers, vocab_size))
    banned.scatter_(1, target, True)
    return banned[:, :vocab_size]


def first_blocked_position(tokens: Sequence[int], n: int, bos_id: int) -> int | None:
    """Index of the first token of ``tokens`` that no-repeat-``n``-gram blocking would ban, or None.

    The decoder's prefix is ``[bos] + tokens[:i]`` at step ``i`` (as in :func:`no_repeat_ngram_mask`). A target
    with such a token cannot be written by a search with that ``no_repeat_ngram_size``: templated captions
    ("a small red circle, a small blue star, ...") repeat 3-grams by design.
    """
    if n <= 0:
        return None
    seq = [bos_id, *tokens]
    seen: set[tuple[int, ...]] = set()
    for end in range(n, len(seq) + 1):
        gram = tuple(seq[end - n : end])
        if gram in seen:
            return end - 2  # position in `tokens` of the n-gram's last token
        seen.add(gram)
    return None


def ban_ids_in_prefix(scores: Tensor, prefix: Tensor) -> Tensor:
    """Every id already in the prefix (bos included) -> -inf: ``no_repeat_ngram_size=1`` semantics."""
    return scores.masked_fill(no_repeat_ngram_mask(prefix, 1, scores.size(-1)), NEG_INF)


def step_log_probs(
    logits: Tensor,
    prefix: Tensor,
    step: int,
    max_len: int,
    config: GenerationConfig,
    allowed: Tensor | None = None,
    banned_after_softmax: Tensor | None = None,
) -> Tensor:
    """Log-probs (rows, V) for the next token after ``prefix`` with all of fairseq's rules applied.

    ``logits`` are the decoder's last-position logits (rows, V); ``allowed``/``banned_after_softmax`` come
    from :class:`ofa.generation.constraints.ConstraintSet`. Chosen tokens always carry their step-3 log-prob
    (minus the unk penalty), because the later rules only ever set values to -inf.
    """
    logits = logits.float()
    if config.temperature != 1.0:
        logits = logits / config.temperature
    if allowed is not None:
        logits = logits.masked_fill(~allowed, NEG_INF)
    lprobs = torch.log_softmax(logits, dim=-1)
    lprobs = lprobs.masked_fill(torch.isnan(lprobs), NEG_INF)
    lprobs[:, config.pad_token_id] = NEG_INF
    if config.unk_penalty:
        lprobs[:, config.unk_token_id] -= config.unk_penalty
    eos = config.eos_token_id
    if step >= max_len:
        eos_col = lprobs[:, eos].clone()
        lprobs.fill_(NEG_INF)
        lprobs[:, eos] = eos_col
    if step < config.min_len:
        lprobs[:, eos] = NEG_INF
    if banned_after_softmax is not None:
        lprobs = lprobs.masked_fill(banned_after_softmax, NEG_INF)
    if config.no_repeat_ngram_size > 0:
        lprobs = lprobs.masked_fill(
            no_repeat_ngram_mask(prefix, config.no_repeat_ngram_size, lprobs.size(-1)), NEG_INF
        )
    return lprobs


def top_k_top_p_filter(lprobs: Tensor, top_k: int = 0, top_p: float = 1.0) -> Tensor:
    """Keep the ``top_k`` best ids, then the smallest set whose probability reaches ``top_p``; rest -> -inf.

    Top-p is measured on the distribution renormalised after top-k (as in HF transformers). The token that
    crosses ``top_p`` is kept (fairseq's and HF's nucleus), so at least one token always survives. Values are
    not renormalised: sampling draws proportionally to ``exp`` of what is left.
    """
    if 0 < top_k < lprobs.size(-1):
        keep = torch.zeros_like(lprobs, dtype=torch.bool).scatter(
            -1, torch.topk(lprobs, top_k, dim=-1).indices, True
        )
        lprobs = lprobs.masked_fill(~keep, NEG_INF)
    if top_p < 1.0:
        sorted_lp, order = torch.sort(lprobs, dim=-1, descending=True)
        probs = torch.softmax(sorted_lp, dim=-1)
        mass_before = torch.cumsum(probs, dim=-1) - probs  # probability of the better-ranked tokens
        drop_sorted = mass_before >= top_p
        drop_sorted[..., 0] = False
        drop = torch.zeros_like(drop_sorted).scatter(-1, order, drop_sorted)
        lprobs = lprobs.masked_fill(drop, NEG_INF)
    return lprobs
