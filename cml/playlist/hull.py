"""Playlists from convex hulls of the embedding space.

Given a few seed tracks, take the region of the embedding space they span, fill it with tracks and order
them so that neighbouring songs are close.

**Geometry.** Embeddings are first prepared by :func:`prepare`: ``l2`` (default) puts every row on the unit
sphere, so Euclidean distance ranks like cosine distance (what the contrastive encoder is trained with);
``standard`` z-scores each column (for raw features in different units, e.g. a Spotify export). Selection
(farthest-point sampling), ordering and the metrics all use this prepared full-dimensional space; only the
hull test uses a projection.

**Projection dimension** (``dim``, PCA): the trade-off. Low ``dim`` (2-3) keeps the directions along which
the corpus varies most (on the default corpus most of the variance of the L2-normalised embeddings: the README
gives the share); the hull is then a solid region that holds tracks, needs only ``dim + 1`` seeds in general
position, and Qhull is instant. But tracks that differ from the seeds only along the discarded directions
look inside. High ``dim`` is more faithful, but a hull of a few seeds becomes a thin sliver that holds
almost nothing (in ``d`` dimensions a simplex of ``d + 1`` random points covers a vanishing share of the
data), it needs more seeds, and Qhull's cost grows quickly with the dimension (impractical beyond ~8).
The ``lp`` mode is the limit ``dim = d`` done without Qhull.

**Modes.**

- ``hull``: candidates are the tracks inside the convex hull of the seeds in the projection (Qhull's facet
  equations ``A z + b <= 0``, which give the same answer as ``Delaunay.find_simplex >= 0`` and also a
  distance to push the facets out by ``margin``). Without margin the test is exact; a margin admits every
  track within ``margin`` of the hull, and near sharp vertices of a thin hull also some farther ones
  (pushed-out facets meet beyond the vertex).
- ``lp``: a track ``x`` is inside when it is a convex combination of the seeds in the full space within a
  tolerance ``margin``: ``min_l ||S^T l - x||_inf <= margin`` over ``l >= 0, sum(l) = 1``. This is a linear
  programme (``scipy.optimize.linprog``, HiGHS); a bounding-box test (exact for the L-infinity tolerance)
  prefilters the tracks, and the remaining ones are solved in batches as one block-diagonal LP.
- ``journey``: from seed A to seed B: ``length`` waypoints evenly spaced on the segment A -> B, each taking the
  nearest unused track (on the unit sphere this is the track most similar to the great-circle point); given a
  `cml.search.index.Index` of a large library, only each waypoint's ``length`` most similar tracks are searched.

**Degenerate seeds.** When the seeds span fewer than ``dim`` dimensions in the projection (one or two seeds,
collinear or co-planar seeds, fewer than ``dim + 1`` seeds) there is no solid hull. The region then is the
seeds' own lower-dimensional hull thickened by a radius: a ball (one point), a capsule (a segment) or a
thickened polygon/polytope. The radius is ``margin`` when given, otherwise the smallest that holds
``length`` tracks. A message says which region was used; no Qhull error reaches the caller.

**Selection and order.** Seeds (and the start/end tracks) are always in the playlist. When more candidates
than ``length`` remain, farthest-point sampling from the seeds picks a spread of them. The order is a
nearest-neighbour path from the start track, improved by 2-opt moves (segment reversals that shorten the
path), with the start and optionally the end fixed.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import unicodedata
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
import pandas as pd
from scipy import sparse
from scipy.optimize import linprog
from scipy.spatial import ConvexHull, QhullError
from scipy.spatial.distance import cdist, pdist
from tqdm.auto import tqdm

from cml.cluster.methods import add_table_arguments, check_at_most, cluster, n_labels, read_cli_table
from cml.errors import CmlError, UsageError, check_output, count, non_negative, non_negative_int
from cml.search.index import Index
from cml.search.neighbours import l2_normalise
from cml.tables import FeatureTable, standardise

log = logging.getLogger(__name__)

MODES = ("hull", "lp", "journey")
SCALES = ("l2", "standard", "none")
RANK_TOL = 1e-8  # singular values below this share of the largest count as a degenerate direction
INSIDE_TOL = 1e-9  # slack for points on the boundary (seeds are vertices of their own hull)
LP_BATCH = 128  # candidates per block-diagonal LP
URI_COLUMNS = ("spotify_uri", "uri")
TITLE_COLUMNS = ("title", "track_name", "name")
DURATION_COLUMNS = ("duration", "seconds", "duration_s")
FORMATS = (".m3u8", ".m3u", ".csv")


@dataclass
class PlaylistsConfig:
    """The Playlists notebook (stage `playlists`)."""

    embedding: str  # outputs/embeddings/<embedding>/tracks.parquet: a study choice, set in params.yaml only
    seed_tracks: str = "auto"  # auto: n_seed_tracks tracks of one label drawn with `seed`; or ids separated by commas
    n_seed_tracks: int = 4
    length: int = 20
    mode: str = "hull"  # hull (convex hull in the PCA projection) or lp (convex combinations, full space)
    dim: int = 3  # PCA dimension of the hull: lower admits more tracks, higher is more faithful
    margin: float = 0.02  # hull: facets pushed out by this distance; lp: tolerance per coordinate
    journey: str = "auto"  # auto: the first seed -> the track farthest from it; or ID_A,ID_B
    listen_tracks: int = 10  # audio players in the notebook, in playlist order
    excerpt_seconds: float = 4.0
    seed: int = 0  # the auto seed tracks and the baselines


class PlaylistError(UsageError, ValueError):
    """A playlist request that cannot be served as it is (unknown seeds, too short, ...); the message says why."""


# --------------------------------------------------------------------------------------------------
# Space: preparation and projection


def prepare(X: np.ndarray, scale: str = "l2") -> np.ndarray:
    """The space every step works in: unit rows (``l2``), z-scored columns (``standard``) or as is."""
    X = np.asarray(X, dtype=np.float64)
    if scale == "l2":
        return l2_normalise(X)
    if scale == "standard":
        return standardise(X)[0]
    if scale == "none":
        return X
    raise PlaylistError(f"unknown scale {scale!r}; choose from {', '.join(SCALES)}")


@dataclass
class Projection:
    """A PCA projection: ``coords = (X - mean) @ components.T``."""

    mean: np.ndarray  # (d,)
    components: np.ndarray  # (dim, d), orthonormal rows, by decreasing variance
    explained: np.ndarray  # (dim,) share of the total variance per component

    @property
    def dim(self) -> int:
        return len(self.components)

    def transform(self, X: np.ndarray) -> np.ndarray:
        return (np.asarray(X, dtype=np.float64) - self.mean) @ self.components.T


def fit_projection(X: np.ndarray, dim: int) -> Projection:
    """PCA by an eigen-decomposition of the covariance: exact, deterministic (signs fixed), no seed needed."""
    if dim < 1:
        raise PlaylistError(f"dim must be at least 1, got {dim}")
    X = np.asarray(X, dtype=np.float64)
    if dim > X.shape[1]:
        log.info("dim %d > %d features: using %d", dim, X.shape[1], X.shape[1])
        dim = X.shape[1]
    mean = X.mean(axis=0)
    centred = X - mean
    values, vectors = np.linalg.eigh(centred.T @ centred)
    top = np.argsort(values)[::-1][:dim]
    components = vectors[:, top].T
    components *= np.sign(components[np.arange(dim), np.abs(components).argmax(axis=1)])[:, None]
    total = values.clip(min=0).sum()
    explained = values[top].clip(min=0) / total if total > 0 else np.zeros(dim)
    return Projection(mean=mean, components=components, explained=explained)


# --------------------------------------------------------------------------------------------------
# Regions


def _rank_basis(S: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Centre of the seeds and an orthonormal basis (k, r) of the affine subspace they span."""
    centre = S.mean(axis=0)
    _, sv, vt = np.linalg.svd(S - centre, full_matrices=False)
    rank = int((sv > RANK_TOL * sv[0]).sum()) if len(sv) and sv[0] > 0 else 0
    return centre, vt[:rank].T


