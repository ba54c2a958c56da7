"""Gallery index benchmark: exact vs approximate nearest neighbours of unit embeddings, faiss vs usearch.

For each gallery (``random``: uniform unit vectors, the hardest case for graph indexes; ``clustered``: unit
vectors around 1000 centres, closer to real embeddings) and each index it reports the build time, the
serialised size (vectors + graph or lists; about what the index holds in memory), the latency per query at
batch 1 and at batch 64 (median and p95), and recall@10 against exact brute force in torch (one matmul +
top-k, independent of every library under test).

    OMP_NUM_THREADS=1 python bench/bench_retrieval_index.py                     # everything, one thread
    python bench/bench_retrieval_index.py --indexes faiss-flat faiss-hnsw       # a subset, default threads
    python bench/bench_retrieval_index.py --n 20000 --datasets clustered        # quick

``--threads`` defaults to ``OMP_NUM_THREADS`` when set (0 = each library's own default: all cores). Libraries
that are not installed are skipped with a note (the project depends on faiss-cpu only; ``pip install usearch``
to compare). The machine's load average is printed before and after: on a shared CPU the numbers are only
comparable within one run.
"""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch

from ofa.retrieval.index import EmbeddingIndex

INDEXES = ("torch-flat", "faiss-flat", "faiss-hnsw", "faiss-ivf", "usearch-exact", "usearch-hnsw")
DATASETS = ("random", "clustered")
COLUMNS = ("gallery", "index", "search", "build s", "index MB", "b1 median ms", "b1 p95 ms")
COLUMNS += ("b64 median ms/q", "b64 p95 ms/q", "recall@10")
SearchFn = Callable[[np.ndarray, int], np.ndarray]  # (queries, k) -> gallery positions (n_queries, k)


@dataclass
class BuiltIndex:
    build_s: float
    nbytes: int
    # one search function per setting, e.g. {"ef=64": fn, "ef=128": fn}
    searches: dict[str, SearchFn]


