"""Metric tests: values worked out by hand (or by the formula written out here), plus the Chinese-CLIP fixture."""

from __future__ import annotations

import json
import math
import warnings
from collections import Counter

import numpy as np
import pytest
import torch

from ofa.evaluation import (
    box_iou,
    caption_metrics,
    grounding_metrics,
    java_available,
    object_f1,
    recall_at_k,
    retrieval_metrics,
    tokenize_en_python,
    tokenize_zh_chars,
    world_caption_f1,
)
from ofa.evaluation import metrics as M
from tests.conftest import require, shared_dir

needs_java = pytest.mark.skipif(not java_available(), reason="java not on PATH (METEOR / PTB tokenizer)")

# --------------------------------------------------------------------------------- captions


def _cider_d(preds: dict, refs: dict, n_max: int = 4, sigma: float = 6.0) -> float:
    """CIDEr-D written out from the paper (Vedantam et al. 2015), on pre-tokenised lowercase text."""

    def grams(s: str, n: int) -> Counter:
        w = s.split()
        return Counter(tuple(w[i : i + n]) for i in range(len(w) - n + 1))

    ids = list(preds)
    n_img = len(ids)
    df: Counter = Counter()
    for i in ids:
        df.update({g for r in refs[i] for n in range(1, n_max + 1) for g in grams(r, n)})

    def vec(s: str, n: int) -> dict:
        return {g: c * (np.log(n_img) - np.log(max(1.0, df[g]))) for g, c in grams(s, n).items()}

    per_image = []
    for i in ids:
        h = preds[i]
        per_ref = []
        for r in refs[i]:
            sims = []
            for n in range(1, n_max + 1):
                vh, vr = vec(h, n), vec(r, n)
                nh = np.sqrt(sum(v * v for v in vh.values()))
                nr = np.sqrt(sum(v * v for v in vr.values()))
                dot = sum(min(v, vr.get(g, 0.0)) * vr.get(g, 0.0) for g, v in vh.items())  # clipped
                cos = dot / (nh * nr) if nh > 0 and nr > 0 else 0.0
                delta = len(h.split()) - len(r.split())
                sims.append(cos * np.exp(-(delta**2) / (2 * sigma**2)))
            per_ref.append(np.mean(sims))
        per_image.append(10.0 * np.mean(per_ref))
    return float(np.mean(per_image))


def test_bleu_identical_is_one_and_keys():
    m = caption_metrics(
        {1: "a small red circle left of a star"},
        {1: ["a small red circle left of a star"]},
        meteor=False,
        spice=False,
    )
    assert set(m) == {"CIDEr", "BLEU-4", "ROUGE-L"}
    assert m["BLEU-4"] == pytest.approx(1.0, abs=1e-6)
    assert m["ROUGE-L"] == pytest.approx(1.0)
    assert m["CIDEr"] == 0.0  # pycocoevalcap quirk: one image -> idf = log(1) - log(1) = 0 everywhere


def test_bleu_and_rouge_by_hand():
    # hyp / ref share the first four of five words: clipped n-gram precisions 4/5, 3/4, 2/3, 1/2,
    # equal lengths -> brevity penalty 1; BLEU-4 = geometric mean.
    m = caption_metrics({7: "the cat sat on mat"}, {7: ["the cat sat on rug"]}, meteor=False, spice=False)
    assert m["BLEU-4"] == pytest.approx((4 / 5 * 3 / 4 * 2 / 3 * 1 / 2) ** 0.25, rel=1e-6)
    # ROUGE-L: LCS("a b c d", "a c d e f") = 3, P = 3/4, R = 3/5, beta = 1.2
    m = caption_metrics({"x": "a b c d"}, {"x": ["a c d e f"]}, meteor=False, spice=False)
    p, r, b2 = 3 / 4, 3 / 5, 1.2**2
    assert m["ROUGE-L"] == pytest.approx((1 + b2) * p * r / (r + b2 * p))


def test_cider_d_by_formula_two_images():
    preds = {"a": "a red circle on the left", "b": "two blue squares"}
    refs = {
        "a": ["a red circle", "a small red circle on the left", "one red circle and a star"],
        "b": ["two blue squares", "a pair of blue squares side by side"],
    }
    expected = _cider_d(preds, refs)
    assert 0.5 < expected < 10  # not a degenerate case
    m = caption_metrics(preds, refs, meteor=False, spice=False)
    assert m["CIDEr"] == pytest.approx(expected, rel=1e-9)


