"""The Gradio app: :func:`build_demo` lays out the tabs, :class:`DemoBackend` answers their buttons.

The backend holds no Gradio code, so what each button does (including every message a bad input gets) is
plain Python; :func:`build_demo` only wires it to components. There is a tab per task ``OFA`` serves:
captioning, grounding, retrieval (a text query, Chinese by default, searches a gallery of world scenes
whose embeddings are computed once; a checkpoint without a retrieval head gets a note in that tab) and
text-to-image (n pictures of an English or Chinese prompt, best first by the model's own reranking; a
checkpoint without an image tokenizer gets a note in that tab instead of the controls).
"""

from __future__ import annotations

import html
import math
import os
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from PIL import Image, ImageDraw

if TYPE_CHECKING:
    import gradio as gr

    from ofa.api import OFA, ImageResult, RetrievalHit
    from ofa.tasks.itm import ItmTask

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
CSS = (
    ".ofa-image img { width: 100%; height: 100%; object-fit: contain; }"
    # Retrieval captions carry two scores; wrap them rather than cut them off with an ellipsis.
    " #retrieval-gallery .caption-label { white-space: normal; max-width: 95%; }"
    # Generated pictures are a few dozen pixels: keep their pixels square wherever the browser rescales them.
    " #imagine-gallery img { image-rendering: pixelated; }"
)

NO_IMAGE = "Please upload an image first (or click one of the examples)."
NO_EXPRESSION = "Please type a referring expression first, e.g. “the red star”."
NO_BOX = "The model produced no box for this expression; try rephrasing it."
NO_QUERY = "Please type what to look for first, e.g. “一个大的橙色星形” (a large orange star)."
NO_RETRIEVAL_HEAD = (
    "This checkpoint has no retrieval head (no retrieval_dim in its config.json), so it cannot search the "
    "gallery; the other tabs work. Serve a checkpoint trained with one (model.config.retrieval_dim) to use "
    "this tab."
)
NO_GALLERY = "There is no gallery to search."
NO_PROMPT = "Please describe the picture to draw first, e.g. “a large orange star” or “一个大的橙色星形”."
NO_IMAGE_TOKENIZER = (
    "This checkpoint has no image tokenizer (no image_tokenizer/ sub-folder), so it cannot draw pictures; "
    "the other tabs work. Serve a checkpoint with one (ImageTokenizer.save_pretrained into its "
    "image_tokenizer/ folder) to use this tab."
)
#: World scenes the retrieval tab searches, and the most results it shows.
GALLERY_SIZE = 24
MAX_RESULTS = 8
DEFAULT_RESULTS = 4
#: Rerank the top k by image-text matching only when the user ticks it, as `OFA.retrieve` (its module docstring has
#: the numbers): with the shipped checkpoint reranking lowers text->image R@1 on 1,000 heldout scenes from 97.3 to
#: 54.4 (zh). It is cheap on a CPU (k=8: ~57 ms vs ~2 ms for similarity alone, one thread, 2026-12-02).
DEFAULT_RERANK = False
#: Text-to-image: the most pictures per prompt, the guidance scale range and the seed range the tab accepts.
MAX_PICTURES = 8
DEFAULT_PICTURES = 4
MAX_GUIDANCE = 10
DEFAULT_GUIDANCE = 3
MAX_SEED = 2**32 - 1
DEFAULT_SEED = 0
#: Generated pictures (64 px for the world) are enlarged by a whole factor to about this size for display.
PICTURE_SIZE = 256


@dataclass(frozen=True)
class DemoExample:
    """An example input: an image file and a text for it in ``lang`` (a referring expression, or a caption for
    the items of a retrieval gallery)."""

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


def world_gallery(count: int = GALLERY_SIZE, folder: str | Path | None = None) -> list[DemoExample]:
    """The retrieval tab's gallery: the first ``count`` validation scenes of the world (seed 0, the scenes
    :func:`world_examples` starts with) as PNG files, each with its first Chinese caption.

    ``folder`` defaults to a new temporary directory (Gradio serves files from there).
    """
    from ofa.data.world import World

    folder = Path(folder) if folder is not None else Path(tempfile.mkdtemp(prefix="ofa-demo-gallery-"))
    folder.mkdir(parents=True, exist_ok=True)
    world = World(seed=0)
    gallery = []
    for index in range(count):
        scene = world.scene("val", index)
        path = folder / f"world-val-{index}.png"
        scene.image.save(path)
        gallery.append(DemoExample(path, scene.captions["zh"][0], "zh"))
    return gallery


