"""Per-sample vocabulary constraints.

A constraint restricts the **logits** (before the log-softmax), so the log-probs of the surviving tokens are
normalised over the allowed set only. This is how fairseq's ``constraint_range`` and ``constraint_trie``
act in OFA. A constraint may also ban tokens *after* the softmax (they stay in the normalisation but cannot
be chosen), which is what fairseq's ``gen_code`` does with the special ids.

Every search builds one (rows, V) boolean mask per step from the constraints of its rows. Rows that share a
constraint (equal ``TokenRange`` values, or the same ``PrefixTrie`` object) are handled in one call, so a
batch of N grounding prompts with one ``TokenRange`` costs one vector op per step, not N.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor


@dataclass(frozen=True)
class StepInfo:
    """What a constraint may look at besides the prefix."""

    step: int  # number of tokens generated so far (the prefix holds bos + `step` tokens)
    max_len: int
    vocab_size: int
    bos_token_id: int
    pad_token_id: int
    eos_token_id: int
    unk_token_id: int
    device: torch.device

    @property
    def special_ids(self) -> tuple[int, int, int, int]:
        return (self.bos_token_id, self.pad_token_id, self.eos_token_id, self.unk_token_id)


class Constraint:
    """Base class. Subclasses must be hashable: equal constraints are evaluated once per step."""

    def allowed(self, prefix: Tensor, info: StepInfo) -> Tensor:
        """Tokens that stay in the softmax: bool (V,) for all rows alike, or (rows, V).

        ``prefix`` is (rows, step + 1): bos followed by the tokens generated so far.
        """
        raise NotImplementedError

    def banned_after_softmax(self, prefix: Tensor, info: StepInfo) -> Tensor | None:
        """Tokens that stay in the normalisation but cannot be chosen, same shapes as :meth:`allowed`."""
        return None


class TokenRange(Constraint):
    """Only ids in ``[lo, hi)`` (or a union of such ranges, see :meth:`union`).

    * ``keep_special=False`` (strict): the log-softmax runs over the ranges only. At the final step
      (``step == max_len``), if eos is not in the ranges, only eos is allowed, so the forced eos has
      log-prob 0 instead of -inf. Put eos in a range (``(eos, eos + 1)``) to let the sample stop early.
    * ``keep_special=True`` reproduces fairseq's ``constraint_range="lo,hi"``: the special ids (bos, pad,
      eos, unk) also stay in the softmax. Pad and eos then follow the usual post-softmax rules, and bos/unk
      can be chosen, exactly as in fairseq. ``special_choosable=False`` additionally bans the specials
      after the softmax while ``step < max_len``, which is fairseq's ``gen_code=True``.
    * ``exact_length=n``: after ``n`` generated tokens only eos is allowed (pre-softmax, log-prob exactly 0),
      and eos is not allowed before that. This is strict grounding (4 bins, then eos) and fixed-size image
      code grids; it lets samples of different lengths share one batch.
    """

    __slots__ = ("ranges", "keep_special", "exact_length", "special_choosable", "_cache")

    def __init__(
        self,
        lo: int,
        hi: int,
        keep_special: bool = False,
        exact_length: int | None = None,
        *,
        special_choosable: bool = True,
        extra_ranges: Iterable[tuple[int, int]] = (),
    ) -> None:
        ranges = tuple(sorted({(int(lo), int(hi)), *((int(a), int(b)) for a, b in extra_ranges)}))
        for a, b in ranges:
            if not 0 <= a < b:
                raise ValueError(f"TokenRange needs 0 <= lo < hi, got [{a}, {b})")
        if exact_length is not None and exact_length < 0:
            raise ValueError(f"exact_length must be >= 0, got {exact_length}")
        if not special_choosable and not keep_special:
            raise ValueError("special_choosable=False only makes sense with keep_special=True")
        self.ranges: tuple[tuple[int, int], ...] = ranges
        self.keep_special = bool(keep_special)
        self.exact_length = exact_length
        self.special_choosable = bool(special_choosable)
        self._cache: dict[tuple, Tensor] = {}

    @classmethod
    def union(
        cls,
        ranges: Sequence[tuple[int, int]],
        keep_special: bool = False,
        exact_length: int | None = None,
        *,
        special_choosable: bool = True,
    ) -> TokenRange:
        """Several ``[lo, hi)`` ranges at once, e.g. bins plus eos: ``[(58457, 59457), (2, 3)]``."""
        if not ranges:
            raise ValueError("TokenRange.union needs at least one range")
        (lo, hi), *rest = ranges
        return cls(lo, hi, keep_special, exact_length, special_choosable=special_choosable, extra_ranges=rest)

    def _key(self) -> tuple:
        return (self.ranges, self.keep_special, self.exact_length, self.special_choosable)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, TokenRange) and self._key() == other._key()

    def __hash__(self) -> int:
        return hash(self._key())

    def __repr__(self) -> str:
        rng = " | ".join(f"[{a}, {b})" for a, b in self.ranges)
        return (
            f"TokenRange({rng}, keep_special={self.keep_special}, exact_length={self.exact_length}"
            + ("" if self.special_choosable else ", special_choosable=False")
            + ")"
        )

    def _vector(self, kind: str, info: StepInfo) -> Tensor:
        key = (kind, info.vocab_size, str(info.device), info.special_ids)
        mask = self._cache.get(key)
        if mask is None:
            mask = torch.zeros(info.vocab_size, dtype=torch.bool, device=info.device)
            if kind == "range":
                for a, b in self.ranges:
                    if a >= info.vocab_size:
                        raise ValueError(f"{self!r} lies outside the vocabulary (size {info.vocab_size})")
                    mask[a:b] = True
                if self.keep_special:
                    mask[list(info.special_ids)] = True
            elif kind == "eos":
                mask[info.eos_token_id] = True
            else:  # "special"
                mask[list(info.special_ids)] = True
            self._cache[key] = mask
        return mask

    def allowed(self, prefix: Tensor, info: StepInfo) -> Tensor:
        if self.exact_length is not None and info.step >= self.exact_length:
            return self._vector("eos", info)
        in_range = self._vector("range", info)
        if info.step >= info.max_len and not bool(in_range[info.eos_token_id]):
            return self._vector("eos", info)
        return in_range

    def banned_after_softmax(self, prefix: Tensor, info: StepInfo) -> Tensor | None:
        if self.special_choosable or info.step >= info.max_len:
            return None
        return self._vector("special", info)


class PrefixTrie(Constraint):
    """A closed answer set: the output must be one of ``sequences`` followed by eos.

    ``sequences`` hold generated token ids only (no bos, no eos). At each step the allowed tokens are the
    trie's children of the generated prefix; eos is allowed where a sequence ends. A prefix that left the
    trie allows nothing, so that hypothesis gets -inf everywhere and never finishes. Like fairseq's
    ``constraint_trie`` this only restricts the softmax; ``min_len``/``max_len`` still apply on top.
    """

    def __init__(self, sequences: Iterable[Sequence[int]], eos_token_id: int = 2) -> None:
        self.eos_token_id = int(eos_token_id)
        self._root: dict[int, dict] = {}
        n = 0
        for seq in sequences:
            node = self._root
            for tok in [*map(int, seq), self.eos_token_id]:
                node = node.setdefault(tok, {})
            n += 1
        if n == 0:
            raise ValueError("PrefixTrie needs at least one sequence")
        self.num_sequences = n

    __hash__ = object.__hash__  # identity: two tries are shared only when they are the same object

    def __eq__(self, other: object) -> bool:
        return self is other

    def __repr__(self) -> str:
        return f"PrefixTrie({self.num_sequences} sequences)"

    def next_tokens(self, generated: Sequence[int]) -> list[int]:
        """Children of ``generated`` (tokens after bos) in the trie; [] when the prefix left the trie."""
        node = self._root
        for tok in generated:
            node = node.get(int(tok))
            if node is None:
                return []
        return list(node)

    def allowed(self, prefix: Tensor, info: StepInfo) -> Tensor:
        mask = torch.zeros(prefix.size(0), info.vocab_size, dtype=torch.bool)
        for row, tokens in enumerate(prefix[:, 1:].tolist()):
            nxt = self.next_tokens(tokens)
            if nxt:
                mask[row, nxt] = True
        return mask.to(info.device)


class ConstraintSet:
    """The constraints of one batch, evaluated per step for the rows that are still being searched.

    ``row_sample`` maps each search row (a beam, a sample draw) to its input index, so the set survives
    beams being reordered and finished inputs being dropped.
    """

    def __init__(self, constraints: Sequence[Constraint | None] | None, batch_size: int) -> None:
        if constraints is not None and len(constraints) != batch_size:
            raise ValueError(
                f"got {len(constraints)} constraints for a batch of {batch_size}; give one per sample"
            )
        groups: dict[Constraint, list[int]] = {}
        for i, c in enumerate(constraints or ()):
            if c is None:
                continue
            if not isinstance(c, Constraint):
                raise TypeError(f"constraints[{i}] is {type(c).__name__}, expected a Constraint or None")
            groups.setdefault(c, []).append(i)
        self._groups = [(c, torch.tensor(idx)) for c, idx in groups.items()]

    def __bool__(self) -> bool:
        return bool(self._groups)

    def masks(
        self, prefix: Tensor, row_sample: Tensor, info: StepInfo
    ) -> tuple[Tensor | None, Tensor | None]:
        """(allowed, banned_after_softmax) as (rows, V) bool tensors, or None where nothing applies."""
        if not self._groups:
            return None, None
        rows_n = prefix.size(0)
        allowed: Tensor | None = None
        banned: Tensor | None = None
        for constraint, samples in self._groups:
            rows = torch.isin(row_sample, samples.to(row_sample.device)).nonzero().squeeze(1)
            if rows.numel() == 0:
                continue
            sub = prefix.index_select(0, rows)
            a = constraint.allowed(sub, info)
            if allowed is None:
                allowed = torch.ones(rows_n, info.vocab_size, dtype=torch.bool, device=info.device)
            allowed[rows] = a.expand(rows.numel(), -1)
            b = constraint.banned_after_softmax(sub, info)
            if b is not None:
                if banned is None:
                    banned = torch.zeros(rows_n, info.vocab_size, dtype=torch.bool, device=info.device)
                banned[rows] = b.expand(rows.numel(), -1)
        return allowed, banned
