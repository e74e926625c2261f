"""A benchmark of real recordings: the freely licensed game soundtracks Debian ships (``corpus.source: soundtracks``).

Why: the default corpus is rendered from scores, so every sound in it comes from one SoundFont. Whether a
representation works on real, produced music can only be seen on real recordings, and these are the
labelled ones anybody can get: six free games' soundtracks, each packaged by Debian at a pinned version
(label = the game; each soundtrack has its own composers, instruments and production).

Per package: find its .deb in the cache (``$CML_DEB_CACHE``, default ``~/.cache/cml/debs``) or fetch it
with ``apt-get download`` (no root needed), check its version, extract only the music folders (not the
whole 1 GB of game data), then transcode every Ogg Vorbis file to mono FLAC (PCM_16) at the pipeline's
sample rate. Whole tracks, no cut, no normalisation (a recording's level is part of it), only scaled down
where the mix would clip. A track that does not decode, or repeats another file byte for byte, is skipped
with its reason in ``skipped.csv``; the build goes on. The same .deb gives byte-identical FLAC files,
whatever the number of workers.

Why 16 kHz mono FLAC and not the Ogg files as they are: the pipeline's front end works at 16 kHz mono, and
decoding 44.1/48 kHz Vorbis again in every stage that reads audio is what makes a real library slow.

This module does not use ``cml.audio.mel`` (the front end): the corpus stage must not depend on it. The pretraining
pool (`cml.data.pool`) is built with its .deb cache, fetching, extraction and transcoding.
"""
from __future__ import annotations

import argparse
import hashlib
import logging
import multiprocessing
import os
import shlex
import subprocess
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import soundfile as sf
import soxr
from tqdm import tqdm

from cml.data.sources import slug
from cml.errors import CmlError, UsageError, one_line

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Soundtrack:
    """One game's music: the Debian package that holds it and where in the .deb it lies."""

    package: str
    version: str  # exact Debian version (epoch included): the corpus is pinned to it
    folders: tuple[str, ...]  # music folders inside the .deb, as dpkg-deb lists them; "*" stands for one folder name


# All six are in Debian 12 "bookworm" main, architecture all.
SOUNDTRACKS: dict[str, Soundtrack] = {
    "supertux": Soundtrack("supertux-data", "0.6.3-2", ("./usr/share/games/supertux2/music",)),  # in sub-folders
    "widelands": Soundtrack("widelands-data", "2:1.1-3", ("./usr/share/games/widelands/data/music",)),
    "hedgewars": Soundtrack("hedgewars-data", "1.0.2-6", ("./usr/share/games/hedgewars/Data/Music",)),
    "extremetuxracer": Soundtrack("extremetuxracer-data", "0.8.2-1", ("./usr/share/games/etr/music",)),
    "megaglest": Soundtrack("megaglest-data", "3.13.0-3", (
        "./usr/share/games/megaglest/data/core/menu/music",
        "./usr/share/games/megaglest/techs/megapack/factions/*/music",
    )),
    "xmoto": Soundtrack("xmoto-data", "0.6.1+repack-9", ("./usr/share/games/xmoto/Textures/Musics",)),
}

MANIFEST_COLUMNS = ["id", "path", "label", "title", "duration", "source"]  # no piece/draw: one recording per row
SKIPPED_COLUMNS = ["source", "reason"]
CACHE_ENV = "CML_DEB_CACHE"
FETCH_COMMAND = ("apt-get", "download")  # + "<package>=<version>", run in the cache folder
MUSIC_SUFFIX = ".ogg"  # the other files in the music folders are credits, playlists, loop points


def check_labels(labels: list[str]) -> None:
    """ValueError naming the unknown labels and the known ones (params.yaml's `corpus.soundtracks`)."""
    unknown = [label for label in labels if label not in SOUNDTRACKS]
    if unknown or not labels:
        raise ValueError(f"corpus.soundtracks: unknown {unknown} (known: {', '.join(SOUNDTRACKS)})")


def deb_cache() -> Path:
    """The folder the .deb files live in: ``$CML_DEB_CACHE``, else ``~/.cache/cml/debs``."""
    return Path(os.environ.get(CACHE_ENV) or Path.home() / ".cache" / "cml" / "debs")