def test_english_tokenisation_lowercases_and_drops_punctuation():
    preds = {0: "A Red circle, on the LEFT.", 1: "Two blue squares!"}
    refs = {0: ["a red circle on the left"], 1: ["two blue squares ."]}
    m = caption_metrics(preds, refs, meteor=False, spice=False)
    assert m["BLEU-4"] == pytest.approx(1.0, abs=1e-6) and m["ROUGE-L"] == pytest.approx(1.0)
    assert tokenize_en_python("A Red circle, on the LEFT.") == "a red circle on the left"


def test_chinese_character_tokenisation():
    assert tokenize_zh_chars("一个 红色的圆形。") == "一 个 红 色 的 圆 形"
    assert tokenize_zh_chars("图中有：两个“蓝色”正方形，和 AB!") == "图 中 有 两 个 蓝 色 正 方 形 和 a b"
    m = caption_metrics(
        {1: "一个红色圆形", 2: "两个蓝色的正方形"},
        {1: ["一个 红色，圆形。"], 2: ["两个蓝色的正方形"]},
        lang="zh",
    )
    assert set(m) == {"CIDEr", "BLEU-4", "ROUGE-L"}  # no METEOR / SPICE for Chinese
    assert m["BLEU-4"] == pytest.approx(1.0, abs=1e-6) and m["ROUGE-L"] == pytest.approx(1.0)
    # character CIDEr-D equals the formula on the character-tokenised text
    preds = {1: "一个红色圆形", 2: "蓝色正方形"}
    refs = {1: ["一个红色的圆形", "红色圆形"], 2: ["两个蓝色的正方形"]}
    tok = tokenize_zh_chars
    expected = _cider_d(
        {k: tok(v) for k, v in preds.items()}, {k: [tok(r) for r in v] for k, v in refs.items()}
    )
    assert caption_metrics(preds, refs, lang="zh")["CIDEr"] == pytest.approx(expected, rel=1e-9)


@needs_java
def test_meteor_english_only_and_sane():
    # one METEOR call (the jar takes ~10 s to load its paraphrase table)
    refs = {1: ["a small red circle"], 2: ["two blue squares and a star"], 3: ["a green cross"]}
    m = caption_metrics(
        {1: "a small red circle", 2: "two blue squares and a star", 3: "dog"}, refs, spice=False
    )
    assert set(m) == {"CIDEr", "BLEU-4", "METEOR", "ROUGE-L"}
    assert 0.3 < m["METEOR"] < 1.0


def test_empty_caption_does_not_crash():
    m = caption_metrics(
        {1: "", 2: "two blue squares"},
        {1: ["a red circle"], 2: ["two blue squares"]},
        meteor=False,
        spice=False,
    )
    assert m["ROUGE-L"] == pytest.approx(0.5) and m["CIDEr"] >= 0.0


def test_no_java(monkeypatch):
    monkeypatch.setattr(M, "java_available", lambda: False)
    with pytest.raises(RuntimeError, match="METEOR needs Java"):
        caption_metrics({1: "a red circle"}, {1: ["a red circle"]}, spice=False)
    with pytest.warns(RuntimeWarning, match="pure-Python"):
        m = caption_metrics(
            {1: "A small red circle, left of a star."},
            {1: ["a small red circle left of a star"]},
            meteor=False,
            spice=False,
        )
    assert m["BLEU-4"] == pytest.approx(1.0, abs=1e-6)


def test_spice_skipped_with_one_warning(monkeypatch):
    monkeypatch.setattr(M, "spice_models_present", lambda: False)
    with warnings.catch_warnings(record=True) as w:
        warnings.simplefilter("always")
        m = caption_metrics({1: "a red circle"}, {1: ["a red circle"]}, meteor=False, spice=True)
    spice_w = [x for x in w if "SPICE" in str(x.message)]
    assert len(spice_w) == 1 and "SPICE" not in m
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # default spice=None is silent for Chinese
        caption_metrics({1: "一个圆形"}, {1: ["一个圆形"]}, lang="zh")


def test_caption_input_errors():
    with pytest.raises(KeyError):
        caption_metrics({1: "a"}, {2: ["a"]}, spice=False, meteor=False)
    with pytest.raises(ValueError):
        caption_metrics({1: "a"}, {1: ["a"]}, lang="fr")


# -------------------------------------------------------------------------------- object F1


