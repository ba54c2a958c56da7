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


def cmd_export(args: argparse.Namespace) -> int:
    """Export a training checkpoint (step=N.ckpt) as a model folder (model + tokenizer + recipe.yaml)."""
    from ofa.training.export import export_checkpoint

    folder = export_checkpoint(args.checkpoint, args.dst, recipe_path=args.recipe, dtype=args.dtype)
    print(json.dumps({"destination": str(folder)}) if args.json else f"wrote {folder}")
    return EXIT_OK


def cmd_train(args: argparse.Namespace) -> int:
    """Train (or resume) from a YAML recipe; `key=value` overrides use dotted recipe paths (train.max_steps=30).

    A recipe whose top-level `recipe` key is `image_tokenizer` (tasks/world/vq.yaml) trains an image tokenizer,
    printing JSON lines; any other trains a model. Multi-device and multi-node runs use Lightning's launchers:
    `train.devices` / `train.num_nodes`, with MASTER_ADDR, MASTER_PORT, NODE_RANK (and WORLD_SIZE, LOCAL_RANK)
    in the environment, or torchrun.
    """
    from ofa.training.recipe import read_recipe_file, recipe_from_dict, recipe_kind

    values = read_recipe_file(args.recipe)
    if recipe_kind(values, args.recipe) == "image_tokenizer":
        from ofa.training.image_tokenizer import settings_from_dict
        from ofa.training.image_tokenizer import train as train_image_tokenizer

        train_image_tokenizer(settings_from_dict(values, args.overrides, source=args.recipe))
        return EXIT_OK
    from ofa.training.run import train

    recipe = recipe_from_dict(values, args.overrides, source=args.recipe)
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

    search = {} if args.beam is None else {"beam_size": args.beam}
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


DEFAULT_CHECKPOINT = "checkpoints/ofa-world-tiny"


def _load_ofa(args: argparse.Namespace):
    """The `OFA` of `--checkpoint` (current directory first, then the repository root)."""
    from ofa.api import OFA, CheckpointNotFoundError
    from ofa.training.recipe import resolve_path

    path = resolve_path(args.checkpoint)
    if not path.exists():
        raise CheckpointNotFoundError(
            f"checkpoint {args.checkpoint} not found (looked in the current directory and the repository); "
            "pass --checkpoint PATH"
        )
    return OFA.from_pretrained(path, tokenizer=args.tokenizer, device=args.device)


def _search(args: argparse.Namespace) -> dict[str, int]:
    return {} if args.beam is None else {"beam_size": args.beam}


def cmd_caption(args: argparse.Namespace) -> int:
    """Caption images with a checkpoint: one line per image (caption and confidence).

    The confidence is the geometric mean of the generated tokens' probabilities.
    """
    ofa = _load_ofa(args)
    results = ofa.caption(list(args.images), lang=args.lang, batch_size=args.batch_size, **_search(args))
    if args.json:
        print(json.dumps([{"image": img, "text": r.text, "score": r.score, "lang": r.lang}
                          for img, r in zip(args.images, results)]))  # fmt: skip
        return EXIT_OK
    for image, r in zip(args.images, results):
        prefix = f"{image}: " if len(args.images) > 1 else ""
        print(f"{prefix}{r.text}  (score {r.score:.3f})")
    return EXIT_OK


def cmd_ground(args: argparse.Namespace) -> int:
    """Find the region of an image that a text describes: prints x0 y0 x1 y1 (pixels of the image) and a score.

    The score is the geometric mean of the probabilities of the 4 location tokens.
    """
    ofa = _load_ofa(args)
    r = ofa.ground(args.image, args.text, lang=args.lang, **_search(args))
    if args.json:
        print(json.dumps({"image": args.image, **r.to_dict()}))
    else:
        print(" ".join(f"{v:.1f}" for v in r.box) + f"  (score {r.score:.3f})")
    return EXIT_OK


def cmd_run(args: argparse.Namespace) -> int:
    """Decode free text for any instruction, with or without an image.

    Location tokens print as <bin_k>; every 4 of them also print as a box in pixels of the image.
    """
    ofa = _load_ofa(args)
    search = {**_search(args), **({} if args.max_len is None else {"max_len_b": args.max_len})}
    r = ofa.run(args.instruction, image=args.image, **search)
    if args.json:
        print(json.dumps({"instruction": args.instruction, "image": args.image, "text": r.text,
                          "score": r.score, "boxes": r.boxes}))  # fmt: skip
        return EXIT_OK
    print(f"{r.text}  (score {r.score:.3f})")
    for box in r.boxes:
        print("box " + " ".join(f"{v:.1f}" for v in box))
    return EXIT_OK


