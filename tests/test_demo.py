"""`ofa.demo` without a browser: the box drawing against a hand-built mask, every message a bad input gets,
the upload check of the Gradio image component, the retrieval tab's ranking against a brute-force search
over the embeddings, and the text-to-image tab's pictures against `OFA.generate_image` enlarged by hand. The
browser test is `test_demo_browser.py`."""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from ofa import OFA
from ofa.api import CaptionResult, GroundingResult
from ofa.data.world import World
from ofa.demo import BOX_COLOUR, DemoBackend, draw_box, world_examples
from ofa.demo.app import (
    NO_BOX,
    NO_EXPRESSION,
    NO_IMAGE,
    NO_IMAGE_TOKENIZER,
    NO_PROMPT,
    NO_QUERY,
    NO_RETRIEVAL_HEAD,
    example_queries,
    upscale,
    world_gallery,
    world_prompts,
)
from ofa.models import OFAConfig, OFAModel
from ofa.tokenization.image import ImageTokenizer, ImageTokenizerConfig
from tests.test_api import huge_png, make_checkpoint
from tests.test_text_to_image import CODEBOOK, GRID, make_image_tokenizer
from tests.test_text_to_image import make_checkpoint as make_text_to_image_checkpoint


def make_retrieval_checkpoint(folder: Path, retrieval_dim: int = 16, image_tokenizer: bool = False) -> Path:
    """`make_checkpoint`'s random model with a retrieval head (fresh random weights; same tokenizer, recipe).

    ``image_tokenizer``: also save `test_text_to_image`'s random image tokenizer (32 px, 4x4 codes) in the
    checkpoint's ``image_tokenizer/`` folder, the model decoding grids of its size: every demo tab works.
    """
    make_checkpoint(folder)
    changes: dict = {"retrieval_dim": retrieval_dim}
    if image_tokenizer:
        changes["code_image_size"] = 8 * GRID
        make_image_tokenizer().save_pretrained(folder / "image_tokenizer")
    config = dataclasses.replace(OFAConfig.load(folder / "config.json"), **changes)
    torch.manual_seed(0)
    OFAModel(config).save_pretrained(folder)
    return folder


def outline_mask(
    height: int, width: int, left: int, top: int, right: int, bottom: int, line: int
) -> np.ndarray:
    """Pixels of an inclusive rectangle minus its interior shrunk by `line`: what an inner outline covers."""
    mask = np.zeros((height, width), dtype=bool)
    mask[top : bottom + 1, left : right + 1] = True
    mask[top + line : bottom + 1 - line, left + line : right + 1 - line] = False
    return mask


def test_draw_box_outlines_the_rounded_box_inside_it():
    image = Image.new("RGB", (20, 12), (10, 20, 30))
    drawn = draw_box(image, (2.4, 3.6, 11.7, 9.2), width=2)
    # By hand: x 2.4 -> 2, 11.7 -> 12; y 3.6 -> 4, 9.2 -> 9.
    expected = outline_mask(12, 20, left=2, top=4, right=12, bottom=9, line=2)
    pixels = np.asarray(drawn)
    assert np.array_equal((pixels == BOX_COLOUR).all(axis=-1), expected)
    assert (pixels[~expected] == (10, 20, 30)).all()
    assert np.asarray(image).max() == 30  # the input is left untouched


def test_draw_box_orders_and_clips_corners():
    image = Image.new("RGB", (16, 10), "white")
    drawn = np.asarray(draw_box(image, (30.0, 7.2, -5.0, 1.0), colour=(0, 0, 255), width=1))
    expected = outline_mask(10, 16, left=0, top=1, right=15, bottom=7, line=1)
    assert np.array_equal((drawn == (0, 0, 255)).all(axis=-1), expected)


