"""Playlists from convex hulls of the embedding space.

Given a few seed tracks, take the region of the embedding space they span, fill it with tracks and order
them so that neighbouring songs are close.

**Geometry.** Embeddings are first prepared by :func:`prepare`: ``l2`` (default) puts every row on the unit
sphere, so Euclidean distance ranks like cosine distance (what the contrastive encoder is trained with);
``standard`` z-scores each column (for raw features in different units, e.g. a Spotify export). Selection
(farthest-point sampling), ordering and the metrics all use this prepared full-dimensional space; only the
hull test uses a projection.

**Projection dimension** (``dim``, PCA): the trade-off. Low ``dim`` (2-3) keeps the directions along which
the corpus varies most (on the default corpus, most of the variance of the L2-normalised embeddings); the hull is then a solid region that holds tracks, needs only ``dim + 1`` seeds in general
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

One module, over 400 lines: one algorithm (region, selection, order) with its degenerate cases; its scores,
files and map live beside it in cml.playlist.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Sequence

import numpy as np
from scipy import sparse
from scipy.optimize import linprog
from scipy.spatial import ConvexHull, QhullError
from scipy.spatial.distance import cdist

from cml.errors import CmlError, UsageError
from cml.progress import tqdm
from cml.search.index import Index
from cml.search.neighbours import l2_normalise
from cml.tables import standardise

log = logging.getLogger(__name__)

MODES = ("hull", "lp", "journey")
SCALES = ("l2", "standard", "none")
RANK_TOL = 1e-8  # singular values below this share of the largest count as a degenerate direction
INSIDE_TOL = 1e-9  # slack for points on the boundary (seeds are vertices of their own hull)
LP_BATCH = 128  # candidates per block-diagonal LP

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


def rank_basis(S: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
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
    centre, basis = rank_basis(S)
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


def unique_indices(values: Sequence[int]) -> np.ndarray:
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
    seeds = unique_indices(seeds)
    if len(seeds) == 0:
        raise PlaylistError("no seed tracks given")
    if seeds.min() < 0 or seeds.max() >= len(X):
        raise PlaylistError(f"seed rows out of range 0..{len(X) - 1}: {seeds.tolist()}")
    projection = projection or fit_projection(X, dim)
    if mode == "journey":
        return _journey(X, seeds, length, projection, index)
    start = int(seeds[0]) if start is None else int(start)
    keep = unique_indices([*seeds, start, *([end] if end is not None else [])])
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
        rank = rank_basis(projection.transform(X[seeds]))[1].shape[1]
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

def nearest_pool(X: np.ndarray, queries: np.ndarray, k: int, index: Index | None = None) -> np.ndarray:
    """The rows among which the queries' nearest tracks are then searched exactly: every row of X, or, with
    an approximate ``index`` of X's unit rows (`cml.search.index`; there cosine similarity ranks like Euclidean
    distance), each query's k most similar rows by the index. With every row, callers use X itself: no copy."""
    if index is None or index.exact:
        return np.arange(len(X))
    found = index.search(queries, k)[0]
    return np.unique(found[found >= 0])
