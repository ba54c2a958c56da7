"""`ofa.OFA`: loading an exported checkpoint, input kinds, box coordinates, mixed batches and clear errors.

A small random-weight model stands in for a trained one, so the tests check the plumbing against independent
truths (hand-computed boxes and probabilities, numpy's own rotation, single-task decoding) rather than the
quality of the outputs.
"""

from __future__ import annotations

import math
import struct
import zlib
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from PIL import Image

from ofa import OFA
from ofa.api import (
    CaptionResult,
    CheckpointNotFoundError,
    GroundingResult,
    InputError,
    MixedSearchError,
    RunResult,
    detect_language,
)
from ofa.data.images import ImageError
from ofa.models import OFAModel
from ofa.tasks import TaskError
from ofa.tokenization import OFATokenizer
from ofa.training.recipe import model_config, recipe_from_dict
from tests.conftest import REPO

TOKENIZER = REPO / "tokenizers" / "world"
SMALL_MODEL = {
    "d_model": 32, "encoder_layers": 1, "decoder_layers": 1, "encoder_attention_heads": 2,
    "decoder_attention_heads": 2, "encoder_ffn_dim": 64, "decoder_ffn_dim": 64, "resnet_layers": [1, 1, 1],
    "resnet_width": 8, "image_size": 64,
}  # fmt: skip
CAPTION_MAX_LEN = 6  # eval.search of the test recipe; the caption default is 16


def make_checkpoint(folder: Path) -> Path:
    """A random model in the layout `ofa.training.run.export_final` writes (model, tokenizer, recipe.yaml)."""
    recipe = recipe_from_dict(
        {
            "model": {"config": SMALL_MODEL},
            "tokenizer": {"path": str(TOKENIZER)},
            "data": {"mixture": [{"task": "caption"}, {"task": "grounding"}], "max_source_length": 64},
            "eval": {"search": {"caption": {"max_len_b": CAPTION_MAX_LEN}, "grounding": {"beam_size": 5}}},
        }
    )
    tokenizer = OFATokenizer.from_pretrained(TOKENIZER)
    torch.manual_seed(0)
    OFAModel(model_config(recipe, tokenizer)).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    (folder / "recipe.yaml").write_text(recipe.to_yaml(), encoding="utf-8")
    return folder


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> Path:
    return make_checkpoint(tmp_path_factory.mktemp("ckpt"))


@pytest.fixture(scope="module")
def ofa(checkpoint) -> OFA:
    return OFA.from_pretrained(checkpoint)


