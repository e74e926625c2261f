"""The Compare notebook's helpers in cml.evaluation: feature tables lined up with the track table by id."""
import numpy as np
import pandas as pd
import pytest

from cml.evaluation.scores import (
    crop_tables,
    length_extrapolation,
    run_length_extrapolation,
    score_runs,
    score_space,
    score_table,
    track_rows,
)
from cml.tables import FeatureTableError, write_feature_table
from tests.helpers import blobs


def blob_tracks(seed=0):
    """The shared blobs (3 classes in 8-D, s.d. 0.3) as the rows of a run: ids, and their track table with pieces
    (pairs of rows) and durations."""
    rng = np.random.default_rng(seed)
    X, y, split = blobs(classes=3, dim=8, spread=0.3, seed=rng)
    ids = np.array([f"t{i:03d}" for i in range(len(X))])
    tracks = pd.DataFrame({"label": y, "split": split, "piece": [f"p{i // 2}" for i in range(len(X))],
                           "duration": rng.uniform(10, 30, len(X))}, index=pd.Index(ids, name="id"))
    return X, ids, tracks


def test_track_rows_follow_the_ids_and_name_the_missing():
    _, ids, tracks = blob_tracks()
    assert track_rows(tracks, ids[::-1], "x").index.tolist() == ids[::-1].tolist()
    with pytest.raises(ValueError, match="table.parquet: 2 ids are not in the track table: nope, zz"):
        track_rows(tracks, ["zz", ids[0], "nope"], "table.parquet")


def test_score_table_lines_rows_up_with_their_tracks(tmp_path):
    X, ids, tracks = blob_tracks()
    order = np.random.default_rng(1).permutation(len(X))  # the table's rows in another order than tracks.csv
    write_feature_table(tmp_path / "t.parquet", ids[order], X[order])
    expected = score_space(X[order], tracks.iloc[order], seed=0)
    assert score_table(tmp_path / "t.parquet", tracks) == expected
    assert score_table(tmp_path / "t.parquet", tracks)["knn_acc"] == 1.0
    assert score_table(tmp_path / "t.parquet", tracks, standardised=True) == score_space(
        X[order], tracks.iloc[order], standardised=True)


def test_score_runs_one_row_per_space(tmp_path):
    X, ids, tracks = blob_tracks()
    rng = np.random.default_rng(2)
    for name in ("a-s0", "a-s1", "untrained-a"):
        write_feature_table(tmp_path / "emb" / name / "tracks.parquet", ids, X + rng.normal(0, 0.1, X.shape))
    noisy = np.column_stack([X, rng.normal(0, 1000, len(X))])  # one loud column of noise: z-scoring tames it
    write_feature_table(tmp_path / "emb" / "musicnn" / "tracks.parquet", ids, noisy)
    write_feature_table(tmp_path / "hand.parquet", ids, X * [1, 1000, 1, 1, 1, 1, 1, 1])
    write_feature_table(tmp_path / "emb" / "pretrained" / "tracks.parquet", ids, X + rng.normal(0, 0.1, X.shape))
    write_feature_table(tmp_path / "emb" / "finetuned" / "tracks.parquet", ids, X + rng.normal(0, 0.2, X.shape))
    runs = score_runs(tmp_path / "emb", ["a"], [0, 1], tmp_path / "hand.parquet", tracks)
    assert runs[["model", "kind", "seed"]].values.tolist() == [
        ["a", "contrastive", 0], ["a", "contrastive", 1], ["a", "untrained", 0], ["pretrained", "pretrained", 0],
        ["finetuned", "pretrained", 0], ["musicnn", "baseline", 0], ["handcrafted", "baseline", 0]]
    assert runs.loc[3, "nmi"] == score_table(tmp_path / "emb" / "pretrained" / "tracks.parquet", tracks)["nmi"]
    assert runs.loc[4, "knn_acc_loo_all"] == score_table(tmp_path / "emb" / "finetuned" / "tracks.parquet",
                                                         tracks)["knn_acc_loo_all"]
    musicnn = tmp_path / "emb" / "musicnn" / "tracks.parquet"
    assert runs.loc[5, "knn_acc"] == score_table(musicnn, tracks, standardised=True)["knn_acc"]
    assert runs.loc[5, "knn_acc"] != score_table(musicnn, tracks)["knn_acc"]
    assert runs.loc[6, "knn_acc"] == score_table(tmp_path / "hand.parquet", tracks, standardised=True)["knn_acc"]
    with pytest.raises(FeatureTableError, match="b-s0/tracks.parquet: no such file"):
        score_runs(tmp_path / "emb", ["b"], [0], tmp_path / "hand.parquet", tracks)


def _run(tmp_path, X, ids, tracks, shuffle_crops=False):
    """A run folder as `cml embed` writes it: all tracks, and crops of the test tracks."""
    run = tmp_path / "run"
    write_feature_table(run / "tracks.parquet", ids, X)
    test = np.flatnonzero(tracks["split"].to_numpy() == "test")
    rng = np.random.default_rng(3)
    crops = {"1x": rng.normal(size=(len(test), X.shape[1])), "2x": X[test] + rng.normal(0, 1, (len(test), X.shape[1])),
             "16x": X[test], "full": X[test]}
    for name, Xc in crops.items():
        rows = rng.permutation(len(test)) if shuffle_crops and name != "full" else np.arange(len(test))
        write_feature_table(run / f"tracks.{name}.parquet", ids[test][rows], Xc[rows])
    return run, crops, test


def test_crop_tables_in_order_of_length(tmp_path):
    X, ids, tracks = blob_tracks()
    run, _, _ = _run(tmp_path, X, ids, tracks)
    assert list(crop_tables(run)) == ["1x", "2x", "16x", "full"]
    with pytest.raises(ValueError, match="no crop embeddings .*cml embed --crops"):
        crop_tables(tmp_path)


@pytest.mark.parametrize("shuffle_crops", [False, True])
def test_run_length_extrapolation_aligns_each_crop_with_its_tracks(tmp_path, shuffle_crops):
    X, ids, tracks = blob_tracks()
    run, crops, test = _run(tmp_path, X, ids, tracks, shuffle_crops)
    got = run_length_extrapolation(run, tracks, k=5, seed=0)
    train = tracks["split"].to_numpy() == "train"
    expected = length_extrapolation(X[train], tracks["label"].to_numpy()[train], crops,
                                    tracks["label"].to_numpy()[test], k=5, seed=0)
    pd.testing.assert_frame_equal(got, expected)
    assert got.loc["full", "knn_acc"] == 1.0 and got.loc["1x", "knn_acc"] < 0.7


def test_run_length_extrapolation_refuses_crops_of_other_tracks(tmp_path):
    X, ids, tracks = blob_tracks()
    run, crops, test = _run(tmp_path, X, ids, tracks)
    write_feature_table(run / "tracks.2x.parquet", ids[test][1:], crops["2x"][1:])
    with pytest.raises(ValueError, match="tracks.2x.parquet holds other tracks than tracks.full.parquet"):
        run_length_extrapolation(run, tracks)
    with pytest.raises(ValueError, match="ids are not in the track table"):
        run_length_extrapolation(run, tracks.iloc[1:])