def cmd_demo(args: argparse.Namespace) -> int:
    """Serve the browser demo for a checkpoint until interrupted: caption, grounding, retrieval and
    text-to-image tabs (the last two show a note when the checkpoint lacks a retrieval head or an image
    tokenizer)."""
    from ofa.demo import launch

    ofa = _load_ofa(args)
    try:
        launch(ofa, host=args.host, port=args.port, search=_search(args))
    except ImportError as err:  # gradio missing or broken
        print(f"ofa demo: error: {err}", file=sys.stderr)
        return EXIT_BAD_INPUT
    return EXIT_OK


def cmd_imagine(args: argparse.Namespace) -> int:
    """Draw the picture a text describes: samples --n pictures, reranks them and writes the best to -o.

    Reranking scores each picture by how likely the model finds the text as its caption (the score printed).
    The checkpoint needs an image tokenizer in its image_tokenizer/ sub-folder.
    """
    ofa = _load_ofa(args)
    results = ofa.generate_image(
        args.text, n=args.n, guidance=args.guidance, temperature=args.temperature, top_k=args.top_k,
        top_p=args.top_p, seed=args.seed, rerank=not args.no_rerank,
    )  # fmt: skip
    out = Path(args.output)
    out.parent.mkdir(parents=True, exist_ok=True)
    paths = [out] + [out.with_name(f"{out.stem}-{i}{out.suffix}") for i in range(1, len(results))]
    for result, path in zip(results, paths if args.save_all else paths[:1]):
        result.image.save(path)
    if args.json:
        print(json.dumps({"output": str(out), "results": [r.to_dict() for r in results]}))
    else:
        print(f"wrote {out} (score {results[0].score:.3f}, best of {len(results)})")
    return EXIT_OK


IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp", ".gif", ".tif", ".tiff")


