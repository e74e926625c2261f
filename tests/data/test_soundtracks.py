"""The soundtracks corpus (``corpus.source: soundtracks``) on tiny fake .deb files built here with dpkg-deb: no
network. Two packages stand in for the six game soundtracks: ``alpha`` (an epoch in its version, Ogg files in
sub-folders, a corrupt Ogg, a byte-for-byte copy, non-music files) and ``beta`` (a ``*`` in its music folder)."""
from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import soundfile as sf
import yaml

from cml.cli import main
from cml.data import corpus, soundtracks
from cml.data.corpus import CorpusConfig, build_corpus
from cml.data.soundtracks import MANIFEST_COLUMNS, Soundtrack
from cml.data.tracks import TracksConfig, build_tracks
from cml.errors import CmlError, UsageError
from tests.helpers import make_deb, ogg

FAKE = {
    "alpha": Soundtrack("alpha-data", "2:1.0-1", ("./usr/share/games/alpha/music",)),
    "beta": Soundtrack("beta-data", "0.3-2", ("./usr/share/games/beta/factions/*/music",)),
}
STUDY = {"audio": "corpus", "variants": ["none"], "seeds": [0]}
MENU = ogg(2.5, 48000, 2, 330.0)


@pytest.fixture(scope="module")
def debs(tmp_path_factory) -> Path:
    """A cache folder holding the two fake packages."""
    cache = tmp_path_factory.mktemp("debs")
    make_deb(cache, "alpha-data", "2:1.0-1", {
        "usr/share/games/alpha/music/forest/theme one.ogg": ogg(3.0, 44100, 2, 440.0),
        "usr/share/games/alpha/music/menu.ogg": MENU,
        "usr/share/games/alpha/music/menu_again.ogg": MENU,  # the same recording under a second name
        "usr/share/games/alpha/music/broken.ogg": b"OggS" + bytes(range(256)) * 8,
        "usr/share/games/alpha/music/credits.txt": b"music by somebody\n",
        "usr/share/games/alpha/levels/one.lvl": b"not music\n",
    })
    make_deb(cache, "beta-data", "0.3-2", {
        "usr/share/games/beta/factions/north/music/march.ogg": ogg(2.2, 22050, 1, 220.0),
        "usr/share/games/beta/factions/north/units/horse.txt": b"not music\n",
    })
    return cache


def use_fake(mp: pytest.MonkeyPatch, cache: Path) -> None:
    mp.setattr(soundtracks, "SOUNDTRACKS", FAKE)
    mp.setattr(corpus, "SOUNDTRACKS", FAKE)  # the default of corpus.soundtracks
    mp.setenv(soundtracks.CACHE_ENV, str(cache))
    mp.setattr(soundtracks, "FETCH_COMMAND", ("false",))  # any fetch would fail: the cache must be used


@pytest.fixture
def fake(debs, monkeypatch) -> Path:
    use_fake(monkeypatch, debs)
    return debs


@pytest.fixture(scope="module")
def built(debs, tmp_path_factory):
    out = tmp_path_factory.mktemp("corpus")
    with pytest.MonkeyPatch.context() as mp:
        use_fake(mp, debs)
        manifest = build_corpus(CorpusConfig(source="soundtracks", workers=1), out, progress=False)
    return manifest, out


def test_manifest_lists_whole_tracks_as_16k_mono_flac_without_piece_or_draw(built):
    manifest, out = built
    assert list(manifest.columns) == MANIFEST_COLUMNS and not {"piece", "draw"} & set(manifest.columns)
    assert manifest["id"].tolist() == ["alpha__forest-theme-one", "alpha__menu", "beta__march"]
    assert manifest["label"].tolist() == ["alpha", "alpha", "beta"]
    assert manifest["title"].tolist() == ["theme one", "menu", "march"]
    assert manifest["source"].tolist() == ["alpha-data=2:1.0-1:usr/share/games/alpha/music/forest/theme one.ogg",
                                           "alpha-data=2:1.0-1:usr/share/games/alpha/music/menu.ogg",
                                           "beta-data=0.3-2:usr/share/games/beta/factions/north/music/march.ogg"]
    for row, seconds in zip(manifest.itertuples(), [3.0, 2.5, 2.2]):
        assert row.path == f"audio/{row.label}/{row.id}.flac"
        info = sf.info(out / row.path)
        assert (info.format, info.subtype, info.samplerate, info.channels) == ("FLAC", "PCM_16", 16000, 1)
        assert row.duration == pytest.approx(seconds, abs=0.01)  # the whole track, no cut
        assert row.duration == pytest.approx(info.frames / 16000, abs=1e-3)
        audio, _ = sf.read(out / row.path)
        assert 0.3 < np.abs(audio).max() < 0.9  # the recording's own level: not normalised
    on_disk = sorted(p.relative_to(out).as_posix() for p in (out / "audio").rglob("*") if p.is_file())
    assert on_disk == sorted(manifest["path"])
    assert pd.read_csv(out / "manifest.csv", keep_default_na=False).equals(manifest)


