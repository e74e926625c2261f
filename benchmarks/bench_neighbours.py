"""Cosine k-NN at library scale: exact search vs approximate indexes (build time, query time, recall@10, memory).

Data: seeded synthetic 128-d unit rows, a mixture of Gaussians (``--centers`` means drawn with std 1, noise
std ``--noise`` = 1.5, so neighbouring clusters overlap); the queries are 1,000 further draws of the same
mixture, not rows of the library. Exact: `cml.search.index.Index(X, exact=True)`, i.e. `cml.search.neighbours.nearest`
(float64, blocks of queries whose similarities stay under 1 GiB). Indexes, on float32 unit rows, inner product:

- ``cml.search.index``: faiss ``IndexIVFFlat``, seeded k-means into ``sqrt(n)`` lists, a query scans ``nprobe``
  of them (the module's default, about 5,000 rows, marked *);
- faiss ``IndexHNSWFlat`` and hnswlib: HNSW graphs, M = 32, efConstruction = 80, built on one thread (with
  more, the insertion order, hence the graph, depends on the scheduler), queried at several ``ef``.

recall@10 = share of the exact top 10 found in the index's top 10. Memory: ``rss+``, the resident set the
build added and kept (exact search keeps nothing: its float64 copies and blocks are freed after each call),
and ``size``, the index as its library writes it to disk. Builds and queries use every thread the libraries
see (``OMP_NUM_THREADS``) but the HNSW builds; a library that is not installed is reported and skipped.

    python benchmarks/bench_neighbours.py --sizes 10000 100000                        # all methods, ~5 min
    python benchmarks/bench_neighbours.py --sizes 1000000 --methods "cml.search.index: faiss IVF-Flat"   # ~5 min
    python benchmarks/bench_neighbours.py --sizes 10000 --queries 200                 # a quick check
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # run from a checkout without installing

from cml.search.index import Index  # noqa: E402
from cml.search.neighbours import l2_normalise  # noqa: E402

K = 10
HNSW_M, HNSW_EF_CONSTRUCTION = 32, 80


def data(n: int, queries: int, d: int, centers: int, noise: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """n library rows and `queries` query rows of one seeded mixture of Gaussians, unit length, float32."""
    rng = np.random.default_rng(seed)
    means = rng.normal(size=(centers, d))
    y = rng.integers(centers, size=n + queries)
    X = l2_normalise(means[y] + rng.normal(scale=noise, size=(n + queries, d))).astype(np.float32)
    return X[:n], X[n:]


def rss_mib() -> float:
    """Resident set of this process now (VmRSS), MiB."""
    line = next(v for v in Path("/proc/self/status").read_text().splitlines() if v.startswith("VmRSS"))
    return int(line.split()[1]) / 1024


def timed(fn):
    start, rss = time.perf_counter(), rss_mib()
    result = fn()
    return result, time.perf_counter() - start, rss_mib() - rss


def faiss_ivf(X: np.ndarray, seed: int):
    """cml.search.index's own index, swept over the lists a query scans (its default marked *)."""
    index = Index(X, exact=False, seed=seed)
    default = index.ivf.nprobe
    return (index, "nprobe", sorted({4, 8, 16, 48, default}), lambda p: setattr(index.ivf, "nprobe", p),
            lambda Q: index.search(Q, K)[0], default)


def faiss_hnsw(X: np.ndarray, seed: int):
    import faiss

    index = faiss.IndexHNSWFlat(X.shape[1], HNSW_M, faiss.METRIC_INNER_PRODUCT)
    index.hnsw.efConstruction = HNSW_EF_CONSTRUCTION
    threads = faiss.omp_get_max_threads()
    faiss.omp_set_num_threads(1)
    index.add(X)
    faiss.omp_set_num_threads(threads)
    return (index, "efSearch", [32, 64, 128, 256], lambda ef: setattr(index.hnsw, "efSearch", ef),
            lambda Q: index.search(Q, K)[1], None)


def hnswlib_hnsw(X: np.ndarray, seed: int):
    import hnswlib

    index = hnswlib.Index(space="ip", dim=X.shape[1])
    index.init_index(max_elements=len(X), M=HNSW_M, ef_construction=HNSW_EF_CONSTRUCTION, random_seed=seed)
    index.add_items(X, num_threads=1)
    return index, "ef", [32, 64, 128, 256], index.set_ef, lambda Q: index.knn_query(Q, K, num_threads=-1)[0], None


METHODS = {"cml.search.index: faiss IVF-Flat": ("faiss", faiss_ivf), "faiss HNSW": ("faiss", faiss_hnsw),
           "hnswlib HNSW": ("hnswlib", hnswlib_hnsw)}


def index_mib(index) -> float:
    """The index's size as its library writes it to disk."""
    if isinstance(index, Index):
        index = index.ivf
    if type(index).__module__ == "hnswlib":
        with tempfile.TemporaryDirectory() as tmp:
            index.save_index(f"{tmp}/index.bin")
            return os.path.getsize(f"{tmp}/index.bin") / 2**20
    import faiss

    return faiss.serialize_index(index).nbytes / 2**20


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[10_000, 100_000, 1_000_000])
    parser.add_argument("--queries", type=int, default=1000)
    parser.add_argument("--d", type=int, default=128)
    parser.add_argument("--centers", type=int, default=256)
    parser.add_argument("--noise", type=float, default=1.5, help="noise std; the means' is 1")
    parser.add_argument("--methods", nargs="+", default=list(METHODS), choices=list(METHODS))
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    methods = [m for m in args.methods if importlib.util.find_spec(METHODS[m][0])]
    for m in set(args.methods) - set(methods):
        print(f"{m}: {METHODS[m][0]} is not installed, skipped")
    print(f"{args.queries} queries, k = {K}, {args.d}-d, {os.cpu_count()} CPUs, "
          f"OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS', 'unset')}\n")
    print(f"| n | search | build s | setting | {args.queries:,} queries, s | ms / query | recall@10 | rss+ | size |")
    print("|--:|---|--:|---|--:|--:|--:|--:|--:|")
    for n in args.sizes:
        X, Q = data(n, args.queries, args.d, args.centers, args.noise, args.seed)
        (truth, _), seconds, grew = timed(lambda: Index(X, exact=True).search(Q, K))
        print(f"| {n:,} | exact | — | — | {seconds:.2f} | {1000 * seconds / len(Q):.3f} | 1.000 | "
              f"{grew:,.0f} MiB | — |", flush=True)
        for name in methods:
            (index, knob, values, set_knob, search, default), build, grew = timed(lambda: METHODS[name][1](X, args.seed))
            size = index_mib(index)
            for value in values:
                set_knob(value)
                found, seconds, _ = timed(lambda: search(Q))
                recall = np.mean([len(np.intersect1d(a, b)) / K for a, b in zip(found, truth)])
                mark = "*" if value == default else ""
                print(f"| {n:,} | {name} | {build:.1f} | {knob} {value}{mark} | {seconds:.3f} | "
                      f"{1000 * seconds / len(Q):.3f} | {recall:.3f} | {grew:,.0f} MiB | {size:,.0f} MiB |",
                      flush=True)
            del index


if __name__ == "__main__":
    main()