def test_draw_box_fills_boxes_too_thin_for_an_outline():
    image = Image.new("RGB", (12, 12), "white")
    drawn = np.asarray(draw_box(image, (5.2, 9.0, 4.8, 2.0), width=2))  # x0 == x1 after rounding
    expected = np.zeros((12, 12), dtype=bool)
    expected[2:10, 5] = True
    assert np.array_equal((drawn == BOX_COLOUR).all(axis=-1), expected)


def test_world_examples_are_scene_files_with_their_expressions(tmp_path):
    from ofa.data.world import World

    examples = world_examples(2, folder=tmp_path)
    assert [e.lang for e in examples] == ["en", "zh"]
    for index, example in enumerate(examples):
        scene = World(seed=0).scene("val", index)
        assert example.image.parent == tmp_path
        assert np.array_equal(np.asarray(Image.open(example.image)), np.asarray(scene.image))
        assert example.expression in {r.text for r in scene.refs_for(example.lang)}


class StubModel:
    """Records calls and answers with fixed results (or raises), to check the backend's messages."""

    def __init__(self, box=(1.0, 2.0, 5.0, 6.0), error: Exception | None = None) -> None:
        self.box, self.error, self.calls = box, error, []

    def caption(self, image, lang="en", **search):
        self.calls.append(("caption", lang, search))
        if self.error:
            raise self.error
        return CaptionResult("a red star", 0.51234, lang)

    def ground(self, image, text, **search):
        self.calls.append(("ground", text, search))
        if self.error:
            raise self.error
        return GroundingResult(self.box, 0.25, text)


def test_backend_answers_with_results_and_passes_search_settings():
    model = StubModel()
    backend = DemoBackend(model, search={"beam_size": 2})
    text, score, status = backend.caption(Image.new("RGB", (8, 8)), "zh")
    assert (text, score) == ("a red star", 0.5123) and status.startswith("Done in")
    drawn, box, score, status = backend.ground(Image.new("RGB", (8, 8)), "  the red star ")
    assert box == "1.0, 2.0, 5.0, 6.0" and score == 0.25 and drawn.size == (8, 8)
    assert model.calls == [("caption", "zh", {"beam_size": 2}), ("ground", "the red star", {"beam_size": 2})]


def test_backend_turns_bad_input_into_messages():
    notes: list[str] = []
    model = StubModel()
    backend = DemoBackend(model, notify=notes.append)
    assert backend.caption(None, "en") == ("", None, f"⚠️ {NO_IMAGE}")
    assert backend.ground(Image.new("RGB", (8, 8)), "   ") == (None, "", None, f"⚠️ {NO_EXPRESSION}")
    assert backend.ground(None, "the star")[-1] == f"⚠️ {NO_IMAGE}"
    assert model.calls == []  # nothing reached the model
    assert notes == [NO_IMAGE, NO_EXPRESSION, NO_IMAGE]

    failing = DemoBackend(StubModel(error=ValueError("caption: <bad> lang")), notify=notes.append)
    assert (
        failing.caption(Image.new("RGB", (8, 8)), "xx")[-1]
        == "⚠️ Cannot caption this image: caption: <bad> lang"
    )
    assert notes[-1] == "Cannot caption this image: caption: &lt;bad&gt; lang"  # pop-ups render HTML

    image, box, score, status = DemoBackend(StubModel(box=(math.nan,) * 4)).ground(
        Image.new("RGB", (8, 8)), "x"
    )
    assert image.size == (8, 8) and (box, score, status) == ("", None, f"⚠️ {NO_BOX}")


@pytest.fixture(scope="module")
def ofa(tmp_path_factory) -> OFA:
    return OFA.from_pretrained(make_checkpoint(tmp_path_factory.mktemp("ckpt")))


