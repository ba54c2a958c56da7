"""Fine-tuning recipes on real data files: coco-mini converted to each format, read back, trained, exported.

The recipes (`tasks/*/finetune.yaml`) run a few steps on 8 coco-mini photos from a random exported checkpoint
(`model.init_from`), one thread. Converters are checked against the source annotations themselves, and every
bad path or format must stop with one `RecipeError` / `DataFormatError` line naming the key or the file line.
"""

from __future__ import annotations

import base64
import json
import math
from pathlib import Path

import pytest
import torch
from PIL import Image

from ofa.data.converters import coco_mini_samples, convert_sample_file, load_coco_mini, write_samples
from ofa.data.formats import DataFormatError, detect_format, open_sample_file
from ofa.evaluation.harness import evaluate
from ofa.models import OFAModel
from ofa.tokenization import OFATokenizer
from ofa.training import RecipeError, load_recipe, recipe_from_dict
from ofa.training.recipe import model_config
from ofa.training.run import _devices, _strategy, read_history, train
from tests.conftest import REPO, require, shared_dir

TOKENIZER = REPO / "tokenizers" / "world"
TINY_MODEL = {
    "d_model": 32, "encoder_layers": 1, "decoder_layers": 1, "encoder_attention_heads": 2,
    "decoder_attention_heads": 2, "encoder_ffn_dim": 64, "decoder_ffn_dim": 64, "resnet_layers": [1, 1, 1],
    "resnet_width": 8, "image_size": 64, "max_source_positions": 96, "max_target_positions": 48,
}  # fmt: skip
N_IMAGES = 8


@pytest.fixture(scope="module")
def records() -> list[dict]:
    """8 coco-mini records with English captions and boxes (4 of them also have Chinese captions)."""
    annotations = require(shared_dir() / "data" / "coco-mini" / "annotations.json", "coco-mini")
    rows = [r for r in load_coco_mini(annotations) if r["captions_en"] and r["refs"]]
    with_zh = [r for r in rows if r["captions_zh"]][:4]
    return with_zh + [r for r in rows if r not in with_zh][: N_IMAGES - len(with_zh)]


@pytest.fixture(scope="module")
def data(records, tmp_path_factory) -> dict[str, Path]:
    """coco-mini's 8 images in every format the recipes read."""
    out = tmp_path_factory.mktemp("coco-mini")
    refs = coco_mini_samples(records, "grounding", "en") + coco_mini_samples(records, "grounding", "zh")
    return {
        "captions": write_samples(coco_mini_samples(records, "caption", "en"), out / "captions.json", "coco_captions"),
        "refs": write_samples(refs, out / "refs.jsonl", "refs_jsonl"),
        "tsv": write_samples(coco_mini_samples(records, "grounding", "en"), out / "refcoco.tsv", "ofa_tsv"),
        "cnclip": write_samples(coco_mini_samples(records, "retrieval", "en"), out / "train_imgs.tsv", "cnclip"),
    }  # fmt: skip


def make_checkpoint(folder: Path, **config: object) -> Path:
    """A random TINY_MODEL (with `config` overrides) exported like `ofa train`'s final/ (model + tokenizer)."""
    values = {**TINY_MODEL, **config}
    recipe = recipe_from_dict({"model": {"config": values}, "data": {"mixture": [{"task": "caption"}]}})
    tokenizer = OFATokenizer.from_pretrained(TOKENIZER)
    torch.manual_seed(0)
    OFAModel(model_config(recipe, tokenizer)).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> Path:
    """A random model to fine-tune from."""
    return make_checkpoint(tmp_path_factory.mktemp("init"))


def quick(checkpoint: Path, output_dir: Path, *overrides: str) -> list[str]:
    """Overrides that make a shipped recipe a 3-step, 1-thread run from the random checkpoint."""
    return [
        f"model.init_from={checkpoint}",
        f"tokenizer.path={TOKENIZER}",
        "train.max_steps=3",
        "train.batch_size=4",
        "train.warmup_steps=1",
        "train.num_threads=1",
        "train.accelerator=cpu",
        "train.log_every=1",
        "train.progress_bar=none",
        "train.resume=none",
        f"train.output_dir={output_dir}",
        *overrides,
    ]


