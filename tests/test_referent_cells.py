"""Auxiliary grounding terms: the referent-cell head (`train.referent_cell_weight`) and supervised cross-attention
(`train.referent_attention_weight`, `train.caption_attention_weight`, `train.expression_attention_weight`)."""

from __future__ import annotations

import math
from types import SimpleNamespace

import pytest
import torch

from ofa.training.module import referent_cell_targets

from .test_training import losses, run_in_process, tiny_recipe


def test_targets_cover_the_cells_whose_centre_is_inside_the_box():
    # 4x4 grid, cell centres at 0.125, 0.375, 0.625, 0.875 of the image.
    got = referent_cell_targets(torch.tensor([[0.0, 0.0, 0.5, 0.5], [0.3, 0.55, 0.9, 0.7]]), 4)
    first = torch.zeros(16)
    first[[0, 1, 4, 5]] = 0.25  # rows 0-1, columns 0-1
    second = torch.zeros(16)
    second[[9, 10, 11]] = 1 / 3  # row 2 (0.625), columns 1-3
    assert torch.allclose(got, torch.stack([first, second]))


def test_a_box_between_cell_centres_gets_the_cell_holding_its_centre():
    # No cell centre in [0.8, 0.85] x [0.15, 0.2]; the centre (0.825, 0.175) lies in row 0, column 3.
    got = referent_cell_targets(torch.tensor([[0.8, 0.15, 0.85, 0.2]]), 4)
    expected = torch.zeros(1, 16)
    expected[0, 3] = 1.0
    assert torch.equal(got, expected)


def test_loss_is_the_hand_computed_cross_entropy_over_grounding_samples_only():
    from ofa.models import OFAModel
    from ofa.training.module import OFALightningModule
    from ofa.training.recipe import TrainSection

    from .test_model import small_config

    module = OFALightningModule(OFAModel(small_config()), TrainSection(referent_cell_weight=1.0), pad_id=1)
    with torch.no_grad():
        module.referent_head.weight.zero_()
        module.referent_head.weight[0, 0] = 1.0  # score = first hidden feature
        module.referent_head.bias.zero_()
    grid, text = 2, 3
    hidden = torch.zeros(2, grid * grid + text, module.model.config.d_model)
    hidden[1, :4, 0] = torch.tensor([2.0, 0.0, 0.0, 1.0])
    batch = SimpleNamespace(
        batch=SimpleNamespace(
            tasks=["caption", "grounding"],
            meta=[{}, {"box": [0.0, 0.0, 40.0, 20.0], "image_size": (80, 80)}],  # cell 0 only
            patch_images=torch.zeros(2, 3, 8, 8),
            input_ids=torch.zeros(2, text, dtype=torch.long),
        )
    )
    got = module.referent_cell_loss_sum(batch, hidden)
    expected = -(2.0 - math.log(math.exp(2.0) + 2 + math.exp(1.0)))
    assert got.item() == pytest.approx(expected, abs=1e-6)


def test_attention_probabilities_are_the_distribution_forward_uses():
    from ofa.models.attention import AttentionBias, OFAAttention

    torch.manual_seed(0)
    attn = OFAAttention(16, 4, scale_heads=False).eval()
    hidden, source = torch.randn(2, 3, 16), torch.randn(2, 5, 16)
    padding = torch.tensor([[False] * 5, [False, False, False, True, True]])
    bias = AttentionBias(pos_q=torch.randn(2, 4, 3, 4), pos_k=torch.randn(2, 4, 5, 4), key_padding=padding)
    key, value = attn.project_kv(source)
    probs = attn.probabilities(hidden, key, bias, 0)
    assert torch.allclose(probs.sum(-1), torch.ones(2, 4, 3))
    assert float(probs.detach()[1, :, :, 3:].max()) == 0.0  # padded keys get no mass
    # By hand: softmax(q k^T * scaling + pos_q pos_k^T) over the unpadded keys, then the output projection.
    q = attn._heads(attn.q_proj(hidden))
    scores = q @ key.transpose(2, 3) * attn.scaling + bias.pos_q @ bias.pos_k.transpose(2, 3)
    scores[1, :, :, 3:] = -float("inf")
    assert torch.allclose(probs, scores.softmax(-1), atol=1e-6)
    out = attn.out_proj((probs @ value).transpose(1, 2).reshape(2, 3, 16))
    assert torch.allclose(attn(hidden, key, value, bias, 0), out, atol=1e-5)


