"""The pretrained-model API: ``OFA.from_pretrained(path)`` and one method per task.

See :mod:`ofa.api.inference` for the methods and :mod:`ofa.api.results` for what they return.
"""

from .batching import MixedSearchError
from .inference import OFA, CheckpointNotFoundError, InputError, detect_language
from .results import CaptionResult, GroundingResult, RunResult

__all__ = [
    "OFA",
    "CaptionResult",
    "CheckpointNotFoundError",
    "GroundingResult",
    "InputError",
    "MixedSearchError",
    "RunResult",
    "detect_language",
]
