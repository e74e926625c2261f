"""Probes of a feature space: k-NN and linear-probe accuracy, and style against timbre (the DataAnalysis
notebook's question: does a space group by style or by instrument?)."""
from __future__ import annotations

import logging
import warnings

import numpy as np
from sklearn.exceptions import ConvergenceWarning
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import FunctionTransformer, StandardScaler

from cml.search.index import knn_accuracy
from cml.search.neighbours import l2_normalise

log = logging.getLogger(__name__)

LINEAR_MAX_ITER = 5000  # lbfgs iterations of the linear probe; enough for 128-d standardised features


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


def l2_rows(X: np.ndarray) -> np.ndarray:
    return l2_normalise(np.asarray(X, dtype=np.float64))


def linear_probe_accuracy(X_train: np.ndarray, y_train: np.ndarray, X_test: np.ndarray, y_test: np.ndarray,
                          seed: int = 0) -> float:
    """Test accuracy of a logistic regression fitted on the train split.

    Rows are L2-normalised (the cosine geometry the k-NN and clustering use) and then standardised
    with train-split statistics, so no feature dominates by scale; L2 penalty C=1, lbfgs, seeded.
    """
    if len(X_train) == 0 or len(X_test) == 0:
        return float("nan")
    return float(np.mean(fit_linear_probe(X_train, y_train, seed).predict(X_test) == np.asarray(y_test)))


def fit_linear_probe(X_train: np.ndarray, y_train: np.ndarray, seed: int = 0):
    """The probe of `linear_probe_accuracy` (L2 rows, train-split scaling, logistic regression), fitted."""
    probe = make_pipeline(FunctionTransformer(l2_rows), StandardScaler(),
                          LogisticRegression(max_iter=LINEAR_MAX_ITER, random_state=seed))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)  # separable data never "converges"; accuracy is fine
        return probe.fit(X_train, np.asarray(y_train))
