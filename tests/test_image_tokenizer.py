"""The image VQ tokenizer: shapes and code ranges, the official taming loader against taming itself,
code extraction round trips, save/load, clear errors, and a short training smoke test."""

from __future__ import annotations

import json
import sys
import types

import numpy as np
import pytest
import torch
import torch.nn.functional as F
import yaml
from PIL import Image

from ofa.data.world import World
from ofa.tokenization.image import (
    ImageTokenizer,
    ImageTokenizerConfig,
    ImageTokenizerError,
    VQLossConfig,
    codebook_usage,
    extract_codes,
    image_to_unit_tensor,
    psnr,
    read_codes,
    train_step,
)
from tests.conftest import REPO


def tiny_config(**overrides) -> ImageTokenizerConfig:
    """32 px -> 4x4 codes: the world architecture at a quarter of the pixels, fast enough for tests."""
    values = dict(resolution=32, attn_resolutions=(4,), codebook_size=64)
    values.update(overrides)
    return ImageTokenizerConfig(**values)


def world_batch(n: int, size: int, split: str = "train") -> torch.Tensor:
    world = World(image_size=size)
    return torch.stack([image_to_unit_tensor(world.scene(split, i).image, size) for i in range(n)])


# ------------------------------------------------------------------------------------ shapes and ranges
def test_world_tokenizer_matches_the_world_vocabulary_and_size_budget():
    config = ImageTokenizerConfig.world()
    recipe = yaml.safe_load((REPO / "tasks/world/vq.yaml").read_text())["model"]
    assert ImageTokenizerConfig.from_dict(recipe) == config  # the recipe trains this architecture
    world_vocab = json.loads((REPO / "tokenizers/world/ofa_tokenizer.json").read_text())
    assert config.codebook_size == world_vocab["num_codes"] == 512
    model = ImageTokenizer(config)
    assert (model.factor, model.grid(), model.grid(96)) == (8, 8, 12)
    assert 300_000 <= sum(p.numel() for p in model.parameters()) <= 2_000_000


def test_encode_decode_shapes_and_code_ranges():
    model = ImageTokenizer(tiny_config())
    model.train()
    images = world_batch(8, 32)
    model(images)  # the first training pass initialises the codebook by k-means on these latents
    model.eval()
    codes = model.encode(images)
    assert codes.shape == (8, 4, 4) and codes.dtype == torch.int64
    assert 0 <= codes.min() and codes.max() < 64 and codes.unique().numel() > 8
    # Inference is the nearest codebook entry, checked by brute force.
    latents = model.encode_latents(images).permute(0, 2, 3, 1).reshape(-1, model.config.embed_dim)
    nearest = torch.cdist(latents, model.quantize.codebook).argmin(dim=1)
    assert torch.equal(codes.flatten(), nearest)
    decoded = model.decode(codes)
    assert decoded.shape == (8, 3, 32, 32) and decoded.min() >= 0 and decoded.max() <= 1
    assert torch.equal(model.decode(codes.flatten(1)), decoded)  # (B, h*w) row-major works too
    wide = model.encode(torch.rand(2, 3, 32, 48))
    assert wide.shape == (2, 4, 6) and model.decode(wide).shape == (2, 3, 32, 48)


def test_gumbel_quantizer_takes_the_argmax_and_looks_up_its_row():
    model = ImageTokenizer(tiny_config(quantizer="gumbel", embed_dim=2, codebook_size=3)).eval()
    with torch.no_grad():
        # logits = latents projected on three directions: code 0 <-> +x, code 1 <-> +y, code 2 <-> -x
        model.quantize.proj.weight.copy_(torch.tensor([[1.0, 0.0], [0.0, 1.0], [-1.0, 0.0]])[..., None, None])
        model.quantize.proj.bias.zero_()
        model.quantize.embed.weight.copy_(torch.tensor([[10.0, 0.0], [0.0, 10.0], [-10.0, 0.0]]))
    latents = torch.tensor([[2.0, 1.0], [0.5, 3.0], [-4.0, 1.0], [0.1, -0.2]]).t().reshape(1, 2, 2, 2)
    out = model.quantize(latents)
    assert out.codes.tolist() == [[[0, 1], [2, 0]]]
    assert torch.equal(out.quantized, model.quantize.lookup(out.codes))
    assert out.quantized[0, :, 0, 1].tolist() == [0.0, 10.0]


