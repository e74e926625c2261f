"""The pretraining pool: free music from eleven pinned Debian packages, none of them the benchmark's (`cml pool`).

Why: an encoder trained on a user's hundred tracks learns little; one pretrained on far more real music can be
shipped and used without training. These packages hold the freely licensed recordings anybody can get
offline, reproducibly: each is pinned to a version, and none is one of the soundtracks benchmark's six
packages (`cml.data.soundtracks`), so a score on the benchmark never measures music the encoder saw.

The machinery is the benchmark's: the .deb cache (``$CML_DEB_CACHE``), ``apt-get download`` of the pinned
version, extraction of only the music (streamed out of ``dpkg-deb --fsys-tarfile``, then out of a zip where a
game packs its music in one), and the same transcoding to mono 16 kHz FLAC. What the pool adds: recordings
shorter than 30 s (jingles, stings) are skipped; known repeats of a recording (a faster version, the same
music under another name) are kept once; every row carries its package's licence, the SHA-256 of its source
and of its FLAC; and a build resumes: a FLAC whose recorded hash and source hash still match is kept.

Output (`build_pool`): ``audio/<package>/<id>.flac``, ``pool.csv`` (one row per recording, sorted),
``skipped.csv`` (source, reason) and ``copyright/<package>`` (each package's debian/copyright: the credits).
The same .deb files give the same bytes, whatever the number of workers or interruptions.
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import shutil
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
import soundfile as sf

from cml.data.soundtracks import (
    CACHE_ENV,
    SOUNDTRACKS,
    drop_duplicates,
    extract_members,
    fetch_deb,
    run_tasks,
    sha256_file,
    try_transcode,
)
from cml.data.sources import slug
from cml.errors import CmlError, UsageError, check_output, count, one_line

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class PoolPackage:
    """One package's music: where it lies in the .deb, which files are recordings, and its licence."""

    package: str
    version: str  # exact Debian version: the pool is pinned to it
    member: str  # the music folder inside the .deb, or the zip that holds it (as dpkg-deb lists it)
    licence: str  # the licences of the music, from the package's debian/copyright
    inner: str = ""  # with a zip `member`: the music folder inside the zip
    files: str = "*.ogg"  # glob of the recordings (the folders also hold credits, playlists, loop points)
    repeats: tuple[tuple[str, str], ...] = ()  # (stem, stem of the recording it repeats)
    variant_suffixes: tuple[str, ...] = ()  # <stem><suffix> beside <stem> repeats it (a faster version)


_STK_FAST = ("_fast", "_f")  # supertuxkart's faster versions of a track (last lap), e.g. farm_f.ogg
# Debian 12 "bookworm" main, architecture all; music folders and licences as each .deb holds them.
POOL: dict[str, PoolPackage] = {p.package: p for p in [
    PoolPackage("ufoai-music", "2.5-2", "./usr/share/games/ufoai/base/0music.pk3",
                "CC-BY-SA-3.0, GPL-2, CC-BY-3.0, PD", inner="music/"),
    PoolPackage("0ad-data", "0.0.26-1", "./usr/share/games/0ad/mods/public/public.zip", "CC-BY-SA-3.0",
                inner="audio/music/"),
    PoolPackage("naev-data", "0.8.2-1", "./usr/share/naev/dat/snd/music",
                "GPL-3/CC-BY-3.0, GPL-2+, GPL-3+, CC-BY-SA-3.0, CC-BY-3.0"),
    PoolPackage("nexuiz-music", "2.5.2-12", "./usr/share/games/nexuiz/data/music.pk3", "GPL-2+",
                inner="sound/cdtracks/"),
    PoolPackage("supertuxkart-data", "1.4+dfsg-2", "./usr/share/games/supertuxkart/data/music",
                "CC-BY-SA-3.0/4.0, GPL-3+, GPL", repeats=(("overworld", "snowmountain"),), variant_suffixes=_STK_FAST),
    PoolPackage("flare-game", "1.14-1", "./usr/share/games/flare/mods/fantasycore/music", "CC-BY-SA-3.0+"),
    PoolPackage("redeclipse-data", "1.6.0-1", "./usr/share/games/redeclipse/data/sounds/music", "CC-BY-SA-3.0"),
    PoolPackage("asc-music", "1.3-6", "./usr/share/games/asc/music", "GPL-2+", files="*.mp3"),
    PoolPackage("ardentryst", "1.71-9", "./usr/share/games/ardentryst/Music", "CC-BY-SA-3.0"),
    PoolPackage("freecol", "1.0.0-1", "./usr/share/games/freecol/default/resources/music/default", "CC-BY-4.0"),
    PoolPackage("lincity-ng-data", "2.9~git20150314-5", "./usr/share/games/lincity-ng/music/default", "GPL-2+"),
]}
# Held out whole for choosing a recipe (their package is the label there, never a training signal): five
# soundtracks of different games and styles, 106 recordings, about a third of the hours.
HELDOUT = ("naev-data", "nexuiz-music", "flare-game", "ardentryst", "redeclipse-data")
BENCHMARK_PACKAGES = frozenset(s.package for s in SOUNDTRACKS.values())
MIN_DURATION = 30.0  # seconds; shorter files are jingles and stings, not music to learn from
POOL_ENV = "CML_POOL_DIR"
COLUMNS = ["id", "path", "label", "split", "duration", "licence", "sha256", "source_sha256", "source"]
SKIPPED_COLUMNS = ["source", "reason"]
JOURNAL = ".journal.jsonl"  # the rows finished so far, one JSON line each; gone when the build completes


