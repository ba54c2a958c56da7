"""Text-to-image on world prompts: compositional accuracy of one sample and of the best of n after reranking.

    python bench/eval_text_to_image.py checkpoints/ofa-world-tiny [--split heldout] [--prompts 200] [--n 4]
        [--guidance 3] [--temperature 1] [--top-k K] [--langs en zh] [--json-path out.json]

Prompts are world captions of the split's scenes (every world caption names all of its scene's objects; the
`heldout` split holds the colour-shape pairs that training never shows). For each prompt `OFA.generate_image`
draws n pictures in one batch (classifier-free guidance, the checkpoint's own caption-likelihood reranking)
and the world oracle (`ofa.evaluation.world_oracle`) parses each picture back into objects. Per language:

* `single`: the share of all n x prompts pictures that are right (the accuracy of one sample);
* `best_of_n`: the share of prompts whose top-ranked picture is right (reranking by the model itself);
* `any_of_n`: the share of prompts with at least one right picture (what a perfect reranker would get);
* `objects_single`: like `single` with relations ignored;
* `ceiling`: the oracle on the image tokenizer's reconstruction of the prompt's own scene (encode -> decode):
  what a model that predicted the true scene's codes would score (`ceiling_all_large` / `ceiling_with_small`:
  the same over prompts whose objects are all large / that have a small object);
* `oracle_on_scene`: the oracle on the prompt's own scene at the pictures' size (no tokenizer): its own limit;
* `code_nll_own_caption` / `code_nll_other_caption`: the mean loss (nats per code) of each scene's true codes given
  its own caption / the next prompt's caption; equal values mean the model ignores the caption;
* `seconds_per_image`: wall time of generation + decoding + reranking over pictures drawn.
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from ofa import OFA
from ofa.data.sources import WorldSource
from ofa.evaluation.harness import world_for_checkpoint
from ofa.evaluation.world_oracle import compositional_match, parse_prompt, parse_scene
from ofa.tasks import collate
from ofa.tokenization.image import image_to_unit_tensor


def is_right(picture, prompt, relations: bool = True) -> bool:
    try:
        detected = parse_scene(picture)
    except ValueError:  # no pale background: not a world picture
        return False
    return compositional_match(detected, prompt if relations else prompt.objects)


@torch.no_grad()
def code_nll(ofa: OFA, samples: list[dict], texts: list[str], batch_size: int = 32) -> float:
    """Mean negative log-likelihood (nats) of the scenes' true codes given `texts` as captions (teacher forcing)."""
    task = ofa.text_to_image_task()
    tok, total, count = task.tokenizer, 0.0, 0
    for start in range(0, len(samples), batch_size):
        chunk = [
            {**s, "text": t}
            for s, t in zip(samples[start : start + batch_size], texts[start : start + batch_size])
        ]
        batch = collate([task.build(s) for s in chunk], tok.pad_id, tok.bos_id).to(ofa.device)
        logits = ofa.model(
            input_ids=batch.input_ids,
            decoder_input_ids=batch.decoder_input_ids,
            code_masks=batch.code_masks,
        ).float()
        keep = (batch.target_ids != tok.eos_id) & (batch.target_ids != tok.pad_id)  # the codes only
        nll = F.cross_entropy(logits.transpose(1, 2), batch.target_ids, reduction="none")
        total += float(nll[keep].sum())
        count += int(keep.sum())
    return total / count


