"""Text-to-image: the task's targets and dropout, code-only decoding, classifier-free guidance, reranking, API, CLI.

A random small OFA model (4x4 code grid) and a random small image tokenizer (32 px, 64 codes) stand in for
trained ones; the checks compare against hand-built id sequences, hand-written decoding loops and
hand-computed scores, not against earlier outputs of the same code.
"""

from __future__ import annotations

import json
import math
import random
import re
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from ofa import OFA
from ofa.api import CaptionLikelihoodScorer, ImageResult, InputError, OpenCLIPScorer, detect_language
from ofa.api.imagine import rank_best_first
from ofa.cli import main
from ofa.data.world import World
from ofa.generation import GenerationConfig, generate
from ofa.models import OFAConfig, OFAModel
from ofa.tasks import TaskError, collate, get_task
from ofa.tasks.text_to_image import TextToImageTask
from ofa.tokenization import OFATokenizer
from ofa.tokenization.image import ImageTokenizer, ImageTokenizerConfig
from ofa.training.recipe import model_config, recipe_from_dict
from tests.conftest import REPO

TOKENIZER = REPO / "tokenizers" / "world"
GRID, CODEBOOK = 4, 64  # 32 px images, factor 8; fewer codes than the text tokenizer's 512 <code_k> tokens
SMALL_MODEL = {
    "d_model": 32, "encoder_layers": 1, "decoder_layers": 1, "encoder_attention_heads": 2,
    "decoder_attention_heads": 2, "encoder_ffn_dim": 64, "decoder_ffn_dim": 64, "resnet_layers": [1, 1, 1],
    "resnet_width": 8, "image_size": 64, "code_image_size": 8 * GRID, "dropout": 0.0,
}  # fmt: skip
PROMPT = "a red circle left of a blue star"


def make_image_tokenizer() -> ImageTokenizer:
    # kmeans_init=False: a random codebook from the start (k-means would leave it all zeros until trained).
    torch.manual_seed(1)
    config = ImageTokenizerConfig(
        resolution=8 * GRID, attn_resolutions=(GRID,), codebook_size=CODEBOOK, kmeans_init=False
    )
    return ImageTokenizer(config).eval()


@pytest.fixture(scope="module")
def tok() -> OFATokenizer:
    return OFATokenizer.from_pretrained(TOKENIZER)


@pytest.fixture(scope="module")
def image_tokenizer() -> ImageTokenizer:
    return make_image_tokenizer()


@pytest.fixture(scope="module")
def model(tok) -> OFAModel:
    torch.manual_seed(0)
    config = OFAConfig(
        vocab_size=tok.vocab_size, num_codes=tok.num_codes, num_bins=tok.num_bins, **SMALL_MODEL
    )
    return OFAModel(config).eval()


@pytest.fixture(scope="module")
def task(tok, image_tokenizer) -> TextToImageTask:
    return get_task("text_to_image")(tok, image_tokenizer=image_tokenizer)


def make_checkpoint(folder: Path, with_image_tokenizer: bool = True) -> Path:
    recipe = recipe_from_dict(
        {
            "model": {"config": SMALL_MODEL},
            "tokenizer": {"path": str(TOKENIZER)},
            "data": {"mixture": [{"task": "caption"}], "max_source_length": 64},
        }
    )
    tokenizer = OFATokenizer.from_pretrained(TOKENIZER)
    torch.manual_seed(0)
    OFAModel(model_config(recipe, tokenizer)).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    (folder / "recipe.yaml").write_text(recipe.to_yaml(), encoding="utf-8")
    if with_image_tokenizer:
        make_image_tokenizer().save_pretrained(folder / "image_tokenizer")
    return folder


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> Path:
    return make_checkpoint(tmp_path_factory.mktemp("t2i"))


@pytest.fixture(scope="module")
def ofa(checkpoint) -> OFA:
    return OFA.from_pretrained(checkpoint)