def cmd_retrieve(args: argparse.Namespace) -> int:
    """Find the gallery images a text describes: embeds every image of --gallery (a folder) and the query and
    ranks by cosine similarity; --rerank reorders the top --k by image-text matching. Prints rank, score, file.

    The checkpoint needs a retrieval head (trained with model.config.retrieval_dim and data.retrieval).
    """
    from ofa.api import InputError

    gallery = Path(args.gallery)
    if not gallery.is_dir():
        raise FileNotFoundError(f"--gallery {gallery}: not a folder")
    files = sorted(p for p in gallery.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
    if not files:
        raise InputError(f"--gallery {gallery}: no images ({', '.join(IMAGE_SUFFIXES)})")
    ofa = _load_ofa(args)
    hits = ofa.retrieve(args.query, files, k=min(args.k, len(files)), rerank=args.rerank)
    rows = [{"rank": i + 1, "file": str(files[h.index]), **h.to_dict()} for i, h in enumerate(hits)]
    if args.json:
        print(json.dumps({"query": args.query, "results": rows}, ensure_ascii=False))
    else:
        for row in rows:
            match = "" if row["match_probability"] is None else f"  match {row['match_probability']:.3f}"
            print(f"{row['rank']:3d}  similarity {row['similarity']:.3f}{match}  {row['file']}")
    return EXIT_OK


def cmd_extract_codes(args: argparse.Namespace) -> int:
    """Encode every distinct image of a caption data file once with an image tokenizer and write the codes
    (safetensors, keyed by image id) for `data.task_options.text_to_image.codes`: training then reads its
    targets instead of re-encoding each image every epoch.
    """
    import time

    from ofa.tokenization.image import ImageTokenizer, extract_file_codes, read_codes

    tokenizer = ImageTokenizer.from_pretrained(args.image_tokenizer, device=args.device)
    start = time.perf_counter()
    count = extract_file_codes(
        tokenizer, args.data, args.output, fmt=args.format, lang=args.lang, batch_size=args.batch_size
    )
    codes = read_codes(args.output)
    summary = {
        "output": str(args.output), "images": count, "grid": list(codes.grid),
        "codebook_size": codes.codebook_size, "image_size": codes.image_size,
        "seconds": round(time.perf_counter() - start, 2),
    }  # fmt: skip
    if args.json:
        print(json.dumps(summary))
    else:
        h, w = codes.grid
        print(f"wrote {args.output} ({count} images, {h}x{w} codes each, {summary['seconds']} s)")
    return EXIT_OK


def cmd_report(args: argparse.Namespace) -> int:
    """Caption and ground --n world scenes (English and Chinese) with a checkpoint; print a table and write
    OUT/report.html (one self-contained file). Retrieval and text-to-image run when the checkpoint has them.
    """
    from ofa.api import CheckpointNotFoundError
    from ofa.demo.report import make_report
    from ofa.evaluation.harness import world_for_checkpoint
    from ofa.training.recipe import resolve_path

    if args.checkpoint == DEFAULT_CHECKPOINT and not resolve_path(args.checkpoint).exists():
        raise CheckpointNotFoundError(
            f"the shipped checkpoint {DEFAULT_CHECKPOINT} is not in this checkout yet; "
            "pass --checkpoint PATH (e.g. the final/ folder of `ofa train tasks/world/tiny.yaml`)"
        )
    ofa = _load_ofa(args)
    world = world_for_checkpoint(resolve_path(args.checkpoint), ofa.model)
    path = make_report(ofa, args.out, args.n, args.split, world=world, checkpoint=args.checkpoint)
    print(json.dumps({"report": str(path)}) if args.json else f"wrote {path}")
    return EXIT_OK


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="ofa", description="Unified OFA-style multimodal models.")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def add(name: str, fn: Callable[[argparse.Namespace], int], help_text: str) -> argparse.ArgumentParser:
        p = sub.add_parser(name, help=help_text, description=fn.__doc__)
        p.add_argument("--json", action="store_true", help="print machine-readable JSON")
        p.set_defaults(func=fn)
        return p

    def add_model_options(p: argparse.ArgumentParser, beam: bool = True) -> None:
        p.add_argument(
            "--checkpoint", default=DEFAULT_CHECKPOINT, metavar="PATH",
            help=f"checkpoint folder (default: {DEFAULT_CHECKPOINT}; relative to here, then the repository)",
        )  # fmt: skip
        p.add_argument("--tokenizer", metavar="PATH", help="tokenizer folder, for checkpoints that have none")
        p.add_argument("--device", default="cpu", help="cpu, cuda, cuda:1, ... (default: cpu)")
        if beam:
            p.add_argument("--beam", type=int, metavar="N", help="beam size (default: the task's setting)")

    p = add("caption", cmd_caption, "caption images")
    p.epilog = "example: ofa caption photo.jpg other.png --lang zh --json"
    p.add_argument("images", nargs="+", metavar="IMAGE", help="image files")
    p.add_argument("--lang", default="en", choices=["en", "zh"], help="caption language (default: en)")
    p.add_argument("--batch-size", type=int, default=16, metavar="N", help="images per batch (default: 16)")
    add_model_options(p)

    p = add("ground", cmd_ground, "find the box a text describes")
    p.epilog = 'example: ofa ground photo.jpg "the red star"'
    p.add_argument("image", help="image file")
    p.add_argument("text", help='referring expression, e.g. "the red star"')
    p.add_argument(
        "--lang", choices=["en", "zh"], help="language of TEXT (default: zh if it has Chinese, else en)"
    )
    add_model_options(p)

    p = add("run", cmd_run, "run any instruction (free text output)")
    p.epilog = "example: ofa run ' what does the image describe?' --image photo.jpg"
    p.add_argument("instruction", help="the prompt, passed to the model as written")
    p.add_argument("--image", metavar="IMAGE", help="an image file to go with the instruction")
    p.add_argument("--max-len", type=int, metavar="N", help="most tokens to generate (default: 32)")
    add_model_options(p)

    p = add("demo", cmd_demo, "serve the browser demo (caption, grounding, retrieval, text-to-image)")
    p.epilog = "example: ofa demo --port 7860, then open http://127.0.0.1:7860"
    p.add_argument("--host", default="127.0.0.1", help="address to serve on (0.0.0.0: all interfaces)")
    p.add_argument("--port", type=int, default=7860, help="port to serve on (default: 7860)")
    add_model_options(p)

    p = add("imagine", cmd_imagine, "draw the picture a text describes")
    p.epilog = 'example: ofa imagine "a red circle left of a blue star" -o out.png --n 8 --seed 0'
    p.add_argument("text", help="what to draw (Chinese text gets the Chinese prompt)")
    p.add_argument("-o", "--output", required=True, metavar="PNG", help="where to write the best picture")
    p.add_argument("--n", type=int, default=4, help="pictures to sample and rerank (default: 4)")
    p.add_argument(
        "--guidance", type=float, default=3.0, help="classifier-free guidance scale, 0 = off (default: 3)"
    )
    p.add_argument("--seed", type=int, help="random seed (same seed, same pictures)")
    p.add_argument("--temperature", type=float, default=1.0, help="sampling temperature (default: 1)")
    p.add_argument("--top-k", type=int, help="sample from the k likeliest codes (default: 256; 0 = all)")
    p.add_argument("--top-p", type=float, help="nucleus sampling mass (default: off)")
    p.add_argument("--no-rerank", action="store_true", help="keep sampling order instead of reranking")
    p.add_argument("--save-all", action="store_true", help="also write the others as OUTPUT-1.png, ...")
    add_model_options(p, beam=False)

    p = add("retrieve", cmd_retrieve, "find the images of a folder that a text describes")
    p.epilog = 'example: ofa retrieve --gallery outputs/gallery "红色的圆形" --k 5'
    p.add_argument("query", help="the text to search for (English or Chinese)")
    p.add_argument("--gallery", required=True, metavar="DIR", help="folder of images to search")
    p.add_argument("--k", type=int, default=5, help="how many results (default: 5)")
    p.add_argument(
        "--rerank",
        action="store_true",
        help="reorder the top --k by image-text matching (off by default: it lowers R@1 with the shipped "
        "checkpoint, see its model card)",
    )
    add_model_options(p, beam=False)

    p = add("report", cmd_report, "show what a checkpoint does on world scenes (HTML report)")
    p.epilog = "example: ofa report --n 8 --out outputs, then open outputs/report.html"
    p.add_argument(
        "--out", default="outputs", metavar="DIR", help="folder for report.html (default: outputs)"
    )
    p.add_argument("--n", type=int, default=8, help="how many world scenes (default: 8)")
    p.add_argument("--split", default="heldout", choices=["train", "val", "test", "heldout"],
                   help="world split the scenes come from (default: heldout)")  # fmt: skip
    add_model_options(p, beam=False)

    p = add("convert", cmd_convert, "convert an official checkpoint into our format")
    p.add_argument("src", help="official HF-port folder, fairseq .pt file, or one of our checkpoints")
    p.add_argument("dst", help="output folder (config.json + model.safetensors)")
    p.add_argument("--dtype", choices=sorted(DTYPES), help="store floating weights in this precision")

    p = add("eval", cmd_eval, "score a checkpoint on a task")
    p.add_argument("checkpoint", help="a checkpoint folder (model + tokenizer)")
    p.add_argument("--task", required=True, help="task name, e.g. caption or grounding")
    source = p.add_mutually_exclusive_group(required=True)
    source.add_argument("--split", help="a split of the synthetic world: train, val, test or heldout")
    source.add_argument(
        "--data",
        help="a data file, format told from the name: COCO caption .json, refs .jsonl, OFA grounding .tsv, "
        "Chinese-CLIP {split}_imgs.tsv, pairs .jsonl/.csv (ofa.data.formats)",
    )
    p.add_argument("--lang", default="en", choices=["en", "zh"])
    p.add_argument("--samples", type=int, default=500, help="how many samples to score (default 500)")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--beam", type=int, help="beam size (default: the task's)")
    p.add_argument("--device", default="cpu")
    p.add_argument("--json-path", metavar="PATH", help="also write the metrics as a flat JSON object here")

    p = add("info", cmd_info, "show the architecture of a checkpoint")
    p.add_argument("checkpoint")

    p = add("train", cmd_train, "train a model (or an image tokenizer) from a YAML recipe")
    p.add_argument("recipe", help="recipe file, e.g. tasks/world/tiny.yaml or tasks/world/vq.yaml")
    p.add_argument(
        "overrides", nargs="*", metavar="KEY=VALUE", help="dotted recipe overrides, e.g. train.max_steps=30"
    )

    p = add("extract-codes", cmd_extract_codes, "encode a data file's images once into image codes")
    p.epilog = (
        "example: ofa extract-codes data/coco/captions_train.json --image-tokenizer tokenizers/world-vq "
        "-o data/coco/codes.safetensors"
    )
    p.add_argument(
        "data", help="a caption data file: COCO caption .json, {split}_imgs.tsv, pairs .jsonl/.csv"
    )
    p.add_argument(
        "--format", choices=["coco_captions", "cnclip", "pairs_jsonl", "pairs_csv"],
        help="data format (default: told from the file name)",
    )  # fmt: skip
    p.add_argument("--image-tokenizer", required=True, metavar="DIR", help="image tokenizer folder")
    p.add_argument(
        "-o", "--output", required=True, metavar="FILE", help="where to write the codes (.safetensors)"
    )
    p.add_argument("--lang", default="en", choices=["en", "zh"], help="the captions' language (default: en)")
    p.add_argument("--batch-size", type=int, default=32, metavar="N", help="images per batch (default: 32)")
    p.add_argument("--device", default="cpu", help="cpu, cuda, cuda:1, ... (default: cpu)")

    p = add("export", cmd_export, "export a training checkpoint (step=N.ckpt) as a model folder")
    p.add_argument("checkpoint", help="e.g. runs/world-tiny/checkpoints/step=002000.ckpt")
    p.add_argument("dst", help="output folder (model + tokenizer + recipe.yaml)")
    p.add_argument("--recipe", help="the run's recipe.yaml (default: beside the checkpoints folder)")
    p.add_argument(
        "--dtype", choices=["float32", "bfloat16", "float16"], help="weights dtype (default: the recipe's)"
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
