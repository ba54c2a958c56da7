"""Checkpoint formats: ours, the official HF port and official fairseq files."""

from .checkpoints import CheckpointError, detect_format, load_checkpoint, save_checkpoint

__all__ = ["CheckpointError", "detect_format", "load_checkpoint", "save_checkpoint"]
