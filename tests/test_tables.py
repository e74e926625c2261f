"""Feature tables: round trips through Parquet and CSV, foreign CSVs, and clear errors on bad input."""

import numpy as np
import pandas as pd
import pytest

from cml.tables import FeatureTableError, check_directions, read_feature_table, write_feature_table


@pytest.fixture
def data():
    rng = np.random.default_rng(0)
    return np.array(["007", "a", "b", "c"]), rng.normal(size=(4, 3)), ["rock", "jazz", None, "rock"]


@pytest.mark.parametrize("suffix", [".parquet", ".csv"])
def test_round_trip(tmp_path, data, suffix):
    ids, X, labels = data
    path = write_feature_table(tmp_path / f"t{suffix}", ids, X, labels=labels, extra={"path": list("wxyz")})
    table = read_feature_table(path)
    assert table.ids.tolist() == ["007", "a", "b", "c"]  # leading zeros survive
    np.testing.assert_array_equal(table.X, X)  # bit-exact, CSV included
    assert table.feature_names == ["f0", "f1", "f2"]
    assert table.labels.tolist() == ["rock", "jazz", None, "rock"]
    assert table.meta["path"].tolist() == list("wxyz")


def test_parquet_keeps_numeric_metadata_out_of_features(tmp_path, data):
    ids, X, _ = data
    path = write_feature_table(tmp_path / "t.parquet", ids, X, extra={"duration": [1.0, 2.0, 3.0, 4.0]})
    table = read_feature_table(path)
    assert table.feature_names == ["f0", "f1", "f2"] and table.labels is None
    assert table.meta["duration"].tolist() == [1.0, 2.0, 3.0, 4.0]
    with pytest.raises(ValueError, match="would read back as features"):
        write_feature_table(tmp_path / "t.csv", ids, X, extra={"duration": [1.0, 2.0, 3.0, 4.0]})


def test_spotify_like_csv(tmp_path):
    # The shape of a Spotify tracks export: pandas index, track_id, strings, bools and audio features.
    df = pd.DataFrame({"Unnamed: 0": [0, 1, 2], "track_id": ["5SuOikwiRyPMVoIQDJUgSV", "4qPNDBW1i3p13qLCt0Ki3A",
                                                              "1iJBSr7s7jYXzM8EGcbK5b"],
                       "artists": ["Gen Hoshino", "Ben Woodward", "Ingrid Michaelson;ZAYN"],
                       "track_name": ["Comedy", "Ghost - Acoustic", "To Begin Again"], "explicit": [False, True, False],
                       "danceability": [0.676, 0.42, 0.438], "tempo": [87.917, 77.489, 76.332],
                       "track_genre": ["acoustic", "acoustic", "pop"]})
    df.to_csv(tmp_path / "spotify.csv", index=False)
    table = read_feature_table(tmp_path / "spotify.csv", label_column="track_genre")
    assert table.ids[0] == "5SuOikwiRyPMVoIQDJUgSV"
    assert table.feature_names == ["explicit", "danceability", "tempo"]
    np.testing.assert_allclose(table.X[1], [1.0, 0.42, 77.489])
    assert table.labels.tolist() == ["acoustic", "acoustic", "pop"]
    assert set(table.meta.columns) == {"Unnamed: 0", "artists", "track_name"}


def test_missing_id(tmp_path):
    pd.DataFrame({"name": ["a"], "x": [1.0]}).to_csv(tmp_path / "t.csv", index=False)
    with pytest.raises(FeatureTableError, match="no id column.*columns are: name, x"):
        read_feature_table(tmp_path / "t.csv")


def test_duplicate_ids(tmp_path):
    pd.DataFrame({"id": ["a", "b", "a"], "x": [1.0, 2.0, 3.0]}).to_csv(tmp_path / "t.csv", index=False)
    with pytest.raises(FeatureTableError, match="1 repeated ids: a"):
        read_feature_table(tmp_path / "t.csv")
    table = read_feature_table(tmp_path / "t.csv", drop_invalid=True)
    assert table.ids.tolist() == ["a", "b"] and table.X[:, 0].tolist() == [1.0, 2.0]