def test_attention_loss_is_the_hand_computed_cross_entropy_over_supervised_steps():
    from ofa.models import OFAModel
    from ofa.training.module import OFALightningModule
    from ofa.training.recipe import TrainSection

    from .test_model import small_config

    train = TrainSection(referent_attention_weight=1.0, caption_attention_weight=0.5)
    module = OFALightningModule(OFAModel(small_config()), train, pad_id=1)
    grid, text, steps = 2, 3, 6
    probs = torch.full((3, steps, grid * grid + text), 1 / 7)
    # Grounding row 1: at step s the referent's cells 0 and 1 (box over the top half) get p0[s], p1[s].
    p0, p1 = [0.5, 0.2, 0.1, 0.3], [0.1, 0.2, 0.4, 0.3]
    probs[1, :4, 0], probs[1, :4, 1] = torch.tensor(p0), torch.tensor(p1)
    # Caption row 2: position 2 names two objects (cells 0 and 3), position 4 one (cell 3).
    probs[2, 2, [0, 3]] = torch.tensor([0.2, 0.4])
    probs[2, 4, 3] = 0.6
    top_half = [0.0, 0.0, 80.0, 40.0]
    batch = SimpleNamespace(
        batch=SimpleNamespace(
            tasks=["caption", "grounding", "caption"],
            meta=[
                {"image_size": (80, 80)},  # no attend: not supervised
                {"attend": [(s, [top_half]) for s in range(4)], "image_size": (80, 80)},
                {
                    "attend": [(2, [[0, 0, 20, 20], [60, 60, 80, 80]]), (4, [[60, 60, 80, 80]])],
                    "image_size": (80, 80),
                },
            ],
            patch_images=torch.zeros(3, 3, 8, 8),
            input_ids=torch.zeros(3, text, dtype=torch.long),
        )
    )
    got = module.object_attention_loss_sum(batch, probs)
    grounding = -sum(0.5 * math.log(a) + 0.5 * math.log(b) for a, b in zip(p0, p1)) / 4
    caption = 0.5 * -(0.5 * math.log(0.2) + 0.5 * math.log(0.4) + math.log(0.6)) / 2
    assert got.item() == pytest.approx(grounding + caption, abs=1e-6)
    module.cfg.caption_attention_weight = 0.0  # off: captions no longer count
    assert module.object_attention_loss_sum(batch, probs).item() == pytest.approx(grounding, abs=1e-6)


def test_caption_attend_targets_name_the_objects_of_each_attribute_word():
    from ofa.data.sources import WorldSource
    from ofa.data.world import World
    from ofa.tasks import get_task
    from ofa.tokenization import OFATokenizer

    tokenizer = OFATokenizer.from_pretrained("tokenizers/world")
    world = World(seed=0, image_size=64)
    for lang in ("en", "zh"):
        source = WorldSource(world, "train", "caption", lang)
        task = get_task("caption")(tokenizer, image_size=64, train_target="first")
        checked = 0
        for index in range(20):
            sample = source[index]
            example = task.build(sample, train=True)
            words = [tokenizer.decode([i]).strip() for i in example.target]
            attend = dict(example.meta["attend"])
            # Every object's three attribute words are supervised, each towards exactly the objects with those attributes.
            assert len(attend) == 3 * len({tuple(o) for o in sample["objects"]})
            for position, boxes in attend.items():
                described = [
                    o
                    for o, b in zip(sample["objects"], sample["object_boxes"])
                    if list(map(float, b)) in boxes
                ]
                assert len(described) == len(boxes) and len({tuple(o) for o in described}) == 1
                size, colour, shape = described[0]
                names = {size, colour, shape, f"{size}s", f"{shape}s", f"{shape}es"} if lang == "en" else None
                if names is not None:
                    assert words[position] in names, (words, position)
                checked += 1
            assert "attend" not in task.build(sample, train=False).meta
        assert checked > 60


