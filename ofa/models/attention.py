"""OFA attention with its position bias, behind three interchangeable kernels.

Every OFA attention adds a bias to the logits: an absolute term `(pos_q @ pos_k^T)` from learned position
embeddings, plus (self-attention only) a relative term looked up per layer in a bucket table: 1-D token buckets
between text positions, 2-D buckets between image positions, nothing across modalities.

* ``eager``: the reference; builds the dense bias and runs softmax in float32.
* ``sdpa``:  the same dense bias handed to `F.scaled_dot_product_attention`, so fused kernels run on GPU.
* ``flex``:  `flex_attention` with no B x H x N x N tensor at all: the absolute term is folded into the dot product
  by concatenating `[q * scale, pos_q]` and `[k, pos_k]`, and the relative term is a `score_mod` that computes
  each bucket from per-position coordinates and reads the layer's table.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass, field
from functools import lru_cache

import torch
import torch.nn.functional as F
from torch import Tensor, nn

# Position kinds used to pick the relative bucket family.
KIND_NONE, KIND_TOKEN, KIND_IMAGE = 0, 1, 2


# ------------------------------------------------------------------------------------------- bucket functions
@lru_cache(maxsize=8)
def _token_bucket_lut_cpu(bucket_size: int, max_position: int) -> Tensor:
    """Official 1-D bucket of every offset `i - j` in (-max_position, max_position), as a lookup table.

    Computed with exactly the official float32 operations, so the table equals `make_token_bucket_position`.
    """
    rel = torch.arange(-(max_position - 1), max_position, dtype=torch.long)
    sign = torch.sign(rel)
    mid = bucket_size // 2
    abs_pos = torch.where((rel < mid) & (rel > -mid), mid - 1, torch.abs(rel))
    log_pos = torch.ceil(torch.log(abs_pos / mid) / math.log((max_position - 1) / mid) * (mid - 1)) + mid
    log_pos = log_pos.int()
    return torch.where(abs_pos.le(mid), rel, log_pos * sign).long() + bucket_size - 1


def token_bucket_lut(bucket_size: int, max_position: int, device: torch.device | None = None) -> Tensor:
    return _token_bucket_lut_cpu(bucket_size, max_position).to(device)


def num_token_buckets(bucket_size: int) -> int:
    return 2 * bucket_size - 1


def num_image_buckets(bucket_size: int) -> int:
    return (2 * bucket_size - 1) ** 2 + 3


def image_bucket(pid_q: Tensor, pid_k: Tensor, bucket_size: int) -> Tensor:
    """Official 2-D bucket between image position ids (`r * B + c + 1`; id 0 is the special 'cls' slot)."""
    n = num_image_buckets(bucket_size)
    rq, cq = torch.div(pid_q - 1, bucket_size, rounding_mode="floor"), torch.remainder(pid_q - 1, bucket_size)
    rk, ck = torch.div(pid_k - 1, bucket_size, rounding_mode="floor"), torch.remainder(pid_k - 1, bucket_size)
    bucket = (rq - rk + bucket_size - 1) * (2 * bucket_size - 1) + (cq - ck + bucket_size - 1)
    bucket = torch.where(pid_k == 0, n - 2, bucket)
    bucket = torch.where(pid_q == 0, n - 3, bucket)
    return torch.where((pid_q == 0) & (pid_k == 0), n - 1, bucket)


def full_token_bucket_table(bucket_size: int, max_position: int) -> Tensor:
    """The official `token_rp_bucket` buffer (max_position x max_position), rebuilt from the lookup table."""
    pos = torch.arange(max_position)
    lut = token_bucket_lut(bucket_size, max_position)
    return lut[pos[:, None] - pos[None, :] + max_position - 1]


def full_image_bucket_table(bucket_size: int) -> Tensor:
    """The official `image_rp_bucket` buffer ((B*B+1) x (B*B+1))."""
    pid = torch.arange(bucket_size * bucket_size + 1)
    return image_bucket(pid[:, None], pid[None, :], bucket_size)


@dataclass
class RelativePositions:
    """Per-position coordinates from which relative buckets are computed (B, N each)."""

    kind: Tensor  # KIND_* per position
    coord: Tensor  # token position for KIND_TOKEN, image position id for KIND_IMAGE


@dataclass
class RelativeBucketer:
    """Maps (query, key) coordinates to a row of a layer's combined table `[token | image | zero]`."""

    token_bucket_size: int
    image_bucket_size: int
    max_position: int
    token_lut: Tensor

    @property
    def num_token(self) -> int:
        return num_token_buckets(self.token_bucket_size)

    @property
    def none_row(self) -> int:
        return self.num_token + num_image_buckets(self.image_bucket_size)

    def __call__(self, kind_q: Tensor, coord_q: Tensor, kind_k: Tensor, coord_k: Tensor) -> Tensor:
        span = self.max_position - 1
        token = self.token_lut[(coord_q - coord_k).clamp(-span, span) + span]
        image = image_bucket(coord_q, coord_k, self.image_bucket_size) + self.num_token
        return torch.where(
            (kind_q == KIND_TOKEN) & (kind_k == KIND_TOKEN),
            token,
            torch.where((kind_q == KIND_IMAGE) & (kind_k == KIND_IMAGE), image, self.none_row),
        )


