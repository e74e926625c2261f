"""A playlist as a file: M3U8 (extended, UTF-8, relative paths) or CSV, one row per track in play order.
"""
from __future__ import annotations

import logging
import os
import unicodedata
from pathlib import Path
from typing import Sequence

import numpy as np
import pandas as pd

from cml.playlist.hull import PlaylistError
from cml.tables import FeatureTable

log = logging.getLogger(__name__)
URI_COLUMNS = ("spotify_uri", "uri")
TITLE_COLUMNS = ("title", "track_name", "name")
DURATION_COLUMNS = ("duration", "seconds", "duration_s")
FORMATS = (".m3u8", ".m3u", ".csv")


def _first(meta: pd.DataFrame, names: Sequence[str]) -> str | None:
    return next((c for c in names if c in meta.columns), None)


def playlist_frame(table: FeatureTable, X: np.ndarray, order: Sequence[int]) -> pd.DataFrame:
    """One row per track in play order: id, position, path, distance_to_previous, then label, title,
    duration and spotify_uri where the table has them."""
    order = np.asarray(order, dtype=np.int64)
    meta = table.meta.iloc[order].reset_index(drop=True)
    step = np.r_[np.nan, np.linalg.norm(np.diff(X[order], axis=0), axis=1)]
    frame = pd.DataFrame({"id": table.ids[order], "position": np.arange(1, len(order) + 1),
                          "path": meta["path"] if "path" in meta else None, "distance_to_previous": step})
    if table.labels is not None:
        frame["label"] = table.labels[order]
    title = _first(meta, TITLE_COLUMNS)
    if title:
        frame["title"] = meta[title]
        if "artists" in meta:
            frame["title"] = meta["artists"].astype(str) + " - " + meta[title].astype(str)
    duration = _first(meta, DURATION_COLUMNS)
    if duration:
        frame["duration"] = pd.to_numeric(meta[duration], errors="coerce")
    uri = _first(meta, URI_COLUMNS)
    if uri:
        frame["spotify_uri"] = meta[uri]
    return frame


def _breaks_line(c: str) -> bool:
    """A control character (\\n, \\r, NUL, ...) or a line/paragraph separator: in an M3U line it could end
    the line, and the text after it would read as another entry."""
    return unicodedata.category(c) in ("Cc", "Zl", "Zp")


def write_m3u8(frame: pd.DataFrame, path: str | Path) -> Path:
    """Extended M3U (UTF-8) of the local files; relative paths are rewritten relative to the playlist's folder.

    Tracks without a path are left out with a warning (they have nothing to play). One entry per track
    whatever the names hold: control characters in a title become spaces; a path with one is written as a
    percent-encoded ``file://`` URI (which players resolve), and one starting with ``#`` as ``./#...`` (not a comment).
    """
    path = Path(path)
    lines = ["#EXTM3U"]
    missing = []
    for row in frame.itertuples(index=False):
        track = getattr(row, "path", None)
        if not isinstance(track, str) or not track:
            missing.append(str(row.id))
            continue
        seconds = getattr(row, "duration", None)
        seconds = int(round(seconds)) if seconds is not None and np.isfinite(seconds) else -1
        title = getattr(row, "title", None)
        title = title if isinstance(title, str) and title else str(row.id)
        title = "".join(" " if _breaks_line(c) else c for c in title)
        if any(map(_breaks_line, track)):  # no plain line can hold it (and a NUL cannot even be resolved)
            location = Path(os.path.abspath(track)).as_uri()
        else:
            location = track if os.path.isabs(track) else os.path.relpath(Path(track).resolve(), path.parent.resolve())
            location = f"./{location}" if location.startswith("#") else location
        lines += [f"#EXTINF:{seconds},{title}", location]
    if missing:
        log.warning("%s: %d track(s) without a path left out: %s", path, len(missing), ", ".join(missing[:10]))
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def playlist_format(path: str | Path) -> str:
    """The format of a playlist file, by its suffix (checked before the playlist is built)."""
    suffix = Path(path).suffix.lower()
    if suffix not in FORMATS:
        raise PlaylistError(f"unknown playlist format {suffix!r} for {path}; use .m3u8 or .csv")
    return suffix


def write_playlist(frame: pd.DataFrame, path: str | Path) -> Path:
    """Write the playlist as M3U8 (``.m3u8``/``.m3u``) or CSV (``.csv``), by the file's suffix."""
    path = Path(path)
    if playlist_format(path) != ".csv":
        return write_m3u8(frame, path)
    path.parent.mkdir(parents=True, exist_ok=True)
    frame.to_csv(path, index=False, float_format="%.6g")
    return path
