"""Cosine k-NN over a whole library: exact below `EXACT_BELOW` rows, an approximate faiss index at or above.

Exact search (`cml.search.neighbours.nearest`) costs every query a pass over every row: fine for the default corpus,
quadratic for evaluation's leave-one-out vote over a 100k-track library. The index is faiss's inverted file
(``IndexIVFFlat``): k-means splits the unit rows into ``sqrt(n)`` lists and a query scans the lists nearest
to it, about `SCAN_ROWS` rows whatever n, by inner product on float32 rows (= cosine). It was chosen by
measurement (`benchmarks/bench_neighbours.py`): at equal recall@10 it queries about as
fast as an HNSW graph (faiss's or hnswlib's) but builds ~20x faster (1.2 s against 24-28 s at 100k rows),
its build is deterministic on any number of threads (a seeded k-means; HNSW needs one thread for that), and
faiss-cpu installs from a wheel (hnswlib needs a C++ compiler). An `Index` logs which search it runs.
"""
from __future__ import annotations

import logging
import math
import sys
from pathlib import Path
from typing import Optional

import numpy as np
import pandas as pd

from cml.errors import UsageError, count
from cml.search import neighbours
from cml.search.neighbours import l2_normalise, majority_vote, nearest
from cml.tables import read_feature_table

log = logging.getLogger(__name__)

# Rows from which the index replaces exact search: where exact search of the heaviest load, evaluation's
# leave-one-out vote (every row queries every row), stops being cheap. Measured on 2 cores: 14 s at 10k rows,
# 56 s at 20k (quadratic), against 1.0 s and 1.4 s with the index (8.5 s at 100k), accuracy within 0.0004.
EXACT_BELOW = 10_000
# Queries below which exact search beats building the index first (`cml neighbours` of a few tracks): a build
# costs about as much as 130 exact queries at 100k rows and 270 at 1M.
BUILD_PAYS_FROM = 200
SCAN_ROWS = 5_000  # rows a query scans (lists of ~sqrt(n) rows): recall@10 0.97-0.998 on the benchmark, 10k-1M
TRAIN_PER_LIST = 64  # k-means sample per list (faiss's minimum advice is 39)
EXACT_BLOCK_BYTES = 2**30  # one block of exact similarities (queries x rows float64) stays under this


