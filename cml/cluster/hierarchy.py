"""Single linkage and HDBSCAN* of a whole library: a minimum spanning tree, exact or over a k-NN graph.

Both are a minimum spanning tree (MST): of Euclidean distances (single linkage), or of mutual-reachability
distances ``max(core(a), core(b), |a - b|)`` with ``core`` the distance to the ``min_pts``-th nearest row
counting the row itself (HDBSCAN*, Campello et al. 2013). The dendrogram is the MST's edges merged in order
of length; HDBSCAN*'s flat clusters are scikit-learn's own condensed-tree selection (excess of mass) run on
that dendrogram, so they are the reference's by construction.

Why our own MST: exact single linkage is n^2 d / 2 multiply-adds, which BLAS does in a fraction of a second
at 20,000 x 128. No maintained library reaches that in 128 dimensions: fastcluster, scipy and scikit-learn
compute distances one pair at a time; scikit-learn's HDBSCAN and fast_hdbscan prune with k-d or ball trees,
which prune little in 128 dimensions (`benchmarks/bench_hierarchy.py` compares them). The
hdbscan package's Boruvka over a k-d tree came closest (2x), on ten far-apart blobs, its best case.

Exact (:func:`exact_mst`), Boruvka's algorithm with certified candidate lists: every row keeps the k rows
with the smallest distance among those outside its component when the list was made, and a bound that
every row not in the list reaches. A component's shortest outgoing edge is known once its best listed
edge is no longer than every member's bound; only members whose bound is below that edge are scanned
again, against all rows, in BLAS tiles (float32 products; each row's list is merged tile by tile in a
compiled kernel, O(n k) memory). The first scan is a k-NN pass; as components grow, members deep inside
them keep their bound and are never scanned again, so the work stays a few passes over the distance
matrix instead of one per Boruvka round. Edge lengths are recomputed in float64 from the rows. Edges whose
float32 lengths differ by less than float32 rounding (about 1e-6 of the squared length) count as ties:
any of them may be chosen, as with any tie (every MST of the same graph has the same sorted edge lengths,
so the merge heights are identical; flat clusters can differ only at tied heights). HDBSCAN*'s mutual
reachability ties by construction (a row reaches every neighbour inside its core distance at exactly that
distance): there the flat clusters depend on the order of tied merges, in scikit-learn's too, whose result
changes with the order of the rows.

Approximate (:func:`knn_mst`), for libraries beyond what a quadratic pass allows: the MST of the k-NN graph
that ``cml.search.index.Index`` finds (faiss IVF above its exact threshold; cosine on unit rows, so
``|a - b| = sqrt(2 - 2 cos)``), its components (if the graph falls apart) joined by an exact MST of one
representative row each. Linear in n k; its agreement with the exact tree is measured, not assumed.
"""

from __future__ import annotations

import logging
import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np
from numba import njit
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components, minimum_spanning_tree
from threadpoolctl import threadpool_limits

log = logging.getLogger(__name__)

LIST_K = 16  # rows kept per candidate list
TILE_ROWS, TILE_COLS = 512, 4096  # one BLAS tile of products (8 MiB of float32: cache-sized, 2x faster than 64)
KNN_K = 10  # neighbours per row in the approximate k-NN graph


@dataclass
class Tree:
    """A minimum spanning tree of n rows and its dendrogram."""

    edges: np.ndarray  # (n-1, 2) int64 row pairs, by increasing length
    heights: np.ndarray  # (n-1,) float64 edge lengths, increasing
    linkage: np.ndarray  # (n-1, 4) scipy-style: [a, b, height, size]
    core: np.ndarray | None = None  # HDBSCAN*'s core distances


def check_rows(X: np.ndarray, min_rows: int = 1) -> np.ndarray:
    """X as a C-contiguous float64 (n, d) array of finite values, or a one-line ValueError."""
    X = np.ascontiguousarray(X, dtype=np.float64)
    if X.ndim != 2 or X.shape[1] == 0:
        raise ValueError(f"expected a 2-D array (n rows, d features); got shape {X.shape}")
    if len(X) < min_rows:
        raise ValueError(f"{len(X)} rows: a hierarchy needs at least {min_rows}")
    bad = np.flatnonzero(~np.isfinite(X).all(axis=1))
    if len(bad):
        raise ValueError(f"NaN or inf values in {len(bad)} rows (first: {bad[:10].tolist()})")
    return X


# --------------------------------------------------------------------------------------------------
# Compiled kernels


