"""The showcase report: what a checkpoint does on a handful of world scenes, as a table and one HTML file.

    from ofa import OFA
    from ofa.demo.report import make_report
    make_report(OFA.from_pretrained("checkpoints/ofa-world-tiny"), "outputs")   # -> outputs/report.html

or ``ofa report [--checkpoint PATH] [--out DIR] [--n 8]`` (what ``make run`` runs). Scenes ``0 .. n-1`` of a
split of the seeded world (``heldout`` by default: every scene there has a colour-shape pair never seen in
training) are captioned in English and Chinese and each gets one English and one Chinese referring
expression to ground (the one ``ofa eval`` scores for that scene). Retrieval and text-to-image run only when
the API has them and the checkpoint can do them; otherwise the report says why not.

The terminal gets a table (one row per scene and language) and a summary line; ``report.html`` is one
self-contained file (pictures embedded as base64 PNG) headed by the checkpoint, the date and the machine.
A handful of scenes shows what the model does; for numbers to quote use ``ofa eval`` on hundreds.
"""

from __future__ import annotations

import base64
import html
import io
import math
import os
import platform
import re
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from PIL import Image

from ofa.data.sources import WorldSource
from ofa.data.world import World, parse_mentions
from ofa.evaluation.metrics import box_iou, grounding_metrics, object_f1, world_caption_f1

from .app import BOX_COLOUR, draw_box

if TYPE_CHECKING:
    from rich.console import Console

    from ofa.api import OFA

LANGS = ("en", "zh")
#: The reference (true) box; the prediction is drawn in :data:`ofa.demo.BOX_COLOUR` (magenta) over it.
REFERENCE_COLOUR = (0, 200, 0)
#: Pictures are enlarged to about this many pixels (nearest neighbour, so the world's pixels stay sharp).
DISPLAY_SIZE = 256
REPORT_FILE = "report.html"
GALLERY_DIR = "gallery"  # the report's scenes as PNG files
GALLERY_NAME = re.compile(r"(train|val|test|heldout)-\d{4}\.png")  # how the report names them
IMAGINE_EXAMPLES = 4  # text-to-image is the slowest task: only this many scenes get a drawing


@dataclass
class CaptionRow:
    """A generated caption, the scene's first reference caption and the caption's object scores."""

    text: str
    score: float
    reference: str
    mentions: list[tuple[Any, str, str]]
    object_f1: float


@dataclass
class GroundingRow:
    """A referring expression, its true box and the model's box (pixels of the scene) with their IoU."""

    text: str
    kind: str
    reference_box: tuple[float, float, float, float]
    box: tuple[float, float, float, float]
    score: float
    iou: float


@dataclass
class SceneResult:
    """Everything the report shows about one world scene."""

    split: str
    index: int
    image: Image.Image
    objects: list[tuple[str, str, str]]
    captions: dict[str, CaptionRow] = field(default_factory=dict)
    groundings: dict[str, GroundingRow] = field(default_factory=dict)
    retrieved: int | None = None  # the scene the English reference caption retrieved (text -> image)
    imagined: Image.Image | None = None  # the best drawing of the English reference caption


@dataclass
class Report:
    """The results of :func:`collect` and the context the header names."""

    checkpoint: str
    model: str
    world_seed: int
    split: str
    scenes: list[SceneResult]
    summary: dict[str, float]
    unavailable: dict[str, str]  # task -> why it was not run
    date: str
    machine: str
    seconds: float


# ---------------------------------------------------------------------- running the model


