"""Chinese-CLIP text tokenisation, id-for-id identical to `cn_clip.clip.tokenize`.

Chinese-CLIP uses Google's original BERT `FullTokenizer` (basic tokenisation with lower-casing, accent
stripping and one token per CJK character, then WordPiece) over the BERT-Chinese vocab (21128 entries).
A row is `[CLS] + wordpieces[:context_length - 2] + [SEP]`, right-padded with `[PAD]` (id 0).

This is rebuilt from `tokenizers` components *without* registered special tokens, so a literal "[MASK]"
(or "[CLS]", ...) in user text is tokenised as ordinary characters ("[", "mask", "]") like the reference
does, instead of being mapped to the special id as `transformers.BertTokenizer` would.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Sequence
from pathlib import Path

import torch

from tokenizers import Tokenizer, models, normalizers, pre_tokenizers

DEFAULT_CONTEXT_LENGTH = 52
VOCAB_FILENAME = "vocab.txt"


class CNCLIPVocabError(ValueError):
    """The vocabulary file is missing or unusable."""


def normalize_dataset_text(text: str) -> str:
    """The text clean-up Chinese-CLIP's training/eval datasets apply before tokenising.

    Lower-case and replace the curly double quotes U+201C/U+201D by an ASCII `"` (the curly quotes are
    [UNK] in the BERT-Chinese vocab).
    """
    return text.lower().replace("\u201c", '"').replace("\u201d", '"')


def packaged_vocab_path() -> Path | None:
    """`cn_clip/clip/vocab.txt` of an installed `cn_clip` package (located without importing it), or None."""
    try:
        spec = importlib.util.find_spec("cn_clip")
    except (ImportError, ValueError):
        return None
    if spec is None or not spec.submodule_search_locations:
        return None
    for location in spec.submodule_search_locations:
        candidate = Path(location) / "clip" / VOCAB_FILENAME
        if candidate.is_file():
            return candidate
    return None


def _read_vocab(path: Path) -> dict[str, int]:
    # Exactly BERT's load_vocab: text-mode lines (split on \n / \r only, NOT str.splitlines, which also
    # splits on U+0085, U+2028, ... that occur inside some entries), stripped, a later duplicate wins.
    vocab: dict[str, int] = {}
    try:
        with open(path, encoding="utf-8") as f:
            for index, line in enumerate(f):
                vocab[line.strip()] = index
    except FileNotFoundError as e:
        raise CNCLIPVocabError(f"vocabulary file not found: {path}") from e
    except (OSError, UnicodeDecodeError) as e:
        raise CNCLIPVocabError(f"cannot read vocabulary file {path}: {e}") from e
    for special in ("[PAD]", "[UNK]", "[CLS]", "[SEP]"):
        if special not in vocab:
            raise CNCLIPVocabError(f"vocabulary file {path} has no {special} entry; is it a BERT vocab.txt?")
    return vocab


class CNCLIPTokenizer:
    """Chinese-CLIP's tokenizer: `tokenizer(texts) -> LongTensor (N, context_length)`.

    Args:
        vocab_path: the BERT-Chinese `vocab.txt` (Chinese-CLIP ships it as `cn_clip/clip/vocab.txt`).
        context_length: row length including [CLS] and [SEP]; longer texts are silently truncated.
            Chinese-CLIP uses 52 by default (its eval scripts sometimes 24); the BERT tower accepts up to
            its `max_position_embeddings` (512).
    """

    def __init__(self, vocab_path: str | Path, context_length: int = DEFAULT_CONTEXT_LENGTH) -> None:
        if context_length < 2:
            raise ValueError(f"context_length must be >= 2 (room for [CLS] and [SEP]), got {context_length}")
        self.vocab_path = Path(vocab_path)
        self.vocab = _read_vocab(self.vocab_path)
        self.context_length = context_length
        self.pad_id = self.vocab["[PAD]"]
        self.cls_id = self.vocab["[CLS]"]
        self.sep_id = self.vocab["[SEP]"]
        self.unk_id = self.vocab["[UNK]"]
        # cn_clip's WordpieceTokenizer maps words longer than 200 characters to [UNK] (HF's default is 100).
        tok = Tokenizer(
            models.WordPiece(
                self.vocab, unk_token="[UNK]", continuing_subword_prefix="##", max_input_chars_per_word=200
            )
        )
        tok.normalizer = normalizers.BertNormalizer(
            clean_text=True, handle_chinese_chars=True, strip_accents=True, lowercase=True
        )
        tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
        # No post-processor and no added/special tokens: [CLS]/[SEP]/padding are added below.
        self._tok = tok

    def __len__(self) -> int:
        return len(self.vocab)

    def wordpieces(self, text: str, normalize: bool = False) -> list[str]:
        """The WordPiece tokens of `text` (no [CLS]/[SEP], no truncation)."""
        if normalize:
            text = normalize_dataset_text(text)
        return self._tok.encode(text, add_special_tokens=False).tokens

    def __call__(
        self, texts: str | Sequence[str], context_length: int | None = None, normalize: bool = False
    ) -> torch.Tensor:
        """Token ids, shape (N, context_length), int64.

        Args:
            texts: one string or a sequence of strings.
            context_length: override the tokenizer's row length for this call.
            normalize: apply the dataset-side clean-up (`normalize_dataset_text`) first, as Chinese-CLIP's
                training and evaluation datasets do; `cn_clip.clip.tokenize` itself does not.
        """
        if isinstance(texts, str):
            texts = [texts]
        length = self.context_length if context_length is None else context_length
        if length < 2:
            raise ValueError(f"context_length must be >= 2, got {length}")
        texts = [normalize_dataset_text(t) if normalize else t for t in texts]
        out = torch.full((len(texts), length), self.pad_id, dtype=torch.long)
        if not texts:
            return out
        for row, enc in enumerate(self._tok.encode_batch(texts, add_special_tokens=False)):
            ids = [self.cls_id, *enc.ids[: length - 2], self.sep_id]
            out[row, : len(ids)] = torch.tensor(ids, dtype=torch.long)
        return out


def resolve_vocab(vocab_path: str | Path | None, search_dirs: Sequence[Path] = ()) -> Path:
    """Find the vocab: explicit path, else `vocab.txt` in one of `search_dirs`, else the installed cn_clip's."""
    if vocab_path is not None:
        path = Path(vocab_path)
        if not path.is_file():
            raise CNCLIPVocabError(f"vocabulary file not found: {path}")
        return path
    for folder in search_dirs:
        candidate = Path(folder) / VOCAB_FILENAME
        if candidate.is_file():
            return candidate
    packaged = packaged_vocab_path()
    if packaged is not None:
        return packaged
    where = ", ".join(str(d) for d in search_dirs) or "(no folder)"
    raise CNCLIPVocabError(
        f"no Chinese-CLIP vocab.txt: pass vocab_path=, put {VOCAB_FILENAME} in {where}, "
        "or install cn_clip (its cn_clip/clip/vocab.txt is used)"
    )
