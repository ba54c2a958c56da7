"""The demo served on localhost and driven in a real headless Chromium through Playwright.

A random-weight checkpoint with a retrieval head and an image tokenizer serves the demo (gibberish but
well-formed outputs); what the page shows is checked against the same model called directly in this process:
the caption text, on the grounding tab the box coordinates and the output image itself (outlined in the box
colour exactly at the box, untouched elsewhere), on the retrieval tab the k gallery images found for a Chinese
query, and on the text-to-image tab the n pictures drawn for a prompt, pixel for pixel.
Needs Debian's `chromium` (`/usr/bin/chromium`, or `OFA_CHROMIUM`) and the `playwright` package; no browser is
downloaded. Skips with the reason when either is missing. Screenshots go to `outputs/demo_screenshot.png`
(grounding) and `outputs/demo_text_to_image_screenshot.png`.
"""

from __future__ import annotations

import io
import os
import socket
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from ofa import OFA
from ofa.data.world import World
from tests.conftest import REPO
from tests.test_api import huge_png
from tests.test_demo import make_retrieval_checkpoint

CHROMIUM = Path(os.environ.get("OFA_CHROMIUM", "/usr/bin/chromium"))
CHROMIUM_ARGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
    "--disable-component-update", "--disable-sync", "--no-first-run",
]  # fmt: skip
SCREENSHOT = REPO / "outputs" / "demo_screenshot.png"
TEXT_TO_IMAGE_SCREENSHOT = REPO / "outputs" / "demo_text_to_image_screenshot.png"
MAGENTA = (255, 0, 255)  # the demo's documented box colour
TIMEOUT_MS = 20_000  # per wait; the first request of a fresh page is the slowest


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def sync_api():
    if not CHROMIUM.is_file():
        pytest.skip(f"no Chromium at {CHROMIUM} (apt-get install chromium, or set OFA_CHROMIUM)")
    return pytest.importorskip(
        "playwright.sync_api", reason="playwright is not installed (pip install playwright)"
    )


@pytest.fixture(scope="module")
def model(tmp_path_factory) -> OFA:
    checkpoint = make_retrieval_checkpoint(tmp_path_factory.mktemp("ckpt"), image_tokenizer=True)
    return OFA.from_pretrained(checkpoint)


@pytest.fixture(scope="module")
def gallery(tmp_path_factory) -> list:
    from ofa.demo.app import world_gallery

    return world_gallery(8, folder=tmp_path_factory.mktemp("gallery"))


@pytest.fixture(scope="module")
def server(sync_api, model, gallery, tmp_path_factory):
    pytest.importorskip("gradio", reason="gradio is not installed")
    from ofa.demo import launch, world_examples

    examples = world_examples(2, folder=tmp_path_factory.mktemp("examples"))
    demo, url = launch(model, port=free_port(), block=False, quiet=True, examples=examples, gallery=gallery)
    yield url
    demo.close()


@pytest.fixture(scope="module")
def browser(sync_api, tmp_path_factory):
    with sync_api.sync_playwright() as playwright:
        context = playwright.chromium.launch_persistent_context(
            str(tmp_path_factory.mktemp("chromium-profile")),  # fresh user data: no state between runs
            executable_path=str(CHROMIUM),
            headless=True,
            args=CHROMIUM_ARGS,
            viewport={"width": 1280, "height": 900},
        )
        context.set_default_timeout(TIMEOUT_MS)
        yield context
        context.close()


@pytest.fixture
def page(browser, server):
    page = browser.new_page()
    page.goto(server, wait_until="domcontentloaded")
    yield page
    page.close()


@pytest.fixture(scope="module")
def scene_file(tmp_path_factory) -> tuple[Path, str]:
    """A world scene the examples do not use, with one of its English referring expressions."""
    scene = World(seed=0).scene("test", 3)
    path = tmp_path_factory.mktemp("upload") / "scene.png"
    scene.image.save(path)
    return path, scene.refs_for("en")[0].text


