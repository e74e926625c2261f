"""The ClusterTesting grid (:func:`run_grid`) scores every feature table x every method this way; the
helpers after it rank the grid, pick the best pair, and find what the notebook shows of a clustering
(its medoid tracks, its contingency table against the true labels).
"""
from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Mapping, Optional, Sequence

import numpy as np
import pandas as pd
from tqdm import tqdm

from cml.cluster import elki
from cml.cluster.costs import METHOD_BUDGET_SECONDS, too_costly
from cml.cluster.methods import METHODS, NEEDS_K, cluster
from cml.cluster.scores import cluster_scores
from cml.tables import FeatureTable, read_feature_table, standardise, take_rows

log = logging.getLogger(__name__)


ZSCORED = ("handcrafted", "musicnn")  # the baseline spaces, scored with their columns z-scored over the tracks


def _integer(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)  # YAML's true is no count


@dataclass
class ClusterTestingConfig:
    """The ClusterTesting notebook (stage `cluster_testing`): every feature space x every method."""

    methods: list = field(default_factory=lambda: list(METHODS))
    embeddings: str | list = "all"  # all: every folder under outputs/embeddings plus handcrafted; or names
    elki_embeddings: str | list = "trained"  # spaces the elki-* methods run on (a JVM per call): all, trained, names
    k: Optional[int] = None  # clusters for k-means and hierarchical cuts; None: the number of true labels
    split: str = "all"  # all tracks (clustering sees no labels), or test: the held-out split only
    seed: int = 0
    medoids_per_cluster: int = 2  # tracks to listen to per cluster
    audio_seconds: float = 6.0  # excerpt length, from the middle of each track

    def __post_init__(self) -> None:
        """Every value in its domain, or a one-line ValueError naming the key (`load_config` adds the file)."""
        if not isinstance(self.methods, list) or not self.methods:
            raise ValueError(f"methods must be a non-empty list of {', '.join(METHODS)}; got {self.methods!r}")
        unknown = [m for m in self.methods if m not in METHODS]
        if unknown:
            raise ValueError(f"unknown methods {unknown}; choose from {', '.join(METHODS)}")
        for key in ("embeddings", "elki_embeddings"):
            value, words = getattr(self, key), "'all', 'trained'" if key == "elki_embeddings" else "'all'"
            if not (isinstance(value, str) or (isinstance(value, list) and value
                                               and all(isinstance(v, str) for v in value))):
                raise ValueError(f"{key} must be {words} or a list of feature-space names, got {value!r}")
        if self.k is not None and not (_integer(self.k) and self.k >= 2):
            raise ValueError(f"k must be an integer >= 2, or null for the number of true labels; got {self.k!r}")
        if self.split not in ("all", "test"):
            raise ValueError(f"split must be 'all' or 'test', got {self.split!r}")
        if not (_integer(self.seed) and self.seed >= 0):
            raise ValueError(f"seed must be an integer >= 0, got {self.seed!r}")
        if not (_integer(self.medoids_per_cluster) and self.medoids_per_cluster >= 1):
            raise ValueError(f"medoids_per_cluster must be an integer >= 1, got {self.medoids_per_cluster!r}")
        if not ((_integer(self.audio_seconds) or isinstance(self.audio_seconds, float))
                and 0 < self.audio_seconds < float("inf")):
            raise ValueError(f"audio_seconds must be a finite number > 0, got {self.audio_seconds!r}")

    def rows(self, tracks: pd.DataFrame) -> pd.DataFrame:
        """The tracks to cluster: all of them, or (``split: test``) the test split's; a one-line ValueError
        when that leaves fewer than two."""
        rows = tracks if self.split == "all" else tracks[tracks["split"] == "test"]
        if len(rows) < 2:
            raise ValueError(f"cluster_testing.split {self.split!r} selects {len(rows)} of {len(tracks)} tracks; "
                             "clustering needs at least 2 (split: all takes every track)")
        return rows

