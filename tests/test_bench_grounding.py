"""The grounding diagnostics of bench/: which words an attribute expression uses, and the linear query probe."""

from __future__ import annotations

import sys
from pathlib import Path

import torch

from ofa.data.world import Ref, World, WorldObject

BENCH = Path(__file__).resolve().parents[1] / "bench"
sys.path.insert(0, str(BENCH))

from grounding_breakdown import attribute_words, outcome  # noqa: E402
from grounding_query_probe import probe_accuracy  # noqa: E402


def _ref(text: str, lang: str) -> Ref:
    return Ref(text, lang, "attribute", 0, (0, 0, 10, 10))


def test_attribute_words_by_hand():
    star = WorldObject("star", "red", "large", (0, 0, 10, 10), (5.0, 5.0), 10.0, 0.0, (255, 0, 0))
    cases = {
        ("the large red object", "en"): "size+colour",
        ("the star", "en"): "shape",
        ("the large red star", "en"): "size+colour+shape",
        ("大的红色物体", "zh"): "size+colour",
        ("星形", "zh"): "shape",
        ("红色的星形", "zh"): "colour+shape",
        ("大的星形", "zh"): "size+shape",
    }
    for (text, lang), expected in cases.items():
        assert attribute_words(_ref(text, lang), star) == expected, text


def test_attribute_words_agree_between_an_expression_and_its_translation():
    pairs = 0
    for scene in World(seed=0, image_size=64).iter("val", 30):
        en, zh = scene.refs_for("en", "attribute"), scene.refs_for("zh", "attribute")
        for a, b in zip(en, zh):  # added as (en, zh) twins
            target = scene.objects[a.target_index]
            assert a.target_index == b.target_index
            assert attribute_words(a, target) == attribute_words(b, target) != "", (a.text, b.text)
            pairs += 1
    assert pairs > 50


def test_query_probe_reads_a_linearly_coded_label_and_not_noise():
    g = torch.Generator().manual_seed(0)
    labels = torch.randint(0, 5, (600,), generator=g)
    noise = torch.randn(600, 16, generator=g)
    coded = noise.clone()
    coded[:, :5] += 5.0 * torch.nn.functional.one_hot(labels, 5)
    accuracy, majority = probe_accuracy(coded, labels)
    assert accuracy > 0.95 and majority < 0.35
    accuracy, majority = probe_accuracy(noise, labels)
    assert accuracy < 0.35


def test_outcome_by_hand():
    assert outcome([0.6, 0.0], 0) == "right"
    assert outcome([0.1, 0.7], 0) == "other"
    assert outcome([0.3, 0.4], 0) == "near"  # loose box around the referent, touching the other object
    assert outcome([0.1, 0.4], 0) == "far"
    assert outcome([0.25], 0) == "near"
