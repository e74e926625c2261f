"""Nearest neighbours in a feature space: unit rows, the cosine k-NN vote, and its leave-group-out variant.

Light on purpose (numpy and scikit-learn's k-NN only): training scores its validation k-NN with it, and
evaluation, clustering and playlists normalise rows with it, without importing one another. `cml.search.index`
builds on it for libraries too large for exact search, and runs `cml neighbours`.
"""
from __future__ import annotations

import math
from typing import Optional

import numpy as np
import pandas as pd
from sklearn.neighbors import KNeighborsClassifier


def l2_normalise(X: np.ndarray) -> np.ndarray:
    """Rows scaled to unit length; all-zero rows stay zero (they have no direction; see `check_directions`)."""
    norms = np.linalg.norm(X, axis=1, keepdims=True)
    return X / np.where(norms > 0, norms, 1.0)


def exact_knn_accuracy(
    X_train: np.ndarray,
    y_train: np.ndarray,
    X_test: np.ndarray,
    y_test: np.ndarray,
    k: int = 5,
    metric: str = "cosine",
) -> float:
    """Accuracy of a k-nearest-neighbour vote (cosine by default), trained on one split, tested on another.

    k is reduced to the training-set size when the training set is smaller, so tiny runs still score.
    """
    if len(X_train) == 0 or len(X_test) == 0:
        return float("nan")
    return float(np.mean(fit_knn(X_train, y_train, k, metric).predict(X_test) == np.asarray(y_test)))


def fit_knn(X_train: np.ndarray, y_train: np.ndarray, k: int = 5, metric: str = "cosine") -> KNeighborsClassifier:
    """The k-NN vote of `exact_knn_accuracy`, fitted, to score several test sets against one reference."""
    clf = KNeighborsClassifier(n_neighbors=max(1, min(k, len(X_train))), metric=metric, algorithm="brute")
    return clf.fit(X_train, y_train)


def exact_leave_group_out_knn_accuracy(X: np.ndarray, y: np.ndarray, queries: np.ndarray,
                                 groups: Optional[np.ndarray] = None, k: int = 5, block: int = 1024) -> float:
    """Cosine k-NN accuracy of the `queries` rows, each voted on by its k nearest rows outside its own group.

    A lower-variance companion of `exact_knn_accuracy` for small test splits: every held-out track (val + test),
    each against every other track, is scored, not only the test split's, so one track moves the accuracy
    less. Groups keep what must not vote for itself out of the vote: the other
    rendering of the same piece shares its notes and would make the task trivial. No group: plain
    leave-one-out. Votes tie towards the first class in sorted order, as scikit-learn's do.
    """
    X = l2_normalise(np.asarray(X, dtype=np.float64))
    classes, y_idx = np.unique(np.asarray(y).astype(str), return_inverse=True)
    group_idx = np.arange(len(X)) if groups is None else pd.factorize(pd.Series(groups, dtype=object))[0]
    rows = np.flatnonzero(np.asarray(queries, dtype=bool))
    if len(rows) == 0:
        return float("nan")
    correct = 0
    for chunk in np.array_split(rows, math.ceil(len(rows) / block)):
        sim = X[chunk] @ X.T  # (c, n) cosine similarity
        sim[group_idx[chunk][:, None] == group_idx[None, :]] = -np.inf  # the query's own group never votes
        nearest = np.argsort(-sim, axis=1, kind="stable")[:, :k]  # (c, k)
        valid = np.isfinite(np.take_along_axis(sim, nearest, axis=1))
        correct += int(np.sum(majority_vote(y_idx[nearest], valid, len(classes)) == y_idx[chunk]))
    return correct / len(rows)


def majority_vote(labels: np.ndarray, valid: np.ndarray, n_classes: int) -> np.ndarray:
    """The class (0..n_classes-1) most of each row's valid neighbours have; ties go to the first class.

    ``labels`` and ``valid`` are (q, k): the class of each neighbour and whether it votes.
    """
    votes = np.zeros((len(labels), n_classes))
    np.add.at(votes, (np.repeat(np.arange(len(labels)), labels.shape[1]), labels.ravel()), valid.ravel())
    return votes.argmax(axis=1)


def nearest(X: np.ndarray, queries: np.ndarray, k: int, block: int = 4096) -> tuple[np.ndarray, np.ndarray]:
    """The k rows of X most cosine-similar to each query, best first: (indices, similarities), both (q, k).

    Exact, a block of queries at a time, so memory stays block x n whatever the library's size.
    """
    U, Q = l2_normalise(np.asarray(X, np.float64)), l2_normalise(np.asarray(queries, np.float64))
    k = min(k, len(U))
    idx, sim = np.empty((len(Q), k), np.int64), np.empty((len(Q), k))
    for lo in range(0, len(Q), block):
        S = Q[lo:lo + block] @ U.T
        top = np.argpartition(-S, k - 1, axis=1)[:, :k] if k < len(U) else np.tile(np.arange(len(U)), (len(S), 1))
        order = np.argsort(-np.take_along_axis(S, top, axis=1), axis=1, kind="stable")
        idx[lo:lo + block] = np.take_along_axis(top, order, axis=1)
        sim[lo:lo + block] = np.take_along_axis(S, idx[lo:lo + block], axis=1)
    return idx, sim