HDBSCAN_METHODS = ("elki-hdbscan", "hdbscan", "mst-hdbscan", "knn-hdbscan")

DENSITY = ("elki-hdbscan", "elki-dbscan", "dbscan", "hdbscan", "mst-hdbscan", "knn-hdbscan")  # choose their own k

GRID_METRICS = ("nmi", "ari", "v_measure", "purity", "silhouette", "davies_bouldin", "n_clusters",
                "noise_fraction")

LOWER_IS_BETTER = {"davies_bouldin"}


def discover_tables(embeddings_dir: str | Path, baselines: Mapping[str, str | Path] | None = None,
                    select: str | Sequence[str] = "all") -> dict[str, Path]:
    """Name -> feature table: ``<dir>/tracks.parquet`` of every folder under ``embeddings_dir`` (named
    after the folder, sorted), then the ``baselines`` that exist; ``select`` ("all" or names) keeps some.

    Only ``tracks.parquet`` is read: the crop tables beside it (``tracks.1x.parquet``, ...) cover the test
    split only. A selected name that does not exist raises, naming what does.
    """
    found = {p.parent.name: p for p in sorted(Path(embeddings_dir).glob("*/tracks.parquet"))}
    found.update({name: Path(path) for name, path in (baselines or {}).items() if Path(path).is_file()})
    if select == "all":
        return found
    names = [select] if isinstance(select, str) else list(select)
    missing = [name for name in names if name not in found]
    if missing:
        raise ValueError(f"no feature table for {missing}; available: {', '.join(found) or 'none'}")
    return {name: found[name] for name in names}


def load_tables(paths: Mapping[str, str | Path], *, ids: Sequence[str] | None = None,
                labels: Mapping[str, object] | None = None, zscored: Sequence[str] = ZSCORED
                ) -> dict[str, FeatureTable]:
    """Read feature tables, keep the rows in ``ids`` (in that order; all rows when None), take the true
    labels from ``labels`` (id -> label) when given, and z-score the tables named in ``zscored``.

    Ids missing from a table raise (every space must be scored on the same tracks).
    """
    tables = {}
    for name, path in paths.items():
        table = read_feature_table(path)
        if ids is not None:
            pos = {i: n for n, i in enumerate(table.ids)}
            missing = [i for i in ids if i not in pos]
            if missing:
                raise ValueError(f"{path}: {len(missing)} tracks have no row (first: {missing[:5]})")
            table = take_rows(table, np.array([pos[i] for i in ids], dtype=np.int64))
        if labels is not None:
            table.labels = np.array([labels.get(i) for i in table.ids], dtype=object)
        if name in zscored:
            table.X = standardise(table.X)[0]  # baselines mix units (dB, Hz, ...)
        tables[name] = table
    return tables


def n_labels(labels: np.ndarray | None) -> int:
    """Distinct true labels (missing ones not counted): the default k."""
    return 0 if labels is None else len({v for v in labels if v is not None and v == v})


def select_spaces(names: Sequence[str], select: str | Sequence[str]) -> list[str]:
    """``"all"``, ``"trained"`` (all but the ``untrained-*`` encoders) or a list of names, in ``names`` order."""
    if select == "all":
        return list(names)
    if select == "trained":
        return [n for n in names if not n.startswith("untrained-")]
    wanted = [select] if isinstance(select, str) else list(select)
    missing = [n for n in wanted if n not in names]
    if missing:
        raise ValueError(f"unknown feature spaces {missing}; available: {', '.join(names)}")
    return [n for n in names if n in wanted]


