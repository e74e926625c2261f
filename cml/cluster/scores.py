"""How good a clustering is: against true labels, and on its own.

Metrics (:func:`partition_scores`): against true labels where a row has one, NMI, ARI, V-measure and purity, with
noise (-1) counted as one more cluster; always the number of clusters, the noise fraction, and the
silhouette and Davies-Bouldin scores on the non-noise points (``None`` when undefined: fewer than two
clusters or every point in its own cluster). Silhouette is computed on a seeded sample of at most 5000
points, since it needs all pairwise distances.

Also what the ClusterTesting notebook shows of one clustering: its medoid tracks and its contingency table.
"""
from __future__ import annotations

import logging

import numpy as np
import pandas as pd
from sklearn import metrics

from cml.cluster.methods import ClusterResult
from cml.search.neighbours import l2_normalise

log = logging.getLogger(__name__)


SILHOUETTE_SAMPLE = 5000


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
