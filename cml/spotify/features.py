"""Read and check Spotify track-feature CSVs for the DataAnalysis notebook.

The CSVs come from the public Spotify tracks dataset (Kaggle) or from `cml spotify pull`; both share
the column names below. Bad data never raises here: each problem becomes one line in
`SpotifyTable.problems`, the good files and rows are kept, so the notebook always runs and says why
something is missing.
"""

from __future__ import annotations

import logging
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

log = logging.getLogger(__name__)

SPOTIFY_COLUMNS = [
    "track_id", "artists", "album_name", "track_name", "popularity", "duration_ms", "explicit",
    "danceability", "energy", "key", "loudness", "mode", "speechiness", "acousticness",
    "instrumentalness", "liveness", "valence", "tempo", "time_signature", "track_genre",
]
AUDIO_FEATURE_COLUMNS = SPOTIFY_COLUMNS[SPOTIFY_COLUMNS.index("danceability"):SPOTIFY_COLUMNS.index("track_genre")]
NUMERIC_COLUMNS = ["popularity", "duration_ms", *AUDIO_FEATURE_COLUMNS]
REQUIRED_COLUMNS = ["track_id", "artists", "track_name"]  # without these a row names no track
UNKNOWN_GENRE = "unknown"
_EXAMPLES = 3  # row numbers / ids quoted in a problem line


@dataclass
class SpotifyTable:
    """The tracks that passed the checks, and one line per problem met on the way."""

    tracks: pd.DataFrame
    problems: list[str] = field(default_factory=list)


def empty_tracks() -> pd.DataFrame:
    return pd.DataFrame({c: pd.Series(dtype="float64" if c in NUMERIC_COLUMNS else "object")
                         for c in [*SPOTIFY_COLUMNS, "source_file"]})


def load_spotify_csvs(folder: str | Path) -> SpotifyTable:
    """Read every *.csv under `folder` (recursively, in sorted order) into one table."""
    folder = Path(folder)
    if not folder.is_dir():
        return SpotifyTable(empty_tracks(), [f"{folder}: folder does not exist; no Spotify data loaded"])
    paths = sorted(folder.rglob("*.csv"))
    if not paths:
        return SpotifyTable(empty_tracks(), [f"{folder}: no *.csv files found; no Spotify data loaded"])
    problems: list[str] = []
    frames = []
    for path in paths:
        try:
            frame = _read_one(path, folder, problems)
        except Exception as err:  # noqa: BLE001 - the notebook must go on; the reason is reported
            problems.append(f"{path.relative_to(folder)}: skipped, unexpected {type(err).__name__}: {_first_line(err)}")
            frame = None
        if frame is not None and len(frame):
            frames.append(frame)
    if frames:
        tracks = _drop_cross_file_duplicates(pd.concat(frames, ignore_index=True), problems)
        _report_features(tracks, problems)
    else:
        tracks = empty_tracks()
        problems.append(f"{folder}: no usable rows in {len(paths)} CSV file(s)")
    for line in problems:
        log.warning("%s", line)
    return SpotifyTable(tracks.reset_index(drop=True), problems)


def _read_one(path: Path, root: Path, problems: list[str]) -> pd.DataFrame | None:
    """One file -> checked rows, or None (with the reason in `problems`)."""
    name = str(path.relative_to(root))
    try:
        with path.open("rb") as f:
            head = f.read(8192)
    except OSError as err:
        problems.append(f"{name}: skipped, cannot be read ({err.strerror or err})")
        return None
    if b"\x00" in head:
        problems.append(f"{name}: skipped, binary data, not a text CSV")
        return None
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always", pd.errors.ParserWarning)
            df = pd.read_csv(path, dtype=str, on_bad_lines="warn")
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError, ValueError, OSError) as err:
        problems.append(f"{name}: skipped, not a readable CSV ({_first_line(err)})")
        return None
    skipped = sum(str(w.message).count("Skipping line") for w in caught)
    if skipped:
        problems.append(f"{name}: dropped {skipped} line(s) with the wrong number of fields")
    df = _drop_index_column(df)
    if df.empty and len(df.columns):
        problems.append(f"{name}: skipped, header only, no data rows")
        return None
    missing = [c for c in REQUIRED_COLUMNS if c not in df.columns]
    if missing:
        problems.append(f"{name}: skipped, {_missing_reason(df, missing)}")
        return None
    for column in SPOTIFY_COLUMNS:
        if column not in df.columns:
            df[column] = np.nan
    df = _drop_rows_without_id(df, name, problems)
    df = _coerce_numeric(df, name, problems)
    df = _fill_genre(df, name, problems)
    df["explicit"] = df["explicit"].map(_to_bool)
    df["source_file"] = name
    extra = [c for c in df.columns if c not in SPOTIFY_COLUMNS and c != "source_file"]
    return df[[*SPOTIFY_COLUMNS, *extra, "source_file"]]


