"""The notebooks run top to bottom in a real Jupyter kernel and show what they promise.

The checkpoint is `OFA_NOTEBOOK_CHECKPOINT` (default: the shipped `checkpoints/ofa-world-tiny`); while that
is not there, a small random-weight checkpoint stands in, so the notebooks' plumbing is always tested. What
the notebooks print about the world (reference captions, true boxes, data set sizes) is checked against the
world itself.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

import pytest

from ofa.evaluation.harness import world_for_checkpoint
from ofa.models import OFAModel
from ofa.training.recipe import resolve_path
from tests.conftest import REPO
from tests.test_api import make_checkpoint

nbformat = pytest.importorskip("nbformat")
nbclient = pytest.importorskip("nbclient")
pytest.importorskip("ipykernel")

NOTEBOOKS = REPO / "notebooks"
CELL_TIMEOUT = 120  # seconds per cell


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> Path:
    path = resolve_path(os.environ.get("OFA_NOTEBOOK_CHECKPOINT", "checkpoints/ofa-world-tiny"))
    return path if path.exists() else make_checkpoint(tmp_path_factory.mktemp("notebook-ckpt"))


def execute(name: str, checkpoint: Path, monkeypatch, **env: str) -> list:
    """Run notebook `name` in a fresh kernel (working directory: notebooks/); returns its code cells."""
    monkeypatch.setenv("OFA_NOTEBOOK_CHECKPOINT", str(checkpoint))  # the kernel inherits the environment
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    notebook = nbformat.read(NOTEBOOKS / name, as_version=4)
    client = nbclient.NotebookClient(
        notebook,
        timeout=CELL_TIMEOUT,
        kernel_name="python3",
        resources={"metadata": {"path": str(NOTEBOOKS)}},
    )
    client.execute()  # raises CellExecutionError, with the cell's traceback, when a cell fails
    return [cell for cell in notebook.cells if cell.cell_type == "code"]


def text_of(cell) -> str:
    parts = []
    for output in cell.outputs:
        if output.output_type == "stream" and output.name == "stdout":
            parts.append(output.text)
        elif "data" in output and "text/plain" in output.data:
            parts.append(output.data["text/plain"])
    return "".join(parts)


def png_count(cell) -> int:
    return sum("image/png" in output.get("data", {}) for output in cell.outputs)


def test_notebooks_are_stored_without_outputs():
    for path in sorted(NOTEBOOKS.glob("*.ipynb")):
        notebook = nbformat.read(path, as_version=4)
        nbformat.validate(notebook)
        for cell in notebook.cells:
            if cell.cell_type == "code":
                assert cell.outputs == [] and cell.execution_count is None, f"{path.name} has outputs"


def test_quickstart_runs_and_shows_every_step(checkpoint, monkeypatch):
    cells = execute("quickstart.ipynb", checkpoint, monkeypatch)
    load, scenes, captions, grounding, batch, retrieval, imagine = cells[:7]
    assert text_of(load).startswith("OFA(")
    assert png_count(scenes) >= 1 and png_count(grounding) >= 2  # pictures inline (PIL or matplotlib)

    world = world_for_checkpoint(checkpoint, OFAModel.from_pretrained(checkpoint))
    truth = [world.scene("heldout", i) for i in range(4)]
    printed = text_of(captions)
    for scene in truth:
        for lang in ("en", "zh"):
            assert f"reference: {scene.captions[lang][0]}" in printed
    assert len(re.findall(r"object F1 over these scenes: [01]\.\d\d", printed)) == 2

    lines = [line for line in text_of(grounding).splitlines() if line.startswith("[")]
    assert len(lines) == 8  # 4 scenes x 2 languages (other lines: picture titles)
    for line, (scene, lang) in zip(lines, [(s, lang) for s in truth for lang in ("en", "zh")]):
        ref = scene.refs_for(lang)[0]
        assert line.startswith(f"[{lang}] scene {scene.index}: {ref.text!r} -> box (")
        assert f"true {ref.box}, IoU " in line

    assert "CaptionResult(" in text_of(batch) and "GroundingResult(" in text_of(batch)
    assert "RunResult(" in text_of(batch)
    assert text_of(retrieval).strip() and (text_of(imagine).strip() or png_count(imagine))


def test_finetune_runs_with_two_steps(checkpoint, monkeypatch):
    cells = execute("finetune.ipynb", checkpoint, monkeypatch, OFA_FINETUNE_STEPS="2")
    world = world_for_checkpoint(checkpoint, OFAModel.from_pretrained(checkpoint))
    scenes = [world.scene("heldout", i) for i in range(8)]
    expressions = sum(min(2, len(s.refs_for("en"))) for s in scenes)
    data = text_of(cells[1])
    captions = sum(len(s.captions["en"]) for s in scenes)  # the zh list is parallel: as many
    assert data.startswith(f"8 images, {captions} captions, {expressions} expressions\n")
    assert re.search(r"trained 2 steps; fine-tuned model in .*final", text_of(cells[3]))
    table = text_of(cells[4]).splitlines()
    assert [line.split()[0] for line in table] == ["CIDEr", "BLEU-4", "Acc@0.5", "mean"]
