"""Eager vs SDPA vs flex attention: one train step and one batched beam-5 caption decode on OFA-tiny.

All three kernels run side by side, interleaved round by round on the same weights and inputs, so the ratios
hold on a shared, noisy machine. Absolute times are only meaningful on a dedicated GPU: the device is printed.

    python bench/bench_attention.py            # OFA-tiny, 256 px, batch 8, 3 rounds
    python bench/bench_attention.py --quick    # smaller and faster (what `make run` shows)
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time
from pathlib import Path

import torch

from ofa.generation import GenerationConfig, generate
from ofa.models import OFAConfig, OFAModel

IMPLEMENTATIONS = ("eager", "sdpa", "flex")


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def make_inputs(config: OFAConfig, batch: int, image_size: int, device: torch.device):
    g = torch.Generator().manual_seed(0)
    prompt = torch.randint(4, config.text_vocab_size, (batch, 8), generator=g)
    prompt[:, 0], prompt[:, -1] = config.bos_token_id, config.eos_token_id
    images = torch.randn(batch, 3, image_size, image_size, generator=g)
    target = torch.randint(4, config.text_vocab_size, (batch, 17), generator=g)
    target[:, 0] = config.bos_token_id
    return prompt.to(device), images.to(device), target.to(device)


def train_step(model: OFAModel, optimizer, prompt, images, target) -> None:
    logits = model(prompt, images, target[:, :-1])
    loss = torch.nn.functional.cross_entropy(logits.flatten(0, 1), target[:, 1:].flatten())
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()


def beam_decode(model: OFAModel, prompt, images) -> None:
    settings = GenerationConfig(beam_size=5, max_len_b=16, no_repeat_ngram_size=3)  # official caption search
    with torch.no_grad():
        generate(model, {"input_ids": prompt, "patch_images": images}, settings)


def run(args: argparse.Namespace) -> dict:
    device = torch.device(args.device)
    torch.manual_seed(0)
    config = OFAConfig.preset("tiny", dropout=0.0, image_size=args.image_size)
    model = OFAModel(config).to(device)
    prompt, images, target = make_inputs(config, args.batch, args.image_size, device)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-5)
    times: dict[str, dict[str, list[float]]] = {
        impl: {"train_step": [], "beam5_decode": []} for impl in IMPLEMENTATIONS
    }
    for round_index in range(args.rounds + 1):  # round 0 warms up (and compiles flex on GPU)
        for impl in IMPLEMENTATIONS:
            model.set_attn_implementation(impl)
            for name, fn in (
                ("train_step", lambda: train_step(model.train(), optimizer, prompt, images, target)),
                ("beam5_decode", lambda: beam_decode(model.eval(), prompt, images)),
            ):
                if impl == "flex" and name == "train_step" and device.type == "cpu":
                    continue  # flex_attention has no CPU backward; training there uses the SDPA kernel
                _sync(device)
                start = time.perf_counter()
                fn()
                _sync(device)
                if round_index > 0:
                    times[impl][name].append(time.perf_counter() - start)
    result = {
        "device": torch.cuda.get_device_name(device)
        if device.type == "cuda"
        else f"CPU ({platform.processor() or platform.machine()}, {torch.get_num_threads()} threads)",
        "torch": torch.__version__,
        "config": {
            "preset": "tiny",
            "batch": args.batch,
            "image_size": args.image_size,
            "rounds": args.rounds,
        },
        "median_seconds": {
            impl: {k: statistics.median(v) if v else None for k, v in d.items()} for impl, d in times.items()
        },
    }
    eager = result["median_seconds"]["eager"]
    result["ratio_vs_eager"] = {
        impl: {k: eager[k] / v if v else None for k, v in d.items()}
        for impl, d in result["median_seconds"].items()
    }
    return result


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--quick", action="store_true", help="batch 2, 128 px, 1 round")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--image-size", type=int, default=256)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--json", type=Path, default=Path("outputs/bench_attention.json"))
    args = parser.parse_args()
    if args.quick:
        args.batch, args.image_size, args.rounds = 2, 128, 1
    result = run(args)
    print(f"device: {result['device']}   torch {result['torch']}   {result['config']}")
    print(f"{'kernel':8s} {'train step (s)':>15s} {'x eager':>8s} {'beam-5 decode (s)':>18s} {'x eager':>8s}")
    for impl in IMPLEMENTATIONS:
        sec, ratio = result["median_seconds"][impl], result["ratio_vs_eager"][impl]
        cells = [f"{v:.3f}" if v is not None else "n/a" for v in (sec["train_step"], sec["beam5_decode"])]
        ratios = [f"{v:.2f}" if v is not None else "-" for v in (ratio["train_step"], ratio["beam5_decode"])]
        print(f"{impl:8s} {cells[0]:>15s} {ratios[0]:>8s} {cells[1]:>18s} {ratios[1]:>8s}")
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(result, indent=2))
    print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
