"""Builders for the *text* part of the OFA vocabulary, on top of the `tokenizers` library.

Nothing here knows about image codes or location bins; :mod:`ofa.tokenization.ofa_tokenizer` appends
those after the text ids. Three kinds of text vocabulary are supported:

* ``"bpe"``: GPT-2 / BART byte-level BPE (``vocab.json`` + ``merges.txt``, or GPT-2's original
  ``encoder.json`` + ``vocab.bpe``), used by the English OFA checkpoints.
* ``"wordpiece"``: BERT WordPiece (``vocab.txt``), e.g. the BERT-Chinese vocabulary of Chinese CLIP.
* ``"tokenizer_json"``: any ``tokenizer.json`` written by the `tokenizers` library.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass
from pathlib import Path

from tokenizers import AddedToken, Tokenizer, decoders, models, normalizers, pre_tokenizers

PathLike = str | os.PathLike[str]

#: Matches the textual form of an image-code or location-bin token, e.g. ``<code_17>`` or ``<bin_999>``.
LOCATION_TOKEN_PATTERN = re.compile(r"<(code|bin)_(\d+)>")

#: fairseq pads a dictionary to a multiple of this many symbols with ``madeupwordNNNN`` entries.
FAIRSEQ_PAD_MULTIPLE = 8


class TokenizerError(ValueError):
    """Raised when tokenizer files are missing, inconsistent or unusable."""


@dataclass(frozen=True)
class SpecialTokens:
    """The strings of the special text tokens. ``mask`` is optional (``None`` when the vocabulary lacks it)."""

    bos: str
    pad: str
    eos: str
    unk: str
    mask: str | None = None

    def required(self) -> dict[str, str]:
        """The four tokens every vocabulary must contain, by role."""
        return {"bos": self.bos, "pad": self.pad, "eos": self.eos, "unk": self.unk}

    def to_dict(self) -> dict[str, str | None]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, str | None]) -> SpecialTokens:
        try:
            return cls(
                bos=str(data["bos"]),
                pad=str(data["pad"]),
                eos=str(data["eos"]),
                unk=str(data["unk"]),
                mask=None if data.get("mask") is None else str(data["mask"]),
            )
        except KeyError as error:
            raise TokenizerError(
                f"special_tokens is missing the {error.args[0]!r} entry: {dict(data)}"
            ) from None


#: BART / fairseq layout: ``<s>``=0, ``<pad>``=1, ``</s>``=2, ``<unk>``=3, ``<mask>`` last.
BPE_SPECIAL_TOKENS = SpecialTokens(bos="<s>", pad="<pad>", eos="</s>", unk="<unk>", mask="<mask>")
#: BERT layout: ``[CLS]`` acts as bos and ``[SEP]`` as eos.
WORDPIECE_SPECIAL_TOKENS = SpecialTokens(bos="[CLS]", pad="[PAD]", eos="[SEP]", unk="[UNK]", mask="[MASK]")
#: Candidate layouts tried, in order, when the special tokens are not given explicitly.
KNOWN_SPECIAL_TOKENS = (BPE_SPECIAL_TOKENS, WORDPIECE_SPECIAL_TOKENS)


def detect_special_tokens(vocab: Mapping[str, int], override: SpecialTokens | None = None) -> SpecialTokens:
    """Pick the special tokens of ``vocab``: ``override`` if given, else the first known layout it contains.

    The mask token is dropped (set to ``None``) when the vocabulary does not have it.
    """
    candidates = (override,) if override is not None else KNOWN_SPECIAL_TOKENS
    for candidate in candidates:
        if all(token in vocab for token in candidate.required().values()):
            mask = candidate.mask if candidate.mask in vocab else None
            return SpecialTokens(candidate.bos, candidate.pad, candidate.eos, candidate.unk, mask)
    if override is not None:
        missing = {role: token for role, token in override.required().items() if token not in vocab}
        raise TokenizerError(f"the vocabulary lacks these special tokens: {missing}")
    raise TokenizerError(
        "could not find bos/pad/eos/unk tokens in the vocabulary; tried "
        + "; ".join(str(list(c.required().values())) for c in KNOWN_SPECIAL_TOKENS)
        + ". Pass special_tokens=SpecialTokens(...) explicitly."
    )


def read_json_vocab(vocab_json: PathLike) -> dict[str, int]:
    """Read a ``vocab.json`` / ``encoder.json`` mapping token -> id."""
    try:
        with open(vocab_json, encoding="utf-8") as handle:
            vocab = json.load(handle)
    except (OSError, json.JSONDecodeError) as error:
        raise TokenizerError(f"cannot read BPE vocabulary {vocab_json}: {error}") from error
    if not isinstance(vocab, dict) or not all(isinstance(i, int) for i in vocab.values()):
        raise TokenizerError(f"{vocab_json} is not a JSON object mapping tokens to integer ids")
    return vocab


def read_merges(merges_txt: PathLike) -> list[tuple[str, str]]:
    """Read a GPT-2 style merges file (``merges.txt`` / ``vocab.bpe``), skipping the ``#version`` header."""
    try:
        lines = Path(merges_txt).read_text(encoding="utf-8").splitlines()
    except OSError as error:
        raise TokenizerError(f"cannot read BPE merges {merges_txt}: {error}") from error
    merges: list[tuple[str, str]] = []
    for line_number, line in enumerate(lines, start=1):
        if not line.strip() or (line_number == 1 and line.startswith("#version")):
            continue
        parts = line.split(" ")
        if len(parts) != 2:
            raise TokenizerError(
                f"{merges_txt}:{line_number}: expected two space-separated symbols, got {line!r}"
            )
        merges.append((parts[0], parts[1]))
    return merges


