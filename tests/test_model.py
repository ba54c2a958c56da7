"""Model behaviour that needs no fixture: kernels agree, the KV cache is exact, configs round-trip."""

from __future__ import annotations

import pytest
import torch

from ofa.models import ConfigError, OFAConfig, OFAModel
from ofa.models.attention import image_bucket, token_bucket_lut


def small_config(**overrides) -> OFAConfig:
    values = dict(
        vocab_size=200,
        num_codes=64,
        num_bins=40,
        d_model=32,
        encoder_layers=2,
        decoder_layers=2,
        encoder_attention_heads=4,
        decoder_attention_heads=4,
        encoder_ffn_dim=64,
        decoder_ffn_dim=64,
        resnet_layers=[1, 1, 1],
        resnet_width=8,
        code_image_size=32,
        dropout=0.0,
        image_size=64,
    )
    values.update(overrides)
    return OFAConfig(**values)


def random_model(config: OFAConfig, seed: int = 0) -> OFAModel:
    """A model whose every weight, incl. the zero-initialised relative tables, is random and non-trivial."""
    torch.manual_seed(seed)
    model = OFAModel(config).eval()
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "rel_pos_table" in name:
                param.normal_(0, 0.5)
            elif param.dim() >= 2:
                param.normal_(0, param.size(-1) ** -0.5)
    return model


def batch(config: OFAConfig, seed: int = 1):
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(4, config.text_vocab_size, (3, 7), generator=g)
    ids[:, 0] = config.bos_token_id
    ids[0, 5:] = config.pad_token_id  # one padded row
    ids[1, 6] = config.eos_token_id
    images = torch.randn(3, 3, 64, 64, generator=g)
    dec = torch.randint(4, config.vocab_size, (3, 9), generator=g)
    dec[:, 0] = config.bos_token_id
    code_masks = torch.tensor([False, True, False])  # one sample decodes in image-code mode
    return ids, images, dec, code_masks


@pytest.mark.parametrize("implementation", ["sdpa", "flex"])
def test_attention_kernels_agree_with_eager(implementation):
    config = small_config()
    model = random_model(config)
    ids, images, dec, code_masks = batch(config)
    with torch.no_grad():
        model.set_attn_implementation("eager")
        enc_ref = model.encode(ids, images)
        ref = model.decode(dec, enc_ref, code_masks).logits
        text_only_ref = model.decode(dec, model.encode(ids), code_masks).logits
        model.set_attn_implementation(implementation)
        enc = model.encode(ids, images)
        got = model.decode(dec, enc, code_masks).logits
        text_only = model.decode(dec, model.encode(ids), code_masks).logits
    torch.testing.assert_close(enc.last_hidden_state, enc_ref.last_hidden_state, atol=1e-5, rtol=0)
    torch.testing.assert_close(got, ref, atol=1e-5, rtol=0)
    torch.testing.assert_close(text_only, text_only_ref, atol=1e-5, rtol=0)


@pytest.mark.parametrize("implementation", ["eager", "sdpa", "flex"])
def test_cached_decoding_equals_full_recomputation(implementation):
    config = small_config(attn_implementation=implementation)
    model = random_model(config)
    ids, images, dec, code_masks = batch(config)
    with torch.no_grad():
        enc = model.encode(ids, images)
        full = model.decode(dec, enc, code_masks).logits
        cache, steps = None, []
        # Feed the prefix in uneven chunks: 1 token, then 3, then one at a time.
        for start, end in [(0, 1), (1, 4), *[(i, i + 1) for i in range(4, dec.size(1))]]:
            out = model.decode(dec[:, start:end], enc, code_masks, cache=cache, use_cache=True)
            cache = out.cache
            steps.append(out.logits)
    torch.testing.assert_close(torch.cat(steps, dim=1), full, atol=1e-5, rtol=0)


def test_cache_reorder_follows_rows():
    config = small_config()
    model = random_model(config)
    ids, images, dec, code_masks = batch(config)
    order = torch.tensor([2, 2, 0])
    with torch.no_grad():
        enc = model.encode(ids, images)
        out = model.decode(dec[:, :3], enc, code_masks, use_cache=True)
        out.cache.reorder(order)
        step = model.decode(dec[order, 3:4], enc.index_select(order), cache=out.cache, use_cache=True).logits
        full = model.decode(dec[order, :4], enc.index_select(order), code_masks[order]).logits[:, -1:]
    torch.testing.assert_close(step, full, atol=1e-5, rtol=0)


def test_padding_does_not_change_other_tokens():
    """Extra pads on a row leave that row's decoder logits unchanged (pads are masked keys)."""
    config = small_config()
    model = random_model(config)
    ids, images, dec, _ = batch(config)
    padded = torch.cat([ids, torch.full((3, 4), config.pad_token_id)], dim=1)
    with torch.no_grad():
        a = model.decode(dec, model.encode(ids, images)).logits
        b = model.decode(dec, model.encode(padded, images)).logits
    torch.testing.assert_close(a, b, atol=1e-5, rtol=0)


