"""The `ofa` command line. Each sub-command is one small function; errors print one line and exit non-zero.

Exit codes: 0 success, 1 bad input (file, checkpoint, argument value), 2 usage error (argparse).
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

EXIT_OK, EXIT_BAD_INPUT = 0, 1

DTYPES = {
    "float32": "float32",
    "fp32": "float32",
    "float16": "float16",
    "fp16": "float16",
    "bfloat16": "bfloat16",
    "bf16": "bfloat16",
}


def _dtype(name: str):
    import torch

    return getattr(torch, DTYPES[name])


def cmd_convert(args: argparse.Namespace) -> int:
    """Convert an official HF-port folder or fairseq `.pt` (or our own format) into our format."""
    from ofa.models import OFAModel

    model = OFAModel.from_pretrained(args.src)
    model.save_pretrained(args.dst, dtype=_dtype(args.dtype) if args.dtype else None)
    summary = {
        "source": str(args.src),
        "destination": str(args.dst),
        "parameters": model.num_parameters(),
        "d_model": model.config.d_model,
        "layers": [model.config.encoder_layers, model.config.decoder_layers],
    }
    print(
        json.dumps(summary)
        if args.json
        else f"wrote {args.dst} ({summary['parameters'] / 1e6:.1f}M parameters)"
    )
    return EXIT_OK


def cmd_info(args: argparse.Namespace) -> int:
    """Print the architecture a checkpoint describes, without building the model."""
    from ofa.convert import detect_format, load_checkpoint

    kind = detect_format(args.checkpoint)
    config, state = load_checkpoint(args.checkpoint)
    values = {"format": kind, "tensors": len(state), **config.to_dict()}
    if args.json:
        print(json.dumps(values, indent=2))
    else:
        for key, value in values.items():
            print(f"{key:28s} {value}")
    return EXIT_OK


def cmd_train(args: argparse.Namespace) -> int:
    """Train (or resume) from a YAML recipe; `key=value` overrides use dotted recipe paths (train.max_steps=30).

    Multi-device and multi-node runs use Lightning's launchers: `train.devices` / `train.num_nodes`, with
    MASTER_ADDR, MASTER_PORT, NODE_RANK (and WORLD_SIZE, LOCAL_RANK) in the environment, or torchrun.
    """
    from ofa.training import load_recipe
    from ofa.training.run import train

    recipe = load_recipe(args.recipe, args.overrides)
    result = train(recipe)
    if result.is_global_zero:
        summary = {
            "output_dir": str(result.output_dir),
            "final": str(result.final_dir),
            "global_step": result.global_step,
            "resumed_from": None if result.resumed_from is None else str(result.resumed_from),
        }
        print(
            json.dumps(summary)
            if args.json
            else f"trained {result.global_step} steps; wrote {result.final_dir}"
        )
    return EXIT_OK


def cmd_eval(args: argparse.Namespace) -> int:
    """Score a checkpoint on one task: a split of the synthetic world or a data file; prints a table."""
    from ofa.evaluation.harness import evaluate

    search = {"beam_size": args.beam} if args.beam else {}
    results = evaluate(
        args.checkpoint, args.task, split=args.split, data=args.data, lang=args.lang, samples=args.samples,
        batch_size=args.batch_size, device=args.device, **search,
    )  # fmt: skip
    if args.json_path:
        Path(args.json_path).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json_path).write_text(json.dumps(results, indent=2) + "\n")
    if args.json:
        print(json.dumps(results))
    else:
        print(f"{args.task} ({args.lang}) on {args.split or args.data}")
        for key, value in results.items():
            print(f"  {key:18s} {value:.4f}" if isinstance(value, float) else f"  {key:18s} {value}")
    return EXIT_OK


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="ofa", description="Unified OFA-style multimodal models.")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def add(name: str, fn: Callable[[argparse.Namespace], int], help_text: str) -> argparse.ArgumentParser:
        p = sub.add_parser(name, help=help_text, description=fn.__doc__)
        p.add_argument("--json", action="store_true", help="print machine-readable JSON")
        p.set_defaults(func=fn)
        return p

    p = add("convert", cmd_convert, "convert an official checkpoint into our format")
    p.add_argument("src", help="official HF-port folder, fairseq .pt file, or one of our checkpoints")
    p.add_argument("dst", help="output folder (config.json + model.safetensors)")
    p.add_argument("--dtype", choices=sorted(DTYPES), help="store floating weights in this precision")

    p = add("eval", cmd_eval, "score a checkpoint on a task")
    p.add_argument("checkpoint", help="a checkpoint folder (model + tokenizer)")
    p.add_argument("--task", required=True, help="task name, e.g. caption or grounding")
    source = p.add_mutually_exclusive_group(required=True)
    source.add_argument("--split", help="a split of the synthetic world: train, val, test or heldout")
    source.add_argument("--data", help="a data file (COCO caption .json or referring-expression .jsonl)")
    p.add_argument("--lang", default="en", choices=["en", "zh"])
    p.add_argument("--samples", type=int, default=500, help="how many samples to score (default 500)")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--beam", type=int, help="beam size (default: the task's)")
    p.add_argument("--device", default="cpu")
    p.add_argument("--json-path", metavar="PATH", help="also write the metrics as a flat JSON object here")

    p = add("info", cmd_info, "show the architecture of a checkpoint")
    p.add_argument("checkpoint")

    p = add("train", cmd_train, "train a model from a YAML recipe")
    p.add_argument("recipe", help="recipe file, e.g. tasks/world/tiny.yaml")
    p.add_argument(
        "overrides", nargs="*", metavar="KEY=VALUE", help="dotted recipe overrides, e.g. train.max_steps=30"
    )
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from ofa.convert import CheckpointError
    from ofa.models import ConfigError

    try:
        return args.func(args)
    except (CheckpointError, ConfigError, FileNotFoundError, ValueError, OSError) as err:
        print(f"ofa {args.command}: error: {err}", file=sys.stderr)
        return EXIT_BAD_INPUT


if __name__ == "__main__":
    sys.exit(main())
