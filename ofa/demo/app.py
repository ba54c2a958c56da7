"""The Gradio app: :func:`build_demo` lays out the tabs, :class:`DemoBackend` answers their buttons.

The backend holds no Gradio code, so what each button does (including every message a bad input gets) is
plain Python; :func:`build_demo` only wires it to components. There is a tab per task ``OFA`` serves:
captioning and grounding (retrieval and text-to-image tabs belong here once ``OFA`` has those methods).
"""

from __future__ import annotations

import html
import math
import os
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from PIL import Image, ImageDraw

if TYPE_CHECKING:
    import gradio as gr

    from ofa.api import OFA

#: Outline colour of predicted boxes; magenta is far from every colour the synthetic world paints.
BOX_COLOUR = (255, 0, 255)
LANGUAGES = [("English", "en"), ("中文", "zh")]
DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 7860
#: One decode at a time: a CPU model gains nothing from parallel requests, which would only contend for cores.
DEFAULT_CONCURRENCY = 1
DEFAULT_QUEUE_SIZE = 32
DEFAULT_MAX_FILE_SIZE = "20mb"
# Web fonts would be fetched from Google at page load; the demo must work offline.
SYSTEM_FONTS = ["ui-sans-serif", "system-ui", "sans-serif"]
MONO_FONTS = ["ui-monospace", "monospace"]
# Display height of images; small ones (the world's 128 px scenes) are scaled up to it to stay legible.
IMAGE_HEIGHT = 320
CSS = ".ofa-image img { width: 100%; height: 100%; object-fit: contain; }"

NO_IMAGE = "Please upload an image first (or click one of the examples)."
NO_EXPRESSION = "Please type a referring expression first, e.g. “the red star”."
NO_BOX = "The model produced no box for this expression; try rephrasing it."


@dataclass(frozen=True)
class DemoExample:
    """An example input: an image file and a referring expression for it (in ``lang``)."""

    image: Path
    expression: str
    lang: str


def world_examples(count: int = 3, folder: str | Path | None = None) -> list[DemoExample]:
    """Render ``count`` validation scenes of the synthetic world (seed 0) as PNG files, each with one of its
    referring expressions; the last example uses a Chinese expression.

    ``folder`` defaults to a new temporary directory (Gradio serves example files from there).
    """
    from ofa.data.world import World

    folder = Path(folder) if folder is not None else Path(tempfile.mkdtemp(prefix="ofa-demo-examples-"))
    folder.mkdir(parents=True, exist_ok=True)
    world = World(seed=0)
    examples = []
    for index in range(count):
        scene = world.scene("val", index)
        lang = "zh" if count > 1 and index == count - 1 else "en"
        # The longest expression names the most attributes, so it reads well as an example.
        expression = max((ref.text for ref in scene.refs_for(lang)), key=len)
        path = folder / f"world-val-{index}.png"
        scene.image.save(path)
        examples.append(DemoExample(path, expression, lang))
    return examples


def box_line_width(size: tuple[int, int]) -> int:
    """Outline width in pixels for an image of ``size``: visible on thumbnails and on large photos alike."""
    return max(2, round(max(size) / 160))


def draw_box(
    image: Image.Image,
    box: tuple[float, float, float, float],
    colour: tuple[int, int, int] = BOX_COLOUR,
    width: int | None = None,
) -> Image.Image:
    """A copy of ``image`` with ``box`` (x0, y0, x1, y1 in pixels) outlined.

    Corners are rounded to the nearest pixel and clipped to the image; a box whose corners come out of order
    (an untrained model may emit them so) is drawn between the smaller and the larger of each pair. The
    outline lies inside the box, so its outer edge is exactly the rounded box.
    """
    w, h = image.size
    x0, y0, x1, y1 = box
    left, right = (min(max(round(v), 0), w - 1) for v in sorted((x0, x1)))
    top, bottom = (min(max(round(v), 0), h - 1) for v in sorted((y0, y1)))
    width = width or box_line_width(image.size)
    drawn = image.convert("RGB")  # always a copy, also for RGB input
    rectangle = (left, top, right, bottom)
    if min(right - left, bottom - top) + 1 <= 2 * width:
        # No interior left: fill it, as PIL would spill a too-wide outline past the box.
        ImageDraw.Draw(drawn).rectangle(rectangle, fill=colour)
    else:
        ImageDraw.Draw(drawn).rectangle(rectangle, outline=colour, width=width)
    return drawn


def format_box(box: tuple[float, float, float, float]) -> str:
    """``x0, y0, x1, y1`` with one decimal, as the UI shows it."""
    return ", ".join(f"{v:.1f}" for v in box)


