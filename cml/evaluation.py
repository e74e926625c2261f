"""How well a feature space separates labels: the k-NN and clustering scores used across the project."""
from __future__ import annotations

import numpy as np
from sklearn.neighbors import KNeighborsClassifier


def knn_accuracy(
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
    k = max(1, min(k, len(X_train)))
    clf = KNeighborsClassifier(n_neighbors=k, metric=metric, algorithm="brute")
    clf.fit(X_train, y_train)
    return float(np.mean(clf.predict(X_test) == np.asarray(y_test)))


def lead_program(programs: str) -> str:
    """The General MIDI program of a rendered piece's first part: a proxy for its dominant timbre."""
    return str(programs).split(";")[0]


def majority_rate(y: np.ndarray) -> float:
    """Accuracy of always guessing the most frequent value: the chance level to compare against."""
    if len(y) == 0:
        return float("nan")
    _, counts = np.unique(np.asarray(y), return_counts=True)
    return float(counts.max() / counts.sum())


def style_timbre_probe(
    X: np.ndarray, labels: np.ndarray, timbres: np.ndarray | None, split: np.ndarray, k: int = 5
) -> dict[str, float]:
    """k-NN accuracy of a feature space at predicting style (label) and timbre (lead instrument).

    Trained on the train split, scored on the test split. A space that scores far above chance on timbre
    but near chance on style clusters by instrumentation: the trap a contrastive model must avoid.
    """
    train, test = split == "train", split == "test"
    result = {
        "knn_label_acc": knn_accuracy(X[train], labels[train], X[test], labels[test], k),
        "label_chance": majority_rate(labels[test]),
    }
    if timbres is not None:
        result["knn_timbre_acc"] = knn_accuracy(X[train], timbres[train], X[test], timbres[test], k)
        result["timbre_chance"] = majority_rate(timbres[test])
    return result
