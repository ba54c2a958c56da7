"""A browser demo of :class:`ofa.OFA`: one Gradio tab per task the model serves.

    from ofa import OFA
    from ofa.demo import launch
    launch(OFA.from_pretrained("checkpoints/ofa-world-tiny"), port=7860)

or ``ofa demo --checkpoint PATH``. Gradio is imported only when a demo is built, so ``import ofa.demo`` stays
cheap.
"""

from .app import (
    BOX_COLOUR,
    DemoBackend,
    DemoExample,
    box_line_width,
    build_demo,
    draw_box,
    launch,
    world_examples,
)

__all__ = [
    "BOX_COLOUR",
    "DemoBackend",
    "DemoExample",
    "box_line_width",
    "build_demo",
    "draw_box",
    "launch",
    "world_examples",
]