# ---------------------------------------------------------------------------------------------- converters
def test_converters_read_back_the_source_annotations(records, data):
    by_id = {r["coco_id"]: r for r in records}
    captions = open_sample_file(data["captions"], "caption", "en")
    assert [s["id"] for s in captions] == list(by_id)
    for sample in captions:
        assert sample["captions"] == by_id[sample["id"]]["captions_en"]
        assert Path(sample["image"]).resolve() == by_id[sample["id"]]["image"]

    expected = [
        (str(r["coco_id"]), ref["text"] if lang == "en" else ref["text_zh"], ref["box"], lang)
        for lang in ("en", "zh")
        for r in records
        for ref in r["refs"]
    ]
    refs = [s for lang in ("en", "zh") for s in open_sample_file(data["refs"], "grounding", lang)]
    assert [(str(s["image_id"]), s["text"], s["box"], s["lang"]) for s in refs] == expected
    for sample in refs:
        assert Path(sample["image"]).resolve() == by_id[int(sample["image_id"])]["image"]

    tsv = open_sample_file(data["tsv"], "grounding", "en")
    assert [(s["image_id"], s["text"], s["box"], s["lang"]) for s in tsv] == [
        e for e in expected if e[3] == "en"
    ]
    for sample in tsv[:3]:  # the images are the photo files, byte for byte
        assert sample["image_bytes"] == by_id[int(sample["image_id"])]["image"].read_bytes()

    pairs = open_sample_file(data["cnclip"], "retrieval", "en")
    assert [(s["image_id"], s["text"]) for s in pairs] == [
        (r["coco_id"], text) for r in records for text in r["captions_en"]
    ]
    images = open_sample_file(data["cnclip"], "caption", "en")
    assert [(s["id"], s["captions"]) for s in images] == [(r["coco_id"], r["captions_en"]) for r in records]
    assert images[0]["image_bytes"] == records[0]["image"].read_bytes()


def test_format_to_format_round_trip(records, data, tmp_path):
    """refs JSONL -> OFA TSV -> refs JSONL (images written out of the TSV) keeps texts, boxes and pixels."""
    tsv = convert_sample_file(data["refs"], tmp_path / "refs.tsv", "grounding", "ofa_tsv", lang="zh")
    back = convert_sample_file(tsv, tmp_path / "back" / "refs.jsonl", "grounding", "refs_jsonl", lang="zh")
    source, again = (
        open_sample_file(data["refs"], "grounding", "zh"),
        open_sample_file(back, "grounding", "zh"),
    )
    assert [(s["text"], s["box"], str(s["id"])) for s in again] == [
        (s["text"], s["box"], s["id"]) for s in source
    ]
    assert Path(again[0]["image"]).read_bytes() == Path(source[0]["image"]).read_bytes()
    assert len({s["image"] for s in again}) == len({s["image"] for s in source})  # one file per photo
    # COCO captions -> pairs CSV -> COCO captions: the same captions per image id
    csv = convert_sample_file(data["captions"], tmp_path / "pairs.csv", "caption", "pairs_csv")
    coco = convert_sample_file(csv, tmp_path / "again.json", "caption", "coco_captions")
    assert [(s["id"], s["captions"]) for s in open_sample_file(coco, "caption")] == [
        (r["coco_id"], r["captions_en"]) for r in records
    ]


def test_ofa_tsv_matches_the_official_column_layout(tmp_path):
    """A line written by hand as the official refcoco TSV (columns 0, 4, 2, 3 = id, image, text, box)."""
    image = Image.new("RGB", (40, 30), (200, 10, 10))
    image.save(tmp_path / "red.png")
    b64 = base64.urlsafe_b64encode((tmp_path / "red.png").read_bytes()).decode()
    (tmp_path / "ref.tsv").write_text(f"7\t123\tthe red square\t1.5,2.0,30.25,20.0\t{b64}\n\n")
    (sample,) = open_sample_file(tmp_path / "ref.tsv", "grounding", "en")
    assert (sample["id"], sample["image_id"], sample["text"], sample["box"]) == (
        "7",
        "123",
        "the red square",
        [1.5, 2.0, 30.25, 20.0],
    )
    assert sample["image"].size == (40, 30) and sample["image"].convert("RGB").getpixel((5, 5)) == (
        200,
        10,
        10,
    )


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ("1\t2\tcat\t0,0,5,5", "line 1: expected 5 tab-separated fields"),
        ("1\t2\tcat\t0,0,5\tAAAA", r"line 1: region '0,0,5' is not 'x0,y0,x1,y1'"),
        ("1\t2\tcat\t9,0,5,5\tAAAA", "x0 <= x1"),
    ],
)
def test_ofa_tsv_errors_name_the_line(tmp_path, line, message):
    (tmp_path / "bad.tsv").write_text(line + "\n")
    with pytest.raises(DataFormatError, match=message):
        open_sample_file(tmp_path / "bad.tsv", "grounding")


