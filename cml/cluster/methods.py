"""Cluster feature tables with ELKI (the primary tool), scikit-learn or `cml.cluster.hierarchy`, and score the result.

Exact and approximate (:data:`EXACT`): the linkages, both DBSCANs and HDBSCANs, and the ``mst-*`` trees of
`cml.cluster.hierarchy` compute their definition exactly (ELKI stays the reference they are tested against); the
``knn-*`` trees approximate it over a k-NN graph, and k-means finds a local optimum. Every
hierarchical method returns its dendrogram (``ClusterResult.linkage``), cut by `cml.cluster.hierarchy.cut`.

Geometry: by default (``normalise=True``) every embedding is L2-normalised to unit length first and all
methods use Euclidean distance on those unit vectors. On the unit sphere ``|a - b|^2 = 2 - 2 cos(a, b)``,
so this ranks neighbours exactly as cosine distance does, while staying the Euclidean geometry that
Ward, k-means and ELKI's defaults assume. ``normalise=False`` clusters the raw features (for baselines
whose scale carries meaning; standardise them beforehand if their units differ).

DBSCAN's ``eps`` rule (when not given): for every point take the distance to its ``min_pts``-th nearest
neighbour counting the point itself (the core distance of DBSCAN and HDBSCAN), sort these ascending
(the k-distance curve of Ester et al. 1996), scale both axes to [0, 1] and take the value where the curve
lies farthest below the chord from its first to its last point, i.e. the knee (Satopää et al. 2011,
"Kneedle"). Points left of the knee sit in dense regions; the steep tail is noise.

Metrics (:func:`partition_scores`): against true labels where a row has one, NMI, ARI, V-measure and purity, with
noise (-1) counted as one more cluster; always the number of clusters, the noise fraction, and the
silhouette and Davies-Bouldin scores on the non-noise points (``None`` when undefined: fewer than two
clusters or every point in its own cluster). Silhouette is computed on a seeded sample of at most 5000
points, since it needs all pairwise distances.

Scale (:func:`too_costly`): each method has a cost model measured by ``benchmarks/bench_clustering.py --grid``
(:data:`COSTS`): its time at a base size, extrapolated by its order of growth (n^2 wherever every pair of rows is
compared), and its memory (the table and its copies; for ELKI the JVM heap, with Anderberg's n^2/2 matrix). The
grid skips, with the reason in its ``error`` column and without running it, a method whose estimate passes 15
minutes or 80 % of the machine's RAM. scikit-learn DBSCAN's neighbourhood lists depend on eps, so they are sized
from a sample of rows once eps is known, before DBSCAN starts.

The ClusterTesting grid (:func:`run_grid`) scores every feature table x every method this way; the
helpers after it rank the grid, pick the best pair, and find what the notebook shows of a clustering
(its medoid tracks, its contingency table against the true labels).
"""

from __future__ import annotations

import argparse
import json
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Mapping, Optional, Sequence

import numpy as np
import pandas as pd
from sklearn import cluster as skcluster
from sklearn import metrics
from sklearn.neighbors import NearestNeighbors
from tqdm import tqdm

from cml.cluster import elki, hierarchy
from cml.errors import UsageError, check_input_file, check_output, count, non_negative, non_negative_int, positive
from cml.search.neighbours import l2_normalise
from cml.tables import LABEL_COLUMN, FeatureTable, FeatureTableError, preview, read_feature_table, standardise

log = logging.getLogger(__name__)

ELKI_HIERARCHICAL = {"elki-slink": "single", "elki-single": "single", "elki-complete": "complete",
                     "elki-average": "average", "elki-ward": "ward"}
# cml.cluster.hierarchy's minimum spanning trees: exact (mst-*) or of the approximate k-NN graph (knn-*).
MST_METHODS = {"mst-single": (True, False), "mst-hdbscan": (True, True),  # (exact, HDBSCAN*)
               "knn-single": (False, False), "knn-hdbscan": (False, True)}
HIERARCHICAL = (*ELKI_HIERARCHICAL, "mst-single", "knn-single")  # cut by k or height; dendrogram in `linkage`
EXACT = {*ELKI_HIERARCHICAL, "elki-hdbscan", "hdbscan", "elki-dbscan", "dbscan", "mst-single", "mst-hdbscan"}
METHODS = (*ELKI_HIERARCHICAL, "elki-hdbscan", "elki-kmeans", "elki-dbscan", "kmeans", "dbscan", "hdbscan",
           *MST_METHODS)
