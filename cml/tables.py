"""The one feature-table format used for embeddings and baseline features.

A feature table has one row per item (track, clip, ...) and these columns:

- ``id`` (required, read as a string, unique). When there is no ``id`` column, ``track_id`` is used,
  so a Spotify export (``track_id, artists, track_name, danceability, ...``) reads as it is.
- ``label`` (optional): the true class (genre, composer, ...) used by the external clustering metrics.
  Read as strings; missing values become ``None``.
- ``path`` (optional) and any other non-numeric column (titles, artists, ...): kept in ``meta``.
- every other numeric column (int, float or bool) is a feature, in file order. Columns named
  ``Unnamed: N`` (the index pandas writes by default) are never features.

Parquet is what :func:`write_feature_table` writes; it records the feature column names in the file's
schema metadata (key ``cml.data.features``), so numeric metadata (a duration, a year) survives a round trip
without becoming a feature. CSV is accepted on input: there, every numeric column except id/label is a
feature. Bad input (no id, repeated ids, no numeric column, NaN/inf values, unreadable file) raises
:class:`FeatureTableError` naming the problem and the offending rows; ``drop_invalid=True`` drops
those rows instead and logs what was dropped.

A folder is a table split in parts (`part_path`: one per `torchrun` rank, ``part-00000-of-00002.parquet``,
...): read as the parts concatenated in rank order, once every part of one run is there.
"""

from __future__ import annotations

import argparse
import json
import logging
import re
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Mapping

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from cml.errors import CmlError, UsageError, check_input_file

log = logging.getLogger(__name__)

ID_COLUMNS = ("id", "track_id")  # first one present is the id
LABEL_COLUMN = "label"
FEATURES_METADATA_KEY = b"cml.features"
PART = re.compile(r"part-(\d{5})-of-(\d{5})(\.[A-Za-z]+)$")  # one rank's share of a table (see `part_path`)
_SHOW = 10  # how many offending ids an error message names


class FeatureTableError(CmlError, ValueError):
    """A feature table that cannot be used as it is; the message says why and where."""


@dataclass
class FeatureTable:
    """Features of n items: ``X[i]`` belongs to ``ids[i]`` (and ``labels[i]``, ``meta.iloc[i]``)."""

    ids: np.ndarray  # (n,) str
    X: np.ndarray  # (n, d) float64, finite
    feature_names: list[str]
    labels: np.ndarray | None  # (n,) object: str or None where missing; None when no label column
    meta: pd.DataFrame  # the non-numeric columns (path, title, ...), index 0..n-1

    def __len__(self) -> int:
        return len(self.ids)


def preview(values: np.ndarray | pd.Index) -> str:
    """The first few values for an error message, and how many there are in all."""
    shown = ", ".join(map(str, list(values)[:_SHOW]))
    return shown + (f", ... ({len(values)} in all)" if len(values) > _SHOW else "")


def part_path(path: str | Path, rank: int, world: int) -> Path:
    """Where rank `rank` of `world` processes writes its share of the table `path`: a part file in the folder
    `path` (the table itself when world is 1)."""
    path = Path(path)
    return path if world == 1 else path / f"part-{rank:05d}-of-{world:05d}{path.suffix}"


def table_parts(folder: Path) -> list[Path]:
    """The part files of a table folder in rank order; a FeatureTableError unless they are one complete run."""
    parts = sorted((int(m[1]), int(m[2]), p) for p in folder.iterdir() if (m := PART.fullmatch(p.name)))
    worlds = {world for _, world, _ in parts}
    if len(worlds) != 1 or [rank for rank, _, _ in parts] != list(range(worlds.pop())):
        found = ", ".join(p.name for _, _, p in parts) or "no part-NNNNN-of-NNNNN files"
        raise FeatureTableError(f"cannot read feature table {folder}: not one complete set of parts ({found})")
    return [p for _, _, p in parts]


