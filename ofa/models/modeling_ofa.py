"""The OFA unified seq2seq transformer: image stem, encoder, decoder (text and image-code modes), tied output.

Reads top to bottom like the official model: embeddings and position bias, layers, encoder, decoder, model.
Module and parameter names follow the official HF port, so its checkpoints load after a few renames
(`ofa.convert.checkpoints`). Everything the architecture varies is decided by `OFAConfig`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F
from timm.layers import DropPath
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint

from .attention import (
    KIND_IMAGE,
    KIND_TOKEN,
    AttentionBias,
    OFAAttention,
    RelativeBucketer,
    RelativePositions,
    combined_table,
    num_image_buckets,
    num_token_buckets,
    token_bucket_lut,
)
from .configuration_ofa import OFAConfig
from .convnet import ConvStem
from .factorized_stem import FactorizedStem
from .resnet import ResNetTrunk, linear_rates
from .retrieval import NoRetrievalHeadError, RetrievalHead

ACTIVATIONS = {"gelu": F.gelu, "relu": F.relu, "gelu_tanh": lambda x: F.gelu(x, approximate="tanh")}

# The official decoder maps every code-mode step past the grid to image position id 1024.
CODE_OVERFLOW_POSITION = 1024


# ---------------------------------------------------------------------------------------------- outputs
@dataclass
class EncoderOutput:
    """Encoder result; `position_embedding` (normalised) is reused as keys of the decoder's cross-attention bias."""

    last_hidden_state: Tensor
    padding_mask: Tensor  # (B, S) bool, True at pads
    position_embedding: Tensor
    hidden_states: list[Tensor] | None = None

    def index_select(self, index: Tensor) -> EncoderOutput:
        """Rows in the order of `index` (beam expansion and reordering)."""
        return EncoderOutput(
            self.last_hidden_state.index_select(0, index),
            self.padding_mask.index_select(0, index),
            self.position_embedding.index_select(0, index),
        )


@dataclass
class DecoderCache:
    """Key/value cache of the decoder; self-attention grows step by step, cross-attention is computed once.

    Buffers are preallocated and doubled on demand, so a step writes in place instead of concatenating.
    """

    code_masks: Tensor  # (B,) bool: the decoder mode of each row
    length: int = 0
    self_k: list[Tensor] = field(default_factory=list)
    self_v: list[Tensor] = field(default_factory=list)
    self_pos_k: Tensor | None = None  # (B, H, T, dh), shared by all layers
    cross_k: list[Tensor] = field(default_factory=list)
    cross_v: list[Tensor] = field(default_factory=list)
    cross_pos_k: Tensor | None = None

    def reorder(self, index: Tensor) -> None:
        """Keep the rows of `index`, in that order (beam search reorders and expands in place)."""
        pick = lambda t: t.index_select(0, index)  # noqa: E731
        self.code_masks = pick(self.code_masks)
        self.self_k = [pick(t) for t in self.self_k]
        self.self_v = [pick(t) for t in self.self_v]
        self.cross_k = [pick(t) for t in self.cross_k]
        self.cross_v = [pick(t) for t in self.cross_v]
        if self.self_pos_k is not None:
            self.self_pos_k = pick(self.self_pos_k)
        if self.cross_pos_k is not None:
            self.cross_pos_k = pick(self.cross_pos_k)

    @staticmethod
    def _append(buffer: Tensor | None, new: Tensor, start: int) -> Tensor:
        end = start + new.size(2)
        if buffer is None or buffer.size(2) < end:
            capacity = max(16, end, 2 * (buffer.size(2) if buffer is not None else 0))
            grown = new.new_empty(new.size(0), new.size(1), capacity, new.size(3))
            if buffer is not None:
                grown[:, :, :start] = buffer[:, :, :start]
            buffer = grown
        buffer[:, :, start:end] = new
        return buffer

    def append_positions(self, pos_k: Tensor) -> Tensor:
        self.self_pos_k = self._append(self.self_pos_k, pos_k, self.length)
        return self.self_pos_k[:, :, : self.length + pos_k.size(2)]

    def append_layer(self, layer: int, k: Tensor, v: Tensor) -> tuple[Tensor, Tensor]:
        if layer == len(self.self_k):
            self.self_k.append(None)  # type: ignore[arg-type]
            self.self_v.append(None)  # type: ignore[arg-type]
        self.self_k[layer] = self._append(self.self_k[layer], k, self.length)
        self.self_v[layer] = self._append(self.self_v[layer], v, self.length)
        end = self.length + k.size(2)
        return self.self_k[layer][:, :, :end], self.self_v[layer][:, :, :end]