def read_fairseq_dict(dict_txt: PathLike) -> list[str]:
    """Read the symbols (first column) of a fairseq ``dict.txt``, in file order."""
    try:
        lines = Path(dict_txt).read_text(encoding="utf-8").splitlines()
    except OSError as error:
        raise TokenizerError(f"cannot read fairseq dictionary {dict_txt}: {error}") from error
    return [line.split(" ")[0] for line in lines if line.strip()]


def fairseq_layout(
    gpt2_vocab: Mapping[str, int], dict_symbols: Iterable[str] | None = None
) -> dict[str, int]:
    """Re-number a raw GPT-2 vocabulary the way fairseq / BART / OFA do.

    Layout: ``<s> <pad> </s> <unk>`` at 0..3, then the BPE pieces, then ``madeupwordNNNN`` fillers up to a
    multiple of 8, then ``<mask>``. Pieces follow ``dict_symbols`` (the lines of fairseq's ``dict.txt``,
    each a GPT-2 id) when given, which reproduces the official BART/OFA ids exactly; otherwise they keep
    GPT-2 id order (piece id = GPT-2 id + 4), which gives the official *size* (50265 for GPT-2) and thus the
    official code/bin offsets, but not the official text ids.
    """
    piece_by_gpt2_id = {gpt2_id: piece for piece, gpt2_id in gpt2_vocab.items()}
    symbols = list(BPE_SPECIAL_TOKENS.required().values())
    if dict_symbols is None:
        symbols.extend(piece_by_gpt2_id[i] for i in sorted(piece_by_gpt2_id))
    else:
        for symbol in dict_symbols:
            if symbol.isdigit():
                if int(symbol) not in piece_by_gpt2_id:
                    raise TokenizerError(
                        f"fairseq dictionary names GPT-2 id {symbol}, absent from the vocabulary"
                    )
                symbols.append(piece_by_gpt2_id[int(symbol)])
            else:
                symbols.append(symbol)
    filler = 0
    while len(symbols) % FAIRSEQ_PAD_MULTIPLE:
        if f"madeupword{filler:04d}" not in symbols:
            symbols.append(f"madeupword{filler:04d}")
        filler += 1
    symbols.append("<mask>")
    layout: dict[str, int] = {}
    for symbol in symbols:
        if symbol in layout:
            raise TokenizerError(f"symbol {symbol!r} occurs twice in the fairseq layout")
        layout[symbol] = len(layout)
    return layout