def inputs(task: TextToImageTask, texts: list[str], lang: str = "en"):
    """(conditional input_ids, unconditional input_ids, constraints, code_masks) for a batch of captions."""
    tok = task.tokenizer
    examples = [task.build({"text": t, "lang": lang}) for t in texts]
    batch = collate(examples, tok.pad_id, tok.bos_id)
    uncond = torch.tensor([task.unconditional_source(lang)] * len(texts))
    return batch.input_ids, uncond, [task.constraint(e) for e in examples], batch.code_masks


# ------------------------------------------------------------------------------------------------ task
def test_target_is_the_code_grid_row_major_and_parses_back(task, tok):
    codes = torch.randint(0, CODEBOOK, (GRID, GRID), generator=torch.Generator().manual_seed(3))
    example = task.build({"text": "A red circle.", "codes": codes, "lang": "en"})
    code_start = tok.code_range[0]  # <code_k> = code_start + k (the world tokenizer: 554 text ids first)
    assert code_start == 554
    assert example.target == [554 + int(c) for c in codes.flatten()] + [tok.eos_id]
    assert example.code_mode and example.image is None
    assert example.source == tok.encode(" what is the complete image? caption: a red circle")
    assert torch.equal(task.parse_codes(example.target), codes)
    # The same grid as a flat list or as uint16 numpy codes from offline extraction gives the same target.
    flat = task.build({"text": "a red circle", "codes": codes.flatten().tolist()})
    stored = task.build({"text": "a red circle", "codes": codes.numpy().astype(np.uint16)})
    assert flat.target == stored.target == example.target
    zh = task.build({"text": "红色的圆形", "codes": codes, "lang": "zh"})
    assert zh.source == tok.encode("完整的图片是什么？描述：红色的圆形") and zh.target == example.target


def test_target_from_an_image_uses_the_image_tokenizer(task, tok, image_tokenizer):
    rng = np.random.default_rng(0)
    pixels = rng.integers(0, 256, size=(8 * GRID, 8 * GRID, 3), dtype=np.uint8)  # already 32 x 32: no resize
    expected = image_tokenizer.encode(torch.from_numpy(pixels / 255.0).float().permute(2, 0, 1)[None])[0]
    example = task.build({"text": "noise", "image": Image.fromarray(pixels)})
    assert example.target[:-1] == [tok.code_range[0] + int(c) for c in expected.flatten()]


def test_parse_rejects_anything_but_a_full_grid(task, tok):
    code = tok.code_range[0]
    assert task.parse_codes([code] * (GRID * GRID - 1) + [tok.eos_id]) is None  # one short
    assert task.parse_codes([code] * (GRID * GRID + 1)) is None  # one too many
    assert task.parse_codes([5] + [code] * (GRID * GRID - 1)) is None  # a text token
    assert task.parse_codes([code + CODEBOOK] * (GRID * GRID)) is None  # beyond the image codebook
    assert task.parse([code] * 3, None) is None


@pytest.mark.parametrize(
    ("sample", "train", "message"),
    [
        ({"text": "  "}, False, "empty caption"),
        ({"text": 3}, False, "empty caption"),
        ({"text": "x", "codes": torch.zeros(3, 3, dtype=torch.long)}, False, "not a 4x4 grid"),
        ({"text": "x", "codes": torch.full((GRID, GRID), CODEBOOK)}, False, "codes must be in [0, 64)"),
        ({"text": "x", "codes": torch.zeros(GRID, GRID)}, False, "must be integers"),
        ({"text": "x"}, True, "neither codes nor an image"),
        ({"text": "x", "lang": "fr"}, False, "language 'fr'"),
    ],
)
def test_bad_samples_get_one_clear_error(task, sample, train, message):
    with pytest.raises(TaskError, match=re.escape(message)):
        task.build(sample, train=train)


