"""`ofa train tasks/world/vq.yaml`: the image-tokenizer trainer behind the `recipe: image_tokenizer` key.

A tiny run of the shipped recipe writes a tokenizer that loads, and the held-out PSNR and codebook usage it
reports are recomputed here by hand (numpy) from the saved tokenizer on the same held-out scenes.
"""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch
import yaml
from PIL import Image

from ofa.cli import main
from ofa.data.world import World
from ofa.tokenization.image import ImageTokenizer
from ofa.training import RecipeError, load_recipe
from tests.conftest import REPO

TINY = [  # 16 px -> 8x8 codes of 16, a few seconds on one CPU thread
    "model.resolution=16",
    "model.channels=32",
    "model.channel_multipliers=[1,2]",
    "model.attn_resolutions=[]",
    "model.codebook_size=16",
    "model.fsq_levels=[4,4]",  # the recipe's quantizer (fsq): 4 x 4 = 16 codes in 2 latent channels
    "model.embed_dim=2",
    "data.val_images=4",
    "train.steps=3",
    "train.batch_size=2",
    "train.eval_every=3",
    "train.threads=1",
    "train.device=cpu",
]


@pytest.fixture
def recipe(tmp_path):
    path = tmp_path / "vq.yaml"
    shutil.copy(REPO / "tasks/world/vq.yaml", path)
    return path


def held_out_scenes(data: dict, count: int, size: int) -> np.ndarray:
    """(count, 3, size, size) in [0, 1]: the first `val` scenes, drawn at render_size, Lanczos-resized."""
    world = World(image_size=data["render_size"], seed=data["seed"])
    images = []
    for i in range(count):
        image = world.scene("val", i).image
        assert image.size == (data["render_size"], data["render_size"])  # square: a resize, no crop
        resized = image.convert("RGB").resize((size, size), Image.LANCZOS)
        images.append(np.asarray(resized, dtype=np.float32).transpose(2, 0, 1) / 255.0)
    return np.stack(images)


def test_ofa_train_runs_the_image_tokenizer_recipe_and_reports_true_metrics(recipe, tmp_path, capsys):
    out = tmp_path / "vq"
    assert main(["train", str(recipe), *TINY, f"output={out}"]) == 0
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [line["event"] for line in lines] == ["start", "train", "eval", "done"]
    start, train, evaluation, done = lines
    assert start["grid"] == 8 and start["device"] == "cpu" and train["step"] == 3
    assert done["output"] == str(out) and done["step"] == 3

    tokenizer = ImageTokenizer.from_pretrained(out)
    assert sorted(p.name for p in out.iterdir()) == ["config.json", "model.safetensors"]
    assert (tokenizer.config.resolution, tokenizer.codebook_size) == (16, 16)
    assert start["parameters"] == sum(p.numel() for p in tokenizer.parameters())

    data = yaml.safe_load(recipe.read_text())["data"]
    targets = held_out_scenes(data, 4, 16)
    tokenizer.eval()
    with torch.no_grad():
        codes = tokenizer.encode(torch.from_numpy(targets))
        reconstructions = tokenizer.decode(codes).numpy().astype(np.float64)
    mse = ((np.clip(reconstructions, 0, 1) - targets) ** 2).reshape(4, -1).mean(axis=1)
    expected_psnr = float(np.mean(10 * np.log10(1.0 / mse)))
    expected_usage = len(np.unique(codes.numpy())) / 16
    assert done["val_psnr"] == pytest.approx(expected_psnr, abs=1e-4)
    assert done["val_usage"] == pytest.approx(expected_usage, abs=1e-9)
    assert evaluation["val_psnr"] == pytest.approx(expected_psnr, abs=1e-4)  # rounded to 4 places


@pytest.mark.parametrize(
    ("override", "named"),
    [
        ("train.stepz=3", "train.stepz"),
        ("train.steps=many", "train.steps"),
        ("loss.l3_weight=1", "loss.l3_weight"),
    ],
)
def test_a_bad_key_or_value_is_one_line_naming_its_path(recipe, tmp_path, capsys, override, named):
    assert main(["train", str(recipe), *TINY, override, f"output={tmp_path / 'vq'}"]) == 1
    captured = capsys.readouterr()
    err = captured.err.strip().splitlines()
    assert len(err) == 1 and "error:" in err[0] and named in err[0] and str(recipe) in err[0]
    assert captured.out == "" and not (tmp_path / "vq").exists()


def test_an_unknown_recipe_kind_is_one_line_naming_it(recipe, capsys):
    recipe.write_text(recipe.read_text().replace("recipe: image_tokenizer", "recipe: vqgan"))
    assert main(["train", str(recipe)]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "recipe" in err[0] and "'vqgan'" in err[0]


def test_a_missing_recipe_file_is_one_line(tmp_path, capsys):
    assert main(["train", str(tmp_path / "nope.yaml")]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "nope.yaml" in err[0]


def test_model_recipes_may_say_recipe_model_but_not_image_tokenizer(tmp_path):
    values = yaml.safe_load((REPO / "tasks/world/tiny.yaml").read_text())
    path = tmp_path / "tiny.yaml"
    path.write_text(yaml.safe_dump({"recipe": "model", **values}, allow_unicode=True))
    shipped = load_recipe(REPO / "tasks/world/tiny.yaml")
    assert yaml.safe_load(load_recipe(path).to_yaml()) == yaml.safe_load(shipped.to_yaml())
    with pytest.raises(RecipeError, match="recipe: image_tokenizer is not a model recipe"):
        load_recipe(REPO / "tasks/world/vq.yaml")
