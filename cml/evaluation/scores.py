"""How well a feature space separates labels: the k-NN, linear-probe and clustering scores of the project.

`evaluate_embeddings` gives the headline metrics for any feature table (`cml.tables` format: learned
embeddings, the handcrafted baseline, a Spotify CSV): trained on the train split, scored on the held-out test
split. `score_space` adds the scores over more tracks; `cml evaluate` and the Compare notebook both call it,
so a key means the same everywhere. `length_extrapolation` scores the crop embeddings of
`cml embed --crops` (`cml.embed.tracks.Crops`).
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping, Optional, Sequence

import numpy as np
import pandas as pd
from scipy.stats import spearmanr

from cml.cluster.methods import cluster
from cml.cluster.scores import partition_scores
from cml.evaluation.probes import (
    fit_linear_probe,
    l2_rows,
    lead_program,
    linear_probe_accuracy,
    majority_rate,
    style_timbre_probe,
)
from cml.search.index import knn_accuracy, leave_group_out_knn_accuracy
from cml.search.neighbours import fit_knn, l2_normalise
from cml.tables import FeatureTable, preview, read_feature_table, standardise

log = logging.getLogger(__name__)

METRIC_KEYS = ("knn_acc", "linear_acc", "nmi", "ari")
TEST_FRACTION = 0.2  # test share of the CLI's fallback split


@dataclass
class EvaluateConfig:
    """The Compare notebook (stage `evaluate`)."""

    knn_k: int = 5  # neighbours of the k-NN votes
    seed: int = 0  # linear probe and k-means


def kmeans_agreement(X: np.ndarray, y: np.ndarray, seed: int = 0) -> dict[str, float]:
    """NMI and ARI of k-means (k = number of distinct labels, n_init=10, seeded) on L2-normalised rows."""
    n_classes = len(np.unique(y))
    result = cluster(X, "kmeans", k=n_classes, seed=seed, normalise=True)
    scores = partition_scores(l2_rows(X), result.labels, y, seed=seed)
    return {"nmi": scores["nmi"], "ari": scores["ari"]}


def evaluate_embeddings(X: np.ndarray, labels: Optional[np.ndarray], split: Optional[np.ndarray],
                        k: int = 5, seed: int = 0) -> dict:
    """The headline metrics of a feature space, trained on the train split and scored on the test split.

    Keys: ``knn_acc`` (cosine k-NN, k=5), ``linear_acc`` (linear probe), ``nmi`` and ``ari`` (k-means at
    the true number of classes, on the test split's rows), plus ``n_train``, ``n_test``, ``n_classes``
    and ``chance`` (majority-class rate on test). Rows without a label are left out; rows of other splits
    (val) are unused. Without a split, only nmi and ari are computed, over all labelled rows; without
    labels, none. Whatever is missing is explained under ``notes`` (and logged), never silently absent.
    """
    X = np.asarray(X, dtype=np.float64)
    out: dict = {"n": int(len(X)), "dim": int(X.shape[1]) if X.ndim == 2 else 0}
    notes: dict[str, str] = {}
    if labels is None:
        for key in METRIC_KEYS:
            notes[key] = "no labels"
        return _with_notes(out, notes)
    y = pd.Series(labels, dtype=object)
    has = y.notna().to_numpy()
    y = y.astype(str).to_numpy()
    if not has.all():
        notes["unlabelled"] = f"{int((~has).sum())} rows without a label left out"
    if split is None:
        notes["knn_acc"] = notes["linear_acc"] = "no train/test split"
        rows = has
        notes["split"] = "none given: nmi and ari are computed over all labelled rows"
    else:
        split = np.asarray(split, dtype=object)
        train, rows = has & (split == "train"), has & (split == "test")
        out.update(n_train=int(train.sum()), n_test=int(rows.sum()))
        if not train.any() or not rows.any():
            notes["knn_acc"] = notes["linear_acc"] = (
                f"empty split: {int(train.sum())} labelled train rows, {int(rows.sum())} labelled test rows")
        else:
            out["chance"] = majority_rate(y[rows])
            out["knn_acc"] = knn_accuracy(X[train], y[train], X[rows], y[rows], k)
            if len(np.unique(y[train])) < 2:
                notes["linear_acc"] = "fewer than two classes in the train split"
            else:
                out["linear_acc"] = linear_probe_accuracy(X[train], y[train], X[rows], y[rows], seed)
    n_classes = len(np.unique(y[rows]))
    out["n_classes"] = n_classes
    if n_classes < 2 or n_classes >= rows.sum():
        reason = f"k-means needs 2 <= classes < rows; got {n_classes} classes in {int(rows.sum())} rows"
        notes["nmi"] = notes["ari"] = reason
    else:
        out.update(kmeans_agreement(X[rows], y[rows], seed))
    return _with_notes(out, notes)


def _with_notes(out: dict, notes: dict[str, str]) -> dict:
    for key, why in notes.items():
        log.info("evaluation: %s: %s", key, why)
    return {**out, "notes": notes} if notes else out


def length_extrapolation(X_train: np.ndarray, y_train: np.ndarray, crops: Mapping[str, np.ndarray],
                         y_test: np.ndarray, k: int = 5, seed: int = 0) -> pd.DataFrame:
    """One row per crop: how the test tracks score when embedded from that crop (see `cml.embed.tracks.Crops`).

    The k-NN and linear probe are fitted once on the train split's reference embeddings (full tracks)
    and applied to each crop's test embeddings, so a model whose embedding does not drift with input
    length scores the same on every row; NMI/ARI come from k-means on each crop's test embeddings.
    """
    y_train, y_test = np.asarray(y_train).astype(str), np.asarray(y_test).astype(str)
    knn, probe = fit_knn(X_train, y_train, k), fit_linear_probe(X_train, y_train, seed)
    rows = []
    for name, X in crops.items():
        rows.append({"crop": name, "knn_acc": float(np.mean(knn.predict(X) == y_test)),
                     "linear_acc": float(np.mean(probe.predict(X) == y_test)), **kmeans_agreement(X, y_test, seed)})
    return pd.DataFrame(rows).set_index("crop")


def length_diagnostics(X: np.ndarray, seconds: np.ndarray) -> dict[str, float]:
    """Does track length organise the space? The share of variance on the top principal direction of the
    L2-normalised rows, and the size of the Spearman correlation of that direction with log duration (|rho|:
    a principal direction has no sign, so a signed rho would flip between runs at random).

    A space whose first direction holds most of the variance and follows duration clusters tracks by
    length, not by what they sound like; both numbers stay low when length does not matter.
    """
    U = l2_normalise(np.asarray(X, dtype=np.float64))
    U = U - U.mean(axis=0)
    u, s, _ = np.linalg.svd(U, full_matrices=False)
    share = float(s[0] ** 2 / np.sum(s ** 2)) if np.sum(s ** 2) > 0 else float("nan")
    rho = spearmanr(u[:, 0], np.log(np.asarray(seconds, dtype=np.float64))).statistic
    return {"pc1_share": share, "pc1_duration_rho": abs(float(rho))}


def score_space(X: np.ndarray, tracks: pd.DataFrame, k: int = 5, seed: int = 0, standardised: bool = False) -> dict:
    """Every score of one feature space against its track table: what `cml evaluate` writes and the Compare
    notebook tabulates per space (one function, so both name and compute each score the same way).

    ``tracks`` is aligned with the rows of X: ``label`` and ``split`` (either may be absent or have missing
    values), and ``piece``, ``programs``, ``duration`` where known. On the test split, `evaluate_embeddings`:
    ``knn_acc``, ``linear_acc``, ``nmi``, ``ari``, the counts behind them and ``notes`` on whatever could not
    be scored. Over more tracks, for less noise (labelled rows only): ``knn_acc_loo`` (the held-out val + test
    tracks against every other track but their own piece's renderings), ``knn_acc_loo_all`` (every track so)
    and ``nmi_all`` / ``ari_all`` (k-means over all tracks; the encoders never saw a label). With programs,
    the timbre probe ``knn_timbre_acc``; with a duration column, `length_diagnostics`. ``standardised``
    z-scores the columns first (handcrafted features mix units).
    """
    X = standardise(np.asarray(X, dtype=np.float64))[0] if standardised else np.asarray(X, dtype=np.float64)
    labels = tracks["label"].to_numpy(dtype=object) if "label" in tracks else None
    split = tracks["split"].to_numpy(dtype=object) if "split" in tracks else None
    out = evaluate_embeddings(X, labels, split, k=k, seed=seed)
    if "duration" in tracks:
        out.update(length_diagnostics(X, tracks["duration"].to_numpy()))
    has = pd.notna(labels) if labels is not None else np.zeros(len(X), bool)
    if not has.any():
        return out
    y = labels[has].astype(str)
    if split is not None and "programs" in tracks:
        timbres = tracks["programs"].map(lead_program).to_numpy()
        out["knn_timbre_acc"] = style_timbre_probe(X[has], y, timbres[has], split[has], k=k)["knn_timbre_acc"]
    ids = pd.Series(tracks.index if "id" not in tracks else tracks["id"], dtype=object).to_numpy()
    groups = tracks["piece"].where(tracks["piece"].notna(), ids).to_numpy() if "piece" in tracks else ids
    if split is not None:
        held_out = (pd.notna(split) & (split != "train"))[has]
        out["knn_acc_loo"] = leave_group_out_knn_accuracy(X[has], y, held_out, groups[has], k=k)
    out["knn_acc_loo_all"] = leave_group_out_knn_accuracy(X[has], y, np.ones(has.sum(), bool), groups[has], k=k)
    out.update({f"{key}_all": v for key, v in kmeans_agreement(X[has], y, seed).items()})
    return out


def track_rows(tracks: pd.DataFrame, ids: Sequence[str], source: object) -> pd.DataFrame:
    """The rows of `tracks` (indexed by id) for `ids`, in that order; ids it lacks raise a one-line
    ValueError naming `source` and them."""
    missing = pd.Index(ids).difference(tracks.index)
    if len(missing):
        raise ValueError(f"{source}: {len(missing)} ids are not in the track table: {preview(missing)}")
    return tracks.loc[list(ids)]


def score_table(path: str | Path, tracks: pd.DataFrame, k: int = 5, seed: int = 0,
                standardised: bool = False) -> dict:
    """`score_space` of a feature table, each row scored against its track (`tracks` indexed by id)."""
    table = read_feature_table(path)
    return score_space(table.X, track_rows(tracks, table.ids, path), k=k, seed=seed, standardised=standardised)


def score_runs(embeddings_dir: str | Path, variants: Sequence[str], seeds: Sequence[int], handcrafted: str | Path,
               tracks: pd.DataFrame, k: int = 5, seed: int = 0) -> pd.DataFrame:
    """The Compare table: one row per scored space, columns model, kind, seed and `score_table`'s scores.

    Each variant's trained runs (``<embeddings_dir>/<variant>-s<seed>/tracks.parquet``, kind contrastive)
    and its untrained encoder (``untrained-<variant>``, kind untrained, seed 0); the shipped pretrained encoder,
    frozen (``pretrained``) and fine-tuned on the study's tracks (``finetuned``), kind pretrained; then the baselines (kind
    baseline), each column z-scored over the tracks: the pretrained tagger (``musicnn``: its layers' units
    differ by channel, and z-scoring scored better when its default was chosen) and the handcrafted features
    (they mix units).
    """
    root, rows = Path(embeddings_dir), []
    for variant in variants:
        for s in seeds:
            rows.append({"model": variant, "kind": "contrastive", "seed": s,
                         **score_table(root / f"{variant}-s{s}" / "tracks.parquet", tracks, k, seed)})
        rows.append({"model": variant, "kind": "untrained", "seed": 0,
                     **score_table(root / f"untrained-{variant}" / "tracks.parquet", tracks, k, seed)})
    rows += [{"model": name, "kind": "pretrained", "seed": 0, **score_table(root / name / "tracks.parquet", tracks, k, seed)}
             for name in ("pretrained", "finetuned")]
    baselines = {"musicnn": root / "musicnn" / "tracks.parquet", "handcrafted": handcrafted}
    rows += [{"model": name, "kind": "baseline", "seed": 0, **score_table(path, tracks, k, seed, standardised=True)}
             for name, path in baselines.items()]
    return pd.DataFrame(rows)


def crop_tables(run_dir: str | Path) -> dict[str, FeatureTable]:
    """The crop embeddings of a run (`cml embed --crops`): ``tracks.<m>x.parquet`` as ``<m>x`` in increasing
    m, then ``tracks.full.parquet`` as ``full``; a one-line ValueError when there are none."""
    run_dir = Path(run_dir)
    names = sorted((p.name.split(".")[1] for p in run_dir.glob("tracks.*x.parquet")
                    if p.name.split(".")[1][:-1].isdigit()), key=lambda name: int(name[:-1]))
    names += ["full"] if (run_dir / "tracks.full.parquet").is_file() else []
    if not names:
        raise ValueError(f"{run_dir}: no crop embeddings (tracks.<m>x.parquet, tracks.full.parquet); "
                         "`cml embed --crops` writes them")
    return {name: read_feature_table(run_dir / f"tracks.{name}.parquet") for name in names}


def run_length_extrapolation(run_dir: str | Path, tracks: pd.DataFrame, k: int = 5, seed: int = 0) -> pd.DataFrame:
    """`length_extrapolation` of one run, every table lined up with `tracks` (indexed by id; split, label).

    The k-NN and the probe are fitted on the train tracks of ``<run_dir>/tracks.parquet`` and score the
    tracks of each crop table (`crop_tables`), whose rows are put in the order of the full-track crop's
    (the last one's without it); a crop table that holds other tracks raises. One row per crop, in order.
    """
    run_dir = Path(run_dir)
    full = read_feature_table(run_dir / "tracks.parquet")
    full_tracks = track_rows(tracks, full.ids, run_dir / "tracks.parquet")
    train = (full_tracks["split"] == "train").to_numpy()
    crops = crop_tables(run_dir)
    reference = "full" if "full" in crops else list(crops)[-1]
    test_ids = crops[reference].ids
    aligned = {}
    for name, table in crops.items():
        row = {i: n for n, i in enumerate(table.ids)}
        if len(table) != len(test_ids) or set(row) != set(test_ids):
            raise ValueError(f"{run_dir}: tracks.{name}.parquet holds other tracks than tracks.{reference}.parquet "
                             f"({len(table)} vs {len(test_ids)} rows): every crop must embed the same tracks")
        aligned[name] = table.X[[row[i] for i in test_ids]]
    y_test = track_rows(tracks, test_ids, run_dir / f"tracks.{reference}.parquet")["label"].to_numpy()
    return length_extrapolation(full.X[train], full_tracks["label"].to_numpy()[train], aligned, y_test,
                                k=k, seed=seed)


