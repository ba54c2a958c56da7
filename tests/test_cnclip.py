"""Chinese-CLIP checkpoints in open_clip (`ofa.retrieval`) against the cn_clip reference fixtures.

The model folder is `CNCLIP_PARITY_FIXTURE` (default: `<shared>/fixtures/chinese_clip_reference/tiny_vit`;
`tiny_rn`, with a ModifiedResNet image tower, has the same layout); images, tokens and pixel values come
from its parent folder. `cn_clip` is used only here, as a reference, and only where installed.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from ofa.retrieval import CNCLIPLoadError, CNCLIPModel, CNCLIPTokenizer, load_cnclip, packaged_vocab_path
from tests.conftest import require, shared_dir

FEATURE_KEYS = (
    "image_features",
    "image_embeds",
    "text_features",
    "text_embeds",
    "text_features_preprocessed",
)


def _fixture_dir() -> Path:
    default = shared_dir() / "fixtures" / "chinese_clip_reference" / "tiny_vit"
    return Path(os.environ.get("CNCLIP_PARITY_FIXTURE", default))


@pytest.fixture(scope="module")
def model_dir() -> Path:
    return require(_fixture_dir(), "Chinese-CLIP parity fixture (model folder)")


@pytest.fixture(scope="module")
def ref_dir(model_dir: Path) -> Path:
    return require(model_dir.parent / "tokens.json", "Chinese-CLIP tokens.json").parent


@pytest.fixture(scope="module")
def tokens(ref_dir: Path) -> dict:
    return json.loads((ref_dir / "tokens.json").read_text(encoding="utf-8"))


@pytest.fixture(scope="module")
def vocab(model_dir: Path) -> Path:
    path = model_dir / "vocab.txt"
    if not path.is_file():
        path = packaged_vocab_path()
    if path is None:
        pytest.skip("no vocab.txt in the fixture folder and cn_clip (which ships one) is not installed")
    return path


@pytest.fixture(scope="module")
def cn_clip_vocab() -> Path:
    """cn_clip's own vocab.txt (for the tests that compare with cn_clip; they need no fixture files)."""
    pytest.importorskip("cn_clip")
    path = packaged_vocab_path()
    assert path is not None, "cn_clip is installed but its clip/vocab.txt was not found"
    return path


@pytest.fixture(scope="module")
def loaded(model_dir: Path, vocab: Path) -> CNCLIPModel:
    return load_cnclip(model_dir, vocab_path=vocab)


@pytest.fixture(scope="module")
def images(ref_dir: Path) -> list[Path]:
    paths = sorted((ref_dir / "images").glob("img*.png"))
    if not paths:
        pytest.skip(f"no fixture images in {ref_dir / 'images'}")
    return paths


@pytest.fixture(scope="module")
def outputs(loaded: CNCLIPModel, images: list[Path], tokens: dict) -> dict[str, torch.Tensor]:
    caps = tokens["captions"]
    logits = loaded.logits(images, caps)
    return {
        "image_features": loaded.encode_images(images),
        "image_embeds": loaded.embed_images(images, batch_size=3),  # exercises batching
        "text_features": loaded.encode_texts(caps),
        "text_embeds": loaded.embed_texts(caps, batch_size=3),
        "text_features_preprocessed": loaded.encode_texts(caps, normalize_text=True),
        "logits_per_image": logits,
        "logits_per_text": logits.T,
    }


@pytest.fixture(scope="module")
def expected(model_dir: Path) -> dict[str, torch.Tensor]:
    return load_file(str(require(model_dir / "expected.safetensors", "expected.safetensors")))


# ------------------------------------------------------------------------------------------ tokenizer


def test_vocab_is_the_reference_one(vocab: Path, tokens: dict) -> None:
    assert hashlib.sha256(vocab.read_bytes()).hexdigest() == tokens["vocab_sha256"]


def test_token_ids(loaded: CNCLIPModel, tokens: dict) -> None:
    assert loaded.context_length == tokens["context_length"]
    assert loaded.tokenize(tokens["captions"]).tolist() == tokens["input_ids"]
    assert (
        loaded.tokenize(tokens["captions"], normalize_text=True).tolist() == tokens["input_ids_preprocessed"]
    )
    trunc = tokens["truncation_case"]
    assert len(loaded.tokenizer.wordpieces(trunc["text"])) == trunc["n_wordpieces"]
    assert loaded.tokenize(trunc["text"])[0].tolist() == trunc["input_ids"]
    assert [loaded.tokenizer.wordpieces(c) for c in tokens["captions"]] == tokens["wordpieces"]


