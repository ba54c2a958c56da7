"""Image-text retrieval recall, scored exactly as Chinese-CLIP's official scripts do.

Definition (``cn_clip/eval/evaluation.py`` and ``evaluation_tr.py``): each query's gallery is ranked by
descending dot product, ties kept in gallery order (a stable sort); a query is a hit at ``k`` if **any**
of its positives is among its top ``k``; ``R@k = hits / #queries``; mean recall
``= (R@1 + R@5 + R@10) / 3`` ("MR" in the Chinese-CLIP tables, not mean rank). Both are reported x100.
Text->image queries are the annotated texts; image->text queries are only the images that appear in
the annotations (as the official ``transform_ir_annotation_to_tr`` script produces).
"""

from __future__ import annotations

from collections.abc import Hashable, Mapping, Sequence
from typing import Any

import numpy as np
import torch

__all__ = ["recall_at_k", "retrieval_metrics"]


def _as_tensor(x: Any) -> torch.Tensor:
    return x.detach() if isinstance(x, torch.Tensor) else torch.as_tensor(np.asarray(x))


def recall_at_k(
    similarity: torch.Tensor, positives: Sequence[set[int]], ks: Sequence[int] = (1, 5, 10), chunk: int = 1024
) -> dict[str, float]:
    """``{"R@k" for k in ks, "mean_recall"}`` (x100) for a ``(Q, G)`` query-by-gallery score matrix.

    ``positives[q]`` holds the gallery indices that are correct for query ``q`` (a query with none is a
    miss). Ranking is by descending score with a stable sort, so ties keep gallery order; ``k`` larger
    than the gallery means the whole gallery. ``mean_recall`` is the mean over ``ks`` (computed on
    fractions, then x100, as the official script does). Rows are sorted ``chunk`` at a time.
    """
    sim = _as_tensor(similarity)
    if sim.ndim != 2 or sim.shape[0] != len(positives):
        raise ValueError(f"similarity {tuple(sim.shape)} does not match {len(positives)} queries")
    n_q, n_g = sim.shape
    if n_q == 0:
        raise ValueError("no queries")
    kmax = min(max(ks), n_g)
    first_hit = torch.full((n_q,), n_g, dtype=torch.long)  # rank (0-based) of the best positive; n_g = none
    for start in range(0, n_q, chunk):
        rows = sim[start : start + chunk]
        order = torch.sort(rows, dim=1, descending=True, stable=True).indices[:, :kmax].cpu()
        mask = torch.zeros(rows.shape[0], n_g, dtype=torch.bool)
        for r, pos in enumerate(positives[start : start + chunk]):
            idx = [int(p) for p in pos]
            if any(not 0 <= p < n_g for p in idx):
                raise IndexError(f"query {start + r}: positive index outside the gallery of {n_g}")
            mask[r, idx] = True
        hit = mask.gather(1, order)  # (rows, kmax): is the item at rank j a positive?
        any_hit = hit.any(dim=1)
        first = hit.float().argmax(dim=1)
        first_hit[start : start + rows.shape[0]] = torch.where(any_hit, first, torch.full_like(first, n_g))
    fractions = [int((first_hit < k).sum()) * 1.0 / n_q for k in ks]
    out = {f"R@{k}": f * 100 for k, f in zip(ks, fractions)}
    out["mean_recall"] = sum(fractions) / len(fractions) * 100
    return out


def retrieval_metrics(
    text_features: Any,
    image_features: Any,
    text_to_images: Mapping[Hashable, Sequence[Hashable]],
    text_ids: Sequence[Hashable],
    image_ids: Sequence[Hashable],
    ks: Sequence[int] = (1, 5, 10),
) -> dict[str, float]:
    """Both directions of Chinese-CLIP retrieval recall from feature matrices (rows = ``text_ids`` / ``image_ids``).

    Features are used as given (normalise them first, as the official pipeline does); scores are their dot
    products in the features' dtype. ``text_to_images`` is the annotation (text id -> positive image ids);
    its texts are the text->image queries, and the images it mentions are the image->text queries. The
    galleries are all ``image_ids`` / all ``text_ids``. Returns ``t2i_R@k``, ``t2i_mean_recall``,
    ``i2t_R@k``, ``i2t_mean_recall`` (x100).
    """
    t, v = _as_tensor(text_features), _as_tensor(image_features)
    if not (t.is_floating_point() and v.is_floating_point()):
        t, v = t.float(), v.float()
    if t.dtype != v.dtype:
        t, v = t.float(), v.float()
    if t.shape[0] != len(text_ids) or v.shape[0] != len(image_ids):
        raise ValueError(
            f"features {tuple(t.shape)}, {tuple(v.shape)} vs {len(text_ids)} texts, {len(image_ids)} images"
        )
    t_index = {tid: i for i, tid in enumerate(text_ids)}
    i_index = {iid: i for i, iid in enumerate(image_ids)}
    missing = [x for x in text_to_images if x not in t_index]
    missing += [y for ys in text_to_images.values() for y in ys if y not in i_index]
    if missing:
        raise KeyError(f"annotated ids without features, e.g. {missing[:5]}")

    queries_t = list(text_to_images)
    pos_t2i = [{i_index[y] for y in text_to_images[x]} for x in queries_t]
    image_to_texts: dict[Hashable, set[int]] = {}  # insertion order = first appearance in the annotation
    for x in queries_t:
        for y in text_to_images[x]:
            image_to_texts.setdefault(y, set()).add(t_index[x])
    queries_i = list(image_to_texts)

    t_rows = t[[t_index[x] for x in queries_t]]
    v_rows = v[[i_index[y] for y in queries_i]]
    out = {f"t2i_{k}": val for k, val in recall_at_k(t_rows @ v.T, pos_t2i, ks).items()}
    out |= {
        f"i2t_{k}": val for k, val in recall_at_k(v_rows @ t.T, list(image_to_texts.values()), ks).items()
    }
    return out