def collect(
    model: OFA, world: World, split: str = "heldout", indices: Sequence[int] = range(8), checkpoint: str = ""
) -> Report:
    """Run every task the model can do on ``world.scene(split, i)`` for ``i`` in ``indices``."""
    start = time.perf_counter()
    indices = list(indices)
    if not indices:
        raise ValueError("the report needs at least one example")
    scenes = [world.scene(split, i) for i in indices]
    results = [SceneResult(split, i, s.image, [o.triple for o in s.objects]) for i, s in zip(indices, scenes)]
    images = [s.image for s in scenes]
    summary: dict[str, float] = {}
    for lang in LANGS:
        captions = model.caption(images, lang=lang)
        for result, scene, caption in zip(results, scenes, captions):
            mentions = parse_mentions(caption.text, lang)
            f1 = object_f1([mentions], [result.objects])["object_f1"]
            result.captions[lang] = CaptionRow(
                caption.text, caption.score, scene.captions[lang][0], mentions, f1
            )
        f1 = world_caption_f1([c.text for c in captions], [r.objects for r in results], lang)
        summary[f"caption_object_f1_{lang}"] = f1["object_f1"]

        # The expression `ofa eval` scores for the scene, so the two agree on what is asked.
        source = WorldSource(world, split, "grounding", lang)
        samples = [source[i] for i in indices]
        grounded = model.ground(images, [s["text"] for s in samples], lang=lang)
        references = [tuple(float(v) for v in s["box"]) for s in samples]
        ious = box_iou([g.box for g in grounded], references)
        for result, sample, ref, g, iou in zip(results, samples, references, grounded, ious):
            result.groundings[lang] = GroundingRow(
                sample["text"], sample["kind"], ref, g.box, g.score, float(iou)
            )
        scores = grounding_metrics([g.box for g in grounded], references)
        summary[f"grounding_acc50_{lang}"] = scores["Acc@0.5"]
        summary[f"grounding_miou_{lang}"] = scores["mean_IoU"]

    unavailable: dict[str, str] = {}
    reason = _retrieval_unavailable(model)
    if reason is None:
        summary["retrieval_r1_en"] = _retrieve(model, results, scenes)
    else:
        unavailable["retrieval"] = reason
    reason = _imagine_unavailable(model)
    if reason is None:
        _imagine(model, results[:IMAGINE_EXAMPLES], scenes)
    else:
        unavailable["text-to-image"] = reason
    return Report(
        checkpoint=checkpoint or "(in memory)",
        model=repr(model),
        world_seed=world.config.seed,
        split=split,
        scenes=results,
        summary=summary,
        unavailable=unavailable,
        date=datetime.now().astimezone().isoformat(sep=" ", timespec="seconds"),
        machine=describe_machine(model),
        seconds=time.perf_counter() - start,
    )


def _retrieval_unavailable(model: OFA) -> str | None:
    if not hasattr(model, "retrieve"):
        return "this version of ofa has no retrieval API yet"
    if getattr(model.model, "retrieval", None) is None:
        return "this checkpoint has no retrieval head (it was not trained for retrieval)"
    return None


def _imagine_unavailable(model: OFA) -> str | None:
    if not hasattr(model, "generate_image"):
        return "this version of ofa has no text-to-image API yet"
    from ofa.api import InputError

    try:
        model.image_tokenizer  # noqa: B018 - loads it, or says why there is none
    except InputError:
        return "this checkpoint has no image tokenizer (it was not trained for text-to-image)"
    return None


def _retrieve(model: OFA, results: list[SceneResult], scenes: list[Any]) -> float:
    """Text -> image over the report's own scenes: each English reference caption searches all pictures."""
    # Reranking reorders the top k; with k = 1 it could only cost time.
    hits = model.retrieve([s.captions["en"][0] for s in scenes], [s.image for s in scenes], k=1, rerank=False)
    correct = 0
    for position, (result, found) in enumerate(zip(results, hits)):
        result.retrieved = results[found[0].index].index if found else None
        correct += bool(found) and found[0].index == position
    return correct / len(results)


def _imagine(model: OFA, results: list[SceneResult], scenes: list[Any]) -> None:
    drawings = model.generate_image([s.captions["en"][0] for s in scenes[: len(results)]], n=2, seed=0)
    for result, best in zip(results, drawings):
        result.imagined = best[0].image


def describe_machine(model: OFA | None = None) -> str:
    """Host, OS, CPU (model and cores), Python and torch versions, and the device the model runs on."""
    import torch

    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            cpu = next((line.split(":", 1)[1].strip() for line in f if line.startswith("model name")), cpu)
    except OSError:
        pass
    device = "cpu" if model is None else str(model.device)
    if device.startswith("cuda"):
        device += f" ({torch.cuda.get_device_name(model.device)})"
    return (
        f"{platform.node()}: {platform.system()} {platform.release()}, {cpu}, {os.cpu_count()} cores; "
        f"Python {platform.python_version()}, torch {torch.__version__}; device {device}"
    )


# ---------------------------------------------------------------------- terminal


