"""The unified OFA tokenizer: text ids, then image-code ids, then location-bin ids.

Vocabulary layout (``T`` text entries, ``K`` codes, ``N`` bins)::

    [0, T)          text vocabulary, special tokens and (for BPE) <mask> included
    [T, T + K)      <code_0> ... <code_{K-1}>   image (VQGAN) codes
    [T + K, T + K + N)  <bin_0> ... <bin_{N-1}>   location bins

This is the official OFA order: for the English checkpoints ``T = 50265`` (BART vocabulary, ``<s>``=0,
``<pad>``=1, ``</s>``=2, ``<unk>``=3, ``<mask>``=50264), codes at 50265..58456 and bins at 58457..59456,
59457 ids in total.

Code and bin ids are computed arithmetically from their index; they are never run through the text
tokenizer (the HF OFA port's added tokens produce stray space tokens between them). ``encode`` still
accepts ``<code_k>`` / ``<bin_k>`` markers inside a text and maps them straight to ids, with the
whitespace around a marker acting as a separator, as in fairseq's ``use_bpe=False`` symbols.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch

from ofa.tokenization.boxes import bins_to_box, box_to_bins
from ofa.tokenization.text import (
    BPE_SPECIAL_TOKENS,
    LOCATION_TOKEN_PATTERN,
    PathLike,
    SpecialTokens,
    TokenizerError,
    build_byte_level_bpe,
    build_wordpiece,
    detect_special_tokens,
    fairseq_layout,
    join_cjk,
    load_tokenizer_json,
    read_fairseq_dict,
    read_json_vocab,
    read_merges,
    read_wordpiece_vocab,
)
from tokenizers import Tokenizer, decoders

#: File written by :meth:`OFATokenizer.save_pretrained` next to the text tokenizer.
CONFIG_FILE = "ofa_tokenizer.json"
#: The text tokenizer file written by :meth:`OFATokenizer.save_pretrained`.
TOKENIZER_FILE = "tokenizer.json"
CONFIG_FORMAT = "ofa_tokenizer"
CONFIG_FORMAT_VERSION = 1
DEFAULT_NUM_CODES = 8192
DEFAULT_NUM_BINS = 1000

TokenizerKind = Literal["bpe", "wordpiece", "tokenizer_json"]
IdsLike = int | Sequence[int] | np.ndarray | torch.Tensor


class OFATokenizer:
    """Text tokenizer plus ``num_codes`` image-code tokens plus ``num_bins`` location-bin tokens.

    Build one with :meth:`from_bpe`, :meth:`from_wordpiece`, :meth:`from_tokenizer_json` or
    :meth:`from_pretrained`; or wrap any ``tokenizers.Tokenizer`` directly. Special tokens are detected
    from the vocabulary (``<s> <pad> </s> <unk>`` first, then BERT's ``[CLS] [PAD] [SEP] [UNK]``) unless
    ``special_tokens`` is given. A ``tokenizer.json`` that already contains the code and bin tokens is
    accepted when they sit exactly at the layout above.
    """

    def __init__(
        self,
        text_tokenizer: Tokenizer,
        num_codes: int = DEFAULT_NUM_CODES,
        num_bins: int = DEFAULT_NUM_BINS,
        *,
        special_tokens: SpecialTokens | None = None,
        kind: TokenizerKind = "tokenizer_json",
    ) -> None:
        for name, value in (("num_codes", num_codes), ("num_bins", num_bins)):
            if not isinstance(value, int) or isinstance(value, bool) or value < 0:
                raise TokenizerError(f"{name} must be a non-negative integer, got {value!r}")
        text_tokenizer.no_padding()
        text_tokenizer.no_truncation()
        vocab = text_tokenizer.get_vocab(with_added_tokens=True)
        self._text = text_tokenizer
        self._kind: TokenizerKind = kind
        self._special_tokens = detect_special_tokens(vocab, special_tokens)
        self._num_codes = num_codes
        self._num_bins = num_bins
        self._text_vocab_size = _text_vocab_size(vocab, num_codes, num_bins)
        self._bos_id, self._pad_id, self._eos_id, self._unk_id = (
            vocab[token] for token in self._special_tokens.required().values()
        )
        self._mask_id = None if self._special_tokens.mask is None else vocab[self._special_tokens.mask]
        added_special = {i for i, token in text_tokenizer.get_added_tokens_decoder().items() if token.special}
        self._special_ids = frozenset(
            {self._bos_id, self._pad_id, self._eos_id, self._unk_id}
            | ({self._mask_id} if self._mask_id is not None else set())
            | {i for i in added_special if i < self._text_vocab_size}
        )
        self._joins_cjk = isinstance(text_tokenizer.decoder, decoders.WordPiece)

    # ------------------------------------------------------------------ constructors

    @classmethod
    def from_bpe(
        cls,
        vocab_json: PathLike,
        merges_txt: PathLike,
        num_codes: int = DEFAULT_NUM_CODES,
        num_bins: int = DEFAULT_NUM_BINS,
        *,
        fairseq_dict: PathLike | None = None,
        add_prefix_space: bool = True,
        special_tokens: SpecialTokens | None = None,
    ) -> OFATokenizer:
        """English byte-level BPE from ``vocab.json`` + ``merges.txt`` (or GPT-2's ``encoder.json`` + ``vocab.bpe``).

        * A BART ``vocab.json`` (``<s>``=0 ... ``<mask>``=50264) is used as is: exactly the official ids.
        * A raw GPT-2 ``encoder.json`` has no special tokens; it is re-numbered the fairseq way
          (:func:`~ofa.tokenization.text.fairseq_layout`): ``<s> <pad> </s> <unk>`` at 0..3, pieces, fillers,
          ``<mask>``. With ``fairseq_dict`` (OFA's ``utils/BPE/dict.txt``) the pieces follow its order and
          the ids equal the official ones; without it, piece id = GPT-2 id + 4 (same size, 50265, so code
          and bin ids match the official ones, but text ids do not).

        ``add_prefix_space`` adds a leading space to a text that lacks one (OFA prompts always start with a
        space); texts that already start with a space encode exactly as in fairseq and the HF port.
        """
        vocab = read_json_vocab(vocab_json)
        merges = read_merges(merges_txt)
        if fairseq_dict is not None:
            vocab = fairseq_layout(vocab, read_fairseq_dict(fairseq_dict))
        elif special_tokens is None and not all(t in vocab for t in BPE_SPECIAL_TOKENS.required().values()):
            vocab = fairseq_layout(vocab)
        specials = detect_special_tokens(vocab, special_tokens)
        try:
            text_tokenizer = build_byte_level_bpe(vocab, merges, specials, add_prefix_space)
        except Exception as error:  # the Rust BPE constructor raises plain Exception
            raise TokenizerError(f"cannot build BPE from {vocab_json} and {merges_txt}: {error}") from error
        return cls(text_tokenizer, num_codes, num_bins, special_tokens=specials, kind="bpe")

    @classmethod
    def from_wordpiece(
        cls,
        vocab_txt: PathLike,
        num_codes: int = DEFAULT_NUM_CODES,
        num_bins: int = DEFAULT_NUM_BINS,
        *,
        lowercase: bool = True,
        special_tokens: SpecialTokens | None = None,
    ) -> OFATokenizer:
        """BERT WordPiece from ``vocab.txt`` (e.g. Chinese CLIP's BERT-Chinese vocabulary).

        Ids are the line numbers of ``vocab.txt``; codes and bins follow the last line. Special tokens are
        ``[CLS]`` (bos), ``[PAD]``, ``[SEP]`` (eos), ``[UNK]`` and ``[MASK]`` (for BERT-Chinese: 101, 0,
        102, 100, 103), or ``<s> <pad> </s> <unk> <mask>`` if the file has those. Use the ``bos_id`` ...
        properties rather than fixed numbers.
        """
        vocab = read_wordpiece_vocab(vocab_txt)
        specials = detect_special_tokens(vocab, special_tokens)
        return cls(
            build_wordpiece(vocab, specials, lowercase),
            num_codes,
            num_bins,
            special_tokens=specials,
            kind="wordpiece",
        )

    @classmethod
    def from_tokenizer_json(
        cls,
        path: PathLike,
        num_codes: int = DEFAULT_NUM_CODES,
        num_bins: int = DEFAULT_NUM_BINS,
        *,
        special_tokens: SpecialTokens | None = None,
        kind: TokenizerKind = "tokenizer_json",
    ) -> OFATokenizer:
        """Any ``tokenizer.json`` made with the `tokenizers` library (its post-processor is not used)."""
        return cls(load_tokenizer_json(path), num_codes, num_bins, special_tokens=special_tokens, kind=kind)

    @classmethod
    def from_pretrained(
        cls, directory: PathLike, num_codes: int | None = None, num_bins: int | None = None
    ) -> OFATokenizer:
        """Load from a folder, detecting the files in this order:

        1. ``ofa_tokenizer.json`` naming a ``text_tokenizer_file`` (what :meth:`save_pretrained` writes);
        2. ``vocab.json`` + ``merges.txt`` (BART / HF OFA folders) -> :meth:`from_bpe`;
        3. ``encoder.json`` + ``vocab.bpe`` (+ optional fairseq ``dict.txt``, as in OFA's ``utils/BPE``);
        4. ``vocab.txt`` -> :meth:`from_wordpiece`;
        5. ``tokenizer.json`` -> :meth:`from_tokenizer_json`.

        ``num_codes`` / ``num_bins`` default to the values in ``ofa_tokenizer.json``, else 8192 / 1000.
        ``ofa_tokenizer.json`` may also carry ``special_tokens``, ``add_prefix_space`` and ``lowercase``.
        """
        folder = Path(directory)
        if not folder.is_dir():
            raise TokenizerError(f"tokenizer folder {folder} does not exist or is not a folder")
        config = _read_config(folder / CONFIG_FILE)
        codes = num_codes if num_codes is not None else config.get("num_codes", DEFAULT_NUM_CODES)
        bins = num_bins if num_bins is not None else config.get("num_bins", DEFAULT_NUM_BINS)
        specials = SpecialTokens.from_dict(config["special_tokens"]) if "special_tokens" in config else None
        add_prefix_space = bool(config.get("add_prefix_space", True))

        def exists(*names: str) -> bool:
            return all((folder / name).is_file() for name in names)

        if "text_tokenizer_file" in config:
            text_file = folder / str(config["text_tokenizer_file"])
            if not text_file.is_file():
                raise TokenizerError(
                    f"{folder / CONFIG_FILE} names {text_file.name}, which is missing in {folder}"
                )
            tokenizer = cls.from_tokenizer_json(
                text_file, codes, bins, special_tokens=specials, kind=config.get("kind", "tokenizer_json")
            )
        elif exists("vocab.json", "merges.txt"):
            tokenizer = cls.from_bpe(
                folder / "vocab.json",
                folder / "merges.txt",
                codes,
                bins,
                add_prefix_space=add_prefix_space,
                special_tokens=specials,
            )
        elif exists("encoder.json", "vocab.bpe"):
            tokenizer = cls.from_bpe(
                folder / "encoder.json",
                folder / "vocab.bpe",
                codes,
                bins,
                fairseq_dict=folder / "dict.txt" if exists("dict.txt") else None,
                add_prefix_space=add_prefix_space,
                special_tokens=specials,
            )
        elif exists("vocab.txt"):
            tokenizer = cls.from_wordpiece(
                folder / "vocab.txt",
                codes,
                bins,
                lowercase=bool(config.get("lowercase", True)),
                special_tokens=specials,
            )
        elif exists(TOKENIZER_FILE):
            tokenizer = cls.from_tokenizer_json(folder / TOKENIZER_FILE, codes, bins, special_tokens=specials)
        else:
            found = sorted(p.name for p in folder.iterdir()) or ["nothing"]
            raise TokenizerError(
                f"no usable tokenizer files in {folder}: expected vocab.json + merges.txt, encoder.json + "
                f"vocab.bpe, vocab.txt or tokenizer.json; found {', '.join(found)}"
            )
        expected_text_size = config.get("text_vocab_size")
        if expected_text_size is not None and expected_text_size != tokenizer.text_vocab_size:
            raise TokenizerError(
                f"{folder / CONFIG_FILE} says text_vocab_size={expected_text_size}, "
                f"but the tokenizer files in {folder} give {tokenizer.text_vocab_size}"
            )
        return tokenizer

    def save_pretrained(self, directory: PathLike) -> Path:
        """Write ``tokenizer.json`` (text part) and ``ofa_tokenizer.json`` into ``directory``; returns it."""
        folder = Path(directory)
        folder.mkdir(parents=True, exist_ok=True)
        self._text.save(str(folder / TOKENIZER_FILE))
        config = {
            "format": CONFIG_FORMAT,
            "format_version": CONFIG_FORMAT_VERSION,
            "kind": self._kind,
            "text_tokenizer_file": TOKENIZER_FILE,
            "text_vocab_size": self._text_vocab_size,
            "num_codes": self._num_codes,
            "num_bins": self._num_bins,
            "special_tokens": self._special_tokens.to_dict(),
        }
        (folder / CONFIG_FILE).write_text(json.dumps(config, indent=2) + "\n", encoding="utf-8")
        return folder

    # ------------------------------------------------------------------ layout

    @property
    def text_tokenizer(self) -> Tokenizer:
        """The underlying `tokenizers` text tokenizer (no code or bin tokens)."""
        return self._text

    @property
    def kind(self) -> TokenizerKind:
        return self._kind

    @property
    def special_tokens(self) -> SpecialTokens:
        return self._special_tokens

    @property
    def bos_id(self) -> int:
        return self._bos_id

    @property
    def pad_id(self) -> int:
        return self._pad_id

    @property
    def eos_id(self) -> int:
        return self._eos_id

    @property
    def unk_id(self) -> int:
        return self._unk_id

    @property
    def mask_id(self) -> int | None:
        return self._mask_id

    @property
    def special_ids(self) -> frozenset[int]:
        """Ids that ``decode(..., skip_special_tokens=True)`` drops from the text (bos, pad, eos, unk, mask ...)."""
        return self._special_ids

    @property
    def num_codes(self) -> int:
        return self._num_codes

    @property
    def num_bins(self) -> int:
        return self._num_bins

    @property
    def text_vocab_size(self) -> int:
        return self._text_vocab_size

    @property
    def vocab_size(self) -> int:
        """Total number of ids: text + codes + bins."""
        return self._text_vocab_size + self._num_codes + self._num_bins

    def __len__(self) -> int:
        return self.vocab_size

    @property
    def text_range(self) -> tuple[int, int]:
        """Half-open id range of the text vocabulary."""
        return 0, self._text_vocab_size

    @property
    def code_range(self) -> tuple[int, int]:
        """Half-open id range of the image-code tokens."""
        return self._text_vocab_size, self._text_vocab_size + self._num_codes

    @property
    def bin_range(self) -> tuple[int, int]:
        """Half-open id range of the location-bin tokens."""
        start = self._text_vocab_size + self._num_codes
        return start, start + self._num_bins

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(kind={self._kind!r}, text={self.text_range}, codes={self.code_range}, "
            f"bins={self.bin_range}, bos/pad/eos/unk={self.bos_id}/{self.pad_id}/{self.eos_id}/{self.unk_id})"
        )

    # ------------------------------------------------------------------ codes and bins

    def code_to_id(self, codes: IdsLike) -> Any:
        """Code indices in ``[0, num_codes)`` -> token ids. Vectorised; returns the input's kind."""
        return _shift(codes, self.code_range[0], (0, self._num_codes), "code index")

    def id_to_code(self, ids: IdsLike) -> Any:
        """Code token ids -> code indices. Raises ``ValueError`` for an id outside ``code_range``."""
        return _shift(ids, -self.code_range[0], self.code_range, "code token id")

    def bin_to_id(self, bins: IdsLike) -> Any:
        """Bin indices in ``[0, num_bins)`` -> token ids. Vectorised; returns the input's kind."""
        return _shift(bins, self.bin_range[0], (0, self._num_bins), "bin index")

    def id_to_bin(self, ids: IdsLike) -> Any:
        """Bin token ids -> bin indices. Raises ``ValueError`` for an id outside ``bin_range``."""
        return _shift(ids, -self.bin_range[0], self.bin_range, "bin token id")

    def is_code_id(self, ids: IdsLike) -> Any:
        """Whether each id is an image-code token (bool, or a bool array/tensor/list)."""
        return _in_range(ids, self.code_range)

    def is_bin_id(self, ids: IdsLike) -> Any:
        """Whether each id is a location-bin token (bool, or a bool array/tensor/list)."""
        return _in_range(ids, self.bin_range)

    def decode_codes(self, ids: IdsLike) -> Any:
        """Code indices of the code tokens in a 1-D id sequence, in order; other ids are ignored.

        Returns a 1-D LongTensor for tensor input, else a list of ints.
        """
        return _select_and_shift(ids, self.code_range)

    def decode_bins(self, ids: IdsLike) -> Any:
        """Bin indices of the bin tokens in a 1-D id sequence, in order; other ids are ignored."""
        return _select_and_shift(ids, self.bin_range)

    def box_to_ids(
        self,
        box_xyxy: Any,
        image_w: float,
        image_h: float,
        max_image_size: float = 512,
        resize_to: float | tuple[float, float] | None = None,
    ) -> Any:
        """Pixel box(es) -> 4 bin token ids each (see :func:`~ofa.tokenization.boxes.box_to_bins`)."""
        bins = box_to_bins(box_xyxy, image_w, image_h, self._num_bins, max_image_size, resize_to)
        return self.bin_to_id(bins)

    def ids_to_box(
        self,
        ids: IdsLike,
        image_w: float,
        image_h: float,
        max_image_size: float = 512,
        resize_to: float | tuple[float, float] | None = None,
    ) -> Any:
        """4 bin token ids (or ``(N, 4)``) -> float32 pixel box(es); every id must be a bin id."""
        bins = self.id_to_bin(ids)
        return bins_to_box(bins, image_w, image_h, self._num_bins, max_image_size, resize_to)

    # ------------------------------------------------------------------ tokens

    def id_to_token(self, token_id: int) -> str:
        """The string of one id: a text token, ``<code_k>`` or ``<bin_k>``."""
        token_id = int(token_id)
        if self.code_range[0] <= token_id < self.code_range[1]:
            return f"<code_{token_id - self.code_range[0]}>"
        if self.bin_range[0] <= token_id < self.bin_range[1]:
            return f"<bin_{token_id - self.bin_range[0]}>"
        token = self._text.id_to_token(token_id) if 0 <= token_id < self._text_vocab_size else None
        if token is None:
            raise ValueError(f"id {token_id} is not in the vocabulary (size {self.vocab_size})")
        return token

    def token_to_id(self, token: str) -> int:
        """The id of one token string (text token, ``<code_k>`` or ``<bin_k>``)."""
        match = LOCATION_TOKEN_PATTERN.fullmatch(token)
        if match is not None:
            return self._location_id(match.group(1), int(match.group(2)))
        token_id = self._text.token_to_id(token)
        if token_id is None or token_id >= self._text_vocab_size:
            raise ValueError(f"token {token!r} is not in the vocabulary")
        return token_id

    def ids_to_tokens(self, ids: IdsLike) -> list[str]:
        return [self.id_to_token(i) for i in _as_id_list(ids)]

    def _location_id(self, kind: str, index: int) -> int:
        if kind == "code":
            if not 0 <= index < self._num_codes:
                raise ValueError(
                    f"<code_{index}> is out of range: this tokenizer has {self._num_codes} codes"
                )
            return self.code_range[0] + index
        if not 0 <= index < self._num_bins:
            raise ValueError(f"<bin_{index}> is out of range: this tokenizer has {self._num_bins} bins")
        return self.bin_range[0] + index

    # ------------------------------------------------------------------ encoding

    def encode(self, text: str, add_special_tokens: bool = True) -> list[int]:
        """Token ids of one text, wrapped as ``[bos] ... [eos]`` unless ``add_special_tokens=False``.

        ``<code_k>`` / ``<bin_k>`` markers are mapped straight to their ids.
        """
        return self._encode_texts([text], add_special_tokens)[0]

    def batch_encode(
        self,
        texts: Sequence[str],
        max_length: int | None = None,
        truncation: bool = True,
        padding: Literal["longest", "max_length"] = "longest",
        add_special_tokens: bool = True,
    ) -> dict[str, torch.Tensor]:
        """Encode texts and right-pad them with ``pad_id``.

        ``max_length`` counts every token, bos and eos included. Longer sequences are cut to
        ``bos + first tokens + eos`` when ``truncation`` is true and raise ``ValueError`` otherwise.
        ``padding="max_length"`` pads to ``max_length`` instead of the longest sequence.
        Returns ``{"input_ids": LongTensor (B, L), "attention_mask": LongTensor (B, L)}`` (1 = token).
        """
        if isinstance(texts, str):
            raise TypeError("batch_encode takes a list of texts; use encode() for a single text")
        if padding not in ("longest", "max_length"):
            raise ValueError(f"padding must be 'longest' or 'max_length', got {padding!r}")
        if padding == "max_length" and max_length is None:
            raise ValueError("padding='max_length' needs max_length")
        minimum = 2 if add_special_tokens else 1
        if max_length is not None and max_length < minimum:
            raise ValueError(f"max_length must be at least {minimum}, got {max_length}")
        sequences = self._encode_texts(list(texts), add_special_tokens)
        if max_length is not None:
            for index, sequence in enumerate(sequences):
                if len(sequence) <= max_length:
                    continue
                if not truncation:
                    raise ValueError(
                        f"text {index} encodes to {len(sequence)} tokens, more than max_length={max_length} "
                        "(pass truncation=True to cut it)"
                    )
                if add_special_tokens:
                    sequences[index] = sequence[: max_length - 1] + [self._eos_id]
                else:
                    sequences[index] = sequence[:max_length]
        longest = max((len(s) for s in sequences), default=0)
        width = max_length if padding == "max_length" and max_length is not None else longest
        input_ids = torch.full((len(sequences), width), self._pad_id, dtype=torch.long)
        attention_mask = torch.zeros((len(sequences), width), dtype=torch.long)
        for row, sequence in enumerate(sequences):
            input_ids[row, : len(sequence)] = torch.tensor(sequence, dtype=torch.long)
            attention_mask[row, : len(sequence)] = 1
        return {"input_ids": input_ids, "attention_mask": attention_mask}

    def _encode_texts(self, texts: list[str], add_special_tokens: bool) -> list[list[int]]:
        """Encode several texts with one batched call of the text tokenizer."""
        plans: list[list[tuple[bool, int]]] = []  # (is_text_chunk, chunk index or token id)
        chunks: list[str] = []
        for text in texts:
            if not isinstance(text, str):
                raise TypeError(f"expected a str to encode, got {type(text).__name__}")
            plan: list[tuple[bool, int]] = []
            position = 0
            for match in LOCATION_TOKEN_PATTERN.finditer(text):
                before = text[position : match.start()].rstrip()
                if before:
                    plan.append((True, len(chunks)))
                    chunks.append(before)
                plan.append((False, self._location_id(match.group(1), int(match.group(2)))))
                position = match.end()
            tail = text[position:]
            if not plan or tail.strip():
                plan.append((True, len(chunks)))
                chunks.append(tail)
            plans.append(plan)
        encodings = self._text.encode_batch(chunks, add_special_tokens=False) if chunks else []
        sequences = []
        for plan in plans:
            sequence = [self._bos_id] if add_special_tokens else []
            for is_text, value in plan:
                if is_text:
                    sequence.extend(encodings[value].ids)
                else:
                    sequence.append(value)
            if add_special_tokens:
                sequence.append(self._eos_id)
            sequences.append(sequence)
        return sequences

    # ------------------------------------------------------------------ decoding

    def decode(self, ids: IdsLike, skip_special_tokens: bool = True, strip: bool = True) -> str:
        """Text of a 1-D id sequence.

        With ``skip_special_tokens`` the special tokens (bos, pad, eos, unk, mask), codes and bins are
        dropped; otherwise codes and bins appear as ``<code_k>`` / ``<bin_k>`` with no spaces added.
        ``strip`` removes leading and trailing whitespace (BPE texts decode with their leading space).
        """
        id_list = _as_id_list(ids)
        for token_id in id_list:
            if not 0 <= token_id < self.vocab_size:
                raise ValueError(f"id {token_id} is not in the vocabulary (size {self.vocab_size})")
        pieces: list[str] = []
        run: list[int] = []
        for token_id in id_list:
            if token_id < self._text_vocab_size:
                if not (skip_special_tokens and token_id in self._special_ids):
                    run.append(token_id)
            elif not skip_special_tokens:
                pieces.append(self._decode_text(run, skip_special_tokens))
                run = []
                pieces.append(self.id_to_token(token_id))
        pieces.append(self._decode_text(run, skip_special_tokens))
        text = "".join(pieces)
        return text.strip() if strip else text

    def batch_decode(self, ids: IdsLike, skip_special_tokens: bool = True, strip: bool = True) -> list[str]:
        """:meth:`decode` for each row of a 2-D tensor/array or a list of sequences."""
        rows = ids.tolist() if isinstance(ids, torch.Tensor | np.ndarray) else ids
        return [self.decode(row, skip_special_tokens, strip) for row in rows]  # type: ignore[union-attr]

    def _decode_text(self, ids: list[int], skip_special_tokens: bool) -> str:
        if not ids:
            return ""
        text = self._text.decode(ids, skip_special_tokens=skip_special_tokens)
        return join_cjk(text) if self._joins_cjk else text


# ---------------------------------------------------------------------- helpers


def _read_config(path: Path) -> dict[str, Any]:
    if not path.is_file():
        return {}
    try:
        config = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as error:
        raise TokenizerError(f"cannot read {path}: {error}") from error
    if not isinstance(config, dict):
        raise TokenizerError(f"{path} must hold a JSON object")
    return config


def _text_vocab_size(vocab: dict[str, int], num_codes: int, num_bins: int) -> int:
    """Size of the text part; checks that code/bin tokens already in the vocabulary sit where they belong."""
    location = {token: i for token, i in vocab.items() if LOCATION_TOKEN_PATTERN.fullmatch(token)}
    text_ids = [i for token, i in vocab.items() if token not in location]
    if not text_ids:
        raise TokenizerError("the text vocabulary is empty")
    size = max(text_ids) + 1
    if location:
        expected = {f"<code_{k}>": size + k for k in range(num_codes)}
        expected.update({f"<bin_{k}>": size + num_codes + k for k in range(num_bins)})
        if location != expected:
            raise TokenizerError(
                f"the tokenizer already holds {len(location)} <code_*>/<bin_*> tokens, but not exactly "
                f"{num_codes} codes from id {size} followed by {num_bins} bins; pass the matching "
                "num_codes/num_bins or remove them"
            )
    return size


def _as_id_list(ids: IdsLike) -> list[int]:
    if isinstance(ids, torch.Tensor | np.ndarray):
        if ids.ndim != 1:
            raise ValueError(f"expected a 1-D id sequence, got shape {tuple(ids.shape)}")
        return [int(i) for i in ids.tolist()]
    if isinstance(ids, int | np.integer):
        return [int(ids)]
    return [int(i) for i in ids]


def _check_integer_dtype(values: torch.Tensor | np.ndarray, what: str) -> None:
    if isinstance(values, torch.Tensor):
        ok = not values.dtype.is_floating_point and not values.dtype.is_complex and values.dtype != torch.bool
    else:
        ok = np.issubdtype(values.dtype, np.integer)
    if not ok:
        raise TypeError(f"{what}s must be integers, got dtype {values.dtype}")


def _shift(values: IdsLike, offset: int, valid: tuple[int, int], what: str) -> Any:
    """Add ``offset`` to integer values after checking that they lie in the half-open range ``valid``."""
    low, high = valid

    def fail(bad: int) -> ValueError:
        return ValueError(f"{what} {bad} is out of range [{low}, {high})")

    if isinstance(values, torch.Tensor):
        _check_integer_dtype(values, what)
        outside = (values < low) | (values >= high)
        if outside.any():
            raise fail(int(values[outside].flatten()[0]))
        return values.long() + offset
    if isinstance(values, int | np.integer) and not isinstance(values, bool):
        if not low <= int(values) < high:
            raise fail(int(values))
        return int(values) + offset
    array = np.asarray(values)
    if array.size == 0:
        return values if not isinstance(values, np.ndarray) else array.astype(np.int64)
    _check_integer_dtype(array, what)
    outside = (array < low) | (array >= high)
    if outside.any():
        raise fail(int(array[outside].flat[0]))
    shifted = array.astype(np.int64) + offset
    return shifted if isinstance(values, np.ndarray) else shifted.tolist()


def _in_range(values: IdsLike, id_range: tuple[int, int]) -> Any:
    low, high = id_range
    if isinstance(values, torch.Tensor):
        return (values >= low) & (values < high)
    if isinstance(values, int | np.integer):
        return bool(low <= int(values) < high)
    array = np.asarray(values)
    inside = (array >= low) & (array < high)
    return inside if isinstance(values, np.ndarray) else inside.tolist()


def _select_and_shift(ids: IdsLike, id_range: tuple[int, int]) -> Any:
    low, high = id_range
    if isinstance(ids, torch.Tensor):
        if ids.dim() != 1:
            raise ValueError(f"expected a 1-D id sequence, got shape {tuple(ids.shape)}")
        return ids[(ids >= low) & (ids < high)].long() - low
    return [i - low for i in _as_id_list(ids) if low <= i < high]