EDGE_TEXTS = [
    "[MASK] 是 [CLS] [unk] [SEP] [PAD]",
    "Café naïve RÉSUMÉ",
    "İstanbul ß ﬁ Ω Å",
    "a\x00b\ufffdc\u200bd\te\nf",
    "",
    "   ",
    "hello,world!!! ???",
    "x" * 200,
    "x" * 201,
    "unaffable 12345678901234 ＡＢＣ１２３",
    "😀🐱 ﹏ ～",
    "全角，标点。！？、；：“”‘’（）【】《》",
    "ひらがな カタカナ 한국어 ไทย",
    "soft\u00adhyphen\u3000space",
    "𠀀𪚥",
    "Ⅻ ½ ² ™",
    "这是一段很长的中文描述，" * 12,
]


@pytest.mark.parametrize("context_length", [52, 77, 8])
def test_tokenizer_matches_cn_clip(cn_clip_vocab: Path, context_length: int) -> None:
    cn_clip_utils = pytest.importorskip("cn_clip.clip.utils")
    mine = CNCLIPTokenizer(cn_clip_vocab, context_length=context_length)(EDGE_TEXTS)
    ref = cn_clip_utils.tokenize(EDGE_TEXTS, context_length=context_length)
    assert torch.equal(mine, ref)
    assert mine[0, 1].item() != 103  # a literal "[MASK]" in user text is not the special token


# ------------------------------------------------------------------------------------ preprocessing


def test_pixel_values_exact(loaded: CNCLIPModel, images: list[Path], ref_dir: Path) -> None:
    ref = load_file(str(ref_dir / "pixel_values.safetensors"))["pixel_values"]
    mine = loaded.preprocess_images(images)
    assert mine.shape == ref.shape and mine.dtype == ref.dtype
    assert (mine - ref).abs().max().item() == 0.0


# ------------------------------------------------------------------------------------------ outputs


@pytest.mark.parametrize("key", FEATURE_KEYS)
def test_features(outputs: dict, expected: dict, key: str) -> None:
    torch.testing.assert_close(outputs[key], expected[key], atol=1e-5, rtol=0)


@pytest.mark.parametrize("key", ["logits_per_image", "logits_per_text"])
def test_logits(outputs: dict, expected: dict, key: str) -> None:
    torch.testing.assert_close(outputs[key], expected[key], atol=1e-4, rtol=0)


def test_logit_scale_exact(loaded: CNCLIPModel, expected: dict) -> None:
    assert loaded.logit_scale.item() == expected["logit_scale_exp"].item()


def test_pixel_tensor_and_token_inputs(
    loaded: CNCLIPModel, images: list[Path], outputs: dict, ref_dir: Path
) -> None:
    pixels = load_file(str(ref_dir / "pixel_values.safetensors"))["pixel_values"]
    torch.testing.assert_close(loaded.encode_images(pixels), outputs["image_features"], atol=1e-6, rtol=0)
    ids = loaded.tokenize(["浅灰色背景中的蓝色正方形"])
    assert loaded.encode_texts(ids).shape == (1, loaded.embed_dim)


# ------------------------------------------------------------------------------- checkpoint layouts


def _write_official_pt(model_dir: Path, dest: Path) -> Path:
    """A released-style checkpoint: {"state_dict": {"module." + key: ...}, "epoch", "step", "name"}."""
    sd = load_file(str(model_dir / "model.safetensors"))
    wrapped = {"module." + k: v.clone() for k, v in sd.items()}
    hidden = sd["text_projection"].shape[0]
    wrapped["module.bert.pooler.dense.weight"] = torch.zeros(hidden, hidden)  # released ckpts may carry it
    wrapped["module.bert.pooler.dense.bias"] = torch.zeros(hidden)
    torch.save({"epoch": 3, "step": 1200, "name": "fixture", "state_dict": wrapped}, dest)
    return dest


