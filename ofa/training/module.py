"""`OFALightningModule`: label-smoothed cross entropy, AdamW with a warm-up schedule, resumable RNG state.

Loss. Per micro-batch the summed label-smoothed cross entropy over non-pad target tokens is divided by the
number of non-pad target tokens of the whole *global* batch (all ranks, all accumulation micro-steps; each
rank's window count is all-reduced). Lightning divides the returned loss by the accumulation steps and DDP
averages gradients over ranks, so the returned value is scaled by ``world_size * accumulate`` and the
gradient is exactly that of the global-batch token mean, whatever the device layout.

Retrieval (``data.retrieval``). A micro-batch may also carry image-text pairs; their contrastive loss
(`ofa.training.retrieval`), times the section's ``weight``, is added to the returned loss as it is: Lightning's
division by the accumulation steps then averages it over micro-steps and DDP's gradient average matches
the all-gathered loss. Without the section nothing here changes.

Referent cells (``train.referent_cell_weight`` > 0). A grounding sample's encoder output at the image patches
also goes through a linear head (owned by this module, not by the model: export drops it) whose softmax over
the patch grid is trained towards the referent's cells (`referent_cell_targets`). The decoder must find the
referent before it can write its box; this dense signal teaches the encoder to mark it.

Object attention (``train.referent_attention_weight`` / ``caption_attention_weight`` > 0). Supervised attention
(as Garg et al. 2019 supervise one cross-attention head with word alignments): head 0 of the decoder's last
cross-attention is trained to put its mass on the patch cells of an object, at the steps whose target token
describes it (``meta["attend"]`` of the example: the referent at each of the four box tokens of a grounding
sample; the objects a size / colour / shape word names in a world caption), by cross entropy averaged over the
sample's supervised steps (``train.attention_layers`` picks other or more decoder layers, each counted in full;
``train.attention_heads`` supervises heads 0..n-1 of each, averaged over them).
That head's query-key match is the binding the tokens need (words to the object's patches); the term adds no
parameters.

Reading and attribute terms (``train.expression_attention_weight``, ``key_attribute_weight``,
``query_attribute_weight`` > 0; the last two are on in ``tasks/world/tiny.yaml``). A probe found the box query
and the supervised head's keys holding the size a world expression names but hardly its colour or shape, and in a
dot-product match neither side gets a gradient towards an attribute the other lacks. The first trains head 0 of
the first decoder layer to read the expression's source tokens at each box step; the other two train head 0's keys
(at each world object's cells) and its query (at the box steps) to tell the object's size / colour / shape through
small linear heads that, like the referent head, are not exported.

All these terms are summed cross entropies over the micro-batch's supervised samples divided by its sample count, times
their weights, so Lightning's and DDP's averaging give the mean over the global batch (unsupervised samples count
as zero); their weighted sum is logged as ``referent_loss``.

Decoder input dropout (``train.decoder_input_dropout``). Teacher forcing normally shows the decoder every
previous word; on the world's held-out colour-shape pairs the shipped model then writes the shape the colour
was always seen with ("a large yellow hexagon" for a yellow circle). Replacing text inputs by ``<unk>`` at
random makes the image, not the previous word, the better predictor. Location and code tokens are kept.

Weight decay (AdamW, decoupled) applies to matrices and convolution kernels and the token embedding; not to
biases, LayerNorm/BatchNorm weights, NormFormer scales (every tensor with fewer than 2 dimensions), nor to the
other embedding tables: absolute position tables, relative-position bias tables and the type embedding.

Schedule (per optimizer step): linear warm-up from ``lr/warmup`` to ``lr`` over ``warmup_steps``, then
``cosine`` or ``linear`` decay to ``lr * min_lr_ratio`` at ``max_steps``, or ``constant``.
"""

from __future__ import annotations

import json
import math
import random
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ofa.data.world.vocab import COLOUR_NAMES, SHAPE_NAMES, SIZES
from ofa.models import OFAModel

from .data import MicroBatch
from .recipe import RecipeError, RetrievalSection, TrainSection