def test_fsq_codes_are_mixed_radix_digits_of_the_rounded_latents():
    # levels (3, 5): channel 0 rounds to 3 values, channel 1 to 5; code = digit0 + 3 * digit1.
    model = ImageTokenizer(
        tiny_config(quantizer="fsq", fsq_levels=(3, 5), embed_dim=2, codebook_size=15)
    ).eval()
    big = 50.0  # saturates the tanh bound: the digit is the lowest or the highest level
    latents = torch.tensor([[-big, -big], [big, -big], [-big, big], [big, big], [0.0, 0.0]]).t()
    out = model.quantize(latents.reshape(1, 2, 1, 5))
    # digits: (0,0)=0, (2,0)=2, (0,4)=12, (2,4)=14, middle (1,2) = 1 + 3*2 = 7
    assert out.codes.tolist() == [[[0, 2, 12, 14, 7]]]
    assert torch.equal(out.quantized, model.quantize.lookup(out.codes))
    assert out.quantized[0, :, 0, 3].tolist() == [1.0, 1.0] and out.quantized[0, :, 0, 4].tolist() == [
        0.0,
        0.0,
    ]
    # Every code is one point of the grid and maps back to itself.
    every = torch.arange(15).view(1, 3, 5)
    assert torch.equal(model.quantize.codes(model.quantize.lookup(every)), every)


def test_fsq_config_is_checked():
    with pytest.raises(ImageTokenizerError, match="embed_dim must be len"):
        tiny_config(quantizer="fsq", fsq_levels=(8, 8, 8), embed_dim=4, codebook_size=512)
    with pytest.raises(ImageTokenizerError, match="codebook_size their product 512"):
        tiny_config(quantizer="fsq", fsq_levels=(8, 8, 8), embed_dim=3, codebook_size=64)
    with pytest.raises(ImageTokenizerError, match="fsq_levels must be integers >= 2"):
        tiny_config(quantizer="fsq", fsq_levels=(1, 8), embed_dim=2, codebook_size=8)


@pytest.mark.parametrize("quantizer", ["ema", "fsq"])
def test_save_and_load_round_trip(tmp_path, quantizer):
    fsq = {"embed_dim": 3, "codebook_size": 64, "fsq_levels": (4, 4, 4)} if quantizer == "fsq" else {}
    model = ImageTokenizer(tiny_config(quantizer=quantizer, **fsq))
    model.train()
    model(world_batch(8, 32))
    model.eval()
    model.save_pretrained(tmp_path / "vq")
    assert sorted(p.name for p in (tmp_path / "vq").iterdir()) == ["config.json", "model.safetensors"]
    loaded = ImageTokenizer.from_pretrained(tmp_path / "vq")
    assert loaded.config == model.config
    for key, value in model.state_dict().items():
        assert torch.equal(loaded.state_dict()[key], value), key
    images = world_batch(4, 32, "val")
    assert torch.equal(loaded.encode(images), model.encode(images))


# ----------------------------------------------------------------------------------------- bad input
def test_bad_inputs_raise_one_clear_error(tmp_path):
    model = ImageTokenizer(tiny_config()).eval()
    with pytest.raises(ImageTokenizerError, match=r"in \[0, 1\]"):
        model.encode(torch.rand(1, 3, 32, 32) * 2 - 1)
    with pytest.raises(ImageTokenizerError, match="channels"):
        model.encode(torch.rand(1, 1, 32, 32))
    with pytest.raises(ImageTokenizerError, match="multiple of the factor 8"):
        model.encode(torch.rand(1, 3, 30, 32))
    with pytest.raises(ImageTokenizerError, match=r"codes must be in \[0, 64\)"):
        model.decode(torch.full((1, 4, 4), 64))
    with pytest.raises(ImageTokenizerError, match="square grid"):
        model.decode(torch.zeros(1, 15, dtype=torch.long))
    with pytest.raises(ImageTokenizerError, match="multiple of 32"):
        ImageTokenizerConfig(channels=48)
    with pytest.raises(ImageTokenizerError, match="expected config.json"):
        ImageTokenizer.from_pretrained(tmp_path)
    (tmp_path / "config.json").write_text('{"model_format": "ofa-image-tokenizer", "format_version": 1}')
    with pytest.raises(ImageTokenizerError, match="model.safetensors: missing"):
        ImageTokenizer.from_pretrained(tmp_path)


