"""Find usable audio files under a folder tree and say why every other file was skipped (`cml scan`).

Every file is decoded completely, in blocks, because a header can look fine while the data is truncated or
corrupt (headers only for `cml embed AUDIO_DIR`, which decodes each file once and reports what fails there). This module imports no torch, so `cml scan` starts in a fraction of a second; the tracks stage
(`cml.data.tracks`) and `cml embed AUDIO_DIR` scan through it too.
"""

from __future__ import annotations

import argparse
import logging
import math
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import soundfile as sf

from cml.audio.files import iter_frames, open_audio
from cml.errors import UsageError, check_output, finite, one_line, positive
from cml.progress import tqdm

log = logging.getLogger(__name__)

AUDIO_EXTENSIONS = (".wav", ".wave", ".flac", ".ogg", ".oga", ".opus", ".mp3", ".aif", ".aiff")

_BLOCK_FRAMES = 1 << 16  # frames per read while scanning: bounded memory for any track length
# mpg123's idea of the length can be off by an MPEG frame or two (encoder delay and padding), so
# only a larger shortfall counts as truncation.
_MP3_LENGTH_SLACK = 2 * 1152
# Valid Ogg Vorbis/Opus files often decode short of the length their header promises: a few ms (the
# last page's granule position counts samples that end trimming removes), or a few packets (a real
# release that every player plays in full decodes 5,806 frames, 0.13 s, short). Real truncation (a
# download or copy cut off) loses much more, so a shortfall up to 0.1 s plus 1 % of the header's
# length is accepted (and noted in the log): the absolute part covers short files, the relative part
# long ones, and what 1 % of a track could lose does not change what the track sounds like.
_OGG_LENGTH_SLACK_SECONDS = 0.1
_OGG_LENGTH_SLACK_FRACTION = 0.01
# libsndfile's messages when it cannot tell the data apart from any format it knows (for an .mp3 it
# says "does not exist" even for a regular file); the scan reports such a file as "not audio".
_NOT_AUDIO_ERRORS = ("not recognised", "does not exist", "unknown format", "unsupported format")


@dataclass
class ScanResult:
    """What `scan_audio` found: usable tracks and every file it skipped, with the reason."""

    tracks: pd.DataFrame  # id, path, label, duration, sample_rate, channels, format
    skipped: pd.DataFrame  # SKIP_COLUMNS; id is empty: a skipped file never became a track


TRACK_COLUMNS = ["id", "path", "label", "duration", "sample_rate", "channels", "format"]
SKIP_COLUMNS = ["id", "path", "reason"]  # every skip report of tracks: scan, features, training, embedding


def _walk(root: Path, skip: list[dict]) -> list[Path]:
    """Sorted candidate files under root, following symlinks but never into a folder twice.

    Unreadable folders and folders reached a second time (a symlink loop or a second link to the
    same folder) are recorded in `skip`. Hidden files and folders (name starting with '.') are
    ignored silently: they are OS or tool metadata (.DS_Store, ._AppleDouble, .git), not music.
    """

    def on_error(err: OSError) -> None:
        skip.append({"path": str(err.filename), "reason": f"unreadable folder: {err.strerror}"})

    seen: set[tuple[int, int]] = set()
    files = []
    for folder, dirs, names in os.walk(root, onerror=on_error, followlinks=True):
        st = os.stat(folder)
        if (st.st_dev, st.st_ino) in seen:
            skip.append({"path": folder, "reason": "folder already scanned (symlink loop or duplicate link)"})
            dirs[:] = []
            continue
        seen.add((st.st_dev, st.st_ino))
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        files += [Path(folder) / n for n in sorted(names) if not n.startswith(".")]
    return files


def length_slack(fmt: str, sample_rate: int, frames: int = 0) -> int:
    """Frames a complete file of this format ("OGG", "MP3", or "OGG/VORBIS" as in the `format` column) may
    decode short of the `frames` its header counts."""
    container = fmt.split("/")[0]
    if container == "MP3":
        return _MP3_LENGTH_SLACK
    if container == "OGG":
        return round(_OGG_LENGTH_SLACK_SECONDS * sample_rate + _OGG_LENGTH_SLACK_FRACTION * frames)
    return 0


