"""Tasks: one module per task (prompt, preprocessing, target, decoding constraints, metric), found by name."""

from . import caption, grounding, itm, retrieval, text_to_image  # noqa: F401  (registers the tasks)
from .base import LANGUAGES, TASKS, Batch, Example, Task, TaskError, collate, get_task, register_task

__all__ = [
    "LANGUAGES",
    "TASKS",
    "Batch",
    "Example",
    "Task",
    "TaskError",
    "collate",
    "get_task",
    "register_task",
]
