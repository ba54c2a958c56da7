"""`ImageTokenizer`: a VQGAN that turns images into a grid of codes and codes back into images."""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor, nn

from ofa.convert.checkpoints import read_json_object
from ofa.tokenization.image.configuration import ImageTokenizerConfig, ImageTokenizerError
from ofa.tokenization.image.modules import Decoder, Encoder
from ofa.tokenization.image.quantizers import (
    EMAVectorQuantizer,
    FiniteScalarQuantizer,
    GumbelQuantizer,
    QuantizerOutput,
)

MODEL_FORMAT = "ofa-image-tokenizer"
FORMAT_VERSION = 1
CONFIG_NAME = "config.json"
WEIGHTS_NAME = "model.safetensors"
IMAGE_TOKENIZER_DIR = "image_tokenizer"  # sub-folder of a model checkpoint holding its image tokenizer
# Inputs may overshoot [0, 1] by float rounding after resizing; anything beyond this is a wrong range.
_RANGE_SLACK = 1e-3


@dataclass
class ImageTokenizerOutput:
    """Result of a training forward pass.

    `reconstruction` is on the [0, 1] scale of the input but not clamped (losses see the raw output),
    `codes` is (B, h, w) and `quantizer_loss` the codebook term (commitment or Gumbel KL).
    """

    reconstruction: Tensor
    codes: Tensor
    quantizer_loss: Tensor


