"""Text-to-image: the image a caption describes, as a grid of VQ image codes.

Sample: ``{"text": "a red circle left of a blue star", "lang": "en" | "zh", "id": any}`` plus, for a
training target, either ``"codes"`` (a precomputed (grid, grid) or (grid * grid,) integer array from
:func:`ofa.tokenization.image.extract_codes`) or ``"image"`` (encoded on the fly by the task's image
tokenizer). With a codes file (``codes=``, written by `ofa extract-codes`; recipe key
`data.task_options.text_to_image.codes`) a sample without ``"codes"`` takes those stored under its ``id``
(the image's id: caption data files give one sample per caption, keyed by its image) and its image is never
encoded. Source = the official prompt with the caption; target = the code grid flattened row-major as
``<code_k>`` ids, then eos, decoded in image-code mode. While training the caption is dropped (replaced by
the empty string inside the same prompt frame) with probability ``caption_dropout``, which teaches the model
the unconditional distribution that classifier-free guidance needs. Decoding samples only code tokens, for
exactly grid * grid steps. The metric is the world oracle's compositional accuracy (world captions only).
"""

from __future__ import annotations

import random
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from PIL import Image
from torch import Tensor

from ofa.generation import Constraint, TokenRange
from ofa.tokenization import OFATokenizer

from .base import Example, Task, TaskError, clean_text, register_task

if TYPE_CHECKING:
    from ofa.tokenization.image import ImageCodes, ImageTokenizer