def pool_dir() -> Path:
    """The default output folder: ``$CML_POOL_DIR``, else ``~/.cache/cml/pool`` (outside any repository)."""
    return Path(os.environ.get(POOL_ENV) or Path.home() / ".cache" / "cml" / "pool")


def check_packages(specs: list[PoolPackage]) -> None:
    """CmlError when a package is one of the soundtracks benchmark's: the pool must never hold its audio."""
    for spec in specs:
        if spec.package in BENCHMARK_PACKAGES:
            raise CmlError(f"refusing {spec.package}: it is one of the soundtracks benchmark's packages "
                           f"({', '.join(sorted(BENCHMARK_PACKAGES))}); the pool must stay disjoint from the benchmark")


def select(names: list[str] | None) -> list[PoolPackage]:
    """The pinned packages named (all when None); a benchmark package is refused, an unknown one is a UsageError."""
    if names is None:
        return list(POOL.values())
    check_packages([PoolPackage(n, "", "", "") for n in names if n in BENCHMARK_PACKAGES])
    unknown = [n for n in names if n not in POOL]
    if unknown or not names:
        raise UsageError(f"--packages: unknown {unknown} (the pool: {', '.join(POOL)})")
    return [POOL[n] for n in names]


@dataclass(frozen=True)
class PoolTrack:
    """One recording to transcode."""

    id: str
    label: str  # the package
    file: Path  # the extracted source
    source: str  # <package>=<version>:<path inside the .deb, then inside its zip>
    source_sha256: str
    licence: str


def extract(deb: Path, spec: PoolPackage, dest: Path) -> Path:
    """Extract the music of a package (and its debian/copyright) under `dest`; returns the music folder.

    A zip member is extracted, then only its music folder is unzipped out of it and the zip deleted (0ad-data's
    zip holds 3.3 GB, its music a tenth of that)."""
    copyright_file = f"./usr/share/doc/{spec.package}/copyright"
    extract_members(deb, spec.package, (spec.member, copyright_file), dest)
    music = dest / spec.member.removeprefix("./")
    if not spec.inner:
        return music
    folder = dest / "unzipped" / spec.package
    try:
        with zipfile.ZipFile(music) as archive:
            members = [m for m in archive.infolist() if m.filename.startswith(spec.inner) and not m.is_dir()]
            if not members:
                raise CmlError(f"{spec.package}: no {spec.inner} in {spec.member}")
            for member in members:
                archive.extract(member, folder)
    except zipfile.BadZipFile as err:
        raise CmlError(f"{spec.package}: {spec.member} is not a readable zip: {one_line(err)}") from None
    music.unlink()
    return folder / spec.inner


def list_tracks(spec: PoolPackage, folder: Path, root: Path) -> list[PoolTrack]:
    """The recordings of one extracted package, sorted, with their SHA-256. id = ``<package>__<slug of the path in
    its music folder, without extension>``."""
    tracks = []
    for file in sorted(folder.rglob(spec.files)):
        if file.is_file():
            rel = file.relative_to(folder)
            inside = (f"{spec.member.removeprefix('./')}:{spec.inner}{rel.as_posix()}" if spec.inner
                      else file.relative_to(root).as_posix())
            tracks.append(PoolTrack(f"{spec.package}__{slug(rel.with_suffix('').as_posix())}", spec.package, file,
                                    f"{spec.package}={spec.version}:{inside}", sha256_file(file), spec.licence))
    if not tracks:  # a pinned package always has music: its folder or glob is wrong
        raise CmlError(f"{spec.package}: no {spec.files} files in {spec.member} {spec.inner}".rstrip())
    ids = [t.id for t in tracks]
    if len(set(ids)) != len(ids):
        raise CmlError(f"{spec.package}: track ids collide: {sorted({i for i in ids if ids.count(i) > 1})}")
    return tracks


