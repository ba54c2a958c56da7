"""Batched greedy search, beam search and sampling over OFA's encode/decode protocol.

The model only needs two methods (see :class:`Seq2SeqModel`): ``encode`` once, then ``decode`` one step at a
time, either on the whole prefix (``use_cache=False``) or on the newest token with a KV cache that the search
reorders as beams move (``use_cache=True``). Both paths must give the same tokens.

Beam search reproduces fairseq's ``SequenceGenerator`` (which OFA evaluates with) step for step:
2*beam candidates per input, eos candidates among the first ``beam`` finish in rank order, an input stops
when ``beam`` hypotheses have finished or at ``max_len``, and finished inputs leave the batch.

Greedy search and sampling also do classifier-free guidance (``GenerationConfig.guidance_scale``): every row
decodes together with an unconditional twin in one batch sharing the KV cache, and the search scores
``cond + scale * (cond - uncond)`` logits.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable

import torch
import torch.nn.functional as F
from torch import Tensor

from .config import GenerationConfig
from .constraints import Constraint, ConstraintSet, StepInfo
from .logits import NEG_INF, ban_ids_in_prefix, step_log_probs, top_k_top_p_filter

__all__ = [
    "Hypothesis",
    "Seq2SeqModel",
    "beam_search",
    "fixed_length_greedy",
    "generate",
    "greedy_search",
    "sample",
]


@runtime_checkable
class EncoderOutputLike(Protocol):
    last_hidden_state: Tensor

    def index_select(self, index: Tensor) -> EncoderOutputLike: ...


class Seq2SeqModel(Protocol):
    """What the searches call. ``OFAModel`` implements it."""

    config: Any

    def encode(self, input_ids: Tensor | None, patch_images: Tensor | None = None) -> EncoderOutputLike: ...

    def decode(
        self,
        decoder_input_ids: Tensor,
        encoder_out: EncoderOutputLike,
        code_masks: Tensor | None = None,
        cache: Any | None = None,
        use_cache: bool = False,
    ) -> Any: ...


@dataclass
class Hypothesis:
    """One finished output.

    ``tokens`` are the generated ids without bos, ending with eos. ``positional_scores`` are the per-token
    log-probs (after the pre-softmax constraints, before any renormalisation), ``sum_logprob`` their sum and
    ``score`` = ``sum_logprob / len(tokens) ** len_penalty`` (just the sum when ``normalize_scores=False``).
    """

    tokens: Tensor
    score: float
    sum_logprob: float
    positional_scores: Tensor


class _StepDecoder:
    """Runs the decoder for the rows still being searched, with or without the KV cache."""

    def __init__(
        self, model: Seq2SeqModel, encoder_out: EncoderOutputLike, code_masks: Tensor | None, use_cache: bool
    ) -> None:
        self.model = model
        self.encoder_out = encoder_out
        self.code_masks = code_masks
        self.use_cache = use_cache
        self.cache: Any = None

    def next_logits(self, prefix: Tensor) -> Tensor:
        """Last-position logits (rows, V) for ``prefix`` (rows, step+1)."""
        if not self.use_cache:
            out = self.model.decode(prefix, self.encoder_out, code_masks=self.code_masks)
            return out.logits[:, -1, :]
        if self.cache is None:
            new_tokens = prefix
        else:
            cached = getattr(self.cache, "length", prefix.size(1) - 1)
            if cached != prefix.size(1) - 1:
                raise RuntimeError(f"decoder cache holds {cached} positions, expected {prefix.size(1) - 1}")
            new_tokens = prefix[:, -1:]
        out = self.model.decode(
            new_tokens, self.encoder_out, code_masks=self.code_masks, cache=self.cache, use_cache=True
        )
        if out.cache is None:
            raise RuntimeError("model.decode(use_cache=True) returned no cache")
        self.cache = out.cache
        return out.logits[:, -1, :]

    def select_rows(self, index: Tensor, same_inputs: bool) -> None:
        """Keep/reorder rows. ``same_inputs``: every row keeps its input, only beams of one input permute,
        so the per-input encoder output needs no copy."""
        if self.cache is not None:
            self.cache.reorder(index)
        if self.code_masks is not None:
            self.code_masks = self.code_masks.index_select(0, index)
        if not same_inputs:
            self.encoder_out = self.encoder_out.index_select(index)


class _GuidedStepDecoder:
    """Classifier-free guidance around a :class:`_StepDecoder` that holds 2R rows: the R search rows, then
    their unconditional twins in the same order. Both halves always decode the same prefix, so one decoder
    call (and one KV cache) serves both; the search sees R rows of ``cond + scale * (cond - uncond)``."""

    def __init__(self, inner: _StepDecoder, scale: float) -> None:
        self.inner = inner
        self.scale = scale
        self.rows = inner.encoder_out.last_hidden_state.size(0) // 2

    def next_logits(self, prefix: Tensor) -> Tensor:
        cond, uncond = self.inner.next_logits(torch.cat([prefix, prefix])).float().chunk(2)
        return cond + self.scale * (cond - uncond)

    def select_rows(self, index: Tensor, same_inputs: bool) -> None:
        self.inner.select_rows(torch.cat([index, index + self.rows]), same_inputs)
        self.rows = index.numel()


def _num_inputs(encoder_out: EncoderOutputLike, config: GenerationConfig) -> int:
    """Inputs being searched: the encoder's rows, or half of them under guidance (see :func:`_row_decoder`)."""
    rows = _batch_size(encoder_out)
    if not config.guidance_scale:
        return rows
    if rows % 2:
        raise ValueError(
            f"with guidance_scale > 0 the encoder output must hold the inputs followed by their unconditional "
            f"twins, got an odd number of rows ({rows})"
        )
    return rows // 2