# ------------------------------------------------------------------------------------------------- data
def unit_rows(x: np.ndarray) -> np.ndarray:
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def make_dataset(name: str, n: int, n_queries: int, dim: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Gallery and queries drawn from the same distribution."""
    rng = np.random.default_rng(seed)
    if name == "random":
        return (
            unit_rows(rng.standard_normal((n, dim), dtype=np.float32)),
            unit_rows(rng.standard_normal((n_queries, dim), dtype=np.float32)),
        )
    # Clusters of different tightness: a point's cosine to its centre is about 1 / sqrt(1 + spread^2).
    n_centres = 1000
    centres = unit_rows(rng.standard_normal((n_centres, dim), dtype=np.float32))
    spread = rng.uniform(0.5, 1.0, n_centres).astype(np.float32)

    def sample(count: int) -> np.ndarray:
        label = rng.integers(0, n_centres, count)
        noise = rng.standard_normal((count, dim), dtype=np.float32) / np.sqrt(dim)
        return unit_rows(centres[label] + spread[label, None] * noise)

    return sample(n), sample(n_queries)


def exact_top_k(gallery: np.ndarray, queries: np.ndarray, k: int) -> np.ndarray:
    """Ground truth: brute-force inner products in torch."""
    scores = torch.from_numpy(queries) @ torch.from_numpy(gallery).T
    return scores.topk(k, dim=1).indices.numpy()


def recall_at_k(found: np.ndarray, truth: np.ndarray) -> float:
    hits = sum(len(set(f.tolist()) & set(t.tolist())) for f, t in zip(found, truth))
    return hits / truth.size


# ------------------------------------------------------------------------------------------------- indexes
def timed(build: Callable[[], object]) -> tuple[object, float]:
    start = time.perf_counter()
    result = build()
    return result, time.perf_counter() - start


def build_torch_flat(gallery: np.ndarray, args: argparse.Namespace) -> BuiltIndex:
    def build() -> EmbeddingIndex:
        index = EmbeddingIndex(gallery.shape[1], kind="flat")
        index.add(gallery, np.arange(len(gallery)))
        return index

    index, seconds = timed(build)
    return BuiltIndex(seconds, gallery.nbytes, {"exact": lambda q, k: index.search(q, k)[1]})


def build_faiss(kind: str, gallery: np.ndarray, args: argparse.Namespace) -> BuiltIndex:
    import faiss

    dim = gallery.shape[1]

    def build():
        if kind == "flat":
            index = faiss.IndexFlatIP(dim)
        elif kind == "hnsw":
            index = faiss.IndexHNSWFlat(dim, args.hnsw_m, faiss.METRIC_INNER_PRODUCT)
            index.hnsw.efConstruction = args.ef_construction
        else:
            nlist = args.ivf_nlist
            index = faiss.IndexIVFFlat(faiss.IndexFlatIP(dim), dim, nlist, faiss.METRIC_INNER_PRODUCT)
            index.cp.niter = 10  # k-means converges enough for coarse cells; 25 (default) only costs time
            sample = np.random.default_rng(1).choice(
                len(gallery), min(len(gallery), 40 * nlist), replace=False
            )
            index.train(gallery[np.sort(sample)])
        index.add(gallery)
        return index

    index, seconds = timed(build)
    nbytes = faiss.serialize_index(index).nbytes
    if kind == "flat":
        searches = {"exact": lambda q, k: index.search(q, k)[1]}
    elif kind == "hnsw":
        searches = {
            f"ef={ef}": (
                lambda q, k, ef=ef: index.search(q, k, params=faiss.SearchParametersHNSW(efSearch=ef))[1]
            )
            for ef in args.ef_search
        }
    else:
        searches = {
            f"nprobe={p}": (
                lambda q, k, p=p: index.search(q, k, params=faiss.SearchParametersIVF(nprobe=p))[1]
            )
            for p in args.nprobe
        }
    return BuiltIndex(seconds, nbytes, searches)


def build_usearch(kind: str, gallery: np.ndarray, args: argparse.Namespace) -> BuiltIndex:
    from usearch.index import Index, search

    threads = args.threads  # 0 = all cores, usearch's own default
    if kind == "exact":  # usearch's brute force scans the given matrix: nothing to build

        def exact(q: np.ndarray, k: int) -> np.ndarray:
            return search(gallery, q, k, metric="ip", exact=True, threads=threads).keys.reshape(len(q), k)

        return BuiltIndex(0.0, gallery.nbytes, {"exact": exact})

    index = Index(
        ndim=gallery.shape[1],
        metric="ip",
        dtype="f32",
        connectivity=args.hnsw_m,
        expansion_add=args.ef_construction,
    )
    _, seconds = timed(lambda: index.add(np.arange(len(gallery)), gallery, threads=threads))

    def search_hnsw(q: np.ndarray, k: int, ef: int) -> np.ndarray:
        index.expansion_search = ef
        return index.search(q, k, threads=threads).keys.reshape(len(q), k).astype(np.int64)

    searches = {f"ef={ef}": (lambda q, k, ef=ef: search_hnsw(q, k, ef)) for ef in args.ef_search}
    return BuiltIndex(seconds, len(index.save()), searches)  # serialised, as for faiss


BUILDERS: dict[str, Callable[[np.ndarray, argparse.Namespace], BuiltIndex]] = {
    "torch-flat": build_torch_flat,
    "faiss-flat": lambda g, a: build_faiss("flat", g, a),
    "faiss-hnsw": lambda g, a: build_faiss("hnsw", g, a),
    "faiss-ivf": lambda g, a: build_faiss("ivf", g, a),
    "usearch-exact": lambda g, a: build_usearch("exact", g, a),
    "usearch-hnsw": lambda g, a: build_usearch("hnsw", g, a),
}
LIBRARY = {"faiss-flat": "faiss", "faiss-hnsw": "faiss", "faiss-ivf": "faiss"}
LIBRARY.update({"usearch-exact": "usearch", "usearch-hnsw": "usearch"})


# ------------------------------------------------------------------------------------------------- timing
def latencies_ms(search: SearchFn, queries: np.ndarray, batch: int, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Per-query milliseconds of each batch (batch time / batch size) and the positions found."""
    search(queries[:batch], k)  # warm-up: first-call allocations and lazy initialisation
    times, found = [], []
    for start in range(0, len(queries) - batch + 1, batch):
        chunk = queries[start : start + batch]
        t0 = time.perf_counter()
        found.append(np.asarray(search(chunk, k)))
        times.append((time.perf_counter() - t0) * 1000 / batch)
    return np.asarray(times), np.concatenate(found)


def set_threads(threads: int) -> None:
    if threads > 0:
        torch.set_num_threads(threads)
        try:
            import faiss

            faiss.omp_set_num_threads(threads)
        except ImportError:
            pass


def library_versions() -> str:
    versions = [f"torch {torch.__version__}", f"numpy {np.__version__}"]
    for name in ("faiss", "usearch"):
        try:
            versions.append(f"{name} {__import__(name).__version__}")
        except ImportError:
            versions.append(f"{name} not installed")
    return ", ".join(versions)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--n", type=int, default=100_000, help="gallery size")
    parser.add_argument("--dim", type=int, default=512)
    parser.add_argument("--k", type=int, default=10)
    parser.add_argument("--datasets", nargs="+", choices=DATASETS, default=list(DATASETS))
    parser.add_argument("--indexes", nargs="+", choices=INDEXES, default=list(INDEXES))
    parser.add_argument("--batch1-queries", type=int, default=100, help="queries timed one by one")
    parser.add_argument("--batch64-batches", type=int, default=16, help="batches of 64 timed (and scored)")
    parser.add_argument(
        "--hnsw-m", type=int, default=16, help="HNSW links per node (faiss M, usearch connectivity)"
    )
    parser.add_argument("--ef-construction", type=int, default=64)
    parser.add_argument("--ef-search", type=int, nargs="+", default=[64, 128])
    parser.add_argument("--ivf-nlist", type=int, default=1024)
    parser.add_argument("--nprobe", type=int, nargs="+", default=[16, 64])
    parser.add_argument("--threads", type=int, default=int(os.environ.get("OMP_NUM_THREADS", "0")))
    args = parser.parse_args(argv)
    set_threads(args.threads)

    available = []
    for name in args.indexes:
        try:
            if name in LIBRARY:
                __import__(LIBRARY[name])
            available.append(name)
        except ImportError:
            print(f"skipping {name}: {LIBRARY[name]} is not installed")

    now = datetime.datetime.now(datetime.timezone.utc)
    cpu = platform.processor() or platform.machine()
    threads = args.threads or "library default"
    print(
        f"# {now:%Y-%m-%d %H:%M} UTC, {cpu}, {os.cpu_count()} CPUs, threads={threads}, load {os.getloadavg()}"
    )
    print(f"# {library_versions()}")
    print(f"# gallery {args.n} x {args.dim}, k={args.k}, HNSW M={args.hnsw_m}, ", end="")
    print(f"efConstruction={args.ef_construction}, IVF nlist={args.ivf_nlist}\n")
    print("| " + " | ".join(COLUMNS) + " |")
    print("|---" * len(COLUMNS) + "|")
    n_queries = max(args.batch1_queries, 64 * args.batch64_batches)
    for dataset in args.datasets:
        gallery, queries = make_dataset(dataset, args.n, n_queries, args.dim)
        truth = exact_top_k(gallery, queries[: 64 * args.batch64_batches], args.k)
        for name in available:
            built = BUILDERS[name](gallery, args)
            for setting, search in built.searches.items():
                one, _ = latencies_ms(search, queries[: args.batch1_queries], 1, args.k)
                many, found = latencies_ms(search, queries[: 64 * args.batch64_batches], 64, args.k)
                cells = [dataset, name, setting, f"{built.build_s:.1f}", f"{built.nbytes / 2**20:.0f}"]
                cells += [f"{np.median(one):.2f}", f"{np.percentile(one, 95):.2f}"]
                cells += [f"{np.median(many):.3f}", f"{np.percentile(many, 95):.3f}"]
                cells += [f"{recall_at_k(found, truth):.3f}"]
                print("| " + " | ".join(cells) + " |", flush=True)
            del built
    print(f"\n# load average after: {os.getloadavg()}")


if __name__ == "__main__":
    main()
