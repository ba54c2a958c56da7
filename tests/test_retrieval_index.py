"""EmbeddingIndex: exact search against brute force, HNSW recall, save/load, and errors.

Truth is float64 numpy brute force (every score, then a full sort), independent of both the torch matmul of
the flat index and faiss's graph search.
"""

from __future__ import annotations

import pickle
import zipfile

import numpy as np
import pytest
import torch

from ofa.retrieval import index as index_module
from ofa.retrieval.index import EmbeddingIndex, RetrievalIndexError

needs_faiss = pytest.mark.skipif(not index_module.faiss_available(), reason="faiss-cpu is not installed")


def unit_rows(x: np.ndarray) -> np.ndarray:
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def random_unit(n: int, dim: int, seed: int) -> np.ndarray:
    return unit_rows(np.random.default_rng(seed).standard_normal((n, dim)))


def clustered_unit(n: int, dim: int, n_centres: int, seed: int) -> np.ndarray:
    """Unit vectors around random centres (cosine to the centre about 0.6), like real embeddings."""
    rng = np.random.default_rng(seed)
    centres = unit_rows(rng.standard_normal((n_centres, dim)))
    noise = rng.standard_normal((n, dim)) * (1.3 / np.sqrt(dim))
    return unit_rows(centres[rng.integers(0, n_centres, n)] + noise)