def _row_decoder(
    model: Seq2SeqModel,
    encoder_out: EncoderOutputLike,
    code_masks: Tensor | None,
    config: GenerationConfig,
    row_sample: Tensor,
) -> _StepDecoder | _GuidedStepDecoder:
    """The step decoder of one-row-per-hypothesis searches; ``row_sample`` is the input of each row.

    Without guidance the encoder output holds one row per input. With guidance it holds the B inputs, then
    their B unconditional twins, and each search row is paired with its input's twin.
    """
    if not config.guidance_scale:
        if row_sample.numel() != _batch_size(encoder_out):
            encoder_out = encoder_out.index_select(row_sample)
            code_masks = None if code_masks is None else code_masks.index_select(0, row_sample)
        return _StepDecoder(model, encoder_out, code_masks, config.use_cache)
    twins = torch.cat([row_sample, row_sample + _num_inputs(encoder_out, config)])
    masks = None if code_masks is None else code_masks.index_select(0, row_sample).repeat(2)
    inner = _StepDecoder(model, encoder_out.index_select(twins), masks, config.use_cache)
    return _GuidedStepDecoder(inner, config.guidance_scale)


class _Rules:
    """Turns logits into scored log-probs for a set of rows (config rules plus per-sample constraints)."""

    def __init__(
        self,
        config: GenerationConfig,
        constraints: Sequence[Constraint | None] | None,
        batch_size: int,
        max_len: int,
    ) -> None:
        self.config = config
        self.constraints = ConstraintSet(constraints, batch_size)
        self.max_len = max_len

    def log_probs(self, logits: Tensor, prefix: Tensor, row_sample: Tensor, step: int) -> Tensor:
        allowed = banned = None
        if self.constraints:
            c = self.config
            info = StepInfo(
                step, self.max_len, logits.size(-1), c.bos_token_id, c.pad_token_id, c.eos_token_id,
                c.unk_token_id, logits.device,
            )  # fmt: skip
            allowed, banned = self.constraints.masks(prefix, row_sample, info)
        return step_log_probs(logits, prefix, step, self.max_len, self.config, allowed, banned)


