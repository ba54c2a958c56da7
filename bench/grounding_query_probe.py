"""Does the box query know what the expression asks for? A linear probe on the decoder's first box step.

    python bench/grounding_query_probe.py CHECKPOINT [CHECKPOINT ...] [--split val] [--scenes 600] [--lang en]

For the attribute expressions of the scenes ("the large red star", "the red object", "the star", ...), the input of
each decoder layer's cross-attention at the first box step (bos in, x0 out: the query that picks the object) is
collected in one teacher-forced pass. A multinomial logistic regression, fitted on the first 70 % of the expressions
and scored on the rest, then reads from it the size / colour / shape the expression names (each over the
expressions that name one). Next to it: the accuracy of always answering the most common value of the fitted part
(what a query that ignores the words can reach). Layer 0's query at this step is the same for every expression
(bos only), so its row is a check of the method: it must read at that baseline.

The other side of the match: the same probe reads the size / colour / shape of the object at a patch cell (the cell
holding each object's centre) from the encoder output there and from the keys of head 0 of each decoder layer's
cross-attention (the head `train.referent_attention_weight` supervises in the last layer). A key that does not hold
an attribute cannot be matched by it, and gives the query no gradient to carry it.
"""

from __future__ import annotations

import argparse
import math
import time

import torch
import torch.nn.functional as F
from grounding_breakdown import WORD_KINDS, attribute_words

from ofa import OFA
from ofa.data.world import World
from ofa.tasks import collate

FIT_SHARE = 0.7


def first_step_queries(model: OFA, examples: list, batch_size: int) -> list[torch.Tensor]:
    """Per decoder layer: (N, d) inputs of its cross-attention at decoder step 0."""
    tok = model.tokenizer
    layers = model.model.decoder.layers
    captured: dict[int, torch.Tensor] = {}

    def keep(index: int):
        # Returns None: a forward hook's return value would replace the layer output.
        return lambda _m, args, _out: captured.__setitem__(index, args[0][:, 0].float().clone())

    handles = [layer.cross_attn.register_forward_hook(keep(i)) for i, layer in enumerate(layers)]
    per_layer: list[list[torch.Tensor]] = [[] for _ in layers]
    try:
        for start in range(0, len(examples), batch_size):
            b = collate(examples[start : start + batch_size], tok.pad_id, tok.bos_id)
            with torch.inference_mode():
                enc = model.model.encode(b.input_ids, b.patch_images.to(model.model.dtype), b.patch_masks)
                model.model.decode(b.decoder_input_ids[:, :1], enc, b.code_masks)
            for i in range(len(layers)):
                per_layer[i].append(captured[i])
    finally:
        for handle in handles:
            handle.remove()
    return [torch.cat(chunks) for chunks in per_layer]


def probe_accuracy(features: torch.Tensor, labels: torch.Tensor, steps: int = 300) -> tuple[float, float]:
    """(held-out accuracy of a logistic regression, held-out accuracy of the fitted part's majority label)."""
    torch.manual_seed(0)
    fit = int(len(labels) * FIT_SHARE)
    mean, std = features[:fit].mean(0), features[:fit].std(0) + 1e-5
    x = (features - mean) / std
    classes = int(labels.max()) + 1
    weight = torch.zeros(x.shape[1], classes, requires_grad=True)
    bias = torch.zeros(classes, requires_grad=True)
    optimizer = torch.optim.Adam([weight, bias], lr=0.05)
    for _ in range(steps):
        optimizer.zero_grad()
        loss = F.cross_entropy(x[:fit] @ weight + bias, labels[:fit]) + 1e-3 * weight.pow(2).sum()
        loss.backward()
        optimizer.step()
    with torch.no_grad():
        accuracy = float(((x[fit:] @ weight + bias).argmax(1) == labels[fit:]).float().mean())
    majority = float((labels[fit:] == labels[:fit].mode().values).float().mean())
    return accuracy, majority


