"""Tasks: prompts, preprocessing, targets, constraints, parsing; image loading; data-file readers."""

from __future__ import annotations

import json
import random
import re
from collections import Counter

import numpy as np
import pytest
import torch
from PIL import Image

from ofa.data.formats import DataFormatError, read_samples
from ofa.data.images import ImageError, image_to_tensor, load_image
from ofa.data.sources import WorldSource
from ofa.data.world import Ref, World, WorldObject, named_attributes
from ofa.generation import generate
from ofa.tasks import TASKS, TaskError, collate, get_task
from ofa.tokenization import OFATokenizer
from tests.conftest import REPO


@pytest.fixture(scope="module")
def tokenizer() -> OFATokenizer:
    return OFATokenizer.from_pretrained(REPO / "tokenizers" / "world")


@pytest.fixture(scope="module")
def world() -> World:
    return World(seed=0, image_size=96)


def test_registry_knows_the_tasks():
    assert {"caption", "grounding"} <= set(TASKS)
    with pytest.raises(TaskError, match="unknown task 'vqa'"):
        get_task("vqa")


def test_official_english_prompts(tokenizer):
    caption = get_task("caption")(tokenizer)
    grounding = get_task("grounding")(tokenizer)
    assert caption.prompts["en"] == " what does the image describe?"
    assert grounding.prompt("The Red-Star.", "en") == ' which region does the text " the red star " describe?'
    assert grounding.prompt("最左边的三角形", "zh") == "文字“最左边的三角形”描述的是哪个区域？"


@pytest.mark.parametrize("lang", ["en", "zh"])
def test_grounding_round_trips_boxes_within_one_bin(tokenizer, world, lang):
    task = get_task("grounding")(tokenizer, image_size=96)
    source = WorldSource(world, "train", "grounding", lang)
    bin_width = 96 / (tokenizer.num_bins - 1)
    for index in range(40):
        sample = source[index]
        example = task.build(sample, train=True, rng=random.Random(index))
        assert len(example.target) == 5 and example.target[-1] == tokenizer.eos_id
        assert all(bool(tokenizer.is_bin_id(t)) for t in example.target[:4])
        box = task.parse(example.target, example)
        assert np.abs(np.array(box) - np.array(sample["box"])).max() <= bin_width / 2 + 1e-4


@pytest.mark.parametrize("lang", ["en", "zh"])
def test_grounding_examples_mark_exactly_the_expression_tokens(tokenizer, world, lang):
    """`meta["expression"]` (train.expression_attention_weight) spans the tokens that decode to the expression
    itself, for every world expression of 20 scenes."""
    task = get_task("grounding")(tokenizer, image_size=96)
    joiner = " " if lang == "en" else ""
    seen = 0
    for scene in world.iter("val", 20):
        for ref in scene.refs_for(lang):
            example = task.build({"image": scene.image, "text": ref.text, "box": list(ref.box), "lang": lang})
            start, end = example.meta["expression"]
            words = [tokenizer.decode([i]).strip() for i in example.source[start:end]]
            assert joiner.join(words) == ref.text, (ref.text, words)
            seen += 1
    assert seen > 100


def test_world_grounding_samples_name_the_attributes_their_expression_uses(tokenizer, world):
    """`named` (train.query_attribute_weight): the referent's size / colour / shape where the English expression has
    that word about the referent (in a relation, before the relation words), None where not; the Chinese twin of
    each expression names the same. Checked against the scene and the words."""
    task = get_task("grounding")(tokenizer, image_size=96)
    relation_words = re.compile(r" (to the left of|to the right of|above|below) ")
    kinds = Counter()
    for lang in ("en", "zh"):
        source = WorldSource(world, "val", "grounding", lang)
        for index in range(80):
            sample = source[index]
            kinds[lang, sample["kind"]] += 1
            scene = world.scene("val", index)
            target = next(o for o in scene.objects if list(o.box) == sample["box"])
            if lang == "en":
                text = sample["text"]
                if sample["kind"] == "relation":
                    text = text[: relation_words.search(text).start()]
                words = text.split()
                assert sample["named"] == [v if v in words else None for v in target.triple], sample
            if sample["kind"] != "ordinal":  # "the leftmost object" names nothing
                assert any(v is not None for v in sample["named"])
            assert task.build(sample, train=True).meta["named"] == sample["named"]
            assert task.build(sample, train=True).meta["kind"] == sample["kind"]
    assert {kind for _, kind in kinds} == {"attribute", "relation", "ordinal"}
    for scene in world.iter("val", 40):
        for en, zh in zip(scene.refs_for("en"), scene.refs_for("zh")):
            target = scene.objects[en.target_index]
            assert named_attributes(en, target) == named_attributes(zh, target), (en.text, zh.text)


