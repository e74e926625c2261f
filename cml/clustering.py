"""Cluster feature tables with ELKI (the primary tool) or scikit-learn, and score the result.

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

Metrics (:func:`evaluate`): against true labels where a row has one, NMI, ARI, V-measure and purity, with
noise (-1) counted as one more cluster; always the number of clusters, the noise fraction, and the
silhouette and Davies-Bouldin scores on the non-noise points (``None`` when undefined: fewer than two
clusters or every point in its own cluster). Silhouette is computed on a seeded sample of at most 5000
points, since it needs all pairwise distances.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
from sklearn import cluster as skcluster
from sklearn import metrics
from sklearn.neighbors import NearestNeighbors

from cml import elki
from cml.tables import read_feature_table

log = logging.getLogger(__name__)

ELKI_HIERARCHICAL = {"elki-slink": "single", "elki-single": "single", "elki-complete": "complete",
                     "elki-average": "average", "elki-ward": "ward"}
METHODS = (*ELKI_HIERARCHICAL, "elki-hdbscan", "elki-kmeans", "elki-dbscan", "kmeans", "dbscan", "hdbscan")
NEEDS_K = {*ELKI_HIERARCHICAL, "elki-kmeans", "kmeans"}
SILHOUETTE_SAMPLE = 5000


@dataclass
class ClusterResult:
    """Labels in input order (noise = -1) and how they were made."""

    labels: np.ndarray  # (n,) int64
    method: str
    params: dict = field(default_factory=dict)  # the parameters actually used (eps, k, seed, ...)
    linkage: np.ndarray | None = None  # scipy-style dendrogram, ELKI hierarchical methods on request
    seconds: float = 0.0


def l2_normalise(X: np.ndarray) -> np.ndarray:
    """Rows scaled to unit length; all-zero rows stay zero (they have no direction)."""
    norms = np.linalg.norm(X, axis=1, keepdims=True)
    return X / np.where(norms > 0, norms, 1.0)


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

    Options: ``height`` (ELKI hierarchical, instead of k), ``dendrogram`` (ELKI hierarchical),
    ``variant`` (elki-kmeans: lloyd/elkan/hamerly), ``eps`` and ``min_pts`` (DBSCAN), ``min_pts`` and
    ``min_cluster_size`` (HDBSCAN), ``max_iter`` (k-means).
    """
    if method not in METHODS:
        raise ValueError(f"unknown method {method!r}; choose from {', '.join(METHODS)}")
    X = elki.check_finite(X)
    if normalise:
        X = l2_normalise(X)
    if method in NEEDS_K and k is None and not (method in ELKI_HIERARCHICAL and opts.get("height") is not None):
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
    elif method == "elki-kmeans":
        params.update(variant=opts.get("variant", "lloyd"), max_iter=opts.get("max_iter", 0))
        labels = elki.kmeans(X, k, variant=params["variant"], seed=seed, max_iter=params["max_iter"]).labels
    elif method == "kmeans":
        params.update(init="k-means++", n_init=opts.get("n_init", 10), max_iter=opts.get("max_iter", 300))
        labels = skcluster.KMeans(n_clusters=k, init="k-means++", n_init=params["n_init"],
                                  max_iter=params["max_iter"], random_state=seed).fit_predict(X)
    elif method in ("dbscan", "elki-dbscan"):
        min_pts = opts.get("min_pts", 5)
        eps = opts.get("eps") or kdistance_eps(X, min_pts)
        params.update(eps=eps, min_pts=min_pts)
        labels = (elki.dbscan(X, eps=eps, min_pts=min_pts).labels if method == "elki-dbscan" else
                  skcluster.DBSCAN(eps=eps, min_samples=min_pts).fit_predict(X))
    else:  # hdbscan, elki-hdbscan
        min_pts, min_size = opts.get("min_pts", 5), opts.get("min_cluster_size", 5)
        params.update(min_pts=min_pts, min_cluster_size=min_size)
        labels = (elki.hdbscan(X, min_pts=min_pts, min_cluster_size=min_size).labels if method == "elki-hdbscan"
                  else skcluster.HDBSCAN(min_cluster_size=min_size, min_samples=min_pts, copy=True).fit_predict(X))
    return ClusterResult(labels=np.asarray(labels, dtype=np.int64), method=method, params=params,
                         linkage=linkage, seconds=time.perf_counter() - start)


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


def evaluate(X: np.ndarray, labels: np.ndarray, true_labels=None, *, seed: int = 0) -> dict:
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


def _run_cli(args: argparse.Namespace) -> int:
    try:
        table = read_feature_table(args.file, label_column=args.label_column, drop_invalid=args.drop_invalid)
        k = args.k
        if k is None and args.method in NEEDS_K and args.height is None:
            if table.labels is None:
                raise ValueError(f"--k is required for {args.method} (the table has no labels to take it from)")
            k = len({v for v in table.labels if v is not None})
            log.info("k not given: using the %d distinct labels", k)
        opts = {name: getattr(args, name) for name in ("height", "eps", "min_pts", "min_cluster_size", "variant")
                if getattr(args, name) is not None}
        result = cluster(table.X, args.method, k=k, seed=args.seed, normalise=not args.no_normalise, **opts)
    except (ValueError, elki.ElkiError) as err:
        print(f"cml cluster: error: {err}", file=sys.stderr)
        return 1
    X = l2_normalise(table.X) if not args.no_normalise else table.X
    scores = {"method": args.method, **result.params, "seconds": result.seconds,
              **evaluate(X, result.labels, table.labels, seed=args.seed)}
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        pd.DataFrame({"id": table.ids, "cluster": result.labels}).to_csv(args.out, index=False)
    if args.metrics:
        Path(args.metrics).parent.mkdir(parents=True, exist_ok=True)
        Path(args.metrics).write_text(json.dumps(scores, indent=2) + "\n")
    print(json.dumps(scores, indent=2))
    return 0


def register_cli(subparsers) -> None:
    """``cml cluster FILE --method M [--k K] [--out FILE.csv] [--metrics FILE.json]``."""
    p = subparsers.add_parser("cluster", help="cluster a feature table (ELKI, k-means, DBSCAN, HDBSCAN)",
                              description=__doc__.split("\n\n")[0])
    p.add_argument("file", help="feature table (.parquet or .csv) with an id column and numeric features")
    p.add_argument("--method", required=True, choices=METHODS)
    p.add_argument("--k", type=int, help="number of clusters (default: number of distinct labels)")
    p.add_argument("--height", type=float, help="ELKI hierarchical: cut the dendrogram at this height instead of k")
    p.add_argument("--eps", type=float, help="DBSCAN radius (default: knee of the k-distance curve)")
    p.add_argument("--min-pts", type=int, help="DBSCAN/HDBSCAN neighbourhood size, the point included (default 5)")
    p.add_argument("--min-cluster-size", type=int, help="HDBSCAN smallest cluster (default 5)")
    p.add_argument("--variant", choices=elki.KMEANS_VARIANTS, help="elki-kmeans algorithm (default lloyd)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--no-normalise", action="store_true", help="cluster raw features, not L2-normalised rows")
    p.add_argument("--label-column", default="label", help="column holding the true labels (default: label)")
    p.add_argument("--drop-invalid", action="store_true", help="drop rows with NaN/inf or repeated ids")
    p.add_argument("--out", help="write id,cluster CSV here (noise = -1)")
    p.add_argument("--metrics", help="write the metrics JSON here")
    p.set_defaults(func=_run_cli)
