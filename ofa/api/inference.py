"""`OFA`: a loaded checkpoint with one method per task.

    from ofa import OFA
    m = OFA.from_pretrained("checkpoints/ofa-world-tiny")
    m.caption("cat.jpg")                                   # CaptionResult(text=..., score=..., lang="en")
    m.ground("cat.jpg", "the red star")                    # GroundingResult(box=(x0, y0, x1, y1), score=...)
    m.run(" what does the image describe?", image="cat.jpg")
    m.batch([{"task": "caption", "image": a}, {"task": "ground", "image": b, "text": "the red star"}])
    m.generate_image("a red circle left of a blue star", n=4)   # [ImageResult(image=PIL, score, codes), ...]

Every method takes one input or a list and answers in kind (one result or a list). Inputs are decoded
``batch_size`` at a time, one `generate` call per chunk, with each task's search settings and per-sample
vocabulary constraints (text only for captions, exactly 4 location bins for boxes, no image codes for free
text). Images may be PIL images, paths, HxWxC uint8 arrays or CxHxW tensors (float in [0, 1] or uint8).

Text-to-image needs an image tokenizer (the VQGAN whose codes the model emits): ``from_pretrained`` finds it
in the checkpoint's sub-folder ``image_tokenizer/`` (``ImageTokenizer.save_pretrained`` output, or the
official ``model.yaml`` + ``last.ckpt``), or takes ``image_tokenizer=``.
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from ofa.data.images import ImageLike
from ofa.generation import Constraint, GenerationConfig, Hypothesis, TokenRange, generate
from ofa.models import OFAModel
from ofa.tasks import Example, Task, TaskError, collate, get_task
from ofa.tasks.text_to_image import TextToImageTask
from ofa.tokenization import OFATokenizer
from ofa.tokenization.image import IMAGE_TOKENIZER_DIR

from .batching import merge_search
from .results import Box, CaptionResult, GroundingResult, ImageResult, RunResult, geometric_mean_probability

if TYPE_CHECKING:
    from ofa.tokenization.image import ImageTokenizer

    from .imagine import ImageTextScorer

RECIPE_FILE = "recipe.yaml"
TASK_ALIASES = {"caption": "caption", "ground": "grounding", "grounding": "grounding", "run": "run"}
REQUEST_KEYS = {
    "caption": {"task", "image", "lang"},
    "grounding": {"task", "image", "text", "lang"},
    "run": {"task", "instruction", "image"},
}
# Free text: the official caption beam settings, with room for longer answers.
RUN_SEARCH = {"strategy": "beam", "beam_size": 5, "max_len_b": 32, "no_repeat_ngram_size": 3}
DTYPES = {
    "float32": torch.float32, "fp32": torch.float32, "float16": torch.float16, "fp16": torch.float16,
    "bfloat16": torch.bfloat16, "bf16": torch.bfloat16,
}  # fmt: skip
_CJK = re.compile(r"[\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff]")


class CheckpointNotFoundError(FileNotFoundError):
    """The checkpoint path does not exist."""


class InputError(ValueError):
    """A request the API cannot use (wrong shape of arguments, unknown keys); the message says which."""


def detect_language(text: str) -> str:
    """``zh`` when the text holds a CJK ideograph, else ``en``."""
    return "zh" if _CJK.search(text) else "en"


@dataclass
class _Prepared:
    """One request turned into model input, with how to search and how to read the output back."""

    kind: str  # caption | grounding | run
    example: Example
    config: GenerationConfig
    constraint: Constraint | None


class OFA:
    """A model, its tokenizer and the tasks it serves; see the module docstring.

    ``search``: per-task :class:`~ofa.generation.GenerationConfig` overrides (``{"caption": {"beam_size":
    3}}``) on top of each task's defaults; ``run`` is the free-text "task". ``image_size`` defaults to the
    model's. Most users call :meth:`from_pretrained`, which also reads the training recipe of a checkpoint.
    """

    def __init__(
        self,
        model: OFAModel,
        tokenizer: OFATokenizer,
        *,
        image_size: int | None = None,
        max_source_length: int = 128,
        max_target_length: int = 64,
        search: dict[str, dict[str, Any]] | None = None,
        image_tokenizer: ImageTokenizer | str | Path | None = None,
    ) -> None:
        _check_vocabulary(model, tokenizer)
        self.model = model.eval()
        self.tokenizer = tokenizer
        self.image_size = int(image_size or model.config.image_size)
        search = {TASK_ALIASES.get(k, k): dict(v or {}) for k, v in (search or {}).items()}
        unknown = sorted(set(search) - set(REQUEST_KEYS))
        if unknown:
            raise InputError(f"search: unknown task(s) {unknown}; known: caption, grounding, run")
        self.tasks: dict[str, Task] = {
            name: get_task(name)(
                tokenizer,
                image_size=self.image_size,
                max_source_length=max_source_length,
                max_target_length=max_target_length,
                search=search.get(name),
            )
            for name in ("caption", "grounding")
        }
        # Free text reuses the caption task's input handling (prompt encoding, image loading).
        self._run_task = self.tasks["caption"]
        self._run_search = {**RUN_SEARCH, **search.get("run", {})}
        # Loaded on first use: the official VQGAN is large and only text-to-image needs it.
        self._image_tokenizer = image_tokenizer
        self._text_to_image: TextToImageTask | None = None

    # ------------------------------------------------------------------ loading

    @classmethod
    def from_pretrained(
        cls,
        path: str | Path,
        *,
        tokenizer: str | Path | OFATokenizer | None = None,
        device: str | torch.device = "cpu",
        dtype: torch.dtype | str | None = None,
        attn_implementation: str | None = None,
        search: dict[str, dict[str, Any]] | None = None,
        image_tokenizer: str | Path | ImageTokenizer | None = None,
    ) -> OFA:
        """Load a checkpoint folder exported by ``ofa train`` (model + tokenizer + ``recipe.yaml``), one of
        our converted folders, or an official HF-port folder / fairseq ``.pt`` (then give ``tokenizer=``).

        From ``recipe.yaml`` (when present) come the image size, the source/target length limits and the
        per-task search settings the model was evaluated with (``eval.search``); ``search=`` overrides them.
        ``dtype``: a torch dtype or a name (``float32``, ``bf16``, ``fp16``); None keeps the stored one.
        ``image_tokenizer`` (text-to-image): a folder or an ``ImageTokenizer``; None: the checkpoint's
        ``image_tokenizer/`` sub-folder when there is one. It is loaded on the first ``generate_image``.
        """
        path = Path(path).expanduser()
        if not path.exists():
            raise CheckpointNotFoundError(f"checkpoint {path} does not exist")
        device = _check_device(device)
        if isinstance(dtype, str):
            if dtype not in DTYPES:
                raise InputError(f"dtype {dtype!r} is not one of {sorted(DTYPES)}")
            dtype = DTYPES[dtype]
        if not isinstance(tokenizer, OFATokenizer):
            tokenizer = _load_tokenizer(path, tokenizer)
        model = OFAModel.from_pretrained(
            path, device=device, dtype=dtype, attn_implementation=attn_implementation
        )
        settings = _recipe_settings(path)
        merged_search = dict(settings.pop("search", {}))
        for task, values in (search or {}).items():
            key = TASK_ALIASES.get(task, task)
            merged_search[key] = {**merged_search.get(key, {}), **(values or {})}
        if isinstance(image_tokenizer, (str, Path)):
            image_tokenizer = Path(image_tokenizer).expanduser()
            if not image_tokenizer.exists():
                raise CheckpointNotFoundError(f"image tokenizer {image_tokenizer} does not exist")
        elif image_tokenizer is None and (path / IMAGE_TOKENIZER_DIR).is_dir():
            image_tokenizer = path / IMAGE_TOKENIZER_DIR
        return cls(model, tokenizer, search=merged_search, image_tokenizer=image_tokenizer, **settings)

    @property
    def device(self) -> torch.device:
        return self.model.device

    def __repr__(self) -> str:
        c = self.model.config
        return (
            f"OFA(d_model={c.d_model}, layers={c.encoder_layers}+{c.decoder_layers}, image_size={self.image_size}, "
            f"vocab={self.tokenizer.vocab_size}, device={self.device})"
        )

    # ------------------------------------------------------------------ tasks

    def caption(
        self,
        images: ImageLike | Sequence[ImageLike],
        lang: str = "en",
        *,
        batch_size: int = 16,
        **search: Any,
    ) -> CaptionResult | list[CaptionResult]:
        """Caption one image or a list (a 4-D array/tensor counts as a list). ``lang``: ``en`` or ``zh``.

        ``search``: :class:`~ofa.generation.GenerationConfig` overrides for this call (``beam_size=1``, ...).
        """
        items, many = _as_list(images)
        requests = [{"task": "caption", "image": image, "lang": lang} for image in items]
        results = self._decode_requests(requests, batch_size, search)
        return results if many else results[0]

    def ground(
        self,
        images: ImageLike | Sequence[ImageLike],
        texts: str | Sequence[str],
        lang: str | None = None,
        *,
        batch_size: int = 16,
        **search: Any,
    ) -> GroundingResult | list[GroundingResult]:
        """The box each referring expression describes, in pixels of its (original) image.

        One image and one text give one result. Lists pair up element by element; one image with a list of
        texts (or one text with a list of images) is used for every element. ``lang`` None: ``zh`` for texts
        with Chinese characters, else ``en``.
        """
        pairs, many = _pair(images, texts, "images", "texts")
        requests = [
            {"task": "grounding", "image": image, "text": text, "lang": lang} for image, text in pairs
        ]
        results = self._decode_requests(requests, batch_size, search)
        return results if many else results[0]

    def run(
        self,
        instructions: str | Sequence[str],
        image: ImageLike | Sequence[ImageLike] | None = None,
        *,
        batch_size: int = 16,
        **search: Any,
    ) -> RunResult | list[RunResult]:
        """Decode free text for any instruction, with or without an image.

        The instruction is encoded as given (``<bin_k>`` markers become location tokens), so the official
        prompts work verbatim, e.g. ``' which region does the text " red star " describe?'``. Output may mix
        text and location tokens; see :class:`RunResult`. Lists pair up as in :meth:`ground`.
        """
        if image is None:
            items, many = _as_list(instructions)
            pairs = [(None, text) for text in items]
        else:
            pairs, many = _pair(image, instructions, "images", "instructions")
        requests = [{"task": "run", "instruction": text, "image": img} for img, text in pairs]
        results = self._decode_requests(requests, batch_size, search)
        return results if many else results[0]

    def batch(
        self, requests: Sequence[dict[str, Any]], *, batch_size: int = 16, **search: Any
    ) -> list[CaptionResult | GroundingResult | RunResult]:
        """Decode a list of requests of different tasks together, ``batch_size`` per `generate` call.

        Requests: ``{"task": "caption", "image", "lang"?}``, ``{"task": "ground", "image", "text", "lang"?}``,
        ``{"task": "run", "instruction", "image"?}``. One call decodes every task with its own constraint,
        length limits and n-gram blocking; the beam size is the largest any request in the chunk asks for
        (with the defaults all tasks use 5, so results equal the single-task methods'). ``search`` applies to
        every request.
        """
        if isinstance(requests, dict):
            raise InputError("batch() takes a list of request dicts; wrap a single request in a list")
        return self._decode_requests(list(requests), batch_size, search)

    def generate_image(
        self,
        texts: str | Sequence[str],
        n: int = 4,
        guidance: float = 3.0,
        temperature: float = 1.0,
        top_k: int | None = None,
        top_p: float | None = None,
        seed: int | None = None,
        rerank: bool = True,
        *,
        scorer: ImageTextScorer | None = None,
        batch_size: int = 8,
    ) -> list[ImageResult] | list[list[ImageResult]]:
        """``n`` pictures per text, best first: one text gives a list, a list of texts a list of lists.

        Sampling draws only image codes, exactly a full grid, at ``temperature`` with ``top_k`` / ``top_p``
        (None: the task's settings, official OFA: top-k 256; 0 / 1.0: off). ``guidance``: classifier-free
        guidance scale ``s`` in ``cond + s * (cond - uncond)``, the unconditional input being the prompt with
        an empty caption; 0 is plain conditional sampling. ``seed``: the same seed gives the same pictures.
        ``rerank``: order the ``n`` pictures by ``scorer(images, texts)`` (default: the model's own caption
        likelihood, see :class:`~ofa.api.imagine.CaptionLikelihoodScorer`; or e.g.
        :class:`~ofa.api.imagine.OpenCLIPScorer`), else by the probability of the sampled codes. Prompt
        language: ``zh`` for texts with Chinese characters, else ``en``.
        """
        from .imagine import CaptionLikelihoodScorer, generate_images

        items, many = _as_list(texts)
        items = [_require_text(text, "text") for text in items]
        if not isinstance(n, int) or isinstance(n, bool) or n < 1:
            raise InputError(f"n must be a positive integer, got {n!r}")
        if not isinstance(batch_size, int) or batch_size < 1:
            raise InputError(f"batch_size must be a positive integer, got {batch_size!r}")
        if seed is not None and (not isinstance(seed, int) or isinstance(seed, bool)):
            raise InputError(f"seed must be an integer or None, got {seed!r}")
        task = self.text_to_image_task()
        search: dict[str, Any] = {
            "num_return_sequences": n,
            "guidance_scale": guidance,
            "temperature": temperature,
        }
        search.update({k: v for k, v in (("top_k", top_k), ("top_p", top_p)) if v is not None})
        if seed is not None:  # one generator across chunks, so every chunk draws fresh numbers
            search["generator"] = torch.Generator(device=self.device).manual_seed(seed)
        try:
            config = task.generation_config(**search)
        except (TypeError, ValueError) as err:
            raise InputError(f"generate_image: {err}") from None
        if scorer is None and rerank:
            scorer = CaptionLikelihoodScorer(self.model, self.tasks["caption"], detect_language)
        results = generate_images(
            self.model,
            task,
            items,
            [detect_language(text) for text in items],
            config,
            scorer=scorer if rerank else None,
            batch_size=batch_size,
        )
        return results if many else results[0]

    @property
    def has_image_tokenizer(self) -> bool:
        """Whether text-to-image has an image tokenizer (a folder or object; a folder is not loaded here)."""
        return self._image_tokenizer is not None

    @property
    def image_tokenizer(self) -> ImageTokenizer:
        """The image tokenizer of text-to-image (loaded on first use); InputError when there is none."""
        if self._image_tokenizer is None:
            raise InputError(
                f"this model has no image tokenizer, which text-to-image needs: put one in the checkpoint's "
                f"{IMAGE_TOKENIZER_DIR}/ sub-folder (ImageTokenizer.save_pretrained) or pass "
                "image_tokenizer=PATH to OFA.from_pretrained"
            )
        if isinstance(self._image_tokenizer, (str, Path)):
            self._image_tokenizer = _load_image_tokenizer(Path(self._image_tokenizer), self.device)
        return self._image_tokenizer

    def text_to_image_task(self) -> TextToImageTask:
        """The text-to-image task bound to this model's tokenizers (prompt building, code targets, decoding
        constraints), e.g. to score captions by the likelihood of a picture's codes; made on first use."""
        if self._text_to_image is None:
            image_tokenizer = self.image_tokenizer.to(self.device).eval()
            grid, model_grid = image_tokenizer.grid(), self.model.config.code_grid
            if grid != model_grid:
                raise InputError(
                    f"the image tokenizer makes {grid}x{grid} code grids but the model decodes "
                    f"{model_grid}x{model_grid} (code_image_size={self.model.config.code_image_size})"
                )
            try:
                self._text_to_image = TextToImageTask(self.tokenizer, image_tokenizer=image_tokenizer)
            except TaskError as err:
                raise InputError(str(err)) from None
        return self._text_to_image

    # ------------------------------------------------------------------ retrieval

    def embed_images(
        self, images: ImageLike | Sequence[ImageLike], lang: str = "en", *, batch_size: int = 16
    ) -> torch.Tensor:
        """L2-normalised embeddings (N, D) of images (one image: (D,)), float32 on CPU, encoded with the
        image instruction in ``lang``. Needs a checkpoint with a retrieval head (`ofa.api.retrieval`)."""
        from .retrieval import embed_images

        return embed_images(self, images, lang, batch_size)

    def embed_texts(
        self, texts: str | Sequence[str], lang: str | None = None, *, batch_size: int = 16
    ) -> torch.Tensor:
        """L2-normalised embeddings (N, D) of texts (one text: (D,)), float32 on CPU; ``lang`` None: ``zh``
        for texts with Chinese characters, else ``en``."""
        from .retrieval import embed_texts

        return embed_texts(self, texts, lang, batch_size)

    def retrieve(
        self,
        queries: Any,
        gallery: Sequence[Any],
        k: int = 5,
        rerank: bool = False,
        *,
        lang: str | None = None,
        batch_size: int = 16,
    ) -> Any:
        """The top ``k`` gallery items per query as :class:`~ofa.api.retrieval.RetrievalHit` lists, best first:
        text queries search images, image queries search texts; ``rerank=True`` orders the ``k`` by the
        image-text-matching probability (off by default: measure it first, see :func:`ofa.api.retrieval.retrieve`)."""
        from .retrieval import retrieve

        return retrieve(self, queries, gallery, k, rerank, lang, batch_size)

    # ------------------------------------------------------------------ internals

    def _decode_requests(
        self, requests: list[dict[str, Any]], batch_size: int, search: dict[str, Any]
    ) -> list[Any]:
        if not isinstance(batch_size, int) or batch_size < 1:
            raise InputError(f"batch_size must be a positive integer, got {batch_size!r}")
        label = len(requests) > 1
        results: list[Any] = []
        for start, chunk in _chunks(requests, batch_size):
            prepared = [
                self._prepare(request, f"input {start + i}: " if label else "", search)
                for i, request in enumerate(chunk)
            ]
            hyps = self._generate(prepared)
            results.extend(self._result(p, h) for p, h in zip(prepared, hyps))
        return results

    def _prepare(self, request: Any, where: str, search: dict[str, Any]) -> _Prepared:
        """Validate one request and build its example; errors keep their type and gain ``where``."""
        try:
            return self._build(request, search)
        except ValueError as err:
            if not where:
                raise
            raise type(err)(f"{where}{err}") from None

    def _build(self, request: Any, search: dict[str, Any]) -> _Prepared:
        if not isinstance(request, dict):
            raise InputError(f"a request must be a dict with a 'task' key, got {type(request).__name__}")
        kind = TASK_ALIASES.get(request.get("task"))  # type: ignore[arg-type]
        if kind is None:
            raise InputError(f"unknown task {request.get('task')!r}; choose caption, ground or run")
        unknown = sorted(set(request) - REQUEST_KEYS[kind])
        if unknown:
            raise InputError(
                f"{kind} request: unknown key(s) {unknown}; allowed: {sorted(REQUEST_KEYS[kind])}"
            )
        if kind == "caption":
            return self._build_caption(request, search)
        if kind == "grounding":
            return self._build_grounding(request, search)
        return self._build_run(request, search)

    def _build_caption(self, request: dict[str, Any], search: dict[str, Any]) -> _Prepared:
        task = self.tasks["caption"]
        lang = request.get("lang") or "en"
        lang = task.language({"lang": lang})
        image, size = task.load_image({"image": _require_image(request.get("image"), "caption")})
        source = task.encode_source(task.prompts[lang])
        example = Example(
            "caption", source, [self.tokenizer.eos_id], image, meta={"lang": lang, "image_size": size}
        )
        return _Prepared("caption", example, task.generation_config(**search), task.constraint(example))

    def _build_grounding(self, request: dict[str, Any], search: dict[str, Any]) -> _Prepared:
        task = self.tasks["grounding"]
        text = _require_text(request.get("text"), "referring expression")
        lang = request.get("lang") or detect_language(text)
        sample = {"image": _require_image(request.get("image"), "ground"), "text": text, "lang": lang}
        example = task.build(sample)
        return _Prepared("grounding", example, task.generation_config(**search), task.constraint(example))

    def _build_run(self, request: dict[str, Any], search: dict[str, Any]) -> _Prepared:
        task = self._run_task
        instruction = _require_text(request.get("instruction"), "instruction")
        image = size = None
        if request.get("image") is not None:
            image, size = task.load_image({"image": request["image"]})
        source = task.encode_source(instruction)
        example = Example("run", source, [self.tokenizer.eos_id], image, meta={"image_size": size})
        config = task.generation_config(**{**self._run_search, **search})
        # What a caption may hold (text without specials, and eos) plus location bins; never image codes.
        text = task.constraint(example)
        ranges = [*text.ranges, self.tokenizer.bin_range] if isinstance(text, TokenRange) else None
        return _Prepared("run", example, config, None if ranges is None else TokenRange.union(ranges))

    def _generate(self, prepared: list[_Prepared]) -> list[Hypothesis | None]:
        """One `generate` call for the chunk; the best hypothesis per request (None if none finished)."""
        tok = self.tokenizer
        examples = [p.example for p in prepared]
        config, constraints = merge_search(
            [p.config for p in prepared], [p.constraint for p in prepared], [len(e.source) for e in examples]
        )
        batch = collate(examples, tok.pad_id, tok.bos_id).to(self.device)
        inputs = {
            "input_ids": batch.input_ids,
            "patch_images": batch.patch_images,
            "patch_masks": batch.patch_masks,
        }
        if batch.patch_images is not None:
            inputs["patch_images"] = batch.patch_images.to(self.model.dtype)
        with torch.inference_mode():
            hyps = generate(self.model, inputs, config, constraints=constraints, code_masks=batch.code_masks)
        return [h[0] if h else None for h in hyps]

    def _result(self, prepared: _Prepared, hyp: Hypothesis | None) -> Any:
        tok = self.tokenizer
        example = prepared.example
        tokens = [] if hyp is None else hyp.tokens.tolist()
        log_probs = [] if hyp is None else hyp.positional_scores.tolist()
        if prepared.kind == "caption":
            text = self.tasks["caption"].parse(tokens, example)
            return CaptionResult(text, geometric_mean_probability(log_probs), example.meta["lang"], tokens)
        if prepared.kind == "grounding":
            box = self.tasks["grounding"].parse(tokens, example)  # NaNs when no 4 bins came out
            bins = tuple(int(b) for b in tok.decode_bins(tokens[:4])) if len(tokens) >= 4 else None
            return GroundingResult(
                tuple(box),  # type: ignore[arg-type]
                geometric_mean_probability(log_probs[:4]),
                example.meta["text"],
                example.meta["lang"],
                bins if bins is not None and len(bins) == 4 else None,  # type: ignore[arg-type]
            )
        body = [t for t in tokens if t != tok.eos_id]
        text = tok.decode(body, skip_special_tokens=False)
        return RunResult(text, geometric_mean_probability(log_probs), self._boxes(body, example), tokens)

    def _boxes(self, tokens: list[int], example: Example) -> list[Box]:
        """Every run of 4 consecutive location tokens as a pixel box of the original image."""
        if example.meta.get("image_size") is None:
            return []
        w, h = example.meta["image_size"]
        boxes, run = [], []
        for t in [*tokens, -1]:
            if t >= 0 and bool(self.tokenizer.is_bin_id(t)):
                run.append(t)
                continue
            for i in range(0, len(run) - len(run) % 4, 4):
                box = self.tokenizer.ids_to_box(run[i : i + 4], w, h, max_image_size=self.image_size)
                boxes.append(tuple(float(v) for v in box))
            run = []
        return boxes  # type: ignore[return-value]


# ---------------------------------------------------------------------- helpers


def _check_vocabulary(model: OFAModel, tokenizer: OFATokenizer) -> None:
    c = model.config
    if (
        tokenizer.num_bins != c.num_bins
        or tokenizer.num_codes != c.num_codes
        or tokenizer.vocab_size > c.vocab_size
    ):
        raise InputError(
            f"the tokenizer ({tokenizer.vocab_size} ids, {tokenizer.num_codes} codes, {tokenizer.num_bins} bins) "
            f"does not match the model ({c.vocab_size} ids, {c.num_codes} codes, {c.num_bins} bins)"
        )


def _check_device(device: str | torch.device) -> torch.device:
    try:
        device = torch.device(device)
    except (RuntimeError, TypeError):
        raise InputError(f"device {device!r} is not a torch device (cpu, cuda, cuda:1, mps, ...)") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise InputError(f"device {device} requested, but CUDA is not available here")
    return device


def _load_tokenizer(checkpoint: Path, tokenizer: str | Path | None) -> OFATokenizer:
    if tokenizer is not None:
        folder = Path(tokenizer).expanduser()
        if not folder.exists():
            raise CheckpointNotFoundError(f"tokenizer folder {folder} does not exist")
        return OFATokenizer.from_pretrained(folder)
    if not checkpoint.is_dir():
        raise InputError(f"{checkpoint} holds no tokenizer; pass tokenizer=PATH (a tokenizer folder)")
    return OFATokenizer.from_pretrained(checkpoint)


def _load_image_tokenizer(folder: Path, device: torch.device) -> ImageTokenizer:
    from ofa.tokenization.image import ImageTokenizer

    if not folder.exists():
        raise CheckpointNotFoundError(f"image tokenizer {folder} does not exist")
    return ImageTokenizer.from_pretrained(folder, device=device)


def _recipe_settings(checkpoint: Path) -> dict[str, Any]:
    """Image size, length limits and eval search settings from the checkpoint's ``recipe.yaml`` (if any)."""
    from ofa.evaluation.harness import checkpoint_recipe

    if not checkpoint.is_dir():
        return {}
    path = checkpoint / RECIPE_FILE
    try:
        recipe = checkpoint_recipe(checkpoint)
    except ValueError as err:
        raise InputError(str(err)) from None
    data = recipe.get("data") or {}
    search = (recipe.get("eval") or {}).get("search") or {}
    settings: dict[str, Any] = {}
    if data.get("image_size"):
        settings["image_size"] = int(data["image_size"])
    for key in ("max_source_length", "max_target_length"):
        if data.get(key):
            settings[key] = int(data[key])
    if not isinstance(search, dict) or not all(isinstance(v, dict) for v in search.values()):
        raise InputError(f"{path}: eval.search must map task names to search settings")
    settings["search"] = {k: v for k, v in search.items() if TASK_ALIASES.get(k) in REQUEST_KEYS}
    return settings


def _is_batch(value: Any) -> bool:
    if isinstance(value, (list, tuple)):
        return True
    return hasattr(value, "ndim") and hasattr(value, "shape") and value.ndim == 4  # (N, ...) array or tensor


def _as_list(value: Any) -> tuple[list[Any], bool]:
    if _is_batch(value):
        return list(value), True
    return [value], False


def _pair(images: Any, texts: Any, image_name: str, text_name: str) -> tuple[list[tuple[Any, Any]], bool]:
    """Pair images with texts, broadcasting a single one over the other's list."""
    image_list, many_images = _as_list(images)
    text_list, many_texts = _as_list(texts)
    if many_images and many_texts and len(image_list) != len(text_list):
        raise InputError(
            f"got {len(image_list)} {image_name} and {len(text_list)} {text_name}; give as many of each"
        )
    if not many_images:
        image_list = image_list * len(text_list)
    if not many_texts:
        text_list = text_list * len(image_list)
    return list(zip(image_list, text_list)), many_images or many_texts


def _require_image(image: Any, what: str) -> Any:
    if image is None:
        raise InputError(f"{what} needs an image")
    return image


def _require_text(text: Any, what: str) -> str:
    if not isinstance(text, str):
        raise InputError(f"the {what} must be a string, got {type(text).__name__}")
    if not text.strip():
        raise TaskError(f"the {what} is empty")
    return text


def _chunks(items: list[Any], size: int) -> Iterator[tuple[int, list[Any]]]:
    for start in range(0, len(items), size):
        yield start, items[start : start + size]


__all__ = ["OFA", "CheckpointNotFoundError", "InputError", "detect_language"]