# ----------------------------------------------------------------------------- official taming layout
TAMING_YAML = """\
model:
  base_learning_rate: 4.5e-06
  target: taming.models.vqgan.GumbelVQ
  params:
    kl_weight: 1.0e-08
    embed_dim: 32
    n_embed: 64
    monitor: val/rec_loss
    temperature_scheduler_config:
      target: taming.lr_scheduler.LambdaWarmUpCosineScheduler
      params: {warm_up_steps: 0, max_decay_steps: 1000001, lr_start: 0.9, lr_max: 0.9, lr_min: 1.0e-06}
    ddconfig:
      double_z: false
      z_channels: 32
      resolution: 32
      in_channels: 3
      out_ch: 3
      ch: 32
      ch_mult: [1, 1, 2, 2]
      num_res_blocks: 2
      attn_resolutions: [8, 4]
      dropout: 0.0
    lossconfig:
      target: taming.modules.losses.vqperceptual.DummyLoss
"""


def _taming_gumbel_vq(monkeypatch):
    """taming's real `GumbelVQ`, importable without its training script.

    `taming.models.vqgan` imports `instantiate_from_config` from `taming.main`, which needs Lightning 1.x;
    a stand-in `taming.main` builds the loss as a small module (so the checkpoint has `loss.*` weights to
    ignore) and the temperature schedule as a constant.
    """
    pytest.importorskip(
        "taming.modules.vqvae.quantize", reason="taming-transformers-rom1504 (dev extra) is needed"
    )
    pytest.importorskip("pytorch_lightning", reason="taming's GumbelVQ is a pytorch_lightning module")

    def instantiate_from_config(config):
        if config["target"].endswith("Loss"):
            return torch.nn.Conv2d(3, 4, 3)  # stands in for the discriminator
        return lambda step: 1.0

    stub = types.ModuleType("taming.main")
    stub.instantiate_from_config = instantiate_from_config
    monkeypatch.setitem(sys.modules, "taming.main", stub)
    monkeypatch.delitem(sys.modules, "taming.models.vqgan", raising=False)
    from taming.models.vqgan import GumbelVQ

    return GumbelVQ


def _noise_free_gumbel(logits, tau=1.0, hard=False, eps=1e-10, dim=-1):
    # taming samples Gumbel noise even in eval mode; without noise its code is the logits' argmax.
    return F.one_hot(logits.argmax(dim), logits.shape[dim]).movedim(-1, dim).to(logits.dtype)