def test_ofa_tsv_bad_image_is_named_when_read(tmp_path):
    (tmp_path / "bad.tsv").write_text("1\t2\tcat\t0,0,5,5\tnot*base64\n" + "2\t2\tdog\t0,0,5,5\taGVsbG8=\n")
    samples = open_sample_file(tmp_path / "bad.tsv", "grounding")
    with pytest.raises(DataFormatError, match=r"bad.tsv, line 1 \(uniq_id 1\): image is not valid base64"):
        samples[0]
    with pytest.raises(DataFormatError, match=r"line 2 \(uniq_id 2\): not a readable image"):
        samples[1]


def test_format_detection_and_errors(tmp_path):
    assert detect_format("x/valid_imgs.tsv", "retrieval") == "cnclip"
    assert detect_format("x/refcoco_val.tsv", "grounding") == "ofa_tsv"
    assert detect_format("x/refs.jsonl", "grounding") == "refs_jsonl"
    assert detect_format("x/pairs.jsonl", "caption") == "pairs_jsonl"
    with pytest.raises(DataFormatError, match="name the format"):
        detect_format("x/data.parquet", "caption")
    with pytest.raises(DataFormatError, match="no such data file"):
        open_sample_file(tmp_path / "missing.json", "caption")
    with pytest.raises(DataFormatError, match="no data file format holds itm samples"):
        open_sample_file(tmp_path / "missing.json", "itm", fmt="coco_captions")
    (tmp_path / "c.json").write_text(json.dumps({"images": [{"id": 1, "file_name": "gone.jpg"}],
                                                 "annotations": [{"image_id": 1, "caption": "a cat"}]}))  # fmt: skip
    with pytest.raises(DataFormatError, match=r"image file .*gone.jpg \(sample 1\) not found"):
        open_sample_file(tmp_path / "c.json", "caption")


# ------------------------------------------------------------------------------------------------- recipes
def test_caption_recipe_trains_and_exports(data, checkpoint, tmp_path):
    recipe = load_recipe(
        REPO / "tasks/caption_coco/finetune.yaml",
        quick(checkpoint, tmp_path / "run", f"data.mixture.0.path={data['captions']}"),
    )
    result = train(recipe)
    losses = [h["loss"] for h in read_history(result.output_dir).values()]
    assert len(losses) == 3 and all(math.isfinite(x) for x in losses)
    model = OFAModel.from_pretrained(result.final_dir)
    assert model.config.image_size == TINY_MODEL["image_size"] and model.config.dropout == 0.1
    metrics = evaluate(
        result.final_dir, "caption", data=data["captions"], samples=2, max_len_b=4, beam_size=2
    )
    assert metrics["samples"] == 2 and math.isfinite(metrics["CIDEr"])


@pytest.mark.parametrize("source", ["refs", "tsv"])
def test_grounding_recipe_reads_refs_jsonl_and_ofa_tsv(data, checkpoint, tmp_path, source):
    path = data[source]
    mixture = f"[{{task: grounding, lang: en, path: {path}}}" + (
        f", {{task: grounding, lang: zh, path: {path}}}]" if source == "refs" else "]"
    )
    recipe = load_recipe(
        REPO / "tasks/grounding_refs/finetune.yaml",
        quick(checkpoint, tmp_path / "run", f"data.mixture={mixture}"),
    )
    result = train(recipe)
    assert all(math.isfinite(h["loss"]) for h in read_history(result.output_dir).values())
    metrics = evaluate(result.final_dir, "grounding", data=path, samples=4, beam_size=2)
    assert metrics["samples"] == 4 and 0 <= metrics["Acc@0.5"] <= 1


