"""`ofa report` / `make_report`: scores against the world's own truth, a self-contained HTML file, exit codes.

The scoring is checked with a stand-in model that answers from the world's truth (reference captions, true
boxes shifted by a known amount), so every number of the summary is known by hand. The HTML and the CLI are
checked on a small random-weight checkpoint, its boxes' IoUs recomputed here by hand.
"""

from __future__ import annotations

import base64
import io
import platform
import re
from datetime import date
from html.parser import HTMLParser
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from PIL import Image
from rich.console import Console

import ofa.cli
from ofa import OFA
from ofa.api import CaptionResult, GroundingResult
from ofa.cli import main
from ofa.data.world import World
from ofa.demo.report import IMAGINE_EXAMPLES, collect, make_report, render_html
from tests import test_text_to_image as text_to_image_tests
from tests.test_api import make_checkpoint

SIZE = 64  # the random checkpoint's image size


class TruthModel:
    """Answers like `OFA` but from the world's truth: each scene's first reference caption, and the true box
    of each expression, moved right by half its width in odd-numbered scenes (IoU exactly 1/3)."""

    image_size = SIZE
    device = torch.device("cpu")

    def __init__(self, world: World, split: str, n: int) -> None:
        self.model = SimpleNamespace(retrieval=None)
        self.scenes = {s.image.tobytes(): s for s in (world.scene(split, i) for i in range(n))}

    def _scene(self, image: Image.Image):
        return self.scenes[image.tobytes()]

    def caption(self, images, lang="en"):
        return [CaptionResult(self._scene(im).captions[lang][0], 0.9, lang) for im in images]

    def ground(self, images, texts, lang=None):
        results = []
        for image, text in zip(images, texts):
            scene = self._scene(image)
            x0, y0, x1, y1 = next(r.box for r in scene.refs_for(lang) if r.text == text)
            shift = (x1 - x0) / 2 if scene.index % 2 else 0.0
            results.append(GroundingResult((x0 + shift, y0, x1 + shift, y1), 0.8, text, lang))
        return results

    def __repr__(self) -> str:
        return "TruthModel()"


class TruthModelWithExtras(TruthModel):
    """Also retrieves (every caption finds its own scene except the last, which finds scene 0) and draws."""

    def __init__(self, *args) -> None:
        super().__init__(*args)
        self.model = SimpleNamespace(retrieval=object())
        self.image_tokenizer = object()

    def retrieve(self, queries, gallery, k=5, rerank=True):
        n = len(queries)
        return [[SimpleNamespace(index=i if i < n - 1 else 0, similarity=0.5)] for i in range(n)]

    def generate_image(self, texts, n=4, seed=None):
        return [[SimpleNamespace(image=Image.new("RGB", (32, 32), (9, 9, 9)))] * n for _ in texts]


class Images(HTMLParser):
    """The <img> tags of a page (attributes), and whether it links to anything outside itself."""

    def __init__(self) -> None:
        super().__init__()
        self.images: list[dict[str, str]] = []
        self.external: list[str] = []

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        if tag == "img":
            self.images.append(attrs)
        for key in ("src", "href"):
            if attrs.get(key) and not attrs[key].startswith("data:"):
                self.external.append(f"<{tag} {key}={attrs[key]}>")


def parse_images(text: str) -> Images:
    parser = Images()
    parser.feed(text)
    return parser


def decode_png(src: str) -> Image.Image:
    prefix = "data:image/png;base64,"
    assert src.startswith(prefix)
    return Image.open(io.BytesIO(base64.b64decode(src[len(prefix) :])))


def hand_iou(a, b) -> float:
    ix = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    iy = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - ix * iy
    return ix * iy / union if union > 0 and a[2] >= a[0] and a[3] >= a[1] else 0.0


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> Path:
    return make_checkpoint(tmp_path_factory.mktemp("report-ckpt"))


@pytest.fixture(scope="module")
def world() -> World:
    return World(seed=0, image_size=SIZE)


# ---------------------------------------------------------------------- scores


def test_scores_match_the_world_truth(world):
    n = 4
    report = collect(TruthModel(world, "heldout", n), world, "heldout", range(n))
    s = report.summary
    # Reference captions name every object once: full object F1 in both languages.
    assert s["caption_object_f1_en"] == 1.0 and s["caption_object_f1_zh"] == 1.0
    assert all(r.captions[lang].object_f1 == 1.0 for r in report.scenes for lang in ("en", "zh"))
    # Scenes 0 and 2 are exact (IoU 1), 1 and 3 are shifted by half a width (IoU 1/3).
    for lang in ("en", "zh"):
        assert s[f"grounding_acc50_{lang}"] == pytest.approx(0.5)
        assert s[f"grounding_miou_{lang}"] == pytest.approx((1 + 1 / 3 + 1 + 1 / 3) / 4)
        assert [r.groundings[lang].iou for r in report.scenes] == pytest.approx([1, 1 / 3, 1, 1 / 3])
    scene = world.scene("heldout", 1)
    row = report.scenes[1].groundings["en"]
    assert row.text in {r.text for r in scene.refs_for("en")}
    assert row.reference_box == next(r.box for r in scene.refs_for("en") if r.text == row.text)
    assert report.scenes[1].captions["zh"].reference == scene.captions["zh"][0]
    assert set(report.unavailable) == {"retrieval", "text-to-image"}
    assert "no retrieval API" in report.unavailable["retrieval"]