def parameter_groups(
    model: nn.Module, weight_decay: float, lr_scale: dict[str, float] | None = None
) -> list[dict[str, Any]]:
    """AdamW groups: with and without weight decay (see the module docstring for the rule), each split again by
    `lr_scale` (parameter-name prefix -> multiplier of the learning rate, stored as the group's `lr_scale`)."""
    token_tables = {id(m.weight) for n, m in model.named_modules() if n.endswith("embed_tokens")}
    no_decay_tables = {
        id(m.weight)
        for m in model.modules()
        if isinstance(m, nn.Embedding) and id(m.weight) not in token_tables
    }
    scales = lr_scale or {}
    groups: dict[tuple[bool, float], list[nn.Parameter]] = {(True, 1.0): [], (False, 1.0): []}
    seen: set[int] = set()
    for name, p in model.named_parameters():
        if not p.requires_grad or id(p) in seen:
            continue
        seen.add(id(p))
        decay = not (p.ndim < 2 or id(p) in no_decay_tables)
        scale = next((v for k, v in scales.items() if _under(name, k)), 1.0)
        groups.setdefault((decay, scale), []).append(p)
    return [  # the two default groups first (as without lr_scale), then the scaled ones
        {"params": params, "weight_decay": weight_decay if decay else 0.0, "lr_scale": scale}
        for (decay, scale), params in groups.items()
        if params or scale == 1.0
    ]


def lr_lambda(
    schedule: str, warmup_steps: int, max_steps: int, min_lr_ratio: float
) -> Callable[[int], float]:
    """Multiplier of the peak learning rate for optimizer step ``step`` (0-based)."""

    def factor(step: int) -> float:
        if warmup_steps > 0 and step < warmup_steps:
            return (step + 1) / warmup_steps
        if schedule == "constant":
            return 1.0
        span = max(1, max_steps - warmup_steps)
        progress = min(1.0, (step - warmup_steps) / span)
        if schedule == "linear":
            decay = 1.0 - progress
        else:
            decay = 0.5 * (1.0 + math.cos(math.pi * progress))
        return min_lr_ratio + (1.0 - min_lr_ratio) * decay

    return factor


# --------------------------------------------------------------------------------------------- RNG states
def rng_state_tensors(device: torch.device | None = None) -> dict[str, Tensor]:
    """This process's RNG states (torch CPU, CUDA of the current device, Python, NumPy) as int64 tensors."""
    py_version, py_state, py_gauss = random.getstate()
    np_state = np.random.get_state()
    states = {
        "torch": torch.get_rng_state().to(torch.int64),
        "python": torch.tensor([py_version, *py_state], dtype=torch.int64),
        "python_gauss": torch.tensor(
            [0.0 if py_gauss is None else 1.0, py_gauss or 0.0], dtype=torch.float64
        ),
        "numpy": torch.tensor([*np_state[1].tolist(), np_state[2], np_state[3]], dtype=torch.int64),
        "numpy_gauss": torch.tensor([np_state[4]], dtype=torch.float64),
    }
    if device is not None and device.type == "cuda":
        states["cuda"] = torch.cuda.get_rng_state(device).to(torch.int64)
    return states


def set_rng_state_tensors(states: dict[str, Tensor], device: torch.device | None = None) -> None:
    """Inverse of `rng_state_tensors`."""
    torch.set_rng_state(states["torch"].to(torch.uint8).cpu())
    py = states["python"].tolist()
    flag, gauss = states["python_gauss"].tolist()
    random.setstate((int(py[0]), tuple(int(v) for v in py[1:]), gauss if flag else None))
    npv = states["numpy"].tolist()
    np.random.set_state(
        (
            "MT19937",
            np.array(npv[:-2], dtype=np.uint32),
            int(npv[-2]),
            int(npv[-1]),
            float(states["numpy_gauss"][0]),
        )
    )
    if "cuda" in states and device is not None and device.type == "cuda":
        torch.cuda.set_rng_state(states["cuda"].to(torch.uint8).cpu(), device)


