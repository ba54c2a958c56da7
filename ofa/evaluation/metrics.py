"""Evaluation metrics for captioning, world-caption object F1 and visual grounding.

Every public scorer returns a flat ``dict[str, float]``.

Captioning (:func:`caption_metrics`) reuses the COCO caption evaluation code of ``pycocoevalcap``:
BLEU-4, METEOR, ROUGE-L and CIDEr-D (pycocoevalcap's ``Cider`` *is* CIDEr-D: clipped n-gram counts,
Gaussian length penalty with sigma 6, x10, document frequencies taken from the references of the
evaluated images). Scores are on the usual 0-1 scale (CIDEr-D is up to 10 in principle and often
exceeds 1); they are not multiplied by 100.

Language handling
    ``lang="en"``: the standard COCO pipeline: the Stanford PTB tokenizer (Java, lower-cases and drops
    punctuation tokens) then the scorers. Without Java a pure-Python approximation of the tokenizer is
    used (with a warning): lower-case, split off punctuation, drop it; clitics ("n't", "'s") are not split
    as PTB does, so scores may differ slightly from the official ones.
    ``lang="zh"``: every caption is scored on characters: whitespace and punctuation (Unicode category
    ``P*``) are dropped and each remaining character becomes one token (Latin letters lower-cased and also
    split per character). The PTB tokenizer is skipped. METEOR has no Chinese resources and is therefore
    only reported for English; SPICE likewise (its parser is English-only).

Java
    METEOR needs Java: if ``meteor=True`` (default, English) and ``java`` is not on ``PATH`` a
    ``RuntimeError`` says so (pass ``meteor=False`` to score without it).

SPICE
    pycocoevalcap's SPICE downloads Stanford CoreNLP on first use, which cannot work offline. It is
    computed only when those models are already in pycocoevalcap's ``spice/lib`` folder
    (``stanford-corenlp-3.6.0.jar`` and ``stanford-corenlp-3.6.0-models.jar``); otherwise, and on any
    failure of the SPICE jar, it is skipped with one warning and the key is absent. ``spice=False``
    skips it silently, as does the default (None) for Chinese.

pycocoevalcap behaviour worth knowing
    * CIDEr-D on a single image is always 0 (its idf is ``log(#images) - log(df)`` = 0); n-grams found
      in the references of *every* evaluated image also weigh 0. Score whole splits, not single images.
    * The PTB tokenizer lower-cases before its punctuation filter, so brackets survive as the tokens
      ``-lrb-`` / ``-rrb-`` (this is what the official COCO numbers do too).
    * BLEU is corpus-level (clipped counts summed over all images, "closest" reference length).
"""

from __future__ import annotations

import re
import shutil
import unicodedata
import warnings
from collections import Counter
from collections.abc import Hashable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

__all__ = [
    "box_iou",
    "caption_metrics",
    "grounding_metrics",
    "java_available",
    "object_f1",
    "spice_models_present",
    "tokenize_en_python",
    "tokenize_zh_chars",
    "world_caption_f1",
]

# ------------------------------------------------------------------------------------ captions

# The punctuation tokens pycocoevalcap's PTBTokenizer removes (after lower-casing).
_PTB_PUNCT = {
    "''",
    "'",
    "``",
    "`",
    "-LRB-",
    "-RRB-",
    "-LCB-",
    "-RCB-",
    ".",
    "?",
    "!",
    ",",
    ":",
    "-",
    "--",
    "...",
    ";",
}
_PY_TOKEN = re.compile(r"\w+(?:[-']\w+)*|\S")


def java_available() -> bool:
    """True if a ``java`` executable is on ``PATH``."""
    return shutil.which("java") is not None


def tokenize_en_python(caption: str) -> str:
    """Pure-Python stand-in for the PTB tokenizer: lower-case, split off punctuation and drop it."""
    toks = _PY_TOKEN.findall(caption.lower())
    return " ".join(
        t for t in toks if t not in _PTB_PUNCT and not all(unicodedata.category(c).startswith("P") for c in t)
    )


def tokenize_zh_chars(caption: str) -> str:
    """Characters of ``caption`` separated by spaces; whitespace, control and punctuation characters dropped."""
    keep = [c for c in caption.lower() if not (c.isspace() or unicodedata.category(c)[0] in "PZC")]
    return " ".join(keep)