def score_language(
    ofa: OFA, source: WorldSource, count: int, n: int, guidance: float, seed: int, **sampling: float
) -> dict:
    samples = [source[i] for i in range(count)]
    texts = [s["text"] for s in samples]
    prompts = [parse_prompt(text, source.lang) for text in texts]
    started = time.perf_counter()
    results = ofa.generate_image(texts, n=n, guidance=guidance, seed=seed, batch_size=8, **sampling)
    seconds = time.perf_counter() - started
    single = objects = best = any_right = drawn = 0
    for prompt, pictures in zip(prompts, results):
        right = [is_right(p.image, prompt) for p in pictures]
        single += sum(right)
        objects += sum(is_right(p.image, prompt, relations=False) for p in pictures)
        best += bool(right and right[0])
        any_right += any(right)
        drawn += len(pictures)
    # Does the model use the caption? Code loss with each scene's own caption vs with another scene's.
    nll_own = code_nll(ofa, samples, texts)
    nll_other = code_nll(ofa, samples, texts[1:] + texts[:1])
    vq = ofa.image_tokenizer
    size = vq.grid() * vq.factor
    with torch.no_grad():
        pixels = torch.stack([image_to_unit_tensor(s["image"], size) for s in samples]).to(ofa.device)
        reconstructions = vq.decode(vq.encode(pixels))

    def to_arrays(images: torch.Tensor):
        return (images.clamp(0, 1) * 255).round().byte().permute(0, 2, 3, 1).cpu().numpy()

    reconstructed = [is_right(a, p) for a, p in zip(to_arrays(reconstructions), prompts)]
    ceiling = sum(reconstructed)
    # Small objects (about 10 px at 64 px) are where the tokenizer loses shape: the ceiling split by size.
    has_small = [any(size == "small" for size, _, _ in p.objects) for p in prompts]
    small = [r for r, h in zip(reconstructed, has_small) if h]
    large = [r for r, h in zip(reconstructed, has_small) if not h]
    scene_right = sum(is_right(a, p) for a, p in zip(to_arrays(pixels), prompts))
    total = n * count
    return {
        "single": single / total,
        "best_of_n": best / count,
        "any_of_n": any_right / count,
        "objects_single": objects / total,
        "ceiling": ceiling / count,
        "ceiling_all_large": sum(large) / max(len(large), 1),
        "ceiling_with_small": sum(small) / max(len(small), 1),
        "oracle_on_scene": scene_right / count,
        "missing_pictures": total - drawn,
        "code_nll_own_caption": nll_own,
        "code_nll_other_caption": nll_other,
        "seconds_per_image": seconds / total,
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("checkpoint", type=Path)
    parser.add_argument("--split", default="heldout")
    parser.add_argument("--prompts", type=int, default=200, help="prompts per language")
    parser.add_argument("--n", type=int, default=4, help="pictures per prompt")
    parser.add_argument("--guidance", type=float, default=3.0)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--temperature", type=float, default=1.0)
    parser.add_argument("--top-k", type=int, default=None, help="default: the task's (official OFA: 256)")
    parser.add_argument("--langs", nargs="+", default=["en", "zh"])
    parser.add_argument("--json-path", type=Path, default=None)
    args = parser.parse_args()
    ofa = OFA.from_pretrained(args.checkpoint)
    world = world_for_checkpoint(args.checkpoint, ofa.model)
    table = {}
    for lang in args.langs:
        source = WorldSource(world, args.split, "text_to_image", lang)
        sampling = {"temperature": args.temperature, "top_k": args.top_k}
        table[lang] = score_language(ofa, source, args.prompts, args.n, args.guidance, args.seed, **sampling)
        print(json.dumps({"lang": lang, **{k: round(v, 4) for k, v in table[lang].items()}}), flush=True)
    print(
        f"\n{args.checkpoint} on `{args.split}`, {args.prompts} prompts/language, n={args.n}, "
        f"guidance {args.guidance}, temperature {args.temperature}, top-k {args.top_k or 'task default'}, "
        f"seed {args.seed}; {platform.processor() or platform.machine()}, "
        f"{torch.get_num_threads()} threads\n"
    )
    print("| metric | " + " | ".join(args.langs) + " |")
    print("|---" * (len(args.langs) + 1) + "|")
    for key in next(iter(table.values())):
        print(f"| {key} | " + " | ".join(f"{table[lang][key]:.3f}" for lang in args.langs) + " |")
    if args.json_path:
        args.json_path.write_text(json.dumps(table, indent=2) + "\n")


if __name__ == "__main__":
    main()