def test_a_corrupt_file_and_a_byte_copy_are_skipped_with_their_reason(built):
    _, out = built
    skipped = pd.read_csv(out / "skipped.csv").set_index("source")["reason"]
    assert sorted(skipped.index) == ["alpha-data=2:1.0-1:usr/share/games/alpha/music/broken.ogg",
                                     "alpha-data=2:1.0-1:usr/share/games/alpha/music/menu_again.ogg"]
    assert skipped.str.len().gt(10).all() and not skipped.str.contains("cml-soundtracks-").any()  # no temp path
    assert skipped.iloc[1] == "same file as alpha__menu"


def test_only_the_music_folders_are_extracted(fake, tmp_path):
    for label in FAKE:
        soundtracks.extract_music(soundtracks.fetch(label), FAKE[label], tmp_path)
    files = sorted(p.relative_to(tmp_path).as_posix() for p in tmp_path.rglob("*") if p.is_file())
    assert files == ["usr/share/games/alpha/music/broken.ogg", "usr/share/games/alpha/music/credits.txt",
                     "usr/share/games/alpha/music/forest/theme one.ogg", "usr/share/games/alpha/music/menu.ogg",
                     "usr/share/games/alpha/music/menu_again.ogg",
                     "usr/share/games/beta/factions/north/music/march.ogg"]
    with pytest.raises(CmlError, match="cannot extract the music of .*alpha-data.*Not found in archive"):
        soundtracks.extract_music(soundtracks.fetch("alpha"), Soundtrack("alpha-data", "2:1.0-1", ("./usr/nope",)),
                                  tmp_path)


def test_cli_rebuild_with_two_workers_is_byte_identical(built, fake, tmp_path, cli_raising):
    manifest, first = built
    (tmp_path / "params.yaml").write_text(yaml.safe_dump({"corpus": {"source": "soundtracks", "workers": 2},
                                                          "study": STUDY}))
    argv = ["corpus", "--params", tmp_path / "params.yaml", "--out", tmp_path / "again", "--data", tmp_path]
    assert cli_raising(*argv) == 0
    second = tmp_path / "again"
    for name in ["manifest.csv", "skipped.csv", *manifest["path"]]:
        assert (second / name).read_bytes() == (first / name).read_bytes(), name


def test_tracks_stage_reads_the_corpus_as_single_recordings_with_their_labels(built, tmp_path):
    _, out = built
    tracks, skipped, source = build_tracks(TracksConfig(), out, tmp_path / "data", "corpus", progress=False)
    assert source == "corpus" and skipped.empty
    assert "piece" not in tracks.columns and "draw" not in tracks.columns
    assert tracks["label"].tolist() == ["alpha", "alpha", "beta"]
    assert tracks["title"].tolist() == ["theme one", "menu", "march"]
    assert tracks["source"].str.startswith(("alpha-data=", "beta-data=")).all()
    assert set(tracks["split"]) <= {"train", "val", "test"} and tracks["split"].notna().all()