def test_task_needs_an_image_tokenizer_for_images_and_pictures(tok):
    bare = TextToImageTask(tok, code_grid=GRID)
    with pytest.raises(TaskError, match="needs an image_tokenizer"):
        bare.build({"text": "x", "image": Image.new("RGB", (32, 32))})
    with pytest.raises(TaskError, match="needs an image_tokenizer"):
        bare.codes_to_images(torch.zeros(1, GRID, GRID, dtype=torch.long))
    with pytest.raises(TaskError, match="no code_grid"):
        TextToImageTask(tok).constraint(None)
    with pytest.raises(TaskError, match="caption_dropout"):
        TextToImageTask(tok, code_grid=GRID, caption_dropout=1.5)


def test_caption_dropout_rate_and_prompt_frame(task, tok):
    codes = torch.zeros(GRID, GRID, dtype=torch.long)
    rng = random.Random(0)
    trials = 4000
    dropped = [
        task.build({"text": "a red circle", "codes": codes}, train=True, rng=rng) for _ in range(trials)
    ]
    empty = [e for e in dropped if e.meta["caption_dropped"]]
    # Binomial(4000, 0.1): standard deviation 0.0047, so +-0.02 is more than 4 sigma.
    assert abs(len(empty) / trials - 0.1) < 0.02
    # A dropped caption keeps the prompt frame: the unconditional source, which is the conditional one's prefix.
    frame = tok.encode(" what is the complete image? caption:")
    assert all(e.source == frame == task.unconditional_source("en") for e in empty)
    full = tok.encode(" what is the complete image? caption: a red circle")
    assert full[: len(frame) - 1] == frame[:-1]
    assert all(e.source == full for e in dropped if not e.meta["caption_dropped"])
    assert task.unconditional_source("zh") == tok.encode("完整的图片是什么？描述：")
    # Only while training, and p = 0 / 1 are exact.
    assert not any(
        task.build({"text": "a", "codes": codes}, rng=rng).meta["caption_dropped"] for _ in range(50)
    )
    never = TextToImageTask(tok, code_grid=GRID, caption_dropout=0.0)
    always = TextToImageTask(tok, code_grid=GRID, caption_dropout=1.0)
    assert not any(
        never.build({"text": "a", "codes": codes}, True, rng).meta["caption_dropped"] for _ in range(50)
    )
    assert all(
        always.build({"text": "a", "codes": codes}, True, rng).meta["caption_dropped"] for _ in range(50)
    )


def test_score_is_the_world_oracle_and_missing_pictures_count_as_wrong(task):
    world = World(image_size=64)
    scenes = [world.scene("train", i) for i in range(3)]
    examples = [task.build({"text": s.captions["en"][0], "lang": "en"}) for s in scenes]
    right = task.score([s.image for s in scenes], examples)
    assert right["compositional_accuracy"] == 1.0 and right["num_images"] == 3.0
    # Scene 1's picture under scene 0's caption is wrong; a missing picture is wrong too.
    mixed = task.score([scenes[1].image, None, scenes[2].image], examples)
    assert mixed["compositional_accuracy"] == pytest.approx(1 / 3)
    with pytest.raises(TaskError, match="no world caption"):
        task.score([scenes[0].image], [task.build({"text": "a photo of a dog"})])


# ------------------------------------------------------------------------------------------ generation
@pytest.mark.parametrize("strategy", ["sample", "greedy"])
def test_code_mode_generation_emits_exactly_a_grid_of_codes(task, model, tok, strategy):
    ids, _, constraints, code_masks = inputs(task, [PROMPT, "two green stars"])
    n = 3 if strategy == "sample" else 1
    config = task.generation_config(strategy=strategy, num_return_sequences=n, top_k=0, seed=0)
    hyps = generate(model, {"input_ids": ids}, config, constraints=constraints, code_masks=code_masks)
    lo = tok.code_range[0]
    assert [len(h) for h in hyps] == [n, n]
    for h in (h for per_input in hyps for h in per_input):
        tokens = h.tokens.tolist()
        assert len(tokens) == GRID * GRID + 1 and tokens[-1] == tok.eos_id
        assert all(lo <= t < lo + CODEBOOK for t in tokens[:-1])
    # A model that prefers a text token writes it when unconstrained, and still only codes under the constraint.
    text_id = tok.encode(" red")[1]

    def prefer_text(module, args, output):
        output.logits[..., text_id] += 100.0
        return output

    handle = model.decoder.register_forward_hook(prefer_text)
    try:
        free = generate(model, {"input_ids": ids}, config.replace(min_len=1), code_masks=code_masks)
        held = generate(model, {"input_ids": ids}, config, constraints=constraints, code_masks=code_masks)
    finally:
        handle.remove()
    assert all(text_id in h[0].tokens.tolist() for h in free)
    assert all(
        lo <= t < lo + CODEBOOK for per_input in held for h in per_input for t in h.tokens.tolist()[:-1]
    )