NEEDS_K = {*HIERARCHICAL, "elki-kmeans", "kmeans"}
SILHOUETTE_SAMPLE = 5000
METHOD_BUDGET_SECONDS = 900.0  # the grid skips a method whose time estimate is longer
MEMORY_SHARE = elki.MEMORY_SHARE  # ... or whose memory estimate passes this share of the machine's RAM


@dataclass(frozen=True)
class Cost:
    """How one method's cost grows with the rows: the guard's model (`estimate`, `too_costly`).

    Measured by ``benchmarks/bench_clustering.py --grid`` (README, "Clustering at scale"): `cluster` on
    L2-normalised 128-d Gaussian blobs, 10 centres, one thread, ELKI's JVM start-up and text exchange
    included; each base point is the largest size measured. ``exponent`` is the order of growth: 2 where
    every pair of rows is compared (the linkages; both HDBSCANs' minimum spanning tree, Prim's, whatever
    index finds the core distances; scikit-learn's k-distance eps and DBSCAN neighbourhoods, brute force
    above 15 dims), 1 for k-means; the measured slopes between 10,000 and 100,000 rows agree (README). ELKI's
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
    # cml.cluster.hierarchy on both cores of a quiet machine (benchmarks/hierarchy/README.md): its two passes over the
    # distance matrix are quadratic; the k-NN graph's index is linear (those two measured at load ~10).
    "mst-single": Cost(35.7, 100_000, 2, 4),
    "mst-hdbscan": Cost(36.5, 100_000, 2, 4),
    "knn-single": Cost(64.1, 100_000, 1, 4),
    "knn-hdbscan": Cost(47.0, 100_000, 1, 4),
}
ZSCORED = ("handcrafted", "musicnn")  # the baseline spaces, scored with their columns z-scored over the tracks
PYTHON_MB = 320  # the interpreter and its imports (the benchmark's workers: 217-245 MiB before the data, and
#   cml.cluster.hierarchy's compiled kernels and BLAS threads ~60 more: 447 MiB peak at 20k rows, where the tables are 137)
DBSCAN_SAMPLE = 1000  # rows whose eps-neighbourhoods are counted to size scikit-learn DBSCAN's lists
NEIGHBOUR_BYTES = 16  # per neighbour in those lists: an int64 index, and while they are gathered its distance


def _integer(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)  # YAML's true is no count


@dataclass
class ClusterTestingConfig:
    """The ClusterTesting notebook (stage `cluster_testing`): every feature space x every method."""

    methods: list = field(default_factory=lambda: list(METHODS))
    embeddings: str | list = "all"  # all: every folder under outputs/embeddings plus handcrafted; or names
    elki_embeddings: str | list = "trained"  # spaces the elki-* methods run on (a JVM per call): all, trained, names
    k: Optional[int] = None  # clusters for k-means and hierarchical cuts; None: the number of true labels
    split: str = "all"  # all tracks (clustering sees no labels), or test: the held-out split only
    seed: int = 0
    medoids_per_cluster: int = 2  # tracks to listen to per cluster
    audio_seconds: float = 6.0  # excerpt length, from the middle of each track

    def __post_init__(self) -> None:
        """Every value in its domain, or a one-line ValueError naming the key (`load_config` adds the file)."""
        if not isinstance(self.methods, list) or not self.methods:
            raise ValueError(f"methods must be a non-empty list of {', '.join(METHODS)}; got {self.methods!r}")
        unknown = [m for m in self.methods if m not in METHODS]
        if unknown:
            raise ValueError(f"unknown methods {unknown}; choose from {', '.join(METHODS)}")
        for key in ("embeddings", "elki_embeddings"):
            value, words = getattr(self, key), "'all', 'trained'" if key == "elki_embeddings" else "'all'"
            if not (isinstance(value, str) or (isinstance(value, list) and value
                                               and all(isinstance(v, str) for v in value))):
                raise ValueError(f"{key} must be {words} or a list of feature-space names, got {value!r}")
        if self.k is not None and not (_integer(self.k) and self.k >= 2):
            raise ValueError(f"k must be an integer >= 2, or null for the number of true labels; got {self.k!r}")
        if self.split not in ("all", "test"):
            raise ValueError(f"split must be 'all' or 'test', got {self.split!r}")
        if not (_integer(self.seed) and self.seed >= 0):
            raise ValueError(f"seed must be an integer >= 0, got {self.seed!r}")
        if not (_integer(self.medoids_per_cluster) and self.medoids_per_cluster >= 1):
            raise ValueError(f"medoids_per_cluster must be an integer >= 1, got {self.medoids_per_cluster!r}")
        if not ((_integer(self.audio_seconds) or isinstance(self.audio_seconds, float))
                and 0 < self.audio_seconds < float("inf")):
            raise ValueError(f"audio_seconds must be a finite number > 0, got {self.audio_seconds!r}")

    def rows(self, tracks: pd.DataFrame) -> pd.DataFrame:
        """The tracks to cluster: all of them, or (``split: test``) the test split's; a one-line ValueError
        when that leaves fewer than two."""
        rows = tracks if self.split == "all" else tracks[tracks["split"] == "test"]
        if len(rows) < 2:
            raise ValueError(f"cluster_testing.split {self.split!r} selects {len(rows)} of {len(tracks)} tracks; "
                             "clustering needs at least 2 (split: all takes every track)")
        return rows


@dataclass
class ClusterResult:
    """Labels in input order (noise = -1) and how they were made."""

    labels: np.ndarray  # (n,) int64
    method: str
    params: dict = field(default_factory=dict)  # the parameters actually used (eps, k, seed, ...)
    linkage: np.ndarray | None = None  # scipy-style dendrogram (`cml.cluster.hierarchy.cut` cuts any): the MST methods
    # always, ELKI's hierarchical ones on request
    seconds: float = 0.0


def take_rows(table: FeatureTable, rows: np.ndarray) -> FeatureTable:
    """The table's rows ``rows`` (indices, in that order)."""
    return FeatureTable(ids=table.ids[rows], X=table.X[rows], feature_names=table.feature_names,
                        labels=None if table.labels is None else table.labels[rows],
                        meta=table.meta.iloc[rows].reset_index(drop=True))