@pytest.mark.parametrize(
    ("lang", "kind", "text", "named"),
    [
        ("en", "relation", "the star above the green circle", (None, None, "star")),
        ("en", "relation", "the large star to the left of the small red circle", ("large", None, "star")),
        ("zh", "relation", "绿色圆形上面的星形", (None, None, "star")),
        ("zh", "relation", "小的红色圆形左边的大星形", ("large", None, "star")),
        ("zh", "relation", "红色圆形右边的红色星形", (None, "red", "star")),
        ("en", "ordinal", "the second red star from the top", (None, "red", "star")),
        ("zh", "ordinal", "最左边的物体", (None, None, None)),
        ("zh", "ordinal", "从上数第二个红色星形", (None, "red", "star")),
        ("zh", "attribute", "大的星形", ("large", None, "star")),
    ],
)
def test_named_attributes_are_the_targets_words_only(lang, kind, text, named):
    """Hand-written: the anchor's words of a relation and an ordinal's position words are not the target's."""
    target = WorldObject("star", "red", "large", (0, 0, 20, 20), (10.0, 10.0), 20.0, 0.0, (255, 0, 0))
    ref = Ref(text, lang, kind, 0, target.box, 1 if kind == "relation" else None)
    assert named_attributes(ref, target) == named


def test_grounding_on_a_non_square_image_scales_back(tokenizer):
    """A 200x100 image is squashed to S x S; the parsed box is in original pixels again (hand-computed bins)."""
    task = get_task("grounding")(tokenizer, image_size=128)
    sample = {"image": Image.new("RGB", (200, 100)), "text": "the red star", "box": [50, 20, 150, 80]}
    example = task.build(sample)
    # x: 50/200*128 = 32 -> 32/128*255 = 63.75 -> 64; y: 20/100*128 = 25.6 -> 51; x1: 191.25 -> 191; y1: 204
    assert [int(tokenizer.id_to_bin(t)) for t in example.target[:4]] == [64, 51, 191, 204]
    box = task.parse(example.target, example)
    assert np.allclose(box, [50, 20, 150, 80], atol=200 / 255 / 2 + 1e-4)


def test_caption_targets_and_constraint(tokenizer, world):
    task = get_task("caption")(tokenizer, image_size=96)
    sample = WorldSource(world, "train", "caption", "zh")[3]
    example = task.build(sample, train=True, rng=random.Random(0))
    assert tokenizer.decode(example.target) in sample["captions"]
    mask_range = task.constraint(example)
    lo, hi = tokenizer.code_range
    assert all(hi <= a or b <= lo for a, b in mask_range.ranges)  # never codes or bins
    assert image_to_tensor(sample["image"], 96).shape == example.image.shape


def test_caption_train_target_first_always_takes_the_canonical_caption(tokenizer, world):
    task = get_task("caption")(tokenizer, image_size=96, train_target="first")
    sample = WorldSource(world, "train", "caption", "en")[5]
    assert len(set(sample["captions"])) > 1
    rng = random.Random(0)
    targets = {tokenizer.decode(task.build(sample, train=True, rng=rng).target) for _ in range(20)}
    assert targets == {sample["captions"][0]}  # decode drops the leading space of the BPE target
    with pytest.raises(TaskError, match="train_target must be one of"):
        get_task("caption")(tokenizer, train_target="longest")


