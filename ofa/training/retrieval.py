"""Contrastive image-text training beside the generative mixture (the recipe's ``data.retrieval`` section).

Stream. Pair ``j`` (0, 1, 2, ...) has language ``langs[hash(seed, j) mod len(langs)]`` and is world scene
``j`` (``j mod size`` when bounded) of ``split`` with one of its captions, built by the `retrieval` task. With
``data.kind: files`` it is image ``j mod size`` (default: every image) of the pairs file with one of its texts
(by a hash of ``(seed, j)``), in ``langs[0]``: consecutive pairs show different images, so the other pairs of
a batch are true negatives (a file lists the texts of one image together).

Layout. Optimizer step ``s`` takes pairs ``[s*R, (s+1)*R)``; with ``W`` processes and ``A`` accumulation
micro-steps, micro-step ``k`` of rank ``r`` takes ``s*R + k*W*p + r*p + [0, p)`` with ``p = R / (W*A)``, the
same layout as the mixture (`ofa.training.data`). The pairs of one micro-step on all ranks form one
contrastive batch of ``W*p`` pairs: open_clip's `ClipLoss` (`ofa.training.contrastive`) all-gathers the
embeddings *with* gradients (``gather_with_grad=True``), so DDP's average of the ranks' gradients equals the gradient of the loss over
those ``W*p`` pairs computed in one process. Negatives are the other pairs of the same micro-step, so
gradient accumulation means fewer negatives per loss (as in open_clip without gradient caching).

Loss of an optimizer step: the mixture's token-mean cross entropy + ``weight`` x the mean over micro-steps
of the contrastive loss.
"""

from __future__ import annotations

import random
from collections.abc import Iterator, Sequence
from typing import Any, NamedTuple

from torch.utils.data import Dataset, Sampler

from ofa.data.sources import WorldSource
from ofa.data.world import World
from ofa.tasks import Example
from ofa.tasks.retrieval import RetrievalTask

from .data import MixtureDataset, WindowSampler, stable_hash
from .recipe import RecipeError, RetrievalSection


class PairIndex(NamedTuple):
    """A position in the pair stream (not in the mixture)."""

    index: int


class PairStream:
    """The deterministic stream of retrieval examples: ``stream[j]`` depends only on (section, seed, j)."""

    def __init__(
        self,
        section: RetrievalSection,
        task: RetrievalTask,
        world: World | None,
        seed: int,
        images: Sequence[dict[str, Any]] | None = None,
    ) -> None:
        """`images`: with `data.kind: files`, the pairs file as caption samples (an image with its texts)."""
        self.section, self.task, self.seed = section, task, seed
        self.size = section.size
        self.images = images
        if images is not None:
            self.size = section.size or len(images)
        else:
            assert world is not None, "pairs without a pairs file come from the world"
            self.sources = {
                lang: WorldSource(world, section.split, "retrieval", lang) for lang in section.langs
            }

    def __getitem__(self, j: int) -> Example:
        langs = self.section.langs
        lang = langs[stable_hash("pair-lang", self.seed, j) % len(langs)]
        index = j % self.size if self.size is not None else j
        rng = random.Random(stable_hash("pair", self.seed, j))
        if self.images is not None:
            return self.task.build(self._file_pair(index, j), train=True, rng=rng)
        return self.task.build(self.sources[lang][index], train=True, rng=rng)

    def _file_pair(self, index: int, j: int) -> dict[str, Any]:
        image = self.images[index]
        texts = image.pop("captions")
        k = stable_hash("pair-text", self.seed, j) % len(texts)
        return {**image, "text": texts[k], "image_id": image["id"], "id": f"{image['id']}/{k}"}


class MixtureWithPairs(Dataset):
    """The DataLoader's dataset when pairs are trained: mixture indices and `PairIndex` keys."""

    def __init__(self, mixture: MixtureDataset, pairs: PairStream) -> None:
        self.mixture, self.pairs = mixture, pairs

    def __getitem__(self, key: int | PairIndex) -> Example:
        if isinstance(key, PairIndex):
            return self.pairs[key.index]
        return self.mixture[key]


class PairedWindowSampler(Sampler[list[Any]]):
    """A `WindowSampler`'s windows, each followed by this rank's pairs of the same step (module docstring)."""

    def __init__(self, windows: WindowSampler, pairs_per_step: int) -> None:
        per_micro, rest = divmod(pairs_per_step, windows.world_size * windows.accumulate)
        if rest or per_micro < 1:
            raise RecipeError(
                f"data.retrieval.batch_size={pairs_per_step} is not a positive multiple of devices x nodes x "
                f"accumulate_grad_batches = {windows.world_size} x {windows.accumulate}"
            )
        self.windows, self.pairs_per_step, self.per_micro = windows, pairs_per_step, per_micro

    @property
    def pairs_per_window(self) -> int:
        return self.per_micro * self.windows.accumulate

    def pair_indices(self, step: int) -> list[int]:
        p, w = self.per_micro, self.windows.world_size
        base = step * self.pairs_per_step
        rank = self.windows.rank
        return [base + k * w * p + rank * p + j for k in range(self.windows.accumulate) for j in range(p)]

    def indices(self, step: int) -> list[Any]:
        return [*self.windows.indices(step), *map(PairIndex, self.pair_indices(step))]

    def __iter__(self) -> Iterator[list[Any]]:
        step = self.windows.start_step
        while True:
            yield self.indices(step)
            step += 1


__all__ = ["MixtureWithPairs", "PairIndex", "PairStream", "PairedWindowSampler"]