def check_directions(table: FeatureTable, source: object, *, drop_invalid: bool = False) -> FeatureTable:
    """The table, checked before its rows are L2-normalised: a row of length zero has no direction
    (`l2_normalise` would leave it at the origin, at distance 1 from every unit row, so it would join
    clusters and playlists at random). It is named in a FeatureTableError, or with ``drop_invalid`` dropped
    and named in the log."""
    zero = np.linalg.norm(table.X, axis=1) == 0
    if not zero.any():
        return table
    message = (f"{source}: {zero.sum()} rows of length zero have no direction to L2-normalise, "
               f"ids: {preview(table.ids[zero])}")
    if not drop_invalid:
        raise FeatureTableError(f"{message} (drop_invalid=True drops them)")
    log.warning("%s: dropped", message)
    return take_rows(table, np.flatnonzero(~zero))


def kdistance_eps(X: np.ndarray, min_pts: int = 5) -> float:
    """DBSCAN eps at the knee of the sorted k-distance curve (rule in the module docstring)."""
    k = min(min_pts, len(X))
    dist, _ = NearestNeighbors(n_neighbors=k).fit(X).kneighbors(X)
    curve = np.sort(dist[:, k - 1])
    span = curve[-1] - curve[0]
    if span <= 0:  # all core distances equal: nothing to choose
        knee = curve[-1]
    else:
        x = np.linspace(0.0, 1.0, len(curve))
        knee = curve[np.argmax(x - (curve - curve[0]) / span)]
    positive = curve[curve > 0]
    return float(knee if knee > 0 else (positive[0] if len(positive) else 1e-12))