def reference_guided(model, cond_ids, uncond_ids, scale, steps, lo, hi, eos, draw):
    """Each step: full decoder recompute (no cache) for the conditional and the unconditional input
    separately, logits cond + scale * (cond - uncond), softmax over the allowed codes, then `draw`."""
    enc_c, enc_u = model.encode(cond_ids), model.encode(uncond_ids)
    prefix = torch.zeros(cond_ids.size(0), 1, dtype=torch.long)
    masks = torch.ones(cond_ids.size(0), dtype=torch.bool)
    for _ in range(steps):
        cond = model.decode(prefix, enc_c, code_masks=masks).logits[:, -1].float()
        uncond = model.decode(prefix, enc_u, code_masks=masks).logits[:, -1].float()
        logits = cond + scale * (cond - uncond)
        allowed = torch.full_like(logits, float("-inf"))
        allowed[:, lo:hi] = 0.0
        prefix = torch.cat([prefix, draw(torch.softmax(logits + allowed, dim=-1))], dim=1)
    return torch.cat([prefix[:, 1:], torch.full((prefix.size(0), 1), eos)], dim=1)


@torch.no_grad()
@pytest.mark.parametrize("use_cache", [True, False])
def test_guided_decoding_equals_a_hand_written_loop(task, model, tok, use_cache):
    texts = [PROMPT, "a small black circle"]
    ids, uncond, constraints, code_masks = inputs(task, texts)
    lo, hi = tok.code_range[0], tok.code_range[0] + CODEBOOK
    steps = GRID * GRID
    greedy = task.generation_config(strategy="greedy", guidance_scale=2.5, use_cache=use_cache)
    got = generate(model, {"input_ids": ids}, greedy, constraints, code_masks, unconditional_inputs=uncond)
    want = reference_guided(model, ids, uncond, 2.5, steps, lo, hi, tok.eos_id, lambda p: p.argmax(-1, True))
    assert [h[0].tokens.tolist() for h in got] == want.tolist()
    # Sampling: the same draws from the same generator, two samples per prompt (rows prompt-major).
    sampled = task.generation_config(guidance_scale=2.5, top_k=0, num_return_sequences=2, use_cache=use_cache)
    gen = torch.Generator().manual_seed(7)
    got = generate(
        model,
        {"input_ids": ids},
        sampled.replace(generator=gen),
        constraints,
        code_masks,
        unconditional_inputs=uncond,
    )
    gen = torch.Generator().manual_seed(7)
    want = reference_guided(
        model, ids.repeat_interleave(2, 0), uncond.repeat_interleave(2, 0), 2.5, steps, lo, hi, tok.eos_id,
        lambda p: torch.multinomial(p, 1, generator=gen),
    )  # fmt: skip
    assert sorted(map(tuple, (h.tokens.tolist() for per in got for h in per))) == sorted(
        map(tuple, want.tolist())
    )


@torch.no_grad()
def test_guidance_scale_zero_is_unguided_sampling_under_the_same_seed(task, model):
    ids, uncond, constraints, code_masks = inputs(task, [PROMPT, "two green stars"])
    config = task.generation_config(num_return_sequences=3, seed=11)
    plain = generate(model, {"input_ids": ids}, config, constraints, code_masks)
    zero = generate(
        model, {"input_ids": ids}, config.replace(guidance_scale=0.0), constraints, code_masks,
        unconditional_inputs=uncond,
    )  # fmt: skip
    strong = generate(
        model, {"input_ids": ids}, config.replace(guidance_scale=8.0), constraints, code_masks,
        unconditional_inputs=uncond,
    )  # fmt: skip
    tokens = lambda results: [[h.tokens.tolist() for h in per] for per in results]  # noqa: E731
    assert tokens(zero) == tokens(plain)
    assert [[h.score for h in per] for per in zero] == [[h.score for h in per] for per in plain]
    assert tokens(strong) != tokens(plain)  # the guidance term does change the draws