def _finalize(tokens: Tensor, cum_scores: Tensor, step: int, config: GenerationConfig) -> list[Hypothesis]:
    """Hypotheses from rows whose token at ``step`` (``tokens[:, step+1]``) is eos.

    ``cum_scores`` (rows, step+1) are running sums, as fairseq keeps them; positional scores are their
    differences, so they agree with the generator to the last float32 bit.
    """
    generated = tokens[:, 1 : step + 2].clone()
    generated[:, step] = config.eos_token_id
    positional = cum_scores.clone()
    positional[:, 1:] = cum_scores[:, 1:] - cum_scores[:, :-1]
    total = cum_scores[:, step]
    score = total / (step + 1) ** config.len_penalty if config.normalize_scores else total
    return [
        Hypothesis(tokens=generated[i], score=s, sum_logprob=t, positional_scores=positional[i])
        for i, (s, t) in enumerate(zip(score.tolist(), total.tolist()))
    ]


def _batch_size(encoder_out: EncoderOutputLike) -> int:
    return encoder_out.last_hidden_state.size(0)


def _buffers(
    rows: int, max_len: int, config: GenerationConfig, device: torch.device
) -> tuple[Tensor, Tensor]:
    tokens = torch.full((rows, max_len + 2), config.pad_token_id, dtype=torch.long, device=device)
    tokens[:, 0] = config.bos_token_id
    scores = torch.zeros(rows, max_len + 1, dtype=torch.float32, device=device)
    return tokens, scores


@torch.no_grad()
def greedy_search(
    model: Seq2SeqModel,
    encoder_out: EncoderOutputLike,
    config: GenerationConfig,
    *,
    src_len: int,
    constraints: Sequence[Constraint | None] | None = None,
    code_masks: Tensor | None = None,
) -> list[list[Hypothesis]]:
    """Argmax at every step (lowest id on ties) under the same rules as beam search.

    Equal to fairseq's beam search with ``beam_size=1``. An input stops at eos or at ``max_len``; an input
    whose every token is banned stops with no hypothesis. With ``config.guidance_scale > 0`` the encoder
    output holds the B inputs followed by their B unconditional twins (``generate`` builds it) and
    ``code_masks`` has B entries.
    """
    batch = _num_inputs(encoder_out, config)
    max_len = config.max_length(src_len)
    rules = _Rules(config, constraints, batch, max_len)
    row_sample = torch.arange(batch, device=encoder_out.last_hidden_state.device)
    decoder = _row_decoder(model, encoder_out, code_masks, config, row_sample)
    tokens, scores = _buffers(batch, max_len, config, row_sample.device)
    results: list[list[Hypothesis]] = [[] for _ in range(batch)]

    for step in range(max_len + 1):
        prefix = tokens[:, : step + 1]
        lprobs = rules.log_probs(decoder.next_logits(prefix), prefix, row_sample, step)
        best, choice = lprobs.max(dim=-1)  # first maximum -> lowest id on ties
        tokens[:, step + 1] = choice
        scores[:, step] = best + scores[:, step - 1] if step > 0 else best
        state = _retire_rows(
            torch.isfinite(best), choice, tokens, scores, row_sample, step, max_len, config, results, decoder
        )
        if state is None:
            break
        tokens, scores, row_sample = state
    return results


def _retire_rows(
    alive: Tensor,
    choice: Tensor,
    tokens: Tensor,
    scores: Tensor,
    row_sample: Tensor,
    step: int,
    max_len: int,
    config: GenerationConfig,
    results: list[list[Hypothesis]],
    decoder: _StepDecoder | _GuidedStepDecoder,
) -> tuple[Tensor, Tensor, Tensor] | None:
    """One-row-per-hypothesis searches: finalize rows that chose eos (or reached max_len), drop dead rows.

    Returns the remaining (tokens, scores, row_sample), or None when no row is left.
    """
    done = ~alive | (choice == config.eos_token_id) if step < max_len else torch.ones_like(alive)
    finished = (done & alive).nonzero().squeeze(1)
    if finished.numel():
        hyps = _finalize(tokens[finished], scores[finished, : step + 1], step, config)
        for sample, hyp in zip(row_sample[finished].tolist(), hyps):
            results[sample].append(hyp)
    keep = (~done).nonzero().squeeze(1)
    if keep.numel() == 0:
        return None
    if keep.numel() < tokens.size(0):
        tokens, scores, row_sample = tokens[keep], scores[keep], row_sample[keep]
        decoder.select_rows(keep, same_inputs=False)
    return tokens, scores, row_sample