def test_backend_reports_oversized_and_unreadable_images(ofa, tmp_path):
    backend = DemoBackend(ofa)
    huge = huge_png(tmp_path / "huge.png", 9000, 9000)
    message = backend.caption(str(huge), "en")[-1]
    assert message == "⚠️ Cannot caption this image: huge.png: 9000x9000 is larger than the 64 M pixel limit"
    assert "larger than the 64 M pixel limit" in backend.ground(str(huge), "the star")[-1]
    bomb = huge_png(tmp_path / "bomb.png", 40000, 40000)  # past PIL's own limit
    assert "too large" in backend.ground(str(bomb), "the star")[-1]
    notes = tmp_path / "notes.png"
    notes.write_text("not an image")
    assert "not a readable image" in backend.caption(str(notes), "en")[-1]


def test_backend_box_is_the_models_box(ofa):
    image = Image.new("RGB", (96, 64), (200, 200, 200))
    expected = ofa.ground(image, "the red star")
    drawn, box, score, status = DemoBackend(ofa).ground(image, "the red star")
    assert box == ", ".join(f"{v:.1f}" for v in expected.box) and score == round(expected.score, 4)
    assert drawn.size == (96, 64) and (np.asarray(drawn) == BOX_COLOUR).all(axis=-1).any()


def test_build_demo_has_a_tab_per_task(ofa, tmp_path):
    pytest.importorskip("gradio")
    from ofa.demo import build_demo

    demo = build_demo(
        ofa, examples=world_examples(1, folder=tmp_path), gallery=world_gallery(2, folder=tmp_path / "g")
    )
    labels = [block.label for block in demo.blocks.values() if type(block).__name__ == "Tab"]
    assert labels == ["Caption", "Grounding", "Retrieval 检索", "Text-to-image 文生图"]
    assert Path(tmp_path / "world-val-0.png").is_file()
    # This checkpoint has neither a retrieval head nor an image tokenizer: both tabs say so up front, and the
    # text-to-image tab has no controls.
    ids = {getattr(block, "elem_id", None): block for block in demo.blocks.values()}
    assert NO_RETRIEVAL_HEAD in ids["retrieval-note"].value
    assert NO_IMAGE_TOKENIZER in ids["imagine-note"].value
    assert not {"imagine-prompt", "imagine-button", "imagine-gallery"} & ids.keys()


def test_build_demo_text_to_image_tab_has_its_controls(imaginer, tmp_path):
    pytest.importorskip("gradio")
    from ofa.demo import build_demo

    demo = build_demo(
        imaginer, examples=world_examples(1, folder=tmp_path), gallery=world_gallery(2, folder=tmp_path / "g")
    )
    ids = {getattr(block, "elem_id", None): block for block in demo.blocks.values()}
    assert "imagine-note" not in ids
    assert (ids["imagine-n"].minimum, ids["imagine-n"].maximum, ids["imagine-n"].value) == (1, 8, 4)
    assert (ids["imagine-guidance"].minimum, ids["imagine-guidance"].maximum) == (0, 10)
    assert ids["imagine-guidance"].value == 3 and ids["imagine-seed"].value == 0
    assert ids["imagine-gallery"].format == "png"  # lossless: the enlarged pixels stay sharp


def test_world_gallery_is_val_scenes_with_chinese_captions(tmp_path):
    gallery = world_gallery(6, folder=tmp_path)
    world = World(seed=0)
    for index, item in enumerate(gallery):
        scene = world.scene("val", index)
        assert item.image == tmp_path / f"world-val-{index}.png" and item.lang == "zh"
        assert np.array_equal(np.asarray(Image.open(item.image)), np.asarray(scene.image))
        assert item.expression == scene.captions["zh"][0]
    # Scenes 2, 4 and 5 hold one object each: the shortest captions, in gallery order.
    assert example_queries(gallery) == ["一个大的橙色星形", "一个大的橙色圆形", "一个小的绿色正方形"]


@pytest.fixture(scope="module")
def retriever(tmp_path_factory) -> OFA:
    return OFA.from_pretrained(make_retrieval_checkpoint(tmp_path_factory.mktemp("retrieval-ckpt")))