def run_grid(tables: Mapping[str, FeatureTable], methods: Sequence[str] = METHODS, k: int | None = None,
             seed: int = 0, *, elki_on: Sequence[str] | None = None, normalise: bool = True,
             progress: bool = False, budget: float = METHOD_BUDGET_SECONDS) -> pd.DataFrame:
    """Cluster every table with every method and score it with :func:`cluster_scores`: one row per pair.

    ``k=None`` takes the number of true labels of each table. ``elki_on`` limits the ELKI methods to
    those tables (each ELKI call starts a JVM, ~1 s); None runs them everywhere. A pair that fails (ELKI
    error, k larger than the data, no labels to take k from) gets its reason in the ``error`` column and
    the grid goes on; so does one whose estimate at this size passes ``budget`` seconds or the machine's
    memory (`too_costly`): it is skipped without running.
    """
    unknown = [m for m in methods if m not in METHODS]
    if unknown:
        raise ValueError(f"unknown methods {unknown}; choose from {', '.join(METHODS)}")
    rows = []
    pairs = [(name, method) for name in tables for method in methods
             if elki_on is None or name in elki_on or not method.startswith("elki-")]
    for name, method in tqdm(pairs, desc="clustering", disable=not progress):
        table = tables[name]
        k_used = k if k is not None else (n_labels(table.labels) or None)
        row = {"embedding": name, "method": method, "k": k_used if method in NEEDS_K else None}
        reason = too_costly(method, *table.X.shape, budget=budget)
        if reason:
            log.warning("%s x %s %s", name, method, reason)
            rows.append({**row, "error": reason})
            continue
        try:
            result = cluster(table.X, method, k=k_used, seed=seed, normalise=normalise)
        except (ValueError, elki.ElkiError) as err:
            log.warning("%s x %s skipped: %s", name, method, err)
            rows.append({**row, "error": str(err).splitlines()[0]})
            continue
        rows.append({**row, **cluster_scores(table.X, result, table.labels, seed=seed), "seconds": result.seconds,
                     "error": None})
    grid = pd.DataFrame(rows).astype({"k": "Int64"})
    first = [c for c in ("embedding", "method", "k", "n", "n_labelled", *GRID_METRICS, "seconds") if c in grid]
    return grid[first + [c for c in grid if c not in first]]  # error last


def grid_metrics(grid: pd.DataFrame) -> dict:
    """The grid as ``{embedding: {method: {metric: value}}}`` (the metrics JSON; failed pairs left out)."""
    out: dict = {}
    for _, row in grid[grid["error"].isna()].iterrows():
        out.setdefault(row["embedding"], {})[row["method"]] = {
            m: (None if pd.isna(row[m]) else row[m]) for m in GRID_METRICS if m in row.index}
    return out


def headline_metric(grid: pd.DataFrame) -> str:
    """NMI where there are true labels, else the silhouette (the only label-free score that ranks)."""
    return "nmi" if "nmi" in grid and grid["nmi"].notna().any() else "silhouette"


def ranking(grid: pd.DataFrame, metric: str = "nmi") -> pd.DataFrame:
    """Embeddings x methods table of ``metric``, best embeddings first (by their best method) and best
    methods first (by their mean over embeddings); Davies-Bouldin counts lower as better."""
    table = grid.pivot(index="embedding", columns="method", values=metric).astype(float)
    sign = -1.0 if metric in LOWER_IS_BETTER else 1.0
    rows = (sign * table).max(axis=1).sort_values(ascending=False, kind="stable").index
    cols = (sign * table).mean(axis=0).sort_values(ascending=False, kind="stable").index
    return table.loc[rows, cols]


def best_pair(grid: pd.DataFrame, metric: str = "nmi", methods: Sequence[str] | None = None) -> pd.Series:
    """The grid row (embedding, method, scores) with the best ``metric``, optionally among ``methods``."""
    rows = grid if methods is None else grid[grid["method"].isin(methods)]
    scores = rows[metric].astype(float) * (-1.0 if metric in LOWER_IS_BETTER else 1.0)
    if scores.isna().all():
        raise ValueError(f"no pair has a {metric} score")
    return rows.loc[scores.idxmax()]