class ImageTokenizer(nn.Module):
    """A taming-compatible VQGAN: `encode` images in [0, 1] to codes, `decode` codes to images in [0, 1].

    Weight names are taming's (`encoder.*`, `quant_conv.*`, `quantize.*`, `post_quant_conv.*`,
    `decoder.*`), so the official OFA tokenizer (`model.yaml` + `last.ckpt`) loads with
    `ImageTokenizer.from_pretrained(folder)`. Inside, pixels are scaled to [-1, 1] as the official code does.

    Example::

        tokenizer = ImageTokenizer.from_pretrained("checkpoints/vqgan")   # ours or the official files
        codes = tokenizer.encode(images)          # (B, 3, 256, 256) in [0, 1] -> (B, 32, 32) int64
        images = tokenizer.decode(codes)          # -> (B, 3, 256, 256) in [0, 1]
    """

    def __init__(self, config: ImageTokenizerConfig) -> None:
        super().__init__()
        self.config = config
        self.encoder = Encoder(config)
        self.quant_conv = nn.Conv2d(config.z_channels, config.embed_dim, kernel_size=1)
        self.quantize: GumbelQuantizer | EMAVectorQuantizer | FiniteScalarQuantizer
        if config.quantizer == "fsq":
            self.quantize = FiniteScalarQuantizer(config.fsq_levels)
        elif config.quantizer == "gumbel":
            self.quantize = GumbelQuantizer(
                config.embed_dim,
                config.codebook_size,
                config.kl_weight,
                config.temperature,
                config.straight_through,
            )
        else:
            self.quantize = EMAVectorQuantizer(
                config.embed_dim,
                config.codebook_size,
                decay=config.ema_decay,
                commitment_weight=config.commitment_weight,
                dead_code_threshold=config.dead_code_threshold,
                kmeans_init=config.kmeans_init,
            )
        self.post_quant_conv = nn.Conv2d(config.embed_dim, config.z_channels, kernel_size=1)
        self.decoder = Decoder(config)

    # ------------------------------------------------------------------------------------------ shape
    @property
    def codebook_size(self) -> int:
        """Number of distinct codes; codes are in [0, codebook_size)."""
        return self.config.codebook_size

    @property
    def factor(self) -> int:
        """Pixels per code along each side."""
        return self.config.factor

    def grid(self, image_size: int | None = None) -> int:
        """Codes per side for square `image_size` inputs (default: the config's `resolution`)."""
        size = self.config.resolution if image_size is None else int(image_size)
        if size < self.factor or size % self.factor:
            raise ImageTokenizerError(
                f"image size {size} is not a positive multiple of the factor {self.factor}"
            )
        return size // self.factor

    # ------------------------------------------------------------------------------------------ codec
    def _check_images(self, images: Tensor) -> None:
        if not isinstance(images, Tensor) or images.dim() != 4 or not images.is_floating_point():
            raise ImageTokenizerError(
                "images must be a float tensor (B, C, H, W) in [0, 1], got "
                + (
                    f"{images.dtype} of shape {tuple(images.shape)}"
                    if isinstance(images, Tensor)
                    else type(images).__name__
                )
            )
        _, channels, height, width = images.shape
        if channels != self.config.in_channels:
            raise ImageTokenizerError(
                f"images have {channels} channels, the tokenizer takes {self.config.in_channels}"
            )
        if height % self.factor or width % self.factor or height == 0 or width == 0:
            raise ImageTokenizerError(
                f"image size {height}x{width} is not a multiple of the factor {self.factor}"
            )
        if images.numel() and (images.min() < -_RANGE_SLACK or images.max() > 1 + _RANGE_SLACK):
            raise ImageTokenizerError(
                f"images must be in [0, 1], got values in [{images.min().item():.3f}, {images.max().item():.3f}]"
            )

    def _check_codes(self, codes: Tensor) -> Tensor:
        if (
            not isinstance(codes, Tensor)
            or codes.is_floating_point()
            or codes.is_complex()
            or codes.dtype == torch.bool
        ):
            raise ImageTokenizerError("codes must be an integer tensor (B, h, w)")
        if codes.dim() == 2:  # (B, h*w) row-major, as in OFA's token sequences
            side = int(round(codes.shape[1] ** 0.5))
            if side * side != codes.shape[1]:
                raise ImageTokenizerError(f"{codes.shape[1]} codes per image do not form a square grid")
            codes = codes.view(codes.shape[0], side, side)
        if codes.dim() != 3:
            raise ImageTokenizerError(f"codes must be (B, h, w) or (B, h*w), got shape {tuple(codes.shape)}")
        if codes.numel() and (codes.min() < 0 or codes.max() >= self.codebook_size):
            raise ImageTokenizerError(
                f"codes must be in [0, {self.codebook_size}), got [{codes.min().item()}, {codes.max().item()}]"
            )
        return codes.long()

    def encode_latents(self, images: Tensor) -> Tensor:
        """Pre-quantization latents (B, embed_dim, h, w) of images in [0, 1]."""
        self._check_images(images)
        images = images.to(self.quant_conv.weight.device)
        return self.quant_conv(self.encoder(images * 2.0 - 1.0))

    @torch.no_grad()
    def encode(self, images: Tensor) -> Tensor:
        """Codes (B, H / factor, W / factor), int64, of images (B, C, H, W) in [0, 1]."""
        return self.quantize.codes(self.encode_latents(images))

    def embed_codes(self, codes: Tensor) -> Tensor:
        """The codebook vectors (B, embed_dim, h, w) of codes (B, h, w) or (B, h*w)."""
        return self.quantize.lookup(self._check_codes(codes))

    def decode_latents(self, quantized: Tensor) -> Tensor:
        """Raw decoder output on the [-1, 1] scale, unclamped, for quantized latents."""
        return self.decoder(self.post_quant_conv(quantized))

    @torch.no_grad()
    def decode(self, codes: Tensor) -> Tensor:
        """Images (B, C, h * factor, w * factor) in [0, 1] for codes (B, h, w) or (B, h*w)."""
        raw = self.decode_latents(self.embed_codes(codes.to(self.quant_conv.weight.device)))
        return (raw.clamp(-1.0, 1.0) + 1.0) / 2.0

    def forward(self, images: Tensor) -> ImageTokenizerOutput:
        """Encode, quantize and decode images in [0, 1] (training: Gumbel sampling / EMA updates apply)."""
        quantized: QuantizerOutput = self.quantize(self.encode_latents(images))
        reconstruction = (self.decode_latents(quantized.quantized) + 1.0) / 2.0
        return ImageTokenizerOutput(reconstruction, quantized.codes, quantized.loss)

    # ----------------------------------------------------------------------------------------- saving
    def save_pretrained(self, directory: str | Path) -> None:
        """Write `config.json` and `model.safetensors` into `directory` (staged, then moved in)."""
        from ofa.convert.safetensors_io import save_safetensors

        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=".staging-", dir=directory))
        try:
            state = {k: v.detach().cpu().contiguous() for k, v in self.state_dict().items()}
            metadata = {"format": "pt", "model_format": MODEL_FORMAT}
            save_safetensors(state, staging / WEIGHTS_NAME, metadata=metadata)
            header = {"model_format": MODEL_FORMAT, "format_version": FORMAT_VERSION}
            text = json.dumps({**header, **self.config.to_dict()}, indent=2, sort_keys=True) + "\n"
            (staging / CONFIG_NAME).write_text(text)
            for name in (WEIGHTS_NAME, CONFIG_NAME):  # config last: a folder with a config is complete
                os.replace(staging / name, directory / name)
        finally:
            shutil.rmtree(staging, ignore_errors=True)

    @classmethod
    def from_pretrained(cls, path: str | Path, device: str | torch.device = "cpu") -> ImageTokenizer:
        """Load our folder (`config.json` + `model.safetensors`) or the official taming files.

        The official layout is a folder with `model.yaml` and `last.ckpt` (or exactly one `.ckpt`), or the
        `.ckpt` file itself with `model.yaml` beside it.
        """
        path = Path(path)
        if not path.exists():
            raise ImageTokenizerError(f"{path}: no such file or folder")
        config_file = path / CONFIG_NAME
        if path.is_dir() and config_file.is_file():
            model = cls._from_our_folder(path)
        else:
            from ofa.tokenization.image.taming import find_taming_files, load_taming

            model = load_taming(*find_taming_files(path))
        return model.to(device).eval()

    @classmethod
    def _from_our_folder(cls, folder: Path) -> ImageTokenizer:
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        values = read_json_object(folder / CONFIG_NAME, ImageTokenizerError)
        if values.pop("model_format", None) != MODEL_FORMAT:
            raise ImageTokenizerError(
                f"{folder / CONFIG_NAME}: not an image tokenizer (model_format != {MODEL_FORMAT!r})"
            )
        version = values.pop("format_version", None)
        if version != FORMAT_VERSION:
            raise ImageTokenizerError(f"{folder / CONFIG_NAME}: unsupported format_version {version!r}")
        config = ImageTokenizerConfig.from_dict(values, source=str(folder / CONFIG_NAME))
        weights = folder / WEIGHTS_NAME
        if not weights.is_file():
            raise ImageTokenizerError(f"{weights}: missing")
        try:
            state = load_file(str(weights))
        except (SafetensorError, OSError, ValueError) as err:
            raise ImageTokenizerError(f"{weights}: not a valid safetensors file: {err}") from None
        model = cls(config)
        load_state_checked(model, state, source=str(weights))
        return model


def load_state_checked(model: nn.Module, state: dict[str, Tensor], source: str) -> None:
    """`load_state_dict(strict=True)` with one readable error naming missing, unexpected or misshapen weights."""
    expected = model.state_dict()
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    misshapen = [
        f"{k} {tuple(state[k].shape)} vs {tuple(expected[k].shape)}"
        for k in sorted(set(state) & set(expected))
        if state[k].shape != expected[k].shape
    ]
    problems = []
    if missing:
        problems.append(
            f"missing {missing[:5]}" + (f" and {len(missing) - 5} more" if len(missing) > 5 else "")
        )
    if unexpected:
        problems.append(
            f"unexpected {unexpected[:5]}"
            + (f" and {len(unexpected) - 5} more" if len(unexpected) > 5 else "")
        )
    if misshapen:
        problems.append(f"shape (checkpoint vs config) {misshapen[:5]}")
    if problems:
        raise ImageTokenizerError(f"{source}: weights do not fit the config: {'; '.join(problems)}")
    model.load_state_dict(
        {k: v.to(expected[k].dtype) if v.is_floating_point() else v for k, v in state.items()}, strict=True
    )