def test_retrieval_and_drawings_run_when_available(world):
    n = 6
    report = collect(TruthModelWithExtras(world, "val", n), world, "val", range(n))
    assert report.unavailable == {}
    assert report.summary["retrieval_r1_en"] == pytest.approx(5 / 6)
    assert [r.retrieved for r in report.scenes] == [0, 1, 2, 3, 4, 0]
    page = parse_images(render_html(report))
    assert sum(a.get("class") == "imagined" for a in page.images) == IMAGINE_EXAMPLES
    assert sum(a.get("class") == "scene" for a in page.images) == 2 * n


def test_a_checkpoint_without_retrieval_head_says_so(world):
    model = TruthModelWithExtras(world, "val", 2)
    model.model = SimpleNamespace(retrieval=None)
    report = collect(model, world, "val", range(2))
    assert "no retrieval head" in report.unavailable["retrieval"]


def test_a_checkpoint_with_an_image_tokenizer_draws(tmp_path):
    model = OFA.from_pretrained(text_to_image_tests.make_checkpoint(tmp_path / "ckpt"))
    report = collect(model, World(seed=0, image_size=model.image_size), "val", range(2))
    assert "text-to-image" not in report.unavailable
    side = 8 * text_to_image_tests.GRID  # the image tokenizer's pictures
    assert [r.imagined.size for r in report.scenes] == [(side, side)] * 2


# ---------------------------------------------------------------------- HTML on a real checkpoint


def test_make_report_writes_one_self_contained_page(checkpoint, world, tmp_path):
    n = 3
    model = OFA.from_pretrained(checkpoint)
    terminal = io.StringIO()
    # an earlier report's scene is removed from the gallery, a user's own picture is kept
    (tmp_path / "out" / "gallery").mkdir(parents=True)
    world.scene("val", 7).image.save(tmp_path / "out" / "gallery" / "val-0007.png")
    world.scene("val", 8).image.save(tmp_path / "out" / "gallery" / "mine.png")
    path = make_report(
        model, tmp_path / "out", n, "heldout", world=world, checkpoint="my-ckpt",
        console=Console(file=terminal, width=200),
    )  # fmt: skip
    assert path == tmp_path / "out" / "report.html"
    text = path.read_text(encoding="utf-8")
    page = parse_images(text)
    assert page.external == [] and "<script" not in text and "<link" not in text
    scenes = [a for a in page.images if a.get("class") == "scene"]
    assert len(scenes) == 2 * n  # one picture per scene and language
    for attrs in scenes:
        picture = decode_png(attrs["src"])
        assert picture.format == "PNG" and picture.size == (256, 256)  # 64 px enlarged 4x
    # The header names the checkpoint, the date and the machine.
    assert "my-ckpt" in text and date.today().isoformat() in text and platform.node() in text
    assert "world seed 0, split heldout, scenes 0, 1, 2" in text
    # The scenes are also written as plain PNG files, pixel for pixel the world's.
    files = sorted((tmp_path / "out" / "gallery").glob("heldout-*"))
    assert sorted(f.name for f in (tmp_path / "out" / "gallery").iterdir()) == [
        *(f"heldout-{i:04d}.png" for i in range(n)),
        "mine.png",
    ]
    for i, f in enumerate(files):
        assert np.array_equal(np.asarray(Image.open(f)), np.asarray(world.scene("heldout", i).image))
    printed = terminal.getvalue()
    assert all(f"heldout/{i}" in printed for i in range(n)) and "caption object-F1" in printed

    # Each figure's expression is one of its scene's, and its IoU is the model's box against the true one.
    captions = re.findall(r"<figcaption>(en|zh): “(.*?)” \((\w+)\)<br>IoU ([0-9.]+)", text)
    assert len(captions) == 2 * n
    for k, (lang, expression, kind, shown) in enumerate(captions):
        scene = world.scene("heldout", k // 2)
        ref = next(r for r in scene.refs_for(lang) if r.text == expression)
        assert ref.kind == kind
        box = model.ground(scene.image, expression, lang=lang).box
        assert float(shown) == pytest.approx(hand_iou(box, ref.box), abs=0.005)
        assert scene.captions[lang][0] in text


# ---------------------------------------------------------------------- CLI


def test_cli_writes_the_report(checkpoint, tmp_path, capsys):
    assert main(["report", "--checkpoint", str(checkpoint), "--out", str(tmp_path), "--n", "2"]) == 0
    assert (tmp_path / "report.html").is_file()
    assert capsys.readouterr().out.strip().endswith(f"wrote {tmp_path / 'report.html'}")


def test_cli_missing_checkpoint_is_one_line(tmp_path, capsys):
    missing = tmp_path / "nope"
    assert main(["report", "--checkpoint", str(missing)]) == 1
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and str(missing) in err


def test_cli_default_checkpoint_not_shipped_yet(monkeypatch, tmp_path, capsys):
    monkeypatch.setattr(ofa.cli, "DEFAULT_CHECKPOINT", "checkpoints/not-shipped-yet")
    monkeypatch.chdir(tmp_path)
    assert main(["report", "--out", str(tmp_path)]) == 1
    err = capsys.readouterr().err.strip()
    assert err.splitlines() == [err] and "checkpoints/not-shipped-yet is not in this checkout yet" in err
    assert not (tmp_path / "report.html").exists()


def test_cli_bad_values(checkpoint, tmp_path, capsys):
    assert main(["report", "--checkpoint", str(checkpoint), "--out", str(tmp_path), "--n", "0"]) == 1
    assert "n_examples must be a positive integer" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exit_info:
        main(["report", "--checkpoint", str(checkpoint), "--split", "nowhere"])
    assert exit_info.value.code == 2