def test_mention_words_are_matched_to_objects_by_hand():
    from ofa.data.world import mention_word_objects

    objects = [("large", "red", "circle"), ("small", "blue", "star"), ("small", "blue", "star")]
    words = ["a", "large", "red", "circle", "and", "two", "small", "blue", "stars", "red", "star"]
    assert mention_word_objects(words, objects, "en") == [
        [],
        [0],
        [0],
        [0],
        [],
        [],
        [1, 2],
        [1, 2],
        [1, 2],
        [],
        [],
    ]
    zh = ["一个", "大的", "红色", "圆形", "在", "小的", "蓝色", "星形", "的", "左边"]
    assert mention_word_objects(zh, objects, "zh") == [[], [0], [0], [0], [], [1, 2], [1, 2], [1, 2], [], []]
    # a mention no object matches describes nothing; a broken run (no colour) neither
    assert mention_word_objects(["a", "small", "red", "circle"], objects, "en") == [[], [], [], []]
    assert mention_word_objects(["a", "large", "circle"], objects, "en") == [[], [], []]


@pytest.mark.parametrize(
    "term",
    [
        "referent_cell_weight",
        "referent_attention_weight",
        "expression_attention_weight",
        "key_attribute_weight",
        "query_attribute_weight",
    ],
)
def test_training_lowers_the_referent_term_and_export_keeps_only_the_model(tmp_path, term):
    from safetensors.torch import load_file

    out = tmp_path / "run"
    values = tiny_recipe(
        out,
        size=4,
        max_steps=30,
        lr=3e-3,
        schedule="constant",
        warmup_steps=0,
        checkpoint_every=30,
        **{term: 1.0},
    )
    run_in_process(values)
    curve = losses(out, "referent_loss")
    assert len(curve) == 30 and len(losses(out)) == 30
    assert sum(curve[-5:]) / 5 < sum(curve[:5]) / 5 - 0.1, curve
    exported = load_file(out / "final/model.safetensors")
    state = torch.load(out / "checkpoints/step=000030.ckpt", weights_only=True)["state_dict"]
    assert set(exported) <= {k.removeprefix("model.") for k in state}
    extra = {k for k in state if not k.startswith("model.")}
    # the cell term's head is resumable from checkpoints but not exported; the attention term adds no weights
    heads = {
        "referent_cell_weight": {"referent_head"},
        "key_attribute_weight": {"key_heads.size", "key_heads.colour", "key_heads.shape"},
        "query_attribute_weight": {"query_heads.size", "query_heads.colour", "query_heads.shape"},
    }.get(term, set())
    assert extra == {f"{head}.{p}" for head in heads for p in ("weight", "bias")}


