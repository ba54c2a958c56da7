"""Tests for ofa.generation.

Most tests use a small deterministic recurrent toy model that implements the encode/decode protocol with a
real cache (the hidden state), so a wrong cache reorder or a wrong per-row code mask changes the tokens.
The searches are checked against references written here from the fixture README's description: a brute-force
enumeration of every sequence (where beam search is provably exhaustive) and a plain per-sample transliteration
of fairseq's beam rules (where it is not). The official fixture decodes are checked in test_parity.py.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from types import SimpleNamespace

import pytest
import torch
from torch import Tensor

from ofa.generation import (
    GenerationConfig,
    PrefixTrie,
    TokenRange,
    beam_search,
    fixed_length_greedy,
    generate,
    greedy_search,
    no_repeat_ngram_mask,
    sample,
    step_log_probs,
    top_k_top_p_filter,
)

BOS, PAD, EOS, UNK = 0, 1, 2, 3
NEG_INF = float("-inf")


# ----------------------------------------------------------------------------------------------- toy model


@dataclass
class ToyEncoderOutput:
    last_hidden_state: Tensor
    padding_mask: Tensor | None
    position_embedding: Tensor

    def index_select(self, index: Tensor) -> ToyEncoderOutput:
        pm = None if self.padding_mask is None else self.padding_mask.index_select(0, index)
        return ToyEncoderOutput(
            self.last_hidden_state.index_select(0, index), pm, self.position_embedding.index_select(0, index)
        )


class ToyCache:
    def __init__(self, hidden: Tensor, length: int) -> None:
        self.hidden = hidden
        self.length = length

    def reorder(self, index: Tensor) -> None:
        self.hidden = self.hidden.index_select(0, index)


@dataclass
class ToyDecoderOutput:
    logits: Tensor
    cache: ToyCache | None


class ToyModel(torch.nn.Module):
    """h_t = tanh(E[x_t] + P[t] + U h_{t-1} + ctx + code_mask * C); logits_t = h_t W + eos_slope * t at eos."""

    def __init__(
        self, vocab_size: int, seed: int = 0, d: int = 8, eos_slope: float = 0.0, scale: float = 1.5
    ):
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        self.config = SimpleNamespace(vocab_size=vocab_size)
        self.d = d
        self.eos_slope = eos_slope
        self.enc_embed = torch.randn(vocab_size, d, generator=g)
        self.embed = torch.randn(vocab_size, d, generator=g)
        self.pos = torch.randn(64, d, generator=g)
        self.U = torch.randn(d, d, generator=g) * 0.6
        self.code_bias = torch.randn(d, generator=g) * 2
        self.out = torch.randn(d, vocab_size, generator=g) * scale
        self.decode_calls = 0

    def encode(self, input_ids: Tensor, patch_images: Tensor | None = None) -> ToyEncoderOutput:
        x = self.enc_embed[input_ids]
        pad = input_ids.eq(PAD)
        return ToyEncoderOutput(x.masked_fill(pad.unsqueeze(-1), 0.0), pad, torch.zeros_like(x))

    def decode(
        self,
        decoder_input_ids: Tensor,
        encoder_out: ToyEncoderOutput,
        code_masks: Tensor | None = None,
        cache: ToyCache | None = None,
        use_cache: bool = False,
    ) -> ToyDecoderOutput:
        self.decode_calls += 1
        B, T = decoder_input_ids.shape
        assert encoder_out.last_hidden_state.size(0) == B
        assert code_masks is None or code_masks.shape == (B,)
        keep = (~encoder_out.padding_mask).float().unsqueeze(-1)
        ctx = (encoder_out.last_hidden_state * keep).sum(1) / keep.sum(1)
        if code_masks is not None:
            ctx = ctx + code_masks.float().unsqueeze(-1) * self.code_bias
        start = 0 if cache is None else cache.length
        h = torch.zeros(B, self.d) if cache is None else cache.hidden
        assert h.size(0) == B
        logits = []
        for t in range(T):
            h = torch.tanh(self.embed[decoder_input_ids[:, t]] + self.pos[start + t] + h @ self.U + ctx)
            step_logits = h @ self.out
            step_logits[:, EOS] += self.eos_slope * (start + t)
            logits.append(step_logits)
        return ToyDecoderOutput(torch.stack(logits, 1), ToyCache(h, start + T) if use_cache else None)


def toy_inputs(batch: int, vocab: int, seed: int = 1, src_len: int = 5) -> Tensor:
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(4, vocab, (batch, src_len), generator=g)
    ids[0, -2:] = PAD  # padding must not matter beyond the mask
    return ids


# ------------------------------------------------------------------------------------ reference rules


def ref_allowed(constraint, generated: list[int], step: int, max_len: int, vocab: int) -> set[int] | None:
    """Allowed set, written from the constraint docs (not from the library's mask code)."""
    if constraint is None:
        return None
    if isinstance(constraint, PrefixTrie):
        seqs = constraint._test_sequences  # set by make_trie below
        n = len(generated)
        return {s[n] for s in seqs if len(s) > n and s[:n] == generated}
    ids = {i for a, b in constraint.ranges for i in range(a, b)}
    if constraint.keep_special:
        ids |= {BOS, PAD, EOS, UNK}
    if constraint.exact_length is not None and step >= constraint.exact_length:
        return {EOS}
    if step >= max_len and EOS not in ids:
        return {EOS}
    return ids


def make_trie(seqs: list[list[int]]) -> PrefixTrie:
    trie = PrefixTrie(seqs, eos_token_id=EOS)
    trie._test_sequences = [list(s) + [EOS] for s in seqs]
    return trie


def ref_log_probs(model, enc, code_mask, prefix, step, max_len, cfg, constraint) -> list[float]:
    """One step of the README's stages 1-5 for a single hypothesis, by full recomputation, in float64."""
    out = model.decode(torch.tensor([prefix]), enc, code_masks=code_mask)
    x = out.logits[0, -1].double() / cfg.temperature
    vocab = x.numel()
    allowed = ref_allowed(constraint, prefix[1:], step, max_len, vocab)
    if allowed is not None:
        for i in range(vocab):
            if i not in allowed:
                x[i] = NEG_INF
    lp = torch.log_softmax(x, 0).tolist()
    lp = [NEG_INF if math.isnan(v) else v for v in lp]
    lp[PAD] = NEG_INF
    lp[UNK] -= cfg.unk_penalty
    if step >= max_len:
        lp = [v if i == EOS else NEG_INF for i, v in enumerate(lp)]
    if step < cfg.min_len:
        lp[EOS] = NEG_INF
    n = cfg.no_repeat_ngram_size
    if n > 0:
        last = prefix[len(prefix) - n + 1 :]
        for i in range(len(prefix) - n + 1):
            if prefix[i : i + n - 1] == last:
                lp[prefix[i + n - 1]] = NEG_INF
    return lp


def final_score(total: float, length: int, cfg) -> float:
    return total / length**cfg.len_penalty if cfg.normalize_scores else total


def single(enc, i: int):
    return enc.index_select(torch.tensor([i]))


def single_mask(code_masks, i: int):
    return None if code_masks is None else code_masks[i : i + 1]


def brute_force(model, enc, code_mask, cfg, max_len, constraint) -> list[tuple[list[int], float, float]]:
    """Every complete sequence allowed by the rules, with (tokens, score, sum), best first."""
    done = []

    def expand(prefix: list[int], total: float) -> None:
        step = len(prefix) - 1
        lp = ref_log_probs(model, enc, code_mask, prefix, step, max_len, cfg, constraint)
        for y, v in enumerate(lp):
            if v == NEG_INF:
                continue
            if y == EOS:
                toks = prefix[1:] + [EOS]
                done.append((toks, final_score(total + v, len(toks), cfg), total + v))
            elif step < max_len:
                expand(prefix + [y], total + v)

    expand([BOS], 0.0)
    return sorted(done, key=lambda h: -h[1])


def ref_beam(model, enc, code_mask, cfg, max_len, constraint) -> list[tuple[list[int], float, float]]:
    """The README's beam rules for one sample, as plain Python lists and full recomputation."""
    K = cfg.beam_size
    live = [([BOS], 0.0)]
    finished = []
    for step in range(max_len + 1):
        cands = []
        for prefix, total in live:
            lp = ref_log_probs(model, enc, code_mask, prefix, step, max_len, cfg, constraint)
            cands += [(total + v, prefix, y) for y, v in enumerate(lp) if v != NEG_INF]
        cands.sort(key=lambda c: -c[0])
        top = cands[: 2 * K]
        for total, prefix, y in top[:K]:
            if y == EOS and len(finished) < K:
                toks = prefix[1:] + [EOS]
                finished.append((toks, final_score(total, len(toks), cfg), total))
        if len(finished) >= K or step == max_len:
            break
        live = [(prefix + [y], total) for total, prefix, y in top if y != EOS][:K]
    return sorted(finished, key=lambda h: -h[1])


def ref_greedy(model, enc, code_mask, cfg, max_len, constraint) -> list[int]:
    prefix = [BOS]
    for step in range(max_len + 1):
        lp = ref_log_probs(model, enc, code_mask, prefix, step, max_len, cfg, constraint)
        y = max(range(len(lp)), key=lambda i: (lp[i], -i))
        prefix.append(y)
        if y == EOS:
            break
    return prefix[1:]


def assert_hyps_match(got, want, atol: float = 1e-5) -> None:
    assert [h.tokens.tolist() for h in got] == [w[0] for w in want]
    for h, (_, score, total) in zip(got, want):
        assert h.score == pytest.approx(score, abs=atol)
        assert h.sum_logprob == pytest.approx(total, abs=atol)
        assert h.positional_scores.sum().item() == pytest.approx(total, abs=atol)


def tokens_of(results) -> list[list[list[int]]]:
    return [[h.tokens.tolist() for h in hyps] for hyps in results]


# ------------------------------------------------------------------------------------------ beam search


@pytest.mark.parametrize(
    "overrides",
    [
        dict(min_len=0),
        dict(min_len=1, no_repeat_ngram_size=2, unk_penalty=0.5),
        dict(min_len=2, len_penalty=0.6, no_repeat_ngram_size=1),
        dict(min_len=1, normalize_scores=False, temperature=0.7),
    ],
)
def test_beam_search_equals_brute_force_when_exhaustive(overrides) -> None:
    """V=6, max_len=3: at most 1+4+16+64 = 85 complete sequences and 80 finite candidates per step, so with
    beam 90 fairseq's search keeps every prefix and finishes every sequence; it must equal enumeration."""
    V, max_len = 6, 3
    model = ToyModel(V, seed=3)
    ids = toy_inputs(2, V)
    cfg = GenerationConfig(beam_size=90, max_len_b=max_len, **overrides)
    enc = model.encode(ids)
    for use_cache in (True, False):
        got = beam_search(model, enc, cfg.replace(use_cache=use_cache), src_len=ids.size(1))
        for i in range(2):
            want = brute_force(model, single(enc, i), None, cfg, max_len, None)
            assert len(want) > 10
            assert_hyps_match(got[i], want)


def test_beam_search_brute_force_with_constraints() -> None:
    """fairseq's constraint_range keeps bos/unk choosable; strict ranges and tries renormalise."""
    V, max_len = 9, 3
    model = ToyModel(V, seed=5)
    ids = toy_inputs(3, V)
    cons = [
        TokenRange(5, 8, keep_special=True),
        TokenRange(4, 7, exact_length=2),
        make_trie([[4], [4, 5], [6, 4, 8], [7, 7]]),
    ]
    cfg = GenerationConfig(beam_size=200, max_len_b=max_len, min_len=0, no_repeat_ngram_size=2)
    enc = model.encode(ids)
    got = beam_search(model, enc, cfg, src_len=ids.size(1), constraints=cons)
    for i in range(3):
        want = brute_force(model, single(enc, i), None, cfg, max_len, cons[i])
        assert_hyps_match(got[i], want)
    assert any(h.tokens[0].item() == BOS for h in got[0])  # bos picked as a "bin", as in beam.json
    assert all(h.positional_scores[-1].item() == 0.0 for h in got[1])  # eos forced pre-softmax
    assert sorted(h.tokens.tolist() for h in got[2]) == sorted([[4, 2], [4, 5, 2], [6, 4, 8, 2], [7, 7, 2]])


@pytest.mark.parametrize("seed", range(4))
def test_beam_search_equals_reference_beam_rules(seed: int) -> None:
    """Non-exhaustive case: 2*beam candidates, eos finishing in rank order, early-finishing samples leaving the
    batch; compared with a per-sample list implementation of the README's rules, cache on and off."""
    V, max_len = 12, 7
    model = ToyModel(V, seed=10 + seed, eos_slope=0.6)
    ids = toy_inputs(4, V, seed=seed)
    cfg = GenerationConfig(beam_size=3, max_len_b=max_len, min_len=1, no_repeat_ngram_size=3, len_penalty=1.2)
    enc = model.encode(ids)
    ref = [ref_beam(model, single(enc, i), None, cfg, max_len, None) for i in range(4)]
    for use_cache in (True, False):
        got = beam_search(model, enc, cfg.replace(use_cache=use_cache), src_len=ids.size(1))
        for i in range(4):
            assert_hyps_match(got[i], ref[i])
    lengths = {len(h[0]) for r in ref for h in r}
    assert len(lengths) > 1  # hypotheses finished at different steps


def test_beam_search_cache_reorders_real_state() -> None:
    """Cached and uncached decoding give the same tokens and scores; the cached path decodes one token/step."""
    V = 40
    model = ToyModel(V, seed=7, eos_slope=0.3)
    ids = toy_inputs(3, V, src_len=6)
    cfg = GenerationConfig(beam_size=4, max_len_a=1.0, max_len_b=2, no_repeat_ngram_size=2)
    cached = generate(model, ids, cfg)
    uncached = generate(model, ids, cfg.replace(use_cache=False))
    assert tokens_of(cached) == tokens_of(uncached)
    for a, b in zip(cached, uncached):
        assert [h.score for h in a] == pytest.approx([h.score for h in b], abs=1e-6)
    assert max(len(h.tokens) for hyps in cached for h in hyps) <= 6 + 2 + 1


# ---------------------------------------------------------------------------------- greedy and sampling


def test_greedy_equals_argmax_loop_and_beam_one() -> None:
    V, max_len = 30, 9
    model = ToyModel(V, seed=2, eos_slope=0.35)
    ids = toy_inputs(4, V)
    enc = model.encode(ids)
    cfg = GenerationConfig(strategy="greedy", max_len_b=max_len, min_len=2, no_repeat_ngram_size=2)
    for use_cache in (True, False):
        got = greedy_search(model, enc, cfg.replace(use_cache=use_cache), src_len=ids.size(1))
        for i in range(4):
            assert got[i][0].tokens.tolist() == ref_greedy(model, single(enc, i), None, cfg, max_len, None)
    beam1 = generate(model, ids, cfg.replace(strategy="beam", beam_size=1))
    assert tokens_of(beam1) == tokens_of(got)
    assert [h[0].score for h in beam1] == pytest.approx([h[0].score for h in got], abs=1e-6)
    assert len({len(h[0].tokens) for h in got}) > 1


def test_fixed_length_greedy_matches_plain_loop_and_greedy_search() -> None:
    V = 30
    model = ToyModel(V, seed=4)
    ids = toy_inputs(2, V)
    enc = model.encode(ids)
    rng = TokenRange(10, 25)
    toks = fixed_length_greedy(model, enc, 6, allowed=rng, ban_prefix_ids=True)
    # plain loop: raw logits, range mask, ban prefix ids, argmax
    prefix = torch.zeros(2, 1, dtype=torch.long)
    for _ in range(6):
        logits = model.decode(prefix, enc).logits[:, -1].clone()
        logits[:, :10] = NEG_INF
        logits[:, 25:] = NEG_INF
        for r in range(2):
            logits[r, prefix[r]] = NEG_INF
        prefix = torch.cat([prefix, logits.argmax(-1, keepdim=True)], 1)
    assert toks.tolist() == prefix.tolist()
    # = fairseq greedy with min_len = max_len = steps and no_repeat_ngram_size=1, plus the forced eos
    cfg = GenerationConfig(strategy="greedy", min_len=6, max_len_b=6, no_repeat_ngram_size=1)
    got = generate(model, ids, cfg, constraints=[rng, rng])
    assert [h[0].tokens.tolist() for h in got] == [t[1:] + [EOS] for t in prefix.tolist()]


def test_sampling_top_k_one_is_greedy_and_seed_reproducible() -> None:
    V = 30
    model = ToyModel(V, seed=6, eos_slope=0.3)
    ids = toy_inputs(3, V)
    base = GenerationConfig(strategy="greedy", max_len_b=10, no_repeat_ngram_size=2)
    greedy = generate(model, ids, base)
    topk1 = generate(model, ids, base.replace(strategy="sample", top_k=1, num_return_sequences=4, seed=0))
    for g, s in zip(greedy, topk1):
        assert len(s) == 4
        assert all(h.tokens.tolist() == g[0].tokens.tolist() for h in s)
        assert all(h.score == pytest.approx(g[0].score, abs=1e-6) for h in s)

    cfg = base.replace(strategy="sample", num_return_sequences=8, top_p=0.9, temperature=1.3, seed=123)
    a = generate(model, ids, cfg)
    b = generate(model, ids, cfg)
    c = generate(model, ids, cfg.replace(use_cache=False))
    d = generate(model, ids, cfg.replace(seed=124))
    assert tokens_of(a) == tokens_of(b) == tokens_of(c)
    assert tokens_of(a) != tokens_of(d)
    assert len({tuple(h.tokens.tolist()) for h in a[0]}) > 1  # N different draws per prompt
    gen = torch.Generator().manual_seed(123)
    e = generate(model, ids, cfg.replace(seed=None, generator=gen))
    assert tokens_of(e) == tokens_of(a)


def test_sampling_scores_are_model_log_probs() -> None:
    """A sample's positional scores are its tokens' log-probs under the temperature-scaled, rule-processed
    distribution (not renormalised after top-k), checked by teacher forcing."""
    V, max_len = 20, 6
    model = ToyModel(V, seed=8, eos_slope=0.4)
    ids = toy_inputs(2, V)
    enc = model.encode(ids)
    cfg = GenerationConfig(
        strategy="sample", max_len_b=max_len, top_k=5, temperature=0.8, seed=1, num_return_sequences=3
    )
    got = sample(model, enc, cfg, src_len=ids.size(1))
    for i in range(2):
        for h in got[i]:
            prefix = [BOS]
            for step, (tok, ps) in enumerate(zip(h.tokens.tolist(), h.positional_scores.tolist())):
                lp = ref_log_probs(model, single(enc, i), None, prefix, step, max_len, cfg, None)
                assert ps == pytest.approx(lp[tok], abs=1e-5)
                prefix.append(tok)


def test_top_k_top_p_and_temperature_by_hand() -> None:
    lp = torch.tensor([[0.5, 0.3, 0.15, 0.05], [0.05, 0.15, 0.3, 0.5]]).log()
    kept = lambda out: (out > NEG_INF).tolist()  # noqa: E731
    assert kept(top_k_top_p_filter(lp, top_p=0.7)) == [[True, True, False, False], [False, False, True, True]]
    assert kept(top_k_top_p_filter(lp, top_p=0.5)) == [
        [True, False, False, False],
        [False, False, False, True],
    ]
    assert kept(top_k_top_p_filter(lp, top_p=0.85)) == [[True, True, True, False], [False, True, True, True]]
    assert kept(top_k_top_p_filter(lp, top_k=3)) == [[True, True, True, False], [False, True, True, True]]
    # top-p runs on the renormalised top-2 (0.625, 0.375): 0.55 keeps one there, two on the full distribution
    assert kept(top_k_top_p_filter(lp, top_p=0.55)) == [
        [True, True, False, False],
        [False, False, True, True],
    ]
    assert kept(top_k_top_p_filter(lp, top_k=2, top_p=0.55)) == [
        [True, False, False, False],
        [False, False, False, True],
    ]
    out = top_k_top_p_filter(lp, top_k=2)
    assert torch.equal(out[0, :2], lp[0, :2])  # values are not renormalised

    logits = torch.tensor([[2.0, -1.0, 0.5, 3.0, 1.0]])
    prefix = torch.tensor([[BOS]])
    cfg = GenerationConfig(temperature=2.0, min_len=0)
    got = step_log_probs(logits, prefix, 0, 5, cfg)
    want = torch.log_softmax(logits / 2.0, -1)
    want[0, PAD] = NEG_INF
    assert torch.allclose(got, want)


def test_no_repeat_ngram_mask_counts_bos() -> None:
    prefix = torch.tensor([[0, 5, 6, 0, 5], [0, 7, 7, 7, 8]])
    banned = no_repeat_ngram_mask(prefix, 3, 10)
    assert banned[0].nonzero().squeeze(1).tolist() == [6]  # (0, 5, 6) seen; bos counts as a token
    assert banned[1].nonzero().squeeze(1).tolist() == []
    banned2 = no_repeat_ngram_mask(prefix, 2, 10)
    assert banned2[0].nonzero().squeeze(1).tolist() == [6]
    assert banned2[1].nonzero().squeeze(1).tolist() == []
    banned1 = no_repeat_ngram_mask(prefix, 1, 10)
    assert banned1[0].nonzero().squeeze(1).tolist() == [0, 5, 6]
    assert banned1[1].nonzero().squeeze(1).tolist() == [0, 7, 8]
    assert not no_repeat_ngram_mask(prefix[:, :2], 3, 10).any()


# ---------------------------------------------------------------------- mixed tasks and code mode

# Toy vocabulary layout: specials 0-3, text 4-19, codes 20-39, bins 40-49.
TEXT_V, CODE_LO, CODE_HI, BIN_LO, BIN_HI = 50, 20, 40, 40, 50


def mixed_batch():
    model = ToyModel(TEXT_V, seed=11, eos_slope=0.25)
    ids = toy_inputs(4, TEXT_V, seed=2, src_len=6)
    trie = make_trie([[5, 6], [5, 7, 8], [9]])
    cons = [
        None,
        TokenRange(BIN_LO, BIN_HI, exact_length=4),
        trie,
        TokenRange(CODE_LO, CODE_HI, exact_length=9),
    ]
    code_masks = torch.tensor([False, False, False, True])
    return model, ids, cons, code_masks


def check_mixed(results) -> None:
    text, bins, answers, codes = results
    assert text and all(PAD not in h.tokens.tolist() for h in text)
    for h in bins:
        t = h.tokens.tolist()
        assert len(t) == 5 and t[-1] == EOS and all(BIN_LO <= x < BIN_HI for x in t[:4])
        assert h.positional_scores[-1].item() == 0.0
    assert answers and all(h.tokens.tolist() in ([5, 6, 2], [5, 7, 8, 2], [9, 2]) for h in answers)
    for h in codes:
        t = h.tokens.tolist()
        assert len(t) == 10 and t[-1] == EOS and all(CODE_LO <= x < CODE_HI for x in t[:9])


@pytest.mark.parametrize("strategy", ["beam", "greedy", "sample"])
def test_mixed_batch_constraints_and_code_mode(strategy: str) -> None:
    """Text, strict bins, a trie and an image-code sample in one batch, cache on and off."""
    model, ids, cons, code_masks = mixed_batch()
    cfg = GenerationConfig(
        strategy=strategy, beam_size=3, max_len_b=12, min_len=1, no_repeat_ngram_size=3, seed=5,
        num_return_sequences=3 if strategy == "sample" else None,
    )  # fmt: skip
    cached = generate(model, ids, cfg, constraints=cons, code_masks=code_masks)
    uncached = generate(model, ids, cfg.replace(use_cache=False), constraints=cons, code_masks=code_masks)
    check_mixed(cached)
    assert tokens_of(cached) == tokens_of(uncached)
    if strategy == "sample":
        return
    # each sample of the batch equals that sample searched alone by the reference rules
    enc = model.encode(ids)
    ref = ref_beam if strategy == "beam" else None
    for i in range(4):
        args = (model, single(enc, i), single_mask(code_masks, i), cfg, 12, cons[i])
        if ref is not None:
            assert_hyps_match(cached[i], ref(*args))
        else:
            assert cached[i][0].tokens.tolist() == ref_greedy(*args)


def test_code_mode_changes_the_decoder_per_sample() -> None:
    """The same prompt twice, once in code mode: code mode must reach the model for that row only."""
    model = ToyModel(TEXT_V, seed=11)
    ids = toy_inputs(1, TEXT_V).repeat(2, 1)
    rng = TokenRange(CODE_LO, CODE_HI)
    cfg = GenerationConfig(strategy="greedy", min_len=9, max_len_b=9)
    both = generate(model, ids, cfg, constraints=[rng, rng], code_masks=[False, True])
    alone = generate(model, ids[:1], cfg, constraints=[rng], code_masks=[True])
    assert both[1][0].tokens.tolist() == alone[0][0].tokens.tolist()
    assert both[0][0].tokens.tolist() != both[1][0].tokens.tolist()
    assert both[1][0].positional_scores[-1].item() == 0.0  # strict range: forced eos alone in the softmax


def test_fairseq_gen_code_specials_in_softmax_but_not_choosable() -> None:
    V = 12
    model = ToyModel(V, seed=1, scale=3.0)
    ids = toy_inputs(1, V)
    enc = model.encode(ids)
    c = TokenRange(6, 9, keep_special=True, special_choosable=False)
    cfg = GenerationConfig(beam_size=4, min_len=3, max_len_b=3)
    got = beam_search(model, enc, cfg, src_len=ids.size(1), constraints=[c])[0]
    assert len(got) == 4
    assert all(all(6 <= t < 9 for t in h.tokens[:-1].tolist()) for h in got)
    # normalised over specials + range: the eos at the end keeps a real (negative) log-prob
    assert all(h.positional_scores[-1].item() < 0 for h in got)


# ------------------------------------------------------------------------------------------- validation


def test_config_and_input_validation() -> None:
    with pytest.raises(ValueError, match="strategy"):
        GenerationConfig(strategy="nucleus")
    with pytest.raises(ValueError, match="top_p"):
        GenerationConfig(top_p=0.0)
    with pytest.raises(ValueError, match="temperature"):
        GenerationConfig(temperature=0)
    with pytest.raises(ValueError, match="num_return_sequences"):
        GenerationConfig(beam_size=2, num_return_sequences=3)
    with pytest.raises(ValueError, match="min_len"):
        GenerationConfig(min_len=5, max_len_b=4).max_length(0)
    with pytest.raises(ValueError, match="lo < hi"):
        TokenRange(5, 5)
    model = ToyModel(10)
    ids = toy_inputs(2, 10)
    with pytest.raises(ValueError, match="one per sample"):
        generate(model, ids, GenerationConfig(max_len_b=3), constraints=[None])
    with pytest.raises(ValueError, match="code_masks"):
        generate(model, ids, GenerationConfig(max_len_b=3), code_masks=[True])
    with pytest.raises(ValueError, match="src_len"):
        generate(model, model.encode(ids), GenerationConfig(max_len_a=1.0))
    got = generate(model, ids, GenerationConfig(beam_size=4, num_return_sequences=2, max_len_b=3))
    assert [len(h) for h in got] == [2, 2]


def test_token_range_union_and_sharing() -> None:
    a = TokenRange.union([(40, 50), (EOS, EOS + 1)])
    assert a == TokenRange(EOS, EOS + 1, extra_ranges=[(40, 50)]) and hash(a) == hash(
        TokenRange.union([(2, 3), (40, 50)])
    )
    model = ToyModel(TEXT_V, seed=3, eos_slope=0.5)
    ids = toy_inputs(2, TEXT_V)
    cfg = GenerationConfig(beam_size=3, max_len_b=8, min_len=1)
    got = generate(model, ids, cfg, constraints=[a, TokenRange.union([(2, 3), (40, 50)])])
    for hyps in got:
        for h in hyps:
            assert all(BIN_LO <= t < BIN_HI for t in h.tokens[:-1].tolist())