@pytest.fixture(scope="module")
def gallery(tmp_path_factory) -> list[Path]:
    return [item.image for item in world_gallery(8, folder=tmp_path_factory.mktemp("gallery"))]


def test_retrieval_ranks_the_cached_gallery_by_similarity(retriever, gallery, monkeypatch):
    embedded = []
    embed_images = retriever.embed_images
    monkeypatch.setattr(
        retriever, "embed_images", lambda images, lang: embedded.append(lang) or embed_images(images, lang)
    )
    backend = DemoBackend(retriever, gallery=gallery)
    queries = [("一个大的橙色星形", "zh"), ("一个小的绿色正方形", "zh"), ("a large orange star", "en")]
    for query, lang in queries:
        items, status = backend.retrieve(f"  {query} ", lang, 5, rerank=False)
        # Brute force: every gallery image against the query, both embedded afresh by the API.
        truth = (embed_images(gallery, lang) @ retriever.embed_texts(query, lang=lang)).tolist()
        best = sorted(range(len(gallery)), key=lambda i: -truth[i])[:5]
        assert [path for path, _ in items] == [str(gallery[i]) for i in best]
        assert [caption for _, caption in items] == [
            f"#{rank} similarity {truth[i]:.2f}" for rank, i in enumerate(best, 1)
        ]
        assert status.startswith("Done in")
        hits = backend.gallery_hits(query, lang, 5)
        similarities = [hit.similarity for hit in hits]
        assert similarities == pytest.approx([truth[i] for i in best], abs=1e-6)
        assert similarities == sorted(similarities, reverse=True)
        assert all(hit.match_probability is None for hit in hits)
    assert embedded == ["zh", "en"]  # the gallery is embedded once per language, not per query


def test_retrieval_rerank_matches_the_api(retriever, gallery):
    backend = DemoBackend(retriever, gallery=gallery)
    query = "一个大的橙色圆形"
    expected = retriever.retrieve(query, gallery, k=4, rerank=True, lang="zh")
    hits = backend.gallery_hits(query, "zh", 4, rerank=True)
    assert [hit.index for hit in hits] == [hit.index for hit in expected]
    assert [hit.match_probability for hit in hits] == pytest.approx(
        [hit.match_probability for hit in expected], abs=1e-6
    )
    items, _ = backend.retrieve(query, "zh", 4, rerank=True)
    assert [caption for _, caption in items] == [
        f"#{rank} similarity {hit.similarity:.2f} · match {hit.match_probability:.2f}"
        for rank, hit in enumerate(expected, 1)
    ]


def test_retrieval_turns_bad_input_into_messages(retriever, ofa, gallery, monkeypatch):
    notes: list[str] = []
    backend = DemoBackend(retriever, gallery=gallery, notify=notes.append)
    monkeypatch.setattr(retriever, "embed_texts", None)  # nothing below may reach the model
    assert backend.retrieve("   ", "zh", 3) == ([], f"⚠️ {NO_QUERY}")
    assert backend.retrieve(None, "zh", 3) == ([], f"⚠️ {NO_QUERY}")
    # The recipe of make_checkpoint reads at most 64 source tokens.
    items, message = backend.retrieve("红" * 100, "zh", 3)
    assert items == [] and "too long" in message and "at most 64" in message
    assert "choose English" in backend.retrieve("a red star", "zh", 3)[1]
    assert "choose 中文" in backend.retrieve("红色的星形", "en", 3)[1]
    for k in (0, 9, 2.5, True):
        assert "a whole number from 1 to 8" in backend.retrieve("红色的星形", "zh", k)[1]
    assert len(notes) == 9
    # A checkpoint without a retrieval head, and a backend without a gallery: a note, not a failure.
    assert DemoBackend(ofa, gallery=gallery).retrieve("红色的星形", "zh", 3) == ([], f"⚠️ {NO_RETRIEVAL_HEAD}")
    assert "no gallery" in DemoBackend(retriever).retrieve("红色的星形", "zh", 3)[1]