def _ptb_tokenize(captions: dict[Any, list[str]]) -> dict[Any, list[str]]:
    """pycocoevalcap's PTBTokenizer on ``{key: [caption, ...]}``; Python fallback (with a warning) without Java."""
    if java_available():
        from pycocoevalcap.tokenizer.ptbtokenizer import PTBTokenizer

        try:
            out = PTBTokenizer().tokenize({k: [{"caption": c} for c in v] for k, v in captions.items()})
            if all(len(out.get(k, [])) == len(v) for k, v in captions.items()):
                return out
            reason = "its output did not line up with the input"
        except (OSError, ValueError) as e:  # e.g. a read-only site-packages (it writes a temp file there)
            reason = f"it failed ({e})"
    else:
        reason = "java was not found on PATH"
    warnings.warn(
        f"PTB tokenizer unavailable: {reason}; using a pure-Python approximation "
        "(scores may differ slightly from the official COCO numbers)",
        RuntimeWarning,
        stacklevel=3,
    )
    return {k: [tokenize_en_python(c) for c in v] for k, v in captions.items()}


def spice_models_present() -> bool:
    """True if the Stanford CoreNLP jars SPICE needs are already where pycocoevalcap looks for them."""
    try:
        import pycocoevalcap.spice.get_stanford_models as g
    except ImportError:
        return False
    lib = Path(g.SPICEDIR) / g.SPICELIB
    return all((lib / f"{g.JAR}{suffix}.jar").exists() for suffix in ("", "-models"))


def _spice(gts: dict, res: dict) -> float | None:
    """SPICE F-score, or None (after one warning) when it cannot run here."""
    if not java_available():
        warnings.warn("SPICE skipped: java was not found on PATH", RuntimeWarning, stacklevel=3)
        return None
    if not spice_models_present():
        warnings.warn(
            "SPICE skipped: the Stanford CoreNLP 3.6.0 models are not installed in pycocoevalcap/spice/lib "
            "(pycocoevalcap would download them; run pycocoevalcap.spice.get_stanford_models once online)",
            RuntimeWarning,
            stacklevel=3,
        )
        return None
    try:
        from pycocoevalcap.spice.spice import Spice

        score, _ = Spice().compute_score(gts, res)
        return float(score)
    except Exception as e:  # SPICE must never take the evaluation down
        warnings.warn(f"SPICE skipped: the SPICE scorer failed ({e!r})", RuntimeWarning, stacklevel=3)
        return None


def _meteor(gts: dict, res: dict) -> float:
    from pycocoevalcap.meteor.meteor import Meteor

    m = Meteor()
    try:
        score, _ = m.compute_score(gts, res)
    except ValueError as e:  # the jar died (e.g. out of memory): it printed nothing parseable
        err = (
            m.meteor_p.stderr.read().decode(errors="replace")[-2000:] if m.meteor_p.poll() is not None else ""
        )
        raise RuntimeError(f"METEOR jar failed: {e}\n{err}") from e
    finally:  # stop the jar now rather than whenever the garbage collector runs Meteor.__del__
        m.meteor_p.kill()
        m.meteor_p.wait()
        for stream in (m.meteor_p.stdin, m.meteor_p.stdout, m.meteor_p.stderr):
            stream.close()
    return float(score)