def _run(cmd: list[str], what: str, **kwargs) -> subprocess.CompletedProcess:
    """Run a system tool; a missing tool is a CmlError that says what needs it."""
    try:
        return subprocess.run(cmd, capture_output=True, **kwargs)
    except FileNotFoundError:
        raise CmlError(f"{cmd[0]} not found: {what} needs it (Debian's dpkg and tar)") from None


def deb_fields(path: Path) -> tuple[str, str] | None:
    """(Package, Version) from a .deb's control file (``dpkg-deb -f``); None when it is not a readable .deb."""
    proc = _run(["dpkg-deb", "-f", str(path), "Package", "Version"], "reading a .deb", text=True)
    fields = dict(line.split(": ", 1) for line in proc.stdout.splitlines() if ": " in line)
    if proc.returncode or not {"Package", "Version"} <= set(fields):
        return None
    return fields["Package"], fields["Version"]


def find_deb(package: str, version: str, cache: Path) -> Path | None:
    """The cached .deb of exactly this package and version, checked by its control file, not its name
    (apt names ``2:1.1-3`` ``2%3a1.1-3``; a file of another version may sit beside it)."""
    for path in sorted(cache.glob(f"{package}_*.deb")):
        if deb_fields(path) == (package, version):
            return path
    return None


def fetch(label: str) -> Path:
    """The .deb of a soundtrack, fetched into the cache when it is not there yet."""
    spec = SOUNDTRACKS[label]
    return fetch_deb(spec.package, spec.version)


def fetch_deb(package: str, version: str) -> Path:
    """The .deb of exactly `package` at `version`, fetched into the cache when it is not there yet.

    ``apt-get download`` needs no root, only an apt source that has the pinned version (Debian 12
    bookworm main). Any failure is one CmlError line naming the package and the command to run by hand.
    """
    cache = deb_cache()
    found = find_deb(package, version, cache) if cache.is_dir() else None
    if found:
        return found
    pinned = f"{package}={version}"
    cmd = [*FETCH_COMMAND, pinned]
    by_hand = f"mkdir -p {shlex.quote(str(cache))} && cd {shlex.quote(str(cache))} && {shlex.join(cmd)}"
    hint = f"fetch it by hand (needs an apt source with Debian 12 bookworm main): {by_hand}"
    log.info("fetching %s into %s", pinned, cache)
    try:
        cache.mkdir(parents=True, exist_ok=True)
        proc = subprocess.run(cmd, cwd=cache, capture_output=True, text=True)
    except OSError as err:
        raise CmlError(f"cannot fetch {pinned}: {err.strerror or err} ({cmd[0]}); {hint}") from None
    if proc.returncode:
        lines = [line for line in (proc.stderr + proc.stdout).splitlines() if line.strip()]
        errors = [line for line in lines if line.startswith("E:")] or lines  # apt warns (W:) after its error
        reason = one_line(errors[-1])[:200] if errors else f"exit code {proc.returncode}"
        raise CmlError(f"cannot fetch {pinned}: {shlex.join(cmd)} failed: {reason}; {hint}")
    found = find_deb(package, version, cache)
    if not found:
        raise CmlError(f"cannot fetch {pinned}: {shlex.join(cmd)} left no .deb of that version in {cache}; {hint}")
    return found


def extract_music(deb: Path, spec: Soundtrack, dest: Path) -> None:
    """Extract the music folders of a soundtrack's .deb into `dest`."""
    extract_members(deb, spec.package, spec.folders, dest)