def ordinal_bin_loss_sum(
    logits: Tensor,
    targets: Tensor,
    pad_id: int,
    label_smoothing: float,
    bin_start: int,
    num_bins: int,
    sigma: float,
) -> Tensor:
    """Summed label-smoothed cross entropy where a `<bin_k>` target's `1 - label_smoothing` mass is a Gaussian
    over the bins (std `sigma` bins, centred on k, normalised) instead of all on k: a box edge one bin off is
    then nearly right, not as wrong as any other token. Other targets: torch's label-smoothed cross entropy.
    `logits` (N, V), `targets` (N,)."""
    eps = label_smoothing
    log_probs = logits.log_softmax(-1)
    keep = targets != pad_id
    is_bin = keep & (targets >= bin_start) & (targets < bin_start + num_bins)
    plain = keep & ~is_bin
    rows = torch.arange(targets.numel(), device=targets.device)
    total = -(1 - eps) * log_probs[rows[plain], targets[plain]].sum() - eps * log_probs[plain].mean(-1).sum()
    if is_bin.any():
        centre = (targets[is_bin] - bin_start).float()
        k = torch.arange(num_bins, device=logits.device, dtype=torch.float32)
        weights = torch.exp(-0.5 * ((k[None] - centre[:, None]) / sigma) ** 2)
        weights = weights / weights.sum(-1, keepdim=True)
        bins = log_probs[is_bin]
        total = total - (1 - eps) * (weights * bins[:, bin_start : bin_start + num_bins]).sum()
        total = total - eps * bins.mean(-1).sum()
    return total


def referent_cell_targets(boxes: Tensor, grid: int) -> Tensor:
    """(B, grid*grid) target distributions over a row-major patch grid for boxes (B, 4) given as fractions
    (x0, y0, x1, y1) of the image: uniform over the cells whose centre lies inside the box, together with the
    cell holding the box centre (so a box smaller than a cell still has one)."""
    centres = (torch.arange(grid, dtype=torch.float32, device=boxes.device) + 0.5) / grid
    x0, y0, x1, y1 = (boxes[:, i, None].float() for i in range(4))
    inside_x = (centres[None] >= x0) & (centres[None] <= x1)  # (B, grid) columns
    inside_y = (centres[None] >= y0) & (centres[None] <= y1)  # (B, grid) rows
    mask = inside_y[:, :, None] & inside_x[:, None, :]
    col = ((x0 + x1) / 2 * grid).long().clamp(0, grid - 1).squeeze(1)
    row = ((y0 + y1) / 2 * grid).long().clamp(0, grid - 1).squeeze(1)
    mask[torch.arange(len(boxes), device=boxes.device), row, col] = True
    mask = mask.flatten(1).float()
    return mask / mask.sum(-1, keepdim=True)


def decoder_input_dropout(ids: Tensor, p: float, text_start: int, text_end: int, unk_id: int) -> Tensor:
    """`ids` with each text token (``text_start <= id < text_end``) replaced by `unk_id` with probability `p`;
    bos, pad, eos, location and code tokens are kept. Draws from torch's global RNG (saved in checkpoints)."""
    is_text = (ids >= text_start) & (ids < text_end)
    drop = is_text & (torch.rand(ids.shape, device=ids.device) < p)
    return ids.masked_fill(drop, unk_id)


def unmatched_prefixes(model: nn.Module, prefixes: list[str]) -> list[str]:
    """The `train.freeze` prefixes that name no parameter of `model`."""
    names = [name for name, _ in model.named_parameters()]
    return [p for p in prefixes if not any(_under(name, p) for name in names)]


def freeze_prefixes(model: nn.Module, prefixes: list[str]) -> None:
    """Stop gradients to every parameter whose name starts with one of `prefixes` (dotted module paths)."""
    for name, param in model.named_parameters():
        if any(_under(name, p) for p in prefixes):
            param.requires_grad_(False)


def _under(name: str, prefix: str) -> bool:
    prefix = prefix.rstrip(".")
    return name == prefix or name.startswith(prefix + ".")


