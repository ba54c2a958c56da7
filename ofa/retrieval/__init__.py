"""Retrieval models (Chinese-CLIP checkpoints run as open_clip models) and the embedding gallery index."""

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
from .index import EmbeddingIndex, RetrievalIndexError

__all__ = [
    "CNCLIPConfig",
    "CNCLIPLoadError",
    "CNCLIPModel",
    "CNCLIPTokenizer",
    "CNCLIPVocabError",
    "EmbeddingIndex",
    "RetrievalIndexError",
    "build_open_clip_model",
    "convert_state_dict",
    "load_cnclip",
    "normalize_dataset_text",
    "packaged_vocab_path",
    "read_state_dict",
]
