"""ofa: OFA/M6-style unified multimodal seq2seq models."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

if TYPE_CHECKING:
    from ofa.api import OFA

__all__ = ["OFA", "__version__"]


def __getattr__(name: str) -> Any:  # lazy: `import ofa` must not import torch
    if name == "OFA":
        from ofa.api import OFA

        return OFA
    raise AttributeError(f"module 'ofa' has no attribute {name!r}")
