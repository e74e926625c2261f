"""The library map: every track of a feature table as a point in 2-D, and the playlists made on it.

What the page (`cml.playlist.server`) and the notebook widget (`cml.playlist.widget`) show and do, computed here once:

- **the map**: the table's rows (L2-normalised, as `cml playlist` prepares them) projected to 2-D. The
  projection is chosen by measurement: :func:`score_projections` fits PCA, t-SNE and UMAP on a seeded sample
  and keeps the one that keeps most of each track's ``k`` nearest neighbours (:func:`neighbour_preservation`);
  the winner is then fitted on every row. t-SNE is left out of the choice above ``TSNE_MAX_ROWS`` (its
  fit on a whole large library takes too long).
- **what a point says**: its name (title, or artists - title, else the id), label, cluster (an ``id,cluster``
  CSV of `cml cluster --out`) and whether its audio can be played (``ok``; ``missing``: the path is no
  readable file; ``none``: the table has no path for it). A file the browser cannot decode is marked there.
- **playlists**: seeds by id, built by `cml.playlist.hull.build_playlist` with `cml playlist`'s defaults, so the
  same seeds give the same playlist as the command; saved as M3U8 by `cml.playlist.files.write_playlist`.

Rows with NaN/inf features, repeated ids (all but the first) or length zero are dropped, and the drops are
reported (`LibraryMap.dropped`) instead of stopping the map.
"""
from __future__ import annotations

import logging
import os
import re
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np
import pandas as pd

from cml.data.features import PROJECTIONS, project_2d
from cml.errors import CmlError, UsageError
from cml.playlist.files import playlist_frame, write_playlist
from cml.playlist.hull import build_playlist, fit_projection, prepare, resolve_ids
from cml.search.index import Index
from cml.search.neighbours import nearest
from cml.tables import FeatureTable, check_directions, read_csv_text_ids, read_feature_table

log = logging.getLogger(__name__)

PROJECTION_SAMPLE = 2000  # rows the projections are scored on
NEIGHBOURS_K = 10  # the neighbours a projection should keep
TSNE_MAX_ROWS = 20_000  # above this, t-SNE is not a candidate of "auto" (too slow on the whole library)
AUDIO_STATES = ("ok", "missing", "none")
NOISE = "noise"  # cluster -1 of `cml cluster`


def neighbour_preservation(X: np.ndarray, Y: np.ndarray, k: int = NEIGHBOURS_K) -> float:
    """The mean share of each row's k nearest neighbours in X (cosine) that are also among its k nearest in
    the 2-D map Y (Euclidean): 1 when the map keeps every neighbourhood, about k/n for a random map."""
    k = min(k, len(X) - 1)
    if k < 1:
        return 1.0
    high = nearest(X, X, k + 1)[0][:, 1:]
    d = ((Y[:, None, :] - Y[None, :, :]) ** 2).sum(axis=-1)
    np.fill_diagonal(d, np.inf)
    low = np.argpartition(d, k - 1, axis=1)[:, :k]
    return float(np.mean([len(np.intersect1d(a, b)) / k for a, b in zip(high, low)]))


def project(X: np.ndarray, method: str, seed: int = 0) -> np.ndarray:
    """2-D coordinates (n, 2): PCA as `cml.playlist.hull` fits it (an eigen-decomposition of the d x d covariance, not
    scikit-learn's full SVD of the whole table: 2 s instead of 9 s at 100k x 128), t-SNE and UMAP by
    `cml.data.features.project_2d`."""
    if method != "pca":
        return project_2d(X, method, seed=seed)
    coords = fit_projection(X, 2).transform(X)
    return np.pad(coords, ((0, 0), (0, 2 - coords.shape[1])))  # a table of one feature: a line


def score_projections(X: np.ndarray, methods: Sequence[str] = PROJECTIONS, sample: int = PROJECTION_SAMPLE,
                      k: int = NEIGHBOURS_K, seed: int = 0) -> pd.DataFrame:
    """Each method's neighbour preservation and fit time on ``sample`` rows drawn with ``seed``."""
    rng = np.random.default_rng(seed)
    rows = np.sort(rng.choice(len(X), size=min(sample, len(X)), replace=False))
    scores = []
    for method in methods:
        begin = time.perf_counter()
        Y = project(X[rows], method, seed=seed)
        scores.append({"method": method, "seconds": time.perf_counter() - begin,
                       "preservation": neighbour_preservation(X[rows], Y, k)})
    return pd.DataFrame(scores).set_index("method")


