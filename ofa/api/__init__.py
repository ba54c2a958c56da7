"""The pretrained-model API: ``OFA.from_pretrained(path)`` and one method per task.

See :mod:`ofa.api.inference` for the methods and :mod:`ofa.api.results` for what they return.
"""

from .batching import MixedSearchError
from .imagine import CaptionLikelihoodScorer, OpenCLIPScorer
from .inference import OFA, CheckpointNotFoundError, InputError, detect_language
from .results import CaptionResult, GroundingResult, ImageResult, RunResult
from .retrieval import RetrievalHit

__all__ = [
    "OFA",
    "CaptionLikelihoodScorer",
    "CaptionResult",
    "CheckpointNotFoundError",
    "GroundingResult",
    "ImageResult",
    "InputError",
    "MixedSearchError",
    "OpenCLIPScorer",
    "RetrievalHit",
    "RunResult",
    "detect_language",
]