def _read_frame(path: Path, text_columns: tuple[str, ...]) -> tuple[pd.DataFrame, list[str] | None]:
    """Read a CSV or Parquet file (or a folder of parts); return it and the feature names recorded in
    Parquet metadata."""
    if not path.exists():
        raise FeatureTableError(f"cannot read feature table {path}: no such file")
    if path.is_dir():
        frames = [_read_frame(part, text_columns) for part in table_parts(path)]
        recorded = {json.dumps(r) for _, r in frames}
        if len(recorded) > 1:
            raise FeatureTableError(f"cannot read feature table {path}: its parts record different feature columns")
        return pd.concat([f for f, _ in frames], ignore_index=True), frames[0][1]
    suffix = path.suffix.lower()
    try:
        if suffix in (".parquet", ".pq"):
            table = pq.read_table(path)
            recorded = (table.schema.metadata or {}).get(FEATURES_METADATA_KEY)
            return table.to_pandas(), json.loads(recorded) if recorded else None
        if suffix in (".csv", ".tsv", ".txt"):
            return read_csv_text_ids(path, text_columns), None
    except (OSError, ValueError, pa.ArrowException) as err:
        raise FeatureTableError(f"cannot read feature table {path}: {err}") from err
    raise FeatureTableError(f"cannot read feature table {path}: unknown extension {suffix!r} "
                            "(expected .parquet, .csv or .tsv)")


def read_csv_text_ids(path: str | Path, text_columns: Iterable[str] = ID_COLUMNS) -> pd.DataFrame:
    """A CSV (or TSV) with ``text_columns`` read verbatim as strings: ``007`` stays ``007`` and an id
    ``nan``, ``NA`` or ``null`` stays that text; only an empty field is missing. Other columns are
    parsed as pandas does (numbers, and NaN for ``nan``/``NA``/empty)."""
    path = Path(path)
    sep = "\t" if path.suffix.lower() == ".tsv" else ","
    df = pd.read_csv(path, sep=sep)
    text = [c for c in dict.fromkeys(text_columns) if c in df.columns]
    if text:
        raw = pd.read_csv(path, sep=sep, usecols=text, dtype=str, keep_default_na=False)
        for c in text:
            df[c] = raw[c].where(raw[c] != "")  # pandas' text dtype; only an empty field is missing
    return df


TRACK_TEXT_COLUMNS = ("id", "path", "label", "split", "piece", "composer", "title", "source", "programs", "format")


def read_tracks(path: str | Path, required: Iterable[str] = ("id", "path")) -> pd.DataFrame:
    """The track table (``tracks.csv`` of the tracks stage, or any CSV with id and path): the one reader
    every stage and notebook uses. Ids and other text columns stay text (see `read_csv_text_ids`);
    a missing file, a missing column or an empty or repeated id is a FeatureTableError naming it."""
    path = Path(path)
    if not path.is_file():
        raise FeatureTableError(f"tracks table not found: {path}")
    try:
        tracks = read_csv_text_ids(path, TRACK_TEXT_COLUMNS)
    except (OSError, ValueError, UnicodeDecodeError) as err:
        raise FeatureTableError(f"cannot read tracks table {path}: {err}") from err
    missing = [c for c in required if c not in tracks.columns]
    if missing:
        raise FeatureTableError(f"{path}: missing columns {missing}; columns are: {preview(tracks.columns)}")
    if "id" in tracks.columns:
        empty = np.flatnonzero(tracks["id"].isna().to_numpy())
        if len(empty):
            raise FeatureTableError(f"{path}: empty id in rows {preview(empty)}")
        dup = tracks["id"].duplicated().to_numpy()
        if dup.any():
            raise FeatureTableError(f"{path}: {dup.sum()} repeated ids: {preview(tracks['id'][dup].unique())}")
    return tracks


def _feature_columns(df: pd.DataFrame, recorded: list[str] | None, skip: set[str]) -> list[str]:
    if recorded is not None:
        missing = [c for c in recorded if c not in df.columns]
        if missing:
            raise FeatureTableError(f"feature columns named in the file metadata are missing: {preview(missing)}")
        return list(recorded)
    return [c for c in df.columns
            if c not in skip and not str(c).startswith("Unnamed:")
            and (pd.api.types.is_numeric_dtype(df[c]) or pd.api.types.is_bool_dtype(df[c]))]