def test_official_pt_layout_loads_identically(
    model_dir: Path, vocab: Path, loaded: CNCLIPModel, images: list[Path], tmp_path: Path
) -> None:
    pt = _write_official_pt(model_dir, tmp_path / "epoch_latest.pt")
    with pytest.raises(CNCLIPLoadError, match="no config"):
        load_cnclip(pt, vocab_path=vocab)
    shutil.copy(model_dir / "config.json", tmp_path / "epoch_latest.json")  # sibling config
    from_pt = load_cnclip(pt, vocab_path=vocab)
    ref_sd = loaded.model.state_dict()
    for key, value in from_pt.model.state_dict().items():
        assert torch.equal(value, ref_sd[key]), key
    assert torch.equal(from_pt.encode_images(images[:2]), loaded.encode_images(images[:2]))
    cfg = json.loads((model_dir / "config.json").read_text())
    with_arg = load_cnclip(pt, config=cfg["clip_kwargs"], vocab_path=vocab, context_length=64)  # flat kwargs
    assert with_arg.tokenize("白色").shape == (1, 64)
    assert torch.equal(with_arg.model.logit_scale, loaded.model.logit_scale)


class _Payload:
    def __reduce__(self):
        return (os.getenv, ("CNCLIP_TEST_SHOULD_NOT_RUN",))


def test_arbitrary_pickle_is_refused(model_dir: Path, vocab: Path, tmp_path: Path) -> None:
    pt = tmp_path / "evil.pt"
    torch.save({"state_dict": {"logit_scale": torch.zeros(())}, "extra": _Payload()}, pt)
    shutil.copy(model_dir / "config.json", tmp_path / "evil.json")
    with pytest.raises(CNCLIPLoadError, match="evil.pt"):
        load_cnclip(pt, vocab_path=vocab)


def test_bad_files_give_clear_errors(model_dir: Path, vocab: Path, tmp_path: Path) -> None:
    assert issubclass(CNCLIPLoadError, ValueError)
    with pytest.raises(CNCLIPLoadError, match="not found"):
        load_cnclip(tmp_path / "nope.pt", vocab_path=vocab)

    empty = tmp_path / "empty_folder"
    empty.mkdir()
    with pytest.raises(CNCLIPLoadError, match="model.safetensors"):
        load_cnclip(empty, vocab_path=vocab)

    corrupt = tmp_path / "corrupt"
    corrupt.mkdir()
    shutil.copy(model_dir / "config.json", corrupt / "config.json")
    (corrupt / "model.safetensors").write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json")
    with pytest.raises(CNCLIPLoadError, match="corrupt.model.safetensors"):
        load_cnclip(corrupt, vocab_path=vocab)

    garbage_pt = tmp_path / "garbage.pt"
    garbage_pt.write_bytes(os.urandom(256))
    with pytest.raises(CNCLIPLoadError, match="garbage.pt"):
        load_cnclip(garbage_pt, config=model_dir / "config.json", vocab_path=vocab)

    with pytest.raises(CNCLIPLoadError, match="config file not found"):
        load_cnclip(model_dir, config=tmp_path / "missing.json", vocab_path=vocab)

    with pytest.raises(CNCLIPLoadError, match="vocab"):
        load_cnclip(model_dir, vocab_path=tmp_path / "missing_vocab.txt")

    # weights that do not fit the config: a missing tensor, and a wrong embed_dim
    sd = load_file(str(model_dir / "model.safetensors"))
    partial = tmp_path / "partial"
    partial.mkdir()
    shutil.copy(model_dir / "config.json", partial / "config.json")
    save_file({k: v for k, v in sd.items() if k != "logit_scale"}, str(partial / "model.safetensors"))
    with pytest.raises(CNCLIPLoadError, match=r"(?s)partial.model\.safetensors.*logit_scale"):
        load_cnclip(partial, vocab_path=vocab)
    cfg = json.loads((model_dir / "config.json").read_text())
    cfg["clip_kwargs"]["embed_dim"] += 1
    with pytest.raises(CNCLIPLoadError, match="do not match"):
        load_cnclip(model_dir, config=cfg, vocab_path=vocab)


# ------------------------------------------------------------- ModifiedResNet vs a random cn_clip model


