"""`ofa eval` end to end on a small random checkpoint: the plumbing, the JSON output and the exit codes."""

from __future__ import annotations

import json

import pytest
import torch

from ofa.cli import main
from ofa.models import OFAConfig, OFAModel
from ofa.tokenization import OFATokenizer
from tests.conftest import REPO


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    folder = tmp_path_factory.mktemp("ckpt")
    tokenizer = OFATokenizer.from_pretrained(REPO / "tokenizers" / "world")
    torch.manual_seed(0)
    config = OFAConfig(
        vocab_size=tokenizer.vocab_size, num_codes=tokenizer.num_codes, num_bins=tokenizer.num_bins, d_model=32,
        encoder_layers=1, decoder_layers=1, encoder_attention_heads=2, decoder_attention_heads=2,
        encoder_ffn_dim=64, decoder_ffn_dim=64, resnet_layers=[1, 1, 1], resnet_width=8, image_size=64,
    )  # fmt: skip
    OFAModel(config).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


@pytest.mark.parametrize(
    "task, lang, keys",
    [
        ("grounding", "zh", {"Acc@0.5", "mean_IoU"}),
        ("caption", "zh", {"CIDEr", "BLEU-4", "ROUGE-L", "object_f1", "object_precision", "object_recall"}),
    ],
)
def test_eval_writes_flat_json(checkpoint, tmp_path, capsys, task, lang, keys):
    out = tmp_path / "m.json"
    code = main(
        ["eval", str(checkpoint), "--task", task, "--split", "val", "--lang", lang, "--samples", "6",
         "--beam", "2", "--json-path", str(out)]
    )  # fmt: skip
    assert code == 0
    metrics = json.loads(out.read_text())
    assert keys <= set(metrics) and metrics["samples"] == 6
    assert all(0.0 <= metrics[k] <= 10.0 for k in keys)
    assert task in capsys.readouterr().out


def test_eval_errors_exit_1_with_one_line(checkpoint, tmp_path, capsys):
    assert main(["eval", str(tmp_path / "missing"), "--task", "caption", "--split", "val"]) == 1
    assert main(["eval", str(checkpoint), "--task", "vqa", "--split", "val"]) == 1
    assert main(["eval", str(checkpoint), "--task", "caption", "--data", str(tmp_path / "none.json")]) == 1
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 3 and all(line.startswith("ofa eval: error:") for line in lines)


def test_eval_uses_the_checkpoint_recipe_search_then_the_command_line(checkpoint, tmp_path, monkeypatch):
    import shutil

    from ofa.evaluation import harness

    folder = tmp_path / "with_recipe"
    shutil.copytree(checkpoint, folder)
    (folder / "recipe.yaml").write_text(
        "data: {max_target_length: 40}\neval: {search: {caption: {beam_size: 3, max_len_b: 7}}}\n"
    )
    seen = {}

    def fake_predict(model, task, examples, batch_size, **search):
        seen.update(search, max_target_length=task.max_target_length)
        return ["a small red circle"] * len(examples)

    monkeypatch.setattr(harness, "predict", fake_predict)
    monkeypatch.setattr("ofa.tasks.caption.CaptionTask.score", lambda self, predictions, examples: {})
    harness.evaluate(folder, "caption", split="val", samples=2)
    assert seen == {"beam_size": 3, "max_len_b": 7, "max_target_length": 40}
    seen.clear()
    harness.evaluate(folder, "caption", split="val", samples=2, beam_size=1)
    assert seen["beam_size"] == 1 and seen["max_len_b"] == 7
