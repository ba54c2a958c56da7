"""The deterministic multi-task training stream and its `LightningDataModule`.

Global sample index ``g`` (0, 1, 2, ...) -> component (task, lang, split) chosen by weight from a sha256 hash
of ``(seed, g)`` -> source sample ``g`` (``g mod size`` for bounded components; a data file of `data.kind: files`
is always bounded, by its length or `size`; with `data.samples_per_scene` n the component is drawn per group
``g // n``, and world grounding reads scene ``g // n``) -> `Example`, built with
``random.Random(hash(seed, g))``. Nothing else is random, so the data position of a run is one integer,
the number of samples consumed (``global_step * batch_size``), and resuming restarts the stream there.

Global batch layout. Optimizer step ``s`` consumes ``g`` in ``[s*B, (s+1)*B)``. With ``W`` processes and ``A``
accumulation micro-steps the per-device micro-batch is ``b = B / (W*A)``; micro-step ``k`` of rank ``r`` takes
``s*B + k*W*b + r*b + [0, b)``. Every layout therefore trains on exactly the same global batch.

Each rank loads its whole accumulation window (``A`` micro-batches) at once so that the token count of the
window is known before the first backward: the loss is normalised by the token count of the *global* batch.
"""

from __future__ import annotations

import hashlib
import random
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from ofa.data.formats import DataFormatError, SampleFile, open_sample_file
from ofa.data.sources import WorldSource
from ofa.data.world import World, WorldConfig
from ofa.tasks import Batch, Example, Task, collate, get_task
from ofa.tasks.retrieval import PairBatch, RetrievalTask, collate_pairs

from .recipe import MixtureComponent, Recipe, RecipeError, RetrievalSection, resolve_path


def stable_hash(*parts: object) -> int:
    """A 64-bit hash of the parts, identical in every process, machine and Python version."""
    digest = hashlib.sha256("/".join(map(str, parts)).encode()).digest()
    return int.from_bytes(digest[:8], "little")


def make_world(recipe: Recipe, image_size: int) -> World:
    """The world of a `kind: world` recipe; its image size defaults to the model's input size."""
    values = {"image_size": image_size, **recipe.data.world}
    return World(WorldConfig(**values))


def open_data_file(
    recipe: Recipe, key: str, section: MixtureComponent | RetrievalSection, task: str, lang: str
) -> SampleFile:
    """The data file of one `data.kind: files` source; a missing or malformed file names its recipe key."""
    path = resolve_path(section.path)
    try:
        samples = open_sample_file(path, task, lang, section.format)
    except DataFormatError as err:
        raise RecipeError(f"{recipe.source}: {key}.path: {err}") from None
    if len(samples) == 0:
        what = "images with text" if task == "caption" else f"{task} samples"
        raise RecipeError(f"{recipe.source}: {key}.path: {path} holds no {what} in language {lang!r}")
    if section.size is not None and section.size > len(samples):
        raise RecipeError(
            f"{recipe.source}: {key}.size: {section.size} is more than the {len(samples)} samples of {path}"
        )
    return samples


def image_tokenizer_path(recipe: Recipe) -> Path | None:
    """The folder of `data.task_options.text_to_image.image_tokenizer`, if the recipe names one."""
    value = (recipe.data.task_options.get("text_to_image") or {}).get("image_tokenizer")
    return None if value is None else resolve_path(str(value))


def load_recipe_image_tokenizer(recipe: Recipe, path: Path, key: str) -> Any:
    """The image tokenizer at `path`, named by the recipe's `key`; a bad folder is an error naming the key."""
    from ofa.tokenization.image import ImageTokenizer, ImageTokenizerError

    try:
        return ImageTokenizer.from_pretrained(path)
    except ImageTokenizerError as err:
        raise RecipeError(f"{recipe.source}: {key}: {err}") from None