def test_object_f1_by_hand():
    preds = [
        [("small", "red", "circle"), ("small", "red", "circle"), ("large", "blue", "star")],
        [(None, "green", "cross"), ("large", "green", "cross")],
        [],
    ]
    refs = [
        [("small", "red", "circle"), ("large", "blue", "square")],  # 1 hit: duplicate and wrong shape miss
        [("small", "green", "cross"), ("large", "green", "cross"), ("small", "black", "circle")],  # 2 hits
        [("small", "cyan", "hexagon")],  # 0 hits
    ]
    m = object_f1(preds, refs)  # TP 3, 5 predicted, 6 reference
    assert m["object_precision"] == pytest.approx(3 / 5)
    assert m["object_recall"] == pytest.approx(3 / 6)
    assert m["object_f1"] == pytest.approx(2 * 0.6 * 0.5 / 1.1)


def test_object_f1_wildcard_does_not_steal_exact_match():
    preds = [[(None, "red", "circle"), ("small", "red", "circle")]]
    refs = [[("small", "red", "circle"), ("large", "red", "circle")]]
    assert object_f1(preds, refs)["object_f1"] == 1.0
    assert object_f1([[]], [[]])["object_f1"] == 1.0
    assert object_f1([[]], [[("small", "red", "circle")]]) == {
        "object_precision": 0.0,
        "object_recall": 0.0,
        "object_f1": 0.0,
    }


def test_world_caption_f1():
    from ofa.data.world import World
    from ofa.data.world.schema import WorldObject

    scenes = [World(seed=0).scene("val", i) for i in range(4)]
    for lang in ("en", "zh"):
        caps = [s.captions[lang][0] for s in scenes]
        assert world_caption_f1(caps, [s.objects for s in scenes], lang)["object_f1"] == 1.0
    objs = [
        WorldObject("circle", "red", "small", (0, 0, 5, 5), (2.5, 2.5), 5.0, 0.0, (255, 0, 0)).to_dict(),
        {"size": "large", "colour": "blue", "shape": "star"},
    ]
    m = world_caption_f1(["a red circle and two large blue stars"], [objs], "en")  # TP 2 of 3 said, 2 real
    assert m["object_precision"] == pytest.approx(2 / 3) and m["object_recall"] == 1.0
    m = world_caption_f1(["一个红色圆形和一个小的蓝色星形"], [objs], "zh")
    assert m["object_precision"] == pytest.approx(1 / 2) and m["object_recall"] == pytest.approx(1 / 2)


# -------------------------------------------------------------------------------- grounding


def test_box_iou_hand_made():
    a = np.array([[0, 0, 2, 2], [0, 0, 1, 1], [0, 0, 2, 1], [0, 0, 2, 1]], dtype=float)
    b = np.array([[0, 0, 2, 2], [2, 2, 3, 3], [1, 0, 3, 1], [0, 0, 1, 1]], dtype=float)
    iou = box_iou(a, b)
    assert isinstance(iou, np.ndarray)
    np.testing.assert_allclose(iou, [1.0, 0.0, 1 / 3, 1 / 2])
    t = box_iou(torch.tensor(a, dtype=torch.float32), torch.tensor(b))
    assert isinstance(t, torch.Tensor) and torch.allclose(
        t, torch.tensor([1.0, 0.0, 1 / 3, 0.5], dtype=t.dtype)
    )
    np.testing.assert_allclose(box_iou([0, 0, 4, 4], [1, 1, 3, 3]), [0.25])  # a single box, nested


def test_grounding_threshold_edge_and_garbage():
    gt = np.array([[0, 0, 2, 1]] * 6, dtype=float)
    pred = np.array(
        [
            [0, 0, 1, 1],  # IoU exactly 0.5 -> a hit (inclusive, as OFA)
            [0, 0, 2, 1],  # IoU 1
            [np.nan, 0, 2, 1],  # garbage -> 0
            [2, 0, 0, 1],  # x1 < x0 -> 0 (its "area" would be negative)
            [0, 0, np.inf, 1],  # -> 0
            [1, 1, 1, 1],  # zero area -> 0
        ]
    )
    iou = box_iou(pred, gt)
    np.testing.assert_array_equal(iou, [0.5, 1.0, 0.0, 0.0, 0.0, 0.0])
    m = grounding_metrics(pred, gt)
    assert m == {"Acc@0.5": pytest.approx(2 / 6), "mean_IoU": pytest.approx(1.5 / 6)}
    assert grounding_metrics(pred[:1], gt[:1], threshold=0.5 + 1e-9)["Acc@0.5"] == 0.0
    # garbage ground truth or degenerate pairs never raise
    assert box_iou(np.zeros((1, 4)), np.zeros((1, 4)))[0] == 0.0
    with pytest.raises(ValueError):
        grounding_metrics(np.zeros((2, 4)), np.zeros((3, 4)))