def choose_projection(X: np.ndarray, seed: int = 0, methods: Sequence[str] = PROJECTIONS) -> tuple[str, pd.DataFrame]:
    """The method that keeps most neighbours on a sample (first of equals), and the scores it was chosen by."""
    methods = [m for m in methods if m != "tsne" or len(X) <= TSNE_MAX_ROWS]
    scores = score_projections(X, methods, seed=seed)
    best = str(scores["preservation"].idxmax())
    log.info("projection: %s keeps %.0f%% of %d neighbours (%s)", best, 100 * scores.loc[best, "preservation"],
             NEIGHBOURS_K, ", ".join(f"{m} {v:.2f}" for m, v in scores["preservation"].items()))
    return best, scores


class _Collect(logging.Handler):
    """Keeps the warnings a table reader logs, so the map can show what it dropped."""

    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(record.getMessage())


def read_map_table(path: str | Path, label_column: str | None = None) -> tuple[FeatureTable, list[str]]:
    """The table with its unusable rows dropped (NaN/inf, repeated ids, length zero), and what was dropped."""
    collect = _Collect()
    loggers = [logging.getLogger(n) for n in ("cml.tables", "cml.cluster.methods")]
    for logger in loggers:
        logger.addHandler(collect)
    try:
        table = read_feature_table(path, label_column=label_column or "label", drop_invalid=True)
        table = check_directions(table, path, drop_invalid=True)
    finally:
        for logger in loggers:
            logger.removeHandler(collect)
    if label_column and table.labels is None:
        raise UsageError(f"--label-column {label_column!r}: no such column in {path}")
    if len(table) == 0:
        raise CmlError(f"{path}: no usable rows left to draw ({'; '.join(collect.messages)})")
    return table, collect.messages


def read_clusters(path: str | Path, ids: np.ndarray) -> np.ndarray:
    """Each id's cluster from an ``id,cluster`` CSV (`cml cluster --out`) as text: ``noise`` for -1, None for
    an id the file does not hold."""
    path = Path(path)
    try:
        frame = read_csv_text_ids(path, ("id", "cluster"))
    except (OSError, ValueError) as err:
        raise CmlError(f"cannot read clusters {path}: {err}") from None
    if not {"id", "cluster"} <= set(frame.columns):
        raise CmlError(f"{path}: expected the columns id,cluster of `cml cluster --out`, got {list(frame.columns)}")
    frame = frame.dropna(subset=["id"]).drop_duplicates("id").set_index("id")["cluster"]
    values = frame.reindex(ids)
    missing = int(values.isna().sum())
    if missing == len(ids):
        raise CmlError(f"{path}: none of the table's ids has a cluster (is it the clustering of another table?)")
    if missing:
        log.warning("%s: %d of %d tracks have no cluster", path, missing, len(ids))
    return np.array([None if pd.isna(v) else NOISE if str(v) == "-1" else str(v) for v in values], dtype=object)


def audio_states(paths: Sequence) -> np.ndarray:
    """``ok`` (a readable file), ``missing`` (a path that is not one) or ``none`` (no path) per track."""
    def state(p) -> str:
        if not isinstance(p, str) or not p:
            return "none"
        return "ok" if os.path.isfile(p) and os.access(p, os.R_OK) else "missing"
    return np.array([state(p) for p in paths], dtype=object)


