"""cml.spotify.features: bad CSVs are reported line by line and never crash the DataAnalysis notebook."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from cml.spotify.features import (
    AUDIO_FEATURE_COLUMNS,
    SPOTIFY_COLUMNS,
    feature_correlations,
    feature_pca,
    genre_feature_summary,
    load_spotify_csvs,
)


def kaggle_frame(n: int, seed: int = 0, prefix: str = "t", genres=("jazz", "metal")) -> pd.DataFrame:
    """Rows shaped like the public dataset (its CSV also has an unnamed index column)."""
    rng = np.random.default_rng(seed)
    df = pd.DataFrame({
        "track_id": [f"{prefix}{i:05d}" for i in range(n)], "artists": [f"A{i % 5};B" for i in range(n)],
        "album_name": "Album", "track_name": [f"Song {i}" for i in range(n)],
        "popularity": rng.integers(0, 100, n), "duration_ms": rng.integers(100_000, 300_000, n),
        "explicit": rng.random(n) < 0.3,
        **{c: rng.random(n) for c in AUDIO_FEATURE_COLUMNS},
        "track_genre": [genres[i % len(genres)] for i in range(n)],
    })
    df["tempo"] = 60 + 120 * df["tempo"]
    df["key"] = rng.integers(0, 12, n)
    return df[SPOTIFY_COLUMNS]


def test_kaggle_csv_loads_cleanly_without_its_index_column(tmp_path):
    df = kaggle_frame(40)
    df.loc[39, "track_id"] = df.loc[0, "track_id"]  # the public file repeats a track once per genre
    df.to_csv(tmp_path / "dataset.csv")  # writes the unnamed index column
    table = load_spotify_csvs(tmp_path)
    assert table.problems == []
    assert list(table.tracks.columns[:len(SPOTIFY_COLUMNS)]) == SPOTIFY_COLUMNS
    assert len(table.tracks) == 40 and "Unnamed: 0" not in table.tracks.columns
    assert np.allclose(table.tracks["tempo"], df["tempo"])
    assert table.tracks["explicit"].tolist() == df["explicit"].tolist()


@pytest.mark.parametrize("make, expected", [
    (lambda p: None, "folder does not exist"),
    (lambda p: p.mkdir(), "no *.csv files found"),
])
def test_missing_folder_or_no_csvs_is_reported(tmp_path, make, expected):
    folder = tmp_path / "spotify"
    make(folder)
    table = load_spotify_csvs(folder)
    assert table.tracks.empty and list(table.tracks.columns[:len(SPOTIFY_COLUMNS)]) == SPOTIFY_COLUMNS
    assert len(table.problems) == 1 and expected in table.problems[0]


def test_bad_files_are_skipped_with_one_line_each_and_good_ones_kept(tmp_path):
    kaggle_frame(10).to_csv(tmp_path / "good.csv", index=False)
    (tmp_path / "junk.csv").write_bytes(bytes(range(256)) * 4)
    kaggle_frame(5, prefix="s").to_csv(tmp_path / "semicolon.csv", sep=";", index=False)
    kaggle_frame(5, prefix="m").drop(columns="track_id").to_csv(tmp_path / "no_id.csv", index=False)
    (tmp_path / "latin1.csv").write_bytes("track_id,artists,track_name\nx1,Beyonc\xe9,Halo\n".encode("latin-1"))
    (tmp_path / "empty.csv").write_text("")

    table = load_spotify_csvs(tmp_path)
    assert list(table.tracks["track_id"]) == list(kaggle_frame(10)["track_id"])
    by_file = {p.split(":")[0]: p for p in table.problems}
    assert "binary data" in by_file["junk.csv"]
    assert "';'-delimited" in by_file["semicolon.csv"]
    assert "missing required column(s) track_id" in by_file["no_id.csv"]
    assert "not a readable CSV" in by_file["latin1.csv"]
    assert "not a readable CSV" in by_file["empty.csv"]
    assert all("\n" not in p for p in table.problems)


def test_bad_rows_are_dropped_and_reported(tmp_path):
    df = kaggle_frame(8).astype({"tempo": object})
    df.loc[2, "tempo"] = "fast"
    df.loc[5, "track_id"] = ""
    df.loc[6, "track_genre"] = None
    text = df.to_csv(index=False) + "extra,fields,on,this,line,too,many,1,2,3,4,5,6,7,8,9,10,11,12,13,14,15\n"
    (tmp_path / "rows.csv").write_text(text)

    table = load_spotify_csvs(tmp_path)
    assert sorted(table.tracks["track_id"]) == sorted(df["track_id"].drop([2, 5]))
    assert table.tracks.set_index("track_id").loc[df.loc[6, "track_id"], "track_genre"] == "unknown"
    text = "\n".join(table.problems)
    assert "non-numeric value(s) in 'tempo' (data rows 3)" in text
    assert "1 row(s) without a track_id" in text
    assert "without track_genre set to 'unknown'" in text
    assert "1 line(s) with the wrong number of fields" in text


def test_track_ids_repeated_across_files_keep_the_first(tmp_path):
    kaggle_frame(6).to_csv(tmp_path / "a.csv", index=False)
    kaggle_frame(4, seed=1).to_csv(tmp_path / "b.csv", index=False)  # same ids t00000..t00003
    table = load_spotify_csvs(tmp_path)
    assert len(table.tracks) == 6 and set(table.tracks["source_file"]) == {"a.csv"}
    assert any("4 row(s) whose track_id already appeared" in p for p in table.problems)


def test_empty_audio_features_are_reported_not_fatal(tmp_path):
    df = kaggle_frame(12)
    df[AUDIO_FEATURE_COLUMNS] = np.nan  # what a pull gets when Spotify answers 403
    df.to_csv(tmp_path / "pulled.csv", index=False)
    table = load_spotify_csvs(tmp_path)
    assert len(table.tracks) == 12
    assert any("audio-feature columns are empty" in p for p in table.problems)

    summary = genre_feature_summary(table.tracks)
    corr = feature_correlations(table.tracks)
    coords, ratio = feature_pca(table.tracks)
    assert summary.empty and "no audio-feature column has data" in summary.attrs["message"]
    assert corr.empty and "correlations skipped" in corr.attrs["message"]
    assert coords.empty and ratio.size == 0 and "PCA skipped" in coords.attrs["message"]


def test_analysis_helpers_on_real_data(tmp_path):
    df = kaggle_frame(60, seed=3)
    summary = genre_feature_summary(df, ["tempo", "energy"])
    assert set(summary["track_genre"]) == {"jazz", "metal"} and len(summary) == 4
    jazz_tempo = summary.query("track_genre == 'jazz' and feature == 'tempo'").iloc[0]
    assert jazz_tempo["n"] == 30 and jazz_tempo["mean"] == pytest.approx(df[df.track_genre == "jazz"].tempo.mean())

    corr = feature_correlations(df)
    assert corr.shape == (len(AUDIO_FEATURE_COLUMNS),) * 2 and np.allclose(np.diag(corr), 1.0)

    coords, ratio = feature_pca(df, n_components=2, seed=0)
    again, _ = feature_pca(df, n_components=2, seed=0)
    assert coords.shape == (60, 3) and list(coords.columns) == ["pc1", "pc2", "track_genre"]
    assert 0 < ratio.sum() <= 1 and ratio[0] >= ratio[1]
    pd.testing.assert_frame_equal(coords, again)


def test_analysis_helpers_with_too_few_rows_return_empty_results(tmp_path):
    one = kaggle_frame(1)
    assert len(genre_feature_summary(one)) == len(AUDIO_FEATURE_COLUMNS)  # stats of one row are still stats
    assert feature_correlations(one).empty
    coords, ratio = feature_pca(kaggle_frame(3).assign(energy=np.nan), n_components=5)
    assert list(coords.columns[:2]) == ["pc1", "pc2"] and len(ratio) == 2  # 3 rows allow 2 components
    assert feature_pca(one)[0].empty
    assert genre_feature_summary(pd.DataFrame()).empty