def test_attention_layers_and_heads_combine_their_terms_and_are_validated():
    from ofa.models import OFAModel
    from ofa.training.module import OFALightningModule
    from ofa.training.recipe import RecipeError, TrainSection

    from .test_model import batch, random_model, small_config

    model = random_model(small_config())
    ids, images, dec, code_masks = batch(model.config)
    code_masks = torch.zeros(3, dtype=torch.bool)
    attend = [(s, [[0.0, 0.0, 32.0, 32.0]]) for s in range(1, 5)]  # top-left quarter of the 64 px image
    micro = SimpleNamespace(
        batch=SimpleNamespace(
            input_ids=ids,
            patch_images=images,
            patch_masks=None,
            decoder_input_ids=dec,
            target_ids=dec,
            code_masks=code_masks,
            tasks=["grounding", "caption", "grounding"],
            meta=[
                {"attend": attend, "image_size": (64, 64)},
                {"image_size": (64, 64)},
                {"image_size": (64, 64)},
            ],
        )
    )

    def run(weight: float, layers: list[int], heads: int = 1) -> tuple[float, float | None]:
        train = TrainSection(referent_attention_weight=weight, attention_layers=layers, attention_heads=heads)
        module = OFALightningModule(model, train, pad_id=model.config.pad_token_id).eval()
        with torch.no_grad():
            tokens, referent = module.losses(micro)
        return tokens.item(), None if referent is None else referent.item()

    def term(layers: list[int]) -> float:
        return run(1.0, layers)[1]

    plain, nothing = run(0.0, [-1])
    assert (
        nothing is None and run(1.0, [0, 1])[0] == plain
    )  # watching the heads leaves the forward pass alone

    first, last = term([0]), term([1])
    assert first > 0 and last > 0 and first != pytest.approx(last)
    assert term([-1]) == pytest.approx(last) and term([-2]) == pytest.approx(first)
    assert term([0, 1]) == pytest.approx(first + last, rel=1e-5)
    with pytest.raises(
        RecipeError, match=r"train.attention_layers: \[2\] out of range for a decoder of 2 layers"
    ):
        OFALightningModule(model, TrainSection(referent_attention_weight=1.0, attention_layers=[2]), pad_id=1)
    OFALightningModule(
        OFAModel(small_config()), TrainSection(attention_layers=[5]), pad_id=1
    )  # terms off: unused
    # attention_heads: the mean of each head's term (heads taken from the last layer's real probabilities)
    captured = {}
    cross = model.decoder.layers[-1].cross_attn
    handle = cross.register_forward_hook(lambda _m, args, _o: captured.setdefault("args", args) and None)
    with torch.no_grad():
        model.decode(dec, model.encode(ids, images), code_masks)
        hidden, key, _value, bias, layer = captured["args"]
        probs = cross.probabilities(hidden, key, bias, layer)
    handle.remove()
    module = OFALightningModule(model, TrainSection(referent_attention_weight=1.0), pad_id=1)
    per_head = [module.object_attention_loss_sum(micro, probs[:, h]).item() for h in range(4)]
    assert len({round(v, 4) for v in per_head}) == 4  # the heads differ, so the averages below can tell
    assert run(1.0, [-1], 1)[1] == pytest.approx(per_head[0], rel=1e-5)
    assert run(1.0, [-1], 2)[1] == pytest.approx(sum(per_head[:2]) / 2, rel=1e-5)
    assert run(1.0, [-1], 4)[1] == pytest.approx(sum(per_head) / 4, rel=1e-5)
    with pytest.raises(RecipeError, match=r"train.attention_heads: 5 not in 1..4"):
        OFALightningModule(model, TrainSection(referent_attention_weight=1.0, attention_heads=5), pad_id=1)


def test_object_attention_term_is_the_cross_entropy_over_the_referent_cells():
    """Hand-computed: attention uniform over the keys, or all on one of the referent's four cells, gives
    -mean(log p) over those cells."""
    from ofa.training.module import OFALightningModule
    from ofa.training.recipe import TrainSection

    from .test_model import batch, random_model, small_config

    model = random_model(small_config())
    ids, images, dec, _ = batch(model.config)
    patches = 16  # 64 px image, stride 16: a 4x4 grid; the top-left quarter is cells 0, 1, 4, 5
    keys = patches + ids.size(1)
    micro = SimpleNamespace(
        batch=SimpleNamespace(
            input_ids=ids,
            patch_images=images,
            tasks=["grounding"],
            meta=[{"attend": [(0, [[0.0, 0.0, 32.0, 32.0]])], "image_size": (64, 64)}],
        )
    )
    probs = torch.full((1, 4, 1, keys), 1.0 / keys)  # (B, heads, T, keys), every head uniform
    probs[0, 1, 0] = 0.0
    probs[0, 1, 0, 5] = 1.0  # head 1: everything on one of the four referent cells
    module = OFALightningModule(model, TrainSection(referent_attention_weight=1.0), pad_id=1)
    uniform = math.log(keys)  # -log(1/keys) at each cell
    pinned = -(3 * math.log(1e-9) + math.log(1.0)) / 4  # the log is taken of p clamped at 1e-9
    assert module.object_attention_loss_sum(micro, probs[:, 0]).item() == pytest.approx(uniform, rel=1e-5)
    assert module.object_attention_loss_sum(micro, probs[:, 1]).item() == pytest.approx(pinned, rel=1e-5)