@dataclass
class DecoderOutput:
    logits: Tensor  # (B, T, V)
    cache: DecoderCache | None = None
    hidden_states: list[Tensor] | None = None  # embedding output, then each layer, before the final norm
    last_hidden_state: Tensor | None = None  # after the final norm, before the output projection


# ----------------------------------------------------------------------------------------------- layers
class OFAEncoderLayer(nn.Module):
    """Pre-LN layer: attention (+ mid-LN), FFN (+ LN on the hidden width), drop path on both residuals."""

    def __init__(self, config: OFAConfig, drop_path_rate: float, heads: int, ffn_dim: int) -> None:
        super().__init__()
        d, eps = config.d_model, config.layer_norm_eps
        self.normalize_before = config.encoder_normalize_before
        self.self_attn = _attention(config, heads)
        self.self_attn_layer_norm = nn.LayerNorm(d, eps=eps)
        self.self_attn_mid_layer_norm = _layer_norm(config, config.scale_attn)
        self.fc1 = nn.Linear(d, ffn_dim)
        self.fc2 = nn.Linear(ffn_dim, d)
        self.ffn_layer_norm = _layer_norm(config, config.scale_fc, ffn_dim)
        self.final_layer_norm = nn.LayerNorm(d, eps=eps)
        self.w_resid = nn.Parameter(torch.ones(d)) if config.scale_resids else None
        self.activation = ACTIVATIONS[config.activation_function]
        self.dropout = nn.Dropout(config.dropout)
        self.activation_dropout = nn.Dropout(config.activation_dropout)
        self.drop_path = DropPath(drop_path_rate) if drop_path_rate > 0 else nn.Identity()

    def _sublayer(self, x: Tensor, norm: nn.LayerNorm, mid_norm: nn.LayerNorm | None, fn) -> Tensor:
        residual = x
        h = norm(x) if self.normalize_before else x
        h = fn(h)
        if mid_norm is not None:
            h = mid_norm(h)
        x = residual + self.drop_path(self.dropout(h))
        return x if self.normalize_before else norm(x)

    def _ffn(self, x: Tensor) -> Tensor:
        residual = x
        h = self.final_layer_norm(x) if self.normalize_before else x
        h = self.activation_dropout(self.activation(self.fc1(h)))
        if self.ffn_layer_norm is not None:
            h = self.ffn_layer_norm(h)
        h = self.dropout(self.fc2(h))
        if self.w_resid is not None:
            residual = self.w_resid * residual
        x = residual + self.drop_path(h)
        return x if self.normalize_before else self.final_layer_norm(x)

    def forward(self, x: Tensor, bias: AttentionBias, layer: int) -> Tensor:
        def attend(h: Tensor) -> Tensor:
            k, v = self.self_attn.project_kv(h)
            return self.self_attn(h, k, v, bias, layer)

        x = self._sublayer(x, self.self_attn_layer_norm, self.self_attn_mid_layer_norm, attend)
        return self._ffn(x)


class OFADecoderLayer(OFAEncoderLayer):
    """Encoder layer plus cross-attention (`encoder_attn` in fairseq) between self-attention and the FFN."""

    def __init__(self, config: OFAConfig, drop_path_rate: float, heads: int, ffn_dim: int) -> None:
        super().__init__(config, drop_path_rate, heads, ffn_dim)
        self.normalize_before = config.decoder_normalize_before
        self.cross_attn = _attention(config, heads)
        self.cross_attn_layer_norm = nn.LayerNorm(config.d_model, eps=config.layer_norm_eps)
        self.cross_attn_mid_layer_norm = _layer_norm(config, config.scale_attn)

    def forward(  # type: ignore[override]
        self,
        x: Tensor,
        self_bias: AttentionBias,
        cross_bias: AttentionBias,
        encoder_hidden: Tensor,
        layer: int,
        cache: DecoderCache | None,
    ) -> Tensor:
        def attend(h: Tensor) -> Tensor:
            k, v = self.self_attn.project_kv(h)
            if cache is not None:
                k, v = cache.append_layer(layer, k, v)
            return self.self_attn(h, k, v, self_bias, layer)

        def cross(h: Tensor) -> Tensor:
            if cache is not None and layer < len(cache.cross_k):
                k, v = cache.cross_k[layer], cache.cross_v[layer]
            else:
                k, v = self.cross_attn.project_kv(encoder_hidden)
                if cache is not None:
                    cache.cross_k.append(k)
                    cache.cross_v.append(v)
            return self.cross_attn(h, k, v, cross_bias, layer)

        x = self._sublayer(x, self.self_attn_layer_norm, self.self_attn_mid_layer_norm, attend)
        x = self._sublayer(x, self.cross_attn_layer_norm, self.cross_attn_mid_layer_norm, cross)
        return self._ffn(x)


