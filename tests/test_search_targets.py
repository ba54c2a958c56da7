"""Can a recipe's eval search write the targets it trains on?

World captions repeat 3-grams by design ("a small red circle, a small blue star, a small ..."), so OFA's COCO
setting `no_repeat_ngram_size: 3` made the canonical caption unreachable for beam search: it wrote "two small
blue star" instead and the object-F1 of the shipped checkpoint read 0.925 instead of 0.97. These tests pin the
rule (`first_blocked_position`, checked against the search's own mask by brute force), the trainer's warning
(`blocked_targets_report`) and the world recipes' settings.
"""

from __future__ import annotations

import random
from pathlib import Path

import pytest
import torch

from ofa.generation import first_blocked_position, no_repeat_ngram_mask
from ofa.training import load_recipe

REPO = Path(__file__).resolve().parents[1]
BOS = 0


@pytest.mark.parametrize(
    "tokens, n, expected",
    [
        ([5, 6, 7, 5, 6, 7], 3, 5),  # (5, 6, 7) again: its last token, index 5
        ([5, 6, 5, 6], 2, 3),
        ([5, 6, 5], 1, 2),
        ([BOS, 5], 1, 0),  # bos is part of the prefix
        ([5, 5, 5], 3, None),  # (bos, 5, 5) then (5, 5, 5): no n-gram twice
        ([5, 5, 5, 5], 3, 3),
        ([5, 6, 7, 5, 6, 7], 0, None),  # n = 0: no ban
        ([], 3, None),
    ],
)
def test_first_blocked_position_hand_cases(tokens, n, expected) -> None:
    assert first_blocked_position(tokens, n, BOS) == expected


def test_first_blocked_position_agrees_with_the_search_mask() -> None:
    """Brute force: step by step, is the target's next token banned by `no_repeat_ngram_mask`?"""
    rng = random.Random(0)
    vocab = 4
    for _ in range(300):
        n = rng.randint(1, 4)
        tokens = [rng.randrange(1, vocab) for _ in range(rng.randint(0, 12))]
        expected = None
        for i, token in enumerate(tokens):
            prefix = torch.tensor([[BOS, *tokens[:i]]])
            if no_repeat_ngram_mask(prefix, n, vocab)[0, token]:
                expected = i
                break
        assert first_blocked_position(tokens, n, BOS) == expected, (tokens, n)


def world_tokenizer():
    from ofa.tokenization import OFATokenizer

    return OFATokenizer.from_pretrained(REPO / "tokenizers" / "world")


def test_a_three_object_world_caption_is_blocked_at_its_second_comma_a_small() -> None:
    tok = world_tokenizer()
    caption = "a small red circle, a small blue star, a small green cross and a large black square"
    tokens = tok.encode(caption, add_special_tokens=False)
    # the third mention's ", a small" repeats the second's: its "small" is the first banned token
    head = tok.encode("a small red circle, a small blue star, a", add_special_tokens=False)
    assert first_blocked_position(tokens, 3, tok.bos_id) == len(head)
    assert tok.decode(tokens[len(head) : len(head) + 1]) == "small"
    assert first_blocked_position(tokens, 0, tok.bos_id) is None


def report(path: Path, *overrides: str) -> list[str]:
    from ofa.training.data import MixtureDataModule, blocked_targets_report, make_tasks
    from ofa.training.run import load_tokenizer

    # the stage-2 recipes start from a run's folder; only their data and search matter here
    recipe = load_recipe(path, ["tokenizer.path=tokenizers/world", "model.init_from=null", *overrides])
    tokenizer = load_tokenizer(recipe)
    image_size = recipe.data.image_size or 96
    dataset = MixtureDataModule(recipe, tokenizer, image_size).dataset
    return blocked_targets_report(dataset, make_tasks(recipe, tokenizer, image_size, search=True))


WORLD_RECIPES = [
    "tasks/world/tiny.yaml",
    "tasks/world/tiny_retrieval.yaml",
    "checkpoints/ofa-world-tiny/recipe.yaml",
    "checkpoints/ofa-world-tiny/recipe-stage1.yaml",
]


@pytest.mark.parametrize("path", WORLD_RECIPES)
def test_world_recipes_search_can_write_their_training_targets(path: str) -> None:
    assert report(REPO / path) == []


def test_a_three_gram_ban_is_reported_for_both_caption_languages() -> None:
    lines = report(REPO / "tasks/world/tiny.yaml", "eval.search.caption.no_repeat_ngram_size=3")
    assert len(lines) == 2, lines
    assert all(line.startswith("eval.search.caption.no_repeat_ngram_size=3 blocks ") for line in lines)
    assert "caption/en training targets" in lines[0] and "caption/zh training targets" in lines[1]
    assert all("set eval.search.caption.no_repeat_ngram_size: 0" in line for line in lines)


@pytest.mark.parametrize("lang", ["en", "zh"])
def test_shipped_checkpoint_captions_name_each_object_once(lang: str) -> None:
    """With the search of its recipe.yaml, the shipped model names as many objects as each `val` scene holds
    (under the 3-gram ban about one caption in ten named one more: "two small black diamond")."""
    from ofa import OFA
    from ofa.data.world import World
    from ofa.data.world.language import parse_mentions

    model = OFA.from_pretrained(REPO / "checkpoints/ofa-world-tiny")
    scenes = list(World(seed=0, image_size=model.image_size).iter("val", 40))
    results = model.caption([s.image for s in scenes], lang=lang, batch_size=40)
    wrong = [
        (r.text, len(s.objects))
        for s, r in zip(scenes, results)
        if len(parse_mentions(r.text, lang)) != len(s.objects)
    ]
    assert wrong == []
