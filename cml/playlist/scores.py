"""How good a playlist is (coherence, coverage of the seeds' region, label purity, path length) against two
baselines: the seeds' nearest neighbours, and the seeds' k-means clusters.
"""
from __future__ import annotations

import logging
from typing import Sequence

import numpy as np
import pandas as pd
from scipy.spatial import ConvexHull, QhullError
from scipy.spatial.distance import pdist

from cml.cluster.grid import n_labels
from cml.cluster.methods import cluster
from cml.playlist.hull import Playlist, nearest_pool, order_tracks, rank_basis, unique_indices
from cml.search.index import Index

log = logging.getLogger(__name__)


def _volume(points: np.ndarray) -> float:
    """Volume of the convex hull of ``points`` (n, dim); 0 when they do not span dim dimensions."""
    if points.shape[1] == 1:
        return float(np.ptp(points)) if len(points) else 0.0
    if len(points) <= points.shape[1] or rank_basis(points)[1].shape[1] < points.shape[1]:
        return 0.0
    try:
        return float(ConvexHull(points).volume)
    except QhullError:
        return 0.0


def playlist_metrics(X: np.ndarray, order: Sequence[int], seeds: Sequence[int], labels: Sequence | None = None,
                     coords: np.ndarray | None = None) -> dict:
    """Coherence, diversity, smoothness and label purity of a playlist (rows ``order`` of X, in play order).

    - coherence: mean cosine similarity of adjacent tracks;
    - diversity: mean pairwise Euclidean distance, and the hull volume of the tracks in ``coords``
      (the projection), 0 when they are flat there;
    - smoothness: the largest jump between adjacent tracks (and the mean jump, the path length);
    - label purity: share of the added (non-seed) tracks whose label is one of the seeds' labels
      (unlabelled tracks ignored; None when nothing is left to score).
    Undefined values (a playlist of one track) are None.
    """
    order = np.asarray(order, dtype=np.int64)
    P = X[order]
    out: dict = {"n_tracks": len(order)}
    if len(order) >= 2:
        norms = np.linalg.norm(P, axis=1)
        cos = (P[:-1] * P[1:]).sum(axis=1) / np.maximum(norms[:-1] * norms[1:], 1e-300)
        jumps = np.linalg.norm(np.diff(P, axis=0), axis=1)
        out.update(coherence=float(cos.mean()), diversity=float(pdist(P).mean()),
                   largest_jump=float(jumps.max()), mean_jump=float(jumps.mean()), path_length=float(jumps.sum()))
    else:
        out.update(coherence=None, diversity=None, largest_jump=None, mean_jump=None, path_length=None)
    out["hull_volume"] = _volume(coords[order]) if coords is not None else None
    out["label_purity"] = None
    if labels is not None:
        labels = np.asarray(labels, dtype=object)
        seed_rows = set(np.asarray(seeds, dtype=np.int64).tolist())
        wanted = {labels[i] for i in seed_rows if labels[i] is not None}
        added = [labels[i] for i in order if i not in seed_rows and labels[i] is not None]
        if wanted and added:
            out["label_purity"] = float(np.mean([v in wanted for v in added]))
    return out




def knn_baseline(X: np.ndarray, seeds: Sequence[int], length: int, index: Index | None = None) -> np.ndarray:
    """The seeds plus the tracks nearest to the seeds' centroid, ``length`` in all (``index``: :func:`nearest_pool`)."""
    seeds = unique_indices(seeds)
    centroid = X[seeds].mean(axis=0)
    pool = nearest_pool(X, centroid[None], length, index)
    dist = np.linalg.norm((X[pool] if len(pool) < len(X) else X) - centroid, axis=1)
    dist[np.isin(pool, seeds)] = np.inf
    extra = pool[np.argsort(dist, kind="stable")[:max(0, min(length, len(pool)) - len(seeds))]]
    return np.concatenate([seeds, extra])


def cluster_baseline(X: np.ndarray, seeds: Sequence[int], length: int, n_clusters: int, seed: int = 0) -> np.ndarray:
    """The seeds plus random tracks (drawn with ``seed``) from the k-means clusters that hold a seed."""
    seeds = unique_indices(seeds)
    k = max(1, min(n_clusters, len(X)))
    clusters = cluster(X, "kmeans", k=k, seed=seed, normalise=False).labels
    pool = np.setdiff1d(np.flatnonzero(np.isin(clusters, clusters[seeds])), seeds)
    rng = np.random.default_rng(seed)
    extra = rng.choice(pool, size=min(len(pool), max(0, length - len(seeds))), replace=False)
    return np.concatenate([seeds, np.sort(extra)])


def compare_with_baselines(X: np.ndarray, playlist: Playlist, labels: Sequence | None = None,
                           n_clusters: int = 8, seed: int = 0, index: Index | None = None) -> pd.DataFrame:
    """Metrics of the playlist and of two baselines of the same length, seeds and start.

    Baselines: the k nearest neighbours of the seeds' centroid, and random tracks from the seeds' k-means
    clusters. They are ordered like the playlist (nearest-neighbour + 2-opt from the same start), so the
    table compares which tracks are chosen, not how they are ordered. ``index``: see :func:`nearest_pool`.
    """
    coords = playlist.projection.transform(X)
    length, start = len(playlist.order), int(playlist.order[0])
    rows = {playlist.mode: playlist.order}
    for name, chosen in (("knn_centroid", knn_baseline(X, playlist.seeds, length, index)),
                         ("random_cluster", cluster_baseline(X, playlist.seeds, length, n_clusters, seed))):
        rows[name] = order_tracks(X, np.union1d(chosen, [start]), start=start)
    return pd.DataFrame.from_dict({name: playlist_metrics(X, order, playlist.seeds, labels, coords)
                                   for name, order in rows.items()}, orient="index").rename_axis("method")


def playlist_scores(X: np.ndarray, playlist: Playlist, labels: Sequence | None = None, n_clusters: int | None = None,
                    seed: int = 0, index: Index | None = None) -> dict:
    """The metrics of a playlist: what `cml playlist --metrics` writes and the Playlists notebook's metrics.json holds.

    ``corpus_tracks``, ``n_seeds``, ``n_candidates``, ``fallback`` (hull mode: the seeds span no solid hull, so
    a ball, capsule or flat hull stood in), ``explained_variance`` (the share the projection keeps), and
    :func:`playlist_metrics` of the playlist (``playlist``) and of its two baselines (``knn_centroid``,
    ``random_cluster``; see :func:`compare_with_baselines`; ``n_clusters`` defaults to the number of labels,
    or 8). Undefined values are None.
    """
    k = n_clusters or n_labels(labels) or 8
    comparison = compare_with_baselines(X, playlist, labels, n_clusters=k, seed=seed, index=index)
    comparison = comparison.rename(index={playlist.mode: "playlist"}).astype(object)
    return {"corpus_tracks": len(X), "n_seeds": len(playlist.seeds), "n_candidates": len(playlist.candidates),
            "fallback": playlist.mode == "hull" and playlist.region != "hull",
            "explained_variance": float(playlist.projection.explained.sum()),
            **comparison.where(comparison.notna(), None).to_dict(orient="index")}