def register_special_tokens(tokenizer: Tokenizer, special_tokens: SpecialTokens) -> None:
    """Mark the special tokens as special (never split, droppable on decode); their ids stay unchanged."""
    roles = [*special_tokens.required().values(), special_tokens.mask]
    # <mask> gets no lstrip: " a <mask>" keeps its space token, as the HF OFA port (transformers 5) does.
    tokens = [AddedToken(token, special=True, normalized=False) for token in roles if token is not None]
    tokenizer.add_special_tokens(tokens)


def build_byte_level_bpe(
    vocab: Mapping[str, int],
    merges: list[tuple[str, str]],
    special_tokens: SpecialTokens,
    add_prefix_space: bool,
) -> Tokenizer:
    """A GPT-2/RoBERTa-style byte-level BPE tokenizer (no post-processor: bos/eos are added by the caller)."""
    tokenizer = Tokenizer(models.BPE(vocab=dict(vocab), merges=merges, unk_token=special_tokens.unk))
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=add_prefix_space)
    tokenizer.decoder = decoders.ByteLevel()
    register_special_tokens(tokenizer, special_tokens)
    return tokenizer


def read_wordpiece_vocab(vocab_txt: PathLike) -> dict[str, int]:
    """Read a BERT ``vocab.txt`` (one token a line; the line number is the id)."""
    try:
        vocab = models.WordPiece.read_file(str(vocab_txt))
    except Exception as error:  # the Rust reader raises plain Exception
        raise TokenizerError(f"cannot read WordPiece vocabulary {vocab_txt}: {error}") from error
    if not vocab:
        raise TokenizerError(f"WordPiece vocabulary {vocab_txt} is empty")
    return dict(vocab)


def build_wordpiece(vocab: Mapping[str, int], special_tokens: SpecialTokens, lowercase: bool) -> Tokenizer:
    """A BERT WordPiece tokenizer: BERT basic tokenisation (clean-up, CJK characters split, optional
    lower-casing with accent stripping), then greedy longest-match WordPiece with ``##`` continuations."""
    tokenizer = Tokenizer(
        models.WordPiece(vocab=dict(vocab), unk_token=special_tokens.unk, max_input_chars_per_word=100)
    )
    tokenizer.normalizer = normalizers.BertNormalizer(
        clean_text=True, handle_chinese_chars=True, strip_accents=None, lowercase=lowercase
    )
    tokenizer.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tokenizer.decoder = decoders.WordPiece(prefix="##", cleanup=True)
    register_special_tokens(tokenizer, special_tokens)
    return tokenizer


def load_tokenizer_json(path: PathLike) -> Tokenizer:
    """Load a ``tokenizer.json``; its own padding, truncation and post-processing are switched off."""
    try:
        tokenizer = Tokenizer.from_file(str(path))
    except Exception as error:  # the Rust loader raises plain Exception
        raise TokenizerError(f"cannot load tokenizer file {path}: {error}") from error
    tokenizer.no_padding()
    tokenizer.no_truncation()
    return tokenizer


# CJK ranges of BERT's `_is_chinese_char`, plus CJK punctuation and full-width forms.
_CJK = (
    "\u4e00-\u9fff\u3400-\u4dbf\uf900-\ufaff\u3000-\u303f\uff00-\uffef"
    "\U00020000-\U0002a6df\U0002a700-\U0002b73f\U0002b740-\U0002b81f\U0002b820-\U0002ceaf\U0002f800-\U0002fa1f"
)
_SPACE_BETWEEN_CJK = re.compile(rf"(?<=[{_CJK}])\s+(?=[{_CJK}])")


def join_cjk(text: str) -> str:
    """Remove the spaces a WordPiece decoder puts between CJK characters ("一 只 猫 。" -> "一只猫。")."""
    return _SPACE_BETWEEN_CJK.sub("", text)