def print_table(report: Report, console: Console | None = None) -> None:
    """One row per scene and language (caption with its object F1, expression with its IoU), then a
    summary line."""
    from rich.console import Console
    from rich.table import Table

    console = console or Console()
    table = Table(title=f"{report.checkpoint}: {len(report.scenes)} {report.split} scenes", show_lines=False)
    table.add_column("scene", no_wrap=True)
    table.add_column("lang")
    table.add_column("caption")
    table.add_column("obj F1", justify="right")
    table.add_column("expression")
    table.add_column("IoU", justify="right")
    for scene in report.scenes:
        for lang in LANGS:
            caption, ground = scene.captions[lang], scene.groundings[lang]
            table.add_row(
                f"{scene.split}/{scene.index}" if lang == LANGS[0] else "",
                lang,
                caption.text or "(empty)",
                f"{caption.object_f1:.2f}",
                ground.text,
                _iou_cell(ground.iou),
                end_section=lang == LANGS[-1],
            )
    console.print(table)
    console.print(summary_line(report))


def _iou_cell(iou: float) -> str:
    return f"[green]{iou:.2f}[/]" if iou >= 0.5 else f"{iou:.2f}"


def summary_line(report: Report) -> str:
    """The report's scores in one line (object F1 of the captions, grounding Acc@0.5 and mean IoU)."""
    s = report.summary
    parts = [
        "caption object-F1 " + " ".join(f"{lang} {s[f'caption_object_f1_{lang}']:.2f}" for lang in LANGS),
        "grounding Acc@0.5 "
        + " ".join(
            f"{lang} {s[f'grounding_acc50_{lang}']:.2f} (mIoU {s[f'grounding_miou_{lang}']:.2f})"
            for lang in LANGS
        ),
    ]
    if "retrieval_r1_en" in s:
        parts.append(f"retrieval R@1 en {s['retrieval_r1_en']:.2f}")
    parts.append(f"{len(report.scenes)} {report.split} scenes in {report.seconds:.1f} s")
    return " | ".join(parts)


# ---------------------------------------------------------------------- HTML


def grounding_picture(image: Image.Image, row: GroundingRow, size: int = DISPLAY_SIZE) -> Image.Image:
    """The scene enlarged to about ``size`` px with the true box (green) and the predicted box (magenta)."""
    scale = max(1, round(size / max(image.size)))
    big = image.convert("RGB").resize((image.width * scale, image.height * scale), Image.Resampling.NEAREST)
    width = max(2, scale)
    for box, colour in ((row.reference_box, REFERENCE_COLOUR), (row.box, BOX_COLOUR)):
        if all(math.isfinite(v) for v in box):  # an untrained model may emit no box at all
            big = draw_box(big, tuple(v * scale for v in box), colour, width)  # type: ignore[arg-type]
    return big


def png_data_uri(image: Image.Image) -> str:
    """``data:image/png;base64,...`` of ``image``, so the HTML needs no other file."""
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


CSS = """
body { font-family: system-ui, sans-serif; margin: 2em auto; max-width: 1100px; color: #222; }
header dl { display: grid; grid-template-columns: max-content 1fr; gap: .2em 1em; }
header dt { font-weight: 600; }
.summary { font-size: 1.1em; background: #f4f4f4; padding: .6em 1em; border-radius: 6px; }
.scene-card { border-top: 1px solid #ccc; padding: .5em 0 1em; }
.row { display: flex; gap: 1.5em; flex-wrap: wrap; align-items: flex-start; }
.texts { flex: 1; min-width: 320px; }
figure { margin: 0; text-align: center; }
figure img { image-rendering: pixelated; }
figcaption { max-width: 260px; font-size: .9em; }
table { border-collapse: collapse; }
td, th { padding: .25em .6em; text-align: left; vertical-align: top; border-bottom: 1px solid #eee; }
.hit { color: #070; font-weight: 600; }
.key-pred { color: rgb(255, 0, 255); font-weight: 600; }
.key-ref { color: rgb(0, 160, 0); font-weight: 600; }
"""


def render_html(report: Report) -> str:
    """The report as one self-contained HTML page."""
    e = html.escape
    indices = ", ".join(str(s.index) for s in report.scenes)
    header = [
        ("checkpoint", report.checkpoint),
        ("model", report.model),
        ("date", report.date),
        ("machine", report.machine),
        ("examples", f"world seed {report.world_seed}, split {report.split}, scenes {indices}"),
        ("time", f"{report.seconds:.1f} s"),
    ]
    out = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        f"<title>OFA report: {e(report.checkpoint)}</title><style>{CSS}</style></head><body>",
        f"<header><h1>OFA report: {e(report.checkpoint)}</h1><dl>",
        *(f"<dt>{e(k)}</dt><dd>{e(v)}</dd>" for k, v in header),
        "</dl></header>",
        f'<p class="summary">{e(summary_line(report))}</p>',
        "<p>Boxes: <span class='key-ref'>green</span> the true box of the expression, "
        "<span class='key-pred'>magenta</span> the model's. An IoU of at least 0.5 counts as a hit. "
        "Object F1 compares the (size, colour, shape) mentions of a caption with the scene's objects.</p>",
    ]
    for task, reason in report.unavailable.items():
        out.append(f"<p><b>{e(task)}</b>: not run: {e(reason)}.</p>")
    for scene in report.scenes:
        out.append(_scene_html(scene))
    out.append("</body></html>")
    return "\n".join(out) + "\n"