def _first_line(err: Exception) -> str:
    return (str(err).strip().splitlines() or [type(err).__name__])[0][:200]


def _drop_index_column(df: pd.DataFrame) -> pd.DataFrame:
    """The Kaggle CSV starts with an unnamed index column; it carries no data."""
    if len(df.columns) and (str(df.columns[0]).startswith("Unnamed: ") or str(df.columns[0]).strip() == ""):
        return df.drop(columns=df.columns[0])
    return df


def _missing_reason(df: pd.DataFrame, missing: list[str]) -> str:
    header = ",".join(map(str, df.columns))
    for sep, label in ((";", "';'"), ("\t", "tab"), ("|", "'|'")):
        if len(df.columns) == 1 and sep in header:
            return f"looks {label}-delimited; save it comma-separated"
    return f"missing required column(s) {', '.join(missing)}"


def _drop_rows_without_id(df: pd.DataFrame, name: str, problems: list[str]) -> pd.DataFrame:
    bad = df["track_id"].isna() | (df["track_id"].astype(str).str.strip() == "")
    if bad.any():
        problems.append(f"{name}: dropped {int(bad.sum())} row(s) without a track_id (data rows {_rows(bad)})")
    return df[~bad].copy()


def _coerce_numeric(df: pd.DataFrame, name: str, problems: list[str]) -> pd.DataFrame:
    """Rows with text in a numeric column are dropped: such a row is usually shifted by a stray comma."""
    bad_rows = pd.Series(False, index=df.index)
    for column in NUMERIC_COLUMNS:
        raw = df[column]
        values = pd.to_numeric(raw, errors="coerce")
        bad = raw.notna() & (raw.astype(str).str.strip() != "") & values.isna()
        if bad.any():
            problems.append(f"{name}: {int(bad.sum())} non-numeric value(s) in '{column}' (data rows {_rows(bad)})")
            bad_rows |= bad
        df[column] = values.astype("float64")
    if bad_rows.any():
        problems.append(f"{name}: dropped {int(bad_rows.sum())} row(s) with non-numeric values")
    return df[~bad_rows]


def _fill_genre(df: pd.DataFrame, name: str, problems: list[str]) -> pd.DataFrame:
    missing = df["track_genre"].isna() | (df["track_genre"].astype(str).str.strip() == "")
    if missing.any():
        problems.append(f"{name}: {int(missing.sum())} row(s) without track_genre set to '{UNKNOWN_GENRE}'")
        df.loc[missing, "track_genre"] = UNKNOWN_GENRE
    return df


def _rows(mask: pd.Series) -> str:
    """1-based data-row numbers (header not counted) of the first flagged rows."""
    lines = [str(i + 1) for i in mask[mask].index[:_EXAMPLES]]
    return ", ".join(lines) + (", ..." if int(mask.sum()) > _EXAMPLES else "")


def _to_bool(value: object) -> object:
    text = str(value).strip().lower()
    if text in ("true", "1", "1.0", "yes"):
        return True
    if text in ("false", "0", "0.0", "no"):
        return False
    return np.nan


def _drop_cross_file_duplicates(tracks: pd.DataFrame, problems: list[str]) -> pd.DataFrame:
    """The public dataset repeats a track once per genre inside one file; only repeats across files go."""
    first_file = tracks.groupby("track_id", sort=False)["source_file"].transform("first")
    dup = tracks["source_file"] != first_file
    if dup.any():
        ids = tracks.loc[dup, "track_id"].unique()
        example = ", ".join(map(str, ids[:_EXAMPLES])) + (", ..." if len(ids) > _EXAMPLES else "")
        problems.append(f"dropped {int(dup.sum())} row(s) whose track_id already appeared in an earlier file "
                        f"({len(ids)} id(s): {example})")
    return tracks[~dup]


