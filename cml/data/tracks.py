"""The track table: which audio the pipeline runs on, with labels, metadata and a train/val/test split.

The pipeline runs on the user's own audio when `data/audio` holds any, else on the rendered default corpus
(`source: auto`). Every later stage reads `tracks.csv` instead of walking folders again, so a file that was
skipped here (with its reason in `skipped.csv`) is skipped everywhere.
"""
from __future__ import annotations

import argparse
import logging
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from cml.data.scan import scan_audio, write_skip_report
from cml.data.sources import resolve_audio_dir
from cml.data.split import split_tracks
from cml.errors import CmlError, check_output
from cml.params import Study, load_config
from cml.tables import TRACK_TEXT_COLUMNS, read_csv_text_ids

log = logging.getLogger(__name__)

# Columns of the corpus manifest carried over into the track table, those it has: the rendered music21 corpus
# has all; the soundtracks corpus (real recordings, one per row) only title and source, so its tracks have no
# `piece` column and are split and paired as single recordings.
MANIFEST_COLUMNS = ("piece", "draw", "composer", "title", "source", "programs")


@dataclass
class TracksConfig:
    min_duration: float = 2.0  # seconds; shorter files are skipped with a reason
    silence_db: float = -60.0  # files whose peak stays below this (dBFS) are skipped as silent
    train: float = 0.7  # split fractions, by track, stratified by label
    val: float = 0.15
    test: float = 0.15
    seed: int = 0


def attach_manifest(tracks: pd.DataFrame, corpus_dir: Path) -> pd.DataFrame:
    """Add the corpus manifest's metadata (title, source, and for rendered pieces piece, draw, composer and
    programs) to the tracks, matched by file path."""
    manifest_path = corpus_dir / "manifest.csv"
    if not manifest_path.is_file():
        log.warning("no corpus manifest at %s: tracks keep their folder labels only", manifest_path)
        return tracks
    manifest = read_csv_text_ids(manifest_path, TRACK_TEXT_COLUMNS)
    manifest["path"] = [str((corpus_dir / p).resolve()) for p in manifest["path"]]
    keep = ["path", *[c for c in MANIFEST_COLUMNS if c in manifest.columns]]
    resolved = tracks["path"].map(lambda p: str(Path(p).resolve()))
    merged = tracks.assign(_resolved=resolved).merge(
        manifest[keep].rename(columns={"path": "_resolved"}), on="_resolved", how="left"
    )
    return merged.drop(columns="_resolved")


def portable_path(path: str | Path) -> str:
    """A path relative to the working directory (the repo root in the pipeline) when it lies inside it,
    so that the track table is the same in every clone; absolute otherwise."""
    resolved = Path(path).resolve()
    try:
        return resolved.relative_to(Path.cwd().resolve()).as_posix()
    except ValueError:
        return str(resolved)


def build_tracks(
    config: TracksConfig, corpus_dir: Path, data_dir: Path, audio: str = "auto", progress: bool = True
) -> tuple[pd.DataFrame, pd.DataFrame, str]:
    """Scan the audio folder `audio` (a `study.audio` value) selects; return (tracks with split, skipped files,
    source used)."""
    source, audio_dir = resolve_audio_dir(audio, corpus_dir, data_dir)
    log.info("reading audio from %s (source: %s)", audio_dir, source)
    scan = scan_audio(
        audio_dir, min_duration=config.min_duration, silence_db=config.silence_db, progress=progress
    )
    tracks = scan.tracks
    if source == "corpus":
        tracks = attach_manifest(tracks, corpus_dir)
    tracks["path"] = tracks["path"].map(portable_path)
    if tracks.empty:
        tracks["split"] = pd.Series(dtype=str)
        return tracks, scan.skipped, source
    fractions = {"train": config.train, "val": config.val, "test": config.test}
    group_col = "piece" if "piece" in tracks.columns else None
    tracks["split"] = split_tracks(tracks, fractions, seed=config.seed, group_col=group_col)
    return tracks, scan.skipped, source


def _cmd_tracks(args: argparse.Namespace) -> int:
    config = load_config(args.params, "tracks", TracksConfig)
    study = load_config(args.params, "study", Study)
    out = check_output(args.out, folder=True)
    tracks, skipped, source = build_tracks(config, Path(args.corpus), Path(args.data), study.audio)
    tracks.to_csv(out / "tracks.csv", index=False)
    write_skip_report(skipped, out / "skipped.csv")
    log.info(
        "%d tracks from %s (%s), %d files skipped (reasons in %s)",
        len(tracks), source, tracks["split"].value_counts().to_dict(), len(skipped),
        out / "skipped.csv",
    )
    if tracks.empty:
        raise CmlError(f"no usable audio found; the reason for each file is in {out / 'skipped.csv'}")
    return 0


def register_cli(subparsers) -> None:
    p = subparsers.add_parser("tracks")
    p.add_argument("--params", default="params.yaml", help="reads its tracks and study sections")
    p.add_argument("--corpus", default="outputs/corpus", help="rendered default corpus folder")
    p.add_argument("--data", default="data", help="user data folder (audio under data/audio)")
    p.add_argument("--out", default="outputs/tracks")
    p.set_defaults(func=_cmd_tracks)