def _scene_html(scene: SceneResult) -> str:
    e = html.escape
    parts = [
        f'<section class="scene-card" id="{e(scene.split)}-{scene.index}">'
        f"<h3>{e(scene.split)} scene {scene.index}</h3><div class='row'>"
    ]
    for lang in LANGS:
        g = scene.groundings[lang]
        parts.append(
            f'<figure><img class="scene" alt="{e(scene.split)} scene {scene.index}, {lang}" '
            f'src="{png_data_uri(grounding_picture(scene.image, g))}">'
            f"<figcaption>{lang}: “{e(g.text)}” ({e(g.kind)})<br>IoU {g.iou:.2f}, score {g.score:.2f}"
            "</figcaption></figure>"
        )
    if scene.imagined is not None:
        parts.append(
            f'<figure><img class="imagined" alt="drawn from the caption" src="{png_data_uri(scene.imagined)}">'
            "<figcaption>drawn from the English reference caption</figcaption></figure>"
        )
    rows = ["<table><tr><th></th><th>caption</th><th>reference</th><th>object F1</th></tr>"]
    for lang in LANGS:
        c = scene.captions[lang]
        rows.append(
            f"<tr><td>{lang}</td><td>{e(c.text) or '<i>(empty)</i>'}</td><td>{e(c.reference)}</td>"
            f"<td>{c.object_f1:.2f}</td></tr>"
        )
    rows.append("</table>")
    if scene.retrieved is not None:
        hit = scene.retrieved == scene.index
        rows.append(
            f"<p>the English reference caption retrieved scene {scene.retrieved}: "
            f"<span class='{'hit' if hit else 'miss'}'>{'right' if hit else 'wrong'}</span></p>"
        )
    parts.append(f"<div class='texts'>{''.join(rows)}</div></div></section>")
    return "".join(parts)


# ---------------------------------------------------------------------- entry point


def make_report(
    model: OFA,
    out_dir: str | Path = "outputs",
    n_examples: int = 8,
    split: str = "heldout",
    *,
    world: World | None = None,
    checkpoint: str | Path | None = None,
    console: Console | None = None,
) -> Path:
    """Run the model on scenes ``0 .. n_examples-1`` of ``split``, print the table and write
    ``out_dir/report.html``; returns its path. The scenes' pictures also go to ``out_dir/gallery/`` (PNG), for
    trying the CLI on them (``ofa caption``, ``ofa retrieve --gallery out_dir/gallery "红色的圆形"``).

    ``world``: the world the scenes come from (default: seed 0 at the model's image size; the CLI passes
    the world of the checkpoint's recipe). ``checkpoint``: the name the header gives the model.
    """
    if not isinstance(n_examples, int) or isinstance(n_examples, bool) or n_examples < 1:
        raise ValueError(f"n_examples must be a positive integer, got {n_examples!r}")
    world = world or World(seed=0, image_size=model.image_size)
    report = collect(model, world, split, range(n_examples), str(checkpoint or ""))
    print_table(report, console)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    gallery = out / GALLERY_DIR
    gallery.mkdir(exist_ok=True)
    written = {f"{scene.split}-{scene.index:04d}.png" for scene in report.scenes}
    for old in gallery.glob("*.png"):
        # a previous report's scene (same naming) would otherwise be ranked by `ofa retrieve --gallery` too
        if GALLERY_NAME.fullmatch(old.name) and old.name not in written:
            old.unlink()
    for scene in report.scenes:
        scene.image.save(gallery / f"{scene.split}-{scene.index:04d}.png")
    path = out / REPORT_FILE
    path.write_text(render_html(report), encoding="utf-8")
    return path


__all__ = [
    "REFERENCE_COLOUR",
    "Report",
    "SceneResult",
    "collect",
    "describe_machine",
    "grounding_picture",
    "make_report",
    "print_table",
    "render_html",
    "summary_line",
]