def read_feature_table(path: str | Path, *, label_column: str = LABEL_COLUMN,
                       drop_invalid: bool = False) -> FeatureTable:
    """Read a feature table (Parquet or CSV; format in the module docstring).

    ``label_column`` picks another column as the true label (e.g. ``track_genre`` of a Spotify export).
    With ``drop_invalid``, rows with NaN/inf features and repeated ids (all but the first) are dropped
    and reported in the log instead of raising.
    """
    path = Path(path)
    df, recorded = _read_frame(path, (*ID_COLUMNS, label_column))
    id_col = next((c for c in ID_COLUMNS if c in df.columns), None)
    if id_col is None:
        raise FeatureTableError(f"{path}: no id column (expected one of {ID_COLUMNS}); "
                                f"columns are: {preview(df.columns)}")
    df = df.reset_index(drop=True)
    if df[id_col].isna().any():
        rows = np.flatnonzero(df[id_col].isna().to_numpy())
        raise FeatureTableError(f"{path}: empty id in rows {preview(rows)}")
    ids = df[id_col].astype(str).to_numpy()
    has_label = label_column in df.columns
    features = _feature_columns(df, recorded, skip={id_col, label_column} if has_label else {id_col})
    if not features:
        raise FeatureTableError(f"{path}: no numeric feature columns; columns are: {preview(df.columns)}")
    X = df[features].to_numpy(dtype=np.float64)

    keep = np.ones(len(df), dtype=bool)
    dup = pd.Series(ids).duplicated().to_numpy()
    if dup.any():
        if not drop_invalid:
            raise FeatureTableError(f"{path}: {dup.sum()} repeated ids: {preview(np.unique(ids[dup]))} "
                                    "(--drop-invalid, or drop_invalid=True, keeps the first row of each)")
        log.warning("%s: dropped %d rows with repeated ids: %s", path, dup.sum(), preview(ids[dup]))
        keep &= ~dup
    bad = ~np.isfinite(X).all(axis=1)
    if bad.any():
        if not drop_invalid:
            raise FeatureTableError(f"{path}: NaN or inf features in {bad.sum()} rows, ids: {preview(ids[bad])} "
                                    "(--drop-invalid, or drop_invalid=True, drops them)")
        log.warning("%s: dropped %d rows with NaN/inf features: %s", path, bad.sum(), preview(ids[bad]))
        keep &= ~bad

    labels = None
    if has_label:
        col = df[label_column].astype("string")
        labels = np.array([None if pd.isna(v) else str(v) for v in col], dtype=object)[keep]
    meta_cols = [c for c in df.columns if c not in features and c not in (id_col, label_column)]
    return FeatureTable(ids=ids[keep], X=np.ascontiguousarray(X[keep]), feature_names=[str(c) for c in features],
                        labels=labels, meta=df.loc[keep, meta_cols].reset_index(drop=True))


WRITE_SUFFIXES = (".parquet", ".csv")  # what write_feature_table writes (and every reader reads back)


def check_table_suffix(path: str | Path, option: str) -> Path:
    """A UsageError naming `option` unless `path` ends in a suffix a feature table is written with."""
    path = Path(path)
    if path.suffix.lower() not in WRITE_SUFFIXES:
        raise UsageError(f"{option} {path}: a feature table is written as {' or '.join(WRITE_SUFFIXES)}, "
                         f"not {path.suffix or 'a file without an extension'!r}")
    return path


def write_feature_table(path: str | Path, ids, X, labels=None,
                        extra: pd.DataFrame | Mapping[str, object] | None = None,
                        feature_prefix: str = "f") -> Path:
    """Write ``X`` (n, d) as a feature table with columns ``id, [label], [extra...], f0..f{d-1}``.

    Parquet (``.parquet``) is the written format; ``.csv`` also works when ``extra`` has no numeric
    columns (in CSV they would be read back as features).
    """
    path = Path(path)
    X = np.asarray(X, dtype=np.float64)
    ids = np.asarray(ids).astype(str)
    if X.ndim != 2 or len(X) != len(ids):
        raise ValueError(f"X must be 2-D with one row per id; got shape {X.shape} for {len(ids)} ids")
    if len(set(ids)) != len(ids):
        raise ValueError("ids must be unique")
    df = pd.DataFrame({"id": ids})
    if labels is not None:
        df[LABEL_COLUMN] = pd.Series(labels, dtype="string").to_numpy()
    extra_df = pd.DataFrame(extra).reset_index(drop=True) if extra is not None else pd.DataFrame(index=df.index)
    if len(extra_df) != len(df):
        raise ValueError(f"extra has {len(extra_df)} rows for {len(df)} ids")
    features = [f"{feature_prefix}{j}" for j in range(X.shape[1])]
    clash = set(extra_df.columns) & ({"id", LABEL_COLUMN} | set(features))
    if clash:
        raise ValueError(f"extra columns clash with reserved names: {sorted(clash)}")
    df = pd.concat([df, extra_df, pd.DataFrame(X, columns=features)], axis=1)

    path.parent.mkdir(parents=True, exist_ok=True)
    if path.suffix.lower() == ".csv":
        numeric_extra = [c for c in extra_df.columns if pd.api.types.is_numeric_dtype(extra_df[c])]
        if numeric_extra:
            raise ValueError(f"numeric extra columns {numeric_extra} would read back as features from CSV; "
                             "write Parquet instead")
        df.to_csv(path, index=False, float_format="%.17g")
        return path
    table = pa.Table.from_pandas(df, preserve_index=False)
    metadata = {**(table.schema.metadata or {}), FEATURES_METADATA_KEY: json.dumps(features).encode()}
    pq.write_table(table.replace_schema_metadata(metadata), path)
    return path