def test_guidance_settings_are_checked():
    with pytest.raises(ValueError, match="guidance_scale must be a finite number >= 0"):
        GenerationConfig(strategy="sample", guidance_scale=-1.0)
    with pytest.raises(ValueError, match="guidance_scale must be a finite number >= 0"):
        GenerationConfig(strategy="sample", guidance_scale=math.nan)
    with pytest.raises(ValueError, match="needs strategy 'sample' or 'greedy'"):
        GenerationConfig(strategy="beam", guidance_scale=2.0)


def test_guided_generate_input_errors(task, model):
    ids, uncond, constraints, code_masks = inputs(task, [PROMPT, "two green stars"])
    config = task.generation_config(guidance_scale=2.0)
    with pytest.raises(ValueError, match="needs unconditional_inputs"):
        generate(model, ids, config, constraints, code_masks)
    with pytest.raises(ValueError, match="2 inputs but 1 unconditional twins"):
        generate(model, ids, config, constraints, code_masks, unconditional_inputs=uncond[:1])
    with pytest.raises(ValueError, match="same keys"):
        generate(model, ids, config, constraints, code_masks, unconditional_inputs={"patch_images": None})
    with pytest.raises(TypeError, match="not an EncoderOutput"):
        generate(model, model.encode(ids), config, constraints, code_masks, unconditional_inputs=uncond)


# -------------------------------------------------------------------------------------------- ranking
def test_rank_best_first_by_hand():
    results = [ImageResult(Image.new("RGB", (2, 2)), 0.0, torch.zeros(1), str(i)) for i in range(4)]
    ranked = rank_best_first(results, [0.1, 0.9, 0.5, 0.9])
    assert [r.text for r in ranked] == ["1", "3", "2", "0"]  # ties keep sampling order
    assert [r.score for r in ranked] == [0.9, 0.9, 0.5, 0.1]
    with pytest.raises(ValueError, match="2 scores for 4 images"):
        rank_best_first(results, [0.1, 0.2])


def brightness(images, texts):
    return [float(np.asarray(image, dtype=np.float64).mean()) for image in images]


def test_generate_image_reranks_by_the_scorer_best_first(ofa):
    results = ofa.generate_image(PROMPT, n=6, seed=3, scorer=brightness)
    assert len(results) == 6
    scores = [r.score for r in results]
    assert scores == sorted(scores, reverse=True) and scores[0] == max(scores)
    # Every score is the scorer's value of the picture it comes with.
    assert scores == pytest.approx(brightness([r.image for r in results], None))
    unranked = ofa.generate_image(PROMPT, n=6, seed=3, rerank=False)
    assert sorted(np.asarray(r.image).tobytes() for r in unranked) == sorted(
        np.asarray(r.image).tobytes() for r in results
    )  # the same six pictures, only reordered
    assert all(r.score == r.code_score for r in unranked)
    assert [r.score for r in unranked] == sorted((r.score for r in unranked), reverse=True)


