"""The `ofa` command line. Each sub-command is one small function; errors print one line and exit non-zero.

Exit codes: 0 success, 1 bad input (file, checkpoint, argument value), 2 usage error (argparse).
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable, Sequence

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

    p = add("info", cmd_info, "show the architecture of a checkpoint")
    p.add_argument("checkpoint")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from ofa.convert import CheckpointError
    from ofa.models import ConfigError

    try:
        return args.func(args)
    except (CheckpointError, ConfigError, FileNotFoundError, ValueError) as err:
        print(f"ofa {args.command}: error: {err}", file=sys.stderr)
        return EXIT_BAD_INPUT


if __name__ == "__main__":
    sys.exit(main())
