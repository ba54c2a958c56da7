"""`ofa caption`, `ofa ground` and `ofa run` on a small random checkpoint: output, JSON and exit codes."""

from __future__ import annotations

import json
import os

import pytest

from ofa import OFA
from ofa.cli import DEFAULT_CHECKPOINT, main
from tests.test_api import make_checkpoint, picture


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    return make_checkpoint(tmp_path_factory.mktemp("ckpt"))


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    folder = tmp_path_factory.mktemp("images")
    paths = [folder / "a.png", folder / "b.png"]
    picture(seed=1).save(paths[0])
    picture(160, 90, seed=2).save(paths[1])
    return [str(p) for p in paths]


def test_caption_json_matches_the_api(checkpoint, images, capsys):
    assert main(["caption", *images, "--checkpoint", str(checkpoint), "--beam", "2", "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    expected = OFA.from_pretrained(checkpoint).caption(images, beam_size=2)
    assert [r["image"] for r in rows] == images
    assert [r["text"] for r in rows] == [e.text for e in expected]
    assert [r["score"] for r in rows] == pytest.approx([e.score for e in expected], abs=1e-6)
    assert all(r["lang"] == "en" for r in rows)


def test_caption_text_output_has_one_line_per_image(checkpoint, images, capsys):
    assert main(["caption", *images, "--checkpoint", str(checkpoint), "--lang", "zh"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 2 and lines[0].startswith(images[0] + ": ") and "(score 0." in lines[0]


def test_ground_prints_box_and_score(checkpoint, images, capsys):
    assert main(["ground", images[1], "the red block", "--checkpoint", str(checkpoint), "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    x0, y0, x1, y1 = result["box"]
    # Pixels of the 160 x 90 image (a random model need not order the corners).
    assert all(0 <= x <= 160 for x in (x0, x1)) and all(0 <= y <= 90 for y in (y0, y1))
    assert 0.0 <= result["score"] <= 1.0 and result["text"] == "the red block" and len(result["bins"]) == 4
    assert main(["ground", images[1], "红色的方块", "--checkpoint", str(checkpoint)]) == 0
    fields = capsys.readouterr().out.split()
    assert len(fields) == 6 and fields[4] == "(score"
    assert all(0 <= float(v) <= 160 for v in fields[:4])


def test_run_with_and_without_image(checkpoint, images, capsys):
    assert (
        main(["run", " what is this?", "--image", images[0], "--checkpoint", str(checkpoint), "--json"]) == 0
    )
    result = json.loads(capsys.readouterr().out)
    assert set(result) == {"instruction", "image", "text", "score", "boxes"} and result["image"] == images[0]
    assert main(["run", " hello", "--checkpoint", str(checkpoint), "--max-len", "3"]) == 0
    assert "(score " in capsys.readouterr().out


def test_default_checkpoint_is_found_from_the_current_directory(checkpoint, images, tmp_path, capsys):
    (tmp_path / "checkpoints").mkdir()
    os.symlink(checkpoint, tmp_path / DEFAULT_CHECKPOINT)
    cwd = os.getcwd()
    os.chdir(tmp_path)
    try:
        assert main(["caption", images[0]]) == 0
    finally:
        os.chdir(cwd)
    assert "(score" in capsys.readouterr().out


def test_bad_input_exits_1_with_one_line(checkpoint, images, tmp_path, capsys):
    notes = tmp_path / "notes.txt"
    notes.write_text("not an image")
    runs = [
        ["caption", str(notes), "--checkpoint", str(checkpoint)],
        ["caption", str(tmp_path / "missing.png"), "--checkpoint", str(checkpoint)],
        ["ground", images[0], "  ", "--checkpoint", str(checkpoint)],
        ["caption", images[0], "--checkpoint", str(tmp_path / "no-checkpoint")],
        ["run", "", "--checkpoint", str(checkpoint)],
        ["caption", images[0], "--checkpoint", str(checkpoint), "--beam", "0"],
        ["caption", images[0], "--checkpoint", str(checkpoint), "--device", "toaster"],
    ]
    for argv in runs:
        assert main(argv) == 1, argv
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == len(runs)
    assert lines[0].startswith("ofa caption: error:") and "not a readable image" in lines[0]
    assert "no such image file" in lines[1] and "referring expression is empty" in lines[2]
    assert "no-checkpoint not found" in lines[3] and "--checkpoint PATH" in lines[3]
    assert "instruction is empty" in lines[4] and "beam_size" in lines[5] and "toaster" in lines[6]


def test_usage_errors_exit_2(capsys):
    with pytest.raises(SystemExit) as info:
        main(["ground", "only-an-image.png"])
    assert info.value.code == 2
    with pytest.raises(SystemExit) as info:
        main(["caption", "a.png", "--lang", "fr"])
    assert info.value.code == 2
    capsys.readouterr()


@pytest.mark.parametrize("command", ["caption", "ground", "run"])
def test_help_describes_every_option(command, capsys):
    with pytest.raises(SystemExit) as info:
        main([command, "--help"])
    assert info.value.code == 0
    text = capsys.readouterr().out
    assert "--checkpoint" in text and DEFAULT_CHECKPOINT in text and "--device" in text and "example:" in text