@njit(nogil=True, cache=True)
def _merge_tile(G, sq_rows, sq_cols, col0, comp_rows, comp_cols, core_rows, core_cols, idx, val):
    """Merge one tile of products G = rows . cols^T into each row's sorted list of its k smallest squared
    (mutual-reachability) distances to columns of another component."""
    r, c = G.shape
    k = idx.shape[1]
    for i in range(r):
        worst = val[i, k - 1]
        for j in range(c):
            d = sq_rows[i] + sq_cols[j] - 2.0 * G[i, j]
            d = max(d, core_rows[i], core_cols[j], 0.0)
            if d < worst and comp_cols[j] != comp_rows[i]:
                p = k - 1
                while p > 0 and val[i, p - 1] > d:
                    val[i, p] = val[i, p - 1]
                    idx[i, p] = idx[i, p - 1]
                    p -= 1
                val[i, p] = d
                idx[i, p] = col0 + j
                worst = val[i, k - 1]


@njit(cache=True)
def _find(parent, a):
    while parent[a] != a:
        parent[a] = parent[parent[a]]
        a = parent[a]
    return a


@njit(cache=True)
def _accept(parent, a, b):
    """Union-find over edges in order: which of them join two trees (the others would close a cycle)."""
    keep = np.zeros(len(a), dtype=np.bool_)
    for e in range(len(a)):
        ra, rb = _find(parent, a[e]), _find(parent, b[e])
        if ra != rb:
            parent[max(ra, rb)] = min(ra, rb)
            keep[e] = True
    return keep


@njit(cache=True)
def _linkage(a, b, heights, n):
    """scipy's linkage matrix from MST edges sorted by length (cluster ids n, n+1, ... in merge order)."""
    parent = np.arange(n)
    node = np.arange(n)  # dendrogram node of each union-find root
    size = np.ones(n, dtype=np.int64)
    Z = np.empty((n - 1, 4))
    for e in range(n - 1):
        ra, rb = _find(parent, a[e]), _find(parent, b[e])
        x, y = node[ra], node[rb]
        Z[e, 0], Z[e, 1], Z[e, 2], Z[e, 3] = min(x, y), max(x, y), heights[e], size[ra] + size[rb]
        parent[rb] = ra
        size[ra] += size[rb]
        node[ra] = n + e
    return Z


# --------------------------------------------------------------------------------------------------
# Exact


def _scan(X32, sq, rows, comp, core2, k):
    """For each row in ``rows``: its k smallest squared distances to rows of other components, and indices.

    Row blocks go to one thread per core, each with a one-thread BLAS: a multi-threaded BLAS between
    compiled kernels spins its threads against them (5-10x slower here)."""
    n = len(X32)
    idx = np.full((len(rows), k), -1, dtype=np.int64)
    val = np.full((len(rows), k), np.inf, dtype=np.float64)

    def block(r0):
        r = rows[r0:r0 + TILE_ROWS]
        Q, out_idx, out_val = X32[r], idx[r0:r0 + TILE_ROWS], val[r0:r0 + TILE_ROWS]
        for c0 in range(0, n, TILE_COLS):
            c = slice(c0, c0 + TILE_COLS)
            _merge_tile(Q @ X32[c].T, sq[r], sq[c], c0, comp[r], comp[c], core2[r], core2[c], out_idx, out_val)

    with threadpool_limits(1, user_api="blas"), ThreadPoolExecutor(len(os.sched_getaffinity(0))) as pool:
        list(pool.map(block, range(0, len(rows), TILE_ROWS)))
    return idx, val


def _best_per_component(comp, value, ncomp):
    """Per component: the member with the smallest value (index, value); -1 / inf where none is finite."""
    order = np.lexsort((value, comp))
    first = np.ones(len(order), dtype=bool)
    first[1:] = comp[order][1:] != comp[order][:-1]
    member = np.full(ncomp, -1, dtype=np.int64)
    best = np.full(ncomp, np.inf)
    heads = order[first]
    member[comp[heads]], best[comp[heads]] = heads, value[heads]
    return member, best