def caption_metrics(
    predictions: Mapping[Hashable, str],
    references: Mapping[Hashable, Sequence[str]],
    lang: str = "en",
    spice: bool | None = None,
    meteor: bool = True,
) -> dict[str, float]:
    """COCO caption metrics: ``{"CIDEr", "BLEU-4", "METEOR" (en only), "ROUGE-L", ["SPICE"]}``.

    ``predictions`` maps an image id to one generated caption, ``references`` an image id to its
    reference captions. The images scored are those of ``predictions`` (as in COCOEvalCap); each
    must have at least one reference; extra reference ids are ignored. Scores are on the 0-1 scale
    (CIDEr-D can exceed 1). ``spice``: None/True = compute SPICE if its models are present locally,
    else warn and skip; False = skip silently. See the module docstring for tokenisation and Java.
    """
    if lang not in ("en", "zh"):
        raise ValueError(f"unsupported language {lang!r} (expected 'en' or 'zh')")
    if not predictions:
        raise ValueError("no predictions to score")
    if lang == "en" and meteor and not java_available():
        raise RuntimeError("METEOR needs Java (java not found on PATH); install a JRE or pass meteor=False")
    missing = [k for k in predictions if not references.get(k)]
    if missing:
        raise KeyError(f"{len(missing)} predicted image ids have no references, e.g. {missing[:5]}")
    ids = list(predictions)
    # Internal integer keys: pycocoevalcap sorts / compares keys, and ids may be of mixed types.
    raw_res = {i: [str(predictions[k])] for i, k in enumerate(ids)}
    raw_gts = {i: [str(c) for c in references[k]] for i, k in enumerate(ids)}

    if lang == "en":
        both = _ptb_tokenize(
            {**{("r", i): v for i, v in raw_res.items()}, **{("g", i): v for i, v in raw_gts.items()}}
        )
        res = {i: both[("r", i)] for i in raw_res}
        gts = {i: both[("g", i)] for i in raw_gts}
    else:
        res = {i: [tokenize_zh_chars(c) for c in v] for i, v in raw_res.items()}
        gts = {i: [tokenize_zh_chars(c) for c in v] for i, v in raw_gts.items()}

    from pycocoevalcap.bleu.bleu import Bleu
    from pycocoevalcap.cider.cider import Cider
    from pycocoevalcap.rouge.rouge import Rouge

    out: dict[str, float] = {}
    out["CIDEr"] = float(Cider().compute_score(gts, res)[0])
    out["BLEU-4"] = float(Bleu(4).compute_score(gts, res, verbose=0)[0][3])
    if lang == "en" and meteor:
        out["METEOR"] = _meteor(gts, res)
    out["ROUGE-L"] = float(Rouge().compute_score(gts, res)[0])
    if spice is not False:
        if lang != "en":
            if spice:
                warnings.warn("SPICE skipped: it only supports English", RuntimeWarning, stacklevel=2)
        else:
            s = _spice(gts, res)
            if s is not None:
                out["SPICE"] = s
    return out


# ----------------------------------------------------------------------------------- object F1

Mention = tuple[Any, Any, Any]  # (size | None, colour, shape)


def _match_count(pred: Iterable[Mention], ref: Iterable[Mention]) -> int:
    """Size of a maximum matching of predicted to reference (size, colour, shape) multisets.

    Exact triples match first; then predictions with ``size=None`` match any leftover reference of the
    same colour and shape (this greedy order is optimal: a sized prediction has a single possible partner).
    """
    p, r = Counter(tuple(m) for m in pred), Counter(tuple(m) for m in ref)
    exact = p & r
    tp = sum(exact.values())
    left = r - exact
    left_pairs = Counter()
    for (_, colour, shape), n in left.items():
        left_pairs[(colour, shape)] += n
    wild = Counter()
    for (size, colour, shape), n in p.items():
        if size is None:
            wild[(colour, shape)] += n
    return tp + sum((wild & left_pairs).values())


def object_f1(
    predicted_mentions: Sequence[Sequence[Mention]], reference_objects: Sequence[Sequence[Mention]]
) -> dict[str, float]:
    """Micro-averaged object precision / recall / F1 over a dataset.

    Per image, predicted and reference ``(size, colour, shape)`` tuples are matched as multisets (a
    duplicate counts only as often as the reference has it). A predicted tuple whose size is None
    ("a red circle": the caption did not say) matches a reference of the same colour and shape.
    True positives and the totals are summed over images: ``P = TP / #predicted``, ``R = TP / #reference``.
    An undefined ratio is 0, except that no predictions and no references at all score 1.
    """
    if len(predicted_mentions) != len(reference_objects):
        raise ValueError(f"{len(predicted_mentions)} predictions vs {len(reference_objects)} references")
    tp = n_pred = n_ref = 0
    for pred, ref in zip(predicted_mentions, reference_objects):
        pred, ref = list(pred), list(ref)
        tp += _match_count(pred, ref)
        n_pred += len(pred)
        n_ref += len(ref)
    if n_pred == 0 and n_ref == 0:
        return {"object_precision": 1.0, "object_recall": 1.0, "object_f1": 1.0}
    p = tp / n_pred if n_pred else 0.0
    r = tp / n_ref if n_ref else 0.0
    f = 2 * p * r / (p + r) if p + r > 0 else 0.0
    return {"object_precision": p, "object_recall": r, "object_f1": f}


