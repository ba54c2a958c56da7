"""What :class:`ofa.api.OFA` returns: one small dataclass per kind of request.

Every result carries a ``score`` in ``[0, 1]``: the geometric mean of the model's probabilities of the tokens
it generated, ``exp(mean log-prob)``, each probability taken under the distribution the search actually scored
with (after the task's vocabulary constraint). It is a confidence, not a calibrated probability of being right.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Any

import torch
from PIL import Image

Box = tuple[float, float, float, float]


@dataclass
class CaptionResult:
    """A generated caption.

    ``score``: ``exp(sum of token log-probs / number of tokens)``, end-of-sequence token included (with the
    default length penalty of 1 this is ``exp`` of the beam-search score). ``tokens``: the generated ids.
    """

    text: str
    score: float
    lang: str
    tokens: list[int] = field(default_factory=list, repr=False)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class GroundingResult:
    """The region a referring expression describes.

    ``box``: ``(x0, y0, x1, y1)`` in pixels of the original image (after its EXIF orientation is applied),
    as the model emitted it (a trained model gives ``x0 <= x1`` and ``y0 <= y1``; nothing is reordered).
    ``score``: ``exp`` of the mean log-prob of the 4 location tokens under the constrained distribution (a
    softmax over the location bins only), i.e. the geometric mean of the 4 bin probabilities.
    ``bins``: the 4 location-bin indices the model chose. ``text``: the expression as given.
    """

    box: Box
    score: float
    text: str
    lang: str = "en"
    bins: tuple[int, int, int, int] | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class RunResult:
    """Free-form output of an arbitrary instruction.

    ``text`` shows location tokens as ``<bin_k>``; ``boxes`` converts every run of 4 consecutive location
    tokens into a pixel box of the original image (empty without an image). ``score`` as in
    :class:`CaptionResult`.
    """

    text: str
    score: float
    boxes: list[Box] = field(default_factory=list)
    tokens: list[int] = field(default_factory=list, repr=False)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class ImageResult:
    """One generated picture (text-to-image); :meth:`ofa.api.OFA.generate_image` returns them best first.

    ``score``: the reranking score. With the built-in self-reranking it is the geometric mean of the model's
    probabilities of the prompt's caption tokens given this picture under the caption task, in [0, 1]; with a
    user scorer it is that scorer's value (open_clip: cosine similarity in [-1, 1]); without reranking it
    equals ``code_score``. ``code_score``: the geometric mean probability of the sampled image codes under the
    (guided) distribution they were drawn from. ``codes``: the (grid, grid) code grid, row-major.
    """

    image: Image.Image = field(repr=False)
    score: float
    codes: torch.Tensor = field(repr=False)
    text: str = ""
    code_score: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready: scores, text and codes as nested lists (the picture itself is left out)."""
        return {
            "text": self.text,
            "score": self.score,
            "code_score": self.code_score,
            "codes": self.codes.tolist(),
        }


def geometric_mean_probability(log_probs: list[float]) -> float:
    """``exp(mean(log_probs))`` clipped into [0, 1]; 0.0 for an empty list or a -inf entry."""
    if not log_probs or any(math.isinf(v) and v < 0 for v in log_probs):
        return 0.0
    return min(1.0, max(0.0, math.exp(sum(log_probs) / len(log_probs))))


__all__ = [
    "Box",
    "CaptionResult",
    "GroundingResult",
    "ImageResult",
    "RunResult",
    "geometric_mean_probability",
]