def load_recipe_codes(recipe: Recipe, task: Any, value: Any, key: str) -> None:
    """Give `task` the precomputed codes file `value` (`ofa extract-codes`); errors name the recipe key."""
    from ofa.tasks import TaskError
    from ofa.tokenization.image import ImageTokenizerError, read_codes

    try:
        task.use_codes(read_codes(resolve_path(str(value))))
    except (ImageTokenizerError, TaskError) as err:
        raise RecipeError(f"{recipe.source}: {key}: {err}") from None


def check_stored_codes(recipe: Recipe, tasks: dict[str, Task], sources: list[SampleFile]) -> None:
    """Every image a `text_to_image` data file trains on must be in the codes file: fail before step 0."""
    task = tasks.get("text_to_image")
    if task is None or getattr(task, "codes", None) is None:
        return
    for i, (comp, samples) in enumerate(zip(recipe.data.mixture, sources)):
        if comp.task != "text_to_image":
            continue
        ids = {samples.sample_id(j): None for j in range(comp.size or len(samples))}
        missing = [image_id for image_id in ids if not task.has_codes(image_id)]
        if missing:
            raise RecipeError(
                f"{recipe.source}: data.task_options.text_to_image.codes: image id {missing[0]!r} of "
                f"data.mixture.{i}.path ({samples.path}) is not in {task.codes.path} ({len(missing)} of its "
                f"{len(ids)} images are missing); extract that file's codes with `ofa extract-codes`"
            )


def make_tasks(recipe: Recipe, tokenizer: Any, image_size: int, search: bool = False) -> dict[str, Task]:
    """One task object per task name in the mixture, with the recipe's `data.task_options` for it."""
    from ofa.tasks import TASKS, TaskError  # importing ofa.tasks registers every task module

    unknown = sorted(set(recipe.data.task_options) - set(TASKS))
    if unknown:  # options for a task that is not in the mixture are allowed (a mixture override keeps them)
        raise RecipeError(
            f"{recipe.source}: data.task_options names unknown tasks {unknown}; known: {sorted(TASKS)}"
        )
    tasks = {}
    for comp in recipe.data.mixture:
        if comp.task not in tasks:
            options = recipe.data.task_options.get(comp.task) or {}
            if not isinstance(options, dict):
                raise RecipeError(f"{recipe.source}: data.task_options.{comp.task} must be a mapping")
            codes = options.get("codes") if comp.task == "text_to_image" else None
            if codes is not None:  # read once the task knows its grid and codebook
                options = {k: v for k, v in options.items() if k != "codes"}
                if options.get("image_tokenizer") is None:
                    raise RecipeError(
                        f"{recipe.source}: data.task_options.text_to_image.image_tokenizer: a codes file "
                        "still needs the image tokenizer it was extracted with (the export draws pictures "
                        "with it)"
                    )
            if options.get("image_tokenizer") is not None:
                key = f"data.task_options.{comp.task}.image_tokenizer"
                path = resolve_path(str(options["image_tokenizer"]))
                options = {**options, "image_tokenizer": load_recipe_image_tokenizer(recipe, path, key)}
            try:
                tasks[comp.task] = get_task(comp.task)(
                    tokenizer,
                    image_size=image_size,
                    max_source_length=recipe.data.max_source_length,
                    max_target_length=recipe.data.max_target_length,
                    search=recipe.eval.search.get(comp.task) if search else None,
                    **options,
                )
            except TypeError as err:
                raise RecipeError(f"{recipe.source}: data.task_options.{comp.task}: {err}") from None
            except TaskError as err:
                raise RecipeError(f"{recipe.source}: data.task_options.{comp.task}: {err}") from None
            if codes is not None:
                load_recipe_codes(recipe, tasks[comp.task], codes, "data.task_options.text_to_image.codes")
    return tasks