def outside_distance(Z: np.ndarray, S: np.ndarray) -> tuple[str, np.ndarray]:
    """How far each row of Z lies outside the convex hull of the seeds S (0 inside), and the region's kind.

    The hull lives in the seeds' affine subspace of rank r: ``hull`` when r = dim (a solid hull),
    ``ball`` (r = 0), ``capsule`` (r = 1) or ``flat hull`` (2 <= r < dim) otherwise. The distance is
    ``sqrt(max(in-plane facet distance, 0)^2 + off-plane distance^2)``; the in-plane part is the largest
    facet offset, exact for points whose nearest hull point lies on a facet and a lower bound elsewhere.
    """
    centre, basis = _rank_basis(S)
    while True:
        rank = basis.shape[1]
        U = (Z - centre) @ basis  # (n, r) coordinates in the seeds' subspace
        off2 = (((Z - centre) - U @ basis.T) ** 2).sum(axis=1)  # squared distance to the subspace
        if rank == 0:
            inside = np.zeros(len(Z))
        elif rank == 1:
            s = (S - centre) @ basis[:, 0]
            inside = np.maximum(U[:, 0] - s.max(), s.min() - U[:, 0])
        else:
            try:
                equations = ConvexHull((S - centre) @ basis).equations  # (facets, r + 1), unit normals
            except QhullError as err:  # nearly degenerate: drop the weakest direction and retry
                log.info("Qhull could not build a %d-d hull of the seeds (%s); using %d dimensions",
                         rank, str(err).splitlines()[0], rank - 1)
                basis = basis[:, :-1]
                continue
            inside = (U @ equations[:, :-1].T + equations[:, -1]).max(axis=1)
        kind = "hull" if rank == Z.shape[1] else ("ball", "capsule")[rank] if rank < 2 else "flat hull"
        return kind, np.sqrt(np.maximum(inside, 0.0) ** 2 + off2)