def test_official_layout_loads_and_matches_taming(tmp_path, monkeypatch):
    import yaml
    from pytorch_lightning.callbacks.model_checkpoint import ModelCheckpoint

    GumbelVQ = _taming_gumbel_vq(monkeypatch)
    params = yaml.safe_load(TAMING_YAML)["model"]["params"]
    reference = GumbelVQ(**params).eval()
    torch.manual_seed(1)
    with torch.no_grad():  # move norms and biases off their defaults so a mis-mapped weight shows
        for p in reference.parameters():
            p.add_(0.1 * torch.randn_like(p))
    state = reference.state_dict()
    assert any(k.startswith("loss.") for k in state)
    # Lightning 1.0 (taming's version) layout; callback states are keyed by the callback class.
    checkpoint = {
        "epoch": 3,
        "global_step": 1234,
        "pytorch-lightning_version": "1.0.8",
        "callbacks": {ModelCheckpoint: {"monitor": "val/rec_loss", "best_model_score": torch.tensor(0.5)}},
        "optimizer_states": [{"state": {}, "param_groups": [{"lr": 4.5e-6, "params": [0, 1]}]}],
        "lr_schedulers": [],
        "state_dict": state,
    }
    folder = tmp_path / "vqgan"
    folder.mkdir()
    (folder / "model.yaml").write_text(TAMING_YAML)
    torch.save(checkpoint, folder / "last.ckpt")

    ours = ImageTokenizer.from_pretrained(folder)
    assert (ours.codebook_size, ours.grid(), ours.config.quantizer) == (64, 4, "gumbel")
    assert ours.config.kl_weight == 1e-8
    images = torch.rand(3, 3, 32, 32)
    with torch.no_grad():
        logits = reference.quantize.proj(reference.encode_to_prequant(images * 2 - 1))
        top2 = logits.topk(2, dim=1).values
        assert (top2[:, 0] - top2[:, 1]).min() > 1e-3  # no near-ties: the argmax is well defined
        monkeypatch.setattr(F, "gumbel_softmax", _noise_free_gumbel)
        quantized, _, (_, _, taming_codes) = reference.encode(images * 2 - 1)
        monkeypatch.undo()
        codes = ours.encode(images)
        assert torch.equal(codes, taming_codes)
        # OFA's decode_code: get_codebook_entry, post_quant_conv, decoder, then clamp and map to [0, 1].
        entry = reference.quantize.get_codebook_entry(taming_codes.reshape(-1), (3, 4, 4, 32))
        assert torch.allclose(ours.embed_codes(codes), quantized, atol=1e-6)
        taming_raw = reference.decode(entry)
        ours_raw = ours.decode_latents(ours.embed_codes(codes))
        # float32 rounding of outputs up to ~7 in magnitude: 1e-5 relative to the largest value
        assert (ours_raw - taming_raw).abs().max() < 1e-5 * max(1.0, taming_raw.abs().max().item())
        taming_images = (taming_raw.clamp(-1, 1) + 1) / 2
        assert (ours.decode(codes) - taming_images).abs().max() < 1e-5
        # A non-square image goes through the same path.
        wide = torch.rand(1, 3, 32, 48)
        wide_logits = reference.quantize.proj(reference.encode_to_prequant(wide * 2 - 1))
        assert torch.equal(ours.encode(wide), wide_logits.argmax(1))
    # The checkpoint file alone finds model.yaml beside it; our own format round-trips the official weights.
    assert torch.equal(ImageTokenizer.from_pretrained(folder / "last.ckpt").encode(images), codes)
    ours.save_pretrained(tmp_path / "ours")
    assert torch.equal(ImageTokenizer.from_pretrained(tmp_path / "ours").encode(images), codes)


class _Arbitrary:
    """A class a checkpoint must never instantiate."""


def test_official_loader_refuses_arbitrary_objects_and_wrong_layouts(tmp_path):
    folder = tmp_path / "vqgan"
    folder.mkdir()
    (folder / "model.yaml").write_text(TAMING_YAML)
    torch.save({"state_dict": {}, "trainer": _Arbitrary()}, folder / "last.ckpt")
    with pytest.raises(ImageTokenizerError, match="refuses to unpickle .*_Arbitrary"):
        ImageTokenizer.from_pretrained(folder)
    torch.save({"state_dict": {"encoder.conv_in.weight": torch.zeros(32, 3, 3, 3)}}, folder / "last.ckpt")
    with pytest.raises(ImageTokenizerError, match="weights do not fit the config: missing"):
        ImageTokenizer.from_pretrained(folder)
    torch.save({"state_dict": {"encoder.conv_in.weight": torch.zeros(16, 3, 3, 3)}}, folder / "last.ckpt")
    with pytest.raises(
        ImageTokenizerError, match=r"encoder.conv_in.weight \(16, 3, 3, 3\) vs \(32, 3, 3, 3\)"
    ):
        ImageTokenizer.from_pretrained(folder)
    (folder / "model.yaml").write_text(TAMING_YAML.replace("GumbelVQ", "VQModel"))
    with pytest.raises(ImageTokenizerError, match="only taming's GumbelVQ"):
        ImageTokenizer.from_pretrained(folder)
    (folder / "model.yaml").write_text("model: {params: {}}\n")
    with pytest.raises(ImageTokenizerError, match="model.params.ddconfig"):
        ImageTokenizer.from_pretrained(folder)
    (folder / "model.yaml").unlink()
    with pytest.raises(ImageTokenizerError, match="model.yaml is missing"):
        ImageTokenizer.from_pretrained(folder)


# ---------------------------------------------------------------------------------- code extraction
def test_image_preprocessing_resizes_the_shorter_side_and_centre_crops():
    strip = np.zeros((10, 30, 3), dtype=np.uint8)
    strip[:, :10] = (255, 0, 0)
    strip[:, 10:20] = (0, 255, 0)
    strip[:, 20:] = (0, 0, 255)
    tensor = image_to_unit_tensor(Image.fromarray(strip), 10)  # already 10 high: only the crop acts
    assert tensor.shape == (3, 10, 10)
    assert torch.equal(tensor, torch.tensor([0.0, 1.0, 0.0])[:, None, None].expand(3, 10, 10))
    halved = image_to_unit_tensor(np.full((20, 20, 3), 128, dtype=np.uint8), 10)
    assert halved.shape == (3, 10, 10) and torch.allclose(halved, torch.full_like(halved, 128 / 255))