def drop_repeats(tracks: list[PoolTrack], spec: PoolPackage) -> tuple[list[PoolTrack], list[dict]]:
    """(tracks, skip rows): the package's known repeats go, the recording they repeat stays. Why keep one rather
    than group them: in contrastive pretraining every other track of a batch is a negative, and a faster version
    of the same music is a false one; nor should a repeat count twice in the pool's hours."""
    by_stem = {t.file.stem: t for t in tracks}
    original = dict(spec.repeats)
    for stem in by_stem:
        for suffix in spec.variant_suffixes:
            if stem.endswith(suffix) and stem.removesuffix(suffix) in by_stem:
                original[stem] = stem.removesuffix(suffix)
    kept, skipped = [], []
    for track in tracks:
        of = by_stem.get(original.get(track.file.stem, ""))
        if of is not None:
            skipped.append({"source": track.source, "reason": f"repeat of {of.id}"})
        else:
            kept.append(track)
    return kept, skipped


def _row(track: PoolTrack, path: str, duration: float, sha256: str) -> dict:
    """A pool row without its split (set from the held-out packages when the table is written)."""
    return {"id": track.id, "path": path, "label": track.label, "duration": float(duration),
            "licence": track.licence, "sha256": sha256, "source_sha256": track.source_sha256, "source": track.source}


def _transcode_task(task: tuple[PoolTrack, Path, int, float]) -> dict:
    """One pool row, or {'source', 'reason'} when the recording is not used (the build goes on)."""
    track, out_dir, sample_rate, min_duration = task
    dst = out_dir / "audio" / track.label / f"{track.id}.flac"
    n = try_transcode(track.file, dst, sample_rate, track.source)
    if isinstance(n, dict):
        return n
    if n < min_duration * sample_rate:
        dst.unlink()
        return {"source": track.source, "reason": f"too short ({n / sample_rate:.1f} s < {min_duration:g} s)"}
    return _row(track, dst.relative_to(out_dir).as_posix(), round(n / sample_rate, 3), sha256_file(dst))


def finished_rows(out_dir: Path) -> dict[str, dict]:
    """The rows of an earlier build by id: its pool.csv, then the journal of an interrupted one (a torn last line
    is ignored)."""
    rows = {}
    if (out_dir / "pool.csv").is_file():
        table = pd.read_csv(out_dir / "pool.csv", dtype=str, keep_default_na=False)
        rows = {row["id"]: row for row in table.to_dict("records")}
    if (out_dir / JOURNAL).is_file():
        for line in (out_dir / JOURNAL).read_text().splitlines():
            try:
                row = json.loads(line)
            except json.JSONDecodeError:
                continue
            rows[row["id"]] = row
    return rows


def is_finished(track: PoolTrack, row: dict | None, out_dir: Path, sample_rate: int, min_duration: float) -> bool:
    """True when an earlier build made this track's FLAC from the same source, at this sample rate and long enough
    for this build, and the FLAC is still intact."""
    if row is None or row.get("source_sha256") != track.source_sha256 or float(row["duration"]) < min_duration:
        return False
    flac = out_dir / row["path"]
    return flac.is_file() and sf.info(flac).samplerate == sample_rate and sha256_file(flac) == row["sha256"]


def package_tracks(deb: Path, spec: PoolPackage, tmp: Path, out_dir: Path) -> tuple[list[PoolTrack], list[dict]]:
    """(tracks, skip rows) of one package extracted under `tmp`; its debian/copyright goes to out/copyright/."""
    tmp.mkdir(parents=True)
    folder = extract(deb, spec, tmp)
    (out_dir / "copyright").mkdir(exist_ok=True)
    shutil.copyfile(tmp / "usr/share/doc" / spec.package / "copyright", out_dir / "copyright" / spec.package)
    tracks = list_tracks(spec, folder, tmp)
    log.info("%s: %d recordings in %s", spec.package, len(tracks), deb.name)
    return drop_repeats(tracks, spec)


