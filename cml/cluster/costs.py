"""What a clustering method costs in time and memory, so the grid can skip one that would not finish.

Scale (:func:`too_costly`): each method has a cost model measured by ``benchmarks/bench_clustering.py --grid``
(:data:`COSTS`): its time at a base size, extrapolated by its order of growth (n^2 wherever every pair of rows is
compared), and its memory (the table and its copies; for ELKI the JVM heap, with Anderberg's n^2/2 matrix). The
grid skips, with the reason in its ``error`` column and without running it, a method whose estimate passes 15
minutes or 80 % of the machine's RAM. scikit-learn DBSCAN's neighbourhood lists depend on eps, so they are sized
from a sample of rows once eps is known, before DBSCAN starts.

The constants are measurements of one machine (2 cores, 24 GiB); on another, rerun the benchmark and
replace them: they are estimates for a guard, never results.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Optional

import numpy as np
from sklearn.neighbors import NearestNeighbors

from cml.cluster import elki

log = logging.getLogger(__name__)


METHOD_BUDGET_SECONDS = 900.0  # the grid skips a method whose time estimate is longer

MEMORY_SHARE = elki.MEMORY_SHARE  # ... or whose memory estimate passes this share of the machine's RAM


@dataclass(frozen=True)
class Cost:
    """How one method's cost grows with the rows: the guard's model (`estimate`, `too_costly`).

    Measured by ``benchmarks/bench_clustering.py --grid``: `cluster` on
    L2-normalised 128-d Gaussian blobs, 10 centres, one thread, ELKI's JVM start-up and text exchange
    included; each base point is the largest size measured. ``exponent`` is the order of growth: 2 where
    every pair of rows is compared (the linkages; both HDBSCANs' minimum spanning tree, Prim's, whatever
    index finds the core distances; scikit-learn's k-distance eps and DBSCAN neighbourhoods, brute force
    above 15 dims), 1 for k-means; the measured slopes between 10,000 and 100,000 rows agree. ELKI's
    DBSCAN, whose cover tree prunes less as the rows grow, has its fitted slope.
    """

    seconds: float  # wall time at `rows` x 128-d
    rows: int
    exponent: float  # time ~ rows ** exponent
    copies: float  # working memory in units of the n x d float64 table, beyond the three every method holds
    matrix: bool = False  # keeps an n^2/2 distance matrix (ELKI's Anderberg linkages)

# Measured on this project's 2-core, 24 GiB machine while it was shared (load ~3): upper bounds, if anything.
COSTS = {
    "elki-slink": Cost(82.5, 20_000, 2, 0),
    "elki-single": Cost(29.5, 10_000, 2, 0, matrix=True),
    "elki-complete": Cost(24.8, 10_000, 2, 0, matrix=True),
    "elki-average": Cost(19.0, 10_000, 2, 0, matrix=True),
    "elki-ward": Cost(26.5, 10_000, 2, 0, matrix=True),
    "elki-hdbscan": Cost(314.5, 20_000, 2, 0),
    # ELKI's DBSCAN with its cover tree: 10 s at 10k, 19 s at 20k, 62 s at 40k, and not done after 560 s at 100k
    # (its JVM alone ran 470 s): the slope from 40k to that lower bound, 2.7, is the exponent.
    "elki-dbscan": Cost(62.0, 40_000, 2.7, 0),
    "elki-kmeans": Cost(41.7, 100_000, 1, 0),
    "kmeans": Cost(2.8, 100_000, 1, 1),
    "dbscan": Cost(176.4, 100_000, 2, 4),  # + its neighbourhood lists, sized from the data (`dbscan_lists_mb`)
    "hdbscan": Cost(69.6, 20_000, 2, 1),
    # cml.cluster.hierarchy on both cores of a quiet machine (benchmarks/bench_hierarchy.py): its two passes over the
    # distance matrix are quadratic; the k-NN graph's index is linear (those two measured at load ~10).
    "mst-single": Cost(35.7, 100_000, 2, 4),
    "mst-hdbscan": Cost(36.5, 100_000, 2, 4),
    "knn-single": Cost(64.1, 100_000, 1, 4),
    "knn-hdbscan": Cost(47.0, 100_000, 1, 4),
}

PYTHON_MB = 320  # the interpreter and its imports (the benchmark's workers: 217-245 MiB before the data, and

#   cml.cluster.hierarchy's compiled kernels and BLAS threads ~60 more: 447 MiB peak at 20k rows, where the tables are 137)
DBSCAN_SAMPLE = 1000  # rows whose eps-neighbourhoods are counted to size scikit-learn DBSCAN's lists

NEIGHBOUR_BYTES = 16  # per neighbour in those lists: an int64 index, and while they are gathered its distance


def _table_mb(n: int, d: int) -> float:
    return n * d * 8 / 2**20


def estimate(method: str, n: int, d: int = 128) -> tuple[float, float]:
    """(seconds, MiB of memory) that `cluster` should take with ``method`` on n rows of d dims, by the measured
    `COSTS`. Time scales with d above 128 (distances cost d operations) but is not reduced below it. Memory:
    the input table and its float64 and L2-normalised copies in Python, the method's own working set, and
    for ELKI the JVM heap it is given (`elki.heap_need_mb`, with the n^2/2 matrix for Anderberg). At 100,000 rows
    the measured peaks stay below these estimates."""
    cost = COSTS[method]
    seconds = cost.seconds * (n / cost.rows) ** cost.exponent * max(1.0, d / 128)
    mib = PYTHON_MB + (3 + cost.copies) * _table_mb(n, d)
    if method.startswith("elki-"):
        mib += elki.heap_need_mb(n, d, quadratic=cost.matrix)
    return seconds, mib


def memory_limit_mb() -> float:
    """What a method may use: `MEMORY_SHARE` of this machine's physical memory (the rule `elki.heap_mb` uses)."""
    return MEMORY_SHARE * elki.physical_mb()