def test_cli_demo_errors_are_one_line(tmp_path, capsys):
    pytest.importorskip("gradio")
    import socket

    from ofa.cli import main

    assert main(["demo", "--checkpoint", str(tmp_path / "missing")]) == 1
    assert "missing not found" in capsys.readouterr().err
    checkpoint = make_checkpoint(tmp_path / "ckpt")
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        assert main(["demo", "--checkpoint", str(checkpoint), "--port", str(port)]) == 1
    err = capsys.readouterr().err.strip()
    assert err.startswith("ofa demo: error: ") and str(port) in err and "\n" not in err


def test_concurrent_users_all_get_answers(ofa, tmp_path):
    pytest.importorskip("gradio")
    from concurrent.futures import ThreadPoolExecutor

    from gradio_client import Client, handle_file

    from ofa.demo import launch
    from tests.test_demo_browser import free_port

    examples = world_examples(2, folder=tmp_path)
    demo, url = launch(ofa, port=free_port(), block=False, quiet=True, examples=examples)
    try:
        client = Client(url, verbose=False, download_files=False)
        requests = [(e.image, lang) for e in examples for lang in ("en", "zh")] * 2
        with ThreadPoolExecutor(len(requests)) as pool:
            jobs = [
                pool.submit(client.predict, handle_file(str(p)), lang, api_name="/caption")
                for p, lang in requests
            ]
            answers = [job.result(timeout=60) for job in jobs]
    finally:
        demo.close()
    for (path, lang), (text, score, status) in zip(requests, answers):
        expected = ofa.caption(str(path), lang=lang)
        assert (text, score) == (expected.text, round(expected.score, 4)) and status.startswith("Done in")


# ------------------------------------------------------------------------------------------------ text-to-image
@pytest.fixture(scope="module")
def imaginer(tmp_path_factory) -> OFA:
    """A random model with a random image tokenizer: 32 px pictures from 4x4 code grids."""
    return OFA.from_pretrained(make_text_to_image_checkpoint(tmp_path_factory.mktemp("t2i-ckpt")))


def enlarged(image: Image.Image, factor: int) -> np.ndarray:
    """Each pixel of ``image`` as a ``factor`` x ``factor`` block, by hand."""
    return np.asarray(image).repeat(factor, axis=0).repeat(factor, axis=1)


def test_upscale_makes_each_pixel_a_square_block():
    pixels = np.arange(2 * 3 * 3, dtype=np.uint8).reshape(2, 3, 3)  # 3 wide, 2 high
    image = Image.fromarray(pixels)
    assert np.array_equal(np.asarray(upscale(image, size=10)), enlarged(image, 3))  # 10 // 3 = 3: 9 x 6
    assert np.array_equal(np.asarray(upscale(image, size=256)), enlarged(image, 85))
    assert upscale(image, size=2).size == (3, 2)  # already larger than the target: never shrunk


def test_world_prompts_are_captions_of_small_val_scenes():
    world = World(seed=0)
    # By hand (counting objects of the val scenes): scene 0 has four objects, scenes 1, 2 and 4 three or fewer.
    assert [len(world.scene("val", i).objects) for i in range(5)] == [4, 3, 1, 4, 1]
    expected = [world.scene("val", i).captions[lang][0] for i in (1, 2, 4) for lang in ("en", "zh")]
    assert world_prompts(3) == expected
    assert expected[2:4] == ["a large orange star", "一个大的橙色星形"]