def combined_table(token_table: Tensor, image_table: Tensor) -> Tensor:
    """One (buckets, heads) table per layer: token rows, image rows, then a zero row for 'no relative term'."""
    return torch.cat([token_table, image_table, token_table.new_zeros(1, token_table.size(1))], dim=0)


# ---------------------------------------------------------------------------------------------- the bias spec
@dataclass
class AttentionBias:
    """Everything that biases or masks one attention call, shared by the layers of one encoder/decoder pass.

    `pos_q` is already multiplied by the position scaling. Relative terms are on when `bucketer` and the
    coordinates are given; `tables[layer]` is the layer's combined table.
    """

    pos_q: Tensor  # (B, H, Tq, dh)
    pos_k: Tensor  # (B, H, Tk, dh)
    key_padding: Tensor | None = None  # (B, Tk) bool, True = masked
    causal: bool = False
    query_offset: int = 0  # absolute index of query 0 among the keys (KV cache)
    rel_q: RelativePositions | None = None
    rel_k: RelativePositions | None = None
    bucketer: RelativeBucketer | None = None
    tables: list[Tensor] | None = None
    _abs: Tensor | None = field(default=None, repr=False)
    _bucket: Tensor | None = field(default=None, repr=False)
    _mask: Tensor | None = field(default=None, repr=False)

    @property
    def has_relative(self) -> bool:
        return self.bucketer is not None and self.tables is not None

    def valid(self, q_idx: Tensor, k_idx: Tensor, padding: Tensor | None) -> Tensor | None:
        """Boolean validity of (query, key) pairs; `padding` is the key padding for the given keys."""
        ok = None
        if self.causal:
            ok = k_idx <= q_idx + self.query_offset
        if padding is not None:
            ok = ~padding if ok is None else ok & ~padding
        return ok

    # -- dense form (eager / sdpa)
    def prepare(self, dtype: torch.dtype) -> None:
        """Build the layer-independent dense parts once, before the layers (and outside gradient checkpoints)."""
        if self._abs is not None:
            return
        self._abs = torch.matmul(self.pos_q, self.pos_k.transpose(2, 3))
        tq, tk = self.pos_q.size(2), self.pos_k.size(2)
        device = self.pos_q.device
        q_idx = torch.arange(tq, device=device)[:, None]
        k_idx = torch.arange(tk, device=device)[None, :]
        padding = self.key_padding[:, None, None, :] if self.key_padding is not None else None
        ok = self.valid(q_idx, k_idx, padding)
        if ok is not None:
            self._mask = torch.zeros(ok.shape, dtype=dtype, device=device).masked_fill(
                ~ok, torch.finfo(dtype).min
            )
        if self.has_relative:
            assert self.rel_q is not None and self.rel_k is not None and self.bucketer is not None
            self._bucket = self.bucketer(
                self.rel_q.kind[:, :, None],
                self.rel_q.coord[:, :, None],
                self.rel_k.kind[:, None, :],
                self.rel_k.coord[:, None, :],
            )

    def dense(self, layer: int, dtype: torch.dtype) -> Tensor:
        """(B, H, Tq, Tk) additive bias for `layer`, masks folded in as the dtype's most negative value."""
        self.prepare(dtype)
        bias = self._abs
        if self.has_relative:
            assert self.tables is not None and self._bucket is not None
            bias = bias + F.embedding(self._bucket, self.tables[layer]).permute(0, 3, 1, 2)
        if self._mask is not None:
            bias = bias + self._mask
        return bias.to(dtype)

    # -- flex form
    def score_mod(self, layer: int):
        """A flex_attention score_mod adding the relative term and applying the masks, with no dense tensor."""
        table = self.tables[layer] if self.has_relative else None
        bucketer, rel_q, rel_k = self.bucketer, self.rel_q, self.rel_k
        key_padding = self.key_padding
        causal, offset = self.causal, self.query_offset

        def mod(score, b, h, q_idx, k_idx):
            if table is not None:
                bucket = bucketer(
                    rel_q.kind[b, q_idx], rel_q.coord[b, q_idx], rel_k.kind[b, k_idx], rel_k.coord[b, k_idx]
                )
                score = score + table[bucket, h].to(score.dtype)
            ok = None
            if causal:
                ok = k_idx <= q_idx + offset
            if key_padding is not None:
                pad_ok = ~key_padding[b, k_idx]
                ok = pad_ok if ok is None else ok & pad_ok
            if ok is not None:
                score = torch.where(ok, score, -float("inf"))
            return score

        return mod


