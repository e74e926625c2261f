"""The pretraining pool (`cml.data.pool`) on two tiny fake .deb files built here with dpkg-deb: no network. ``gamma-music``
has its recordings in a folder, with a jingle under 30 s, a corrupt file and known repeats; ``delta-data`` packs
them in a zip inside the .deb."""
from __future__ import annotations

import hashlib
import io
import json
import zipfile
from pathlib import Path

import pandas as pd
import pytest
import soundfile as sf

from cml.cli import main
from cml.data import pool, soundtracks
from cml.data.pool import COLUMNS, JOURNAL, POOL, PoolPackage, build_pool
from cml.errors import CmlError
from tests.helpers import make_deb, ogg

GAMMA = PoolPackage("gamma-music", "1.0-1", "./usr/share/games/gamma/music", "CC-BY-SA-3.0",
                    repeats=(("overworld", "snow"),), variant_suffixes=("_fast", "_f"))
DELTA = PoolPackage("delta-data", "2:0.5-1", "./usr/share/games/delta/data/music.pk3", "GPL-2+", inner="sound/tracks/")
SPECS = [GAMMA, DELTA]
RATE = 8000  # small sources: 30 s of audio each, encoded in milliseconds


def tone(seconds: float, freq: float) -> bytes:
    return ogg(seconds, RATE, 1, freq)


GAMMA_FILES = {  # name: Ogg bytes
    "snow.ogg": tone(32, 330), "overworld.ogg": tone(33, 340),  # overworld repeats snow (declared)
    "farm.ogg": tone(31, 440), "farm_f.ogg": tone(30.5, 460),  # a faster version of farm
    "solo_f.ogg": tone(31, 550),  # the suffix, but nothing it could repeat: kept
    "jingle.ogg": tone(29, 600), "broken.ogg": b"OggS" + bytes(range(256)) * 8,
}
DELTA_ZIP = {"sound/tracks/a.ogg": tone(31, 220), "sound/tracks/sub/b.ogg": tone(34, 250),
             "sound/other/c.ogg": tone(31, 280)}  # outside the music folder
COPYRIGHT = "Files: *\nCopyright: 2020 A. Composer\nLicense: CC-BY-SA-3.0\n"


def pk3(files: dict[str, bytes]) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as archive:
        for name, data in files.items():
            archive.writestr(zipfile.ZipInfo(name, (2020, 1, 1, 0, 0, 0)), data)
    return buf.getvalue()


@pytest.fixture(scope="module")
def debs(tmp_path_factory) -> Path:
    cache = tmp_path_factory.mktemp("debs")
    make_deb(cache, "gamma-music", "1.0-1", {
        **{f"usr/share/games/gamma/music/{name}": data for name, data in GAMMA_FILES.items()},
        "usr/share/games/gamma/music/credits.txt": b"music by somebody\n",
        "usr/share/games/gamma/levels/one.ogg": tone(31, 700),  # not in the music folder
        "usr/share/doc/gamma-music/copyright": COPYRIGHT.encode()})
    make_deb(cache, "delta-data", "2:0.5-1", {
        "usr/share/games/delta/data/music.pk3": pk3(DELTA_ZIP),
        "usr/share/doc/delta-data/copyright": b"Files: *\nLicense: GPL-2+\n"})
    return cache


@pytest.fixture(autouse=True)
def fake(debs, monkeypatch) -> Path:
    monkeypatch.setenv(soundtracks.CACHE_ENV, str(debs))
    monkeypatch.setattr(soundtracks, "FETCH_COMMAND", ("false",))  # any fetch would fail: the cache must be used
    return debs


def build(out: Path, workers: int = 1) -> pd.DataFrame:
    return build_pool(out, SPECS, workers=workers, progress=False, heldout=("delta-data",))


@pytest.fixture(scope="module")
def built(debs, tmp_path_factory):
    out = tmp_path_factory.mktemp("pool")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv(soundtracks.CACHE_ENV, str(debs))
        return build(out), out


