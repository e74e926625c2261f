"""Cluster a feature table with ELKI (the primary tool), scikit-learn or `cml.cluster.hierarchy`.

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
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field

import numpy as np
from sklearn import cluster as skcluster
from sklearn.neighbors import NearestNeighbors

from cml.cluster import elki, hierarchy
from cml.cluster.costs import check_dbscan_memory
from cml.search.neighbours import l2_normalise

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










@dataclass
class ClusterResult:
    """Labels in input order (noise = -1) and how they were made."""

    labels: np.ndarray  # (n,) int64
    method: str
    params: dict = field(default_factory=dict)  # the parameters actually used (eps, k, seed, ...)
    linkage: np.ndarray | None = None  # scipy-style dendrogram (`cml.cluster.hierarchy.cut` cuts any): the MST methods
    # always, ELKI's hierarchical ones on request
    seconds: float = 0.0






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
            check_dbscan_memory(X, eps, seed)
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






















# --------------------------------------------------------------------------------------------------
# The grid of the ClusterTesting notebook: every feature table x every method, and what to show of it.

























# --------------------------------------------------------------------------------------------------
# CLI (and what the evaluate and playlist commands share with it)