class OFALightningModule(pl.LightningModule):
    """Trains an `OFAModel` on `MicroBatch`es from `MixtureDataModule`."""

    def __init__(
        self,
        model: OFAModel,
        train: TrainSection,
        pad_id: int,
        history_path: str | Path | None = None,
        retrieval: RetrievalSection | None = None,
    ) -> None:
        super().__init__()
        self.model = model
        self.cfg = train
        self.pad_id = pad_id
        self.history_path = Path(history_path) if history_path is not None else None
        self.retrieval = retrieval
        freeze_prefixes(model, list(train.freeze))
        # Kept out of `self.model` so export (the `model.` weights) leaves it behind; checkpoints keep it.
        self.referent_head = nn.Linear(model.config.d_model, 1) if train.referent_cell_weight > 0 else None
        # World attribute heads of the key / query terms (also left out of the export).
        self.attribute_vocab = {"size": SIZES, "colour": COLOUR_NAMES, "shape": SHAPE_NAMES}
        head_dim = model.config.d_model // model.config.decoder_attention_heads

        def attribute_heads(weight: float) -> nn.ModuleDict | None:
            if weight <= 0:
                return None
            return nn.ModuleDict({k: nn.Linear(head_dim, len(v)) for k, v in self.attribute_vocab.items()})

        self.key_heads = attribute_heads(train.key_attribute_weight)
        self.query_heads = attribute_heads(train.query_attribute_weight)
        self.has_referent_terms = (
            train.referent_cell_weight > 0
            or bool(self.attention_weights())
            or train.expression_attention_weight > 0
            or self.key_heads is not None
            or self.query_heads is not None
        )
        depth = len(model.decoder.layers)
        outside = [i for i in train.attention_layers if not -depth <= i < depth]
        if outside and self.attention_weights():
            raise RecipeError(
                f"train.attention_layers: {outside} out of range for a decoder of {depth} layers"
            )
        self.attention_layers = sorted({i % depth for i in train.attention_layers if -depth <= i < depth})
        heads = model.config.decoder_attention_heads
        if self.attention_weights() and not 1 <= train.attention_heads <= heads:
            raise RecipeError(
                f"train.attention_heads: {train.attention_heads} not in 1..{heads} (the decoder's attention heads)"
            )
        self._window_referent = 0.0
        self._window_tokens: Tensor | None = None
        self._window_loss = 0.0
        self._window_contrastive = 0.0
        self._last_step_time: float | None = None
        self._pending_rng: dict[str, Tensor] | None = None

    # ---------------------------------------------------------------------------------------- modes
    def _freeze_batchnorm(self) -> None:
        """`batchnorm: frozen` (all) and `train.freeze` (those under a frozen prefix): BatchNorm layers normalise
        with their running statistics, which then stay fixed."""
        frozen = self.cfg.batchnorm == "frozen"
        for name, module in self.model.named_modules():
            if not isinstance(module, nn.modules.batchnorm._BatchNorm) or not module.training:
                continue
            if frozen or any(_under(name, p) for p in self.cfg.freeze):
                module.eval()

    # ------------------------------------------------------------------------------------------ loss
    def token_loss_sum(self, batch: MicroBatch) -> Tensor:
        """Summed label-smoothed cross entropy over the micro-batch's non-pad target tokens."""
        return self.losses(batch)[0]

    def losses(self, batch: MicroBatch) -> tuple[Tensor, Tensor | None]:
        """The summed token loss and, with referent terms on, their weighted sum (None when off)."""
        b = batch.batch
        encoder_out = self.model.encode(b.input_ids, b.patch_images, b.patch_masks)
        decoder_ids = b.decoder_input_ids
        if self.training and self.cfg.decoder_input_dropout > 0:
            c = self.model.config
            first_text = max(c.bos_token_id, c.pad_token_id, c.eos_token_id, c.unk_token_id) + 1
            decoder_ids = decoder_input_dropout(
                decoder_ids, self.cfg.decoder_input_dropout, first_text, c.code_start, c.unk_token_id
            )
        supervised = [self.model.decoder.layers[i].cross_attn for i in self.attention_layers]
        captured: dict[int, tuple[Any, ...]] = {}
        handles = []

        def keep_first_inputs(n: int) -> Callable[..., None]:
            # Returns None: a forward hook's return value would replace the layer's output.
            def hook(_module: nn.Module, args: tuple[Any, ...], _output: Any) -> None:
                captured.setdefault(n, args)  # the first call only (gradient checkpointing re-runs it)

            return hook

        if self.attention_weights() or self.key_heads is not None or self.query_heads is not None:
            handles = [c.register_forward_hook(keep_first_inputs(n)) for n, c in enumerate(supervised)]
        reading = self.model.decoder.layers[0].cross_attn
        if self.cfg.expression_attention_weight > 0:
            handles.append(reading.register_forward_hook(keep_first_inputs(-1)))
        try:
            logits = self.model.decode(decoder_ids, encoder_out, b.code_masks).logits
        finally:
            for handle in handles:
                handle.remove()
        referent = None
        if self.referent_head is not None:
            cells = self.referent_cell_loss_sum(batch, encoder_out.last_hidden_state)
            referent = self.cfg.referent_cell_weight * cells
        heads = self.cfg.attention_heads
        if -1 in captured:
            hidden, key, _value, bias, layer = captured[-1]
            words = self.expression_attention_loss_sum(
                batch, reading.probabilities(hidden, key, bias, layer)[:, 0]
            )
            referent = words if referent is None else referent + words
        for n, cross_attn in enumerate(supervised):
            if n not in captured:
                continue
            hidden, key, _value, bias, layer = captured[n]
            if self.key_heads is not None:
                keys = self.cfg.key_attribute_weight * self.key_attribute_loss_sum(batch, key[:, 0])
                referent = keys if referent is None else referent + keys
            if self.query_heads is not None:
                query = cross_attn.project_q(hidden)[:, 0]  # head 0: (B, T, head_dim)
                named = self.cfg.query_attribute_weight * self.query_attribute_loss_sum(batch, query)
                referent = named if referent is None else referent + named
            if not self.attention_weights():
                continue
            probs = cross_attn.probabilities(hidden, key, bias, layer)
            attention = sum(self.object_attention_loss_sum(batch, probs[:, h]) for h in range(heads)) / heads
            referent = attention if referent is None else referent + attention
        return self._token_loss(logits, b.target_ids), referent

    def referent_cell_loss_sum(self, batch: MicroBatch, hidden: Tensor) -> Tensor:
        """Summed cross entropy between the head's softmax over the patch grid and `referent_cell_targets`
        over the grounding samples with a box (zero, with a graph, when there are none)."""
        b = batch.batch
        rows, boxes = [], []
        for i, (task, meta) in enumerate(zip(b.tasks, b.meta)):
            if task == "grounding" and meta.get("box") is not None:
                w, h = meta["image_size"]
                x0, y0, x1, y1 = meta["box"]
                rows.append(i)
                boxes.append([x0 / w, y0 / h, x1 / w, y1 / h])
        num_patches = hidden.shape[1] - b.input_ids.shape[1]  # image patches come first
        grid = math.isqrt(num_patches)
        if not rows or b.patch_images is None or grid * grid != num_patches:
            return hidden.sum() * 0.0
        index = torch.tensor(rows, device=hidden.device)
        scores = self.referent_head(hidden[index, :num_patches].float()).squeeze(-1)
        targets = referent_cell_targets(torch.tensor(boxes, device=hidden.device), grid)
        return -(targets * scores.log_softmax(-1)).sum()

    def attention_weights(self) -> dict[str, float]:
        """Task -> weight of its object-attention term (only tasks with a positive weight)."""
        weights = {
            "grounding": self.cfg.referent_attention_weight,
            "caption": self.cfg.caption_attention_weight,
        }
        return {task: w for task, w in weights.items() if w > 0}

    def object_attention_loss_sum(self, batch: MicroBatch, probs: Tensor) -> Tensor:
        """Weighted sum over the micro-batch's samples of the supervised-attention term: for each (target position,
        boxes) of a sample's ``meta["attend"]``, the cross entropy between uniform targets over the cells of the
        boxes (the union of their `referent_cell_targets`) and one head's cross-attention `probs` (B, T, keys) at the
        patch keys, at the decoder step that predicts that position; averaged over the sample's positions, times
        its task's weight (`attention_weights`). Zero, with a graph, when nothing is supervised."""
        b = batch.batch
        weights = self.attention_weights()
        num_patches = probs.shape[-1] - b.input_ids.shape[1]  # image patches come first among the keys
        grid = math.isqrt(num_patches)
        rows, steps, owners, boxes, scale = [], [], [], [], []
        for i, (task, meta) in enumerate(zip(b.tasks, b.meta)):
            attend = [(t, bs) for t, bs in meta.get("attend", ()) if t < probs.shape[1] and bs]
            if task not in weights or not attend:
                continue
            w, h = meta["image_size"]
            for t, entry_boxes in attend:
                for x0, y0, x1, y1 in entry_boxes:
                    owners.append(len(rows))
                    boxes.append([x0 / w, y0 / h, x1 / w, y1 / h])
                rows.append(i)
                steps.append(t)
                scale.append(weights[task] / len(attend))
        if not rows or b.patch_images is None or grid * grid != num_patches:
            return probs.sum() * 0.0
        device = probs.device
        covered = referent_cell_targets(torch.tensor(boxes, device=device), grid) > 0
        union = torch.zeros(len(rows), num_patches, device=device)
        union.index_add_(0, torch.tensor(owners, device=device), covered.float())
        targets = (union > 0).float()
        targets = targets / targets.sum(-1, keepdim=True)
        attended = probs[torch.tensor(rows, device=device), torch.tensor(steps, device=device), :num_patches]
        entropy = -(targets * attended.clamp_min(1e-9).log()).sum(-1)
        return (entropy * torch.tensor(scale, device=device)).sum()

    def key_attribute_loss_sum(self, batch: MicroBatch, keys: Tensor) -> Tensor:
        """Summed over the micro-batch's samples with ``meta["objects"]`` and ``meta["object_boxes"]`` (world
        captions): the cross entropies of `key_heads` on one head's `keys` (B, keys, head_dim) at the patch cells
        each object covers (`referent_cell_targets`), each averaged over the sample's labelled cells and summed over
        size, colour and shape. Zero, with a graph, when no sample has objects."""
        b = batch.batch
        num_patches = keys.shape[1] - b.input_ids.shape[1]  # image patches come first among the keys
        grid = math.isqrt(num_patches)
        total = keys.sum() * 0.0
        if b.patch_images is None or grid * grid != num_patches:
            return total
        for i, meta in enumerate(b.meta):
            objects, boxes = meta.get("objects"), meta.get("object_boxes")
            if not objects or not boxes:
                continue
            w, h = meta["image_size"]
            fractions = torch.tensor([[x0 / w, y0 / h, x1 / w, y1 / h] for x0, y0, x1, y1 in boxes])
            covered = (referent_cell_targets(fractions, grid) > 0).to(keys.device)
            cells, owners = [], []
            for k in range(len(objects)):
                for cell in covered[k].nonzero().flatten().tolist():
                    if cell not in cells:  # a cell two boxes reach keeps the first object
                        cells.append(cell)
                        owners.append(k)
            if not cells:
                continue
            features = keys[i, cells].float()
            for position, (name, vocab) in enumerate(self.attribute_vocab.items()):
                labels = torch.tensor([vocab.index(objects[k][position]) for k in owners], device=keys.device)
                total = total + F.cross_entropy(self.key_heads[name](features), labels)
        return total

    def query_attribute_loss_sum(self, batch: MicroBatch, query: Tensor) -> Tensor:
        """Summed over the micro-batch's grounding samples with ``meta["named"]`` whose ``meta["kind"]`` (absent:
        attribute) is one of ``train.query_attribute_kinds``: the cross entropy of `query_heads` on one head's `query`
        (B, T, head_dim) at each box step for each attribute the expression names, averaged over the sample's (step,
        attribute) pairs. Zero, with a graph, when no sample names one."""
        b = batch.batch
        total = query.sum() * 0.0
        names = list(self.attribute_vocab)
        kinds = self.cfg.query_attribute_kinds
        for i, (task, meta) in enumerate(zip(b.tasks, b.meta)):
            steps = [t for t, _ in meta.get("attend", ()) if t < query.shape[1]]
            pairs = [(names[p], v) for p, v in enumerate(meta.get("named") or ()) if v is not None]
            if (
                task != "grounding"
                or not steps
                or not pairs
                or (meta.get("kind") or "attribute") not in kinds
            ):
                continue
            features = query[i, steps].float()
            for name, value in pairs:
                labels = torch.full(
                    (len(steps),), self.attribute_vocab[name].index(value), device=query.device
                )
                total = total + F.cross_entropy(self.query_heads[name](features), labels) / len(pairs)
        return total

    def expression_attention_loss_sum(self, batch: MicroBatch, probs: Tensor) -> Tensor:
        """Summed over the micro-batch's grounding samples: the cross entropy between uniform targets over the source
        tokens of the expression (``meta["expression"]``) and one head's cross-attention `probs` (B, T, keys) over
        all keys, averaged over the sample's box steps (those of ``meta["attend"]``), times
        ``train.expression_attention_weight``. Zero, with a graph, when no sample has an expression."""
        b = batch.batch
        num_patches = probs.shape[-1] - b.input_ids.shape[1]  # image patches come first among the keys
        rows, steps, spans, scale = [], [], [], []
        for i, (task, meta) in enumerate(zip(b.tasks, b.meta)):
            start, end = meta.get("expression", (0, 0))
            box_steps = [t for t, _ in meta.get("attend", ()) if t < probs.shape[1]]
            if task != "grounding" or end <= start or not box_steps:
                continue
            for t in box_steps:
                rows.append(i)
                steps.append(t)
                spans.append((num_patches + start, num_patches + end))
                scale.append(self.cfg.expression_attention_weight / len(box_steps))
        if not rows:
            return probs.sum() * 0.0
        device = probs.device
        targets = torch.zeros(len(rows), probs.shape[-1], device=device)
        for row, (lo, hi) in enumerate(spans):
            targets[row, lo:hi] = 1.0 / (hi - lo)
        attended = probs[torch.tensor(rows, device=device), torch.tensor(steps, device=device)]
        entropy = -(targets * attended.float().clamp_min(1e-9).log()).sum(-1)
        return (entropy * torch.tensor(scale, device=device)).sum()

    def _token_loss(self, logits: Tensor, target_ids: Tensor) -> Tensor:
        logits, targets = logits.float().flatten(0, 1), target_ids.flatten()
        sigma = self.cfg.bin_label_sigma
        if not sigma:
            return F.cross_entropy(
                logits,
                targets,
                ignore_index=self.pad_id,
                label_smoothing=self.cfg.label_smoothing,
                reduction="sum",
            )
        config = self.model.config
        return ordinal_bin_loss_sum(
            logits, targets, self.pad_id, self.cfg.label_smoothing, config.bin_start, config.num_bins, sigma
        )

    def contrastive_loss(self, batch: MicroBatch) -> Tensor:
        """The CLIP loss of the micro-batch's pairs, with the pairs of the same micro-step on every rank."""
        from .contrastive import clip_loss

        local = self.retrieval.local_loss if self.retrieval is not None else True
        loss = clip_loss(self.trainer.world_size, self.trainer.global_rank, local)
        pairs = batch.pairs
        images = self.model.embed_images(pairs.patch_images, pairs.image_input_ids)
        texts = self.model.embed_texts(pairs.text_input_ids)
        return loss(images, texts, self.model.retrieval.scale())

    def training_step(self, batch: MicroBatch, batch_idx: int) -> Tensor:
        world = self.trainer.world_size
        self._freeze_batchnorm()  # every step: evaluation or user code may have called .train()
        if batch.index == 0:
            tokens = torch.tensor(float(batch.window_tokens), device=self.device, dtype=torch.float64)
            self._window_tokens = self.trainer.strategy.reduce(tokens, reduce_op="sum").float()
            self._window_loss = torch.zeros((), device=self.device, dtype=torch.float64)
            self._window_contrastive = torch.zeros((), device=self.device, dtype=torch.float64)
            self._window_referent = torch.zeros((), device=self.device, dtype=torch.float64)
            if self._last_step_time is None:
                self._last_step_time = time.perf_counter()
        total = self._window_tokens
        loss_sum, referent_sum = self.losses(batch)
        self._window_loss = self._window_loss + loss_sum.detach().double()
        loss = loss_sum * (world * batch.accumulate) / total
        if referent_sum is not None:  # already weighted
            referent = referent_sum / max(1, batch.num_samples)
            self._window_referent = self._window_referent + referent.detach().double()
            loss = loss + referent
        if batch.pairs is not None:
            contrastive = self.contrastive_loss(batch)
            self._window_contrastive = self._window_contrastive + contrastive.detach().double()
            weight = self.retrieval.weight if self.retrieval is not None else 1.0
            loss = loss + weight * contrastive
        if batch.last:
            self._log_step(total, batch)
        return loss

    def _log_step(self, total_tokens: Tensor, batch: MicroBatch) -> None:
        loss = self.trainer.strategy.reduce(self._window_loss, reduce_op="sum") / total_tokens.double()
        contrastive = None
        if batch.pairs is not None:  # mean over ranks and micro-steps
            summed = self.trainer.strategy.reduce(self._window_contrastive, reduce_op="sum")
            contrastive = float(summed) / (self.trainer.world_size * batch.accumulate)
        now = time.perf_counter()
        elapsed = max(now - (self._last_step_time or now), 1e-9)
        self._last_step_time = now
        lr = self.trainer.optimizers[0].param_groups[0]["lr"]
        step = self.trainer.global_step + 1  # the optimizer step this window completes
        values = {
            "train/loss": float(loss),
            "train/lr": float(lr),
            "train/samples_per_sec": self.cfg.batch_size / elapsed,
            "train/tokens_per_sec": float(total_tokens) / elapsed,
        }
        self.log("train/loss", values["train/loss"], prog_bar=True, on_step=True, on_epoch=False)
        self.log("train/lr", values["train/lr"], prog_bar=True, on_step=True, on_epoch=False)
        self.log(
            "train/samples_per_sec",
            values["train/samples_per_sec"],
            prog_bar=True,
            on_step=True,
            on_epoch=False,
        )
        self.log("train/tokens_per_sec", values["train/tokens_per_sec"], on_step=True, on_epoch=False)
        record = {"step": step, "loss": values["train/loss"], "lr": values["train/lr"]}
        if self.has_referent_terms:  # mean over ranks and micro-steps
            summed = self.trainer.strategy.reduce(self._window_referent, reduce_op="sum")
            referent = float(summed) / (self.trainer.world_size * batch.accumulate)
            self.log("train/referent_loss", referent, on_step=True, on_epoch=False)
            record["referent_loss"] = referent
        if contrastive is not None:
            self.log("train/retrieval_loss", contrastive, prog_bar=True, on_step=True, on_epoch=False)
            record["retrieval_loss"] = contrastive
        if self.history_path is not None and self.trainer.is_global_zero:
            with self.history_path.open("a", encoding="utf-8") as f:
                f.write(json.dumps(record) + "\n")

    # ------------------------------------------------------------------------------------- optimizer
    def configure_optimizers(self) -> Any:
        cfg = self.cfg
        groups = parameter_groups(self.model, cfg.weight_decay, cfg.lr_scale)
        heads = [self.referent_head] if self.referent_head is not None else []
        for attribute_heads in (self.key_heads, self.query_heads):
            heads += list(attribute_heads.values()) if attribute_heads is not None else []
        for head in heads:
            groups[0]["params"] = [*groups[0]["params"], head.weight]  # with decay, as model matrices
            groups[1]["params"] = [*groups[1]["params"], head.bias]
        optimizer = torch.optim.AdamW(
            [{**group, "lr": cfg.lr * group["lr_scale"]} for group in groups],
            lr=cfg.lr,
            betas=(cfg.betas[0], cfg.betas[1]),
            eps=cfg.eps,
        )
        scheduler = torch.optim.lr_scheduler.LambdaLR(
            optimizer, lr_lambda(cfg.schedule, cfg.warmup_steps, cfg.max_steps, cfg.min_lr_ratio)
        )
        return {
            "optimizer": optimizer,
            "lr_scheduler": {"scheduler": scheduler, "interval": "step", "frequency": 1},
        }

    # ----------------------------------------------------------------------------------- checkpoints
    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """Store every rank's RNG states (as tensors, one row per rank) and the model config (plain dict)."""
        states = rng_state_tensors(self.device)
        gathered = {}
        for key, value in states.items():
            value = value.to(self.device)
            rows = self.all_gather(value) if self.trainer.world_size > 1 else value.unsqueeze(0)
            gathered[key] = rows.cpu()
        checkpoint["rng_states"] = gathered
        checkpoint["ofa_config"] = self.model.config.to_dict()

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        rows = checkpoint.get("rng_states")
        if rows is None:
            return
        rank = self.trainer.global_rank if self._trainer is not None else 0
        if rows["torch"].shape[0] != (self.trainer.world_size if self._trainer is not None else 1):
            self.print("resume: the device layout changed; RNG states are restored from rank 0's")
            rank = 0
        self._pending_rng = {k: v[min(rank, v.shape[0] - 1)] for k, v in rows.items()}

    def on_train_start(self) -> None:
        # Restored as late as possible, so nothing in the set-up draws from the restored streams.
        if self._pending_rng is not None:
            set_rng_state_tensors(self._pending_rng, self.device)
            self._pending_rng = None
        self._last_step_time = None


__all__ = [
    "OFALightningModule",
    "decoder_input_dropout",
    "lr_lambda",
    "parameter_groups",
    "referent_cell_targets",
    "rng_state_tensors",
    "set_rng_state_tensors",
]