def blocked_targets_report(
    dataset: MixtureDataset, search_tasks: dict[str, Task], samples: int = 64, min_fraction: float = 0.05
) -> list[str]:
    """One line per mixture component whose eval search could not write many of its training targets.

    A search with ``no_repeat_ngram_size`` n bans any n-gram the prefix already holds. Natural captions rarely
    repeat one (hence OFA's n = 3 for COCO), but templated targets do: the world's "a small red circle, a small
    blue star and ..." repeats ", a small", so beam search had to write something else there ("two small blue
    star"), and the periodic eval and the exported checkpoint scored that. The first ``samples`` training
    targets of each component are checked; a component is reported when at least ``min_fraction`` of them
    are blocked, with the recipe key to change and one blocked n-gram.
    """
    from ofa.generation import first_blocked_position

    sizes = {task: t.generation_config().no_repeat_ngram_size for task, t in search_tasks.items()}
    wanted = {i for i, c in enumerate(dataset.components) if sizes.get(c.task, 0) > 0}
    # a bounded component (`size`) repeats its samples: check each once
    limit = {i: min(samples, dataset.sizes[i] or samples) for i in wanted}
    checked: dict[int, int] = dict.fromkeys(wanted, 0)
    seen: set[tuple[int, int]] = set()
    blocked: dict[int, list[tuple[list[int], int]]] = {i: [] for i in wanted}
    g = 0
    while any(checked[i] < limit[i] for i in wanted) and g < samples * len(dataset.components) * 8:
        i = dataset.component(g)
        source_index = g % dataset.sizes[i] if dataset.sizes[i] else g
        if i in wanted and checked[i] < limit[i] and (i, source_index) not in seen:
            seen.add((i, source_index))
            example = dataset[g]
            tokens = example.target[:-1]  # eos ends every target; the search adds it too
            n = sizes[example.task]
            pos = first_blocked_position(tokens, n, search_tasks[example.task].tokenizer.bos_id)
            checked[i] += 1
            if pos is not None:
                blocked[i].append((tokens, pos))
        g += 1
    lines = []
    for i in sorted(wanted):
        comp, hits = dataset.components[i], blocked[i]
        if not checked[i] or len(hits) < min_fraction * checked[i]:
            continue
        n = sizes[comp.task]
        tokens, pos = hits[0]
        tokenizer = search_tasks[comp.task].tokenizer
        gram = tokenizer.decode(tokens[max(0, pos - n + 1) : pos + 1])  # bos, if in the n-gram, is not shown
        lines.append(
            f"eval.search.{comp.task}.no_repeat_ngram_size={n} blocks {len(hits)} of the first {checked[i]} "
            f"{comp.task}/{comp.lang} training targets (e.g. {gram!r} repeats in {tokenizer.decode(tokens)!r}): "
            f"beam search cannot write them; set eval.search.{comp.task}.no_repeat_ngram_size: 0 if repeats are "
            "part of the targets' grammar"
        )
    return lines