def cluster(X: np.ndarray, method: str, k: int | None = None, seed: int = 0, *, normalise: bool = True,
            **opts) -> ClusterResult:
    """Cluster the rows of X with ``method`` (one of :data:`METHODS`).

    Options: ``height`` (hierarchical, instead of k), ``dendrogram`` (ELKI hierarchical; the MST methods
    always return theirs),
    ``variant`` (elki-kmeans: lloyd/elkan/hamerly), ``eps`` and ``min_pts`` (DBSCAN), ``min_pts`` and
    ``min_cluster_size`` (HDBSCAN), ``max_iter`` (k-means).
    """
    if method not in METHODS:
        raise ValueError(f"unknown method {method!r}; choose from {', '.join(METHODS)}")
    X = elki.check_finite(X)
    if normalise:
        X = l2_normalise(X)
    if method in NEEDS_K and k is None and not (method in HIERARCHICAL and opts.get("height") is not None):
        raise ValueError(f"method {method} needs k (the number of clusters)")
    if k is not None and not 1 <= k <= len(X):
        raise ValueError(f"k={k} clusters asked for, but there are only {len(X)} points")
    params = {"k": k, "seed": seed, "normalise": normalise, "metric": "euclidean"}
    start = time.perf_counter()
    linkage = None
    if method in ELKI_HIERARCHICAL:
        res = elki.hierarchical(X, ELKI_HIERARCHICAL[method], k=k, height=opts.get("height"),
                                slink=method == "elki-slink", dendrogram=opts.get("dendrogram", False))
        labels, linkage = res.labels, res.linkage
        params["height"] = opts.get("height")
    elif method in MST_METHODS:
        labels, linkage = _mst_cluster(X, method, k, seed, opts, params)
    elif method == "elki-kmeans":
        params.update(variant=opts.get("variant", "lloyd"), max_iter=opts.get("max_iter", 0))
        labels = elki.kmeans(X, k, variant=params["variant"], seed=seed, max_iter=params["max_iter"]).labels
    elif method == "kmeans":
        params.update(init="k-means++", n_init=opts.get("n_init", 10), max_iter=opts.get("max_iter", 300))
        labels = skcluster.KMeans(n_clusters=k, init="k-means++", n_init=params["n_init"],
                                  max_iter=params["max_iter"], random_state=seed).fit_predict(X)
    elif method in ("dbscan", "elki-dbscan"):
        min_pts = opts.get("min_pts", 5)
        eps = opts["eps"] if opts.get("eps") is not None else kdistance_eps(X, min_pts)
        params.update(eps=eps, min_pts=min_pts)
        if method == "dbscan":
            _check_dbscan_memory(X, eps, seed)
        labels = (elki.dbscan(X, eps=eps, min_pts=min_pts).labels if method == "elki-dbscan" else
                  skcluster.DBSCAN(eps=eps, min_samples=min_pts).fit_predict(X))
    else:  # hdbscan, elki-hdbscan
        min_pts, min_size = opts.get("min_pts", 5), opts.get("min_cluster_size", 5)
        params.update(min_pts=min_pts, min_cluster_size=min_size)
        labels = (elki.hdbscan(X, min_pts=min_pts, min_cluster_size=min_size).labels if method == "elki-hdbscan"
                  else skcluster.HDBSCAN(min_cluster_size=min_size, min_samples=min_pts, copy=True).fit_predict(X))
    return ClusterResult(labels=np.asarray(labels, dtype=np.int64), method=method, params=params,
                         linkage=linkage, seconds=time.perf_counter() - start)


def _mst_cluster(X: np.ndarray, method: str, k: int | None, seed: int, opts: dict, params: dict):
    """Labels and dendrogram of an MST method (`cml.cluster.hierarchy`); ``params`` gets what was used."""
    exact, density = MST_METHODS[method]
    min_pts = opts.get("min_pts", 5) if density else 1
    tree = hierarchy.exact_mst(X, min_pts) if exact else hierarchy.knn_mst(X, min_pts, seed=seed)
    params.update(exact=exact, **({} if exact else {"neighbours": hierarchy.KNN_K}))
    if density:
        params.update(min_pts=min_pts, min_cluster_size=opts.get("min_cluster_size", 5))
        return hierarchy.hdbscan_labels(tree, params["min_cluster_size"]), tree.linkage
    params["height"] = opts.get("height")
    return hierarchy.cut(tree.linkage, k=k, height=params["height"]), tree.linkage


def _table_mb(n: int, d: int) -> float:
    return n * d * 8 / 2**20


def estimate(method: str, n: int, d: int = 128) -> tuple[float, float]:
    """(seconds, MiB of memory) that `cluster` should take with ``method`` on n rows of d dims, by the measured
    `COSTS`. Time scales with d above 128 (distances cost d operations) but is not reduced below it. Memory:
    the input table and its float64 and L2-normalised copies in Python, the method's own working set, and
    for ELKI the JVM heap it is given (`elki.heap_need_mb`, with the n^2/2 matrix for Anderberg). At 100,000 rows
    the measured peaks stay below these estimates (README)."""
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


def _check_dbscan_memory(X: np.ndarray, eps: float, seed: int) -> None:
    """A ValueError, before scikit-learn's DBSCAN starts, when its neighbourhood lists would not fit."""
    need = estimate("dbscan", *X.shape)[1] + dbscan_lists_mb(X, eps, seed)
    if need > memory_limit_mb():
        raise ValueError(f"skipped at {len(X):,} rows: scikit-learn DBSCAN's neighbourhood lists at eps={eps:.3g} "
                         f"need about {need / 1024:,.1f} GiB of memory, over the {memory_limit_mb() / 1024:,.1f} GiB "
                         f"this machine allows ({MEMORY_SHARE:.0%} of its RAM)")


def purity(true: np.ndarray, pred: np.ndarray) -> float:
    """Share of points whose cluster's most common true label is their own."""
    table = pd.crosstab(pd.Series(pred, name="pred"), pd.Series(true, name="true"))
    return float(table.max(axis=1).sum() / len(pred))