@torch.no_grad()
def beam_search(
    model: Seq2SeqModel,
    encoder_out: EncoderOutputLike,
    config: GenerationConfig,
    *,
    src_len: int,
    constraints: Sequence[Constraint | None] | None = None,
    code_masks: Tensor | None = None,
) -> list[list[Hypothesis]]:
    """fairseq's beam search, batched, returning up to ``beam_size`` hypotheses per input, best first.

    Per input and step: the 2*beam best (hypothesis, token) candidates by running sum; eos candidates with a
    finite score among the first ``beam`` finish in rank order while fewer than ``beam`` have finished;
    the first ``beam`` non-eos candidates live on. An input stops with ``beam`` finished hypotheses or at
    ``max_len`` and then leaves the batch (its cache rows are dropped). Rows that ran out of finite
    candidates carry -inf and never finish, as in fairseq.
    """
    beam = config.beam_size
    batch = _batch_size(encoder_out)
    device = encoder_out.last_hidden_state.device
    max_len = config.max_length(src_len)
    rules = _Rules(config, constraints, batch, max_len)
    eos = config.eos_token_id

    row_sample = torch.arange(batch, device=device).repeat_interleave(beam)
    decoder = _StepDecoder(
        model,
        encoder_out.index_select(row_sample),
        None if code_masks is None else code_masks.index_select(0, row_sample),
        config.use_cache,
    )
    tokens, scores = _buffers(batch * beam, max_len, config, device)
    active = torch.arange(batch, device=device)  # input index of each active input, in batch order
    cands_to_ignore = torch.zeros(batch, beam, dtype=torch.bool, device=device)
    results: list[list[Hypothesis]] = [[] for _ in range(batch)]
    num_cands = 2 * beam

    for step in range(max_len + 1):
        bsz = active.numel()
        prefix = tokens[:, : step + 1]
        lprobs = rules.log_probs(decoder.next_logits(prefix), prefix, row_sample, step)
        vocab = lprobs.size(-1)
        lprobs = lprobs.view(bsz, beam, vocab)
        if step == 0:  # all beams hold just bos: expand the first one only
            cand = lprobs[:, :1, :]
        else:
            cand = lprobs + scores[:, step - 1].view(bsz, beam, 1)
        cand = cand.reshape(bsz, -1)
        k = min(num_cands, cand.size(1) - 1)  # fairseq leaves out one candidate at most
        cand_scores, cand_idx = torch.topk(cand, k, dim=1)
        cand_beams = torch.div(cand_idx, vocab, rounding_mode="floor")
        cand_tokens = cand_idx.fmod(vocab)
        if k < num_cands:  # tiny vocabularies at step 0: pad with dead candidates so shapes stay fixed
            fill = num_cands - k
            cand_scores = torch.cat([cand_scores, cand_scores.new_full((bsz, fill), NEG_INF)], dim=1)
            cand_beams = torch.cat([cand_beams, cand_beams.new_zeros(bsz, fill)], dim=1)
            cand_tokens = torch.cat(
                [cand_tokens, cand_tokens.new_full((bsz, fill), config.pad_token_id)], dim=1
            )

        # Finish eos candidates among the first `beam`, in rank order.
        eos_mask = (cand_tokens == eos) & (cand_scores != NEG_INF)
        eos_mask[:, :beam] &= ~cands_to_ignore
        newly_done: list[int] = []
        eos_pos = eos_mask[:, :beam].nonzero()  # row-major: by input, then by rank
        if eos_pos.numel():
            b_idx, rank = eos_pos.unbind(1)
            rows = cand_beams[b_idx, rank] + b_idx * beam
            cum = scores[rows, : step + 1].clone()
            cum[:, step] = cand_scores[b_idx, rank]
            hyps = _finalize(tokens[rows], cum, step, config)
            active_list = active.tolist()
            for b, hyp in zip(b_idx.tolist(), hyps):
                sample_hyps = results[active_list[b]]
                if len(sample_hyps) < beam:
                    sample_hyps.append(hyp)
                    if len(sample_hyps) == beam:
                        newly_done.append(b)
        if step >= max_len or len(newly_done) == bsz:
            break

        # Drop finished inputs, then take the first `beam` candidates that are not (finishing) eos.
        keep = torch.ones(bsz, dtype=torch.bool)
        keep[newly_done] = False
        keep = keep.nonzero().squeeze(1).to(device)
        cand_scores, cand_beams, cand_tokens = cand_scores[keep], cand_beams[keep], cand_tokens[keep]
        eos_mask, cands_to_ignore = eos_mask[keep], cands_to_ignore[keep]
        eos_mask[:, :beam] |= cands_to_ignore
        rank_key = eos_mask.long() * num_cands + torch.arange(num_cands, device=device)
        key, chosen = torch.topk(rank_key, beam, dim=1, largest=False)
        cands_to_ignore = key >= num_cands
        src_rows = (torch.gather(cand_beams, 1, chosen) + (keep * beam).unsqueeze(1)).view(-1)
        tokens = tokens[src_rows]
        tokens[:, step + 1] = torch.gather(cand_tokens, 1, chosen).view(-1)
        scores = scores[src_rows]
        scores[:, step] = torch.gather(cand_scores, 1, chosen).view(-1)
        shrunk = keep.numel() < bsz
        if shrunk:
            active = active[keep]
            row_sample = row_sample.view(bsz, beam)[keep].view(-1)
        decoder.select_rows(src_rows, same_inputs=not shrunk)

    for hyps in results:
        hyps.sort(key=lambda h: h.score, reverse=True)
    return results