@torch.no_grad()
def test_caption_scorer_equals_a_token_by_token_loop(ofa, tok):
    images = [Image.fromarray(np.full((32, 32, 3), v, dtype=np.uint8)) for v in (30, 220)]
    texts = ["a red circle", "一个小的黑色星形和一个大的红色圆形"]  # different target lengths in one batch
    scorer = CaptionLikelihoodScorer(ofa.model, ofa.tasks["caption"], detect_language)
    got = scorer(images, texts)
    caption = ofa.tasks["caption"]
    text_end = tok.mask_id  # caption constraint: text ids 4 .. <mask> (exclusive) and eos
    for image, text, score in zip(images, texts, got):
        lang = detect_language(text)
        target = tok.encode(" " + text if lang == "en" else text)[1:]
        source = torch.tensor([tok.encode(caption.prompts[lang])])
        pixels = caption.load_image({"image": image})[0][None]
        encoder_out = ofa.model.encode(source, pixels)
        prefix, total = [tok.bos_id], 0.0
        for t in target:
            logits = ofa.model.decode(torch.tensor([prefix]), encoder_out).logits[0, -1].double()
            allowed = torch.zeros_like(logits, dtype=torch.bool)
            allowed[4:text_end] = True
            allowed[tok.eos_id] = True
            total += torch.log_softmax(logits.masked_fill(~allowed, -math.inf), -1)[t].item()
            prefix.append(t)
        assert score == pytest.approx(math.exp(total / len(target)), rel=1e-4)


def test_open_clip_scorer_is_the_cosine_of_the_embeddings():
    open_clip = pytest.importorskip("open_clip")
    torch.manual_seed(0)
    clip = open_clip.CLIP(
        embed_dim=16,
        vision_cfg={"image_size": 32, "layers": 1, "width": 32, "patch_size": 16, "head_width": 16},
        text_cfg={"context_length": 8, "vocab_size": 50, "width": 32, "heads": 2, "layers": 1},
    )
    preprocess = lambda im: torch.from_numpy(np.asarray(im, dtype=np.float32) / 255).permute(2, 0, 1)  # noqa: E731
    tokenize = lambda texts: torch.tensor([[len(t) % 50, 1, 2, 3, 0, 0, 0, 0] for t in texts])  # noqa: E731
    images = [Image.fromarray(np.full((32, 32, 3), v, dtype=np.uint8)) for v in (10, 200, 90)]
    texts = ["a", "bb", "ccc"]
    got = OpenCLIPScorer(clip, preprocess, tokenize, batch_size=2)(images, texts)
    with torch.no_grad():
        for image, text, score in zip(images, texts, got):
            u = clip.encode_image(preprocess(image)[None])[0].double()
            v = clip.encode_text(tokenize([text]))[0].double()
            assert score == pytest.approx((u @ v / (u.norm() * v.norm())).item(), abs=1e-5)


# ------------------------------------------------------------------------------------------------ API
def test_generate_image_shapes_and_seed(ofa):
    many = ofa.generate_image(
        [PROMPT, "两个绿色的星形", "a blue star"], n=5, seed=0, rerank=False, batch_size=2
    )
    assert [len(per) for per in many] == [5, 5, 5]
    for per, text in zip(many, [PROMPT, "两个绿色的星形", "a blue star"]):
        for r in per:
            assert r.text == text and r.codes.shape == (GRID, GRID) and 0 <= int(r.codes.min())
            assert int(r.codes.max()) < CODEBOOK and r.image.size == (32, 32) and r.image.mode == "RGB"
            assert 0.0 <= r.code_score <= 1.0
            # The picture is the image tokenizer's decoding of the codes (decoded alone here, in a batch there:
            # float rounding may move a pixel by one level).
            decoded = ofa.image_tokenizer.decode(r.codes[None])[0]
            expected = (decoded * 255).round().permute(1, 2, 0).numpy()
            assert np.abs(np.asarray(r.image, dtype=np.float64) - expected).max() <= 1
    one = ofa.generate_image(PROMPT, n=2, seed=0)
    again = ofa.generate_image(PROMPT, n=2, seed=0)
    assert isinstance(one, list) and all(isinstance(r, ImageResult) for r in one)
    assert [r.codes.tolist() for r in one] == [r.codes.tolist() for r in again]
    assert all(0.0 <= r.score <= 1.0 for r in one)  # caption-likelihood self-reranking