def _internal(X: np.ndarray, labels: np.ndarray, seed: int) -> dict:
    keep = labels >= 0
    Xc, lc = X[keep], labels[keep]
    n_clusters = len(np.unique(lc))
    if not 2 <= n_clusters <= len(lc) - 1:
        return {"silhouette": None, "davies_bouldin": None}
    sample = min(SILHOUETTE_SAMPLE, len(lc)) if len(lc) > SILHOUETTE_SAMPLE else None
    try:
        sil = metrics.silhouette_score(Xc, lc, sample_size=sample, random_state=seed)
    except ValueError:  # a sample that happened to hold a single cluster
        sil = None
    return {"silhouette": None if sil is None else float(sil),
            "davies_bouldin": float(metrics.davies_bouldin_score(Xc, lc))}


def partition_scores(X: np.ndarray, labels: np.ndarray, true_labels=None, *, seed: int = 0) -> dict:
    """Clustering metrics (see the module docstring); X should be what was clustered (normalised or not)."""
    labels = np.asarray(labels)
    out = {"n": int(len(labels)), "n_clusters": int(len(np.unique(labels[labels >= 0]))),
           "noise_fraction": float(np.mean(labels < 0)), **_internal(np.asarray(X, dtype=np.float64), labels, seed)}
    if true_labels is not None:
        true = pd.Series(true_labels, dtype=object)
        has = true.notna().to_numpy()
        if has.any():
            t, p = true[has].astype(str).to_numpy(), labels[has]
            out.update(n_labelled=int(has.sum()),
                       nmi=float(metrics.normalized_mutual_info_score(t, p)),
                       ari=float(metrics.adjusted_rand_score(t, p)),
                       v_measure=float(metrics.v_measure_score(t, p)),
                       purity=purity(t, p))
    return out


def cluster_scores(X: np.ndarray, result: ClusterResult, true_labels=None, *, seed: int = 0) -> dict:
    """:func:`partition_scores` of a clustering of the rows of X, scored in the space they were clustered in (unit
    rows unless ``normalise=False`` was asked): what `cml cluster` writes and each row of the ClusterTesting
    grid holds, so both compute every key the same way."""
    X = l2_normalise(X) if result.params.get("normalise", True) else X
    return partition_scores(X, result.labels, true_labels, seed=seed)


# --------------------------------------------------------------------------------------------------
# The grid of the ClusterTesting notebook: every feature table x every method, and what to show of it.

HDBSCAN_METHODS = ("elki-hdbscan", "hdbscan", "mst-hdbscan", "knn-hdbscan")
DENSITY = ("elki-hdbscan", "elki-dbscan", "dbscan", "hdbscan", "mst-hdbscan", "knn-hdbscan")  # choose their own k
GRID_METRICS = ("nmi", "ari", "v_measure", "purity", "silhouette", "davies_bouldin", "n_clusters",
                "noise_fraction")
LOWER_IS_BETTER = {"davies_bouldin"}


def discover_tables(embeddings_dir: str | Path, baselines: Mapping[str, str | Path] | None = None,
                    select: str | Sequence[str] = "all") -> dict[str, Path]:
    """Name -> feature table: ``<dir>/tracks.parquet`` of every folder under ``embeddings_dir`` (named
    after the folder, sorted), then the ``baselines`` that exist; ``select`` ("all" or names) keeps some.

    Only ``tracks.parquet`` is read: the crop tables beside it (``tracks.1x.parquet``, ...) cover the test
    split only. A selected name that does not exist raises, naming what does.
    """
    found = {p.parent.name: p for p in sorted(Path(embeddings_dir).glob("*/tracks.parquet"))}
    found.update({name: Path(path) for name, path in (baselines or {}).items() if Path(path).is_file()})
    if select == "all":
        return found
    names = [select] if isinstance(select, str) else list(select)
    missing = [name for name in names if name not in found]
    if missing:
        raise ValueError(f"no feature table for {missing}; available: {', '.join(found) or 'none'}")
    return {name: found[name] for name in names}


def load_tables(paths: Mapping[str, str | Path], *, ids: Sequence[str] | None = None,
                labels: Mapping[str, object] | None = None, zscored: Sequence[str] = ZSCORED
                ) -> dict[str, FeatureTable]:
    """Read feature tables, keep the rows in ``ids`` (in that order; all rows when None), take the true
    labels from ``labels`` (id -> label) when given, and z-score the tables named in ``zscored``.

    Ids missing from a table raise (every space must be scored on the same tracks).
    """
    tables = {}
    for name, path in paths.items():
        table = read_feature_table(path)
        if ids is not None:
            pos = {i: n for n, i in enumerate(table.ids)}
            missing = [i for i in ids if i not in pos]
            if missing:
                raise ValueError(f"{path}: {len(missing)} tracks have no row (first: {missing[:5]})")
            table = take_rows(table, np.array([pos[i] for i in ids], dtype=np.int64))
        if labels is not None:
            table.labels = np.array([labels.get(i) for i in table.ids], dtype=object)
        if name in zscored:
            table.X = standardise(table.X)[0]  # baselines mix units (dB, Hz, ...)
        tables[name] = table
    return tables