@register_task
class TextToImageTask(Task):
    """Caption -> image codes. See the module docstring for samples, targets and decoding.

    ``image_tokenizer`` encodes sample images without precomputed codes and turns generated codes back into
    pictures; ``code_grid`` (codes per side) defaults to the image tokenizer's grid at its resolution and must
    equal the model's ``OFAConfig.code_grid``. ``caption_dropout`` is the training probability of an empty
    caption. ``codes`` (`ofa.tokenization.image.read_codes`) are the targets of samples by image id.
    """

    name = "text_to_image"
    # Official OFA (image_gen task); Chinese: "what is the complete picture? description: ...".
    prompts = {"en": " what is the complete image? caption: {}", "zh": "完整的图片是什么？描述：{}"}
    uses_image = False  # the image is the target; the encoder reads text only

    def __init__(
        self,
        tokenizer: OFATokenizer,
        image_size: int = 256,
        max_source_length: int = 128,
        max_target_length: int = 64,
        search: dict[str, Any] | None = None,
        *,
        image_tokenizer: ImageTokenizer | None = None,
        code_grid: int | None = None,
        caption_dropout: float = 0.1,
        codes: ImageCodes | None = None,
    ) -> None:
        super().__init__(tokenizer, image_size, max_source_length, max_target_length, search)
        if not 0.0 <= caption_dropout <= 1.0:
            raise TaskError(f"text_to_image: caption_dropout must be in [0, 1], got {caption_dropout}")
        self.caption_dropout = float(caption_dropout)
        self.image_tokenizer = image_tokenizer
        if image_tokenizer is not None:
            if image_tokenizer.codebook_size > tokenizer.num_codes:
                raise TaskError(
                    f"text_to_image: the image tokenizer has {image_tokenizer.codebook_size} codes but the text "
                    f"tokenizer only {tokenizer.num_codes} <code_k> tokens"
                )
            if code_grid is None:
                code_grid = image_tokenizer.grid()
        if code_grid is not None and code_grid < 1:
            raise TaskError(f"text_to_image: code_grid must be positive, got {code_grid}")
        self._code_grid = code_grid
        self.codes: ImageCodes | None = None
        self._code_rows: dict[str, int] = {}
        if codes is not None:
            self.use_codes(codes)

    def use_codes(self, codes: ImageCodes) -> None:
        """Take training targets from precomputed codes (by image id) of this task's grid and codebook.

        The codebook must be the image tokenizer's (what turns generated codes into pictures) and the grid
        the task's; a file extracted by another tokenizer with the same shapes cannot be told apart.
        """
        where = f"codes file {codes.path or '(in memory)'}"
        side = self.code_grid
        if codes.grid != (side, side):
            h, w = codes.grid
            raise TaskError(f"{where}: its code grid is {h}x{w} but the task's is {side}x{side}")
        if codes.codebook_size != self.num_codes:
            owner = "image tokenizer" if self.image_tokenizer is not None else "vocabulary"
            raise TaskError(
                f"{where}: its codes come from a codebook of {codes.codebook_size} but the task's {owner} "
                f"has {self.num_codes}"
            )
        if self.image_tokenizer is not None and codes.image_size != side * self.image_tokenizer.factor:
            raise TaskError(
                f"{where}: extracted from {codes.image_size} px images, the image tokenizer encodes "
                f"{side * self.image_tokenizer.factor} px for a {side}x{side} grid"
            )
        rows = {str(image_id): row for row, image_id in enumerate(codes.ids)}
        self.codes, self._code_rows = codes, rows

    def has_codes(self, image_id: Any) -> bool:
        """Whether the codes file holds the codes of this image id."""
        return str(image_id) in self._code_rows

    def stored_codes(self, image_id: Any) -> Tensor:
        """The precomputed (grid, grid) codes of an image id; TaskError naming the id and file if absent."""
        if self.codes is None:
            raise TaskError("text_to_image: no codes file to look image ids up in")
        row = self._code_rows.get(str(image_id))
        if row is None:
            source = self.codes.path or "(in memory)"
            raise TaskError(
                f"text_to_image: image id {image_id!r} is not in the codes file {source} "
                "(extract the codes of this data file with `ofa extract-codes`)"
            )
        return self._check_codes(self.codes.codes[row], f"text_to_image: image {image_id!r}")

    # ---- shape of the output
    @property
    def code_grid(self) -> int:
        """Codes per side of the generated image."""
        if self._code_grid is None:
            raise TaskError("text_to_image: no code_grid: give an image_tokenizer or code_grid to the task")
        return self._code_grid

    @property
    def num_codes(self) -> int:
        """Distinct codes the output may use: the image tokenizer's codebook (else every <code_k> token)."""
        if self.image_tokenizer is not None:
            return self.image_tokenizer.codebook_size
        return self.tokenizer.num_codes

    # ---- inputs
    def prompt(self, text: str, lang: str) -> str:
        """The instruction for a caption; the empty caption keeps the frame (the unconditional prompt)."""
        caption = clean_text(text) if lang == "en" else text.strip()
        return self.prompts[lang].format(caption).rstrip()

    def unconditional_source(self, lang: str = "en") -> list[int]:
        """Source ids of the empty-caption prompt: the unconditional input of classifier-free guidance."""
        return self.encode_source(self.prompt("", self.language({"lang": lang})))

    def build(self, sample: dict[str, Any], train: bool = False, rng: Any = None) -> Example:
        lang = self.language(sample)
        where = f"text_to_image: sample {sample.get('id', '?')}"
        text = sample.get("text")
        if not isinstance(text, str) or not text.strip():
            raise TaskError(f"{where} has an empty caption")
        target = [self.tokenizer.eos_id]
        if sample.get("codes") is not None:
            target = self.codes_to_ids(self._check_codes(sample["codes"], where)) + target
        elif self.codes is not None:
            target = self.codes_to_ids(self.stored_codes(sample.get("id"))) + target
        elif sample.get("image") is not None:
            target = self.codes_to_ids(self.encode_image(sample["image"], where)) + target
        elif train:
            raise TaskError(f"{where} has neither codes nor an image to learn from")
        caption = text
        if train and self.caption_dropout > 0 and (rng or random).random() < self.caption_dropout:
            caption = ""
        meta = {"id": sample.get("id"), "lang": lang, "text": text, "caption_dropped": caption == ""}
        source = self.encode_source(self.prompt(caption, lang))
        return Example(self.name, source, target, None, code_mode=True, meta=meta)

    def encode_image(self, image: Any, where: str = "text_to_image") -> Tensor:
        """The (grid, grid) codes of an image (path, PIL image, array), resized and centre-cropped as OFA does."""
        from ofa.data.images import ImageError
        from ofa.tokenization.image import image_to_unit_tensor

        if self.image_tokenizer is None:
            raise TaskError(
                f"{where}: encoding an image needs an image_tokenizer (or give precomputed codes)"
            )
        size = self.code_grid * self.image_tokenizer.factor
        try:
            pixels = image_to_unit_tensor(image, size)
        except ImageError as err:
            raise TaskError(f"{where}: {err}") from None
        return self.image_tokenizer.encode(pixels[None])[0].cpu()

    def _check_codes(self, codes: Any, where: str) -> Tensor:
        array = codes.detach().cpu().numpy() if isinstance(codes, Tensor) else np.asarray(codes)
        if array.dtype.kind not in "iu":  # offline extraction stores uint16, which torch barely supports
            raise TaskError(f"{where}: codes must be integers, got {array.dtype}")
        grid = torch.from_numpy(array.astype(np.int64))
        side = self.code_grid
        if (
            grid.numel() != side * side
            or grid.dim() not in (1, 2)
            or (grid.dim() == 2 and grid.size(0) != side)
        ):
            raise TaskError(f"{where}: codes of shape {tuple(grid.shape)} are not a {side}x{side} grid")
        if grid.min() < 0 or grid.max() >= self.num_codes:
            raise TaskError(
                f"{where}: codes must be in [0, {self.num_codes}), got [{int(grid.min())}, {int(grid.max())}]"
            )
        return grid.long().view(side, side)

    def codes_to_ids(self, codes: Tensor) -> list[int]:
        """A (grid, grid) code grid -> its <code_k> token ids, row-major."""
        return [int(i) for i in self.tokenizer.code_to_id(codes.reshape(-1).tolist())]

    # ---- search
    def default_search(self) -> dict[str, Any]:
        # Official OFA image generation samples with top-k 256 at temperature 1 for exactly grid^2 tokens.
        steps = self.code_grid * self.code_grid
        return {"strategy": "sample", "top_k": 256, "max_len_b": steps, "min_len": steps}

    def constraint(self, example: Example) -> Constraint | None:
        """Only codes of the codebook, exactly grid * grid of them, then eos."""
        lo = self.tokenizer.code_range[0]
        return TokenRange(lo, lo + self.num_codes, exact_length=self.code_grid * self.code_grid)

    # ---- outputs
    def parse_codes(self, tokens: list[int]) -> Tensor | None:
        """Generated ids -> the (grid, grid) code grid, or None unless they are exactly grid^2 codes (+ eos)."""
        body = [t for t in tokens if t != self.tokenizer.eos_id]
        side = self.code_grid
        if len(body) != side * side or not all(bool(self.tokenizer.is_code_id(t)) for t in body):
            return None
        codes = torch.tensor(self.tokenizer.id_to_code(body), dtype=torch.long)
        if int(codes.max()) >= self.num_codes:
            return None
        return codes.view(side, side)

    def codes_to_images(self, codes: Tensor) -> list[Image.Image]:
        """(B, grid, grid) codes -> B RGB pictures, decoded by the image tokenizer in one batch."""
        if self.image_tokenizer is None:
            raise TaskError("text_to_image: turning codes into pictures needs an image_tokenizer")
        pixels = self.image_tokenizer.decode(codes)  # (B, 3, H, W) in [0, 1]
        arrays = (pixels * 255.0).round().to(torch.uint8).permute(0, 2, 3, 1).cpu().numpy()
        return [Image.fromarray(a) for a in arrays]

    def parse(self, tokens: list[int], example: Example) -> Image.Image | None:
        """Generated ids -> the picture (None when the ids are not a full code grid)."""
        codes = self.parse_codes(tokens)
        return None if codes is None else self.codes_to_images(codes[None])[0]

    def score(self, predictions: list[Image.Image | None], examples: list[Example]) -> dict[str, float]:
        """World oracle: the share of pictures with exactly the caption's objects (and relations holding).

        A missing picture (the output was not a full code grid) counts as wrong.
        """
        from ofa.evaluation.world_oracle import compositional_accuracy, parse_prompt

        if len(predictions) != len(examples):
            raise TaskError(f"text_to_image: {len(predictions)} predictions for {len(examples)} examples")
        prompts = []
        for e in examples:
            try:
                prompts.append(parse_prompt(e.meta["text"], e.meta["lang"]))
            except ValueError as err:
                raise TaskError(
                    f"text_to_image: sample {e.meta.get('id', '?')} is no world caption: {err}"
                ) from None
        kept = [i for i, p in enumerate(predictions) if p is not None]
        n = len(examples)
        result = compositional_accuracy([predictions[i] for i in kept], [prompts[i] for i in kept])
        share = len(kept) / n if n else 0.0
        return {
            "compositional_accuracy": result["compositional_accuracy"] * share,
            "object_accuracy": result["object_accuracy"] * share,
            "num_images": float(n),
        }