def extract_members(deb: Path, package: str, patterns: tuple[str, ...], dest: Path) -> None:
    """Extract the members of a .deb that match `patterns` into `dest`: ``dpkg-deb --fsys-tarfile | tar -x``
    with the patterns as member names, so only those are written (not the whole 1 GB of game data). A
    pattern the .deb lacks is an error (tar says which)."""
    dpkg = subprocess.Popen(["dpkg-deb", "--fsys-tarfile", str(deb)], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        tar = _run(["tar", "-x", "-C", str(dest), "--no-same-owner", "--wildcards", "--no-wildcards-match-slash",
                    *patterns], "extracting a .deb", stdin=dpkg.stdout, text=True)
    finally:
        dpkg.stdout.close()
        dpkg_err = dpkg.stderr.read().decode(errors="replace")
        dpkg.wait()
    if dpkg.returncode or tar.returncode:
        reason = one_line(dpkg_err if dpkg.returncode else tar.stderr)[:300]
        raise CmlError(f"cannot extract the music of {deb} ({package}): {reason}")


@dataclass(frozen=True)
class Track:
    """One Ogg file to transcode."""

    id: str
    label: str
    file: Path  # the extracted Ogg
    source: str  # <package>=<version>:<path inside the .deb>


def list_tracks(label: str, root: Path) -> list[Track]:
    """The Ogg files of one extracted soundtrack, sorted. id = ``<label>__<slug of the path inside its music
    folder, without extension>``: unique, and never a number."""
    spec = SOUNDTRACKS[label]
    tracks = []
    for pattern in spec.folders:
        for folder in sorted(root.glob(pattern.removeprefix("./"))):
            for file in sorted(folder.rglob("*")):
                if file.is_file() and file.suffix.lower() == MUSIC_SUFFIX:
                    rel = file.relative_to(folder).with_suffix("").as_posix()
                    source = f"{spec.package}={spec.version}:{file.relative_to(root).as_posix()}"
                    tracks.append(Track(f"{label}__{slug(rel)}", label, file, source))
    ids = [t.id for t in tracks]
    if len(set(ids)) != len(ids):
        raise CmlError(f"soundtrack {label!r}: track ids collide: {sorted({i for i in ids if ids.count(i) > 1})}")
    return tracks


def sha256_file(path: Path) -> str:
    """The hex SHA-256 of a file, read in blocks (a track can be tens of MB)."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def drop_duplicates(tracks: list, digest=lambda track: sha256_file(track.file)) -> tuple[list, list[dict]]:
    """(tracks, skip rows): of tracks (with .id, .file, .source) whose files have identical bytes only the first
    by id is kept. Why: one recording under two names (widelands ships menu.ogg again as ingame_14.ogg) could
    land in train and test, and a nearest-neighbour score would count the copy as a hit."""
    first: dict[str, object] = {}
    kept, skipped = [], []
    for track in sorted(tracks, key=lambda t: t.id):
        key = digest(track)
        if key in first:
            skipped.append({"source": track.source, "reason": f"same file as {first[key].id}"})
        else:
            first[key] = track
            kept.append(track)
    return kept, skipped


def transcode(src: Path, dst: Path, sample_rate: int) -> int:
    """Ogg -> mono FLAC PCM_16 at `sample_rate`; returns the number of samples written.

    Mono is the mean of the channels; soxr (high quality) resamples. Nothing is normalised: the track is
    scaled down only where decoding or resampling overshoots 1.0, which PCM_16 could not hold.
    """
    audio, rate = sf.read(src, dtype="float32", always_2d=True)
    if not len(audio):
        raise ValueError("no audio frames")
    mono = audio.mean(axis=1)
    if rate != sample_rate:
        mono = soxr.resample(mono, rate, sample_rate, quality="HQ")
    peak = float(np.abs(mono).max())
    if not np.isfinite(peak):
        raise ValueError("decoded samples are not finite")
    if peak > 1.0:
        mono = mono / peak
    dst.parent.mkdir(parents=True, exist_ok=True)
    part = dst.with_name(dst.name + ".part")  # renamed when complete: an interrupted write leaves no FLAC
    sf.write(part, mono, sample_rate, format="FLAC", subtype="PCM_16")
    os.replace(part, dst)
    return len(mono)


def try_transcode(src: Path, dst: Path, sample_rate: int, source: str) -> int | dict:
    """`transcode`, or {'source', 'reason'} when the file cannot be used (the build goes on without it)."""
    try:
        return transcode(src, dst, sample_rate)
    except Exception as err:  # noqa: BLE001 - one bad file must never stop the build
        dst.unlink(missing_ok=True)
        reason = f"{type(err).__name__}: {err}".replace(str(src), src.name)  # not the temp folder
        return {"source": source, "reason": one_line(reason)[:300]}


def _transcode_task(task: tuple[Track, Path, int]) -> dict:
    """One manifest row, or {'source', 'reason'} when the track cannot be used (the build goes on)."""
    track, out_dir, sample_rate = task
    dst = out_dir / "audio" / track.label / f"{track.id}.flac"
    n = try_transcode(track.file, dst, sample_rate, track.source)
    if isinstance(n, dict):
        return n
    return {"id": track.id, "path": dst.relative_to(out_dir).as_posix(), "label": track.label,
            "title": track.file.stem, "duration": round(n / sample_rate, 3), "source": track.source}


def run_tasks(func, tasks: list, workers: int, desc: str, progress: bool) -> Iterator:
    """`func` over `tasks`, results in the order they finish, with a progress bar; in `workers` spawned processes
    when there is more than one task (the results must not depend on the order)."""
    pool = multiprocessing.get_context("spawn").Pool(workers) if workers > 1 and len(tasks) > 1 else None
    try:
        results = pool.imap_unordered(func, tasks) if pool else map(func, tasks)
        yield from tqdm(results, total=len(tasks), desc=desc, unit="track", disable=not progress)
    finally:
        if pool:
            pool.terminate()  # after the last result nothing is left to run; on an error, stop the rest
            pool.join()


def build_soundtracks(labels: list[str], out_dir: str | Path, sample_rate: int = 16000, workers: int = 2,
                      progress: bool = True) -> pd.DataFrame:
    """Fetch, extract and transcode the soundtracks `labels` into `out_dir`; write manifest.csv and skipped.csv.

    Every .deb is fetched and checked before anything is written, so a missing package stops the build
    with nothing half done. Tracks are transcoded longest first (even load) and each independently, so
    the files do not depend on `workers`.
    """
    check_labels(labels)
    debs = {label: fetch(label) for label in labels}
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    rows, skipped = [], []
    with tempfile.TemporaryDirectory(prefix="cml-soundtracks-") as tmp:
        tracks = []
        for label, deb in debs.items():
            extract_music(deb, SOUNDTRACKS[label], Path(tmp))
            found = list_tracks(label, Path(tmp))
            log.info("%s: %d tracks in %s", label, len(found), deb.name)
            tracks += found
        tracks, duplicates = drop_duplicates(tracks)
        skipped += duplicates
        tracks.sort(key=lambda t: (-t.file.stat().st_size, t.id))
        tasks = [(track, out_dir, sample_rate) for track in tracks]
        for result in run_tasks(_transcode_task, tasks, workers, "soundtracks", progress):
            if "reason" in result:
                log.info("skip %s: %s", result["source"], result["reason"])
                skipped.append(result)
            else:
                rows.append(result)
    manifest = pd.DataFrame(rows, columns=MANIFEST_COLUMNS).sort_values(["label", "id"], ignore_index=True)
    manifest.to_csv(out_dir / "manifest.csv", index=False)
    skipped = pd.DataFrame(skipped, columns=SKIPPED_COLUMNS).sort_values("source", ignore_index=True)
    skipped.to_csv(out_dir / "skipped.csv", index=False)
    log.info("soundtracks: %d tracks, %d skipped, %.2f h of audio in %s",
             len(manifest), len(skipped), manifest["duration"].sum() / 3600, out_dir)
    return manifest


def _cmd_fetch(args: argparse.Namespace) -> int:
    labels = args.labels.split(",") if args.labels else list(SOUNDTRACKS)
    try:
        check_labels(labels)
    except ValueError as err:
        raise UsageError(str(err).replace("corpus.soundtracks", "--labels")) from None
    for label in labels:
        print(f"{label}: {fetch(label)}")
    return 0


def register_cli(subparsers) -> None:
    p = subparsers.add_parser("soundtracks")
    actions = p.add_subparsers(dest="soundtracks_command", required=True, metavar="ACTION")
    fetch_p = actions.add_parser(
        "fetch", help=f"download the pinned .deb files into ${CACHE_ENV} (default ~/.cache/cml/debs), "
                      "so that the corpus stage needs no network")
    fetch_p.add_argument("--labels", help=f"comma-separated soundtracks (default all: {','.join(SOUNDTRACKS)})")
    fetch_p.set_defaults(func=_cmd_fetch)