def _lp_bounds(X: np.ndarray, S: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Cheap lower and upper bounds on the L-infinity distance from each row of X to the hull of S.

    Upper: the distance to a point of the hull, the least-squares affine combination of the seeds with
    negative weights clipped and the rest renormalised. Lower: the dual certificate
    ``w.x - max_i w.s_i`` for ``w = (x - p) / |x - p|_1`` (any w with ``|w|_1 <= 1`` gives one).
    """
    centre = S[0]
    if len(S) > 1:
        mu = (X - centre) @ np.linalg.pinv((S[1:] - centre).T).T  # (n, k - 1)
        weights = np.clip(np.c_[1 - mu.sum(axis=1), mu], 0, None)
        weights /= weights.sum(axis=1, keepdims=True)
    else:
        weights = np.ones((len(X), 1))
    residual = X - weights @ S  # (n, d)
    upper = np.abs(residual).max(axis=1)
    w = residual / np.maximum(np.abs(residual).sum(axis=1, keepdims=True), 1e-300)
    lower = (w * X).sum(axis=1) - (w @ S.T).max(axis=1)
    return lower, upper


def lp_outside_distance(X: np.ndarray, seeds: np.ndarray, tol: float, progress: bool = False) -> np.ndarray:
    """L-infinity distance from each row of X to the convex hull of ``X[seeds]`` where it is at most
    ``tol`` (or an upper bound of it that is), ``inf`` elsewhere.

    Rows outside the seeds' bounding box widened by ``tol`` cannot be within ``tol``; of the others,
    :func:`_lp_bounds` settles most, and the rest are solved ``LP_BATCH`` at a time as one block-diagonal LP:
    per row j, variables ``(l_j (k), t_j)``, ``-t_j <= S^T l_j - x_j <= t_j``, ``sum(l_j) = 1``, minimise
    ``sum_j t_j``.
    """
    S = X[seeds]  # (k, d)
    k, d = S.shape
    out = np.full(len(X), np.inf)
    box = np.flatnonzero(np.all((X >= S.min(axis=0) - tol) & (X <= S.max(axis=0) + tol), axis=1))
    lower, upper = _lp_bounds(X[box], S)
    out[box[upper <= tol]] = upper[upper <= tol]
    todo = box[(upper > tol) & (lower <= tol + INSIDE_TOL)]
    log.debug("LP: %d rows in the box, %d settled by bounds, %d to solve", len(box), len(box) - len(todo), len(todo))
    block = sparse.csr_matrix(np.block([[S.T, -np.ones((d, 1))],  # S^T l - t <= x
                                        [-S.T, -np.ones((d, 1))]]))  # -S^T l - t <= -x
    for start in tqdm(range(0, len(todo), LP_BATCH), desc="LP", disable=not progress):
        rows = todo[start:start + LP_BATCH]
        m = len(rows)
        A_ub = sparse.block_diag([block] * m, format="csr")
        b_ub = np.concatenate([X[rows], -X[rows]], axis=1).ravel()
        A_eq = sparse.block_diag([sparse.csr_matrix(np.r_[np.ones(k), 0.0][None])] * m, format="csr")
        cost = np.tile(np.r_[np.zeros(k), 1.0], m)
        res = linprog(cost, A_ub=A_ub, b_ub=b_ub, A_eq=A_eq, b_eq=np.ones(m), bounds=(0, None), method="highs")
        if res.status != 0:
            raise CmlError(f"the LP solver failed: {res.message}")
        out[rows] = res.x.reshape(m, k + 1)[:, -1]
    return np.where(out <= tol + INSIDE_TOL, out, np.inf)


# --------------------------------------------------------------------------------------------------
# Selection and order


def farthest_point_sampling(X: np.ndarray, candidates: np.ndarray, k: int, chosen: np.ndarray) -> np.ndarray:
    """``chosen`` followed by up to ``k - len(chosen)`` candidates, each the farthest from all picked so far."""
    chosen = list(chosen)
    pool = np.setdiff1d(candidates, chosen)
    if len(pool) == 0 or len(chosen) >= k:
        return np.asarray(chosen, dtype=np.int64)
    nearest = cdist(X[pool], X[chosen]).min(axis=1)
    while len(chosen) < k and np.isfinite(nearest).any():
        j = int(np.argmax(nearest))  # first maximum: deterministic
        chosen.append(int(pool[j]))
        nearest = np.minimum(nearest, np.linalg.norm(X[pool] - X[pool[j]], axis=1))
        nearest[j] = -np.inf
    return np.asarray(chosen, dtype=np.int64)


def path_length(D: np.ndarray, order: Sequence[int]) -> float:
    """Sum of the distances between consecutive stops of an open path."""
    order = np.asarray(order)
    return float(D[order[:-1], order[1:]].sum())


def nearest_neighbour_tour(D: np.ndarray, start: int = 0, end: int | None = None) -> np.ndarray:
    """Open path through all points of the distance matrix D: always on to the nearest unvisited; ``end`` last."""
    n = len(D)
    visited = np.zeros(n, dtype=bool)
    order = [start]
    visited[start] = True
    if end is not None and end != start:
        visited[end] = True
    while len(order) < n - int(end is not None and end != start):
        dist = np.where(visited, np.inf, D[order[-1]])
        nxt = int(np.argmin(dist))
        order.append(nxt)
        visited[nxt] = True
    if end is not None and end != start:
        order.append(end)
    return np.asarray(order, dtype=np.int64)


def two_opt(D: np.ndarray, order: Sequence[int], fix_start: bool = True, fix_end: bool = False,
            max_rounds: int = 1000) -> np.ndarray:
    """Improve an open path by reversing segments while that shortens it; never returns a longer path.

    Reversing ``order[i..j]`` replaces the edges (i-1, i) and (j, j+1) by (i-1, j) and (i, j+1); at a free
    end the missing edge costs nothing, so the end of the path can move too.
    """
    order = np.array(order, dtype=np.int64)
    n = len(order)
    for _ in range(max_rounds):
        improved = False
        for i in range(1 if fix_start else 0, n - 1):
            js = np.arange(i + 1, n - 1 if fix_end else n)
            if len(js) == 0:
                continue
            nxt = np.append(order[1:], -1)[js]  # -1: past the end
            a = order[i - 1] if i > 0 else None
            removed = (D[a, order[i]] if a is not None else 0.0) + np.where(nxt >= 0, D[order[js], nxt], 0.0)
            added = (D[a, order[js]] if a is not None else 0.0) + np.where(nxt >= 0, D[order[i], nxt], 0.0)
            gain = removed - added
            best = int(np.argmax(gain))
            if gain[best] > 1e-12 * max(removed[best], 1.0):
                j = js[best]
                order[i:j + 1] = order[i:j + 1][::-1]
                improved = True
        if not improved:
            break
    return order


def order_tracks(X: np.ndarray, idx: Sequence[int], start: int | None = None, end: int | None = None) -> np.ndarray:
    """The tracks ``idx`` (rows of X) as a smooth path: nearest-neighbour tour + 2-opt, start/end fixed if given."""
    idx = np.asarray(idx, dtype=np.int64)
    if len(idx) < 3:
        head = [i for i in idx if i == start] + [i for i in idx if i not in (start, end)] + \
               [i for i in idx if i == end and i != start]
        return np.asarray(head, dtype=np.int64)
    D = cdist(X[idx], X[idx])
    where = {int(v): p for p, v in enumerate(idx)}
    s = where[start] if start is not None else 0
    e = where[end] if end is not None else None
    tour = nearest_neighbour_tour(D, s, e)
    return idx[two_opt(D, tour, fix_start=start is not None, fix_end=end is not None)]


# --------------------------------------------------------------------------------------------------
# Playlists


@dataclass
class Playlist:
    """A playlist: rows of the table in play order, and how they were found."""

    order: np.ndarray  # (length,) row indices, in play order
    seeds: np.ndarray  # row indices of the seeds
    mode: str
    region: str  # hull, flat hull, capsule, ball, lp or segment
    limit: float  # tracks with outside-distance <= limit were candidates (margin, or the fallback radius)
    candidates: np.ndarray  # row indices inside the region (before sampling)
    projection: Projection
    message: str  # one line on the region used (also logged)


def _unique(values: Sequence[int]) -> np.ndarray:
    """The values without repeats, in first-seen order (np.unique would sort them)."""
    return np.asarray(list(dict.fromkeys(int(v) for v in values)), dtype=np.int64)


def build_playlist(X: np.ndarray, seeds: Sequence[int], length: int, *, mode: str = "hull", dim: int = 3,
                   margin: float = 0.0, start: int | None = None, end: int | None = None,
                   projection: Projection | None = None, index: Index | None = None,
                   progress: bool = False) -> Playlist:
    """A playlist of at most ``length`` rows of X (prepared, see :func:`prepare`) around the ``seeds`` rows.

    ``start`` defaults to the first seed (journey: A), ``end`` is free unless given (journey: B).
    Pass a fitted ``projection`` to reuse it across playlists, and an ``index`` of X's unit rows to find a
    journey's tracks with it (see :func:`nearest_pool`).
    """
    if mode not in MODES:
        raise PlaylistError(f"unknown mode {mode!r}; choose from {', '.join(MODES)}")
    if length <= 0:
        raise PlaylistError(f"length must be positive, got {length}")
    if not (np.isfinite(margin) and margin >= 0):
        raise PlaylistError(f"margin must be a finite number >= 0, got {margin}")
    seeds = _unique(seeds)
    if len(seeds) == 0:
        raise PlaylistError("no seed tracks given")
    if seeds.min() < 0 or seeds.max() >= len(X):
        raise PlaylistError(f"seed rows out of range 0..{len(X) - 1}: {seeds.tolist()}")
    projection = projection or fit_projection(X, dim)
    if mode == "journey":
        return _journey(X, seeds, length, projection, index)
    start = int(seeds[0]) if start is None else int(start)
    keep = _unique([*seeds, start, *([end] if end is not None else [])])
    if length < len(keep):
        raise PlaylistError(f"length {length} is shorter than the {len(keep)} seed/start/end tracks it must hold")

    if mode == "lp":
        distance = lp_outside_distance(X, seeds, margin, progress)
        region, limit = "lp", margin
    else:
        region, distance = outside_distance(projection.transform(X), projection.transform(X[seeds]))
        limit = margin
        if region != "hull" and margin == 0:  # no solid hull: grow the ball/capsule until it holds `length`
            limit = float(np.sort(distance)[min(length, len(X)) - 1])
    candidates = np.union1d(np.flatnonzero(distance <= limit + INSIDE_TOL), keep)
    message = f"{mode} mode: {region} region (limit {limit:.4g}) holds {len(candidates)} tracks"
    if region not in ("hull", "lp"):
        rank = _rank_basis(projection.transform(X[seeds]))[1].shape[1]
        message += (f"; {len(seeds)} seed(s) span only {rank} of the {projection.dim} projected dimensions, "
                    f"so a {region} around them is used")
    if len(candidates) < length:
        message += f"; fewer than the {length} asked for (a larger margin, or a smaller dim, admits more)"
    log.info(message)
    chosen = farthest_point_sampling(X, candidates, length, keep)
    order = order_tracks(X, chosen, start=start, end=end)
    return Playlist(order=order, seeds=seeds, mode=mode, region=region, limit=float(limit),
                    candidates=candidates, projection=projection, message=message)


def _journey(X: np.ndarray, seeds: np.ndarray, length: int, projection: Projection,
             index: Index | None = None) -> Playlist:
    if len(seeds) != 2:
        raise PlaylistError(f"journey mode needs exactly two seeds (from A to B), got {len(seeds)}")
    if length < 2:
        raise PlaylistError("a journey needs length >= 2 (A and B)")
    a, b = (int(s) for s in seeds)
    t = np.linspace(0.0, 1.0, length)[1:-1]
    waypoints = X[a] + t[:, None] * (X[b] - X[a])  # (length - 2, d)
    pool = nearest_pool(X, waypoints, length, index)  # fewer than `length` tracks are ever used
    P = X[pool] if len(pool) < len(X) else X
    sq = (P ** 2).sum(axis=1)
    used = np.isin(pool, [a, b])
    order = [a]
    for p in waypoints:
        dist = np.where(used, np.inf, sq - 2 * P @ p)  # |x - p|^2 - |p|^2
        if not np.isfinite(dist).any():
            break
        nxt = int(np.argmin(dist))
        order.append(int(pool[nxt]))
        used[nxt] = True
    order.append(b)
    order = np.asarray(order, dtype=np.int64)
    message = f"journey mode: {len(order)} tracks along the segment from A to B"
    log.info(message)
    return Playlist(order=order, seeds=seeds, mode="journey", region="segment", limit=0.0, candidates=order,
                    projection=projection, message=message)


# --------------------------------------------------------------------------------------------------
# Seeds


def resolve_ids(ids: Sequence[str], wanted: Sequence[str], what: str = "seed ids") -> np.ndarray:
    """Row indices of the ``wanted`` ids; unknown ids raise one error that names all of them (as ``what``)."""
    where = {str(v): i for i, v in enumerate(ids)}
    unknown = [str(w) for w in wanted if str(w) not in where]
    if unknown:
        shown = ", ".join(map(repr, unknown[:10])) + (f", ... ({len(unknown)} in all)" if len(unknown) > 10 else "")
        examples = ", ".join(map(str, list(ids)[:3]))
        raise PlaylistError(f"unknown {what}: {shown} (the table has {len(ids)} ids, e.g. {examples})")
    return np.asarray([where[str(w)] for w in wanted], dtype=np.int64)


def auto_seeds(n_tracks: int, n: int, labels: Sequence | None = None, seed: int = 0) -> np.ndarray:
    """``n`` seed rows of one label, label and rows drawn with ``seed``; any ``n`` rows when there are no labels.

    Used where no seeds are given (the notebook's default), so it works on any corpus.
    """
    if not 1 <= n <= n_tracks:
        raise PlaylistError(f"{n} seeds asked for, but there are {n_tracks} tracks")
    rng = np.random.default_rng(seed)
    if labels is None or all(v is None for v in labels):
        return np.sort(rng.choice(n_tracks, size=n, replace=False))
    labels = np.asarray([v if v is not None else "" for v in labels], dtype=object)
    names, counts = np.unique(labels[labels != ""], return_counts=True)
    fitting = names[counts >= n] if (counts >= n).any() else names[counts == counts.max()]
    label = fitting[rng.integers(len(fitting))]
    rows = np.flatnonzero(labels == label)
    return np.sort(rng.choice(rows, size=min(n, len(rows)), replace=False))


# --------------------------------------------------------------------------------------------------
# Metrics and baselines


def _volume(points: np.ndarray) -> float:
    """Volume of the convex hull of ``points`` (n, dim); 0 when they do not span dim dimensions."""
    if points.shape[1] == 1:
        return float(np.ptp(points)) if len(points) else 0.0
    if len(points) <= points.shape[1] or _rank_basis(points)[1].shape[1] < points.shape[1]:
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


def nearest_pool(X: np.ndarray, queries: np.ndarray, k: int, index: Index | None = None) -> np.ndarray:
    """The rows among which the queries' nearest tracks are then searched exactly: every row of X, or, with
    an approximate ``index`` of X's unit rows (`cml.search.index`; there cosine similarity ranks like Euclidean
    distance), each query's k most similar rows by the index. With every row, callers use X itself: no copy."""
    if index is None or index.exact:
        return np.arange(len(X))
    found = index.search(queries, k)[0]
    return np.unique(found[found >= 0])


def knn_baseline(X: np.ndarray, seeds: Sequence[int], length: int, index: Index | None = None) -> np.ndarray:
    """The seeds plus the tracks nearest to the seeds' centroid, ``length`` in all (``index``: :func:`nearest_pool`)."""
    seeds = _unique(seeds)
    centroid = X[seeds].mean(axis=0)
    pool = nearest_pool(X, centroid[None], length, index)
    dist = np.linalg.norm((X[pool] if len(pool) < len(X) else X) - centroid, axis=1)
    dist[np.isin(pool, seeds)] = np.inf
    extra = pool[np.argsort(dist, kind="stable")[:max(0, min(length, len(pool)) - len(seeds))]]
    return np.concatenate([seeds, extra])


def cluster_baseline(X: np.ndarray, seeds: Sequence[int], length: int, n_clusters: int, seed: int = 0) -> np.ndarray:
    """The seeds plus random tracks (drawn with ``seed``) from the k-means clusters that hold a seed."""
    seeds = _unique(seeds)
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


# --------------------------------------------------------------------------------------------------
# Output


def _first(meta: pd.DataFrame, names: Sequence[str]) -> str | None:
    return next((c for c in names if c in meta.columns), None)


def playlist_frame(table: FeatureTable, X: np.ndarray, order: Sequence[int]) -> pd.DataFrame:
    """One row per track in play order: id, position, path, distance_to_previous, then label, title,
    duration and spotify_uri where the table has them."""
    order = np.asarray(order, dtype=np.int64)
    meta = table.meta.iloc[order].reset_index(drop=True)
    step = np.r_[np.nan, np.linalg.norm(np.diff(X[order], axis=0), axis=1)]
    frame = pd.DataFrame({"id": table.ids[order], "position": np.arange(1, len(order) + 1),
                          "path": meta["path"] if "path" in meta else None, "distance_to_previous": step})
    if table.labels is not None:
        frame["label"] = table.labels[order]
    title = _first(meta, TITLE_COLUMNS)
    if title:
        frame["title"] = meta[title]
        if "artists" in meta:
            frame["title"] = meta["artists"].astype(str) + " - " + meta[title].astype(str)
    duration = _first(meta, DURATION_COLUMNS)
    if duration:
        frame["duration"] = pd.to_numeric(meta[duration], errors="coerce")
    uri = _first(meta, URI_COLUMNS)
    if uri:
        frame["spotify_uri"] = meta[uri]
    return frame


def _breaks_line(c: str) -> bool:
    """A control character (\\n, \\r, NUL, ...) or a line/paragraph separator: in an M3U line it could end
    the line, and the text after it would read as another entry."""
    return unicodedata.category(c) in ("Cc", "Zl", "Zp")


def write_m3u8(frame: pd.DataFrame, path: str | Path) -> Path:
    """Extended M3U (UTF-8) of the local files; relative paths are rewritten relative to the playlist's folder.

    Tracks without a path are left out with a warning (they have nothing to play). One entry per track
    whatever the names hold: control characters in a title become spaces; a path with one is written as a
    percent-encoded ``file://`` URI (which players resolve), and one starting with ``#`` as ``./#...`` (not a comment).
    """
    path = Path(path)
    lines = ["#EXTM3U"]
    missing = []
    for row in frame.itertuples(index=False):
        track = getattr(row, "path", None)
        if not isinstance(track, str) or not track:
            missing.append(str(row.id))
            continue
        seconds = getattr(row, "duration", None)
        seconds = int(round(seconds)) if seconds is not None and np.isfinite(seconds) else -1
        title = getattr(row, "title", None)
        title = title if isinstance(title, str) and title else str(row.id)
        title = "".join(" " if _breaks_line(c) else c for c in title)
        if any(map(_breaks_line, track)):  # no plain line can hold it (and a NUL cannot even be resolved)
            location = Path(os.path.abspath(track)).as_uri()
        else:
            location = track if os.path.isabs(track) else os.path.relpath(Path(track).resolve(), path.parent.resolve())
            location = f"./{location}" if location.startswith("#") else location
        lines += [f"#EXTINF:{seconds},{title}", location]
    if missing:
        log.warning("%s: %d track(s) without a path left out: %s", path, len(missing), ", ".join(missing[:10]))
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def playlist_format(path: str | Path) -> str:
    """The format of a playlist file, by its suffix (checked before the playlist is built)."""
    suffix = Path(path).suffix.lower()
    if suffix not in FORMATS:
        raise PlaylistError(f"unknown playlist format {suffix!r} for {path}; use .m3u8 or .csv")
    return suffix


def write_playlist(frame: pd.DataFrame, path: str | Path) -> Path:
    """Write the playlist as M3U8 (``.m3u8``/``.m3u``) or CSV (``.csv``), by the file's suffix."""
    path = Path(path)
    if playlist_format(path) != ".csv":
        return write_m3u8(frame, path)
    path.parent.mkdir(parents=True, exist_ok=True)
    frame.to_csv(path, index=False, float_format="%.6g")
    return path


def draw_map(ax, coords: np.ndarray, playlist: Playlist, labels: Sequence | None = None, title: str = "") -> None:
    """The 2-D map: all tracks, the candidates, the seeds' hull (its shadow in the first two PCs), the path."""
    seeds2 = coords[playlist.seeds]
    groups = pd.Series(labels if labels is not None else ["track"] * len(coords), dtype=object).fillna("?")
    for name in sorted(groups.unique()):
        mask = (groups == name).to_numpy()
        ax.scatter(*coords[mask].T, s=10, alpha=0.35, label=str(name))
    if playlist.mode != "journey":
        ax.scatter(*coords[playlist.candidates].T, s=28, facecolors="none", edgecolors="0.3", linewidths=0.6,
                   label="candidates")
    if len(seeds2) >= 3 and _rank_basis(seeds2)[1].shape[1] == 2:
        ring = ConvexHull(seeds2).vertices
        ax.fill(*seeds2[ring].T, color="tab:orange", alpha=0.15, label="seeds' hull")
    elif len(seeds2) >= 2:
        ax.plot(*seeds2.T, color="tab:orange", alpha=0.5)
    path = coords[playlist.order]
    for a, b in zip(path[:-1], path[1:]):
        ax.annotate("", xy=b, xytext=a, arrowprops=dict(arrowstyle="->", color="black", lw=0.9))
    for position, (x, y) in enumerate(path, start=1):
        ax.annotate(str(position), (x, y), fontsize=7, xytext=(3, 3), textcoords="offset points")
    ax.scatter(*seeds2.T, marker="*", s=180, color="tab:red", edgecolors="black", zorder=5, label="seeds")
    ax.set_xlabel("PC1"); ax.set_ylabel("PC2"); ax.set_title(title)
    ax.legend(bbox_to_anchor=(1.02, 1), loc="upper left", fontsize="small")


# --------------------------------------------------------------------------------------------------
# CLI


def _ids(text: str | None) -> list[str]:
    return [v.strip() for v in (text or "").split(",") if v.strip()]


def _cmd_playlist(args: argparse.Namespace) -> int:
    if args.mode == "journey" and (args.start, args.end, args.margin) != (None, None, None):
        raise UsageError("--start, --end and --margin: not used by --mode journey (it runs from seed A to seed B)")
    if args.clusters is not None and not args.metrics:
        raise UsageError("--clusters sets the cluster baseline of --metrics: give --metrics too")
    for out in args.out:
        playlist_format(out)
        check_output(out)
    if args.metrics:
        check_output(args.metrics)
    seed_ids = _ids(args.seed_tracks)
    if not seed_ids:
        raise UsageError("--seed-tracks is empty: give one or more ids separated by commas")
    table = read_cli_table(args, l2=args.scale == "l2")
    for option, value in (("--length", args.length), ("--clusters", args.clusters)):
        check_at_most(value, option, len(table), f"tracks in {args.file}")
    seeds = resolve_ids(table.ids, seed_ids, "--seed-tracks ids")
    start = resolve_ids(table.ids, [args.start], "--start id")[0] if args.start is not None else None
    end = resolve_ids(table.ids, [args.end], "--end id")[0] if args.end is not None else None
    X = prepare(table.X, args.scale)
    # The index pays for its build (0.3 s at 100k tracks) in a journey (0.76 s -> 2 ms), not in one k-NN
    # baseline (54 ms -> 0.2 ms; README "Benchmarks"); it is cosine, so it needs unit rows.
    index = Index(X) if args.mode == "journey" and args.scale == "l2" else None
    playlist = build_playlist(X, seeds, args.length, mode=args.mode, dim=args.dim, margin=args.margin or 0.0,
                              start=start, end=end, index=index)
    frame = playlist_frame(table, X, playlist.order)
    for out in args.out:
        write_playlist(frame, out)
        log.info("wrote %s", out)
    scores = playlist_metrics(X, playlist.order, playlist.seeds, table.labels, playlist.projection.transform(X))
    if args.metrics:
        metrics = playlist_scores(X, playlist, table.labels, n_clusters=args.clusters, seed=args.seed, index=index)
        Path(args.metrics).write_text(json.dumps(metrics, indent=2, sort_keys=True) + "\n")
    print(json.dumps({"region": playlist.region, "n_candidates": len(playlist.candidates), **scores}, indent=2))
    return 0


def register_cli(subparsers) -> None:
    """``cml playlist FILE --seed-tracks ID,ID,... --length N --out FILE.{m3u8,csv} [--mode hull|lp|journey]``."""
    p = subparsers.add_parser("playlist", description=__doc__.split("\n\n")[0])
    add_table_arguments(p)
    p.add_argument("--seed-tracks", required=True, help="ids of the seed tracks, separated by commas (journey: A,B)")
    p.add_argument("--length", type=count, required=True, help="tracks in the playlist")
    p.add_argument("--out", action="append", required=True,
                   help="playlist file, .m3u8 or .csv (repeat --out for both)")
    p.add_argument("--mode", choices=MODES, default="hull")
    p.add_argument("--dim", type=count, default=3, help="PCA dimension of the hull (hull mode; default 3)")
    p.add_argument("--margin", type=non_negative,
                   help="hull: push the facets out by this distance; lp: tolerance (L-infinity); default 0")
    p.add_argument("--scale", choices=SCALES, default="l2",
                   help="l2: unit rows (embeddings, default); standard: z-scored columns (raw features)")
    p.add_argument("--start", help="id of the first track (default: the first seed)")
    p.add_argument("--end", help="id of the last track (default: free)")
    p.add_argument("--seed", type=non_negative_int, default=0, help="seed of the baselines' k-means and random draw")
    p.add_argument("--clusters", type=count, help="k of the cluster baseline (default: number of labels, or 8)")
    p.add_argument("--metrics", help="write metrics of the playlist and the baselines to this JSON file")
    p.set_defaults(func=_cmd_playlist)