def test_no_numeric_columns(tmp_path):
    pd.DataFrame({"id": ["a"], "title": ["x"]}).to_csv(tmp_path / "t.csv", index=False)
    with pytest.raises(FeatureTableError, match="no numeric feature columns"):
        read_feature_table(tmp_path / "t.csv")


def test_nan_and_inf_rows_are_named(tmp_path):
    pd.DataFrame({"id": ["a", "b", "c", "d"], "x": [1.0, np.nan, 2.0, np.inf]}).to_csv(tmp_path / "t.csv", index=False)
    with pytest.raises(FeatureTableError, match="2 rows, ids: b, d"):
        read_feature_table(tmp_path / "t.csv")
    assert read_feature_table(tmp_path / "t.csv", drop_invalid=True).ids.tolist() == ["a", "c"]


def test_unreadable_files(tmp_path):
    with pytest.raises(FeatureTableError, match="no such file"):
        read_feature_table(tmp_path / "missing.parquet")
    (tmp_path / "bad.parquet").write_bytes(b"not parquet at all")
    with pytest.raises(FeatureTableError, match="cannot read feature table"):
        read_feature_table(tmp_path / "bad.parquet")
    (tmp_path / "t.json").write_text("{}")
    with pytest.raises(FeatureTableError, match="unknown extension"):
        read_feature_table(tmp_path / "t.json")


def test_a_folder_of_parts_reads_as_one_table_and_refuses_a_mixed_or_incomplete_set(tmp_path):
    from cml.tables import part_path

    ids, X = [f"t{i}" for i in range(5)], np.arange(15, dtype=np.float32).reshape(5, 3)
    whole = tmp_path / "lib.parquet"
    for rank, rows in enumerate([slice(0, 2), slice(2, 2), slice(2, 5)]):  # an empty share is a part too
        write_feature_table(part_path(whole, rank, 3), ids[rows], X[rows], labels=["a", "b", "a", "b", "a"][rows])
    table = read_feature_table(whole)
    assert table.ids.tolist() == ids and np.array_equal(table.X, X) and table.labels.tolist() == list("ababa")
    write_feature_table(part_path(whole, 0, 2), ids[:1], X[:1])  # a stale part of another run
    with pytest.raises(FeatureTableError, match="not one complete set of parts"):
        read_feature_table(whole)
    assert part_path(whole, 0, 1) == whole


@pytest.mark.parametrize("rows, zero", [
    ([["a", 1.0, 2.0], ["a", 3.0, 4.0]], False),  # a repeated id
    ([["a", 1.0, 2.0], ["b", np.nan, 4.0]], False),  # NaN features
    ([["a", 1.0, 2.0], ["b", 0.0, 0.0]], True),  # no direction to L2-normalise
])
def test_invalid_rows_name_the_option_a_user_types(tmp_path, rows, zero):
    """The commands' option is --drop-invalid; the message names it (and the Python argument beside it)."""
    path = tmp_path / "t.csv"
    pd.DataFrame(rows, columns=["id", "f0", "f1"]).to_csv(path, index=False)
    with pytest.raises(FeatureTableError, match=r"--drop-invalid, or drop_invalid=True,"):
        check_directions(read_feature_table(path), path) if zero else read_feature_table(path)


def test_tables_written_by_any_cml_version_keep_their_feature_columns(tmp_path):
    """The Parquet metadata key naming the feature columns is part of the file format: a table written with it
    (here by hand, as every cml version writes it) reads back with its numeric metadata columns left out."""
    import json

    import pyarrow as pa
    import pyarrow.parquet as pq

    table = pa.table({"id": ["a", "b"], "seconds": [30.0, 41.5], "f0": [1.0, 0.0], "f1": [0.0, 1.0]})
    pq.write_table(table.replace_schema_metadata({b"cml.features": json.dumps(["f0", "f1"]).encode()}),
                   tmp_path / "t.parquet")
    read = read_feature_table(tmp_path / "t.parquet")
    assert read.feature_names == ["f0", "f1"] and read.meta["seconds"].tolist() == [30.0, 41.5]