def picture(width: int = 120, height: int = 80, seed: int = 0) -> Image.Image:
    """A deterministic, non-symmetric RGB picture."""
    rng = np.random.default_rng(seed)
    array = rng.integers(0, 256, size=(height, width, 3), dtype=np.uint8)
    array[: height // 3, : width // 2] = (255, 0, 0)  # a red block in the top-left corner
    return Image.fromarray(array)


def assert_same(mixed, single) -> None:
    """Same tokens; scores equal up to float noise from different padding in different batches."""
    assert type(mixed) is type(single)
    if isinstance(single, GroundingResult):
        assert mixed.bins == single.bins and mixed.box == single.box
    else:
        assert mixed.tokens == single.tokens and mixed.text == single.text
    assert mixed.score == pytest.approx(single.score, abs=1e-5)


class ForcedModel(torch.nn.Module):
    """Wraps a model; the decoder puts logit 10 on `forced[step]` and 0 elsewhere (no KV cache)."""

    def __init__(self, model: OFAModel, forced: list[int]) -> None:
        super().__init__()
        self.inner = model
        self.forced = forced
        self.config = model.config

    @property
    def device(self) -> torch.device:
        return self.inner.device

    @property
    def dtype(self) -> torch.dtype:
        return self.inner.dtype

    def encode(self, *args, **kwargs):
        return self.inner.encode(*args, **kwargs)

    def decode(self, decoder_input_ids, encoder_out, code_masks=None, cache=None, use_cache=False):
        rows, length = decoder_input_ids.shape
        logits = torch.zeros(rows, length, self.config.vocab_size)
        logits[:, -1, self.forced[min(length - 1, len(self.forced) - 1)]] = 10.0
        return SimpleNamespace(logits=logits, cache=None)


def test_import_ofa_is_lazy():
    import subprocess
    import sys

    subprocess.run([sys.executable, "-c", "import sys, ofa; assert 'torch' not in sys.modules"], check=True)
    assert OFA.__module__ == "ofa.api.inference"  # `from ofa import OFA` resolves lazily


def test_single_and_list_inputs(ofa):
    image = picture()
    one = ofa.caption(image)
    many = ofa.caption([image, picture(seed=1)])
    assert isinstance(one, CaptionResult) and isinstance(many, list) and len(many) == 2
    assert_same(many[0], one)
    assert one.lang == "en" and 0.0 <= one.score <= 1.0
    assert ofa.caption([]) == []
    box = ofa.ground(image, "the red block")
    boxes = ofa.ground(image, ["the red block", "the noise"])  # one image, several expressions
    assert isinstance(box, GroundingResult) and [b.text for b in boxes] == ["the red block", "the noise"]
    assert_same(boxes[0], box)
    assert 0.0 <= box.score <= 1.0
    assert isinstance(ofa.run(" what does the image describe?", image=image), RunResult)
    assert isinstance(ofa.run([" what is this?", " and this?"]), list)


def test_recipe_search_settings_are_used(ofa):
    """The test recipe caps captions at CAPTION_MAX_LEN tokens (the task default is 16)."""
    results = ofa.caption([picture(seed=s) for s in range(3)])
    assert all(len(r.tokens) <= CAPTION_MAX_LEN + 1 for r in results)
    assert ofa.tasks["caption"].generation_config().max_len_b == CAPTION_MAX_LEN


def test_every_input_kind_gives_the_same_result(ofa, tmp_path):
    image = picture()
    array = np.array(image)
    path = tmp_path / "p.png"
    image.save(path)
    kinds = [
        image,
        path,
        str(path),
        array,
        torch.from_numpy(array).permute(2, 0, 1),  # CHW uint8
        torch.from_numpy(array).permute(2, 0, 1).float() / 255,  # CHW float in [0, 1]
    ]
    # One batch of identical pictures: the same tokens; scores only up to float noise, as multi-threaded matmuls
    # need not give bit-identical rows at different batch positions.
    captions = ofa.caption(kinds)
    for caption in captions:
        assert_same(caption, captions[0])
    boxes = ofa.ground(kinds, "the red block")
    for box in boxes:
        assert_same(box, boxes[0])
    # A 4-D batch counts as a list of images.
    for caption in ofa.caption(torch.stack([kinds[4], kinds[4]])):
        assert_same(caption, captions[0])


def test_exif_rotated_jpeg_is_turned_upright(ofa, tmp_path):
    """Orientation 6 means "turn 90 degrees clockwise to display"; numpy's rot90 is the independent truth."""
    stored = picture(120, 60)
    path = tmp_path / "rotated.jpg"
    exif = Image.Exif()
    exif[0x0112] = 6
    stored.save(path, quality=95, exif=exif)
    with Image.open(path) as raw:  # the stored pixels, orientation ignored
        upright = np.rot90(np.asarray(raw.convert("RGB")), k=-1).copy()
    assert upright.shape[:2] == (120, 60)  # height x width once upright
    assert_same(*ofa.caption([path, upright]))
    # Box coordinates live in the upright image: the whole-image bins map to its 60 x 120 size.
    lo = ofa.tokenizer.bin_range[0]
    last = ofa.tokenizer.num_bins - 1
    forced = OFA(ForcedModel(ofa.model, [lo, lo, lo + last, lo + last, ofa.tokenizer.eos_id]), ofa.tokenizer)
    result = forced.ground(path, "everything", use_cache=False)
    assert result.box == pytest.approx((0.0, 0.0, 60.0, 120.0), abs=1e-4)


def test_grounding_box_and_score_by_hand(ofa):
    """Forced bins (0, 51, 255, 204) of 256 on a 200 x 100 image: x = b / 255 * 200, y = b / 255 * 100."""
    tok = ofa.tokenizer
    assert tok.num_bins == 256
    lo = tok.bin_range[0]
    forced = [lo + 0, lo + 51, lo + 255, lo + 204, tok.eos_id]
    m = OFA(ForcedModel(ofa.model, forced), tok)
    result = m.ground(Image.new("RGB", (200, 100)), "the left half", use_cache=False)
    assert result.box == pytest.approx((0.0, 20.0, 200.0, 80.0), abs=1e-4)
    assert result.bins == (0, 51, 255, 204)
    # Each bin: logit 10 against 255 other bins at logit 0, under the bins-only softmax.
    assert result.score == pytest.approx(math.exp(10) / (math.exp(10) + 255), rel=1e-5)
    # Free text shows the same tokens as <bin_k> and converts them to the same box.
    run = m.run(" where?", image=Image.new("RGB", (200, 100)), use_cache=False)
    assert run.text == "<bin_0><bin_51><bin_255><bin_204>"
    assert run.boxes == [pytest.approx((0.0, 20.0, 200.0, 80.0), abs=1e-4)]
    assert m.run(" where?", use_cache=False).boxes == []  # no image, no pixel frame


def test_free_text_never_emits_image_codes(ofa):
    lo, hi = ofa.tokenizer.code_range
    results = ofa.run([" what does the image describe?", " hello"], image=picture(), max_len_b=12)
    for r in results:
        assert r.tokens and r.tokens[-1] == ofa.tokenizer.eos_id
        assert not any(lo <= t < hi for t in r.tokens)


REQUESTS = [
    {"task": "caption", "image": picture(seed=1)},
    {"task": "ground", "image": picture(seed=2), "text": "红色的方块"},
    {"task": "run", "instruction": " what is two plus two?"},
    {"task": "caption", "image": picture(seed=2), "lang": "zh"},
    {"task": "ground", "image": picture(seed=1), "text": "the red block"},
    {"task": "run", "instruction": " what does the image describe?", "image": picture(seed=3)},
]


def alone(ofa: OFA, request: dict, **search):
    if request["task"] == "caption":
        return ofa.caption(request["image"], request.get("lang", "en"), **search)
    if request["task"] == "ground":
        return ofa.ground(request["image"], request["text"], **search)
    return ofa.run(request["instruction"], image=request.get("image"), **search)


@pytest.mark.parametrize("search", [{"strategy": "greedy"}, {}], ids=["greedy", "default-beam-5"])
def test_mixed_batch_equals_each_task_alone(ofa, search):
    """One generate call over captions, boxes and free text (different lengths, min_len, constraints)."""
    mixed = ofa.batch(REQUESTS, **search)
    for request, result in zip(REQUESTS, mixed):
        assert_same(result, alone(ofa, request, **search))
    assert all(len(r.bins) == 4 for r in mixed if isinstance(r, GroundingResult))
    assert len(mixed[0].tokens) <= CAPTION_MAX_LEN + 1  # the caption kept its own length limit


def test_mixed_batch_in_chunks(ofa):
    whole = ofa.batch(REQUESTS, strategy="greedy")
    for got, want in zip(ofa.batch(REQUESTS, strategy="greedy", batch_size=4), whole):
        assert_same(got, want)


def test_mixed_batch_shares_the_largest_beam(ofa):
    """A greedy caption joins a beam-3 grounding as a beam search of 3; mismatched scoring is refused."""
    m = OFA(
        ofa.model, ofa.tokenizer, search={"caption": {"strategy": "greedy"}, "grounding": {"beam_size": 3}}
    )
    results = m.batch(REQUESTS[:2])
    assert_same(results[1], m.ground(REQUESTS[1]["image"], REQUESTS[1]["text"]))
    m = OFA(ofa.model, ofa.tokenizer, search={"caption": {"len_penalty": 2.0}})
    with pytest.raises(MixedSearchError, match="len_penalty"):
        m.batch(REQUESTS[:2])


def test_detect_language():
    assert detect_language("红色的星") == "zh" and detect_language("the red star") == "en"


def huge_png(path: Path, width: int, height: int) -> Path:
    """A PNG header announcing `width` x `height` (no pixel data needed: the size check comes first)."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IEND", b""))
    return path


def test_bad_inputs_raise_clear_errors(ofa, checkpoint, tmp_path):
    notes = tmp_path / "notes.txt"
    notes.write_text("not an image")
    with pytest.raises(ImageError, match="notes.txt: not a readable image"):
        ofa.caption(notes)
    with pytest.raises(ImageError, match="no such image file"):
        ofa.caption(tmp_path / "missing.jpg")
    with pytest.raises(ImageError, match="9000x9000 is larger than the 64 M pixel limit"):
        ofa.caption(huge_png(tmp_path / "huge.png", 9000, 9000))
    with pytest.raises(
        ImageError, match="input 1: .*bomb.png: image too large to decode safely"
    ):  # past PIL's own bomb limit
        ofa.caption([picture(), huge_png(tmp_path / "bomb.png", 40000, 40000)])
    with pytest.raises(TaskError, match="referring expression is empty"):
        ofa.ground(picture(), "   ")
    with pytest.raises(InputError, match="must be a string"):
        ofa.ground(picture(), 3)
    with pytest.raises(TaskError, match="input 1: .*instruction is empty"):
        ofa.run([" fine", ""])
    with pytest.raises(InputError, match="2 images and 3 texts"):
        ofa.ground([picture(), picture()], ["a", "b", "c"])
    with pytest.raises(TaskError, match="language 'fr'"):
        ofa.caption(picture(), lang="fr")
    with pytest.raises(InputError, match="unknown task 'vqa'"):
        ofa.batch([{"task": "vqa", "image": picture()}])
    with pytest.raises(InputError, match=r"unknown key\(s\) \['box'\]"):
        ofa.batch([{"task": "caption", "image": picture(), "box": [0, 0, 1, 1]}])
    with pytest.raises(InputError, match="caption needs an image"):
        ofa.batch([{"task": "caption"}])
    with pytest.raises(InputError, match="batch_size"):
        ofa.caption(picture(), batch_size=0)
    with pytest.raises(CheckpointNotFoundError, match="does not exist") as info:
        OFA.from_pretrained(tmp_path / "no-such-checkpoint")
    assert isinstance(info.value, FileNotFoundError)


def test_model_and_tokenizer_from_separate_places(checkpoint, tmp_path):
    """Official checkpoints carry no tokenizer of ours: the model folder plus `tokenizer=`."""
    model_only = tmp_path / "model-only"
    OFAModel.from_pretrained(checkpoint).save_pretrained(model_only)
    with pytest.raises(ValueError, match="no usable tokenizer files"):
        OFA.from_pretrained(model_only)
    m = OFA.from_pretrained(model_only, tokenizer=TOKENIZER, dtype="float32")
    reference = OFA.from_pretrained(checkpoint, search={"caption": {"max_len_b": 16}})
    assert m.caption(picture()) == reference.caption(picture())  # same weights, same single-image batch
    wrong = tmp_path / "wrong-tokenizer"
    OFATokenizer.from_pretrained(TOKENIZER).save_pretrained(wrong)
    config = (wrong / "ofa_tokenizer.json").read_text().replace('"num_bins": 256', '"num_bins": 128')
    (wrong / "ofa_tokenizer.json").write_text(config)
    with pytest.raises(InputError, match="does not match the model"):
        OFA.from_pretrained(model_only, tokenizer=wrong)
