"""Train a small byte-level BPE text tokenizer (for a new domain such as the synthetic world)."""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence

from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, trainers

from .ofa_tokenizer import OFATokenizer

SPECIALS = ["<s>", "<pad>", "</s>", "<unk>"]
CJK_CHAR = "[\u3400-\u9fff\uf900-\ufaff]"


def cjk_split_pattern(words: Sequence[str] = ()) -> str:
    """Regex of the pre-tokens of CJK text: the given words (longest first, so "三角形" wins over "三个"), then
    any other CJK character on its own."""
    ordered = sorted(set(words), key=lambda w: (-len(w), w))
    return "|".join([re.escape(w) for w in ordered] + [CJK_CHAR])


def train_bpe_tokenizer(
    texts: Iterable[str],
    vocab_size: int = 1000,
    num_codes: int = 8192,
    num_bins: int = 1000,
    min_frequency: int = 2,
    cjk_words: Sequence[str] = (),
) -> OFATokenizer:
    """A GPT-2-style byte-level BPE with `<s> <pad> </s> <unk>` at 0-3 and `<mask>` as the last text id,
    then codes and bins: the official OFA layout, sized for the texts given.

    Chinese has no spaces, so CJK text is pre-split into `cjk_words` (a lexicon) and single characters;
    merges stay inside one piece. Without a lexicon every character stands alone, as in BERT-Chinese.
    Either way merges never fuse e.g. a colour with a shape into one token: a new colour-shape combination
    must stay expressible with known tokens."""
    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(cjk_split_pattern(cjk_words)), behavior="isolated"),
            pre_tokenizers.ByteLevel(add_prefix_space=False),
        ]
    )
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size - 1,
        min_frequency=min_frequency,
        special_tokens=SPECIALS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train_from_iterator(texts, trainer=trainer)
    tokenizer.add_special_tokens(["<mask>"])
    return OFATokenizer(tokenizer, num_codes=num_codes, num_bins=num_bins)
