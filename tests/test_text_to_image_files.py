"""Text-to-image from caption files: one sample per caption, offline codes (`ofa extract-codes`), the recipe.

Eight coco-mini photos (`$OFA_SHARED/data/coco-mini`; skipped without it) and a random-weight 64 px image
tokenizer standing in for a trained one: what is checked is the plumbing. The codes of the extraction are
recomputed here image by image (PIL resize and crop written out, then the tokenizer); the training targets are
checked against the codes file's rows.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from ofa.cli import build_parser, main
from ofa.data.converters import coco_mini_samples, load_coco_mini, write_samples
from ofa.data.formats import open_sample_file
from ofa.tokenization.image import (
    IMAGE_TOKENIZER_DIR,
    ImageTokenizer,
    ImageTokenizerConfig,
    extract_codes,
    read_codes,
)
from ofa.training import RecipeError, load_recipe
from ofa.training.data import MixtureDataModule
from ofa.training.run import load_tokenizer, read_history, train
from tests.conftest import REPO, require, shared_dir
from tests.test_recipes_coco_mini import make_checkpoint as make_random_checkpoint
from tests.test_recipes_coco_mini import quick

RECIPE = REPO / "tasks" / "text_to_image" / "finetune.yaml"
TOKENIZER = REPO / "tokenizers" / "world"
N_IMAGES = 8
SIZE = 64  # pixels the image tokenizer encodes -> 8x8 codes (factor 8)
# test_recipes_coco_mini.TINY_MODEL, with room for 8x8 = 64 codes + eos in the decoder
T2I_MODEL = {"max_target_positions": 80}


@pytest.fixture(scope="module")
def records() -> list[dict]:
    annotations = require(shared_dir() / "data" / "coco-mini" / "annotations.json", "coco-mini")
    return [r for r in load_coco_mini(annotations) if r["captions_en"]][:N_IMAGES]


@pytest.fixture(scope="module")
def files(records, tmp_path_factory) -> dict[str, Path]:
    """The 8 photos' English captions in every caption format (the photos are named, never copied)."""
    out = tmp_path_factory.mktemp("t2i-data")
    captions = coco_mini_samples(records, "caption", "en")
    pairs = coco_mini_samples(records, "retrieval", "en")
    return {
        "coco_captions": write_samples(captions, out / "captions.json", "coco_captions"),
        "cnclip": write_samples(pairs, out / "train_imgs.tsv", "cnclip"),
        "pairs_jsonl": write_samples(pairs, out / "pairs.jsonl", "pairs_jsonl"),
        "pairs_csv": write_samples(pairs, out / "pairs.csv", "pairs_csv"),
    }


def random_vq(folder: Path, codebook_size: int = 64, seed: int = 3) -> Path:
    """A random-weight 64 px -> 8x8 image tokenizer (random codebook, so codes vary from cell to cell)."""
    torch.manual_seed(seed)
    config = ImageTokenizerConfig(
        resolution=SIZE, attn_resolutions=(8,), codebook_size=codebook_size, kmeans_init=False
    )
    ImageTokenizer(config).eval().save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def vq(tmp_path_factory) -> Path:
    return random_vq(tmp_path_factory.mktemp("vq"))


def make_checkpoint(folder: Path, code_image_size: int = SIZE) -> Path:
    """A random model exported like `ofa train`'s final/ (model + tokenizer), to fine-tune from."""
    return make_random_checkpoint(folder, **T2I_MODEL, code_image_size=code_image_size)


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> Path:
    return make_checkpoint(tmp_path_factory.mktemp("init"))


def by_hand_codes(tokenizer: ImageTokenizer, path: Path) -> np.ndarray:
    """Codes of one photo computed here: shorter side to 64 px (Lanczos), centre 64x64 crop, encode alone."""
    image = Image.open(path).convert("RGB")
    scale = SIZE / min(image.size)
    width, height = max(SIZE, round(image.width * scale)), max(SIZE, round(image.height * scale))
    image = image.resize((width, height), Image.LANCZOS)
    left, top = (width - SIZE) // 2, (height - SIZE) // 2
    pixels = np.asarray(image.crop((left, top, left + SIZE, top + SIZE)), dtype=np.float32) / 255.0
    return tokenizer.encode(torch.from_numpy(pixels).permute(2, 0, 1)[None])[0].numpy()