def n_labels(labels: np.ndarray | None) -> int:
    """Distinct true labels (missing ones not counted): the default k."""
    return 0 if labels is None else len({v for v in labels if v is not None and v == v})


def select_spaces(names: Sequence[str], select: str | Sequence[str]) -> list[str]:
    """``"all"``, ``"trained"`` (all but the ``untrained-*`` encoders) or a list of names, in ``names`` order."""
    if select == "all":
        return list(names)
    if select == "trained":
        return [n for n in names if not n.startswith("untrained-")]
    wanted = [select] if isinstance(select, str) else list(select)
    missing = [n for n in wanted if n not in names]
    if missing:
        raise ValueError(f"unknown feature spaces {missing}; available: {', '.join(names)}")
    return [n for n in names if n in wanted]


def run_grid(tables: Mapping[str, FeatureTable], methods: Sequence[str] = METHODS, k: int | None = None,
             seed: int = 0, *, elki_on: Sequence[str] | None = None, normalise: bool = True,
             progress: bool = False, budget: float = METHOD_BUDGET_SECONDS) -> pd.DataFrame:
    """Cluster every table with every method and score it with :func:`cluster_scores`: one row per pair.

    ``k=None`` takes the number of true labels of each table. ``elki_on`` limits the ELKI methods to
    those tables (each ELKI call starts a JVM, ~1 s); None runs them everywhere. A pair that fails (ELKI
    error, k larger than the data, no labels to take k from) gets its reason in the ``error`` column and
    the grid goes on; so does one whose estimate at this size passes ``budget`` seconds or the machine's
    memory (`too_costly`): it is skipped without running.
    """
    unknown = [m for m in methods if m not in METHODS]
    if unknown:
        raise ValueError(f"unknown methods {unknown}; choose from {', '.join(METHODS)}")
    rows = []
    pairs = [(name, method) for name in tables for method in methods
             if elki_on is None or name in elki_on or not method.startswith("elki-")]
    for name, method in tqdm(pairs, desc="clustering", disable=not progress):
        table = tables[name]
        k_used = k if k is not None else (n_labels(table.labels) or None)
        row = {"embedding": name, "method": method, "k": k_used if method in NEEDS_K else None}
        reason = too_costly(method, *table.X.shape, budget=budget)
        if reason:
            log.warning("%s x %s %s", name, method, reason)
            rows.append({**row, "error": reason})
            continue
        try:
            result = cluster(table.X, method, k=k_used, seed=seed, normalise=normalise)
        except (ValueError, elki.ElkiError) as err:
            log.warning("%s x %s skipped: %s", name, method, err)
            rows.append({**row, "error": str(err).splitlines()[0]})
            continue
        rows.append({**row, **cluster_scores(table.X, result, table.labels, seed=seed), "seconds": result.seconds,
                     "error": None})
    grid = pd.DataFrame(rows).astype({"k": "Int64"})
    first = [c for c in ("embedding", "method", "k", "n", "n_labelled", *GRID_METRICS, "seconds") if c in grid]
    return grid[first + [c for c in grid if c not in first]]  # error last


def grid_metrics(grid: pd.DataFrame) -> dict:
    """The grid as ``{embedding: {method: {metric: value}}}`` (the metrics JSON; failed pairs left out)."""
    out: dict = {}
    for _, row in grid[grid["error"].isna()].iterrows():
        out.setdefault(row["embedding"], {})[row["method"]] = {
            m: (None if pd.isna(row[m]) else row[m]) for m in GRID_METRICS if m in row.index}
    return out


def headline_metric(grid: pd.DataFrame) -> str:
    """NMI where there are true labels, else the silhouette (the only label-free score that ranks)."""
    return "nmi" if "nmi" in grid and grid["nmi"].notna().any() else "silhouette"