def files_of(folder: Path) -> dict[str, bytes]:
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def test_the_table_lists_each_recording_once_as_16k_mono_flac_with_hashes_licence_and_split(built):
    table, out = built
    assert list(table.columns) == COLUMNS
    assert table["id"].tolist() == ["delta-data__a", "delta-data__sub-b", "gamma-music__farm", "gamma-music__snow",
                                    "gamma-music__solo-f"]
    assert table["split"].tolist() == ["heldout"] * 2 + ["train"] * 3  # whole packages held out
    assert table["licence"].tolist() == ["GPL-2+"] * 2 + ["CC-BY-SA-3.0"] * 3
    assert table.loc[0, "source"] == "delta-data=2:0.5-1:usr/share/games/delta/data/music.pk3:sound/tracks/a.ogg"
    assert table.loc[2, "source"] == "gamma-music=1.0-1:usr/share/games/gamma/music/farm.ogg"
    sources = {**{f"sound/tracks/{k}": DELTA_ZIP[f"sound/tracks/{k}"] for k in ("a.ogg", "sub/b.ogg")},
               **{k: GAMMA_FILES[k] for k in ("farm.ogg", "snow.ogg", "solo_f.ogg")}}
    assert table["source_sha256"].tolist() == [hashlib.sha256(b).hexdigest() for b in sources.values()]
    for row, seconds in zip(table.itertuples(), [31, 34, 31, 32, 31]):
        assert row.path == f"audio/{row.label}/{row.id}.flac"
        info = sf.info(out / row.path)
        assert (info.format, info.subtype, info.samplerate, info.channels) == ("FLAC", "PCM_16", 16000, 1)
        assert row.duration == pytest.approx(seconds, abs=0.01) == info.frames / 16000
        assert row.sha256 == hashlib.sha256((out / row.path).read_bytes()).hexdigest()
    assert (out / "copyright" / "gamma-music").read_text() == COPYRIGHT  # the credits travel with the audio
    assert sorted(files_of(out)) == sorted([*table["path"], "pool.csv", "skipped.csv", "copyright/gamma-music",
                                            "copyright/delta-data"])  # no journal, nothing else extracted
    assert pd.read_csv(out / "pool.csv", keep_default_na=False).equals(table)


def test_jingles_corrupt_files_and_known_repeats_are_skipped_with_their_reason(built):
    _, out = built
    skipped = pd.read_csv(out / "skipped.csv").set_index("source")["reason"]
    skipped.index = skipped.index.str.rsplit("/", n=1).str[-1]
    assert sorted(skipped.index) == ["broken.ogg", "farm_f.ogg", "jingle.ogg", "overworld.ogg"]
    assert skipped["overworld.ogg"] == "repeat of gamma-music__snow"
    assert skipped["farm_f.ogg"] == "repeat of gamma-music__farm"
    assert skipped["jingle.ogg"] == "too short (29.0 s < 30 s)"
    assert skipped["broken.ogg"].startswith("LibsndfileError") and "cml-pool-" not in skipped["broken.ogg"]


def test_a_second_build_with_two_workers_gives_the_same_bytes(built, tmp_path):
    _, first = built
    build(tmp_path, workers=2)
    assert files_of(tmp_path) == files_of(first)


REAL_TRANSCODE = soundtracks.transcode  # the real one, also when a test patches twice


def interrupt_after(monkeypatch, n: int, done: list[str]) -> None:
    """Make the build's transcoding record what it transcodes, and stop the build (Ctrl-C) at call n + 1."""

    def transcode(src, dst, rate):
        if len(done) == n:
            raise KeyboardInterrupt
        done.append(Path(dst).stem)
        return REAL_TRANSCODE(src, dst, rate)

    monkeypatch.setattr(soundtracks, "transcode", transcode)


def test_an_interrupted_build_resumes_without_redoing_finished_files(built, tmp_path, monkeypatch):
    first_done: list[str] = []
    interrupt_after(monkeypatch, 2, first_done)
    with pytest.raises(KeyboardInterrupt):
        build(tmp_path)
    assert not (tmp_path / "pool.csv").exists()
    assert [json.loads(line)["id"] for line in (tmp_path / JOURNAL).read_text().splitlines()] == first_done
    with open(tmp_path / JOURNAL, "a") as journal:
        journal.write('{"id": "gamma-music__torn", "pa')  # a line cut by the interruption
    again: list[str] = []
    interrupt_after(monkeypatch, 99, again)
    build(tmp_path)
    assert not set(again) & set(first_done) and len(first_done) == 2
    assert sorted(first_done + again) == sorted([*built[0]["id"], "gamma-music__jingle", "gamma-music__broken"])
    assert files_of(tmp_path) == files_of(built[1])  # the same bytes as one uninterrupted build


def test_a_complete_build_redoes_only_a_flac_whose_hash_no_longer_matches(built, tmp_path, monkeypatch):
    build(tmp_path)
    flac = tmp_path / "audio/gamma-music/gamma-music__snow.flac"
    flac.write_bytes(flac.read_bytes()[:-100])  # a damaged file
    done: list[str] = []
    interrupt_after(monkeypatch, 99, done)
    build(tmp_path)
    assert sorted(done) == ["gamma-music__broken", "gamma-music__jingle", "gamma-music__snow"]  # skips are retried
    assert files_of(tmp_path) == files_of(built[1])