def _triple(o: Any) -> Mention:
    """(size, colour, shape) of a WorldObject, a dict with those keys, or a 3-tuple."""
    if isinstance(o, Mapping):
        return o["size"], o["colour"], o["shape"]
    if hasattr(o, "colour"):
        return o.size, o.colour, o.shape
    size, colour, shape = o
    return size, colour, shape


def world_caption_f1(
    captions: Sequence[str], scenes_objects: Sequence[Sequence[Any]], lang: str
) -> dict[str, float]:
    """:func:`object_f1` of generated world captions (parsed with ``parse_mentions``) against scene objects.

    ``scenes_objects[i]`` holds the objects of caption ``i``'s scene: ``WorldObject``s, their
    ``to_dict()`` dicts, or ``(size, colour, shape)`` tuples.
    """
    from ofa.data.world import parse_mentions

    if len(captions) != len(scenes_objects):
        raise ValueError(f"{len(captions)} captions vs {len(scenes_objects)} scenes")
    preds = [parse_mentions(c, lang) for c in captions]
    refs = [[_triple(o) for o in objs] for objs in scenes_objects]
    return object_f1(preds, refs)


# ----------------------------------------------------------------------------------- grounding


def box_iou(a: Any, b: Any) -> Any:
    """Elementwise IoU of paired ``(N, 4)`` xyxy boxes (continuous coordinates, area = w * h).

    A pair where either box has a non-finite coordinate, ``x1 < x0`` or ``y1 < y0``, or where the union
    is empty, gets IoU 0. Returns a float64 torch tensor (CPU) if either input is a tensor, else a numpy array.
    """
    as_torch = isinstance(a, torch.Tensor) or isinstance(b, torch.Tensor)

    def f64(x: Any) -> torch.Tensor:
        if isinstance(x, torch.Tensor):
            return x.detach().to("cpu", torch.float64)
        return torch.as_tensor(np.asarray(x, dtype=np.float64))

    ta, tb = f64(a).reshape(-1, 4), f64(b).reshape(-1, 4)
    if ta.shape != tb.shape:
        raise ValueError(f"box_iou pairs boxes elementwise: got {tuple(ta.shape)} and {tuple(tb.shape)}")

    def valid(x: torch.Tensor) -> torch.Tensor:
        return torch.isfinite(x).all(dim=1) & (x[:, 2] >= x[:, 0]) & (x[:, 3] >= x[:, 1])

    ok = valid(ta) & valid(tb)
    ta, tb = torch.where(ok[:, None], ta, 0.0), torch.where(ok[:, None], tb, 0.0)
    iw = (torch.minimum(ta[:, 2], tb[:, 2]) - torch.maximum(ta[:, 0], tb[:, 0])).clamp(min=0)
    ih = (torch.minimum(ta[:, 3], tb[:, 3]) - torch.maximum(ta[:, 1], tb[:, 1])).clamp(min=0)
    inter = iw * ih
    area_a = (ta[:, 2] - ta[:, 0]) * (ta[:, 3] - ta[:, 1])
    area_b = (tb[:, 2] - tb[:, 0]) * (tb[:, 3] - tb[:, 1])
    union = area_a + area_b - inter
    iou = torch.where(ok & (union > 0), inter / union.clamp(min=1e-300), 0.0)
    iou = torch.nan_to_num(iou, nan=0.0, posinf=0.0, neginf=0.0)  # inf - inf on huge boxes
    return iou if as_torch else iou.numpy()


def grounding_metrics(pred_boxes: Any, gt_boxes: Any, threshold: float = 0.5) -> dict[str, float]:
    """``{"Acc@<threshold>": fraction with IoU >= threshold, "mean_IoU": ...}`` over paired boxes (0-1 scale).

    As in OFA's RefCOCO evaluation the threshold is inclusive (IoU exactly 0.5 is a hit). Garbage
    predictions (NaN, inverted boxes) count as IoU 0.
    """
    iou = np.asarray(box_iou(pred_boxes, gt_boxes), dtype=np.float64)
    if iou.size == 0:
        raise ValueError("no boxes to score")
    return {f"Acc@{threshold:g}": float((iou >= threshold).mean()), "mean_IoU": float(iou.mean())}