def _probe(path: Path, min_duration: float, silence_db: float, decode: bool = True) -> dict | str:
    """Track metadata after decoding the whole file in blocks (only its header: `decode=False`), or the one-line
    reason to skip it."""
    if path.suffix.lower() not in AUDIO_EXTENSIONS:
        return f"not an audio file (extension {path.suffix or 'none'!r})"
    if not path.exists():
        return "broken symlink" if path.is_symlink() else "no such file (gone since the folder was listed)"
    if path.stat().st_size == 0:
        return "empty file (0 bytes)"
    if not os.access(path, os.R_OK):
        return "unreadable: permission denied"
    if any(ord(c) < 32 or ord(c) == 127 for c in str(path)):
        return "file name holds a control character (newline, tab, ...): rename the file"
    try:
        with open_audio(path) as f:
            if f.frames == 0:
                return "no audio frames"
            if f.frames < min_duration * f.samplerate:
                return f"too short ({f.frames / f.samplerate:.2f} s < {min_duration} s)"
            meta = {"sample_rate": f.samplerate, "channels": f.channels, "format": f"{f.format}/{f.subtype}"}
            if not decode:
                return {"duration": f.frames / f.samplerate, **meta}
            decoded, peak = 0, 0.0
            try:
                for block in iter_frames(f, _BLOCK_FRAMES):
                    decoded += len(block)
                    block_peak = float(np.abs(block).max())  # NaN or inf when any sample is
                    if not math.isfinite(block_peak):
                        first = decoded - len(block) + int(np.flatnonzero(~np.isfinite(block).all(axis=1))[0])
                        return f"non-finite samples (NaN or inf), the first at {first / f.samplerate:.3f} s"
                    peak = max(peak, block_peak)
            except sf.LibsndfileError as err:
                return f"corrupt or truncated: {err.error_string.strip()} after {decoded} of {f.frames} frames"
            if decoded < f.frames - length_slack(f.format, f.samplerate, f.frames):
                return f"truncated: decoded {decoded} of {f.frames} frames"
            if decoded < f.frames:
                log.info("kept %s: decoded %d of the %d frames in its header (%.2f s short, within the %s tolerance)",
                         path, decoded, f.frames, (f.frames - decoded) / f.samplerate, f.format)
    except sf.LibsndfileError as err:
        message = err.error_string.strip()
        if any(m in message.lower() for m in _NOT_AUDIO_ERRORS):
            return f"not audio: no audio format recognised in the data ({message})"
        return f"cannot decode: {message}"
    except (OSError, RuntimeError) as err:
        return f"cannot decode: {err}"
    duration = decoded / meta["sample_rate"]
    if duration < min_duration:
        return f"too short ({duration:.2f} s < {min_duration} s)"
    peak_db = 20 * math.log10(peak) if peak > 0 else -math.inf
    if peak_db < silence_db:
        return f"silent (peak {peak_db:.1f} dBFS < {silence_db} dBFS)"
    return {"duration": duration, **meta}


def scan_audio(
    root: str | os.PathLike,
    *,
    min_duration: float = 1.0,
    silence_db: float = -60.0,
    progress: bool = True,
    decode: bool = True,
) -> ScanResult:
    """Find every usable audio file under `root` and say why each other file was skipped.

    Each file is decoded completely (in blocks, so memory stays small) because a header can look fine
    while the data is truncated or corrupt; `decode=False` reads headers only, for a caller that decodes
    every file anyway and reports what fails there (`cml embed AUDIO_DIR`). Tracks get `id` = path relative to root without extension
    (posix), `label` = first sub-folder under root (None for files directly in root), and `duration`
    in seconds as decoded. Files whose id is already taken (same name, other extension) are skipped.
    Hidden files and folders are ignored without a report (see `_walk`). Truncated WAV and Ogg files
    cannot be told from shorter ones (their length comes from the data), so they are kept.
    """
    root = Path(root).absolute()
    if not root.is_dir():
        raise NotADirectoryError(f"audio folder not found: {root}")
    skipped: list[dict] = []
    tracks: list[dict] = []
    ids: dict[str, Path] = {}
    for path in tqdm(_walk(root, skipped), desc="scan audio", unit="file", disable=not progress):
        rel = path.relative_to(root)
        track_id = rel.with_suffix("").as_posix()
        result = _probe(path, min_duration, silence_db, decode)
        if isinstance(result, dict) and track_id in ids:
            result = f"duplicate id {track_id!r} (already taken by {ids[track_id].name})"
        if isinstance(result, str):
            skipped.append({"path": str(path), "reason": one_line(result)})
            continue
        ids[track_id] = path
        label = rel.parts[0] if len(rel.parts) > 1 else None
        tracks.append({"id": track_id, "path": str(path), "label": label, **result})
    for row in skipped:
        log.info("skipped %s: %s", row["path"], row["reason"])
    if skipped:
        log.warning("scan of %s: %d tracks, %d files skipped", root, len(tracks), len(skipped))
    return ScanResult(
        tracks=pd.DataFrame(tracks, columns=TRACK_COLUMNS).sort_values("id", ignore_index=True),
        skipped=pd.DataFrame(skipped, columns=SKIP_COLUMNS).sort_values("path", ignore_index=True).astype({"id": object}),
    )


def write_skip_report(skipped: pd.DataFrame, path: str | os.PathLike) -> None:
    """Write the skipped files as CSV (SKIP_COLUMNS), one line per file; the header even if none."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    skipped[SKIP_COLUMNS].to_csv(path, index=False)


# --------------------------------------------------------------------------------------------------
# CLI


def _cmd_scan(args: argparse.Namespace) -> int:
    if not Path(args.audio_dir).is_dir():
        raise UsageError(f"audio folder not found: {args.audio_dir}")
    for out in (args.report, args.out):
        if out:
            check_output(out)
    result = scan_audio(args.audio_dir, min_duration=args.min_duration, silence_db=args.silence_db)
    write_skip_report(result.skipped, args.report)
    if args.out:
        result.tracks.to_csv(args.out, index=False)
    hours = result.tracks["duration"].sum() / 3600
    print(f"{len(result.tracks)} tracks ({hours:.2f} h), {len(result.skipped)} skipped (see {args.report})")
    return 0


def register_cli(subparsers) -> None:
    """Add `cml scan AUDIO_DIR --report skipped.csv [--out tracks.csv]`."""
    p = subparsers.add_parser("scan")
    p.add_argument("audio_dir", help="folder tree of audio files; first sub-folder = label")
    p.add_argument("--report", required=True, help="CSV of skipped files (path, reason)")
    p.add_argument("--out", help="CSV of usable tracks (id, path, label, duration, ...)")
    p.add_argument("--min-duration", type=positive, default=1.0, help="seconds; shorter files are skipped")
    p.add_argument("--silence-db", type=finite, default=-60.0, help="dBFS; files whose peak is lower are skipped")
    p.set_defaults(func=_cmd_scan)