class DemoBackend:
    """What the demo's buttons do, without any Gradio: each handler takes what the UI holds and returns what
    it shows, ending with a status line. Bad input becomes a message, never an exception.

    ``search``: generation overrides for every call (``{"beam_size": 3}``). ``notify``: also called with
    each problem message (the app passes ``gr.Warning`` so a pop-up appears too).
    """

    def __init__(
        self,
        model: OFA,
        search: dict[str, Any] | None = None,
        notify: Callable[[str], None] | None = None,
    ) -> None:
        self.model = model
        self.search = dict(search or {})
        self.notify = notify

    def caption(self, image: str | Path | Image.Image | None, lang: str) -> tuple[str, float | None, str]:
        """(caption, score, status) for an image file or PIL image, in ``lang`` (``en`` or ``zh``)."""
        if image is None:
            return "", None, self._problem(NO_IMAGE)
        start = time.perf_counter()
        try:
            result = self.model.caption(image, lang=lang or "en", **self.search)
        except (ValueError, Image.DecompressionBombError) as err:
            return "", None, self._problem(f"Cannot caption this image: {_without_folder(err, image)}")
        return result.text, round(result.score, 4), _done(start)

    def ground(
        self, image: str | Path | Image.Image | None, expression: str | None
    ) -> tuple[Image.Image | None, str, float | None, str]:
        """(image with the box drawn, box as text, score, status) for an image and a referring expression.

        The expression's language is detected (Chinese characters -> ``zh``).
        """
        if image is None:
            return None, "", None, self._problem(NO_IMAGE)
        if not expression or not expression.strip():
            return None, "", None, self._problem(NO_EXPRESSION)
        from ofa.data.images import load_image

        start = time.perf_counter()
        try:
            picture = load_image(image)  # the box is in pixels of this (EXIF-rotated) image
            result = self.model.ground(picture, expression.strip(), **self.search)
        except (ValueError, Image.DecompressionBombError) as err:
            return None, "", None, self._problem(f"Cannot ground this input: {_without_folder(err, image)}")
        if any(math.isnan(v) for v in result.box):
            return picture, "", None, self._problem(NO_BOX)
        return draw_box(picture, result.box), format_box(result.box), round(result.score, 4), _done(start)

    def _problem(self, message: str) -> str:
        if self.notify is not None:
            self.notify(html.escape(message))  # Gradio renders pop-up messages as HTML
        return f"⚠️ {message}"


def _without_folder(error: Exception, image: Any) -> str:
    """The error's message with the image's server-side folder left out (uploads sit in Gradio's cache)."""
    message = str(error)
    if isinstance(image, (str, Path)):
        message = message.replace(str(image), Path(image).name)
    return message


def _done(start: float) -> str:
    return f"Done in {time.perf_counter() - start:.2f} s."


def uploaded_path(value: Any) -> str | None:
    """The server-side file of an image input that Gradio handed over unprocessed (``preprocess=False``).

    The demo's events skip Gradio's own image preprocessing, which opens every upload with PIL and would
    report a decompression bomb or a non-image as an internal error; our loader checks the file instead and
    says what is wrong. Gradio has already verified that the path lies in its upload cache at this point.
    """
    if value is None or isinstance(value, str):
        return value
    path = value.get("path") if isinstance(value, dict) else getattr(value, "path", None)
    return None if path is None else str(path)


def _import_gradio() -> Any:
    # No usage analytics: the demo is often run where nothing outside can be reached.
    os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
    try:
        import gradio as gr
    except ImportError as err:
        raise ImportError(f"the demo needs gradio ({err}); install it with: pip install gradio") from None
    return gr


