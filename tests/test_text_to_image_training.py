"""Training text-to-image from a recipe: world samples, targets = the image tokenizer's codes, export, errors.

A random-weight image tokenizer stands in for a trained one: what is checked is the plumbing (the targets
are exactly the codes the tokenizer gives the scene, the export carries it, the API decodes with it).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from ofa.data.sources import WorldSource
from ofa.data.world import World
from ofa.evaluation.harness import evaluate
from ofa.tasks import TaskError
from ofa.tokenization.image import IMAGE_TOKENIZER_DIR, ImageTokenizer, ImageTokenizerConfig
from ofa.training import RecipeError, recipe_from_dict
from ofa.training.data import MixtureDataModule

from .test_training import run_in_process, tiny_recipe


@pytest.fixture(scope="module")
def vq_folder(tmp_path_factory) -> Path:
    # 64 px -> 8x8 codes, the grid of test_training's TINY_MODEL (code_image_size 64); a random codebook
    # (kmeans_init=False) so codes differ from cell to cell.
    torch.manual_seed(3)
    config = ImageTokenizerConfig(resolution=64, attn_resolutions=(8,), codebook_size=64, kmeans_init=False)
    folder = tmp_path_factory.mktemp("vq")
    ImageTokenizer(config).eval().save_pretrained(folder)
    return folder


def t2i_recipe(output_dir: Path, vq: Path | str | None, **train: object) -> dict:
    values = tiny_recipe(output_dir, **train)
    values["model"]["config"]["max_target_positions"] = 80
    values["data"]["max_target_length"] = 70
    values["data"]["mixture"] = [
        {"task": "caption", "lang": "en"},
        {"task": "text_to_image", "lang": "en"},
        {"task": "text_to_image", "lang": "zh"},
    ]
    values["data"]["task_options"] = {"text_to_image": {"image_tokenizer": None if vq is None else str(vq)}}
    return values


def test_world_text_to_image_samples_are_a_caption_of_the_scene():
    world = World(image_size=64, seed=0)
    for lang in ("en", "zh"):
        source = WorldSource(world, "train", "text_to_image", lang)
        for i in range(5):
            sample = source[i]
            assert sample["text"] in world.scene("train", i).captions[lang]
            assert sample["image"].size == (64, 64)


def test_targets_are_the_image_tokenizers_codes_of_the_scene(tmp_path, vq_folder):
    from ofa.training.run import load_tokenizer

    recipe = recipe_from_dict(t2i_recipe(tmp_path, vq_folder))
    tokenizer = load_tokenizer(recipe)
    data = MixtureDataModule(recipe, tokenizer, image_size=64)
    vq = ImageTokenizer.from_pretrained(vq_folder)
    pixels_of = WorldSource(data.world, "train", "text_to_image", "en")
    checked = 0
    for g in range(40):
        example = data.dataset[g]
        if example.task != "text_to_image":
            continue
        assert example.code_mode
        image = pixels_of[g]["image"]  # sample g of any component is scene g, drawn at 64 px already
        pixels = torch.from_numpy(np.asarray(image, dtype=np.float32) / 255).permute(2, 0, 1)
        codes = vq.encode(pixels[None])[0].flatten().tolist()
        assert example.target[:-1] == [int(i) for i in tokenizer.code_to_id(codes)]
        assert example.target[-1] == tokenizer.eos_id
        checked += 1
    assert checked >= 10


def test_training_exports_the_image_tokenizer_and_the_api_draws_with_it(tmp_path, vq_folder):
    from ofa import OFA

    result = run_in_process(t2i_recipe(tmp_path / "run", vq_folder, max_steps=3))
    exported = result.final_dir / IMAGE_TOKENIZER_DIR
    original = load_file(str(vq_folder / "model.safetensors"))
    copied = load_file(str(exported / "model.safetensors"))
    assert copied.keys() == original.keys()
    assert all(torch.equal(copied[k], original[k]) for k in original)
    pictures = OFA.from_pretrained(result.final_dir).generate_image("a small red circle", n=2, seed=0)
    assert len(pictures) == 2 and pictures[0].image.size == (64, 64)
    scores = evaluate(result.final_dir, "text_to_image", split="val", lang="zh", samples=3, batch_size=2)
    assert scores["num_images"] == 3 and 0.0 <= scores["compositional_accuracy"] <= 1.0


def test_eval_of_a_checkpoint_without_image_tokenizer_says_so(tmp_path):
    result = run_in_process(tiny_recipe(tmp_path, max_steps=1))
    with pytest.raises(TaskError, match="no image_tokenizer/ folder: this checkpoint cannot draw pictures"):
        evaluate(result.final_dir, "text_to_image", split="val", samples=2)


@pytest.mark.parametrize(
    ("vq", "message"),
    [
        (None, "data.task_options.text_to_image.image_tokenizer: text_to_image learns the codes"),
        ("no/such/folder", "data.task_options.text_to_image.image_tokenizer: no/such/folder: no such file"),
    ],
)
def test_recipe_errors_name_the_key(tmp_path, vq, message):
    with pytest.raises(RecipeError, match=message.replace(".", r"\.")):
        run_in_process(t2i_recipe(tmp_path, vq))


def test_a_code_grid_other_than_the_models_is_refused(tmp_path, vq_folder):
    values = t2i_recipe(tmp_path, vq_folder)
    values["model"]["config"]["code_image_size"] = 32  # a 4x4 grid, the tokenizer gives 8x8
    with pytest.raises(RecipeError, match="its code grid is 8x8 but the model's is 4x4"):
        run_in_process(values)
