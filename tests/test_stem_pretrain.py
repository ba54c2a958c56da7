"""The `stem_pretrain` stage (dense per-patch targets of world scenes) and `train.freeze`."""

from __future__ import annotations

import json

import pytest
import torch

from ofa.data.world import World, WorldConfig
from ofa.data.world.schema import WorldObject
from ofa.data.world.vocab import COLOUR_NAMES, SHAPE_NAMES
from ofa.models.convnet import ConvStem
from ofa.training import RecipeError, recipe_from_dict
from ofa.training.stem_pretrain import IGNORE, cell_assignment, dense_targets, pretrain_stem

from .test_training import run_in_process, tiny_recipe


def _object(box: tuple[int, int, int, int], colour: str = "red", shape: str = "star", size: str = "large"):
    x0, y0, x1, y1 = box
    return WorldObject(shape, colour, size, box, ((x0 + x1) / 2, (y0 + y1) / 2), x1 - x0, 0.0, (0, 0, 0))


def test_cells_and_box_offsets_hand_computed():
    # 96 px, 6x6 grid of 16 px cells with centres at 8, 24, 40, 56, 72, 88.
    large = _object((20, 20, 52, 52), "blue", "hexagon", "large")  # holds the centres 24 and 40 on both axes
    small = _object(
        (70, 75, 82, 87), "green", "cross", "small"
    )  # holds no cell centre on y: only its own cell
    table = cell_assignment([large, small], 96, 6)
    expected = [[None] * 6 for _ in range(6)]
    for r in (1, 2):
        for c in (1, 2):
            expected[r][c] = 0
    expected[81 // 16][76 // 16] = 1
    assert table == expected

    t = dense_targets([[large, small]], 96, 6)
    assert t.colour[0, 1, 1] == COLOUR_NAMES.index("blue") and t.shape[0, 2, 2] == SHAPE_NAMES.index(
        "hexagon"
    )
    assert t.colour[0, 5, 4] == COLOUR_NAMES.index("green") and t.size[0, 5, 4] == 0 and t.size[0, 1, 2] == 1
    assert t.colour[0, 0, 0] == len(COLOUR_NAMES) and t.shape[0, 0, 0] == IGNORE  # background
    assert int(t.has_object.sum()) == 5
    # cell (1, 1) has its centre at (24, 24): edges (20, 20, 52, 52) are (-4, -4, 28, 28) px = / 16 cells
    assert torch.allclose(t.box[0, 1, 1], torch.tensor([-0.25, -0.25, 1.75, 1.75]))
    # cell (5, 4): centre (72, 88); edges (70, 75, 82, 87)
    assert torch.allclose(t.box[0, 5, 4], torch.tensor([-2, -13, 10, -1]) / 16)


def test_overlapping_cell_goes_to_the_nearest_centre():
    # 64 px, 4x4 grid, cell centres 8, 24, 40, 56. Both boxes hold the centre (24, 8) of cell (0, 1).
    left = _object((0, 0, 30, 30))  # centre (15, 15): squared distance 9**2 + 7**2 = 130
    right = _object((20, 0, 64, 30))  # centre (42, 15): squared distance 18**2 + 7**2 = 373
    table = cell_assignment([left, right], 64, 4)
    assert table[0][1] == 0
    assert (
        table[0][0] == 0 and table[0][2] == 1 and table[0][3] == 1
    )  # (8, 8) left only; (40|56, 8) right only
    assert table[1] == [0, 0, 1, 1]  # row centre y = 24 < 30: same as row 0
    assert table[2] == [None] * 4 and table[3] == [None] * 4


class _Section:
    steps, batch_size, lr, weight_decay, warmup_steps, box_weight, val_scenes = 60, 16, 3e-3, 0.0, 5, 1.0, 32


def test_pretraining_learns_colour_and_is_deterministic():
    torch.set_num_threads(1)
    world = World(WorldConfig(image_size=64, max_objects=2))
    results, weights = [], []
    for _ in range(2):
        torch.manual_seed(1)
        stem = ConvStem([8, 16, 32, 32])
        logs: list[str] = []
        results.append(pretrain_stem(stem, world, 64, _Section, seed=0, log=logs.append))
        weights.append(torch.cat([p.detach().flatten() for p in stem.parameters()]))
    summary = results[0]
    assert summary["grid"] == 4 and summary["steps"] == 60 and logs[-1].startswith("stem pre-training done")
    assert torch.equal(weights[0], weights[1]) and results[0]["val"] == results[1]["val"]
    # Size is balanced (chance 0.5); an untrained box head scores an IoU near 0.
    assert summary["val"]["size_acc"] > 0.8, summary
    assert summary["val"]["box_iou"] > 0.4, summary


def test_recipe_stage_runs_and_freeze_keeps_the_stem(tmp_path):
    from ofa.models import OFAModel

    out = tmp_path / "run"
    values = tiny_recipe(out, size=4, max_steps=3)
    values["model"]["config"].update(image_stem="convnet", convnet_channels=[8, 16, 32, 32])
    values["stem_pretrain"] = {"steps": 4, "batch_size": 4, "val_scenes": 8, "warmup_steps": 1}
    values["train"]["freeze"] = ["encoder.embed_images"]
    run_in_process(values)
    summary = json.loads((out / "stem_pretrain.json").read_text())
    assert summary["steps"] == 4 and set(summary["val"]) >= {"colour_acc", "shape_acc", "box_iou"}

    # The same run without the training steps' effect on the stem: rerun the stage alone and compare.
    from ofa.training.run import build_model, load_tokenizer

    recipe = recipe_from_dict(values)
    import lightning.pytorch as pl

    pl.seed_everything(0, verbose=False)
    fresh = build_model(recipe, load_tokenizer(recipe))
    world = World(WorldConfig(image_size=64, seed=0))
    pretrain_stem(fresh.encoder.embed_images, world, 64, recipe.stem_pretrain, seed=0, log=lambda *_: None)
    trained = OFAModel.from_pretrained(out / "final")
    stem_now = trained.encoder.embed_images.state_dict()
    for key, value in fresh.encoder.embed_images.state_dict().items():
        assert torch.equal(stem_now[key], value), key  # weights and BatchNorm running statistics unchanged
    # ... while the rest trained.
    assert not torch.equal(trained.decoder.layers[0].fc1.weight, fresh.decoder.layers[0].fc1.weight)


@pytest.mark.parametrize(
    "change, message",
    [
        ({"data": {"kind": "files"}}, "stem_pretrain: needs data.kind: world"),
        ({"model": {"init_from": "checkpoints/ofa-world-tiny", "config": {}}}, "stem of model.init_from"),
        ({"stem_pretrain": {"steps": 0}}, "stem_pretrain.steps: must be >= 1"),
        ({"stem_pretrain": {"stepz": 3}}, "stem_pretrain.stepz: unknown key"),
    ],
)
def test_stage_recipe_errors(tmp_path, change, message):
    values = tiny_recipe(tmp_path)
    values["stem_pretrain"] = {"steps": 3}
    for section, update in change.items():
        values[section] = {**values.get(section, {}), **update}
    with pytest.raises(RecipeError, match=message):
        recipe_from_dict(values)


def test_freeze_prefix_that_matches_nothing_is_one_error(tmp_path):
    values = tiny_recipe(tmp_path / "run", max_steps=1)
    values["train"]["freeze"] = ["encoder.embed_imagez"]
    with pytest.raises(RecipeError, match=r"train.freeze: \['encoder.embed_imagez'\] match no parameter"):
        run_in_process(values)


def test_lr_scale_gives_the_prefix_its_own_learning_rate(tmp_path):
    from ofa.training.module import OFALightningModule
    from ofa.training.run import build_model, load_tokenizer

    values = tiny_recipe(tmp_path / "run", lr=1e-3, warmup_steps=0, schedule="constant")
    values["train"]["lr_scale"] = {"encoder.embed_images": 0.1}
    recipe = recipe_from_dict(values)
    model = build_model(recipe, load_tokenizer(recipe))
    optimizer = OFALightningModule(model, recipe.train, pad_id=1).configure_optimizers()["optimizer"]
    stem = {id(p) for p in model.encoder.embed_images.parameters()}
    by_param = {id(p): (g["lr"], g["weight_decay"]) for g in optimizer.param_groups for p in g["params"]}
    assert sorted({by_param[i][0] for i in stem}) == pytest.approx([1e-4])
    others = {lr for i, (lr, _) in by_param.items() if i not in stem}
    assert sorted(others) == pytest.approx([1e-3])
    assert len(by_param) == len({id(p) for p in model.parameters()})  # every parameter exactly once
    # the stem's conv weights decay, its BatchNorm weights do not, as everywhere else
    modules = list(model.encoder.embed_images.modules())
    conv = next(m for m in modules if isinstance(m, torch.nn.Conv2d)).weight
    bn = next(m for m in modules if isinstance(m, torch.nn.BatchNorm2d)).weight
    assert by_param[id(conv)][1] == 0.01 and by_param[id(bn)][1] == 0.0


def test_lr_scale_prefix_that_matches_nothing_is_one_error(tmp_path):
    values = tiny_recipe(tmp_path / "run", max_steps=1)
    values["train"]["lr_scale"] = {"decoder.nothing": 0.5}
    with pytest.raises(RecipeError, match=r"train.lr_scale: \['decoder.nothing'\] match no parameter"):
        run_in_process(values)


def test_null_switches_an_optional_section_off(tmp_path):
    values = tiny_recipe(tmp_path)
    values["stem_pretrain"] = {"steps": 3}
    assert recipe_from_dict(values, ["stem_pretrain=null"]).stem_pretrain is None
    values["data"]["retrieval"] = {"batch_size": 4}
    assert recipe_from_dict(values, ["data.retrieval=null"]).data.retrieval is None