def ranking(grid: pd.DataFrame, metric: str = "nmi") -> pd.DataFrame:
    """Embeddings x methods table of ``metric``, best embeddings first (by their best method) and best
    methods first (by their mean over embeddings); Davies-Bouldin counts lower as better."""
    table = grid.pivot(index="embedding", columns="method", values=metric).astype(float)
    sign = -1.0 if metric in LOWER_IS_BETTER else 1.0
    rows = (sign * table).max(axis=1).sort_values(ascending=False, kind="stable").index
    cols = (sign * table).mean(axis=0).sort_values(ascending=False, kind="stable").index
    return table.loc[rows, cols]


def best_pair(grid: pd.DataFrame, metric: str = "nmi", methods: Sequence[str] | None = None) -> pd.Series:
    """The grid row (embedding, method, scores) with the best ``metric``, optionally among ``methods``."""
    rows = grid if methods is None else grid[grid["method"].isin(methods)]
    scores = rows[metric].astype(float) * (-1.0 if metric in LOWER_IS_BETTER else 1.0)
    if scores.isna().all():
        raise ValueError(f"no pair has a {metric} score")
    return rows.loc[scores.idxmax()]


def medoids(X: np.ndarray, labels: np.ndarray, n: int = 1) -> dict[int, np.ndarray]:
    """Cluster -> row indices of its ``n`` most central members, most central first (noise skipped).

    Central = smallest sum of Euclidean distances to the other members (the medoid first): a real
    track that stands for its cluster, unlike a centroid. Sums are computed in chunks, so memory stays
    bounded; time is quadratic in the cluster size.
    """
    X, labels = np.asarray(X, dtype=np.float64), np.asarray(labels)
    out = {}
    for c in np.unique(labels[labels >= 0]):
        members = np.flatnonzero(labels == c)
        sums = np.concatenate(list(metrics.pairwise_distances_chunked(
            X[members], reduce_func=lambda chunk, start: chunk.sum(axis=1))))
        out[int(c)] = members[np.argsort(sums, kind="stable")[:n]]
    return out


def contingency(labels: np.ndarray, true_labels) -> pd.DataFrame:
    """Clusters x true labels counts (rows without a true label left out; noise as the row ``noise``).

    Labels are sorted; clusters are ordered by their majority label, then by size, so a good clustering
    reads as a block diagonal.
    """
    true = pd.Series(true_labels, dtype=object)
    has = true.notna().to_numpy()
    pred = pd.Series(np.asarray(labels)[has]).map(lambda c: "noise" if c < 0 else str(c))
    table = pd.crosstab(pred.to_numpy(), true[has].astype(str).to_numpy(), rownames=["cluster"],
                        colnames=["label"])
    table = table.reindex(columns=sorted(table.columns))
    clusters = [c for c in table.index if c != "noise"]
    order = sorted(clusters, key=lambda c: (int(np.argmax(table.loc[c].to_numpy())), -table.loc[c].max(), int(c)))
    return table.loc[order + (["noise"] if "noise" in table.index else [])]


# --------------------------------------------------------------------------------------------------
# CLI (and what the evaluate and playlist commands share with it)


def add_table_arguments(p: argparse.ArgumentParser) -> None:
    """The feature-table arguments that `read_cli_table` reads."""
    p.add_argument("file", help="feature table (.parquet or .csv) with an id column and numeric features")
    p.add_argument("--label-column", help=f"column holding the true labels (default: {LABEL_COLUMN}, if present)")
    p.add_argument("--drop-invalid", action="store_true",
                   help="drop rows with NaN/inf, repeated ids or (under L2 scaling) length zero")


def read_cli_table(args: argparse.Namespace, *, l2: bool) -> FeatureTable:
    """The feature table of a command, checked before the work: the file exists, a --label-column given
    is in it (a missing one must not quietly mean "no labels"), and ``l2``: every row has a direction."""
    path = check_input_file(args.file, "feature table")
    table = read_feature_table(path, label_column=args.label_column or LABEL_COLUMN, drop_invalid=args.drop_invalid)
    if args.label_column is not None and table.labels is None:
        raise UsageError(f"--label-column {args.label_column!r}: no such column in {path}")
    return check_directions(table, path, drop_invalid=args.drop_invalid) if l2 else table


def check_at_most(value: int | None, option: str, n: int, what: str) -> None:
    """A count option that the data must hold (k <= rows, ...): a UsageError before the work, not a clamp."""
    if value is not None and value > n:
        raise UsageError(f"{option} {value} is more than the {n} {what}")


def cluster_size(text: str) -> int:
    """HDBSCAN's smallest cluster: an integer >= 2 (a cluster of one point is noise)."""
    value = count(text)
    if value < 2:
        raise argparse.ArgumentTypeError(f"{text!r}: must be an integer >= 2")
    return value