def recipe_overrides(
    checkpoint: Path, output_dir: Path, data: Path, vq: Path | None, codes: Path | None
) -> list[str]:
    """The shipped recipe as a 3-step, 1-thread run from the random checkpoint on the 8 photos."""
    return quick(
        checkpoint,
        output_dir,
        f"data.mixture.0.path={data}",
        f"data.task_options.text_to_image.image_tokenizer={'null' if vq is None else vq}",
        f"data.task_options.text_to_image.codes={'null' if codes is None else codes}",
    )


# ---------------------------------------------------------------------------------------------- reading
@pytest.mark.parametrize("fmt", ["coco_captions", "cnclip", "pairs_jsonl", "pairs_csv"])
def test_caption_files_give_one_sample_per_caption_keyed_by_its_image(records, files, fmt):
    samples = open_sample_file(files[fmt], "text_to_image", "en")
    expected = [(r["coco_id"], text) for r in records for text in r["captions_en"]]
    assert [(int(s["id"]), s["text"]) for s in samples] == expected
    assert all(s["lang"] == "en" for s in samples)
    photo = {r["coco_id"]: r["image"] for r in records}
    for index, sample in enumerate(samples):
        assert samples.sample_id(index) == sample["id"]
        if fmt == "cnclip":  # the photo travels inside the TSV
            assert sample["image_bytes"] == photo[int(sample["id"])].read_bytes()
        else:
            assert Path(sample["image"]).resolve() == photo[int(sample["id"])]


# ------------------------------------------------------------------------------------------ extraction
def test_extract_codes_equals_encoding_each_image_alone(records, files, vq, tmp_path, capsys):
    out = tmp_path / "codes.safetensors"
    argv = ["extract-codes", str(files["coco_captions"]), "--image-tokenizer", str(vq), "-o", str(out)]
    assert main([*argv, "--batch-size", "3"]) == 0
    assert f"wrote {out} (8 images, 8x8 codes each" in capsys.readouterr().out
    codes = read_codes(out)
    assert codes.ids == [r["coco_id"] for r in records]  # each photo once, in file order
    assert (codes.codebook_size, codes.image_size, codes.grid) == (64, SIZE, (8, 8))
    tokenizer = ImageTokenizer.from_pretrained(vq)
    for row, record in enumerate(records):
        np.testing.assert_array_equal(codes.codes[row], by_hand_codes(tokenizer, record["image"]))
    # Chinese-CLIP data (images inside the TSV) gives the same codes under the same ids
    again = tmp_path / "cnclip.safetensors"
    assert main(["extract-codes", str(files["cnclip"]), "--image-tokenizer", str(vq), "-o", str(again)]) == 0
    assert read_codes(again).ids == codes.ids
    np.testing.assert_array_equal(read_codes(again).codes, codes.codes)


def test_extract_codes_is_in_the_cli_help_and_fails_in_one_line(vq, tmp_path, capsys):
    assert "extract-codes" in build_parser().format_help()
    argv = ["extract-codes", str(tmp_path / "nope.json"), "--image-tokenizer", str(vq), "-o", "x.safetensors"]
    assert main(argv) == 1
    err = capsys.readouterr().err.strip()
    assert err.startswith("ofa extract-codes: error: ") and "nope.json: no such data file" in err
    assert "\n" not in err