def test_a_track_whose_source_changed_is_transcoded_again(built, tmp_path, monkeypatch):
    build(tmp_path)
    table = pd.read_csv(tmp_path / "pool.csv", keep_default_na=False)
    table.loc[table["id"] == "gamma-music__farm", "source_sha256"] = "0" * 64  # made from another source
    table.to_csv(tmp_path / "pool.csv", index=False)
    done: list[str] = []
    interrupt_after(monkeypatch, 99, done)
    build(tmp_path)
    assert sorted(done) == ["gamma-music__broken", "gamma-music__farm", "gamma-music__jingle"]
    assert files_of(tmp_path) == files_of(built[1])


def test_another_sample_rate_or_a_longer_minimum_transcodes_again(built, tmp_path, monkeypatch):
    build(tmp_path)
    done: list[str] = []
    interrupt_after(monkeypatch, 99, done)
    table = build_pool(tmp_path, SPECS, sample_rate=22050, workers=1, progress=False, min_duration=31.5)
    assert len(done) == 7  # nothing kept: every FLAC was at 16 kHz
    assert table["id"].tolist() == ["delta-data__sub-b", "gamma-music__snow"]  # 34 s and 32 s
    assert {sf.info(tmp_path / path).samplerate for path in table["path"]} == {22050}
    done.clear()
    table = build_pool(tmp_path, SPECS, sample_rate=22050, workers=1, progress=False, min_duration=32.5)
    assert table["id"].tolist() == ["delta-data__sub-b"] and "delta-data__sub-b" not in done  # kept as it was
    assert "gamma-music__snow" in done and not (tmp_path / "audio/gamma-music").exists()  # now too short


def test_a_build_of_fewer_packages_leaves_only_their_files(built, tmp_path):
    build(tmp_path)
    table = build_pool(tmp_path, [GAMMA], progress=False)
    assert set(table["label"]) == {"gamma-music"}
    assert sorted(files_of(tmp_path)) == sorted([*table["path"], "pool.csv", "skipped.csv", "copyright/gamma-music"])
    assert not (tmp_path / "audio" / "delta-data").exists()


def test_a_benchmark_package_is_refused_with_one_line_before_anything_is_written(tmp_path, capsys):
    benchmark = PoolPackage("supertux-data", "0.6.3-2", "./usr/share/games/supertux2/music", "GPL-2+")
    with pytest.raises(CmlError, match="^refusing supertux-data: it is one of the soundtracks benchmark's") as err:
        build_pool(tmp_path / "out", [GAMMA, benchmark], progress=False)
    assert "\n" not in str(err.value) and not (tmp_path / "out").exists()
    assert main(["pool", "build", "--packages", "naev-data,hedgewars-data", "--out", str(tmp_path / "o")]) == 1
    assert capsys.readouterr().err.strip().startswith("cml pool: error: refusing hedgewars-data:")
    assert not (tmp_path / "o").exists()
    assert main(["pool", "fetch", "--packages", "naev-data,jazz"]) == 2  # unknown: a usage error
    assert not {spec.package for spec in POOL.values()} & pool.BENCHMARK_PACKAGES  # the pinned pool itself
    assert len(POOL) == 11 and set(pool.HELDOUT) < set(POOL)


def test_a_package_that_cannot_be_fetched_stops_the_build_before_anything_is_written(tmp_path):
    missing = PoolPackage("epsilon-music", "1.0-1", "./usr/share/games/epsilon/music", "GPL-2+")
    with pytest.raises(CmlError, match="^cannot fetch epsilon-music=1.0-1: false epsilon-music=1.0-1 failed"):
        build_pool(tmp_path / "out", [GAMMA, missing], progress=False)
    assert not (tmp_path / "out").exists()


def test_a_zip_without_the_music_folder_or_a_folder_without_recordings_is_one_clear_error(tmp_path):
    wrong = PoolPackage("delta-data", "2:0.5-1", DELTA.member, "GPL-2+", inner="music/")
    with pytest.raises(CmlError, match=r"^delta-data: no music/ in ./usr/share/games/delta/data/music.pk3$"):
        build_pool(tmp_path / "out", [wrong], progress=False)
    wrong = PoolPackage("gamma-music", "1.0-1", GAMMA.member, "GPL-2+", files="*.mp3")
    with pytest.raises(CmlError, match=r"^gamma-music: no \*.mp3 files in ./usr/share/games/gamma/music$"):
        build_pool(tmp_path / "out", [wrong], progress=False)
