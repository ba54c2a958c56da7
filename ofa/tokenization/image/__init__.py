"""The image tokenizer: a VQGAN that maps images to a grid of `<code_k>` ids and back.

One interface for OFA's official tokenizer (taming's Gumbel f8 VQGAN, 8192 codes) and our own small ones::

    from ofa.tokenization.image import ImageTokenizer, ImageTokenizerConfig

    tokenizer = ImageTokenizer.from_pretrained("checkpoints/vqgan")   # config.json + model.safetensors,
                                                                      # or the official model.yaml + last.ckpt
    codes = tokenizer.encode(images)      # (B, 3, S, S) in [0, 1] -> (B, S/8, S/8) int64 in [0, codebook_size)
    images = tokenizer.decode(codes)      # -> (B, 3, S, S) in [0, 1]
    tokenizer.grid(256), tokenizer.codebook_size                      # 32, 8192 for the official one

    world = ImageTokenizer(ImageTokenizerConfig.world())              # 64 px -> 8x8 codes, 512 FSQ codes

Codes for a whole collection: `extract_codes(tokenizer, [(image_id, image), ...], "codes.safetensors")` and
`read_codes(path)`; for every image of a caption data file, `extract_file_codes` (`ofa extract-codes`). Training: `train_step` with `VQLossConfig` (see `ofa/training/image_tokenizer.py`,
`ofa train tasks/world/vq.yaml`).
"""

from ofa.tokenization.image.codes import (
    ImageCodes,
    extract_codes,
    extract_file_codes,
    image_to_unit_tensor,
    read_codes,
)
from ofa.tokenization.image.configuration import ImageTokenizerConfig, ImageTokenizerError
from ofa.tokenization.image.modeling import IMAGE_TOKENIZER_DIR, ImageTokenizer, ImageTokenizerOutput
from ofa.tokenization.image.quantizers import (
    EMAVectorQuantizer,
    FiniteScalarQuantizer,
    GumbelQuantizer,
    QuantizerOutput,
)
from ofa.tokenization.image.taming import config_from_taming_yaml, load_taming, load_taming_state
from ofa.tokenization.image.training import VQLossConfig, codebook_usage, psnr, train_step, vq_loss

__all__ = [
    "IMAGE_TOKENIZER_DIR",
    "EMAVectorQuantizer",
    "FiniteScalarQuantizer",
    "GumbelQuantizer",
    "ImageCodes",
    "ImageTokenizer",
    "ImageTokenizerConfig",
    "ImageTokenizerError",
    "ImageTokenizerOutput",
    "QuantizerOutput",
    "VQLossConfig",
    "codebook_usage",
    "config_from_taming_yaml",
    "extract_codes",
    "extract_file_codes",
    "image_to_unit_tensor",
    "load_taming",
    "load_taming_state",
    "psnr",
    "read_codes",
    "train_step",
    "vq_loss",
]