def test_mixed_task_batch_decodes_with_per_sample_constraints(tokenizer, world):
    """One batch holds caption and grounding samples; each sample obeys its own task's constraint."""
    from ofa.models import OFAConfig, OFAModel

    torch.manual_seed(0)
    config = OFAConfig(
        vocab_size=tokenizer.vocab_size, num_codes=tokenizer.num_codes, num_bins=tokenizer.num_bins, d_model=32,
        encoder_layers=1, decoder_layers=1, encoder_attention_heads=2, decoder_attention_heads=2,
        encoder_ffn_dim=64, decoder_ffn_dim=64, resnet_layers=[1, 1, 1], resnet_width=8, image_size=96,
    )  # fmt: skip
    model = OFAModel(config).eval()
    caption = get_task("caption")(tokenizer, image_size=96)
    grounding = get_task("grounding")(tokenizer, image_size=96)
    examples = [
        caption.build(WorldSource(world, "val", "caption", "en")[0]),
        grounding.build(WorldSource(world, "val", "grounding", "zh")[1]),
        caption.build(WorldSource(world, "val", "caption", "zh")[2]),
    ]
    tasks = [caption, grounding, caption]
    batch = collate(examples, tokenizer.pad_id, tokenizer.bos_id)
    hyps = generate(
        model, {"input_ids": batch.input_ids, "patch_images": batch.patch_images},
        caption.generation_config(beam_size=2, max_len_b=6, no_repeat_ngram_size=0),
        constraints=[t.constraint(e) for t, e in zip(tasks, examples)],
    )  # fmt: skip
    lo, hi = tokenizer.bin_range
    bins = hyps[1][0].tokens.tolist()
    assert len(bins) == 5 and all(lo <= t < hi for t in bins[:4]) and bins[4] == tokenizer.eos_id
    for i in (0, 2):
        assert all(t < tokenizer.text_range[1] for t in hyps[i][0].tokens.tolist())


def test_bad_task_inputs_are_clear(tokenizer, tmp_path):
    grounding = get_task("grounding")(tokenizer, image_size=64)
    image = Image.new("RGB", (100, 50))
    with pytest.raises(TaskError, match="empty expression"):
        grounding.build({"image": image, "text": "  ", "box": [0, 0, 10, 10]})
    with pytest.raises(TaskError, match="outside|exceeds|inside"):
        grounding.build({"image": image, "text": "the star", "box": [0, 0, 150, 10], "id": 7})
    (tmp_path / "notes.txt").write_text("not an image")
    with pytest.raises(ImageError, match="notes.txt: not a readable image"):
        grounding.build({"image": tmp_path / "notes.txt", "text": "the star", "box": [0, 0, 1, 1]})
    with pytest.raises(TaskError, match="no non-empty caption"):
        get_task("caption")(tokenizer).build({"image": image, "captions": [""]})


def test_load_image_handles_modes_exif_and_arrays(tmp_path):
    rgba = Image.new("RGBA", (4, 2), (255, 0, 0, 0))  # fully transparent red -> white
    assert load_image(rgba).getpixel((0, 0)) == (255, 255, 255)
    assert load_image(Image.new("L", (3, 3), 100)).getpixel((1, 1)) == (100, 100, 100)
    assert load_image(Image.new("CMYK", (3, 3), (0, 255, 255, 0))).getpixel((0, 0)) == (255, 0, 0)
    tall = Image.new("RGB", (4, 2), (0, 0, 255))
    exif = tall.getexif()
    exif[0x0112] = 6  # "rotate 90 clockwise to display"
    tall.save(tmp_path / "r.jpg", exif=exif)
    assert load_image(tmp_path / "r.jpg").size == (2, 4)
    assert load_image(np.zeros((5, 6, 3), np.uint8)).size == (6, 5)
    assert load_image(torch.ones(3, 5, 6)).getpixel((0, 0)) == (255, 255, 255)
    with pytest.raises(ImageError, match="not an image"):
        load_image(np.zeros((5, 6, 7), np.uint8))
    with pytest.raises(ImageError, match="no such image"):
        load_image(tmp_path / "missing.png")


def test_huge_images_are_refused_before_decoding(tmp_path):
    Image.new("L", (9000, 8000)).save(tmp_path / "big.png")
    with pytest.raises(ImageError, match="larger than"):
        load_image(tmp_path / "big.png")


def test_data_file_readers(tmp_path):
    Image.new("RGB", (8, 8)).save(tmp_path / "a.png")
    coco = {"images": [{"id": 1, "file_name": "a.png"}], "annotations": [{"image_id": 1, "caption": "x"}]}
    (tmp_path / "c.json").write_text(json.dumps(coco))
    assert read_samples(tmp_path / "c.json", "caption")[0]["captions"] == ["x"]
    (tmp_path / "r.jsonl").write_text(
        json.dumps({"image": "a.png", "text": "t", "box": [0, 0, 2, 2]}) + "\n{oops\n"
    )
    with pytest.raises(DataFormatError, match="r.jsonl, line 2"):
        read_samples(tmp_path / "r.jsonl", "grounding")
    with pytest.raises(DataFormatError, match="no reader"):
        read_samples(tmp_path / "c.json", "grounding")
