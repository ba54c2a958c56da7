"""Data: datasets and generators. ``ofa.data.world`` is the synthetic, exactly-scorable world."""

from .world import HELDOUT_PAIRS, SPLITS, Scene, World, WorldConfig, parse_mentions, render, write_dataset

__all__ = [
    "HELDOUT_PAIRS",
    "SPLITS",
    "Scene",
    "World",
    "WorldConfig",
    "parse_mentions",
    "render",
    "write_dataset",
]