class MixtureDataset(Dataset):
    """Map-style dataset over the global sample index; `dataset[g]` is deterministic in (seed, g)."""

    def __init__(
        self,
        components: list[MixtureComponent],
        tasks: dict[str, Task],
        world: World | None,
        seed: int,
        sources: list[SampleFile] | None = None,
        samples_per_scene: int = 1,
    ) -> None:
        self.components = list(components)
        self.tasks = tasks
        self.seed = seed
        self.group = samples_per_scene
        if sources is None:  # data.kind: world
            assert world is not None, "a mixture without data files reads the world"
            self.sources = [
                WorldSource(world, c.split, c.task, c.lang, expressions_per_scene=samples_per_scene)
                for c in self.components
            ]
            self.sizes = [c.size for c in self.components]
        else:  # one data file per component, read from sample 0 again after its end (or after `size`)
            self.sources = list(sources)
            self.sizes = [c.size or len(s) for c, s in zip(self.components, self.sources)]
        total = sum(c.weight for c in self.components)
        self._cumulative = []
        acc = 0.0
        for c in self.components:
            acc += c.weight / total
            self._cumulative.append(acc)

    def component(self, g: int) -> int:
        """Index of the mixture component that global sample `g` comes from (one per group of
        `samples_per_scene` consecutive samples)."""
        u = stable_hash("mixture", self.seed, g // self.group) / 2.0**64
        for i, edge in enumerate(self._cumulative):
            if u < edge:
                return i
        return len(self.components) - 1

    def __getitem__(self, g: int) -> Example:
        i = self.component(g)
        comp = self.components[i]
        size = self.sizes[i]
        sample = self.sources[i][g % size if size is not None else g]
        rng = random.Random(stable_hash("example", self.seed, g))
        return self.tasks[comp.task].build(sample, train=True, rng=rng)


class WindowSampler(Sampler[list[int]]):
    """Yields, for one rank, the global indices of its accumulation window of each optimizer step.

    Infinite: the trainer stops at `max_steps`. Starts at optimizer step `start_step`.
    """

    def __init__(
        self, batch_size: int, world_size: int, rank: int, accumulate: int, start_step: int = 0
    ) -> None:
        if batch_size % (world_size * accumulate):
            raise RecipeError(
                f"train.batch_size={batch_size} is not divisible by devices x nodes x accumulate_grad_batches "
                f"= {world_size} x {accumulate}"
            )
        self.batch_size, self.world_size, self.rank = batch_size, world_size, rank
        self.accumulate, self.start_step = accumulate, start_step
        self.micro = batch_size // (world_size * accumulate)

    def indices(self, step: int) -> list[int]:
        b, w = self.micro, self.world_size
        base = step * self.batch_size
        return [base + k * w * b + self.rank * b + j for k in range(self.accumulate) for j in range(b)]

    def __iter__(self) -> Iterator[list[int]]:
        step = self.start_step
        while True:
            yield self.indices(step)
            step += 1


@dataclass
class MicroBatch:
    """One micro-batch plus what the loss needs to know about its accumulation window."""

    batch: Batch
    index: int  # micro-step within the window, 0 .. accumulate-1
    accumulate: int
    window_tokens: int  # non-pad target tokens of this rank's whole window
    num_samples: int
    pairs: PairBatch | None = None  # contrastive image-text pairs (`data.retrieval`), trained beside `batch`

    @property
    def last(self) -> bool:
        return self.index == self.accumulate - 1

    def to(self, device: torch.device | str) -> MicroBatch:
        return MicroBatch(
            self.batch.to(device),
            self.index,
            self.accumulate,
            self.window_tokens,
            self.num_samples,
            self.pairs.to(device) if self.pairs is not None else None,
        )


class WindowCollate:
    """Collate one rank's window (accumulate x b examples) into `accumulate` padded micro-batches.

    With `pairs_per_window` > 0 the window ends with that many retrieval pairs (`PairedWindowSampler`),
    shared out over the micro-batches in the same way.
    """

    def __init__(self, accumulate: int, pad_id: int, bos_id: int, pairs_per_window: int = 0) -> None:
        self.accumulate, self.pad_id, self.bos_id = accumulate, pad_id, bos_id
        self.pairs_per_window = pairs_per_window

    def __call__(self, examples: list[Example]) -> list[MicroBatch]:
        split = len(examples) - self.pairs_per_window
        examples, pairs = examples[:split], examples[split:]
        b = len(examples) // self.accumulate
        p = len(pairs) // self.accumulate
        tokens = sum(len(e.target) for e in examples)
        return [
            MicroBatch(
                collate(examples[k * b : (k + 1) * b], self.pad_id, self.bos_id),
                k,
                self.accumulate,
                tokens,
                b,
                collate_pairs(pairs[k * p : (k + 1) * p], self.pad_id) if p else None,
            )
            for k in range(self.accumulate)
        ]


class MicroBatchStream:
    """Iterable over micro-batches: flattens the DataLoader's windows (what `Trainer.fit` consumes)."""

    def __init__(self, loader: DataLoader) -> None:
        self.loader = loader

    def __iter__(self) -> Iterator[MicroBatch]:
        for window in self.loader:
            yield from window


class MixtureDataModule(pl.LightningDataModule):
    """Training data of a recipe. Its state (saved in checkpoints) is the number of samples consumed."""

    def __init__(self, recipe: Recipe, tokenizer: Any, image_size: int) -> None:
        super().__init__()
        self.recipe = recipe
        self.tokenizer = tokenizer
        self.image_size = image_size
        files = recipe.data.kind == "files"
        self.world = None if files else make_world(recipe, image_size)
        self.tasks = make_tasks(recipe, tokenizer, image_size)
        sources = None
        if files:
            sources = [
                open_data_file(recipe, f"data.mixture.{i}", c, c.task, c.lang)
                for i, c in enumerate(recipe.data.mixture)
            ]
            check_stored_codes(recipe, self.tasks, sources)
        per_scene = recipe.data.samples_per_scene
        self.dataset = MixtureDataset(
            recipe.data.mixture, self.tasks, self.world, recipe.train.seed, sources, per_scene
        )
        self.pairs = None  # the contrastive pair stream of `data.retrieval`, if any
        pairs_section = recipe.data.retrieval
        if pairs_section is not None:
            from .retrieval import PairStream

            task = RetrievalTask(
                tokenizer, image_size=image_size, max_source_length=recipe.data.max_source_length
            )
            images = None
            if files:  # image-centric: each pair a different image with one of its texts (PairStream)
                lang = pairs_section.langs[0]
                images = open_data_file(recipe, "data.retrieval", pairs_section, "caption", lang)
            self.pairs = PairStream(pairs_section, task, self.world, recipe.train.seed, images)
        self.start_samples = 0  # set from a checkpoint by `load_state_dict`

    # The data position: samples of the stream consumed by finished optimizer steps.
    def state_dict(self) -> dict[str, Any]:
        step = self.trainer.global_step if self.trainer is not None else 0
        return {
            "samples_seen": step * self.recipe.train.batch_size,
            "batch_size": self.recipe.train.batch_size,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if state.get("batch_size") != self.recipe.train.batch_size:
            raise RecipeError(
                f"cannot resume: the checkpoint was trained with batch_size={state.get('batch_size')}, "
                f"the recipe says {self.recipe.train.batch_size}"
            )
        self.start_samples = int(state["samples_seen"])

    def transfer_batch_to_device(self, batch: Any, device: torch.device, dataloader_idx: int) -> Any:
        if isinstance(batch, MicroBatch):
            return batch.to(device)
        return super().transfer_batch_to_device(batch, device, dataloader_idx)

    def train_dataloader(self) -> MicroBatchStream:
        train = self.recipe.train
        world_size = self.trainer.world_size if self.trainer is not None else 1
        rank = self.trainer.global_rank if self.trainer is not None else 0
        sampler = WindowSampler(
            train.batch_size,
            world_size,
            rank,
            train.accumulate_grad_batches,
            start_step=self.start_samples // train.batch_size,
        )
        dataset: Dataset = self.dataset
        pairs_per_window = 0
        if self.pairs is not None:
            from .retrieval import MixtureWithPairs, PairedWindowSampler

            sampler = PairedWindowSampler(sampler, self.recipe.data.retrieval.batch_size)
            dataset, pairs_per_window = MixtureWithPairs(self.dataset, self.pairs), sampler.pairs_per_window
        loader = DataLoader(
            dataset,
            batch_sampler=sampler,
            collate_fn=WindowCollate(
                train.accumulate_grad_batches, self.tokenizer.pad_id, self.tokenizer.bos_id, pairs_per_window
            ),
            num_workers=self.recipe.data.num_workers,
            persistent_workers=False,
            # A private generator: creating the iterator must not draw from the global torch RNG,
            # or a resumed run's dropout masks would shift.
            generator=torch.Generator().manual_seed(train.seed),
        )
        return MicroBatchStream(loader)


__all__ = [
    "MicroBatch",
    "MicroBatchStream",
    "MixtureDataModule",
    "MixtureDataset",
    "WindowCollate",
    "WindowSampler",
    "check_stored_codes",
    "image_tokenizer_path",
    "load_recipe_codes",
    "load_recipe_image_tokenizer",
    "make_tasks",
    "make_world",
    "stable_hash",
]
