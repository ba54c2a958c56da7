"""`OFAConfig`: every architecture switch of the official OFA checkpoints, as one JSON-serialisable dataclass."""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ATTN_IMPLEMENTATIONS = ("sdpa", "eager", "flex")
IMAGE_STEMS = ("resnet", "convnet")

# Official `resnet_type` names -> Bottleneck block counts of the three-stage trunk. "resnet18"/"resnet34" are
# Bottleneck trunks too in the official code (its BasicBlock is unusable), so they are listed as such.
RESNET_LAYERS = {
    "resnet18": [2, 2, 2],
    "resnet34": [3, 4, 6],
    "resnet50": [3, 4, 6],
    "resnet101": [3, 4, 23],
    "resnet152": [3, 8, 36],
}


class ConfigError(ValueError):
    """A configuration value or file that cannot describe an OFA model."""


@dataclass
class OFAConfig:
    """Architecture of one OFA model. The defaults are OFA-base as released (NormFormer, no residual scaling).

    Vocabulary layout: `[text tokens (incl. <mask>)] [<code_0> .. <code_{num_codes-1}>] [<bin_0> .. <bin_{num_bins-1}>]`.
    """

    vocab_size: int = 59457
    num_codes: int = 8192
    num_bins: int = 1000
    bos_token_id: int = 0
    pad_token_id: int = 1
    eos_token_id: int = 2
    unk_token_id: int = 3

    d_model: int = 768
    encoder_layers: int = 6
    decoder_layers: int = 6
    encoder_attention_heads: int = 12
    decoder_attention_heads: int = 12
    encoder_ffn_dim: int = 3072
    decoder_ffn_dim: int = 3072
    activation_function: str = "gelu"
    layer_norm_eps: float = 1e-5

    dropout: float = 0.1
    attention_dropout: float = 0.0
    activation_dropout: float = 0.0
    encoder_drop_path_rate: float = 0.0
    decoder_drop_path_rate: float = 0.0
    resnet_drop_path_rate: float = 0.0

    # NormFormer extras (fairseq flags --scale-attn --scale-fc --scale-heads; --scale-resids is unused by releases).
    scale_attn: bool = True
    scale_fc: bool = True
    scale_heads: bool = True
    scale_resids: bool = False
    encoder_normalize_before: bool = True
    decoder_normalize_before: bool = True
    layernorm_embedding: bool = True
    patch_layernorm_embedding: bool = True
    code_layernorm_embedding: bool = True
    add_type_embedding: bool = True
    scale_embedding: bool = False
    # Add the raw absolute position embeddings to the encoder's patch and text tokens (official
    # `entangle_position_embedding`, off in every release). Patch tokens then carry where they are in their
    # values, not only through the attention bias, which helps small models localise.
    entangle_position_embedding: bool = False
    # fairseq adds raw decoder positions to the decoder input unless --disable-entangle (every release sets it).
    entangle_decoder_positions: bool = False

    attn_scale_factor: float = 2.0
    token_bucket_size: int = 256
    image_bucket_size: int = 42
    max_source_positions: int = 1024
    max_target_positions: int = 1024
    code_image_size: int = 128

    # Image stem: "resnet" = the official three-stage Bottleneck ResNet (timm blocks; resnet_width scales every
    # stage, 64 = official), or "convnet" = plain 3x3 conv stages (`ofa.models.convnet`, convnet_channels), which
    # learns shapes much faster from scratch on small pictures.
    image_stem: str = "resnet"
    resnet_layers: list[int] = field(default_factory=lambda: [3, 4, 23])
    resnet_width: int = 64
    convnet_channels: list[int] = field(default_factory=lambda: [32, 64, 128, 256])
    # Keep colour and shape apart in the stem (`ofa.models.factorized_stem`): width of a per-pixel colour path
    # appended to the stem output (0: none), and whether the stem sees colour-randomised images while training.
    stem_colour_channels: int = 0
    stem_colour_jitter: bool = False
    image_size: int = 480

    attn_implementation: str = "sdpa"
    gradient_checkpointing: bool = False
    # Initial <bin_k> embeddings (tied with the output layer): "normal" as every other token, or "sinusoidal"
    # (multi-frequency cos/sin of k / num_bins), so near bins start with near embeddings and the logits over
    # bins start smooth; only matters when training from scratch.
    bin_embedding_init: str = "normal"

    # Width of the shared image-text embedding space of the retrieval head (`ofa.models.retrieval`);
    # None: no head, and the model's parameters are exactly those of the official architecture.
    retrieval_dim: int | None = None

    def __post_init__(self) -> None:
        self.resnet_layers = [int(n) for n in self.resnet_layers]
        self.convnet_channels = [int(n) for n in self.convnet_channels]
        self.validate()

    # ----------------------------------------------------------------------------------------------- checks
    def validate(self) -> None:
        """Raise `ConfigError` naming the first inconsistent field."""
        if self.attn_implementation not in ATTN_IMPLEMENTATIONS:
            raise ConfigError(
                f"attn_implementation must be one of {ATTN_IMPLEMENTATIONS}, got {self.attn_implementation!r}"
            )
        for name in ("encoder_attention_heads", "decoder_attention_heads"):
            heads = getattr(self, name)
            if heads <= 0 or self.d_model % heads:
                raise ConfigError(f"d_model={self.d_model} is not divisible by {name}={heads}")
        if self.text_vocab_size <= 4:
            raise ConfigError(
                f"vocab_size={self.vocab_size} leaves no room for text tokens after "
                f"num_codes={self.num_codes} and num_bins={self.num_bins}"
            )
        if self.image_stem not in IMAGE_STEMS:
            raise ConfigError(f"image_stem must be one of {IMAGE_STEMS}, got {self.image_stem!r}")
        if not self.convnet_channels or min(self.convnet_channels) < 1:
            raise ConfigError(f"convnet_channels must list positive widths, got {self.convnet_channels}")
        if self.stem_colour_channels < 0:
            raise ConfigError(f"stem_colour_channels must be >= 0, got {self.stem_colour_channels}")
        if len(self.resnet_layers) != 3 or min(self.resnet_layers) < 1:
            raise ConfigError(
                f"resnet_layers must list three positive block counts, got {self.resnet_layers}"
            )
        if self.code_image_size % 8 or self.code_image_size // 8 > self.image_bucket_size:
            raise ConfigError(
                f"code_image_size={self.code_image_size} must be a multiple of 8 whose grid fits "
                f"image_bucket_size={self.image_bucket_size}"
            )
        dim = self.retrieval_dim
        if dim is not None and (isinstance(dim, bool) or not isinstance(dim, int) or dim < 1):
            raise ConfigError(f"retrieval_dim must be a positive integer or None, got {dim!r}")

    # --------------------------------------------------------------------------------------- derived values
    @property
    def text_vocab_size(self) -> int:
        return self.vocab_size - self.num_codes - self.num_bins

    @property
    def code_start(self) -> int:
        return self.text_vocab_size

    @property
    def bin_start(self) -> int:
        return self.text_vocab_size + self.num_codes

    @property
    def code_grid(self) -> int:
        """Side of the decoder's image-code grid (the VQ tokenizer downsamples by 8)."""
        return self.code_image_size // 8

    @property
    def image_feature_dim(self) -> int:
        """Channels of the stem output: stage 3 of a Bottleneck ResNet has 4 * 4 * width channels, plus the colour
        path's."""
        if self.image_stem == "convnet":
            return self.convnet_channels[-1] + self.stem_colour_channels
        return self.resnet_width * 16 + self.stem_colour_channels

    # ------------------------------------------------------------------------------------------- presets
    @classmethod
    def preset(cls, name: str, **overrides: Any) -> OFAConfig:
        """The official sizes `tiny`, `medium`, `base`, `large`, `huge` (official README model card)."""
        if name not in PRESETS:
            raise ConfigError(f"unknown preset {name!r}; choose one of {sorted(PRESETS)}")
        return cls(**{**PRESETS[name], **overrides})

    # --------------------------------------------------------------------------------------------- JSON
    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> OFAConfig:
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ConfigError(f"unknown OFAConfig fields: {unknown}")
        return cls(**values)

    def save(self, path: str | Path) -> None:
        Path(path).write_text(json.dumps(self.to_dict(), indent=2, sort_keys=True) + "\n")

    @classmethod
    def load(cls, path: str | Path) -> OFAConfig:
        path = Path(path)
        try:
            values = json.loads(path.read_text())
        except (OSError, json.JSONDecodeError) as err:
            raise ConfigError(f"cannot read config {path}: {err}") from err
        if not isinstance(values, dict):
            raise ConfigError(f"{path} does not hold a JSON object")
        values.pop("model_format", None)
        values.pop("format_version", None)
        try:
            return cls.from_dict(values)
        except (TypeError, ConfigError) as err:
            raise ConfigError(f"{path}: {err}") from err


def _size(layers: tuple[int, int], d: int, heads: int, resnet: str) -> dict[str, Any]:
    return {
        "encoder_layers": layers[0],
        "decoder_layers": layers[1],
        "d_model": d,
        "encoder_attention_heads": heads,
        "decoder_attention_heads": heads,
        "encoder_ffn_dim": 4 * d,
        "decoder_ffn_dim": 4 * d,
        "resnet_layers": RESNET_LAYERS[resnet],
    }


PRESETS: dict[str, dict[str, Any]] = {
    "tiny": {**_size((4, 4), 256, 4, "resnet50"), "image_size": 256},
    "medium": {**_size((4, 4), 512, 8, "resnet101"), "image_size": 256},
    "base": {**_size((6, 6), 768, 12, "resnet101"), "image_size": 384},
    "large": {**_size((12, 12), 1024, 16, "resnet152"), "image_size": 480},
    "huge": {**_size((24, 12), 1280, 16, "resnet152"), "image_size": 480},
}