@torch.no_grad()
def sample(
    model: Seq2SeqModel,
    encoder_out: EncoderOutputLike,
    config: GenerationConfig,
    *,
    src_len: int,
    constraints: Sequence[Constraint | None] | None = None,
    code_masks: Tensor | None = None,
) -> list[list[Hypothesis]]:
    """``num_return_sequences`` independent samples per input, all in one batch.

    Each step draws from the rule-processed distribution after temperature, top-k and top-p. Scores are the
    drawn tokens' log-probs before the top-k/top-p cut (fairseq's ``Sampling``). A draw stops at eos or
    ``max_len``. Per input the samples are returned best score first. Guidance as in :func:`greedy_search`;
    the scores are then log-probs of the guided distribution, the one the tokens were drawn from.
    """
    per_input = config.num_returned
    batch = _num_inputs(encoder_out, config)
    device = encoder_out.last_hidden_state.device
    max_len = config.max_length(src_len)
    rules = _Rules(config, constraints, batch, max_len)
    generator = config.generator
    if generator is None and config.seed is not None:
        generator = torch.Generator(device=device).manual_seed(config.seed)

    row_sample = torch.arange(batch, device=device).repeat_interleave(per_input)
    decoder = _row_decoder(model, encoder_out, code_masks, config, row_sample)
    tokens, scores = _buffers(row_sample.numel(), max_len, config, device)
    results: list[list[Hypothesis]] = [[] for _ in range(batch)]

    for step in range(max_len + 1):
        prefix = tokens[:, : step + 1]
        lprobs = rules.log_probs(decoder.next_logits(prefix), prefix, row_sample, step)
        filtered = top_k_top_p_filter(lprobs, config.top_k, config.top_p)
        alive = torch.isfinite(filtered.max(dim=-1).values)
        probs = torch.softmax(filtered, dim=-1)
        probs[~alive] = 1.0  # dead rows draw anything; they are dropped below
        choice = torch.multinomial(probs, 1, generator=generator)
        logp = lprobs.gather(1, choice).squeeze(1)
        choice = choice.squeeze(1)
        tokens[:, step + 1] = choice
        scores[:, step] = logp + scores[:, step - 1] if step > 0 else logp
        state = _retire_rows(
            alive, choice, tokens, scores, row_sample, step, max_len, config, results, decoder
        )
        if state is None:
            break
        tokens, scores, row_sample = state

    for hyps in results:
        hyps.sort(key=lambda h: h.score, reverse=True)
    return results


