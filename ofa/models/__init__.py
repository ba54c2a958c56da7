"""The OFA model: config, transformer, attention kernels and image stem."""

from .configuration_ofa import PRESETS, ConfigError, OFAConfig
from .modeling_ofa import DecoderCache, DecoderOutput, EncoderOutput, OFAModel

__all__ = [
    "PRESETS",
    "ConfigError",
    "DecoderCache",
    "DecoderOutput",
    "EncoderOutput",
    "OFAConfig",
    "OFAModel",
]