def _attention(config: OFAConfig, heads: int) -> OFAAttention:
    return OFAAttention(
        config.d_model,
        heads,
        dropout=config.attention_dropout,
        scale_factor=config.attn_scale_factor,
        scale_heads=config.scale_heads,
        implementation=config.attn_implementation,
    )


def _embedding(num: int, dim: int, padding_idx: int | None = None) -> nn.Embedding:
    emb = nn.Embedding(num, dim, padding_idx=padding_idx)
    nn.init.normal_(emb.weight, mean=0.0, std=dim**-0.5)
    if padding_idx is not None:
        nn.init.zeros_(emb.weight[padding_idx])
    return emb


def _layer_norm(config: OFAConfig, enabled: bool, dim: int | None = None) -> nn.LayerNorm | None:
    return nn.LayerNorm(dim or config.d_model, eps=config.layer_norm_eps) if enabled else None


def _zero_tables(num: int, heads: int, layers: int) -> nn.ModuleList:
    """Per-layer relative bias tables, zero at start as in the official code."""
    tables = nn.ModuleList(nn.Embedding(num, heads) for _ in range(layers))
    for table in tables:
        nn.init.zeros_(table.weight)
    return tables


class _PositionBiasMixin(nn.Module):
    """Shared pieces of the encoder and decoder: position tables, bucket tables and their bucketer."""

    def _init_stack(
        self, config: OFAConfig, layer_cls: type[OFAEncoderLayer], side: str, normalize_before: bool
    ) -> None:
        """Layers with linearly growing drop path, dropout, position tables and the final norm of one side."""
        layers, heads = getattr(config, f"{side}_layers"), getattr(config, f"{side}_attention_heads")
        ffn_dim = getattr(config, f"{side}_ffn_dim")
        max_positions = config.max_source_positions if side == "encoder" else config.max_target_positions
        self.config = config
        self.embed_scale = config.d_model**0.5 if config.scale_embedding else 1.0
        self.dropout = nn.Dropout(config.dropout)
        self._init_positions(config, layers, heads, max_positions)
        rates = linear_rates(getattr(config, f"{side}_drop_path_rate"), layers)
        self.layers = nn.ModuleList(layer_cls(config, rate, heads, ffn_dim) for rate in rates)
        self.layer_norm = _layer_norm(config, normalize_before)

    def _init_positions(self, config: OFAConfig, layers: int, heads: int, max_positions: int) -> None:
        d = config.d_model
        self.num_heads = heads
        self.pos_scaling = float(d / heads * config.attn_scale_factor) ** -0.5
        self.embed_positions = _embedding(max_positions + 2, d)
        self.embed_image_positions = _embedding(config.image_bucket_size**2 + 1, d)
        self.pos_ln = nn.LayerNorm(d, eps=config.layer_norm_eps)
        self.image_pos_ln = nn.LayerNorm(d, eps=config.layer_norm_eps)
        self.token_rel_pos_table_list = _zero_tables(
            num_token_buckets(config.token_bucket_size), heads, layers
        )
        self.image_rel_pos_table_list = _zero_tables(
            num_image_buckets(config.image_bucket_size), heads, layers
        )
        self._bucket_args = (config.token_bucket_size, config.image_bucket_size, config.max_source_positions)

    def _bucketer(self, device: torch.device) -> RelativeBucketer:
        token_size, image_size, max_position = self._bucket_args
        return RelativeBucketer(
            token_size, image_size, max_position, token_bucket_lut(token_size, max_position, device)
        )

    def _tables(self) -> list[Tensor]:
        return [
            combined_table(tok.weight, img.weight)
            for tok, img in zip(self.token_rel_pos_table_list, self.image_rel_pos_table_list)
        ]

    def _split_heads(self, x: Tensor) -> Tensor:
        b, t, _ = x.shape
        return x.view(b, t, self.num_heads, -1).transpose(1, 2)