def test_retrieval_recipe_adds_a_head_and_trains_pairs_from_cnclip(data, checkpoint, tmp_path):
    recipe = load_recipe(
        REPO / "tasks/retrieval_cnclip/finetune.yaml",
        quick(
            checkpoint,
            tmp_path / "run",
            f"data.mixture=[{{task: caption, lang: en, path: {data['cnclip']}}}]",
            f"data.retrieval.path={data['cnclip']}",
            "data.retrieval.langs=[en]",
            "data.retrieval.batch_size=4",
        ),
    )
    result = train(recipe)
    history = read_history(result.output_dir)
    assert all(math.isfinite(h["loss"]) and math.isfinite(h["retrieval_loss"]) for h in history.values())
    assert OFAModel.from_pretrained(result.final_dir).config.retrieval_dim == 128
    metrics = evaluate(result.final_dir, "retrieval", data=data["cnclip"], samples=40)
    assert metrics["samples"] == 40 and 0 <= metrics["t2i_R@1"] <= 100


def test_file_pairs_are_different_images(data, checkpoint, tmp_path):
    """Consecutive pairs of the stream show different photos (one text each), so in-batch negatives are real."""
    from ofa.training.data import MixtureDataModule
    from ofa.training.run import load_tokenizer

    cnclip = data["cnclip"]
    overrides = [
        f"data.mixture=[{{task: caption, lang: en, path: {cnclip}}}]",
        f"data.retrieval.path={cnclip}",
    ]
    recipe = load_recipe(
        REPO / "tasks/retrieval_cnclip/finetune.yaml",
        quick(checkpoint, tmp_path, *overrides, "data.retrieval.langs=[en]"),
    )
    module = MixtureDataModule(recipe, load_tokenizer(recipe), 32)
    pairs = [module.pairs[j] for j in range(N_IMAGES)]
    assert len({p.meta["image_id"] for p in pairs}) == N_IMAGES
    truth = {(s["image_id"], s["text"]) for s in open_sample_file(cnclip, "retrieval")}
    assert all((p.meta["image_id"], p.meta["text"]) in truth for p in pairs)


# -------------------------------------------------------------------------------------------------- errors
def test_bad_file_recipes_name_the_key(data, checkpoint, tmp_path):
    recipe_path = REPO / "tasks/caption_coco/finetune.yaml"
    base = quick(checkpoint, tmp_path)
    recipe = load_recipe(recipe_path, [*base, f"data.mixture.0.path={tmp_path / 'nope.json'}"])
    with pytest.raises(RecipeError, match=r"data.mixture.0.path: .*nope.json: no such data file"):
        train(recipe)
    cases = [
        (
            "data.mixture.0.format=ofa_tsv",
            r"data.mixture.0.format: no reader for task 'caption' in format 'ofa_tsv'",
        ),
        ("data.mixture.0.format=parquet", r"data.mixture.0.format: unknown data format 'parquet'"),
        ("data.mixture.0.path=null", r"data.mixture.0.path: data.kind: files needs a data file"),
        ("data.kind=world", r"data.mixture.0.path: only read with data.kind: files"),
        ("train.eval_every=5", r"train.eval_every: periodic evaluation reads world splits"),
        ("data.mixture.0.task=itm", r"data.mixture.0.format: no data file format holds itm samples"),
    ]
    for override, message in cases:
        with pytest.raises(RecipeError, match=message):
            load_recipe(recipe_path, [*base, override])
    recipe = load_recipe(
        recipe_path, [*base, f"data.mixture.0.path={data['captions']}", "data.mixture.0.size=99"]
    )
    with pytest.raises(RecipeError, match=r"data.mixture.0.size: 99 is more than the 8 samples"):
        train(recipe)
    with pytest.raises(RecipeError, match=r"data.retrieval.langs: a pairs file has one language"):
        load_recipe(REPO / "tasks/retrieval_cnclip/finetune.yaml", [*base, "data.retrieval.langs=[en, zh]"])


def test_devices_auto_on_cpu_is_one_process(tmp_path):
    """`train.devices: auto` on CPU: one device and no DDP (which would fail in a notebook); ints > 1 keep DDP."""
    values = {"model": {"config": TINY_MODEL}, "data": {"mixture": [{"task": "caption"}]}}
    for accelerator in ("cpu", "auto"):
        recipe = recipe_from_dict(values, [f"train.accelerator={accelerator}", "train.devices=auto"])
        if accelerator == "auto" and torch.cuda.device_count() > 1:
            continue
        assert _devices(recipe) == 1 and _strategy(recipe) == "auto"
    recipe = recipe_from_dict(values, ["train.accelerator=cpu", "train.devices=2"])
    assert _devices(recipe) == 2 and type(_strategy(recipe)).__name__ == "DDPStrategy"
