"""The world text tokenizer: Chinese split into the world's words, never fusing a colour with a shape."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from ofa.data.world import World
from ofa.data.world.language import NUM_ZH
from ofa.data.world.tokenizer import build_world_tokenizer, world_chinese_words
from ofa.data.world.vocab import COLOUR_ZH, COLOURS, HELDOUT_PAIRS, SHAPE_ZH, SHAPES, SIZE_ZH
from ofa.tokenization import OFATokenizer
from ofa.tokenization.train import cjk_split_pattern, train_bpe_tokenizer

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def shipped() -> OFATokenizer:
    return OFATokenizer.from_pretrained(REPO / "tokenizers/world")


def pieces(tokenizer: OFATokenizer, text: str) -> list[str]:
    return [tokenizer.decode([i]) for i in tokenizer.encode(text)[1:-1]]


def test_split_pattern_prefers_the_longest_word_then_single_characters():
    pattern = re.compile(cjk_split_pattern(["三个", "三角形", "红色"]))
    assert pattern.findall("三个红色三角形和三") == ["三个", "红色", "三角形", "和", "三"]
    assert re.compile(cjk_split_pattern()).findall("红色") == ["红", "色"]


def test_every_chinese_mention_is_four_tokens_like_its_english_one(shipped):
    for colour in COLOURS:
        for shape in SHAPES:
            for size, size_zh in SIZE_ZH.items():
                mention = f"一个{size_zh}的{colour.zh}{shape.zh}"
                assert pieces(shipped, mention) == ["一个", f"{size_zh}的", colour.zh, shape.zh]
                assert len(pieces(shipped, f" a {size} {colour.name} {shape.name}")) == 4


def test_held_out_pairs_are_written_with_the_tokens_of_seen_pairs(shipped):
    seen = {
        piece
        for c in COLOURS
        for s in SHAPES
        if (c.name, s.name) not in HELDOUT_PAIRS
        for piece in pieces(shipped, f"{c.zh}{s.zh}")
    }
    for colour, shape in HELDOUT_PAIRS:
        zh = COLOUR_ZH[colour] + SHAPE_ZH[shape]
        assert set(pieces(shipped, zh)) <= seen
        assert shipped.decode(shipped.encode(zh)) == zh


def test_numerals_and_unknown_characters_still_round_trip(shipped):
    for count in range(1, World().config.max_objects + 1):  # larger counts never occur: bytes, still exact
        assert pieces(shipped, f"{NUM_ZH[count]}个") == [f"{NUM_ZH[count]}个"]
    for text in (
        "从左数第二个圆形",
        "最左边的三角形",
        "图中有四个物体：一个大的青色十字形",
        "一张空白的图片",
        "鹦鹉",
        "九个",
    ):
        assert shipped.decode(shipped.encode(text)) == text


def test_the_committed_assets_are_what_the_builder_writes(shipped, tmp_path):
    built = build_world_tokenizer()
    built.save_pretrained(tmp_path)
    for name in ("tokenizer.json", "ofa_tokenizer.json"):
        assert json.loads((tmp_path / name).read_text()) == json.loads(
            (REPO / "tokenizers/world" / name).read_text()
        )
    assert set(world_chinese_words()) >= {c.zh for c in COLOURS} | {s.zh for s in SHAPES}


def test_without_a_lexicon_each_chinese_character_stands_alone():
    texts = [c for i in range(200) for c in World().scene("train", i).captions["zh"]]
    tokenizer = train_bpe_tokenizer(texts, vocab_size=400, num_codes=8, num_bins=8)
    assert pieces(tokenizer, "一个小的红色圆形") == list("一个小的红色圆形")
