"""Text-to-image speed: seconds per picture at batch 1 and batch 16, with and without the decoder's KV cache.

`--checkpoint DIR` times a trained checkpoint (with its `image_tokenizer/`); by default a random-weight model of
the world recipe's size (tasks/world/tiny.yaml: d_model 192, 2+2 layers, 8x8 code
grid) with the world tokenizer and a random world image tokenizer (64 px, 512 codes). Each picture is
sampled with classifier-free guidance (so the decoder runs twice the rows) for exactly 64 code steps, then
decoded by the image tokenizer. Settings run interleaved round by round, so ratios hold on a shared machine.

    python bench/bench_imagine.py                      # batches 1 and 16, 2 rounds
    python bench/bench_imagine.py --rounds 1 --json m.json
    python bench/bench_imagine.py --checkpoint checkpoints/ofa-world-tiny
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time
from pathlib import Path

import torch

from ofa.generation import generate
from ofa.models import OFAConfig, OFAModel
from ofa.tasks import collate
from ofa.tasks.text_to_image import TextToImageTask
from ofa.tokenization import OFATokenizer
from ofa.tokenization.image import ImageTokenizer, ImageTokenizerConfig

REPO = Path(__file__).resolve().parents[1]
# The architecture of tasks/world/tiny.yaml's `model.config` (the vocabulary comes from the tokenizer).
WORLD_MODEL = {
    "d_model": 192, "encoder_layers": 2, "decoder_layers": 2, "encoder_attention_heads": 4,
    "decoder_attention_heads": 4, "encoder_ffn_dim": 768, "decoder_ffn_dim": 768, "scale_attn": False,
    "scale_fc": False, "scale_heads": False, "resnet_layers": [1, 1, 1], "resnet_width": 32, "image_size": 96,
    "code_image_size": 64, "max_source_positions": 256, "max_target_positions": 256, "dropout": 0.0,
}  # fmt: skip
PROMPTS = ["a red circle left of a blue star", "two small green squares", "一个大的黄色六边形"]


def build(device: torch.device, checkpoint: Path | None = None) -> tuple[OFAModel, TextToImageTask]:
    if checkpoint is not None:  # a trained checkpoint with its image_tokenizer/ folder
        from ofa.evaluation.harness import checkpoint_image_tokenizer

        model = OFAModel.from_pretrained(checkpoint, device=device).eval()
        image_tokenizer = checkpoint_image_tokenizer(checkpoint, str(device))
        return model, TextToImageTask(
            OFATokenizer.from_pretrained(checkpoint), image_tokenizer=image_tokenizer
        )
    tokenizer = OFATokenizer.from_pretrained(REPO / "tokenizers" / "world")
    torch.manual_seed(0)
    config = OFAConfig(
        vocab_size=tokenizer.vocab_size,
        num_codes=tokenizer.num_codes,
        num_bins=tokenizer.num_bins,
        **WORLD_MODEL,
    )
    model = OFAModel(config).to(device).eval()
    # Random weights: the timing does not depend on them (FSQ has no codebook to initialise).
    image_tokenizer = ImageTokenizer(ImageTokenizerConfig.world()).to(device).eval()
    return model, TextToImageTask(tokenizer, image_tokenizer=image_tokenizer)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


@torch.no_grad()
def time_batch(model, task, batch: int, use_cache: bool, guidance: float, seed: int) -> tuple[float, float]:
    """(sampling seconds, image-tokenizer decoding seconds) for `batch` pictures."""
    tok, device = task.tokenizer, model.device
    texts = [PROMPTS[i % len(PROMPTS)] for i in range(batch)]
    langs = ["zh" if any("\u4e00" <= ch <= "\u9fff" for ch in t) else "en" for t in texts]
    examples = [task.build({"text": t, "lang": lang}) for t, lang in zip(texts, langs)]
    ids = collate(examples, tok.pad_id, tok.bos_id).input_ids.to(device)
    twins = [task.unconditional_source(lang) for lang in langs]
    width = max(map(len, twins))
    uncond = torch.tensor([t + [tok.pad_id] * (width - len(t)) for t in twins], device=device)
    config = task.generation_config(guidance_scale=guidance, use_cache=use_cache, seed=seed)
    _sync(device)
    start = time.perf_counter()
    hyps = generate(
        model, {"input_ids": ids}, config, constraints=[task.constraint(e) for e in examples],
        code_masks=[True] * batch, unconditional_inputs=uncond if guidance else None,
    )  # fmt: skip
    _sync(device)
    sampled = time.perf_counter()
    codes = torch.stack([task.parse_codes(h[0].tokens.tolist()) for h in hyps])
    task.codes_to_images(codes)
    _sync(device)
    return sampled - start, time.perf_counter() - sampled


def run(args: argparse.Namespace) -> list[dict]:
    device = torch.device(args.device)
    model, task = build(device, args.checkpoint)
    settings = [(b, cache) for b in args.batches for cache in (True, False)]
    time_batch(model, task, 2, True, args.guidance, 0)  # warm-up
    times: dict[tuple[int, bool], list[tuple[float, float]]] = {s: [] for s in settings}
    for r in range(args.rounds):
        for batch, cache in settings:
            times[(batch, cache)].append(time_batch(model, task, batch, cache, args.guidance, r))
    rows = []
    for batch, cache in settings:
        sample = statistics.median(t[0] for t in times[(batch, cache)]) / batch
        decode = statistics.median(t[1] for t in times[(batch, cache)]) / batch
        rows.append(
            {"batch": batch, "kv_cache": cache, "sample_s_per_image": sample, "decode_s_per_image": decode}
        )
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 16], help="pictures per generate call")
    parser.add_argument("--rounds", type=int, default=2, help="timed rounds (the median is reported)")
    parser.add_argument(
        "--guidance", type=float, default=3.0, help="guidance scale (0: no unconditional rows)"
    )
    parser.add_argument("--device", default="cpu")
    parser.add_argument(
        "--checkpoint",
        type=Path,
        default=None,
        help="time this checkpoint (default: a random world-size model)",
    )
    parser.add_argument("--json", metavar="PATH", help="also write the rows as JSON")
    args = parser.parse_args()
    rows = run(args)
    print(
        f"text-to-image, {args.checkpoint or 'world-size random model'}, 8x8 codes, guidance {args.guidance}; "
        f"{args.device}, "
        f"torch {torch.__version__}, {torch.get_num_threads()} threads, {platform.processor() or platform.machine()}"
    )
    print(
        "| batch | KV cache | sampling (s/image) | VQ decode (s/image) | total (s/image) | cache speed-up |"
    )
    print("|---|---|---|---|---|---|")
    by_key = {(r["batch"], r["kv_cache"]): r for r in rows}
    for r in rows:
        total = r["sample_s_per_image"] + r["decode_s_per_image"]
        other = by_key[(r["batch"], False)]
        speedup = other["sample_s_per_image"] / r["sample_s_per_image"] if r["kv_cache"] else 1.0
        print(
            f"| {r['batch']} | {'yes' if r['kv_cache'] else 'no'} | {r['sample_s_per_image']:.4f} | "
            f"{r['decode_s_per_image']:.4f} | {total:.4f} | {speedup:.2f}x |"
        )
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=2) + "\n")


if __name__ == "__main__":
    main()
