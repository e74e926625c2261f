"""The track table (cml.data.tracks) and where its audio comes from (cml.data.sources): the rendered corpus or
the user's own files."""
import pandas as pd
import pytest

from cml.data.sources import has_audio_files, resolve_audio_dir
from cml.data.tracks import TracksConfig, build_tracks
from cml.params import build
from tests.helpers import write_tone


@pytest.fixture
def corpus(tmp_path):
    """A rendered-corpus folder as the `corpus` stage writes it: audio/<label>/<id>.flac + manifest.csv."""
    root = tmp_path / "corpus"
    rows = []
    for label in ("bach_chorale", "trecento"):
        for i in range(4):
            for draw in range(2):  # two instrument draws per piece
                piece = f"{label}-{i}"
                rid = piece + (f"__draw{draw}" if draw else "")
                rel = f"audio/{label}/{rid}.flac"
                write_tone(root / rel, freq=200 + 50 * i + draw)
                rows.append(dict(id=rid, piece=piece, draw=draw, path=rel, label=label, composer=f"c{i}",
                                 title=f"Piece {i}", duration=2.0, source=f"src{i}", programs=f"{draw};40"))
    pd.DataFrame(rows).to_csv(root / "manifest.csv", index=False)
    return root


def test_auto_source_prefers_user_audio_only_when_present(tmp_path, corpus):
    data = tmp_path / "data"
    (data / "audio").mkdir(parents=True)
    (data / "audio" / ".DS_Store").write_bytes(b"x")
    assert not has_audio_files(data / "audio")
    assert resolve_audio_dir("auto", corpus, data) == ("corpus", corpus / "audio")
    write_tone(data / "audio" / "mine.wav")
    assert resolve_audio_dir("auto", corpus, data) == ("data", data / "audio")
    assert resolve_audio_dir("corpus", corpus, data)[0] == "corpus"


def test_build_tracks_from_corpus_joins_manifest_and_splits(tmp_path, corpus):
    tracks, skipped, source = build_tracks(TracksConfig(min_duration=1.0), corpus, tmp_path / "none",
                                           progress=False)
    assert source == "corpus" and skipped.empty
    assert len(tracks) == 16
    assert set(tracks["label"]) == {"bach_chorale", "trecento"}
    assert tracks.groupby("piece")["split"].nunique().max() == 1  # both draws of a piece on one side
    assert tracks.groupby("piece")["programs"].nunique().min() == 2
    assert tracks["title"].notna().all() and tracks["composer"].notna().all()
    assert set(tracks["split"]) <= {"train", "val", "test"}
    assert (tracks.groupby("label")["split"].apply(lambda s: "test" in set(s))).all()
    again, _, _ = build_tracks(TracksConfig(min_duration=1.0), corpus, tmp_path / "none", progress=False)
    pd.testing.assert_series_equal(tracks["split"], again["split"])


def test_build_tracks_reports_bad_user_files(tmp_path, corpus):
    data = tmp_path / "data"
    write_tone(data / "audio" / "rock" / "a.wav")
    write_tone(data / "audio" / "rock" / "b.wav")
    write_tone(data / "audio" / "loose.wav")
    (data / "audio" / "rock" / "broken.mp3").write_bytes(b"ID3" + bytes(100))
    tracks, skipped, source = build_tracks(TracksConfig(min_duration=1.0), corpus, data, progress=False)
    assert source == "data"
    assert len(tracks) == 3
    assert tracks["label"].isna().sum() == 1  # the loose file has no label
    assert [p.split("/")[-1] for p in skipped["path"]] == ["broken.mp3"]


def test_config_rejects_unknown_keys_and_sources(tmp_path, corpus):
    with pytest.raises(ValueError, match="unknown keys.*sauce"):
        build(TracksConfig, {"sauce": "auto"}, "'tracks'")
    with pytest.raises(ValueError, match="study.audio"):
        build_tracks(TracksConfig(), corpus, tmp_path, "spotify")


def test_paths_are_relative_inside_the_working_directory(tmp_path, corpus, monkeypatch):
    monkeypatch.chdir(tmp_path)
    tracks, _, _ = build_tracks(TracksConfig(min_duration=1.0), corpus, tmp_path / "none", progress=False)
    assert all(p.startswith("corpus/audio/") for p in tracks["path"])
    assert tracks["composer"].notna().all()  # the manifest still matches relative paths