def test_expression_attention_term_is_the_cross_entropy_over_the_expression_tokens():
    """Hand-computed: attention uniform over all keys gives log(keys) per box step; all of it on one of the three
    expression tokens gives -(2 log 1e-9 + log 1) / 3; non-grounding samples and steps past the decoder length
    count as nothing; the weight scales the sum."""
    from ofa.training.module import OFALightningModule
    from ofa.training.recipe import TrainSection

    from .test_model import batch, random_model, small_config

    model = random_model(small_config())
    ids, images, _, _ = batch(model.config)
    ids = ids[:1].expand(2, -1)
    patches = 16  # 64 px image, stride 16
    keys = patches + ids.size(1)
    box_steps = [(t, [[0.0, 0.0, 32.0, 32.0]]) for t in range(4)]
    micro = SimpleNamespace(
        batch=SimpleNamespace(
            input_ids=ids,
            patch_images=images[:1].expand(2, -1, -1, -1),
            tasks=["grounding", "caption"],
            meta=[
                {"attend": box_steps, "expression": (2, 5), "image_size": (64, 64)},
                {"attend": box_steps, "expression": (2, 5), "image_size": (64, 64)},
            ],
        )
    )
    probs = torch.full((2, 2, keys), 1.0 / keys)  # (B, T, keys): only steps 0 and 1 exist
    module = OFALightningModule(model, TrainSection(expression_attention_weight=2.0), pad_id=1)
    assert module.expression_attention_loss_sum(micro, probs).item() == pytest.approx(
        2 * math.log(keys), rel=1e-5
    )
    probs[0, :] = 0.0
    probs[0, :, patches + 3] = 1.0  # on the second expression token (source position 3)
    pinned = -(2 * math.log(1e-9) + math.log(1.0)) / 3
    assert module.expression_attention_loss_sum(micro, probs).item() == pytest.approx(2 * pinned, rel=1e-5)


def test_key_attribute_term_is_the_cross_entropy_of_the_cells_object_attributes():
    """Hand-computed: zero heads give log(V) per attribute; a colour head sure of "red" on a red object's cells
    leaves only size and shape; samples without object boxes count as nothing."""
    from ofa.data.world.vocab import COLOUR_NAMES, SHAPE_NAMES, SIZES
    from ofa.training.module import OFALightningModule
    from ofa.training.recipe import TrainSection

    from .test_model import batch, random_model, small_config

    model = random_model(small_config())
    ids, images, _, _ = batch(model.config)
    module = OFALightningModule(model, TrainSection(key_attribute_weight=1.0), pad_id=1)
    for head in module.key_heads.values():
        torch.nn.init.zeros_(head.weight)
        torch.nn.init.zeros_(head.bias)
    red_star = {
        "objects": [("large", "red", "star")],
        "object_boxes": [[0.0, 0.0, 32.0, 32.0]],
        "image_size": (64, 64),
    }
    micro = SimpleNamespace(
        batch=SimpleNamespace(
            input_ids=ids[:2],
            patch_images=images[:2],
            tasks=["caption", "grounding"],
            meta=[red_star, {"image_size": (64, 64)}],
        )
    )
    head_dim = model.config.d_model // model.config.decoder_attention_heads
    keys = torch.randn(2, 16 + ids.size(1), head_dim)  # 64 px image: 4x4 patch cells first
    uniform = math.log(len(SIZES)) + math.log(len(COLOUR_NAMES)) + math.log(len(SHAPE_NAMES))
    assert module.key_attribute_loss_sum(micro, keys).item() == pytest.approx(uniform, rel=1e-5)
    with torch.no_grad():
        module.key_heads["colour"].bias[COLOUR_NAMES.index("red")] = 100.0
    sure = math.log(len(SIZES)) + math.log(len(SHAPE_NAMES))
    assert module.key_attribute_loss_sum(micro, keys).item() == pytest.approx(sure, rel=1e-5)