def test_generate_image_errors(ofa, tmp_path, checkpoint):
    with pytest.raises(TaskError, match="the text is empty"):
        ofa.generate_image("   ")
    with pytest.raises(InputError, match="must be a string"):
        ofa.generate_image([PROMPT, None])
    with pytest.raises(InputError, match="n must be a positive integer"):
        ofa.generate_image(PROMPT, n=0)
    with pytest.raises(InputError, match="guidance_scale must be a finite number >= 0"):
        ofa.generate_image(PROMPT, guidance=-2)
    with pytest.raises(InputError, match="top_p must be in"):
        ofa.generate_image(PROMPT, top_p=0.0)
    bare = OFA.from_pretrained(make_checkpoint(tmp_path / "bare", with_image_tokenizer=False))
    with pytest.raises(InputError, match="no image tokenizer.*image_tokenizer/ sub-folder"):
        bare.generate_image(PROMPT)
    bigger = ImageTokenizer(ImageTokenizerConfig(resolution=64, codebook_size=CODEBOOK, kmeans_init=False))
    mismatched = OFA.from_pretrained(checkpoint, image_tokenizer=bigger)
    with pytest.raises(InputError, match="8x8 code grids but the model decodes 4x4"):
        mismatched.generate_image(PROMPT)
    from ofa.api import CheckpointNotFoundError

    with pytest.raises(CheckpointNotFoundError, match="image tokenizer"):
        OFA.from_pretrained(checkpoint, image_tokenizer=tmp_path / "nowhere")


# ------------------------------------------------------------------------------------------------ CLI
def test_cli_imagine_writes_the_best_picture(checkpoint, ofa, tmp_path, capsys):
    out = tmp_path / "pictures" / "out.png"
    args = ["imagine", PROMPT, "-o", str(out), "--n", "3", "--seed", "0", "--checkpoint", str(checkpoint)]
    assert main([*args, "--json", "--save-all"]) == 0
    report = json.loads(capsys.readouterr().out)
    expected = ofa.generate_image(PROMPT, n=3, seed=0)
    assert report["output"] == str(out) and len(report["results"]) == 3
    assert [r["codes"] for r in report["results"]] == [r.codes.tolist() for r in expected]
    with Image.open(out) as written:
        assert written.format == "PNG" and np.array_equal(np.asarray(written), np.asarray(expected[0].image))
    assert (tmp_path / "pictures" / "out-1.png").is_file() and (tmp_path / "pictures" / "out-2.png").is_file()
    assert main(args[:4] + ["--checkpoint", str(checkpoint), "--guidance", "0"]) == 0
    assert capsys.readouterr().out.startswith(f"wrote {out} (score 0.")


def test_cli_imagine_errors_are_one_line(checkpoint, tmp_path, capsys):
    bare = make_checkpoint(tmp_path / "bare", with_image_tokenizer=False)
    assert main(["imagine", PROMPT, "-o", str(tmp_path / "a.png"), "--checkpoint", str(bare)]) == 1
    err = capsys.readouterr().err
    assert err.startswith("ofa imagine: error: this model has no image tokenizer") and err.count("\n") == 1
    assert main(["imagine", " ", "-o", str(tmp_path / "a.png"), "--checkpoint", str(checkpoint)]) == 1
    assert "the text is empty" in capsys.readouterr().err
    assert main(["imagine", PROMPT, "-o", str(tmp_path / "a.unknown"), "--checkpoint", str(checkpoint)]) == 1
    assert "error: unknown file extension" in capsys.readouterr().err


def test_the_public_text_to_image_task_is_bound_to_the_models_tokenizers(ofa, tok, tmp_path):
    task = ofa.text_to_image_task()
    assert task is ofa.text_to_image_task()  # made once
    codes = torch.arange(GRID * GRID) % CODEBOOK
    example = task.build({"text": "A red circle.", "codes": codes, "lang": "en"})
    assert example.source == tok.encode(" what is the complete image? caption: a red circle")
    assert example.target == [tok.code_range[0] + int(c) for c in codes] + [tok.eos_id]
    bare = OFA.from_pretrained(make_checkpoint(tmp_path / "bare", with_image_tokenizer=False))
    with pytest.raises(InputError, match="no image tokenizer"):
        bare.text_to_image_task()
