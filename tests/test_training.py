"""Training: recipes, the deterministic stream, loss decrease, exact resume, DDP / multi-node equivalence, export.

All on CPU with a tiny model; each run uses one intra-op thread (much faster on a busy 2-core machine).
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

from ofa.cli import main
from ofa.training import RecipeError, load_recipe, recipe_from_dict

REPO = Path(__file__).resolve().parents[1]
SUBPROCESS_TIMEOUT = 240

TINY_MODEL = {
    "d_model": 32,
    "encoder_layers": 1,
    "decoder_layers": 1,
    "encoder_attention_heads": 2,
    "decoder_attention_heads": 2,
    "encoder_ffn_dim": 64,
    "decoder_ffn_dim": 64,
    "resnet_layers": [1, 1, 1],
    "resnet_width": 8,
    "image_size": 64,
    "code_image_size": 64,
    "max_source_positions": 64,
    "max_target_positions": 32,
    "image_bucket_size": 8,
    "token_bucket_size": 32,
    "dropout": 0.0,
}


def tiny_recipe(output_dir: Path, size: int | None = None, **train: object) -> dict:
    mixture = [
        {"task": "caption", "lang": "en"},
        {"task": "caption", "lang": "zh"},
        {"task": "grounding", "lang": "en"},
        {"task": "grounding", "lang": "zh"},
    ]
    if size is not None:
        for comp in mixture:
            comp["size"] = size
    return {
        "model": {"config": dict(TINY_MODEL)},
        "tokenizer": {"path": "tokenizers/world"},
        "data": {
            "world": {"seed": 0, "image_size": 64},
            "mixture": mixture,
            "max_source_length": 40,
            "max_target_length": 20,
            "num_workers": 0,
        },
        "train": {
            "max_steps": 8,
            "batch_size": 8,
            "lr": 2e-3,
            "warmup_steps": 2,
            "schedule": "cosine",
            "min_lr_ratio": 0.1,
            "accelerator": "cpu",
            "devices": 1,
            "num_threads": 1,
            "checkpoint_every": 1000,
            "eval_every": 0,
            "log_every": 1,
            "progress_bar": "none",
            "output_dir": str(output_dir),
            "resume": "auto",
            **train,
        },
        "eval": {"samples": 2, "batch_size": 2, "search": {"caption": {"beam_size": 2, "max_len_b": 6}}},
    }


def write(path: Path, values: dict) -> Path:
    path.write_text(yaml.safe_dump(values, allow_unicode=True))
    return path


def run_in_process(values: dict, callbacks: list | None = None):
    from ofa.training.run import train

    threads = torch.get_num_threads()
    try:
        return train(recipe_from_dict(values), callbacks=callbacks)
    finally:
        torch.set_num_threads(threads)


def losses(output_dir: Path, key: str = "loss") -> list[float]:
    from ofa.training.run import read_history

    history = read_history(output_dir)
    return [history[s][key] for s in sorted(history)]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def cli_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("LOCAL_RANK", "NODE_RANK", "WORLD_SIZE", "RANK")}
    env.update({"OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO), "PYTHONUNBUFFERED": "1", **extra})
    return env


# ------------------------------------------------------------------------------------------------ recipes
def test_shipped_recipe_validates():
    recipe = load_recipe(REPO / "tasks/world/tiny.yaml", ["train.max_steps=30", "model.config.d_model=128"])
    assert recipe.train.max_steps == 30 and recipe.model.config["d_model"] == 128
    assert {(c.task, c.lang) for c in recipe.data.mixture} == {
        ("caption", "en"),
        ("caption", "zh"),
        ("grounding", "en"),
        ("grounding", "zh"),
    }
    assert recipe.train.label_smoothing == 0.1 and recipe.train.precision == "bf16-mixed"
    assert recipe.train.referent_attention_weight == 1.0
    assert recipe.train.key_attribute_weight == 1.0 and recipe.train.query_attribute_weight == 1.0


@pytest.mark.parametrize(
    ("path", "value", "message"),
    [
        (("train", "max_step"), 3, "train.max_step: unknown key"),
        (("model", "config", "d_modle"), 3, "model.config.d_modle: unknown key"),
        (("data", "world", "colour"), "red", "data.world.colour: unknown key"),
        (("eval", "search", "caption", "beam"), 2, "eval.search.caption.beam: unknown key"),
        (("train", "lr"), "fast", "train.lr: expected float"),
        (("train", "schedule"), "exp", "train.schedule: expected"),
        (("train", "gradient_checkpointing"), "yes", "train.gradient_checkpointing: expected bool"),
        (
            ("train", "referent_attention_weight"),
            -1.0,
            "train.referent_attention_weight: must be >= 0, got -1.0",
        ),
        (
            ("train", "attention_layers"),
            [],
            "train.attention_layers: expected distinct layer indices, got []",
        ),
        (("train", "attention_layers"), [1, 1], "train.attention_layers: expected distinct layer indices"),
        (("train", "attention_heads"), 0, "train.attention_heads: must be >= 1, got 0"),
        (("data", "samples_per_scene"), 0, "data.samples_per_scene: must be >= 1, got 0"),
    ],
)
def test_recipe_rejects_bad_keys_and_types(tmp_path, path, value, message):
    values = tiny_recipe(tmp_path / "out")
    node = values
    for part in path[:-1]:
        node = node.setdefault(part, {})
    node[path[-1]] = value
    file = write(tmp_path / "bad.yaml", values)
    with pytest.raises((RecipeError, ValueError)) as info:
        load_recipe(file)
    text = str(info.value)
    assert message in text and "\n" not in text and str(file) in text


def test_mixture_item_unknown_key_names_index(tmp_path):
    values = tiny_recipe(tmp_path / "out")
    values["data"]["mixture"][1]["wieght"] = 2
    with pytest.raises(RecipeError, match=r"data\.mixture\.1\.wieght: unknown key"):
        load_recipe(write(tmp_path / "r.yaml", values))


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("train.max_steps", "expected dotted.key=value"),
        ("train.max_steps=ten", "train.max_steps: expected int"),
        ("train.bogus=1", "train.bogus: unknown key"),
        ("data.mixture.9.weight=1", "no such list item"),
        ("train.betas=[0.9", "not valid YAML"),
    ],
)
def test_bad_overrides(tmp_path, override, message):
    file = write(tmp_path / "r.yaml", tiny_recipe(tmp_path / "out"))
    with pytest.raises(RecipeError, match=message):
        load_recipe(file, [override])


def test_overrides_use_yaml_types(tmp_path):
    file = write(tmp_path / "r.yaml", tiny_recipe(tmp_path / "out"))
    recipe = load_recipe(
        file,
        ["train.betas=[0.9, 0.98]", "data.mixture.0.weight=3", "train.clip_grad_norm=null", "train.lr=3e-4"],
    )
    assert recipe.train.betas == [0.9, 0.98] and recipe.data.mixture[0].weight == 3.0
    assert recipe.train.clip_grad_norm is None and recipe.train.lr == 3e-4


def test_cli_train_error_is_one_line(tmp_path, capsys):
    file = write(tmp_path / "r.yaml", tiny_recipe(tmp_path / "out"))
    assert main(["train", str(file), "train.bogus=1"]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("ofa train: error:") and "train.bogus" in err[0]
    assert main(["train", str(tmp_path / "missing.yaml")]) == 1
    assert len(capsys.readouterr().err.strip().splitlines()) == 1


# -------------------------------------------------------------------------------------------------- data
def test_stream_layouts_cover_the_same_global_batch(tmp_path):
    from ofa.training.data import WindowSampler

    one = WindowSampler(16, 1, 0, 1, start_step=3).indices(3)
    split = [
        WindowSampler(16, w, r, a, start_step=3).indices(3) for w, a in ((2, 2), (4, 1)) for r in range(w)
    ]
    assert one == list(range(48, 64))
    assert sorted(sum(split[:2], [])) == one and sorted(sum(split[2:], [])) == one
    with pytest.raises(RecipeError, match="not divisible"):
        WindowSampler(10, 4, 0, 1)


def test_stream_is_deterministic_and_mixes_tasks(tmp_path):
    from ofa.training.data import MixtureDataModule
    from ofa.training.run import load_tokenizer

    recipe = recipe_from_dict(tiny_recipe(tmp_path / "out"))
    tok = load_tokenizer(recipe)
    a, b = MixtureDataModule(recipe, tok, 64).dataset, MixtureDataModule(recipe, tok, 64).dataset
    for g in (0, 5, 123):
        x, y = a[g], b[g]
        assert (x.task, x.source, x.target) == (y.task, y.source, y.target)
        assert torch.equal(x.image, y.image)
    picked = {a.components[a.component(g)].task + a.components[a.component(g)].lang for g in range(200)}
    assert picked == {"captionen", "captionzh", "groundingen", "groundingzh"}


def test_samples_per_scene_groups_share_component_and_scene_with_distinct_referents(tmp_path):
    from ofa.training.data import MixtureDataModule
    from ofa.training.run import load_tokenizer

    values = tiny_recipe(tmp_path / "out")
    values["data"]["samples_per_scene"] = 3
    recipe = recipe_from_dict(values)
    dataset = MixtureDataModule(recipe, load_tokenizer(recipe), 64).dataset
    groups = [[dataset.component(g) for g in range(3 * q, 3 * q + 3)] for q in range(60)]
    assert all(len(set(group)) == 1 for group in groups)
    assert len({group[0] for group in groups}) == 4  # groups still draw every component
    source = next(s for s in dataset.sources if s.task == "grounding")
    world, crowded = source.world, 0
    for q in range(40):
        scene = world.scene("train", q)
        samples = [source[3 * q + slot] for slot in range(3)]
        assert {s["id"] for s in samples} == {f"train/{q}"}
        refs = {(r.text, tuple(r.box)) for r in scene.refs_for(source.lang)}
        assert all((s["text"], tuple(s["box"])) in refs for s in samples)
        referents = {r.target_index for r in scene.refs_for(source.lang)}
        boxes = {tuple(s["box"]) for s in samples}
        assert len(boxes) == min(3, len(referents))  # different objects while the scene has them
        crowded += len(referents) >= 3
    assert crowded > 5
    values["data"]["kind"] = "files"
    with pytest.raises(RecipeError, match="data.samples_per_scene: only read with data.kind: world"):
        recipe_from_dict(values)


def test_task_options_reach_the_task_and_are_checked(tmp_path):
    from ofa.training.data import MixtureDataModule
    from ofa.training.run import load_tokenizer

    values = tiny_recipe(tmp_path / "out")
    values["data"]["task_options"] = {"caption": {"train_target": "first"}}
    recipe = recipe_from_dict(values)
    assert MixtureDataModule(recipe, load_tokenizer(recipe), 64).tasks["caption"].train_target == "first"
    for options, message in (
        ({"captioning": {}}, "unknown tasks"),
        ({"caption": {"train_target": "longest"}}, "train_target must be one of"),
        ({"caption": {"bogus": 1}}, "bogus"),
    ):
        values["data"]["task_options"] = options
        recipe = recipe_from_dict(values)
        with pytest.raises(RecipeError, match=message):
            MixtureDataModule(recipe, load_tokenizer(recipe), 64)


# -------------------------------------------------------------------------------------------------- runs
def test_loss_decreases_and_final_export_loads(tmp_path):
    from ofa.models import OFAModel
    from ofa.tokenization import OFATokenizer

    out = tmp_path / "run"
    values = tiny_recipe(out, size=4, max_steps=30, lr=3e-3, schedule="constant", warmup_steps=0)
    result = run_in_process(values)
    curve = losses(out)
    assert len(curve) == 30
    first, last = sum(curve[:5]) / 5, sum(curve[-5:]) / 5
    assert last < first - 0.5, curve

    final = result.final_dir
    model = OFAModel.from_pretrained(final)
    tok = OFATokenizer.from_pretrained(final)
    assert model.config.vocab_size == tok.vocab_size == 554 + 512 + 256  # text, <code_k>, <bin_k>
    assert (model.config.num_codes, model.config.num_bins) == (tok.num_codes, tok.num_bins)
    assert load_recipe(final / "recipe.yaml").train.max_steps == 30
    assert not (out / "checkpoints").exists()  # checkpoint_every=1000 > max_steps


def denormal_survives() -> bool:
    """Does a denormal float32 (2**-140) survive arithmetic? False while the CPU flushes denormals to zero."""
    return bool((torch.tensor([2.0**-140]) * 1.0).item() != 0)


@pytest.mark.parametrize("flush", [True, False])
def test_flush_denormal_holds_during_the_run_and_is_restored(tmp_path, flush):
    import lightning.pytorch as pl

    if not torch.set_flush_denormal(True):
        pytest.skip("this CPU cannot flush denormals (no SSE3)")
    torch.set_flush_denormal(False)
    assert denormal_survives()
    seen: list[bool] = []

    class Probe(pl.Callback):
        def on_train_batch_end(self, *args: object) -> None:
            seen.append(denormal_survives())

    run_in_process(
        tiny_recipe(tmp_path / "run", size=2, max_steps=2, flush_denormal=flush), callbacks=[Probe()]
    )
    assert seen == [not flush, not flush]
    assert denormal_survives()  # the process is left as it was


class Interrupt(Exception):
    pass


def test_resume_reproduces_the_uninterrupted_run(tmp_path):
    import lightning.pytorch as pl
    from safetensors.torch import load_file

    class KillAt(pl.Callback):
        def on_train_batch_start(self, trainer, *args):
            if trainer.global_step == 6:
                raise Interrupt()

    settings = {"max_steps": 10, "checkpoint_every": 4, "accumulate_grad_batches": 2, "warmup_steps": 3}
    base = tiny_recipe(tmp_path / "a", **settings)
    # dropout and the factorized stem's colour jitter draw from the RNG the checkpoint must restore
    noisy = {"dropout": 0.2, "attention_dropout": 0.1, "stem_colour_channels": 4, "stem_colour_jitter": True}
    base["model"]["config"].update(noisy)
    run_in_process(base)
    uninterrupted = losses(tmp_path / "a")

    resumed = tiny_recipe(tmp_path / "b", **settings)
    resumed["model"]["config"].update(noisy)
    resumed["data"]["num_workers"] = 1  # also: worker processes give the same stream
    with pytest.raises(Interrupt):
        run_in_process(resumed, callbacks=[KillAt()])
    assert sorted(p.name for p in (tmp_path / "b" / "checkpoints").iterdir()) == ["step=000004.ckpt"]
    assert len(losses(tmp_path / "b")) == 6
    result = run_in_process(resumed)  # resume: auto -> step=000004.ckpt
    assert result.resumed_from is not None and result.resumed_from.name == "step=000004.ckpt"
    again = losses(tmp_path / "b")

    assert len(again) == len(uninterrupted) == 10
    assert again == pytest.approx(uninterrupted, abs=1e-6, rel=0)
    wa, wb = (
        load_file(tmp_path / "a/final/model.safetensors"),
        load_file(tmp_path / "b/final/model.safetensors"),
    )
    assert all(torch.allclose(wa[k], wb[k], atol=1e-6) for k in wa)
    # Checkpoints are plain tensors and values: they load with weights_only=True.
    ckpt = torch.load(tmp_path / "b/checkpoints/step=000008.ckpt", weights_only=True)
    assert ckpt["global_step"] == 8 and ckpt["MixtureDataModule"]["samples_seen"] == 64

    # `ofa export` turns a step checkpoint into a model folder with exactly the checkpoint's weights.
    from ofa.cli import main
    from ofa.models import OFAModel

    assert main(["export", str(tmp_path / "b/checkpoints/step=000008.ckpt"), str(tmp_path / "step8")]) == 0
    exported = OFAModel.from_pretrained(tmp_path / "step8").state_dict()
    raw = {k.removeprefix("model."): v for k, v in ckpt["state_dict"].items() if k.startswith("model.")}
    assert raw.keys() <= exported.keys() and all(torch.equal(exported[k], raw[k]) for k in raw)
    assert main(["export", str(tmp_path / "missing.ckpt"), str(tmp_path / "x")]) == 1
    (tmp_path / "b/checkpoints/junk.ckpt").write_bytes(b"not a checkpoint")
    assert main(["export", str(tmp_path / "b/checkpoints/junk.ckpt"), str(tmp_path / "x")]) == 1


def test_ddp_and_multinode_match_one_process(tmp_path):
    # dropout 0: same maths everywhere; the referent terms are averaged over the global batch too
    settings = {
        "max_steps": 4,
        "batchnorm": "frozen",
        "warmup_steps": 1,
        "referent_cell_weight": 1.0,
        "referent_attention_weight": 0.5,
    }
    single = tiny_recipe(tmp_path / "single", **settings)
    run_in_process(single)
    reference = losses(tmp_path / "single")
    referent = losses(tmp_path / "single", "referent_loss")

    accumulated = tiny_recipe(tmp_path / "accum", accumulate_grad_batches=2, **settings)
    run_in_process(accumulated)
    assert losses(tmp_path / "accum") == pytest.approx(reference, abs=1e-5, rel=0)
    assert losses(tmp_path / "accum", "referent_loss") == pytest.approx(referent, abs=1e-5, rel=0)

    recipe = write(tmp_path / "r.yaml", tiny_recipe(tmp_path / "unused", **settings))
    cli = [sys.executable, "-m", "ofa.cli", "train", str(recipe)]

    ddp_out = tmp_path / "ddp"
    proc = subprocess.run(
        [*cli, f"train.output_dir={ddp_out}", "train.devices=2", "train.strategy=ddp"],
        cwd=REPO,
        env=cli_env(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(free_port())),
        capture_output=True,
        text=True,
        timeout=SUBPROCESS_TIMEOUT,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert losses(ddp_out) == pytest.approx(reference, abs=1e-5, rel=0)
    assert losses(ddp_out, "referent_loss") == pytest.approx(referent, abs=1e-5, rel=0)

    nodes_out, port = tmp_path / "nodes", free_port()
    procs = [
        subprocess.Popen(
            [
                *cli,
                f"train.output_dir={nodes_out}",
                "train.devices=1",
                "train.num_nodes=2",
                "train.strategy=ddp",
            ],
            cwd=REPO,
            env=cli_env(
                MASTER_ADDR="127.0.0.1",
                MASTER_PORT=str(port),
                NODE_RANK=str(rank),
                WORLD_SIZE="2",
                LOCAL_RANK="0",
            ),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for rank in (0, 1)
    ]
    try:
        outputs = [p.communicate(timeout=SUBPROCESS_TIMEOUT) for p in procs]
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
    for p, (_, err) in zip(procs, outputs):
        assert p.returncode == 0, err[-3000:]
    assert losses(nodes_out) == pytest.approx(reference, abs=1e-5, rel=0)
    assert losses(nodes_out, "referent_loss") == pytest.approx(referent, abs=1e-5, rel=0)


def test_a_null_tokenizer_path_takes_the_init_from_checkpoints_own_tokenizer(tmp_path: Path) -> None:
    from ofa.models import OFAConfig, OFAModel
    from ofa.tokenization import OFATokenizer
    from ofa.training.run import build_model, load_tokenizer

    # a checkpoint trained with another vocabulary than the default one (64 bins instead of 256)
    theirs = OFATokenizer.from_pretrained(REPO / "tokenizers/world", num_bins=64)
    default = OFATokenizer.from_pretrained(REPO / "tokenizers/world")
    assert theirs.vocab_size != default.vocab_size
    vocab = {"vocab_size": theirs.vocab_size, "num_codes": theirs.num_codes, "num_bins": theirs.num_bins}
    checkpoint = tmp_path / "ckpt"
    OFAModel(OFAConfig(**TINY_MODEL, **vocab)).save_pretrained(checkpoint)
    theirs.save_pretrained(checkpoint)

    values = tiny_recipe(tmp_path / "out")
    values["model"] = {"init_from": str(checkpoint)}
    values["tokenizer"] = {"path": None}
    recipe = recipe_from_dict(values)
    loaded = load_tokenizer(recipe)
    assert (loaded.vocab_size, loaded.num_bins) == (theirs.vocab_size, 64)
    assert build_model(recipe, loaded).config.num_bins == 64

    # naming the default tokenizer explicitly keeps the clear mismatch error
    values["tokenizer"] = {"path": "tokenizers/world"}
    recipe = recipe_from_dict(values)
    with pytest.raises(
        RecipeError, match=f"vocab_size={theirs.vocab_size}, the tokenizer gives {default.vocab_size}"
    ):
        build_model(recipe, load_tokenizer(recipe))

    # without init_from, null is the default tokenizer
    values = tiny_recipe(tmp_path / "out")
    values["tokenizer"] = {"path": None}
    assert load_tokenizer(recipe_from_dict(values)).vocab_size == default.vocab_size


def test_a_null_tokenizer_path_names_what_is_missing(tmp_path: Path) -> None:
    from ofa.training.run import load_tokenizer

    values = tiny_recipe(tmp_path / "out")
    values["tokenizer"] = {"path": None}
    values["model"] = {"init_from": str(tmp_path / "nowhere")}
    with pytest.raises(RecipeError, match="model.init_from: .*nowhere is not a checkpoint folder"):
        load_tokenizer(recipe_from_dict(values))
    (tmp_path / "bare").mkdir()
    values["model"] = {"init_from": str(tmp_path / "bare")}
    with pytest.raises(RecipeError, match="no usable tokenizer files in .*bare.*; set tokenizer.path"):
        load_tokenizer(recipe_from_dict(values))