def _report_features(tracks: pd.DataFrame, problems: list[str]) -> None:
    have = tracks[AUDIO_FEATURE_COLUMNS].notna().any(axis=1)
    if not have.any():
        problems.append("audio-feature columns are empty for every track (Spotify answers 403 on audio "
                        "features for apps created after November 2024); feature analyses are skipped")
    elif not have.all():
        problems.append(f"{int((~have).sum())} of {len(tracks)} track(s) have no audio features")


# ---- analysis helpers the notebook calls; each returns an empty result with a message, never raises ----

def usable_features(df: pd.DataFrame, features: list[str] | None = None, min_rows: int = 2,
                    vary: bool = True) -> list[str]:
    """Feature columns that exist and hold at least `min_rows` numbers (that differ, if `vary`)."""
    features = AUDIO_FEATURE_COLUMNS if features is None else features
    usable = []
    for column in features:
        if column not in df.columns:
            continue
        values = pd.to_numeric(df[column], errors="coerce").dropna()
        if len(values) >= min_rows and (not vary or values.nunique() > 1):
            usable.append(column)
    return usable


def _empty(message: str, columns: list[str] | None = None) -> pd.DataFrame:
    log.info("%s", message)
    out = pd.DataFrame(columns=columns or [])
    out.attrs["message"] = message
    return out


def genre_feature_summary(df: pd.DataFrame, features: list[str] | None = None) -> pd.DataFrame:
    """Tidy per-genre statistics: one row per (track_genre, feature) with n, mean, std, median."""
    columns = ["track_genre", "feature", "n", "mean", "std", "median"]
    if "track_genre" not in df.columns or df.empty:
        return _empty("genre summary skipped: no tracks with a track_genre column", columns)
    usable = usable_features(df, features, min_rows=1, vary=False)
    if not usable:
        return _empty("genre summary skipped: no audio-feature column has data", columns)
    long = df[["track_genre", *usable]].melt(id_vars="track_genre", var_name="feature", value_name="value")
    long["value"] = pd.to_numeric(long["value"], errors="coerce")
    long = long.dropna(subset=["value"])
    stats = (long.groupby(["track_genre", "feature"], sort=True)["value"]
             .agg(n="count", mean="mean", std="std", median="median").reset_index())
    stats.attrs["message"] = f"{stats['track_genre'].nunique()} genre(s) x {len(usable)} feature(s)"
    return stats


def feature_correlations(df: pd.DataFrame, features: list[str] | None = None) -> pd.DataFrame:
    """Pearson correlations between the audio features that have data (square DataFrame)."""
    usable = usable_features(df, features, min_rows=3)
    if len(usable) < 2:
        return _empty(f"correlations skipped: need 2 features with 3+ varying values, have {len(usable)}")
    corr = df[usable].apply(pd.to_numeric, errors="coerce").corr(method="pearson", min_periods=3)
    corr.attrs["message"] = f"{len(usable)} feature(s) over {len(df)} track(s)"
    return corr


def feature_pca(df: pd.DataFrame, n_components: int = 2, seed: int = 0,
                features: list[str] | None = None) -> tuple[pd.DataFrame, np.ndarray]:
    """Standardised PCA of the audio features -> (coords indexed like `df`, explained_variance_ratio).

    Rows with a missing feature are left out (not imputed), so the coordinates only show measured data.
    """
    from sklearn.decomposition import PCA  # imported late: the notebook may never reach the PCA cell

    usable = usable_features(df, features, min_rows=3)
    values = df[usable].apply(pd.to_numeric, errors="coerce").dropna() if usable else pd.DataFrame()
    k = min(n_components, len(usable), len(values) - 1) if len(values) else 0
    if k < 1:
        return _empty(f"PCA skipped: {len(usable)} usable feature(s) and {len(values)} complete row(s)"), np.array([])
    std = values.std(ddof=0).replace(0, 1.0)
    scaled = (values - values.mean()) / std
    pca = PCA(n_components=k, svd_solver="full", random_state=seed)
    coords = pd.DataFrame(pca.fit_transform(scaled.to_numpy()), index=values.index,
                          columns=[f"pc{i + 1}" for i in range(k)])
    if "track_genre" in df.columns:
        coords["track_genre"] = df.loc[values.index, "track_genre"]
    coords.attrs["message"] = f"PCA of {len(usable)} feature(s) over {len(values)} track(s)"
    return coords, pca.explained_variance_ratio_