def standardise(X: np.ndarray | pd.DataFrame) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Z-score each column; returns (Z, mean, std) with std = 1 where a column is constant.

    Constant columns (e.g. a chroma row of an all-percussion set) become 0 instead of NaN. NaN entries
    are ignored by the statistics and stay NaN in Z.
    """
    X = np.asarray(X, dtype=np.float64)
    if X.ndim != 2:
        raise ValueError(f"expected a 2-D array (n, d), got shape {X.shape}")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN columns: handled just below
        mean, std = np.nanmean(X, axis=0), np.nanstd(X, axis=0)
    mean = np.nan_to_num(mean)
    # Relative threshold: a constant column's float std is ~1e-16 * |value|, not exactly 0.
    std = np.where(std > 1e-12 * np.maximum(np.abs(mean), 1.0), std, 1.0)
    return (X - mean) / std, mean, std


# ---- the feature table of a command (cml evaluate, cluster, playlist, neighbours) ----

def take_rows(table: FeatureTable, rows: np.ndarray) -> FeatureTable:
    """The table's rows ``rows`` (indices, in that order)."""
    return FeatureTable(ids=table.ids[rows], X=table.X[rows], feature_names=table.feature_names,
                        labels=None if table.labels is None else table.labels[rows],
                        meta=table.meta.iloc[rows].reset_index(drop=True))


def check_directions(table: FeatureTable, source: object, *, drop_invalid: bool = False) -> FeatureTable:
    """The table, checked before its rows are L2-normalised: a row of length zero has no direction
    (`l2_normalise` would leave it at the origin, at distance 1 from every unit row, so it would join
    clusters and playlists at random), and a finite row whose squared length overflows float64 (values beyond
    ~1e154) has length inf (scaling would make it zero). They are named in a FeatureTableError, or with
    ``drop_invalid`` dropped and named in the log."""
    with np.errstate(over="ignore"):
        length = np.linalg.norm(table.X, axis=1)
    problems = {"of length zero have no direction to L2-normalise": length == 0,
                "too large to L2-normalise (their squared length overflows float64)": np.isinf(length)}
    bad = np.zeros(len(table.ids), bool)
    for what, rows in problems.items():
        if not rows.any():
            continue
        message = f"{source}: {rows.sum()} rows {what}, ids: {preview(table.ids[rows])}"
        if not drop_invalid:
            raise FeatureTableError(f"{message} (--drop-invalid, or drop_invalid=True, drops them)")
        log.warning("%s: dropped", message)
        bad |= rows
    return take_rows(table, np.flatnonzero(~bad)) if bad.any() else table


def add_table_arguments(p: argparse.ArgumentParser) -> None:
    """The feature-table arguments that `read_cli_table` reads."""
    p.add_argument("file", help="feature table (.parquet or .csv) with an id column and numeric features")
    p.add_argument("--label-column", help=f"column holding the true labels (default: {LABEL_COLUMN}, if present)")
    p.add_argument("--drop-invalid", action="store_true",
                   help="drop rows with NaN/inf, repeated ids or (under L2 scaling) length zero")


def read_cli_table(args: argparse.Namespace, *, l2: bool) -> FeatureTable:
    """The feature table of a command, checked before the work: the file exists, a --label-column given
    is in it (a missing one must not quietly mean "no labels"), and ``l2``: every row has a direction."""
    path = check_input_file(args.file, "feature table")
    table = read_feature_table(path, label_column=args.label_column or LABEL_COLUMN, drop_invalid=args.drop_invalid)
    if args.label_column is not None and table.labels is None:
        raise UsageError(f"--label-column {args.label_column!r}: no such column in {path}")
    return check_directions(table, path, drop_invalid=args.drop_invalid) if l2 else table


def check_at_most(value: int | None, option: str, n: int, what: str) -> None:
    """A count option that the data must hold (k <= rows, ...): a UsageError before the work, not a clamp."""
    if value is not None and value > n:
        raise UsageError(f"{option} {value} is more than the {n} {what}")
