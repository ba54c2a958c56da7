"""Evaluation metrics: COCO caption scores, world-caption object F1, grounding IoU and retrieval recall."""

from .metrics import (
    box_iou,
    caption_metrics,
    grounding_metrics,
    java_available,
    object_f1,
    spice_models_present,
    tokenize_en_python,
    tokenize_zh_chars,
    world_caption_f1,
)
from .retrieval import recall_at_k, retrieval_metrics

__all__ = [
    "box_iou",
    "caption_metrics",
    "grounding_metrics",
    "java_available",
    "object_f1",
    "recall_at_k",
    "retrieval_metrics",
    "spice_models_present",
    "tokenize_en_python",
    "tokenize_zh_chars",
    "world_caption_f1",
]