def exact_mst(X: np.ndarray, min_pts: int = 1, k: int = LIST_K) -> Tree:
    """The exact MST of the rows of X (see the module docstring): Euclidean for ``min_pts=1`` (single
    linkage), mutual reachability with core distances at ``min_pts`` rows (HDBSCAN*) above."""
    X = check_rows(X)
    n = len(X)
    if not 1 <= min_pts <= n:
        raise ValueError(f"min_pts={min_pts} must be from 1 to the {n} rows")
    if n == 1:
        return Tree(np.empty((0, 2), np.int64), np.empty(0), np.empty((0, 4)), np.zeros(1) if min_pts > 1 else None)
    X32 = X.astype(np.float32)
    sq = np.einsum("ij,ij->i", X32, X32, dtype=np.float64)
    comp, k = np.arange(n), max(min(k, n - 1), min_pts - 1)
    idx, val = _scan(X32, sq, np.arange(n), comp, np.zeros(n), k)
    core2, core = np.zeros(n), None
    bound = val[:, -1].copy()  # every row outside the list is at least this far
    if min_pts > 1:  # the (min_pts - 1)-th other row, in float64: the row itself is the first
        core = np.sort(_list_distances(X, idx), axis=1)[:, min_pts - 2]
        core2 = core**2
        bound = np.maximum(bound, core2)  # not the listed rows' largest reachability: a row's core may raise it
        val = np.maximum(val, np.maximum(core2[:, None], np.where(idx >= 0, core2[idx], 0.0)))
        order = np.argsort(val, axis=1, kind="stable")
        idx, val = np.take_along_axis(idx, order, 1), np.take_along_axis(val, order, 1)
    parent = np.arange(n)
    edges, scanned = [], n
    while True:
        comp = np.unique(_roots(parent), return_inverse=True)[1]
        ncomp = comp.max() + 1
        if ncomp == 1:
            break
        outside = (idx >= 0) & (comp[np.maximum(idx, 0)] != comp[:, None])
        listed = np.where(outside, val, np.inf)
        pick = np.argmin(listed, axis=1)
        best_listed = listed[np.arange(n), pick]
        exact = best_listed <= bound
        member, best = _best_per_component(comp, np.where(exact, best_listed, np.inf), ncomp)
        lowest = np.full(ncomp, np.inf)
        np.minimum.at(lowest, comp[~exact], bound[~exact])
        certified = (best <= lowest) & (member >= 0)
        rescan = np.flatnonzero(~exact & ~certified[comp] & (bound < best[comp]))
        if certified.any():
            a = member[certified]
            b = idx[a, pick[a]]
            order = np.lexsort((np.maximum(a, b), np.minimum(a, b), best[certified]))
            keep = _accept(parent, a[order], b[order])
            edges.append(np.stack([a[order][keep], b[order][keep]], axis=1))
            comp = np.unique(_roots(parent), return_inverse=True)[1]
        if len(rescan):
            idx[rescan], val[rescan] = _scan(X32, sq, rescan, comp, core2, k)
            bound[rescan] = val[rescan, -1]
            scanned += len(rescan)
    log.info("exact MST of %d rows: %.1f row scans per row", n, scanned / n)
    return _tree(X, np.concatenate(edges), core)


@njit(cache=True)
def _roots(parent):
    out = np.empty(len(parent), dtype=np.int64)
    for i in range(len(parent)):
        out[i] = _find(parent, i)
    return out


def _tree(X: np.ndarray, edges: np.ndarray, core: np.ndarray | None) -> Tree:
    """Edges with float64 lengths (mutual reachability where there are core distances), sorted, and the
    dendrogram."""
    if len(edges) != len(X) - 1:
        raise RuntimeError(f"a spanning tree of {len(X)} rows has {len(X) - 1} edges, not {len(edges)}")
    a, b = edges[:, 0], edges[:, 1]
    heights = np.linalg.norm(X[a] - X[b], axis=1)
    if core is not None:
        heights = np.maximum(heights, np.maximum(core[a], core[b]))
    order = np.lexsort((np.maximum(a, b), np.minimum(a, b), heights))
    edges, heights = edges[order], heights[order]
    return Tree(edges, heights, _linkage(edges[:, 0], edges[:, 1], heights, len(X)), core)