def test_query_attribute_term_is_the_cross_entropy_of_the_named_attributes():
    """Hand-computed: zero heads give, per box step, the mean of log(V) over the attributes the expression names;
    steps past the decoder length, other tasks and expressions that name nothing count as nothing."""
    from ofa.data.world.vocab import COLOUR_NAMES, SHAPE_NAMES
    from ofa.training.module import OFALightningModule
    from ofa.training.recipe import TrainSection

    from .test_model import random_model, small_config

    model = random_model(small_config())
    module = OFALightningModule(model, TrainSection(query_attribute_weight=1.0), pad_id=1)
    for head in module.query_heads.values():
        torch.nn.init.zeros_(head.weight)
        torch.nn.init.zeros_(head.bias)
    steps = [(t, [[0.0, 0.0, 8.0, 8.0]]) for t in range(4)]
    micro = SimpleNamespace(
        batch=SimpleNamespace(
            tasks=["grounding", "grounding", "caption"],
            meta=[
                {"attend": steps, "named": [None, "red", "star"]},
                {"attend": steps, "named": [None, None, None]},
                {"attend": steps, "named": ["large", "red", "star"]},
            ],
        )
    )
    head_dim = model.config.d_model // model.config.decoder_attention_heads
    query = torch.randn(3, 2, head_dim)  # two decoder steps
    expected = (math.log(len(COLOUR_NAMES)) + math.log(len(SHAPE_NAMES))) / 2
    assert module.query_attribute_loss_sum(micro, query).item() == pytest.approx(expected, rel=1e-5)
    with torch.no_grad():
        module.query_heads["shape"].bias[SHAPE_NAMES.index("star")] = 100.0
    expected = math.log(len(COLOUR_NAMES)) / 2
    assert module.query_attribute_loss_sum(micro, query).item() == pytest.approx(expected, rel=1e-5)


def test_query_attribute_term_counts_only_the_recipes_expression_kinds():
    """`train.query_attribute_kinds`: a relation sample's named shape counts only when relations are listed; a sample
    without a kind counts as an attribute expression (zero heads: log(V) per counted sample, hand-computed)."""
    from ofa.data.world.vocab import SHAPE_NAMES
    from ofa.training.module import OFALightningModule
    from ofa.training.recipe import TrainSection

    from .test_model import random_model, small_config

    model = random_model(small_config())
    steps = [(t, [[0.0, 0.0, 8.0, 8.0]]) for t in range(4)]
    micro = SimpleNamespace(
        batch=SimpleNamespace(
            tasks=["grounding", "grounding", "grounding"],
            meta=[
                {"attend": steps, "named": [None, None, "star"], "kind": "relation"},
                {"attend": steps, "named": [None, None, "star"], "kind": "ordinal"},
                {"attend": steps, "named": [None, None, "star"]},
            ],
        )
    )
    head_dim = model.config.d_model // model.config.decoder_attention_heads
    query = torch.randn(3, 2, head_dim)
    for kinds, counted in ((["attribute"], 1), (["attribute", "relation"], 2), (["relation", "ordinal"], 2)):
        train = TrainSection(query_attribute_weight=1.0, query_attribute_kinds=kinds)
        module = OFALightningModule(model, train, pad_id=1)
        for head in module.query_heads.values():
            torch.nn.init.zeros_(head.weight)
            torch.nn.init.zeros_(head.bias)
        total = module.query_attribute_loss_sum(micro, query).item()
        assert total == pytest.approx(counted * math.log(len(SHAPE_NAMES)), rel=1e-5), kinds