def example_queries(gallery: list[DemoExample], count: int = 3) -> list[str]:
    """The ``count`` shortest distinct captions of a gallery (gallery order breaks ties): scenes with one
    object, so each query has a clear answer among the items."""
    captions = list(dict.fromkeys(item.expression for item in gallery))
    return sorted(captions, key=len)[:count]


def world_prompts(count: int = 3, max_objects: int = 3) -> list[str]:
    """Example prompts of the text-to-image tab: the first English and the first Chinese caption of each of
    the first ``count`` validation scenes of the world (seed 0) with at most ``max_objects`` objects, the kind
    of text the model learnt to draw from."""
    from ofa.data.world import World

    world = World(seed=0)
    prompts: list[str] = []
    index = 0
    while len(prompts) < 2 * count:
        scene = world.scene("val", index)
        if len(scene.objects) <= max_objects:
            prompts += [scene.captions["en"][0], scene.captions["zh"][0]]
        index += 1
    return prompts


def upscale(image: Image.Image, size: int = PICTURE_SIZE) -> Image.Image:
    """``image`` enlarged by the largest whole factor that keeps it within ``size`` (at least 1), each pixel
    becoming a square block (NEAREST), so small generated pictures stay sharp."""
    factor = max(1, size // max(image.size))
    return image.resize((image.width * factor, image.height * factor), Image.Resampling.NEAREST)


def picture_caption(rank: int, result: ImageResult) -> str:
    """``#rank score 0.xxx`` (three significant digits: an untrained model's scores are tiny)."""
    return f"#{rank} score {result.score:.3g}"


def hit_caption(rank: int, hit: RetrievalHit) -> str:
    """``#rank similarity 0.xx``, plus the matching probability when the hit was reranked."""
    caption = f"#{rank} similarity {hit.similarity:.2f}"
    if hit.match_probability is not None:
        caption += f" · match {hit.match_probability:.2f}"
    return caption


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
    each problem message (the app passes ``gr.Warning`` so a pop-up appears too). ``gallery``: the image
    files text queries search (:meth:`retrieve`); their embeddings are computed on the first query in each
    language and kept. Text-to-image (:meth:`imagine`) takes its own settings, not ``search``.
    """

    def __init__(
        self,
        model: OFA,
        search: dict[str, Any] | None = None,
        notify: Callable[[str], None] | None = None,
        gallery: list[str | Path] | None = None,
    ) -> None:
        self.model = model
        self.search = dict(search or {})
        self.notify = notify
        self.gallery = [Path(item) for item in gallery or []]
        self._gallery_embeddings: dict[str, Any] = {}  # lang -> (N, D) tensor
        self._itm: ItmTask | None = None
        self._lock = threading.Lock()  # Gradio calls handlers from worker threads

    @property
    def can_retrieve(self) -> bool:
        """Whether the model has a retrieval head (``retrieval_dim`` in its config)."""
        return getattr(getattr(self.model, "model", None), "retrieval", None) is not None

    @property
    def can_imagine(self) -> bool:
        """Whether the model has an image tokenizer, which text-to-image needs. Only its presence is checked
        (``OFA`` loads it on the first picture), so a broken one becomes a message on Generate, not a failed
        start."""
        return self.model.has_image_tokenizer

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

    def retrieve(
        self, query: str | None, lang: str, k: float, rerank: bool = DEFAULT_RERANK
    ) -> tuple[list[tuple[str, str]], str]:
        """(the top ``k`` gallery images as (file, caption) pairs, best first; status) for a text query in
        ``lang``. Captions read ``#rank similarity 0.xx`` (plus ``match 0.xx`` when reranked)."""
        if not self.can_retrieve:
            return [], self._problem(NO_RETRIEVAL_HEAD)
        if not self.gallery:
            return [], self._problem(NO_GALLERY)
        if not query or not query.strip():
            return [], self._problem(NO_QUERY)
        query, lang = query.strip(), lang or "zh"
        problem = self._query_problem(query, lang) or _results_problem(k)
        if problem:
            return [], self._problem(problem)
        start = time.perf_counter()
        try:
            hits = self.gallery_hits(query, lang, int(k), rerank=bool(rerank))
        except ValueError as err:  # an unreadable gallery file, a refused input
            return [], self._problem(f"Cannot search the gallery: {err}")
        items = [(str(self.gallery[hit.index]), hit_caption(rank, hit)) for rank, hit in enumerate(hits, 1)]
        return items, _done(start)

    def imagine(
        self,
        prompt: str | None,
        n: Any = DEFAULT_PICTURES,
        guidance: Any = DEFAULT_GUIDANCE,
        seed: Any = DEFAULT_SEED,
    ) -> tuple[list[tuple[Image.Image, str]], str]:
        """(``n`` pictures of ``prompt`` as (picture, caption) pairs, best first; status), as
        :meth:`OFA.generate_image` draws and reranks them with guidance scale ``guidance`` and ``seed`` (the
        same seed gives the same pictures). Pictures come enlarged by :func:`upscale`, captions read
        ``#rank score 0.xxx``. The prompt's language is detected as ``generate_image`` does."""
        from ofa.api import detect_language

        if not self.can_imagine:
            return [], self._problem(NO_IMAGE_TOKENIZER)
        if not isinstance(prompt, str) or not prompt.strip():
            return [], self._problem(NO_PROMPT)
        prompt = prompt.strip()
        lang = detect_language(prompt)
        problem = (
            self._length_problem(prompt, lang, "prompt")
            or _number_problem(n, "number of pictures", 1, MAX_PICTURES)
            or _number_problem(guidance, "guidance scale", 0, MAX_GUIDANCE, whole=False)
            or _number_problem(seed, "seed", 0, MAX_SEED)
        )
        if problem:
            return [], self._problem(problem)
        start = time.perf_counter()
        try:
            results = self.model.generate_image(prompt, n=int(n), guidance=float(guidance), seed=int(seed))
        except (ValueError, OSError, RuntimeError) as err:  # a refused input, a broken image tokenizer
            return [], self._problem(f"Cannot draw this prompt: {err}")
        pictures = [(upscale(r.image), picture_caption(rank, r)) for rank, r in enumerate(results, 1)]
        language = dict((code, name) for name, code in LANGUAGES)[lang]
        return pictures, f"{_done(start)} {len(pictures)} pictures, best first; prompt read as {language}."

    def gallery_hits(self, query: str, lang: str, k: int, rerank: bool = False) -> list[RetrievalHit]:
        """The ``k`` gallery items most similar to ``query``, best first, as :meth:`OFA.retrieve` ranks them:
        cosine similarity against the cached gallery embeddings (ties: gallery order), then with ``rerank``
        ordered by the image-text-matching probability. Only the query is embedded per call."""
        import torch

        from ofa.api import RetrievalHit

        with self._lock:
            if lang not in self._gallery_embeddings:
                self._gallery_embeddings[lang] = self.model.embed_images(self.gallery, lang)
            gallery = self._gallery_embeddings[lang]
        similarity = gallery @ self.model.embed_texts(query, lang=lang)
        order = torch.sort(similarity, descending=True, stable=True).indices[:k].tolist()
        hits = [RetrievalHit(index, float(similarity[index])) for index in order]
        if rerank:
            self._rerank(query, lang, hits)
        return hits

    def _rerank(self, query: str, lang: str, hits: list[RetrievalHit]) -> None:
        """Set each hit's matching probability and sort by it, as ``OFA.retrieve(..., rerank=True)`` does."""
        from ofa.tasks import get_task
        from ofa.tasks.itm import match_probabilities

        if self._itm is None:
            # The options OFA.retrieve builds its ITM task with, so both score the same prompt and pixels.
            options = {
                "image_size": self.model.image_size,
                "max_source_length": self.model.tasks["caption"].max_source_length,
            }
            self._itm = get_task("itm")(self.model.tokenizer, **options)
        examples = [
            self._itm.build({"image": self.gallery[hit.index], "text": query, "lang": lang}) for hit in hits
        ]
        probabilities = match_probabilities(self.model.model, self._itm, examples).tolist()
        for hit, probability in zip(hits, probabilities):
            hit.match_probability = float(probability)
        hits.sort(key=lambda h: (-h.match_probability, -h.similarity, h.index))

    def _query_problem(self, query: str, lang: str) -> str | None:
        """Why the model cannot read ``query`` as a ``lang`` text, or None."""
        from ofa.api import detect_language

        if lang not in dict(LANGUAGES).values():
            return f"Unknown query language {lang!r}; choose English or 中文."
        if detect_language(query) != lang:
            if lang == "zh":
                return "This query has no Chinese characters but 中文 is selected; choose English."
            return "This query holds Chinese characters but English is selected; choose 中文."
        return self._length_problem(query, lang, "query")

    def _length_problem(self, text: str, lang: str, what: str) -> str | None:
        """Why ``text`` (a ``lang`` query or prompt) is too long for the model, or None. Tokens are counted as
        RetrievalTask.text_ids and the text-to-image prompt read the text (both would silently cut it off);
        the limit is the caption task's source length."""
        from ofa.tasks.base import clean_text

        tokens = len(self.model.tokenizer.encode(" " + clean_text(text) if lang == "en" else text))
        limit = self.model.tasks["caption"].max_source_length
        if tokens > limit:
            return f"This {what} is too long: {tokens} tokens, the model reads at most {limit}; shorten it."
        return None

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


def _results_problem(k: Any) -> str | None:
    """Why ``k`` is not a number of results the tab shows, or None."""
    return _number_problem(k, "number of results", 1, MAX_RESULTS)


def _number_problem(value: Any, name: str, low: float, high: float, whole: bool = True) -> str | None:
    """Why ``value`` is not a (``whole``) number from ``low`` to ``high``, or None. Strings, booleans, None
    and NaN are refused: what reaches the handlers unprocessed is whatever the page or an API caller sent."""
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    if ok and whole:
        ok = float(value).is_integer()
    if not ok or not low <= value <= high:
        kind = "a whole number" if whole else "a number"
        got = "nothing" if value is None else repr(value)
        return f"The {name} must be {kind} from {low} to {high}, got {got}."
    return None


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
    gallery: list[DemoExample] | None = None,
    search: dict[str, Any] | None = None,
    title: str = "OFA unified multimodal demo",
) -> gr.Blocks:
    """The demo's Gradio Blocks for ``model``: a **Caption**, a **Grounding**, a **Retrieval** and a
    **Text-to-image** tab (the last two show a note instead when the model lacks a retrieval head or an image
    tokenizer).

    ``examples``: clickable inputs under the caption and grounding tabs (default: :func:`world_examples`).
    ``gallery``: the images the retrieval tab searches; its shortest captions become its example queries
    (default: :func:`world_gallery`). The text-to-image examples are :func:`world_prompts`. ``search``:
    generation overrides for caption and grounding requests. Call :func:`launch` (or ``.queue().launch()``)
    to serve it.
    """
    gr = _import_gradio()
    examples = world_examples() if examples is None else examples
    gallery = world_gallery() if gallery is None else gallery
    backend = DemoBackend(model, search=search, notify=gr.Warning, gallery=[item.image for item in gallery])

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

        with gr.Tab("Retrieval 检索", id="retrieval"):
            if not backend.can_retrieve:
                gr.Markdown(f"⚠️ {NO_RETRIEVAL_HEAD}", elem_id="retrieval-note")
            gr.Markdown(
                f"Finds the {len(gallery)} gallery scenes below that best match a description: ranked by the "
                "cosine similarity of the model's text and image embeddings, then optionally by its "
                "image-text-matching answer (match = p(yes))."
            )
            with gr.Row():
                with gr.Column(scale=1):
                    ret_query = gr.Textbox(
                        label="Query",
                        placeholder="一个大的橙色星形 / a large orange star",
                        elem_id="retrieval-query",
                    )
                    ret_lang = gr.Radio(
                        LANGUAGES, value="zh", label="Query language", elem_id="retrieval-lang"
                    )
                    ret_k = gr.Slider(
                        1,
                        MAX_RESULTS,
                        value=DEFAULT_RESULTS,
                        step=1,
                        label="Results (k)",
                        elem_id="retrieval-k",
                    )
                    ret_rerank = gr.Checkbox(
                        value=DEFAULT_RERANK,
                        label="Rerank by image-text matching",
                        elem_id="retrieval-rerank",
                    )
                    ret_button = gr.Button("Search", variant="primary", elem_id="retrieval-button")
                with gr.Column(scale=2):
                    ret_results = gr.Gallery(
                        label="Best matches", columns=4, object_fit="contain", interactive=False,
                        elem_id="retrieval-gallery",
                    )  # fmt: skip
                    ret_status = gr.Markdown(elem_id="retrieval-status")
            gr.Examples(
                [[query, "zh"] for query in example_queries(gallery)], [ret_query, ret_lang], label="Examples"
            )
            with gr.Accordion(f"The gallery ({len(gallery)} scenes)", open=False):
                gr.Gallery(
                    [(str(item.image), item.expression) for item in gallery], columns=8, interactive=False,
                    show_label=False, elem_id="retrieval-all",
                )  # fmt: skip
            ret_inputs = [ret_query, ret_lang, ret_k, ret_rerank]
            ret_outputs = [ret_results, ret_status]
            ret_button.click(backend.retrieve, ret_inputs, ret_outputs, api_name="retrieve")
            ret_query.submit(backend.retrieve, ret_inputs, ret_outputs, api_name=False)

        with gr.Tab("Text-to-image 文生图", id="imagine"):
            if not backend.can_imagine:
                gr.Markdown(f"⚠️ {NO_IMAGE_TOKENIZER}", elem_id="imagine-note")
            else:
                gr.Markdown(
                    "Draws n pictures of a description in English or Chinese (told apart by its "
                    "characters) and ranks them best first by the model's own score: how likely it finds "
                    "the description as the caption of each picture. Pictures are shown enlarged with "
                    "their pixels kept square."
                )
                with gr.Row():
                    with gr.Column(scale=1):
                        img_prompt = gr.Textbox(
                            label="Prompt (English or Chinese)",
                            placeholder="a large orange star / 一个大的橙色星形",
                            elem_id="imagine-prompt",
                        )
                        img_n = gr.Slider(
                            1, MAX_PICTURES, value=DEFAULT_PICTURES, step=1, label="Pictures (n)",
                            elem_id="imagine-n",
                        )  # fmt: skip
                        img_guidance = gr.Slider(
                            0, MAX_GUIDANCE, value=DEFAULT_GUIDANCE, step=0.5,
                            label="Guidance scale (0 = off)", elem_id="imagine-guidance",
                        )  # fmt: skip
                        img_seed = gr.Number(
                            value=DEFAULT_SEED, precision=0, label="Seed (same seed, same pictures)",
                            elem_id="imagine-seed",
                        )  # fmt: skip
                        img_button = gr.Button("Generate", variant="primary", elem_id="imagine-button")
                    with gr.Column(scale=2):
                        # PNG: the default WebP would blur the enlarged pixels.
                        img_gallery = gr.Gallery(
                            label="Pictures, best first", columns=4, object_fit="contain", format="png",
                            interactive=False, elem_id="imagine-gallery",
                        )  # fmt: skip
                        img_status = gr.Markdown(elem_id="imagine-status")
                gr.Examples([[prompt] for prompt in world_prompts()], [img_prompt], label="Examples")
                img_inputs = [img_prompt, img_n, img_guidance, img_seed]
                img_outputs = [img_gallery, img_status]
                # Unprocessed, so an out-of-range or missing number gets the backend's message in the status
                # line rather than Gradio's own range error.
                img_button.click(
                    backend.imagine, img_inputs, img_outputs, api_name="imagine", preprocess=False
                )
                img_prompt.submit(backend.imagine, img_inputs, img_outputs, api_name=False, preprocess=False)
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