def _list_distances(X: np.ndarray, idx: np.ndarray) -> np.ndarray:
    """Float64 distances from every row to the rows of its list, in chunks of rows."""
    out = np.empty(idx.shape)
    step = max(1, TILE_ROWS * TILE_COLS // (idx.shape[1] * X.shape[1]))
    for r0 in range(0, len(X), step):
        out[r0:r0 + step] = np.linalg.norm(X[r0:r0 + step, None, :] - X[idx[r0:r0 + step]], axis=2)
    return out


# --------------------------------------------------------------------------------------------------
# Flat clusters


@njit(cache=True)
def _cut(Z, n, merges):
    """Labels after the first ``merges`` merges of linkage matrix Z, numbered by their first row."""
    parent = np.arange(n)
    rep = np.empty(n + len(Z), dtype=np.int64)  # a leaf of every dendrogram node
    rep[:n] = np.arange(n)
    for e in range(len(Z)):
        a, b = rep[int(Z[e, 0])], rep[int(Z[e, 1])]
        rep[n + e] = a
        if e < merges:
            ra, rb = _find(parent, a), _find(parent, b)
            parent[max(ra, rb)] = min(ra, rb)
    labels = np.full(n, -1, dtype=np.int64)
    number = np.full(n, -1, dtype=np.int64)
    count = 0
    for i in range(n):
        r = _find(parent, i)
        if number[r] < 0:
            number[r] = count
            count += 1
        labels[i] = number[r]
    return labels


def cut(linkage: np.ndarray, k: int | None = None, height: float | None = None) -> np.ndarray:
    """Flat clusters of any scipy-style dendrogram (this module's, ELKI's, scipy's): exactly ``k`` clusters
    (the last k-1 merges undone; at tied heights the earlier merge in the matrix counts as lower), or the
    clusters joined at heights up to ``height``. Numbered by their first row."""
    linkage = np.asarray(linkage, dtype=np.float64)
    n = len(linkage) + 1
    if (k is None) == (height is None):
        raise ValueError("give exactly one of k (number of clusters) or height")
    if k is not None:
        if not 1 <= k <= n:
            raise ValueError(f"k={k} clusters asked for, but there are only {n} points")
        merges = n - k
    else:
        if not (np.isfinite(height) and height >= 0):
            raise ValueError(f"height={height!r} must be a finite number >= 0")
        merges = int(np.searchsorted(linkage[:, 2], height, side="right")) if n > 1 else 0
        if n > 1 and np.any(np.diff(linkage[:, 2]) < 0):
            raise ValueError("a height cut needs monotone merge heights")
    return _cut(linkage.reshape(-1, 4), n, merges)


def hdbscan_labels(tree: Tree, min_cluster_size: int = 5) -> np.ndarray:
    """HDBSCAN*'s flat clusters (noise -1) from the mutual-reachability tree: scikit-learn's own condensed tree
    and excess-of-mass selection (``sklearn.cluster._hdbscan``, private: the reference's code, not a copy), with
    its defaults (no single cluster, no epsilon, no size cap)."""
    from sklearn.cluster._hdbscan._linkage import MST_edge_dtype, make_single_linkage
    from sklearn.cluster._hdbscan._tree import tree_to_labels

    if min_cluster_size < 2:
        raise ValueError(f"min_cluster_size={min_cluster_size!r} must be >= 2 (a cluster of one row is noise)")
    n = len(tree.edges) + 1
    if n < 2:
        return np.full(n, -1, dtype=np.int64)
    mst = np.rec.fromarrays([tree.edges[:, 0], tree.edges[:, 1], tree.heights], dtype=MST_edge_dtype)
    labels, _ = tree_to_labels(make_single_linkage(mst), min_cluster_size)
    return labels.astype(np.int64)


# --------------------------------------------------------------------------------------------------
# Approximate


def knn_mst(X: np.ndarray, min_pts: int = 1, k: int = KNN_K, seed: int = 0) -> Tree:
    """The MST of the k-NN graph of the unit rows of X that `cml.search.index.Index` finds (module docstring):
    Euclidean, or mutual reachability with core distances from the same neighbours for ``min_pts > 1``."""
    from cml.search.index import Index  # faiss is imported by the index only when it is built

    X = check_rows(X)
    n = len(X)
    norms = np.linalg.norm(X, axis=1)
    if not np.allclose(norms, 1.0, atol=1e-6):
        raise ValueError("the approximate hierarchy searches cosine neighbours: it needs L2-normalised rows "
                         "(the default; not --no-normalise)")
    if not 1 <= min_pts <= n:
        raise ValueError(f"min_pts={min_pts} must be from 1 to the {n} rows")
    if n == 1:
        return exact_mst(X, min_pts)
    k = min(max(k, min_pts - 1), n - 1)
    idx, sim = Index(X, seed=seed).search(X, k, exclude=np.arange(n))
    found = idx >= 0
    rows = np.repeat(np.arange(n), k)[found.ravel()]
    cols = idx[found]
    dist = np.sqrt(np.maximum(2.0 - 2.0 * sim[found], 0.0))
    core = None
    if min_pts > 1:
        core = np.where(found, np.sqrt(np.maximum(2.0 - 2.0 * sim, 0.0)), np.inf)[:, min_pts - 2]
        dist = np.maximum(dist, np.maximum(core[rows], core[cols]))
    graph = coo_matrix((dist + 1e-300, (rows, cols)), shape=(n, n)).tocsr()  # + tiny: a zero is no edge
    forest = minimum_spanning_tree(graph).tocoo()
    edges = np.stack([forest.row, forest.col], axis=1).astype(np.int64)
    parts, comp = connected_components(forest, directed=False)
    if parts > 1:  # join the pieces by an exact tree over one row of each
        heads = np.unique(comp, return_index=True)[1]
        joins = exact_mst(X[heads], min_pts=1).edges
        edges = np.concatenate([edges, heads[joins]])
        log.info("k-NN graph of %d rows falls into %d parts, joined by %d edges", n, parts, len(joins))
    return _tree(X, edges, core)
