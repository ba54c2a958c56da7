"""Tokenization for OFA: the unified text + image-code + location-bin vocabulary, and box quantisation.

Layout of the ids (official OFA order)::

    [0, T)                text vocabulary (BART: <s>=0 <pad>=1 </s>=2 <unk>=3 ... <mask>=T-1)
    [T, T + K)            <code_0> ... <code_{K-1}>  image codes (K = 8192)
    [T + K, T + K + N)    <bin_0> ... <bin_{N-1}>    location bins (N = 1000)

For the English checkpoints T = 50265, so codes are 50265..58456 and bins 58457..59456.
"""

from ofa.tokenization.boxes import bins_to_box, box_to_bins, dequantize, quantize, validate_boxes
from ofa.tokenization.ofa_tokenizer import CONFIG_FILE, TOKENIZER_FILE, OFATokenizer
from ofa.tokenization.text import (
    BPE_SPECIAL_TOKENS,
    WORDPIECE_SPECIAL_TOKENS,
    SpecialTokens,
    TokenizerError,
    fairseq_layout,
)

__all__ = [
    "BPE_SPECIAL_TOKENS",
    "CONFIG_FILE",
    "TOKENIZER_FILE",
    "WORDPIECE_SPECIAL_TOKENS",
    "OFATokenizer",
    "SpecialTokens",
    "TokenizerError",
    "bins_to_box",
    "box_to_bins",
    "dequantize",
    "fairseq_layout",
    "quantize",
    "validate_boxes",
]