# -------------------------------------------------------------------------------------------- training
def test_recipe_trains_on_the_codes_file_and_exports_the_image_tokenizer(
    records, files, vq, checkpoint, tmp_path
):
    # The file's codes of photo k are the codes of photo k + 1: targets can only come from the file.
    tokenizer = ImageTokenizer.from_pretrained(vq)
    ids = [r["coco_id"] for r in records]
    shifted = [(ids[k], records[(k + 1) % N_IMAGES]["image"]) for k in range(N_IMAGES)]
    codes_path = tmp_path / "shifted.safetensors"
    extract_codes(tokenizer, shifted, codes_path)
    stored = {image_id: read_codes(codes_path).codes[k] for k, image_id in enumerate(ids)}
    overrides = recipe_overrides(checkpoint, tmp_path / "run", files["coco_captions"], vq, codes_path)
    recipe = load_recipe(RECIPE, overrides)

    text_tokenizer = load_tokenizer(recipe)
    data = MixtureDataModule(recipe, text_tokenizer, image_size=64)
    task = data.tasks["text_to_image"]

    def never(*_: object) -> None:
        raise AssertionError("an image was encoded although the codes file has it")

    task.encode_image = never
    samples = open_sample_file(files["coco_captions"], "text_to_image", "en")
    assert len(data.dataset.sources[0]) == len(samples)
    for g in range(2 * len(samples)):
        example = data.dataset[g]
        image_id = samples[g % len(samples)]["id"]  # the stream reads sample g mod N of its file
        expected = text_tokenizer.code_to_id(stored[image_id].astype(np.int64).reshape(-1).tolist())
        assert example.target == [int(i) for i in expected] + [text_tokenizer.eos_id]
        assert example.code_mode and example.meta["id"] == image_id
    assert any(
        not np.array_equal(stored[i], by_hand_codes(tokenizer, r["image"])) for i, r in zip(ids, records)
    )

    result = train(recipe)
    assert len(read_history(result.output_dir)) == 3
    exported = ImageTokenizer.from_pretrained(result.final_dir / IMAGE_TOKENIZER_DIR)
    assert exported.codebook_size == 64 and exported.grid() == 8


# ---------------------------------------------------------------------------------------------- errors
def test_codes_errors_name_the_recipe_key(records, files, vq, checkpoint, tmp_path):
    tokenizer = ImageTokenizer.from_pretrained(vq)
    photos = [(r["coco_id"], r["image"]) for r in records]
    small_grid, seven, other_codebook = (tmp_path / f"{n}.safetensors" for n in ("grid4", "seven", "book32"))
    extract_codes(tokenizer, photos, small_grid, image_size=32)  # 4x4 codes
    extract_codes(tokenizer, photos[:7], seven)
    extract_codes(ImageTokenizer.from_pretrained(random_vq(tmp_path / "vq32", 32)), photos, other_codebook)
    key = r"data\.task_options\.text_to_image\.codes: "

    def fails(codes: Path | None, message: str, vq_folder: Path | None = vq, init: Path = checkpoint) -> None:
        overrides = recipe_overrides(init, tmp_path / "run", files["coco_captions"], vq_folder, codes)
        with pytest.raises(RecipeError, match=message) as caught:
            train(load_recipe(RECIPE, overrides))
        assert "\n" not in str(caught.value)

    fails(small_grid, key + r"codes file .*grid4\.safetensors: its code grid is 4x4 but the task's is 8x8")
    fails(other_codebook, key + r".*a codebook of 32 but the task's image tokenizer has 64")
    missing = records[7]["coco_id"]
    fails(
        seven, key + rf"image id {missing} of data\.mixture\.0\.path \(.*captions\.json\) is not in .*seven"
    )
    fails(tmp_path / "nope.safetensors", key + r".*nope\.safetensors: no such codes file")
    fails(
        seven,
        r"data\.task_options\.text_to_image\.image_tokenizer: a codes file still needs the image tokenizer",
        vq_folder=None,
    )
    # codes and image tokenizer agree (8x8), the model's decoder draws 16x16
    full = tmp_path / "full.safetensors"
    extract_codes(tokenizer, photos, full)
    model16 = make_checkpoint(tmp_path / "init16", code_image_size=128)
    fails(full, r"image_tokenizer: its code grid is 8x8 but the model's is 16x16", init=model16)