@dataclass
class LibraryMap:
    """A feature table ready to draw: rows, 2-D coordinates and what each point says."""

    table: FeatureTable
    X: np.ndarray  # (n, d) unit rows, as `cml playlist` prepares them
    coords: np.ndarray  # (n, 2)
    projection: str
    names: np.ndarray  # (n,) what a point is called
    audio: np.ndarray  # (n,) one of AUDIO_STATES
    clusters: np.ndarray | None = None  # (n,) text, or None without a clustering
    dropped: list[str] = field(default_factory=list)  # what was dropped from the table, one line each
    scores: pd.DataFrame | None = None  # the projections' neighbour preservation, when chosen by measurement
    _index: Index | None = None

    def __len__(self) -> int:
        return len(self.table)

    def payload(self) -> dict:
        """Everything the page draws, as JSON-ready lists (text goes into the page as data, never as markup)."""
        labels = self.table.labels
        return {"ids": self.table.ids.tolist(), "names": self.names.tolist(),
                "labels": None if labels is None else labels.tolist(),
                "clusters": None if self.clusters is None else self.clusters.tolist(),
                "x": np.round(self.coords[:, 0], 5).tolist(), "y": np.round(self.coords[:, 1], 5).tolist(),
                "audio": self.audio.tolist(), "projection": self.projection, "dropped": self.dropped,
                "preservation": None if self.scores is None else self.scores["preservation"].round(3).to_dict()}

    def audio_path(self, row: int) -> Path | None:
        """The local file of row ``row`` when it can be played, else None."""
        if not 0 <= row < len(self) or self.audio[row] != "ok":
            return None
        return Path(self.table.meta["path"].iloc[row])

    def playlist(self, seed_ids: Sequence[str], length: int, mode: str = "hull", dim: int = 3,
                 margin: float = 0.0) -> dict:
        """The playlist of `cml playlist --seed-tracks SEEDS --length LENGTH --mode MODE` on this table: rows in
        play order, ids and the region's message."""
        seeds = resolve_ids(self.table.ids, list(seed_ids), "seed ids")
        if mode == "journey" and self._index is None:
            self._index = Index(self.X)  # as `cml playlist` searches a journey
        playlist = build_playlist(self.X, seeds, int(length), mode=mode, dim=int(dim), margin=float(margin),
                                  index=self._index if mode == "journey" else None)
        order = playlist.order.tolist()
        return {"rows": order, "ids": self.table.ids[order].tolist(), "message": playlist.message}

    def rows(self, ids: Sequence[str]) -> np.ndarray:
        """The rows of the tracks ``ids``, in that order (unknown ids: one PlaylistError naming them)."""
        return resolve_ids(self.table.ids, list(ids), "playlist ids")

    def save(self, ids: Sequence[str], folder: str | Path, name: str) -> Path:
        """Write the tracks ``ids`` (in this order) as ``folder/NAME.m3u8``; the name is made a safe file name."""
        frame = playlist_frame(self.table, self.X, self.rows(ids))
        return write_playlist(frame, Path(folder) / f"{safe_name(name)}.m3u8")


def safe_name(name: str) -> str:
    """A file name from a playlist name: letters, digits, ``-_ .`` only, never a path or a hidden file."""
    text = re.sub(r"[^\w\- .]+", "_", str(name)).strip(" ._")[:100]
    return text or "playlist"


def track_names(table: FeatureTable, X: np.ndarray) -> np.ndarray:
    """Each track's name as a playlist shows it (``artists - title``, the title, or the id)."""
    frame = playlist_frame(table, X, np.arange(len(table)))
    if "title" not in frame:
        return table.ids.astype(object)
    title = frame["title"].where(frame["title"].notna() & (frame["title"].astype(str) != ""), frame["id"])
    return title.astype(str).to_numpy(dtype=object)


def build_map(table: FeatureTable, *, clusters: str | Path | None = None, projection: str = "auto", seed: int = 0,
              dropped: Sequence[str] = ()) -> LibraryMap:
    """Lay a table out in 2-D (``auto``: the projection chosen by measurement) and say what each point is."""
    if projection not in ("auto", *PROJECTIONS):
        raise UsageError(f"unknown projection {projection!r}; choose from auto, {', '.join(PROJECTIONS)}")
    X = prepare(table.X, "l2")
    scores = None
    if projection == "auto":
        projection, scores = choose_projection(X, seed)
    coords = project(X, projection, seed=seed)
    paths = table.meta["path"].tolist() if "path" in table.meta else [None] * len(table)
    states = audio_states(paths)
    if (states == "missing").any():
        log.warning("%d of %d audio files not found or unreadable; their points are marked",
                    int((states == "missing").sum()), len(states))
    return LibraryMap(table=table, X=X, coords=coords, projection=projection, names=track_names(table, X),
                      audio=states, clusters=read_clusters(clusters, table.ids) if clusters else None,
                      dropped=list(dropped), scores=scores)


def load_map(path: str | Path, *, label_column: str | None = None, clusters: str | Path | None = None,
             projection: str = "auto", seed: int = 0) -> LibraryMap:
    """The map of the feature table at ``path`` (unusable rows dropped and reported; see :func:`build_map`)."""
    if projection not in ("auto", *PROJECTIONS):  # before reading a large table
        raise UsageError(f"unknown projection {projection!r}; choose from auto, {', '.join(PROJECTIONS)}")
    table, dropped = read_map_table(path, label_column)
    return build_map(table, clusters=clusters, projection=projection, seed=seed, dropped=dropped)