def brute_force(gallery: np.ndarray, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    scores = queries.astype(np.float64) @ gallery.astype(np.float64).T
    order = np.argsort(-scores, axis=1, kind="stable")[:, :k]
    return np.take_along_axis(scores, order, axis=1), order


# ------------------------------------------------------------------------------------------- exact search
def test_flat_search_equals_brute_force():
    gallery, queries = random_unit(3000, 48, seed=1), random_unit(300, 48, seed=2)
    index = EmbeddingIndex(48)
    index.add(gallery[:1000])  # incremental adds keep consecutive default ids
    index.add(torch.from_numpy(gallery[1000:]))
    scores, ids = index.search(queries, k=10)
    truth_scores, truth_ids = brute_force(gallery, queries, 10)
    assert scores.shape == ids.shape == (300, 10) and ids.dtype == np.int64 and scores.dtype == np.float32
    np.testing.assert_array_equal(ids, truth_ids)
    np.testing.assert_allclose(scores, truth_scores, atol=1e-5)


def test_flat_search_with_string_ids_and_cosine():
    rng = np.random.default_rng(3)
    gallery = (rng.standard_normal((200, 16)) * rng.uniform(0.1, 10, (200, 1))).astype(
        np.float32
    )  # any norms
    names = [f"img_{i:04d}.jpg" for i in range(200)]
    query = rng.standard_normal(16).astype(np.float32)
    index = EmbeddingIndex(16, metric="cosine")
    index.add(gallery, ids=names)
    scores, ids = index.search(query, k=5)  # a single vector is a batch of one
    truth_scores, truth_positions = brute_force(unit_rows(gallery), unit_rows(query[None]), 5)
    assert ids.tolist() == [[names[i] for i in truth_positions[0]]]
    np.testing.assert_allclose(scores, truth_scores, atol=1e-5)
    # a hand-checkable case: the best match of a gallery row is itself, with cosine 1
    scores, ids = index.search(gallery[7] * 3.0, k=1)
    assert ids[0, 0] == "img_0007.jpg" and scores[0, 0] == pytest.approx(1.0, abs=1e-6)


def test_inner_product_metric_keeps_norms():
    index = EmbeddingIndex(2, metric="ip")
    index.add(np.array([[1.0, 0.0], [3.0, 0.0], [0.0, 2.0]]), ids=[10, 20, 30])
    scores, ids = index.search(np.array([[1.0, 1.0]]), k=3)
    assert ids.tolist() == [[20, 30, 10]] and scores.tolist() == [[3.0, 2.0, 1.0]]


# ------------------------------------------------------------------------------------------------ HNSW
@needs_faiss
def test_hnsw_recall_on_clustered_gallery():
    data = clustered_unit(20_500, 64, n_centres=500, seed=4)
    gallery, queries = data[:20_000], data[20_000:]
    index = EmbeddingIndex(64, kind="hnsw")  # defaults: M=32, ef_search=64 (recall 0.98 here)
    index.add(gallery, ids=np.arange(20_000) * 7 + 5)  # ids unrelated to positions
    _, ids = index.search(queries, k=10)
    _, truth = brute_force(gallery, queries, 10)
    recall = np.mean([len(set(found) & set(exact * 7 + 5)) / 10 for found, exact in zip(ids.tolist(), truth)])
    assert recall >= 0.95


@needs_faiss
def test_hnsw_with_wide_search_is_exact_on_a_small_gallery():
    gallery, queries = random_unit(300, 32, seed=5), random_unit(40, 32, seed=6)
    index = EmbeddingIndex(32, kind="hnsw", ef_search=300)  # the candidate list covers the whole gallery
    index.add(gallery, ids=[f"g{i}" for i in range(300)])
    scores, ids = index.search(queries, k=10)
    truth_scores, truth_ids = brute_force(gallery, queries, 10)
    assert ids.tolist() == [[f"g{i}" for i in row] for row in truth_ids]
    np.testing.assert_allclose(scores, truth_scores, atol=1e-5)


def test_hnsw_without_faiss_falls_back_to_exact(monkeypatch):
    monkeypatch.setattr(index_module, "faiss", None)
    with pytest.warns(UserWarning, match="falls back to exact"):
        index = EmbeddingIndex(8, kind="hnsw")
    assert index.kind == "flat"
    gallery = random_unit(50, 8, seed=7)
    index.add(gallery)
    np.testing.assert_array_equal(index.search(gallery[:3], k=4)[1], brute_force(gallery, gallery[:3], 4)[1])


# ------------------------------------------------------------------------------------------------ save / load
@pytest.mark.parametrize("kind", ["flat", pytest.param("hnsw", marks=needs_faiss)])
@pytest.mark.parametrize("ids", ["ints", "strings"])
def test_save_load_round_trip(tmp_path, kind, ids):
    gallery, queries = random_unit(500, 24, seed=8), random_unit(20, 24, seed=9)
    keys = list(range(1000, 1500)) if ids == "ints" else [f"doc-{i}" for i in range(500)]
    index = EmbeddingIndex(24, metric="cosine", kind=kind, hnsw_m=8, ef_construction=40, ef_search=50)
    index.add(gallery, ids=keys)
    path = tmp_path / "sub" / "gallery.index"
    index.save(path)
    index.save(path)  # overwriting an existing file is fine too
    assert sorted(p.name for p in path.parent.iterdir()) == ["gallery.index"]  # no temporary file left

    loaded = EmbeddingIndex.load(path)
    assert (loaded.dim, loaded.metric, loaded.kind, len(loaded)) == (24, "cosine", kind, 500)
    assert (loaded.hnsw_m, loaded.ef_construction, loaded.ef_search) == (8, 40, 50)
    assert loaded.ids.tolist() == keys
    for before, after in zip(index.search(queries, 7), loaded.search(queries, 7)):
        np.testing.assert_array_equal(before, after)
    loaded.add(random_unit(1, 24, seed=10), ids=[2000] if ids == "ints" else ["new"])  # still growable
    assert len(loaded) == 501


def test_failed_save_leaves_the_old_file(tmp_path, monkeypatch):
    index = EmbeddingIndex(4)
    index.add(np.eye(4))
    path = tmp_path / "gallery.index"
    index.save(path)
    before = path.read_bytes()

    def broken_savez(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(index_module.np, "savez", broken_savez)
    index.add(np.ones((1, 4)))
    with pytest.raises(OSError, match="disk full"):
        index.save(path)
    assert path.read_bytes() == before and [p.name for p in tmp_path.iterdir()] == ["gallery.index"]


class _Boom:
    def __reduce__(self):
        return (exec, ("import pathlib; pathlib.Path('PWNED').write_text('x')",))


def test_load_never_unpickles(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    pickled = tmp_path / "evil.index"
    pickled.write_bytes(pickle.dumps(_Boom()))
    with pytest.raises(RetrievalIndexError, match="not an embedding index"):
        EmbeddingIndex.load(pickled)
    # an npz whose id array is a pickled object array
    with open(tmp_path / "evil.npz", "wb") as file:
        np.savez(file, header=np.frombuffer(b"{}", np.uint8), ids=np.array([_Boom()], dtype=object))
    with pytest.raises(RetrievalIndexError, match="unreadable index file"):
        EmbeddingIndex.load(tmp_path / "evil.npz")
    assert not (tmp_path / "PWNED").exists()


def test_load_errors(tmp_path):
    with pytest.raises(RetrievalIndexError, match="no such index file"):
        EmbeddingIndex.load(tmp_path / "missing.index")
    with zipfile.ZipFile(tmp_path / "other.zip", "w") as archive:
        archive.writestr("readme.txt", "hello")
    with pytest.raises(RetrievalIndexError, match="not an embedding index"):
        EmbeddingIndex.load(tmp_path / "other.zip")

    index = EmbeddingIndex(4)
    index.add(np.eye(4))
    index.save(tmp_path / "good.index")
    with np.load(tmp_path / "good.index") as archive:
        arrays = dict(archive)
    with open(tmp_path / "short.index", "wb") as file:  # vectors that disagree with the ids
        np.savez(file, **{**arrays, "vectors": arrays["vectors"][:2]})
    with pytest.raises(RetrievalIndexError, match="vectors do not match"):
        EmbeddingIndex.load(tmp_path / "short.index")
    data = (tmp_path / "good.index").read_bytes()
    (tmp_path / "truncated.index").write_bytes(data[: len(data) // 2])
    with pytest.raises(RetrievalIndexError):
        EmbeddingIndex.load(tmp_path / "truncated.index")


@needs_faiss
def test_load_hnsw_without_faiss_is_a_clear_error(tmp_path, monkeypatch):
    index = EmbeddingIndex(4, kind="hnsw")
    index.add(np.eye(4))
    index.save(tmp_path / "graph.index")
    monkeypatch.setattr(index_module, "faiss", None)
    with pytest.raises(RetrievalIndexError, match="needs faiss"):
        EmbeddingIndex.load(tmp_path / "graph.index")


# ------------------------------------------------------------------------------------------------ errors
def test_search_errors():
    index = EmbeddingIndex(4)
    with pytest.raises(RetrievalIndexError, match="index is empty"):
        index.search(np.ones((1, 4)), k=1)
    index.add(np.eye(4))
    with pytest.raises(RetrievalIndexError, match=r"k=5 is larger than the index \(4 entries\)"):
        index.search(np.ones((1, 4)), k=5)
    with pytest.raises(RetrievalIndexError, match="k must be a positive integer"):
        index.search(np.ones((1, 4)), k=0)
    with pytest.raises(RetrievalIndexError, match=r"queries must have shape \(n, 4\); got \(2, 3\)"):
        index.search(np.ones((2, 3)), k=1)
    with pytest.raises(RetrievalIndexError, match="NaN"):
        index.search(np.full((1, 4), np.nan), k=1)


def test_add_errors():
    index = EmbeddingIndex(4, metric="cosine")
    with pytest.raises(RetrievalIndexError, match=r"embeddings must have shape \(n, 4\); got \(2, 5\)"):
        index.add(np.ones((2, 5)))
    with pytest.raises(RetrievalIndexError, match="2 embeddings but 3 ids"):
        index.add(np.ones((2, 4)), ids=[1, 2, 3])
    with pytest.raises(RetrievalIndexError, match="duplicate id 'a'"):
        index.add(np.ones((2, 4)), ids=["a", "a"])
    with pytest.raises(RetrievalIndexError, match="all integers or all strings"):
        index.add(np.ones((2, 4)), ids=[1, "b"])
    with pytest.raises(RetrievalIndexError, match="all-zero row"):
        index.add(np.zeros((1, 4)), ids=[1])
    index.add(np.eye(4), ids=[1, 2, 3, 4])
    with pytest.raises(RetrievalIndexError, match="duplicate id 3"):
        index.add(np.ones((2, 4)), ids=[9, 3])
    with pytest.raises(RetrievalIndexError, match="has integer ids; got string ids"):
        index.add(np.ones((1, 4)), ids=["x"])
    assert len(index) == 4  # failed adds change nothing


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"dim": 0}, "dim must be a positive integer"),
        ({"dim": 8, "metric": "l2"}, "unknown metric 'l2'"),
        ({"dim": 8, "kind": "ivf"}, "unknown index kind 'ivf'"),
        ({"dim": 8, "ef_search": 0}, "ef_search must be a positive integer"),
    ],
)
def test_constructor_errors(kwargs, message):
    with pytest.raises(RetrievalIndexError, match=message):
        EmbeddingIndex(**kwargs)