def test_hidden_image_acts_like_no_image():
    """patch_masks=False hides a sample's image: its output equals a text-only run."""
    config = small_config()
    model = random_model(config)
    ids, images, dec, _ = batch(config)
    with torch.no_grad():
        hidden = model.decode(
            dec, model.encode(ids, images, patch_masks=torch.tensor([True, False, True]))
        ).logits
        text_only = model.decode(dec, model.encode(ids)).logits
    torch.testing.assert_close(hidden[1], text_only[1], atol=1e-5, rtol=0)


def test_token_buckets_hand_computed():
    lut = token_bucket_lut(256, 1024)
    bucket = lambda rel: int(lut[rel + 1023])  # noqa: E731
    assert bucket(0) == 255 and bucket(5) == 260 and bucket(-128) == 127 and bucket(128) == 383
    # |rel| > 128: 128 + ceil(log(rel/128) / log(1023/128) * 127); rel = 1023 gives the last bucket.
    assert bucket(1023) == 255 + 255 and bucket(-1023) == 0
    assert bucket(200) == 255 + 128 + 28  # ceil(log(200/128)/log(1023/128)*127) = ceil(27.39) = 28


def test_image_buckets_hand_computed():
    b = 42
    pid = lambda r, c: r * b + c + 1  # noqa: E731
    same = (b - 1) * (2 * b - 1) + (b - 1)
    assert int(image_bucket(torch.tensor(pid(3, 4)), torch.tensor(pid(3, 4)), b)) == same
    assert int(image_bucket(torch.tensor(pid(3, 4)), torch.tensor(pid(2, 4)), b)) == same + (2 * b - 1)
    assert int(image_bucket(torch.tensor(pid(3, 4)), torch.tensor(pid(3, 6)), b)) == same - 2
    nd = (2 * b - 1) ** 2 + 3
    assert int(image_bucket(torch.tensor(0), torch.tensor(5), b)) == nd - 3
    assert int(image_bucket(torch.tensor(5), torch.tensor(0), b)) == nd - 2
    assert int(image_bucket(torch.tensor(0), torch.tensor(0), b)) == nd - 1


@pytest.mark.parametrize(
    "name, layers, d, heads, params_m",
    [("tiny", (4, 4), 256, 4, 33.5), ("base", (6, 6), 768, 12, 182.2), ("large", (12, 12), 1024, 16, 473.0)],
)
def test_presets_match_official_sizes(name, layers, d, heads, params_m):
    config = OFAConfig.preset(name)
    assert (config.encoder_layers, config.decoder_layers, config.d_model) == (*layers, d)
    assert config.encoder_attention_heads == heads and config.encoder_ffn_dim == 4 * d
    with torch.device("meta"):
        model = OFAModel(config)
    # Official counts (HF port, measured in the architecture notes); we hold no rp_bucket buffers.
    assert model.num_parameters() / 1e6 == pytest.approx(params_m, abs=0.1)


def test_config_json_round_trip(tmp_path):
    config = OFAConfig.preset("tiny", attn_implementation="eager", resnet_width=32)
    config.save(tmp_path / "c.json")
    assert OFAConfig.load(tmp_path / "c.json") == config


def test_config_errors_name_the_field(tmp_path):
    with pytest.raises(ConfigError, match="attn_implementation"):
        OFAConfig(attn_implementation="fast")
    with pytest.raises(ConfigError, match="not divisible"):
        OFAConfig(d_model=100, encoder_attention_heads=3)
    (tmp_path / "bad.json").write_text('{"d_model": 64, "colour": 3}')
    with pytest.raises(ConfigError, match="colour"):
        OFAConfig.load(tmp_path / "bad.json")
    with pytest.raises(ConfigError, match="unknown preset"):
        OFAConfig.preset("gigantic")


def test_convnet_stem_is_plain_stride_two_stages_and_round_trips(tmp_path):
    from timm.layers import ConvNormAct

    model = random_model(small_config(image_stem="convnet", convnet_channels=[8, 16, 24, 32]))
    stem = model.encoder.embed_images
    convs = [m for m in stem.modules() if isinstance(m, ConvNormAct)]
    assert [c.conv.stride for c in convs] == [(2, 2), (1, 1)] * 4  # 4 stages: output stride 16
    assert [c.conv.out_channels for c in convs] == [8, 8, 16, 16, 24, 24, 32, 32]
    images = torch.randn(2, 3, 64, 64)
    assert stem(images).shape == (2, 32, 4, 4) and model.config.image_feature_dim == 32
    out = model.encoder(input_ids=torch.tensor([[0, 5, 6, 2]] * 2), patch_images=images)
    assert out.last_hidden_state.shape == (2, 16 + 4, 32)
    model.save_pretrained(tmp_path / "m")
    loaded = OFAModel.from_pretrained(tmp_path / "m")
    assert loaded.config.image_stem == "convnet"
    again = loaded.encoder(input_ids=torch.tensor([[0, 5, 6, 2]] * 2), patch_images=images)
    assert torch.allclose(again.last_hidden_state, out.last_hidden_state, atol=1e-6)
    assert OFAConfig().image_stem == "resnet"  # the official architecture stays the default
    with pytest.raises(ConfigError, match="image_stem"):
        small_config(image_stem="vit")
    with pytest.raises(ConfigError, match="convnet_channels"):
        small_config(convnet_channels=[])