def build_demo(
    model: OFA,
    *,
    examples: list[DemoExample] | None = None,
    search: dict[str, Any] | None = None,
    title: str = "OFA unified multimodal demo",
) -> gr.Blocks:
    """The demo's Gradio Blocks for ``model``: a **Caption** tab and a **Grounding** tab.

    ``examples``: clickable inputs under each tab (default: :func:`world_examples`). ``search``: generation
    overrides for every request. Call :func:`launch` (or ``.queue().launch()``) to serve it.
    """
    gr = _import_gradio()
    examples = world_examples() if examples is None else examples
    backend = DemoBackend(model, search=search, notify=gr.Warning)

    def caption(image: Any, lang: str) -> tuple[str, float | None, str]:
        return backend.caption(uploaded_path(image), lang)

    def ground(image: Any, text: str) -> tuple[Image.Image | None, str, float | None, str]:
        return backend.ground(uploaded_path(image), text)

    with gr.Blocks(title=title, analytics_enabled=False) as demo:
        gr.Markdown(
            f"# {title}\nOne sequence-to-sequence model, one vocabulary, a task chosen by its prompt. "
            "Boxes are in pixels of the image you give (origin top-left)."
        )
        with gr.Tab("Caption", id="caption"):
            with gr.Row():
                with gr.Column():
                    cap_image = gr.Image(
                        type="filepath", image_mode=None, sources=["upload", "clipboard"],
                        label="Image", height=IMAGE_HEIGHT, elem_classes="ofa-image", elem_id="caption-image",
                    )  # fmt: skip
                    cap_lang = gr.Radio(
                        LANGUAGES, value="en", label="Caption language", elem_id="caption-lang"
                    )
                    cap_button = gr.Button("Caption", variant="primary", elem_id="caption-button")
                with gr.Column():
                    cap_text = gr.Textbox(label="Caption", interactive=False, elem_id="caption-text")
                    cap_score = gr.Number(label="Score (0-1)", interactive=False, elem_id="caption-score")
                    cap_status = gr.Markdown(elem_id="caption-status")
            gr.Examples([[str(e.image), e.lang] for e in examples], [cap_image, cap_lang], label="Examples")
            cap_button.click(
                caption,
                [cap_image, cap_lang],
                [cap_text, cap_score, cap_status],
                api_name="caption",
                preprocess=False,  # see `uploaded_path`
            )

        with gr.Tab("Grounding", id="grounding"):
            with gr.Row():
                with gr.Column():
                    gnd_image = gr.Image(
                        type="filepath", image_mode=None, sources=["upload", "clipboard"],
                        label="Image", height=IMAGE_HEIGHT, elem_classes="ofa-image", elem_id="ground-image",
                    )  # fmt: skip
                    gnd_text = gr.Textbox(
                        label="Referring expression (English or Chinese)",
                        placeholder="the red star / 红色的星形",
                        elem_id="ground-text",
                    )
                    gnd_button = gr.Button("Find it", variant="primary", elem_id="ground-button")
                with gr.Column():
                    # PNG keeps the outline's colour exact (the default WebP would blur it).
                    gnd_output = gr.Image(
                        label="Predicted box", format="png", interactive=False, height=IMAGE_HEIGHT,
                        elem_classes="ofa-image", elem_id="ground-output",
                    )  # fmt: skip
                    gnd_box = gr.Textbox(
                        label="Box x0, y0, x1, y1 (pixels)", interactive=False, elem_id="ground-box"
                    )
                    gnd_score = gr.Number(label="Score (0-1)", interactive=False, elem_id="ground-score")
                    gnd_status = gr.Markdown(elem_id="ground-status")
            gr.Examples(
                [[str(e.image), e.expression] for e in examples], [gnd_image, gnd_text], label="Examples"
            )
            ground_outputs = [gnd_output, gnd_box, gnd_score, gnd_status]
            gnd_inputs = [gnd_image, gnd_text]
            gnd_button.click(ground, gnd_inputs, ground_outputs, api_name="ground", preprocess=False)
            gnd_text.submit(ground, gnd_inputs, ground_outputs, api_name=False, preprocess=False)
    return demo


def launch(
    model: OFA,
    *,
    host: str = DEFAULT_HOST,
    port: int | None = DEFAULT_PORT,
    concurrency_limit: int = DEFAULT_CONCURRENCY,
    max_queue_size: int = DEFAULT_QUEUE_SIZE,
    max_file_size: str | int = DEFAULT_MAX_FILE_SIZE,
    block: bool = True,
    quiet: bool = False,
    **build_options: Any,
) -> tuple[gr.Blocks, str]:
    """Build the demo for ``model`` and serve it at ``host:port``; returns the Blocks and the local URL.

    Requests wait in a queue (at most ``max_queue_size``) and run ``concurrency_limit`` at a time, so many
    users at once slow each other down instead of crashing the server. ``block=False`` returns at once
    with the server running in a background thread (stop it with ``demo.close()``). ``build_options`` go to
    :func:`build_demo`.
    """
    gr = _import_gradio()
    demo = build_demo(model, **build_options)
    demo.queue(default_concurrency_limit=concurrency_limit, max_size=max_queue_size)
    theme = gr.themes.Default(font=SYSTEM_FONTS, font_mono=MONO_FONTS)
    _, url, _ = demo.launch(
        server_name=host,
        server_port=port,
        prevent_thread_lock=not block,
        max_file_size=max_file_size,
        ssr_mode=False,
        share=False,
        quiet=quiet,
        theme=theme,
        css=CSS,
    )
    return demo, url