# --------------------------------------------------------------------------------------------- the module
class OFAAttention(nn.Module):
    """Multi-head attention with query scale `(head_dim * scale_factor) ** -0.5` and NormFormer head scales."""

    def __init__(
        self,
        embed_dim: int,
        num_heads: int,
        dropout: float = 0.0,
        scale_factor: float = 2.0,
        scale_heads: bool = True,
        implementation: str = "sdpa",
    ) -> None:
        super().__init__()
        self.embed_dim = embed_dim
        self.num_heads = num_heads
        self.head_dim = embed_dim // num_heads
        self.scaling = float(self.head_dim * scale_factor) ** -0.5
        self.dropout = dropout
        self.implementation = implementation
        self.q_proj = nn.Linear(embed_dim, embed_dim)
        self.k_proj = nn.Linear(embed_dim, embed_dim)
        self.v_proj = nn.Linear(embed_dim, embed_dim)
        self.out_proj = nn.Linear(embed_dim, embed_dim)
        self.c_attn = nn.Parameter(torch.ones(num_heads)) if scale_heads else None

    def _heads(self, x: Tensor) -> Tensor:
        b, t, _ = x.shape
        return x.view(b, t, self.num_heads, self.head_dim).transpose(1, 2)

    def project_kv(self, source: Tensor) -> tuple[Tensor, Tensor]:
        """Keys and values (B, H, S, dh) of `source`; cached by the decoder."""
        return self._heads(self.k_proj(source)), self._heads(self.v_proj(source))

    def project_q(self, hidden: Tensor) -> Tensor:
        """Queries (B, H, T, dh) of `hidden`, before scaling."""
        return self._heads(self.q_proj(hidden))

    def probabilities(self, hidden: Tensor, key: Tensor, bias: AttentionBias, layer: int) -> Tensor:
        """(B, H, Tq, Tk) float32 attention distribution of `forward` (before dropout), which the fused kernels
        do not return: for inspection and attention supervision. Differentiable."""
        q = self.project_q(hidden)
        scores = torch.matmul(q * self.scaling, key.transpose(2, 3)).float() + bias.dense(
            layer, torch.float32
        )
        return torch.softmax(scores, dim=-1)

    def forward(self, hidden: Tensor, key: Tensor, value: Tensor, bias: AttentionBias, layer: int) -> Tensor:
        q = self.project_q(hidden)
        dropout = self.dropout if self.training else 0.0
        if self.implementation == "flex" and not (
            q.device.type == "cpu" and torch.is_grad_enabled() and self.training
        ):
            out = _flex(q * self.scaling, key, value, bias, layer)
        elif self.implementation in (
            "sdpa",
            "flex",
        ):  # flex has no CPU backward: train with the SDPA kernel there
            out = F.scaled_dot_product_attention(
                q, key, value, attn_mask=bias.dense(layer, q.dtype), dropout_p=dropout, scale=self.scaling
            )
        else:
            scores = torch.matmul(q * self.scaling, key.transpose(2, 3)) + bias.dense(layer, q.dtype)
            probs = torch.softmax(scores.float(), dim=-1).to(q.dtype)
            probs = F.dropout(probs, dropout, self.training)
            out = torch.matmul(probs, value)
        if self.c_attn is not None:
            out = out * self.c_attn.view(1, -1, 1, 1).to(out.dtype)
        b, _, t, _ = out.shape
        return self.out_proj(out.transpose(1, 2).reshape(b, t, self.embed_dim))


def _flex(q_scaled: Tensor, key: Tensor, value: Tensor, bias: AttentionBias, layer: int) -> Tensor:
    from torch.nn.attention.flex_attention import flex_attention

    q = torch.cat([q_scaled, bias.pos_q.to(q_scaled.dtype)], dim=-1)
    k = torch.cat([key, bias.pos_k.to(key.dtype)], dim=-1)
    if q.is_cuda:
        return _compiled_flex()(q, k, value.contiguous(), score_mod=bias.score_mod(layer), scale=1.0)
    with warnings.catch_warnings():  # on CPU the unfused flex path is expected; it is the reference use here
        warnings.filterwarnings("ignore", message="flex_attention called without torch.compile")
        return flex_attention(q, k, value.contiguous(), score_mod=bias.score_mod(layer), scale=1.0)


@lru_cache(maxsize=1)
def _compiled_flex():
    from torch.nn.attention.flex_attention import flex_attention

    return torch.compile(flex_attention, dynamic=True)