# The methods each option applies to; given to another method, it would be silently ignored.
OPTION_METHODS = {"k": NEEDS_K, "height": set(HIERARCHICAL), "eps": {"dbscan", "elki-dbscan"},
                  "min_pts": set(DENSITY), "min_cluster_size": set(HDBSCAN_METHODS), "variant": {"elki-kmeans"}}


def _cmd_cluster(args: argparse.Namespace) -> int:
    unused = [f"--{name.replace('_', '-')}" for name, methods in OPTION_METHODS.items()
              if getattr(args, name) is not None and args.method not in methods]
    if unused:
        raise UsageError(f"{', '.join(unused)}: not used by --method {args.method}")
    if args.k is not None and args.height is not None:
        raise UsageError("give --k or --height, not both")
    for out in (args.out, args.metrics):
        if out:
            check_output(out)
    table = read_cli_table(args, l2=not args.no_normalise)
    if args.standardise:
        table.X = standardise(table.X)[0]  # as `load_tables` does for the grid's handcrafted baseline
    k = args.k
    if k is None and args.method in NEEDS_K and args.height is None:
        k = n_labels(table.labels)
        if not k:
            raise UsageError(f"--k is required for {args.method} ({args.file} has no labels to take it from)")
        log.info("k not given: using the %d distinct labels", k)
    for option, value in (("--k", k), ("--min-pts", args.min_pts), ("--min-cluster-size", args.min_cluster_size)):
        check_at_most(value, option, len(table), f"rows in {args.file}")
    opts = {name: getattr(args, name) for name in ("height", "eps", "min_pts", "min_cluster_size", "variant")
            if getattr(args, name) is not None}
    too_big = too_costly(args.method, *table.X.shape, budget=float("inf"))
    if too_big:  # it would exhaust memory, asked for or not
        raise UsageError(f"--method {args.method} {too_big}")
    slow = too_costly(args.method, *table.X.shape)
    if slow:  # asked for by name: run it, but say what it will cost
        log.warning("%s runs anyway, as asked; the grid would have %s", args.method, slow)
    result = cluster(table.X, args.method, k=k, seed=args.seed, normalise=not args.no_normalise, **opts)
    scores = {"method": args.method, **result.params, "seconds": result.seconds,
              **cluster_scores(table.X, result, table.labels, seed=args.seed)}
    if args.out:
        pd.DataFrame({"id": table.ids, "cluster": result.labels}).to_csv(args.out, index=False)
    if args.metrics:
        Path(args.metrics).write_text(json.dumps(scores, indent=2) + "\n")
    print(json.dumps(scores, indent=2))
    return 0


def register_cli(subparsers) -> None:
    """``cml cluster FILE --method M [--k K] [--out FILE.csv] [--metrics FILE.json]``."""
    p = subparsers.add_parser("cluster", description=__doc__.split("\n\n")[0])
    add_table_arguments(p)
    p.add_argument("--method", required=True, choices=METHODS, metavar="METHOD",
                   help=f"exact: {', '.join(m for m in METHODS if m in EXACT)}; approximate (a k-NN graph, "
                        f"or k-means' local optimum): {', '.join(m for m in METHODS if m not in EXACT)}. "
                        "mst-single and mst-hdbscan are exact single linkage and HDBSCAN* in this process "
                        "(seconds at 20,000 rows); knn-single and knn-hdbscan the same over a k-NN graph "
                        "(a million rows)")
    p.add_argument("--k", type=count, help="number of clusters (default: number of distinct labels)")
    p.add_argument("--height", type=non_negative,
                   help="hierarchical (elki-* linkages, mst-single, knn-single): cut the dendrogram at this "
                        "height instead of k")
    p.add_argument("--eps", type=positive, help="DBSCAN radius (default: knee of the k-distance curve)")
    p.add_argument("--min-pts", type=count, help="DBSCAN/HDBSCAN neighbourhood size, the point included (default 5)")
    p.add_argument("--min-cluster-size", type=cluster_size, help="HDBSCAN smallest cluster (default 5)")
    p.add_argument("--variant", choices=elki.KMEANS_VARIANTS, help="elki-kmeans algorithm (default lloyd)")
    p.add_argument("--seed", type=non_negative_int, default=0)
    p.add_argument("--no-normalise", action="store_true", help="cluster raw features, not L2-normalised rows")
    p.add_argument("--standardise", action="store_true",
                   help="z-score every column first (features in mixed units, like the handcrafted baseline: "
                        "the ClusterTesting notebook clusters it so)")
    p.add_argument("--out", help="write id,cluster CSV here (noise = -1)")
    p.add_argument("--metrics", help="write the metrics JSON here")
    p.set_defaults(func=_cmd_cluster)