def test_caption_tab_shows_the_models_caption(page, sync_api, model, scene_file):
    expect = sync_api.expect
    path, _ = scene_file
    page.locator("#caption-image input[type=file]").set_input_files(str(path))
    expect(page.locator("#caption-image img")).to_be_visible()  # uploaded
    page.locator("#caption-button").click()
    expected = model.caption(str(path), lang="en")
    expect(page.locator("#caption-text textarea")).to_have_value(expected.text)
    assert float(page.locator("#caption-score input").input_value()) == round(expected.score, 4)
    expect(page.locator("#caption-status")).to_contain_text("Done in")

    page.get_by_label("中文").check()
    page.locator("#caption-button").click()
    expect(page.locator("#caption-text textarea")).to_have_value(model.caption(str(path), lang="zh").text)


def test_grounding_tab_draws_the_models_box(page, sync_api, model, scene_file):
    expect = sync_api.expect
    path, expression = scene_file
    page.get_by_role("tab", name="Grounding").click()
    page.locator("#ground-image input[type=file]").set_input_files(str(path))
    expect(page.locator("#ground-image img")).to_be_visible()  # uploaded
    page.locator("#ground-text textarea").fill(expression)
    page.locator("#ground-button").click()

    expected = model.ground(str(path), expression)
    x0, y0, x1, y1 = expected.box
    expect(page.locator("#ground-box textarea")).to_have_value(f"{x0:.1f}, {y0:.1f}, {x1:.1f}, {y1:.1f}")
    output = page.locator("#ground-output img")
    expect(output).to_be_visible()
    SCREENSHOT.parent.mkdir(exist_ok=True)
    page.screenshot(path=str(SCREENSHOT), full_page=True)

    # The very image the browser shows, fetched from its own address.
    response = page.request.get(output.get_attribute("src"))
    assert response.ok
    shown = np.asarray(Image.open(io.BytesIO(response.body())).convert("RGB"))
    original = np.asarray(Image.open(path).convert("RGB"))
    assert shown.shape == original.shape
    assert not (original == MAGENTA).all(axis=-1).any()  # so every magenta pixel is the outline
    outline = (shown == MAGENTA).all(axis=-1)
    rows, cols = np.nonzero(outline)
    height, width = outline.shape
    # The outline's outer edge is the box rounded to whole pixels, corners ordered, clipped to the image.
    left, right = sorted(min(max(round(v), 0), width - 1) for v in (x0, x1))
    top, bottom = sorted(min(max(round(v), 0), height - 1) for v in (y0, y1))
    assert (cols.min(), rows.min(), cols.max(), rows.max()) == (left, top, right, bottom)
    assert outline[top, left : right + 1].all() and outline[bottom, left : right + 1].all()
    assert outline[top : bottom + 1, left].all() and outline[top : bottom + 1, right].all()
    assert (shown[~outline] == original[~outline]).all()  # nothing else changed


def test_grounding_without_text_shows_a_friendly_message(page, sync_api, scene_file):
    expect = sync_api.expect
    page.get_by_role("tab", name="Grounding").click()
    page.locator("#ground-image input[type=file]").set_input_files(str(scene_file[0]))
    expect(page.locator("#ground-image img")).to_be_visible()  # uploaded
    page.locator("#ground-text textarea").fill("   ")
    page.locator("#ground-button").click()
    expect(page.locator("#ground-status")).to_contain_text("Please type a referring expression first")
    expect(page.get_by_text("Traceback")).to_have_count(0)
    expect(page.locator("#ground-box textarea")).to_have_value("")