def build_pool(out_dir: str | Path, specs: list[PoolPackage] | None = None, sample_rate: int = 16000,
               workers: int = 2, progress: bool = True, min_duration: float = MIN_DURATION,
               heldout: tuple[str, ...] = HELDOUT) -> pd.DataFrame:
    """Fetch, extract and transcode the pool's packages into `out_dir`; write pool.csv, skipped.csv, copyright/.

    Every .deb is fetched first, so a missing one stops the build before anything is written. A FLAC an earlier
    (or interrupted) build made from the same source, still intact, is kept; each finished track is journaled
    at once, so an interruption loses at most the tracks being transcoded.
    """
    specs = list(POOL.values()) if specs is None else specs
    check_packages(specs)
    debs = {spec.package: fetch_deb(spec.package, spec.version) for spec in specs}
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    earlier = finished_rows(out_dir)
    rows, skipped, tracks = [], [], []
    with tempfile.TemporaryDirectory(prefix="cml-pool-") as tmp:
        for spec in specs:
            found, dropped = package_tracks(debs[spec.package], spec, Path(tmp) / spec.package, out_dir)
            tracks, skipped = tracks + found, skipped + dropped
        tracks, duplicates = drop_duplicates(tracks, digest=lambda t: t.source_sha256)
        skipped += duplicates
        todo = []
        for track in tracks:
            row = earlier.get(track.id)
            if is_finished(track, row, out_dir, sample_rate, min_duration):
                rows.append(_row(track, row["path"], row["duration"], row["sha256"]))
            else:
                todo.append(track)
        log.info("pool: %d tracks kept from an earlier build, %d to transcode", len(rows), len(todo))
        todo.sort(key=lambda t: (-t.file.stat().st_size, t.id))  # longest first: an even load
        tasks = [(track, out_dir, sample_rate, min_duration) for track in todo]
        with open(out_dir / JOURNAL, "a") as journal:
            for result in run_tasks(_transcode_task, tasks, workers, "pool", progress):
                if "reason" in result:
                    log.info("skip %s: %s", result["source"], result["reason"])
                    skipped.append(result)
                else:
                    rows.append(result)
                    journal.write(json.dumps(result) + "\n")
                    journal.flush()
    return _write(out_dir, rows, skipped, heldout)


def _write(out_dir: Path, rows: list[dict], skipped: list[dict], heldout: tuple[str, ...]) -> pd.DataFrame:
    """Write pool.csv and skipped.csv (sorted: the same bytes for the same packages), remove what no row names."""
    table = pd.DataFrame(rows, columns=COLUMNS).sort_values(["label", "id"], ignore_index=True)
    table["split"] = ["heldout" if label in heldout else "train" for label in table["label"]]
    table.to_csv(out_dir / "pool.csv.part", index=False)
    os.replace(out_dir / "pool.csv.part", out_dir / "pool.csv")
    pd.DataFrame(skipped, columns=SKIPPED_COLUMNS).sort_values("source").to_csv(out_dir / "skipped.csv", index=False)
    keep = {out_dir / path for path in table["path"]} | {out_dir / "copyright" / label for label in table["label"]}
    for folder in ("audio", "copyright"):
        for file in sorted((out_dir / folder).rglob("*"), reverse=True):
            if file.is_file() and file not in keep:
                log.info("removing %s: not in this build", file)
                file.unlink()
            elif file.is_dir() and not any(file.iterdir()):
                file.rmdir()
    (out_dir / JOURNAL).unlink(missing_ok=True)
    log.info("pool: %d tracks, %.2f h, %d skipped, in %s", len(table), table["duration"].sum() / 3600,
             len(skipped), out_dir)
    return table


def summary(table: pd.DataFrame) -> pd.DataFrame:
    """Tracks, hours, split and licence per package (the README's credits table)."""
    by = table.groupby("label", sort=False)
    return pd.DataFrame({"tracks": by.size(), "hours": (by["duration"].sum() / 3600).round(2),
                         "split": by["split"].first(), "licence": by["licence"].first()})


def _packages(args: argparse.Namespace) -> list[PoolPackage]:
    return select(args.packages.split(",") if args.packages else None)


def _cmd_fetch(args: argparse.Namespace) -> int:
    for spec in _packages(args):
        print(f"{spec.package}: {fetch_deb(spec.package, spec.version)}")
    return 0


def _cmd_build(args: argparse.Namespace) -> int:
    specs = _packages(args)
    check_output(args.out, folder=True)
    table = build_pool(args.out, specs, args.sample_rate, args.workers)
    print(summary(table).to_string())
    print(f"{len(table)} tracks, {table['duration'].sum() / 3600:.2f} h in {args.out} (pool.csv, skipped.csv)")
    return 0


def register_cli(subparsers) -> None:
    """Add `cml pool fetch|build`."""
    p = subparsers.add_parser("pool")
    actions = p.add_subparsers(dest="pool_command", required=True, metavar="ACTION")
    for name, func, what in [("fetch", _cmd_fetch, f"download the pinned .deb files into ${CACHE_ENV} "
                                                   "(default ~/.cache/cml/debs)"),
                             ("build", _cmd_build, "fetch what is missing, extract the music, transcode it to "
                                                   "16 kHz mono FLAC; resumes an interrupted build")]:
        action = actions.add_parser(name, help=what)
        action.add_argument("--packages", help=f"comma-separated packages (default all: {','.join(POOL)})")
        action.set_defaults(func=func)
        if name == "build":
            action.add_argument("--out", default=str(pool_dir()),
                                help=f"output folder (default ${POOL_ENV} or ~/.cache/cml/pool)")
            action.add_argument("--workers", type=count, default=2, help="transcoding processes")
            action.add_argument("--sample-rate", type=count, default=16000, help="Hz of the FLAC files")