# ---------------------------------------------------------------------------------------------- encoder
class OFAEncoder(_PositionBiasMixin):
    """Image patches (ResNet stride 16, projected) followed by text tokens, one bidirectional transformer."""

    def __init__(self, config: OFAConfig, embed_tokens: nn.Embedding) -> None:
        super().__init__()
        self._init_stack(config, OFAEncoderLayer, "encoder", config.encoder_normalize_before)
        d = config.d_model
        self.embed_tokens = embed_tokens
        if config.image_stem == "convnet":
            self.embed_images: nn.Module = ConvStem(config.convnet_channels)
        else:
            self.embed_images = ResNetTrunk(
                config.resnet_layers, config.resnet_width, config.resnet_drop_path_rate
            )
        if config.stem_colour_channels or config.stem_colour_jitter:
            self.embed_images = FactorizedStem(
                self.embed_images, config.stem_colour_channels, config.stem_colour_jitter
            )
        self.image_proj = nn.Linear(self.embed_images.out_channels, d)
        self.type_embedding = _embedding(2, d) if config.add_type_embedding else None
        self.layernorm_embedding = _layer_norm(config, config.layernorm_embedding)
        self.patch_layernorm_embedding = _layer_norm(config, config.patch_layernorm_embedding)
        self.pos_q_linear = nn.Linear(d, d)
        self.pos_k_linear = nn.Linear(d, d)

    def _typed(self, x: Tensor, type_id: int, norm: nn.LayerNorm | None) -> Tensor:
        if self.type_embedding is not None:
            x = x + self.type_embedding.weight[type_id]
        if norm is not None:
            x = norm(x)
        return self.dropout(x)

    def forward(
        self,
        input_ids: Tensor | None = None,
        patch_images: Tensor | None = None,
        patch_masks: Tensor | None = None,
        output_hidden_states: bool = False,
    ) -> EncoderOutput:
        """Encode `[image patches] + [text]`; either part may be absent. `patch_masks[b]=False` hides b's image."""
        if input_ids is None and patch_images is None:
            raise ValueError("the encoder needs input_ids, patch_images or both")
        parts, pads, positions, kinds, coords = [], [], [], [], []
        if patch_images is not None:
            features = self.embed_images(patch_images)
            b, _, h, w = features.shape
            if max(h, w) > self.config.image_bucket_size:
                raise ValueError(
                    f"image gives a {h}x{w} patch grid, larger than image_bucket_size={self.config.image_bucket_size}"
                )
            image = self.image_proj(features.flatten(2).transpose(1, 2)) * self.embed_scale
            rows = torch.arange(h, device=image.device)[:, None] * self.config.image_bucket_size
            pid = (rows + torch.arange(w, device=image.device)[None, :] + 1).flatten().expand(b, -1)
            image_pos = self.embed_image_positions(pid)
            if self.config.entangle_position_embedding:
                image = image + image_pos
            parts.append(self._typed(image, 1, self.patch_layernorm_embedding))
            image_pad = torch.zeros(b, h * w, dtype=torch.bool, device=image.device)
            if patch_masks is not None:
                image_pad = image_pad | ~patch_masks.to(image.device).bool()[:, None]
            pads.append(image_pad)
            positions.append(self.image_pos_ln(image_pos))
            kinds.append(torch.full_like(pid, KIND_IMAGE))
            coords.append(pid)
        if input_ids is not None:
            b, length = input_ids.shape
            if length > self.config.max_source_positions:
                raise ValueError(
                    f"text of {length} tokens exceeds max_source_positions={self.config.max_source_positions}"
                )
            text = self.embed_tokens(input_ids) * self.embed_scale
            pos = torch.arange(length, device=input_ids.device).expand(b, -1)
            text_pos = self.embed_positions(pos)
            if self.config.entangle_position_embedding:
                text = text + text_pos
            parts.append(self._typed(text, 0, self.layernorm_embedding))
            pads.append(input_ids.eq(self.config.pad_token_id))
            positions.append(self.pos_ln(text_pos))
            kinds.append(torch.full_like(pos, KIND_TOKEN))
            coords.append(pos)

        x = torch.cat(parts, dim=1)
        padding_mask = torch.cat(pads, dim=1)
        has_pads = bool(padding_mask.any())
        if has_pads:
            x = x * (1 - padding_mask.unsqueeze(-1).type_as(x))
        position_embedding = torch.cat(positions, dim=1)
        relative = RelativePositions(torch.cat(kinds, dim=1), torch.cat(coords, dim=1))
        bias = AttentionBias(
            pos_q=self._split_heads(self.pos_q_linear(position_embedding)) * self.pos_scaling,
            pos_k=self._split_heads(self.pos_k_linear(position_embedding)),
            key_padding=padding_mask if has_pads else None,
            rel_q=relative,
            rel_k=relative,
            bucketer=self._bucketer(x.device),
            tables=self._tables(),
        )
        if self.config.attn_implementation != "flex":
            bias.prepare(x.dtype)
        hidden_states = [] if output_hidden_states else None
        for index, layer in enumerate(self.layers):
            if hidden_states is not None:
                hidden_states.append(x)
            if self.config.gradient_checkpointing and self.training:
                x = checkpoint(layer, x, bias, index, use_reentrant=False)
            else:
                x = layer(x, bias, index)
        if hidden_states is not None:
            hidden_states.append(x)
        if self.layer_norm is not None:
            x = self.layer_norm(x)
        return EncoderOutput(x, padding_mask, position_embedding, hidden_states)