class Index:
    """The rows of X, ready for cosine k-NN queries; built once, queried many times.

    ``groups`` (one label per row) says which rows a query that is itself a row must not find: the other
    renderings of its piece; without groups, only itself. ``exact`` forces a kind of search; by default
    it is exact below `EXACT_BELOW` rows, and for fewer than `BUILD_PAYS_FROM` ``queries`` when their number
    is known.
    """

    def __init__(self, X: np.ndarray, groups: Optional[np.ndarray] = None, exact: Optional[bool] = None,
                 seed: int = 0, queries: Optional[int] = None):
        self.X = np.asarray(X)
        few_queries = queries is not None and queries < BUILD_PAYS_FROM
        self.exact = (len(self.X) < EXACT_BELOW or few_queries) if exact is None else exact
        self.groups = np.arange(len(self.X)) if groups is None else pd.factorize(pd.Series(groups, dtype=object))[0]
        self.largest_group = int(np.bincount(self.groups).max()) if len(self.X) else 0
        self.ivf = None if self.exact else _build_ivf(l2_normalise(self.X.astype(np.float32)), seed)
        log.info("cosine k-NN over %d rows: %s search", len(self.X), self.kind)

    @property
    def kind(self) -> str:
        return "exact" if self.exact else f"approximate (faiss IVF, {self.ivf.nprobe} of {self.ivf.nlist} lists)"

    def search(self, queries: np.ndarray, k: int, exclude: Optional[np.ndarray] = None
               ) -> tuple[np.ndarray, np.ndarray]:
        """The k rows most cosine-similar to each query, best first: (indices, similarities), both (q, k).

        ``exclude``: the row each query is; the rows of its group are left out (more neighbours are asked
        for, then filtered). Where fewer than k are found the index is -1 and the similarity -inf.
        """
        ask = min(k + (self.largest_group if exclude is not None else 0), len(self.X))
        idx, sim = self._nearest(np.asarray(queries), ask)
        found = idx >= 0
        if exclude is not None:
            found &= self.groups[idx] != self.groups[np.asarray(exclude)][:, None]
        first = np.argsort(~found, axis=1, kind="stable")[:, :k]  # found ones first, in rank order
        found = np.take_along_axis(found, first, axis=1)
        idx = np.where(found, np.take_along_axis(idx, first, axis=1), -1)
        return idx, np.where(found, np.take_along_axis(sim, first, axis=1), -np.inf)

    def _nearest(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        if self.exact:
            return nearest(self.X, queries, k, block=max(1, min(4096, EXACT_BLOCK_BYTES // (8 * len(self.X)))))
        sim, idx = self.ivf.search(l2_normalise(queries.astype(np.float32)), k)
        return idx.astype(np.int64), sim.astype(np.float64)


def _build_ivf(U: np.ndarray, seed: int):
    logging.getLogger("faiss.loader").setLevel(logging.WARNING)  # not its INFO lines on CPU-variant probing
    import faiss  # only here: training imports cml.search.neighbours, not faiss

    nlist = max(1, int(np.sqrt(len(U))))
    ivf = faiss.IndexIVFFlat(faiss.IndexFlatIP(U.shape[1]), U.shape[1], nlist, faiss.METRIC_INNER_PRODUCT)
    ivf.cp.seed = seed
    sample = np.random.default_rng(seed).choice(len(U), size=min(len(U), TRAIN_PER_LIST * nlist), replace=False)
    ivf.train(U[np.sort(sample)])
    ivf.add(U)
    ivf.nprobe = min(nlist, math.ceil(SCAN_ROWS * nlist / len(U)))
    return ivf


def knn_accuracy(X_train: np.ndarray, y_train: np.ndarray, X_test: np.ndarray, y_test: np.ndarray,
                 k: int = 5) -> float:
    """`cml.search.neighbours.exact_knn_accuracy` (cosine) for a reference set of any size: that exact vote below
    `EXACT_BELOW` reference rows (so the default corpus's metrics stay bit for bit), the index's at or above."""
    if len(X_train) < EXACT_BELOW or len(X_test) == 0:
        return neighbours.exact_knn_accuracy(X_train, y_train, X_test, y_test, k)
    classes, y_idx = np.unique(np.asarray(y_train), return_inverse=True)
    idx, _ = Index(X_train).search(X_test, k)
    return float(np.mean(classes[majority_vote(y_idx[idx], idx >= 0, len(classes))] == np.asarray(y_test)))


def leave_group_out_knn_accuracy(X: np.ndarray, y: np.ndarray, queries: np.ndarray,
                                 groups: Optional[np.ndarray] = None, k: int = 5) -> float:
    """`cml.search.neighbours.exact_leave_group_out_knn_accuracy` for a library of any size: that exact vote below
    `EXACT_BELOW` rows, the index's at or above (each query's group asked past, then filtered out)."""
    rows = np.flatnonzero(np.asarray(queries, dtype=bool))
    if len(X) < EXACT_BELOW or len(rows) == 0:
        return neighbours.exact_leave_group_out_knn_accuracy(X, y, queries, groups, k)
    classes, y_idx = np.unique(np.asarray(y).astype(str), return_inverse=True)
    idx, _ = Index(X, groups).search(X[rows], k, exclude=rows)
    return float(np.mean(majority_vote(y_idx[idx], idx >= 0, len(classes)) == y_idx[rows]))


# --------------------------------------------------------------------------------------------------
# CLI


def find_rows(ids: np.ndarray, paths: Optional[np.ndarray], wanted: list[str]) -> list[int]:
    """Row of each wanted track: by id, else by path, else by file name (a UsageError names what is not found)."""
    keys = [dict(zip(map(str, ids), range(len(ids))))]
    if paths is not None:
        keys += [{str(p): i for i, p in enumerate(paths)}, {Path(str(p)).name: i for i, p in enumerate(paths)}]
    rows = []
    for w in wanted:
        row = next((k[w] for k in keys if w in k), None)
        if row is None:
            raise UsageError(f"track {w!r} is not in the table (give an id, a path or a file name of its rows)")
        rows.append(row)
    return rows


def _cmd_neighbours(args) -> int:
    table = read_feature_table(args.table)
    paths = table.meta["path"].to_numpy() if "path" in table.meta else None
    rows = find_rows(table.ids, paths, args.track)
    idx, sim = Index(table.X, exact=args.exact or None, queries=len(rows)).search(table.X[rows], args.k, exclude=rows)
    out = []
    for query, found, scores in zip(rows, idx, sim):
        out += [{"query": table.ids[query], "rank": r + 1, "id": table.ids[j], "similarity": round(float(s), 6),
                 "label": table.labels[j] if table.labels is not None else None,
                 "path": paths[j] if paths is not None else None}
                for r, (j, s) in enumerate(zip(found, scores)) if j >= 0]
    frame = pd.DataFrame(out).dropna(axis=1, how="all")
    if args.out:
        frame.to_csv(args.out, index=False)
    frame.to_string(sys.stdout, index=False)
    print()
    return 0


def register_cli(subparsers) -> None:
    """Add `cml neighbours TABLE TRACK [TRACK ...] [-k 10] [--exact]`."""
    p = subparsers.add_parser("neighbours")
    p.add_argument("table", help="feature table (embeddings or features; Parquet, CSV or a folder of parts)")
    p.add_argument("track", nargs="+", help="a track's id, path or file name")
    p.add_argument("-k", type=count, default=10, help="how many neighbours (default 10)")
    p.add_argument("--out", help="also write the list as CSV")
    p.add_argument("--exact", action="store_true",
                   help="exact search even in a table large enough for the approximate index (cml.search.index)")
    p.set_defaults(func=_cmd_neighbours)