def test_a_subset_of_soundtracks_and_an_unknown_label(fake, tmp_path, cli_raising):
    manifest = build_corpus(CorpusConfig(source="soundtracks", soundtracks=["beta"], workers=1), tmp_path, False)
    assert manifest["id"].tolist() == ["beta__march"]
    with pytest.raises(ValueError, match=r"corpus.soundtracks: unknown \['jazz'\] \(known: alpha, beta\)"):
        CorpusConfig.from_dict({"source": "soundtracks", "soundtracks": ["beta", "jazz"]})
    params = tmp_path / "params.yaml"
    params.write_text(yaml.safe_dump({"corpus": {"source": "soundtracks", "soundtracks": ["jazz"]}, "study": STUDY}))
    with pytest.raises(UsageError, match=r"unknown \['jazz'\] \(known: alpha, beta\)"):
        cli_raising("corpus", "--params", params, "--out", tmp_path / "out", "--data", params.parent)


def test_the_other_source_s_options_are_refused_and_music21_stays_the_default():
    assert CorpusConfig().source == "music21" and CorpusConfig.from_dict({}) == CorpusConfig()
    with pytest.raises(ValueError, match=r"\['pieces_per_class', 'draws'\] apply only to source music21"):
        CorpusConfig.from_dict({"source": "soundtracks", "pieces_per_class": 5, "draws": 1})
    with pytest.raises(ValueError, match=r"\['soundtracks'\] apply only to source soundtracks"):
        CorpusConfig.from_dict({"soundtracks": ["supertux"]})
    with pytest.raises(ValueError, match="corpus.source must be one of"):
        CorpusConfig.from_dict({"source": "youtube"})
    assert CorpusConfig(source="soundtracks", sample_rate=22050, workers=3).sample_rate == 22050  # shared options


FAILING_FETCHES = {  # FETCH_COMMAND, what the error says
    "no apt-get": (("no-such-apt-get", "download"), "No such file or directory"),
    "apt-get fails": (("sh", "-c", "echo 'E: Unable to locate package' >&2; echo 'W: unsandboxed' >&2; exit 100",
                       "apt-get"), "failed: E: Unable to locate package;"),
    "wrong version": (("sh", "-c", "cp \"$0\" .", "OTHER"), "left no .deb of that version"),
}


@pytest.mark.parametrize("command, says", FAILING_FETCHES.values(), ids=FAILING_FETCHES.keys())
def test_a_package_that_cannot_be_fetched_stops_the_build_with_one_line_naming_it(fake, tmp_path, monkeypatch,
                                                                                   command, says):
    cache = tmp_path / "cache"
    cache.mkdir()
    shutil.copy(fake / "alpha-data_2%3a1.0-1_all.deb", cache)
    other = make_deb(tmp_path, "beta-data", "0.3-1", {"usr/share/games/beta/factions/x/music/a.ogg": MENU})
    shutil.copy(other, cache)  # another version of beta-data is no substitute
    monkeypatch.setenv(soundtracks.CACHE_ENV, str(cache))
    monkeypatch.setattr(soundtracks, "FETCH_COMMAND", tuple(str(other) if c == "OTHER" else c for c in command))
    with pytest.raises(CmlError, match=f"^cannot fetch beta-data=0.3-2: .*{says}") as err:
        build_corpus(CorpusConfig(source="soundtracks", workers=1), tmp_path / "out", progress=False)
    message = str(err.value)
    assert "\n" not in message and err.value.exit_code == 1
    assert f"cd {cache} && " in message and message.endswith(" beta-data=0.3-2")  # the command to run by hand
    assert not (tmp_path / "out").exists()  # nothing half done


def test_fetch_runs_the_fetch_command_in_the_cache_and_checks_the_version(fake, tmp_path, monkeypatch):
    cache = tmp_path / "new" / "cache"  # created by the fetch
    monkeypatch.setenv(soundtracks.CACHE_ENV, str(cache))
    deb = fake / "beta-data_0.3-2_all.deb"
    monkeypatch.setattr(soundtracks, "FETCH_COMMAND", ("sh", "-c", "cp \"$0\" . && echo \"$1\" > asked", str(deb)))
    assert soundtracks.fetch("beta") == cache / deb.name
    assert (cache / "asked").read_text() == "beta-data=0.3-2\n"
    monkeypatch.setattr(soundtracks, "FETCH_COMMAND", ("false",))
    assert soundtracks.fetch("beta") == cache / deb.name  # cached: no second fetch
    assert main(["soundtracks", "fetch", "--labels", "beta"]) == 0
    assert main(["soundtracks", "fetch", "--labels", "beta,gamma"]) == 2