def run(checkpoint: str, split: str, scenes: int, lang: str, batch_size: int) -> list[tuple]:
    model = OFA.from_pretrained(checkpoint)
    world = World(seed=0, image_size=model.image_size)
    task = model.tasks["grounding"]
    items = [
        (scene, ref, scene.objects[ref.target_index])
        for scene in world.iter(split, scenes)
        for ref in scene.refs_for(lang, kind="attribute")
    ]
    examples = [task.build({"image": s.image, "text": r.text, "lang": lang}) for s, r, _ in items]
    queries = first_step_queries(model, examples, batch_size)
    rows = []
    for word in WORD_KINDS:
        chosen = [k for k, (_s, r, t) in enumerate(items) if word in attribute_words(r, t).split("+")]
        values = [getattr(items[k][2], word) for k in chosen]
        vocab = sorted(set(values))
        labels = torch.tensor([vocab.index(v) for v in values])
        for layer, features in enumerate(queries):
            accuracy, majority = probe_accuracy(features[chosen], labels)
            rows.append((layer, word, len(chosen), accuracy, majority))
    return rows


def cell_rows(checkpoint: str, split: str, scenes: int, lang: str, batch_size: int) -> list[tuple]:
    """(features, attribute, objects, probe accuracy, majority) at each object's centre cell."""
    model = OFA.from_pretrained(checkpoint)
    world = World(seed=0, image_size=model.image_size)
    task, tok = model.tasks["grounding"], model.tokenizer
    layers = model.model.decoder.layers
    chosen = list(world.iter(split, scenes))
    examples = [
        task.build({"image": s.image, "text": s.refs_for(lang)[0].text, "lang": lang}) for s in chosen
    ]
    names = ["encoder output"] + [f"layer {i} head 0 keys" for i in range(len(layers))]
    features: dict[str, list[torch.Tensor]] = {name: [] for name in names}
    labels: dict[str, list[str]] = {word: [] for word in WORD_KINDS}
    for start in range(0, len(examples), batch_size):
        b = collate(examples[start : start + batch_size], tok.pad_id, tok.bos_id)
        with torch.inference_mode():
            hidden = model.model.encode(b.input_ids, b.patch_images.to(model.model.dtype), b.patch_masks)
            hidden = hidden.last_hidden_state
            keys = [layer.cross_attn.project_kv(hidden)[0][:, 0] for layer in layers]  # (B, keys, head_dim)
        grid = math.isqrt(hidden.shape[1] - b.input_ids.shape[1])
        for row, scene in enumerate(chosen[start : start + batch_size]):
            for obj in scene.objects:
                column, line = (min(grid - 1, int(v / scene.image_size * grid)) for v in obj.center)
                cell = line * grid + column
                for name, tensor in zip(names, [hidden, *keys]):
                    features[name].append(tensor[row, cell].float())
                for word in WORD_KINDS:
                    labels[word].append(getattr(obj, word))
    rows = []
    for word in WORD_KINDS:
        vocab = sorted(set(labels[word]))
        targets = torch.tensor([vocab.index(v) for v in labels[word]])
        for name in names:
            accuracy, majority = probe_accuracy(torch.stack(features[name]), targets)
            rows.append((name, word, len(targets), accuracy, majority))
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("checkpoints", nargs="+")
    parser.add_argument("--split", default="val")
    parser.add_argument("--scenes", type=int, default=600)
    parser.add_argument("--lang", default="en", choices=("en", "zh"))
    parser.add_argument("--batch-size", type=int, default=64)
    args = parser.parse_args()
    for checkpoint in args.checkpoints:
        start = time.perf_counter()
        rows = run(checkpoint, args.split, args.scenes, args.lang, args.batch_size)
        print(f"\n{checkpoint}, split {args.split}, {args.scenes} scenes, {args.lang} attribute expressions "
              f"({time.perf_counter() - start:.0f} s)\n")  # fmt: skip
        print("| decoder layer | named word | expressions | read from the box query | most common value |")
        print("|---|---|---|---|---|")
        for layer, word, n, accuracy, majority in sorted(rows):
            print(f"| {layer} | {word} | {n} | {accuracy:.3f} | {majority:.3f} |")
        start = time.perf_counter()
        rows = cell_rows(checkpoint, args.split, args.scenes // 2, args.lang, args.batch_size)
        print(
            f"\nobjects of {args.scenes // 2} scenes, at their centre cell ({time.perf_counter() - start:.0f} s)\n"
        )
        print("| features | attribute | objects | read | most common value |")
        print("|---|---|---|---|---|")
        for name, word, n, accuracy, majority in rows:
            print(f"| {name} | {word} | {n} | {accuracy:.3f} | {majority:.3f} |")


if __name__ == "__main__":
    main()
