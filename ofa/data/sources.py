"""Sample sources: indexable streams of task samples (the plain dicts that `ofa.tasks` document).

A source maps an integer index to a sample, deterministically, so a training run can be resumed at any
position and two processes can split one global batch exactly.
"""

from __future__ import annotations

import hashlib
import random
from dataclasses import dataclass
from typing import Any

from ofa.data.world import Ref, Scene, World, named_attributes


def _pick(index: int, n: int, salt: str) -> int:
    digest = hashlib.sha256(f"{salt}:{index}".encode()).digest()
    return int.from_bytes(digest[:8], "little") % n


def _grounding_fields(scene: Scene, ref: Ref) -> dict[str, Any]:
    """A grounding sample's expression, box and kind, and which of the referent's (size, colour, shape) the
    expression names (`named`, None where not; `train.query_attribute_weight`, `query_attribute_kinds`)."""
    named = named_attributes(ref, scene.objects[ref.target_index])
    return {"text": ref.text, "box": list(ref.box), "kind": ref.kind, "named": list(named)}


@dataclass
class WorldSource:
    """Samples of one task and language drawn from the synthetic world; sample i comes from scene i.

    `size` bounds the index space (None: unbounded, each index a new scene). With `expressions_per_scene` n > 1,
    grounding sample i comes from scene i // n instead, and the n samples of a scene refer to different objects
    (in an order shuffled per scene, cycling when it has fewer than n), so one batch asks for several of its
    objects and only reading the expression can get them all right.
    """

    world: World
    split: str
    task: str
    lang: str = "en"
    size: int | None = None
    expressions_per_scene: int = 1

    def __len__(self) -> int:
        if self.size is None:
            raise TypeError("an unbounded world source has no length")
        return self.size

    def __getitem__(self, index: int) -> dict[str, Any]:
        if self.size is not None and not 0 <= index < self.size:
            raise IndexError(index)
        if self.task == "grounding" and self.expressions_per_scene > 1:
            return self._grounding_in_group(index)
        scene = self.world.scene(self.split, index)
        base = {"image": scene.image, "lang": self.lang, "id": f"{self.split}/{index}"}
        if self.task == "caption":
            return {
                **base,
                "captions": scene.captions[self.lang],
                "objects": [o.triple for o in scene.objects],
                "object_boxes": [list(o.box) for o in scene.objects],
            }
        if self.task == "grounding":
            refs = scene.refs_for(self.lang)
            ref = refs[_pick(index, len(refs), f"{self.split}-{self.lang}-ref")]
            return {**base, **_grounding_fields(scene, ref)}
        if self.task == "text_to_image":  # every world caption names all of the scene's objects
            captions = scene.captions[self.lang]
            text = captions[_pick(index, len(captions), f"{self.split}-{self.lang}-t2i")]
            return {**base, "text": text}
        if self.task == "retrieval":
            captions = scene.captions[self.lang]
            text = captions[_pick(index, len(captions), f"{self.split}-{self.lang}-caption")]
            return {**base, "text": text}
        if self.task == "itm":
            return {**base, **self._itm_text(scene, index)}
        raise ValueError(f"the world has no samples for task {self.task!r}")

    def _grounding_in_group(self, index: int) -> dict[str, Any]:
        """Grounding sample `index` with `expressions_per_scene` n: slot index % n of scene index // n."""
        n = self.expressions_per_scene
        scene_index, slot = divmod(index, n)
        scene = self.world.scene(self.split, scene_index)
        refs = scene.refs_for(self.lang)
        salt = f"{self.split}-{self.lang}-group"
        targets = sorted({r.target_index for r in refs})
        random.Random(f"{salt}:{scene_index}").shuffle(targets)
        target = targets[slot % len(targets)]
        candidates = [r for r in refs if r.target_index == target]
        ref = candidates[_pick(index, len(candidates), salt + "-ref")]
        base = {"image": scene.image, "lang": self.lang, "id": f"{self.split}/{scene_index}"}
        return {**base, **_grounding_fields(scene, ref)}

    def _itm_text(self, scene: Scene, index: int) -> dict[str, Any]:
        """Half the samples (by hash) pair the scene with one of its captions, the rest with a caption of another
        scene whose objects differ (a different multiset of size, colour and shape), so it cannot be true."""
        salt = f"{self.split}-{self.lang}-itm"
        if _pick(index, 2, salt) == 0:
            captions = scene.captions[self.lang]
            return {"text": captions[_pick(index, len(captions), salt + "-caption")], "match": True}
        own = sorted(o.triple for o in scene.objects)
        if self.size == 1:
            raise ValueError("itm: a source of one scene has no other scene to take negatives from")
        for attempt in range(100):
            offset = 1 + _pick(index, self.size - 1 if self.size else 1 << 30, f"{salt}-other-{attempt}")
            other = self.world.scene(
                self.split, (index + offset) % self.size if self.size else index + offset
            )
            if sorted(o.triple for o in other.objects) != own:
                captions = other.captions[self.lang]
                return {"text": captions[_pick(index, len(captions), salt + "-caption")], "match": False}
        raise ValueError(f"itm: no scene with different objects found for {self.split}/{index}")