_SEARCHES = {"greedy": greedy_search, "beam": beam_search, "sample": sample}


@torch.no_grad()
def generate(
    model: Seq2SeqModel,
    inputs: EncoderOutputLike | Mapping[str, Any] | Tensor,
    config: GenerationConfig | None = None,
    constraints: Sequence[Constraint | None] | None = None,
    code_masks: Tensor | Sequence[bool] | None = None,
    *,
    src_len: int | None = None,
    unconditional_inputs: Mapping[str, Any] | Tensor | None = None,
) -> list[list[Hypothesis]]:
    """Encode (unless given an encoder output) and search; one list of hypotheses per input, best first.

    ``inputs``: ``input_ids`` (B, L), a mapping of ``model.encode`` keyword arguments (``input_ids``,
    ``patch_images``, ...), or a ready ``EncoderOutput``. ``src_len`` (for ``max_len_a``) defaults to
    ``input_ids.size(1)``; with an ``EncoderOutput`` it must be given when ``max_len_a`` is not 0.
    ``constraints``: one per input (None = unconstrained). ``code_masks``: (B,) bool, True puts that input's
    decoder in image-code mode. The model should be in eval mode, or dropout makes every step random.

    Classifier-free guidance (``config.guidance_scale > 0``, greedy or sampling): ``unconditional_inputs``
    holds one unconditional twin per input (e.g. the prompt with an empty caption), as input_ids or a mapping
    with the same keys. Inputs and twins are encoded as one batch (input_ids right-padded with pad to one
    length) and decoded as one batch; each step scores ``cond + s * (cond - uncond)``. With
    ``guidance_scale == 0`` the twins are not run at all, so the result is exactly unguided decoding.
    """
    config = config if config is not None else GenerationConfig()
    config.validate()
    guided = bool(config.guidance_scale)
    if guided and unconditional_inputs is None:
        raise ValueError("guidance_scale > 0 needs unconditional_inputs (one unconditional twin per input)")
    if isinstance(inputs, Tensor):
        inputs = {"input_ids": inputs}
    if isinstance(inputs, Mapping):
        input_ids = inputs.get("input_ids")
        if src_len is None:
            src_len = 0 if input_ids is None else input_ids.size(1)
        if guided:
            encoder_out = model.encode(**_stack_inputs(inputs, unconditional_inputs, config.pad_token_id))
        else:
            encoder_out = model.encode(**inputs)
    elif isinstance(inputs, EncoderOutputLike):
        if guided:
            raise TypeError(
                "classifier-free guidance needs input_ids or a mapping of encoder inputs (inputs and their "
                "unconditional twins are encoded as one batch), not an EncoderOutput"
            )
        encoder_out = inputs
        if src_len is None:
            if config.max_len_a != 0:
                raise ValueError("src_len is needed with an EncoderOutput when max_len_a != 0")
            src_len = 0
    else:
        raise TypeError(
            f"inputs must be input_ids, a mapping or an EncoderOutput, got {type(inputs).__name__}"
        )

    batch = _num_inputs(encoder_out, config)
    device = encoder_out.last_hidden_state.device
    if code_masks is not None:
        code_masks = torch.as_tensor(code_masks, dtype=torch.bool, device=device)
        if code_masks.shape != (batch,):
            raise ValueError(f"code_masks must have shape ({batch},), got {tuple(code_masks.shape)}")
    results = _SEARCHES[config.strategy](
        model, encoder_out, config, src_len=src_len, constraints=constraints, code_masks=code_masks
    )
    if config.strategy == "beam":
        results = [hyps[: config.num_returned] for hyps in results]
    return results