@pytest.mark.parametrize("ids", [[7, 3, 11, 0, 5], ["coco_7", "图片3", "a", "b", "c"]])
def test_extract_codes_round_trip(tmp_path, ids):
    model = ImageTokenizer(tiny_config(quantizer="gumbel")).eval()
    world = World(image_size=48)  # resized to the tokenizer's 32 px on the way
    scenes = [world.scene("train", i).image for i in range(len(ids))]
    count = extract_codes(model, zip(ids, scenes), tmp_path / "codes.safetensors", batch_size=2)
    assert count == len(ids)
    stored = read_codes(tmp_path / "codes.safetensors")
    assert stored.ids == ids and stored.codes.dtype == np.uint16 and stored.codes.shape == (5, 4, 4)
    assert (stored.codebook_size, stored.image_size) == (64, 32)
    expected = model.encode(torch.stack([image_to_unit_tensor(s, 32) for s in scenes]))
    assert torch.equal(stored.as_tensor(), expected)
    assert (tmp_path / "codes.safetensors").stat().st_size < 2 * 5 * 16 + 1000 + 40 * len(ids)


def test_extract_codes_rejects_bad_collections(tmp_path):
    model = ImageTokenizer(tiny_config()).eval()
    image = np.zeros((32, 32, 3), dtype=np.uint8)
    with pytest.raises(ImageTokenizerError, match="not unique"):
        extract_codes(model, [(1, image), (1, image)], tmp_path / "c.safetensors")
    with pytest.raises(ImageTokenizerError, match="all integers or all strings"):
        extract_codes(model, [(1, image), ("2", image)], tmp_path / "c.safetensors")
    with pytest.raises(ImageTokenizerError, match="image 'x'.*no such image file"):
        extract_codes(model, [("x", tmp_path / "missing.png")], tmp_path / "c.safetensors")
    with pytest.raises(ImageTokenizerError, match="no images"):
        extract_codes(model, [], tmp_path / "c.safetensors")
    assert not (tmp_path / "c.safetensors").exists()
    (tmp_path / "junk.safetensors").write_bytes(b"not safetensors")
    with pytest.raises(ImageTokenizerError, match="not a readable image-codes file"):
        read_codes(tmp_path / "junk.safetensors")


# ------------------------------------------------------------------------------------------- training
def test_metrics_on_hand_computed_cases():
    target = torch.zeros(2, 3, 4, 4)
    assert psnr(torch.full_like(target, 0.1), target).item() == pytest.approx(20.0, abs=1e-4)  # mse 0.01
    used, perplexity = codebook_usage(torch.tensor([0, 0, 1, 1]), 8)
    assert used == pytest.approx(2 / 8) and perplexity == pytest.approx(2.0)


@pytest.mark.parametrize("quantizer", ["ema", "gumbel", "fsq"])
def test_twenty_steps_on_world_images_lower_the_reconstruction_loss(quantizer):
    torch.manual_seed(0)
    fsq = {"embed_dim": 3, "codebook_size": 64, "fsq_levels": (4, 4, 4)} if quantizer == "fsq" else {}
    model = ImageTokenizer(tiny_config(quantizer=quantizer, **fsq))
    optimizer = torch.optim.Adam(model.parameters(), lr=2e-3)
    images = world_batch(8, 32)
    held_out = world_batch(8, 32, "val")

    def held_out_l1() -> float:
        model.eval()
        with torch.no_grad():
            return F.l1_loss(model.decode(model.encode(held_out)), held_out).item()

    before = held_out_l1()
    history = [train_step(model, optimizer, images, VQLossConfig(gradient_weight=0.1)) for _ in range(20)]
    assert np.mean([m["l1"] for m in history[-3:]]) < 0.6 * history[0]["l1"]
    assert history[-1]["psnr"] > history[0]["psnr"] + 3
    assert 0 < history[-1]["usage"] <= 1 and history[-1]["perplexity"] > 1
    assert held_out_l1() < before