def test_oversized_images_get_one_line_messages(page, sync_api, tmp_path):
    expect = sync_api.expect
    upload = page.locator("#caption-image input[type=file]")
    # Over the API's 64 M pixel limit: our handler answers in the status line.
    upload.set_input_files(str(huge_png(tmp_path / "huge.png", 9000, 9000)))
    expect(page.locator("#caption-image img")).to_have_count(1)
    page.locator("#caption-button").click()
    expect(page.locator("#caption-status")).to_contain_text("9000x9000 is larger than the 64 M pixel limit")
    # Past PIL's own limit: a decompression bomb, refused before any pixel is decoded.
    page.get_by_role("button", name="Remove Image").click()
    expect(page.locator("#caption-image img")).to_have_count(0)
    upload.set_input_files(str(huge_png(tmp_path / "bomb.png", 40000, 40000)))
    expect(page.locator("#caption-image img")).to_have_count(1)
    page.locator("#caption-button").click()
    expect(page.locator("#caption-status")).to_contain_text("bomb.png: image too large to decode safely")
    expect(page.get_by_text("Traceback")).to_have_count(0)


def test_retrieval_tab_shows_the_k_best_gallery_images(page, sync_api, model, gallery):
    from ofa.demo.app import DEFAULT_RERANK, DemoBackend

    expect = sync_api.expect
    query, k = gallery[4].expression, 3  # a Chinese caption of one of the scenes
    page.get_by_role("tab", name="Retrieval 检索").click()
    page.locator("#retrieval-query textarea").fill(query)
    page.locator("#retrieval-k input[type=number]").fill(str(k))
    page.locator("#retrieval-k input[type=number]").press("Enter")
    page.locator("#retrieval-button").click()
    expect(page.locator("#retrieval-status")).to_contain_text("Done in")
    shown = page.locator("#retrieval-gallery img")
    expect(shown).to_have_count(k)

    expected, _ = DemoBackend(model, gallery=[item.image for item in gallery]).retrieve(
        query, "zh", k, rerank=DEFAULT_RERANK
    )
    for index, (path, caption) in enumerate(expected):
        expect(page.locator("#retrieval-gallery")).to_contain_text(caption)
        response = page.request.get(shown.nth(index).get_attribute("src"))
        assert response.ok
        picture = np.asarray(Image.open(io.BytesIO(response.body())).convert("RGB"))
        assert np.array_equal(picture, np.asarray(Image.open(path).convert("RGB")))


def test_text_to_image_tab_shows_the_n_pictures(page, sync_api, model):
    from ofa.demo.app import DEFAULT_GUIDANCE, DemoBackend

    expect = sync_api.expect
    prompt, n, seed = "一个大的橙色星形", 3, 7
    page.get_by_role("tab", name="Text-to-image 文生图").click()
    status = page.locator("#imagine-status")
    page.locator("#imagine-prompt textarea").fill(prompt)
    page.locator("#imagine-n input[type=number]").fill(str(n))
    page.locator("#imagine-n input[type=number]").press("Enter")
    page.locator("#imagine-seed input").fill(str(seed))
    page.locator("#imagine-button").click()
    expect(status).to_contain_text("Done in")
    expect(status).to_contain_text("prompt read as 中文")
    shown = page.locator("#imagine-gallery img")
    expect(shown).to_have_count(n)
    TEXT_TO_IMAGE_SCREENSHOT.parent.mkdir(exist_ok=True)
    page.screenshot(path=str(TEXT_TO_IMAGE_SCREENSHOT), full_page=True)

    expected, _ = DemoBackend(model).imagine(prompt, n, DEFAULT_GUIDANCE, seed)
    for index, (picture, caption) in enumerate(expected):
        expect(page.locator("#imagine-gallery")).to_contain_text(caption)
        response = page.request.get(shown.nth(index).get_attribute("src"))
        assert response.ok
        served = np.asarray(Image.open(io.BytesIO(response.body())).convert("RGB"))
        assert np.array_equal(served, np.asarray(picture))  # PNG: the enlarged pixels arrive unchanged

    # Bad input: a message in the status line.
    page.locator("#imagine-seed input").fill("-1")
    page.locator("#imagine-button").click()
    expect(status).to_contain_text("The seed must be a whole number from 0 to 4294967295, got -1.")
    page.locator("#imagine-prompt textarea").fill("  ")
    page.locator("#imagine-button").click()
    expect(status).to_contain_text("Please describe the picture to draw first")
    expect(page.get_by_text("Traceback")).to_have_count(0)
