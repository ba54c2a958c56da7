"""Sample sources: indexable streams of task samples (the plain dicts that `ofa.tasks` document).

A source maps an integer index to a sample, deterministically, so a training run can be resumed at any
position and two processes can split one global batch exactly.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Any

from ofa.data.world import World


def _pick(index: int, n: int, salt: str) -> int:
    digest = hashlib.sha256(f"{salt}:{index}".encode()).digest()
    return int.from_bytes(digest[:8], "little") % n


@dataclass
class WorldSource:
    """Samples of one task and language drawn from the synthetic world; sample i comes from scene i.

    `size` bounds the index space (None: unbounded, each index a new scene).
    """

    world: World
    split: str
    task: str
    lang: str = "en"
    size: int | None = None

    def __len__(self) -> int:
        if self.size is None:
            raise TypeError("an unbounded world source has no length")
        return self.size

    def __getitem__(self, index: int) -> dict[str, Any]:
        if self.size is not None and not 0 <= index < self.size:
            raise IndexError(index)
        scene = self.world.scene(self.split, index)
        base = {"image": scene.image, "lang": self.lang, "id": f"{self.split}/{index}"}
        if self.task == "caption":
            return {
                **base,
                "captions": scene.captions[self.lang],
                "objects": [o.triple for o in scene.objects],
            }
        if self.task == "grounding":
            refs = scene.refs_for(self.lang)
            ref = refs[_pick(index, len(refs), f"{self.split}-{self.lang}-ref")]
            return {**base, "text": ref.text, "box": list(ref.box), "kind": ref.kind}
        raise ValueError(f"the world has no samples for task {self.task!r}")