# ---------------------------------------------------------------------------------------------- decoder
class OFADecoder(_PositionBiasMixin):
    """Causal decoder; per sample either text mode or image-code mode (image positions, code LayerNorm, 2-D bias)."""

    def __init__(self, config: OFAConfig, embed_tokens: nn.Embedding) -> None:
        super().__init__()
        self._init_stack(config, OFADecoderLayer, "decoder", config.decoder_normalize_before)
        d = config.d_model
        self.embed_tokens = embed_tokens
        self.layernorm_embedding = _layer_norm(config, config.layernorm_embedding)
        self.code_layernorm_embedding = _layer_norm(config, config.code_layernorm_embedding)
        self.self_pos_q_linear = nn.Linear(d, d)
        self.self_pos_k_linear = nn.Linear(d, d)
        self.cross_pos_q_linear = nn.Linear(d, d)
        self.cross_pos_k_linear = nn.Linear(d, d)

    def image_position_ids(self, steps: Tensor) -> Tensor:
        """Image position id of each decoder step in code mode: 0 for bos, then the code grid row-major."""
        grid, bucket = self.config.code_grid, self.config.image_bucket_size
        cell = (steps - 1).clamp(min=0)
        pid = torch.div(cell, grid, rounding_mode="floor") * bucket + torch.remainder(cell, grid) + 1
        overflow = min(CODE_OVERFLOW_POSITION, bucket * bucket)
        pid = torch.where(steps > grid * grid, overflow, pid)
        return torch.where(steps == 0, 0, pid)

    def _embed(self, input_ids: Tensor, code_masks: Tensor, raw_positions: Tensor) -> Tensor:
        x = self.embed_tokens(input_ids) * self.embed_scale
        if self.config.entangle_decoder_positions:
            x = x + raw_positions
        if self.layernorm_embedding is not None:
            if self.code_layernorm_embedding is not None and bool(code_masks.any()):
                mode = code_masks[:, None, None]
                x = torch.where(mode, self.code_layernorm_embedding(x), self.layernorm_embedding(x))
            else:
                x = self.layernorm_embedding(x)
        return self.dropout(x)

    def forward(
        self,
        input_ids: Tensor,
        encoder_out: EncoderOutput,
        code_masks: Tensor | None = None,
        cache: DecoderCache | None = None,
        use_cache: bool = False,
        output_hidden_states: bool = False,
    ) -> DecoderOutput:
        b, t = input_ids.shape
        device = input_ids.device
        if use_cache and cache is None:
            mode = (
                torch.zeros(b, dtype=torch.bool, device=device) if code_masks is None else code_masks.bool()
            )
            cache = DecoderCache(code_masks=mode.to(device))
        if cache is not None:
            code_masks = cache.code_masks
        elif code_masks is None:
            code_masks = torch.zeros(b, dtype=torch.bool, device=device)
        code_masks = code_masks.to(device).bool()
        past = cache.length if cache is not None else 0
        if past + t > self.config.max_target_positions + 1:
            raise ValueError(
                f"decoder length {past + t} exceeds max_target_positions={self.config.max_target_positions}"
            )

        # Positions: text rows use 0-based step positions, code rows the image grid positions.
        steps = torch.arange(past, past + t, device=device)
        text_raw = self.embed_positions(steps).expand(b, -1, -1)
        image_pid = self.image_position_ids(steps)
        mode = code_masks[:, None, None]
        if bool(code_masks.any()):
            image_raw = self.embed_image_positions(image_pid).expand(b, -1, -1)
            raw = torch.where(mode, image_raw, text_raw)
            normed = torch.where(mode, self.image_pos_ln(image_raw), self.pos_ln(text_raw))
        else:
            raw, normed = text_raw, self.pos_ln(text_raw)

        self_pos_k = self._split_heads(self.self_pos_k_linear(normed))
        if cache is not None:
            self_pos_k = cache.append_positions(self_pos_k)
        if cache is not None and cache.cross_pos_k is not None:
            cross_pos_k = cache.cross_pos_k
        else:
            cross_pos_k = self._split_heads(self.cross_pos_k_linear(encoder_out.position_embedding))
            if cache is not None:
                cache.cross_pos_k = cross_pos_k

        all_steps = torch.arange(past + t, device=device)
        kind = torch.where(code_masks[:, None], KIND_IMAGE, KIND_TOKEN).expand(b, past + t)
        coord = torch.where(
            code_masks[:, None], self.image_position_ids(all_steps)[None, :], all_steps[None, :]
        )
        self_bias = AttentionBias(
            pos_q=self._split_heads(self.self_pos_q_linear(normed)) * self.pos_scaling,
            pos_k=self_pos_k,
            causal=True,
            query_offset=past,
            rel_q=RelativePositions(kind[:, past:], coord[:, past:]),
            rel_k=RelativePositions(kind, coord),
            bucketer=self._bucketer(device),
            tables=self._tables(),
        )
        padding = encoder_out.padding_mask
        cross_bias = AttentionBias(
            pos_q=self._split_heads(self.cross_pos_q_linear(normed)) * self.pos_scaling,
            pos_k=cross_pos_k,
            key_padding=padding,
        )

        x = self._embed(input_ids, code_masks, raw)
        if self.config.attn_implementation != "flex":
            self_bias.prepare(x.dtype)
            cross_bias.prepare(x.dtype)
        hidden_states = [x] if output_hidden_states else None
        for index, layer in enumerate(self.layers):
            if self.config.gradient_checkpointing and self.training and cache is None:
                x = checkpoint(
                    layer,
                    x,
                    self_bias,
                    cross_bias,
                    encoder_out.last_hidden_state,
                    index,
                    None,
                    use_reentrant=False,
                )
            else:
                x = layer(x, self_bias, cross_bias, encoder_out.last_hidden_state, index, cache)
            if hidden_states is not None:
                hidden_states.append(x)
        if cache is not None:
            cache.length = past + t
        if self.layer_norm is not None:
            x = self.layer_norm(x)
        logits = F.linear(x, self.embed_tokens.weight)
        return DecoderOutput(logits, cache if use_cache else None, hidden_states, x)