def test_imagine_shows_the_models_pictures_best_first(imaginer):
    backend = DemoBackend(imaginer)
    assert backend.can_imagine
    for prompt, language in (("a large orange star", "English"), ("一个大的橙色星形", "中文")):
        pictures, status = backend.imagine(f"  {prompt} ", 3, 2.5, 5)
        expected = imaginer.generate_image(prompt, n=3, guidance=2.5, seed=5)
        assert len(pictures) == 3
        for (picture, caption), rank, result in zip(pictures, (1, 2, 3), expected):
            assert result.image.size == (8 * GRID, 8 * GRID)  # 32 px: shown 8 times larger, at 256 px
            assert np.array_equal(np.asarray(picture), enlarged(result.image, 8))
            assert caption == f"#{rank} score {result.score:.3g}"
        scores = [result.score for result in expected]
        assert scores == sorted(scores, reverse=True)
        assert status.startswith("Done in") and status.endswith(
            f"3 pictures, best first; prompt read as {language}."
        )
    # The same seed draws the same pictures; another seed others. Whole floats are fine (Gradio sends floats).
    again, _ = backend.imagine("a large orange star", 3.0, 2.5, 5.0)
    first, _ = backend.imagine("a large orange star", 3, 2.5, 5)
    other, _ = backend.imagine("a large orange star", 3, 2.5, 6)
    pixels = [[np.asarray(picture).tobytes() for picture, _ in run] for run in (first, again, other)]
    assert pixels[0] == pixels[1] and pixels[0] != pixels[2]
    assert len(backend.imagine("a red circle", 1, 0, 0)[0]) == 1  # guidance 0: plain conditional sampling


def test_imagine_turns_bad_input_into_messages(imaginer, ofa, monkeypatch):
    notes: list[str] = []
    backend = DemoBackend(imaginer, notify=notes.append)
    monkeypatch.setattr(imaginer, "generate_image", None)  # nothing below may reach the model
    assert backend.imagine("   ", 4, 3, 0) == ([], f"⚠️ {NO_PROMPT}")
    assert backend.imagine(None, 4, 3, 0) == ([], f"⚠️ {NO_PROMPT}")
    # The recipe of the checkpoint reads at most 64 source tokens, as on the retrieval tab; 100 characters of
    # one token each ("的" is a token of the world tokenizer), plus bos and eos, make 102.
    pictures, message = backend.imagine("的" * 100, 4, 3, 0)
    assert (
        pictures == []
        and message == "⚠️ This prompt is too long: 102 tokens, the model reads at most 64; shorten it."
    )
    for n in (0, 9, 2.5, True, None, "4"):
        assert (
            "The number of pictures must be a whole number from 1 to 8, got"
            in backend.imagine("a", n, 3, 0)[1]
        )
    for guidance in (-0.5, 10.5, math.nan, math.inf, None, "3"):
        assert (
            "The guidance scale must be a number from 0 to 10, got" in backend.imagine("a", 4, guidance, 0)[1]
        )
    for seed in (-1, 2**32, 1.5, None, "0"):
        assert (
            "The seed must be a whole number from 0 to 4294967295, got" in backend.imagine("a", 4, 3, seed)[1]
        )
    assert backend.imagine("a", None, 3, 0)[1].endswith("got nothing.")
    assert len(notes) == 3 + 6 + 6 + 5 + 1
    # A checkpoint without an image tokenizer: a note, not a failure.
    bare = DemoBackend(ofa)
    assert not bare.can_imagine and bare.imagine("a red star", 4, 3, 0) == ([], f"⚠️ {NO_IMAGE_TOKENIZER}")
    monkeypatch.undo()
    # What the model itself refuses becomes a message too: an image tokenizer of the wrong grid size.
    bigger = ImageTokenizer(ImageTokenizerConfig(resolution=64, codebook_size=CODEBOOK, kmeans_init=False))
    mismatched = OFA(imaginer.model, imaginer.tokenizer, image_tokenizer=bigger)
    pictures, message = DemoBackend(mismatched).imagine("a red star", 4, 3, 0)
    assert pictures == [] and message.startswith("⚠️ Cannot draw this prompt: the image tokenizer makes 8x8")