def too_costly(method: str, n: int, d: int = 128, budget: float = METHOD_BUDGET_SECONDS,
               memory_mb: float | None = None) -> Optional[str]:
    """Why `method` should not run on n rows of d dims (None if it may): its memory estimate (`estimate`)
    passes ``memory_mb`` (default `memory_limit_mb`), or its time estimate passes ``budget`` seconds.
    Asks the model only: nothing runs. scikit-learn DBSCAN's neighbourhood lists depend on the data and are
    checked once eps is known (`dbscan_lists_mb`, in `cluster`)."""
    seconds, need = estimate(method, n, d)
    limit = memory_limit_mb() if memory_mb is None else memory_mb
    if need > limit:
        what = "an n^2/2 distance matrix" if COSTS[method].matrix else "the data and its copies"
        return (f"skipped at {n:,} rows: about {need / 1024:,.1f} GiB of memory ({what}), over the "
                f"{limit / 1024:,.1f} GiB this machine allows ({MEMORY_SHARE:.0%} of its RAM)")
    if seconds > budget:
        cost = COSTS[method]
        about = f"{seconds / 60:,.0f} min" if seconds < 36_000 else f"{seconds / 3600:,.0f} h"
        return (f"skipped at {n:,} rows: O(n^{cost.exponent:g}) time, about {about} by "
                f"extrapolation from {cost.seconds:.0f} s at {cost.rows:,} (budget {budget / 60:.0f} min)")
    return None


def dbscan_lists_mb(X: np.ndarray, eps: float, seed: int = 0) -> float:
    """MiB of scikit-learn DBSCAN's neighbourhood lists on X (it keeps every point's eps-neighbours at once:
    O(n^2) memory when eps is wide): the mean neighbourhood of `DBSCAN_SAMPLE` seeded rows, times n."""
    n = len(X)
    rows = np.random.default_rng(seed).choice(n, size=min(n, DBSCAN_SAMPLE), replace=False)
    counts = NearestNeighbors(radius=eps).fit(X).radius_neighbors(X[rows], return_distance=False)
    mean = float(np.mean([len(c) for c in counts]))
    return n * (mean * NEIGHBOUR_BYTES + 100) / 2**20  # + an array object per row


def check_dbscan_memory(X: np.ndarray, eps: float, seed: int) -> None:
    """A ValueError, before scikit-learn's DBSCAN starts, when its neighbourhood lists would not fit."""
    need = estimate("dbscan", *X.shape)[1] + dbscan_lists_mb(X, eps, seed)
    if need > memory_limit_mb():
        raise ValueError(f"skipped at {len(X):,} rows: scikit-learn DBSCAN's neighbourhood lists at eps={eps:.3g} "
                         f"need about {need / 1024:,.1f} GiB of memory, over the {memory_limit_mb() / 1024:,.1f} GiB "
                         f"this machine allows ({MEMORY_SHARE:.0%} of its RAM)")