# ------------------------------------------------------------------------------------------------ model
class OFAModel(nn.Module):
    """One seq2seq model for every task. `encode` + `decode` for generation, `forward` for teacher forcing."""

    # Parameters shared under several names; only the first is stored in checkpoints.
    tied_weights = {"decoder.embed_tokens.weight": "encoder.embed_tokens.weight"}

    def __init__(self, config: OFAConfig) -> None:
        super().__init__()
        self.config = config
        shared = _embedding(config.vocab_size, config.d_model, padding_idx=config.pad_token_id)
        self.encoder = OFAEncoder(config, shared)
        self.decoder = OFADecoder(config, shared)
        self._init_linear()
        if config.bin_embedding_init == "sinusoidal":
            with torch.no_grad():
                start = config.bin_start
                shared.weight[start : start + config.num_bins] = sinusoidal_bin_embeddings(
                    config.num_bins, config.d_model
                )
        elif config.bin_embedding_init != "normal":
            raise ValueError(
                f"bin_embedding_init: expected normal or sinusoidal, got {config.bin_embedding_init!r}"
            )
        # Built after the initialisation above (with its own), so the rest of the model draws the same random
        # numbers with or without it; without `retrieval_dim` the parameters are exactly the official ones.
        self.retrieval = (
            RetrievalHead(config.d_model, config.retrieval_dim) if config.retrieval_dim is not None else None
        )

    def _init_linear(self) -> None:
        """fairseq's initialisation: Xavier-uniform linears (gain 1/sqrt(2) on q/k/v), zero biases.

        A small fixed std (0.02, BERT style) leaves q.k near zero in a narrow model trained from scratch, and
        attention then takes thousands of steps to leave the uniform pattern and find the image content.
        """
        for module in self.modules():
            if isinstance(module, OFAAttention):
                for proj in (module.q_proj, module.k_proj, module.v_proj):
                    nn.init.xavier_uniform_(proj.weight, gain=2**-0.5)
        for name, module in self.named_modules():
            if isinstance(module, nn.Linear):
                if not name.endswith(("q_proj", "k_proj", "v_proj")):
                    nn.init.xavier_uniform_(module.weight)
                if module.bias is not None:
                    nn.init.zeros_(module.bias)

    @property
    def device(self) -> torch.device:
        return self.encoder.embed_tokens.weight.device

    @property
    def dtype(self) -> torch.dtype:
        return self.encoder.embed_tokens.weight.dtype

    def set_attn_implementation(self, implementation: str) -> None:
        """Switch every attention between `sdpa`, `eager` and `flex` (the weights are unchanged)."""
        self.config.attn_implementation = implementation
        self.config.validate()
        for module in self.modules():
            if isinstance(module, OFAAttention):
                module.implementation = implementation

    def encode(
        self,
        input_ids: Tensor | None = None,
        patch_images: Tensor | None = None,
        patch_masks: Tensor | None = None,
        output_hidden_states: bool = False,
    ) -> EncoderOutput:
        return self.encoder(input_ids, patch_images, patch_masks, output_hidden_states)

    def decode(
        self,
        decoder_input_ids: Tensor,
        encoder_out: EncoderOutput,
        code_masks: Tensor | None = None,
        cache: DecoderCache | None = None,
        use_cache: bool = False,
        output_hidden_states: bool = False,
    ) -> DecoderOutput:
        """Logits for `decoder_input_ids`. With a cache, pass only the new tokens; positions continue from it."""
        return self.decoder(
            decoder_input_ids, encoder_out, code_masks, cache, use_cache, output_hidden_states
        )

    def forward(
        self,
        input_ids: Tensor | None = None,
        patch_images: Tensor | None = None,
        decoder_input_ids: Tensor | None = None,
        code_masks: Tensor | None = None,
        patch_masks: Tensor | None = None,
    ) -> Tensor:
        """Teacher-forced logits (B, T, V)."""
        if decoder_input_ids is None:
            raise ValueError("forward needs decoder_input_ids (start them with bos)")
        encoder_out = self.encode(input_ids, patch_images, patch_masks)
        return self.decode(decoder_input_ids, encoder_out, code_masks).logits

    # --------------------------------------------------------------------------------------- retrieval
    def _retrieval_head(self) -> RetrievalHead:
        if self.retrieval is None:
            raise NoRetrievalHeadError(
                "this model has no retrieval head (its config has retrieval_dim=None); train one with "
                "model.config.retrieval_dim and a data.retrieval section in the recipe"
            )
        return self.retrieval

    def embed_images(
        self, patch_images: Tensor, input_ids: Tensor | None = None, patch_masks: Tensor | None = None
    ) -> Tensor:
        """L2-normalised image embeddings (B, retrieval_dim): patches + instruction `input_ids` through the
        encoder, mean-pooled over non-pad positions, projected (see `ofa.models.retrieval`)."""
        head = self._retrieval_head()
        out = self.encode(input_ids, patch_images, patch_masks)
        return head.project(out.last_hidden_state, out.padding_mask, "image")

    def embed_texts(self, input_ids: Tensor) -> Tensor:
        """L2-normalised text embeddings (B, retrieval_dim) of the texts `input_ids` alone, no image."""
        head = self._retrieval_head()
        out = self.encode(input_ids)
        return head.project(out.last_hidden_state, out.padding_mask, "text")

    # ------------------------------------------------------------------------------------- checkpoints
    @classmethod
    def from_pretrained(
        cls,
        path: str | Path,
        device: str | torch.device | None = None,
        dtype: torch.dtype | None = None,
        attn_implementation: str | None = None,
    ) -> OFAModel:
        """Load our format, an official HF-port folder or an official fairseq `.pt` (detected automatically).

        Weights stored in half precision load as float32 unless `dtype` asks otherwise (as in transformers):
        CPU inference in float16 is slow and some CPU kernels lack it.
        """
        from ofa.convert.checkpoints import load_checkpoint

        config, state = load_checkpoint(path)
        if dtype is None:
            state = {k: v.float() if v.is_floating_point() else v for k, v in state.items()}
        if attn_implementation is not None:
            config.attn_implementation = attn_implementation
            config.validate()
        with torch.device("meta"):
            model = cls(config)
        model.load_state_dict_strict(state, source=str(path))
        model.eval()
        if device is not None or dtype is not None:
            model.to(device=device, dtype=dtype)
        return model

    def load_state_dict_strict(self, state: dict[str, Tensor], source: str = "state dict") -> None:
        """Load every parameter and buffer, or raise `CheckpointError` listing what is missing or unexpected."""
        from ofa.convert.checkpoints import CheckpointError

        expected = self.state_dict_keys()
        missing = sorted(expected - set(state))
        unexpected = sorted(set(state) - expected)
        if missing or unexpected:
            raise CheckpointError(
                f"{source}: weights do not match the config: missing {_short(missing)}, unexpected {_short(unexpected)}"
            )
        own = self.state_dict(keep_vars=True)
        for key, value in state.items():
            if tuple(own[key].shape) != tuple(value.shape):
                raise CheckpointError(
                    f"{source}: {key} has shape {tuple(value.shape)}, the config expects {tuple(own[key].shape)}"
                )
        full = dict(state)
        for alias, target in self.tied_weights.items():
            full[alias] = state[target]
        self.load_state_dict(full, strict=True, assign=True)
        # assign=True breaks the sharing of the embedding; restore it.
        self.decoder.embed_tokens = self.encoder.embed_tokens

    def state_dict_keys(self) -> set[str]:
        return set(self.state_dict()) - set(self.tied_weights)

    def save_pretrained(
        self, path: str | Path, dtype: torch.dtype | None = None, max_shard_bytes: int = 2 << 30
    ) -> None:
        """Write `config.json` + `model.safetensors` (sharded with an index when larger than `max_shard_bytes`)."""
        from ofa.convert.checkpoints import save_checkpoint

        state = {k: v for k, v in self.state_dict().items() if k not in self.tied_weights}
        if dtype is not None:
            state = {k: v.to(dtype) if v.is_floating_point() else v for k, v in state.items()}
        save_checkpoint(self.config, state, path, max_shard_bytes=max_shard_bytes)

    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters())


