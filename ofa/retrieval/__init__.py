"""Retrieval models: Chinese-CLIP checkpoints run as open_clip models."""

from .cnclip import (
    CNCLIPConfig,
    CNCLIPLoadError,
    CNCLIPModel,
    build_open_clip_model,
    convert_state_dict,
    load_cnclip,
    read_state_dict,
)
from .cnclip_tokenizer import CNCLIPTokenizer, CNCLIPVocabError, normalize_dataset_text, packaged_vocab_path

__all__ = [
    "CNCLIPConfig",
    "CNCLIPLoadError",
    "CNCLIPModel",
    "CNCLIPTokenizer",
    "CNCLIPVocabError",
    "build_open_clip_model",
    "convert_state_dict",
    "load_cnclip",
    "normalize_dataset_text",
    "packaged_vocab_path",
    "read_state_dict",
]
