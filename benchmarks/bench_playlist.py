"""Time and memory to build a 30-track playlist from 100k tracks (128-d) with 5 seeds: hull, LP, journey.

Data: seeded Gaussian blobs (20 clusters), L2-normalised like the embeddings. The 5 seeds are tracks of
one cluster. The PCA fit and the k-NN index (`cml.search.index`: exact below its size threshold, faiss above) are
timed apart: a notebook or service builds them once per embedding table and passes them to every playlist
(``build_playlist(..., projection=..., index=...)``). Each case is the median of ``--repeats`` runs after
one warm-up; the LP mode runs at a zero tolerance (the strict convex-combination test) and at
``--lp-margin``, which admits tracks near the seeds' hull and so has LPs to solve. The journey (two seeds)
and the k-NN baseline of the metrics (the tracks nearest the seeds' centroid) run with exact search and
with the index. Memory: the peak resident set of the whole run.

    python benchmarks/bench_playlist.py                       # 100k tracks, as in the README
    python benchmarks/bench_playlist.py --n 5000 --repeats 1  # a quick check
"""

from __future__ import annotations

import argparse
import os
import resource
import statistics
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # run from a checkout without installing

from cml.playlist.hull import build_playlist, fit_projection, prepare
from cml.playlist.scores import knn_baseline
from cml.search.index import Index  # noqa: E402


def data(n: int, d: int, centers: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    means = rng.normal(size=(centers, d))
    y = rng.integers(centers, size=n)
    return prepare(means[y] + rng.normal(scale=0.35, size=(n, d))), y


def median_seconds(fn, repeats: int) -> tuple[float, object]:
    result = fn()  # warm-up
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        result = fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times), result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n", type=int, default=100_000)
    parser.add_argument("--d", type=int, default=128)
    parser.add_argument("--length", type=int, default=30)
    parser.add_argument("--seeds", type=int, default=5)
    parser.add_argument("--dim", type=int, default=3)
    parser.add_argument("--margin", type=float, default=0.02, help="hull margin")
    parser.add_argument("--lp-margin", type=float, default=0.15, help="LP tolerance of the second LP case")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    X, y = data(args.n, args.d, 20, args.seed)
    rng = np.random.default_rng(args.seed)
    seeds = rng.choice(np.flatnonzero(y == 0), size=args.seeds, replace=False)
    print(f"{args.n} tracks x {args.d} dims, {args.seeds} seeds, length {args.length}, "
          f"{os.cpu_count()} CPUs, median of {args.repeats}")
    fit, projection = median_seconds(lambda: fit_projection(X, args.dim), args.repeats)
    print(f"{'PCA fit (dim %d, once per table)' % args.dim:<42} {fit * 1000:8.1f} ms")
    cases = [(f"hull, dim {args.dim}, margin 0", dict(mode="hull", margin=0.0)),
             (f"hull, dim {args.dim}, margin {args.margin}", dict(mode="hull", margin=args.margin)),
             ("lp, tolerance 0", dict(mode="lp", margin=0.0)),
             (f"lp, tolerance {args.lp_margin}", dict(mode="lp", margin=args.lp_margin))]
    for name, kwargs in cases:
        seconds, playlist = median_seconds(
            lambda: build_playlist(X, seeds, args.length, dim=args.dim, projection=projection, **kwargs), args.repeats)
        print(f"{name:<42} {seconds * 1000:8.1f} ms  ({len(playlist.candidates)} candidates, "
              f"{len(playlist.order)} tracks)")
    seconds, _ = median_seconds(lambda: build_playlist(X, seeds, args.length, dim=args.dim), args.repeats)
    print(f"{'hull, margin 0, PCA fit included':<42} {seconds * 1000:8.1f} ms")
    build, index = median_seconds(lambda: Index(X), args.repeats)
    print(f"{'k-NN index (once per table): ' + ('exact' if index.exact else 'faiss IVF'):<42} {build * 1000:8.1f} ms")
    exact = {}
    for name, search in (("exact", None), ("index", index)):
        seconds, trip = median_seconds(lambda: build_playlist(X, seeds[:2], args.length, mode="journey",
                                                              projection=projection, index=search), args.repeats)
        same = exact.setdefault("journey", trip.order).tolist() == trip.order.tolist()
        print(f"{'journey, ' + name:<42} {seconds * 1000:8.1f} ms  ({len(trip.order)} tracks, same as exact: {same})")
        seconds, chosen = median_seconds(lambda: knn_baseline(X, seeds, args.length, index=search), args.repeats)
        same = exact.setdefault("knn", chosen).tolist() == chosen.tolist()
        print(f"{'k-NN baseline (centroid), ' + name:<42} {seconds * 1000:8.1f} ms  (same as exact: {same})")
    print(f"peak resident set {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:,.0f} MiB "
          f"(the tracks: {X.nbytes / 2**20:,.0f} MiB)")


if __name__ == "__main__":
    main()
