"""The OFA model: config, transformer, attention kernels and image stem."""

from .configuration_ofa import PRESETS, ConfigError, OFAConfig
from .modeling_ofa import DecoderCache, DecoderOutput, EncoderOutput, OFAModel
from .retrieval import NoRetrievalHeadError, RetrievalHead

__all__ = [
    "PRESETS",
    "ConfigError",
    "DecoderCache",
    "DecoderOutput",
    "EncoderOutput",
    "NoRetrievalHeadError",
    "OFAConfig",
    "OFAModel",
    "RetrievalHead",
]