def sinusoidal_bin_embeddings(num_bins: int, dim: int) -> Tensor:
    """(num_bins, dim) rows of unit norm: cos/sin of 2*pi*f*k/num_bins for dim/2 frequencies f from 1/2 to
    num_bins/4 cycles (geometric), so the dot product of two rows falls off with their distance in bins."""
    half = dim // 2
    freqs = 0.5 * (num_bins / 2) ** (torch.arange(half, dtype=torch.float64) / max(1, half - 1))
    angle = 2 * math.pi * torch.arange(num_bins, dtype=torch.float64)[:, None] / num_bins * freqs[None]
    rows = torch.cat([angle.cos(), angle.sin()], dim=1)
    if rows.shape[1] < dim:
        rows = torch.cat([rows, torch.zeros(num_bins, dim - rows.shape[1], dtype=rows.dtype)], dim=1)
    return (rows / half**0.5).float()


def _short(keys: list[str], limit: int = 6) -> str:
    if not keys:
        return "none"
    more = f" and {len(keys) - limit} more" if len(keys) > limit else ""
    return ", ".join(keys[:limit]) + more


__all__ = [
    "DecoderCache",
    "DecoderOutput",
    "EncoderOutput",
    "OFAModel",
    "OFADecoder",
    "OFAEncoder",
]