def _randomize(model: torch.nn.Module, seed: int) -> None:
    """Re-draw every float tensor (fan-in scaled; norm gains ~1; BN running stats random)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, t in model.state_dict().items():
            if not t.is_floating_point():
                continue
            if name.endswith("running_var"):
                t.copy_(torch.rand(t.shape, generator=g) + 0.5)
            elif name.endswith(("bias", "running_mean")) or t.ndim == 0:
                t.copy_(torch.randn(t.shape, generator=g) * 0.1)
            elif t.ndim == 1:  # norm gains, class embedding
                t.copy_(1.0 + torch.randn(t.shape, generator=g) * 0.1)
            else:
                fan_in = t[0].numel() if "positional" not in name else t.shape[-1]
                t.copy_(torch.randn(t.shape, generator=g) / fan_in**0.5)


def test_modified_resnet_matches_cn_clip(cn_clip_vocab: Path, tmp_path: Path) -> None:
    cn_model = pytest.importorskip("cn_clip.clip.model")
    cn_utils = pytest.importorskip("cn_clip.clip.utils")
    kwargs = {
        "embed_dim": 24,
        "image_resolution": 64,
        "vision_layers": [1, 2, 1, 1],
        "vision_width": 16,
        "vision_patch_size": None,
        "vision_head_width": 64,
        "vocab_size": 21128,
        "text_attention_probs_dropout_prob": 0.1,
        "text_hidden_act": "gelu",
        "text_hidden_dropout_prob": 0.1,
        "text_hidden_size": 32,
        "text_initializer_range": 0.02,
        "text_intermediate_size": 64,
        "text_max_position_embeddings": 512,
        "text_num_attention_heads": 2,
        "text_num_hidden_layers": 2,
        "text_type_vocab_size": 2,
    }
    ref = cn_model.CLIP(**kwargs)
    _randomize(ref, seed=7)
    with torch.no_grad():
        ref.logit_scale.fill_(2.5)
    ref.eval()
    # released-style .pt + the official split JSON configs (vision_layers as a string)
    torch.save(
        {"epoch": 1, "state_dict": {"module." + k: v for k, v in ref.state_dict().items()}},
        tmp_path / "rn.pt",
    )
    vision = {k: kwargs[k] for k in ("embed_dim", "image_resolution", "vision_width", "vision_patch_size")}
    vision["vision_layers"] = "[1,2,1,1]"
    text = {k: v for k, v in kwargs.items() if k == "vocab_size" or k.startswith("text_")}
    (tmp_path / "RN-tiny.json").write_text(json.dumps(vision))
    (tmp_path / "RBT-tiny.json").write_text(json.dumps(text))
    mine = load_cnclip(
        tmp_path / "rn.pt",
        config=[tmp_path / "RN-tiny.json", tmp_path / "RBT-tiny.json"],
        vocab_path=cn_clip_vocab,
    )
    assert type(mine.model.visual).__name__ == "ModifiedResNet"

    g = torch.Generator().manual_seed(1)
    pixels = torch.randn(3, 3, 64, 64, generator=g) * torch.tensor([0.5, 1.0, 2.0]).view(3, 1, 1, 1)
    pixels += torch.randn(3, 3, 1, 1, generator=g)  # different colour casts
    texts = ["白色背景上的一个红色圆形。", "Black background, 绿色三角形 (GREEN)", "短"]
    ids = cn_utils.tokenize(texts)
    with torch.no_grad():
        ref_img = ref.encode_image(pixels)
        ref_txt = ref.encode_text(ids)
    torch.testing.assert_close(mine.encode_images(pixels), ref_img, atol=1e-5, rtol=0)
    torch.testing.assert_close(mine.encode_texts(texts), ref_txt, atol=1e-5, rtol=0)
    assert ref_txt.std(0).mean() > 1e-2 and ref_img.std(0).mean() > 1e-2  # not a degenerate model
    assert mine.logit_scale.item() == ref.logit_scale.exp().item()


def test_vocab_txt_beside_the_weights_is_used(model_dir: Path, vocab: Path, tmp_path: Path) -> None:
    folder = tmp_path / "with_vocab"
    folder.mkdir()
    for name in ("config.json", "model.safetensors"):
        (folder / name).symlink_to(model_dir / name)
    shutil.copy(vocab, folder / "vocab.txt")
    model = load_cnclip(folder)
    assert model.tokenizer.vocab_path == folder / "vocab.txt"
    (folder / "vocab.txt").write_text("[PAD]\n[UNK]\n[CLS]\n[SEP]\n", encoding="utf-8")
    with pytest.raises(CNCLIPLoadError, match="4 entries"):
        load_cnclip(folder)