# -------------------------------------------------------------------------------- retrieval


def test_recall_at_k_many_to_many_with_ties():
    sim = torch.tensor(
        [
            [0.1, 0.9, 0.5, 0.3],  # positives {2, 3}: ranking 1,2,3,0 -> best positive at rank 2
            [0.5, 0.5, 0.2, 0.5],  # positive {3}: ties keep gallery order 0,1,3,2 -> rank 3
            [0.0, 0.0, 0.0, 1.0],  # positives {0, 3}: rank 1
        ]
    )
    m = recall_at_k(sim, [{2, 3}, {3}, {0, 3}], ks=(1, 2, 3))
    assert m["R@1"] == pytest.approx(100 / 3) and m["R@2"] == pytest.approx(200 / 3) and m["R@3"] == 100.0
    assert m["mean_recall"] == pytest.approx((1 / 3 + 2 / 3 + 1) / 3 * 100)
    m = recall_at_k(sim, [{2, 3}, {3}, {0, 3}])  # default ks; k > gallery -> whole gallery
    assert m == {
        "R@1": pytest.approx(100 / 3),
        "R@5": 100.0,
        "R@10": 100.0,
        "mean_recall": pytest.approx(700 / 9),
    }
    assert recall_at_k(sim, [set(), {3}, {0}], ks=(1, 4))["R@4"] == pytest.approx(
        200 / 3
    )  # no positive = miss
    # row-chunked sorting gives the same answer
    assert recall_at_k(sim, [{2, 3}, {3}, {0, 3}], ks=(1, 2, 3), chunk=1) == recall_at_k(
        sim, [{2, 3}, {3}, {0, 3}], ks=(1, 2, 3)
    )


def test_retrieval_metrics_i2t_queries_are_annotated_images_only():
    # 2 texts, 3 images (image "z" is in no annotation); 2-d features, dot products by eye.
    text = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    image = torch.tensor([[0.9, 0.1], [0.2, 0.8], [1.0, 0.0]])
    ann = {"t0": ["x"], "t1": ["y", "z"]}
    m = retrieval_metrics(text, image, ann, ["t0", "t1"], ["x", "y", "z"], ks=(1, 2))
    # t0 ranks z(1.0), x(0.9): x at 2; t1 ranks y(0.8) first -> hit at 1
    assert m["t2i_R@1"] == 50.0 and m["t2i_R@2"] == 100.0
    # queries x, y, z (all annotated): x -> t0 first (0.9 > 0.1); y -> t1 (0.8); z -> t0 (1.0) but wants t1
    assert m["i2t_R@1"] == pytest.approx(200 / 3) and m["i2t_R@2"] == 100.0
    m = retrieval_metrics(text, image, {"t0": ["x"], "t1": ["y"]}, ["t0", "t1"], ["x", "y", "z"], ks=(1,))
    assert m["i2t_R@1"] == 100.0  # z is not a query any more (it would have been a miss)
    with pytest.raises(KeyError):
        retrieval_metrics(text, image, {"t9": ["x"]}, ["t0", "t1"], ["x", "y", "z"])


def test_chinese_clip_official_recall_fixture():
    d = require(
        shared_dir() / "fixtures" / "chinese_clip_reference" / "retrieval_eval",
        "Chinese-CLIP retrieval fixture",
    )

    def rows(name: str) -> list[dict]:
        return [json.loads(line) for line in (d / name).read_text().splitlines() if line.strip()]

    imgs, txts, ann = (
        rows("valid_imgs.img_feat.jsonl"),
        rows("valid_texts.txt_feat.jsonl"),
        rows("valid_texts.jsonl"),
    )
    m = retrieval_metrics(
        torch.tensor([t["feature"] for t in txts]),
        torch.tensor([i["feature"] for i in imgs]),
        {a["text_id"]: a["image_ids"] for a in ann},
        [t["text_id"] for t in txts],
        [i["image_id"] for i in imgs],
    )
    for prefix, name in (("t2i", "expected_t2i.json"), ("i2t", "expected_i2t.json")):
        exp = json.loads((d / name).read_text())["scoreJson"]
        got = {
            k: m[f"{prefix}_{k2}"]
            for k, k2 in (("r1", "R@1"), ("r5", "R@5"), ("r10", "R@10"), ("mean_recall", "mean_recall"))
        }
        assert got == {k: exp[k] for k in got}, (prefix, got, exp)  # exact, not approximate
    assert not math.isnan(m["t2i_mean_recall"])