def _stack_inputs(
    inputs: Mapping[str, Any], unconditional: Mapping[str, Any] | Tensor | None, pad_token_id: int
) -> dict[str, Any]:
    """One encoder batch: the inputs, then their unconditional twins (input_ids right-padded to one length)."""
    if isinstance(unconditional, Tensor):
        unconditional = {"input_ids": unconditional}
    if not isinstance(unconditional, Mapping):
        raise TypeError(
            f"unconditional_inputs must be input_ids or a mapping, got {type(unconditional).__name__}"
        )
    if set(inputs) != set(unconditional):
        raise ValueError(
            f"unconditional_inputs need the same keys as the inputs: {sorted(inputs)} vs {sorted(unconditional)}"
        )
    stacked: dict[str, Any] = {}
    for key, cond in inputs.items():
        uncond = unconditional[key]
        if cond is None or uncond is None:
            if cond is not None or uncond is not None:
                raise ValueError(f"{key} is None in only one of inputs and unconditional_inputs")
            stacked[key] = None
            continue
        if not isinstance(cond, Tensor) or not isinstance(uncond, Tensor):
            raise TypeError(f"{key}: expected tensors in inputs and unconditional_inputs")
        if cond.size(0) != uncond.size(0):
            raise ValueError(
                f"{key}: {cond.size(0)} inputs but {uncond.size(0)} unconditional twins; give one each"
            )
        if key == "input_ids":
            length = max(cond.size(1), uncond.size(1))
            cond, uncond = (F.pad(t, (0, length - t.size(1)), value=pad_token_id) for t in (cond, uncond))
        elif cond.shape[1:] != uncond.shape[1:]:
            raise ValueError(f"{key}: shapes {tuple(cond.shape)} and {tuple(uncond.shape)} do not stack")
        stacked[key] = torch.cat([cond, uncond.to(cond.device)])
    return stacked


@torch.no_grad()
def fixed_length_greedy(
    model: Seq2SeqModel,
    encoder_out: EncoderOutputLike,
    num_steps: int,
    *,
    allowed: Constraint | None = None,
    ban_prefix_ids: bool = False,
    code_masks: Tensor | None = None,
    use_cache: bool = True,
    special_ids: tuple[int, int, int, int] = (0, 1, 2, 3),
) -> Tensor:
    """The plain argmax loop of the parity fixture (``greedy.json``): (B, 1 + num_steps) tokens, bos first.

    ``special_ids`` are bos, pad, eos, unk. Raw logits, ids outside ``allowed`` -> -inf, with ``ban_prefix_ids`` every id already in the prefix (bos
    included) -> -inf, argmax (lowest id on ties). No eos stop, no pad/eos/min_len rules, no scores. With
    ``allowed`` only its :meth:`~Constraint.allowed` mask is used (``max_len`` is taken as ``num_steps + 1``).
    """
    batch = _batch_size(encoder_out)
    device = encoder_out.last_hidden_state.device
    decoder = _StepDecoder(model, encoder_out, code_masks, use_cache)
    tokens = torch.full((batch, 1), special_ids[0], dtype=torch.long, device=device)
    for step in range(num_steps):
        logits = decoder.next_logits(tokens).float()
        if allowed is not None:
            info = StepInfo(step, num_steps + 1, logits.size(-1), *special_ids, device)
            logits = logits.masked_fill(~allowed.allowed(tokens, info).expand_as(logits), NEG_INF)
        if ban_prefix_ids:
            logits = ban_ids_in_prefix(logits, tokens)
        tokens = torch.cat([tokens, logits.argmax(dim=-1, keepdim=True)], dim=1)
    return tokens
