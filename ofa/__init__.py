"""ofa: OFA/M6-style unified multimodal seq2seq models."""

__version__ = "0.1.0"
