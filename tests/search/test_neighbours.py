"""Exact cosine neighbours and `cml neighbours TRACK`."""
import numpy as np
import pytest

from cml.cli import main
from cml.search.neighbours import nearest
from cml.tables import write_feature_table


def test_nearest_is_the_exact_cosine_ranking_block_by_block():
    rng = np.random.default_rng(0)
    X, Q = rng.standard_normal((300, 16)), rng.standard_normal((37, 16))
    idx, sim = nearest(X, Q, k=7, block=10)  # blocks that do not divide the queries
    U, V = X / np.linalg.norm(X, axis=1, keepdims=True), Q / np.linalg.norm(Q, axis=1, keepdims=True)
    S = V @ U.T
    assert np.array_equal(idx, np.argsort(-S, axis=1, kind="stable")[:, :7])
    np.testing.assert_allclose(sim, np.sort(S, axis=1)[:, ::-1][:, :7])
    all_idx, _ = nearest(X[:5], Q[:2], k=50)  # k beyond the library: every row, ranked
    assert all_idx.shape == (2, 5) and sorted(all_idx[0]) == list(range(5))


@pytest.fixture
def table(tmp_path):
    X = np.array([[1, 0, 0], [0.9, 0.1, 0], [0, 1, 0], [0.8, 0.3, 0], [0, 0, 1]], dtype=np.float32)
    ids = ["007", "a", "b", "c", "d"]
    paths = [f"/music/{label}/{i}.flac" for i, label in zip(ids, "xxyxz")]
    path = tmp_path / "emb.parquet"
    write_feature_table(path, ids, X, labels=list("xxyxz"), extra={"path": paths})
    return path


def test_the_cli_lists_the_nearest_tracks_with_their_paths(table, tmp_path, capsys):
    for query in ("007", "/music/x/007.flac", "007.flac"):  # id, path or file name
        assert main(["neighbours", str(table), query, "-k", "2", "--out", str(tmp_path / "n.csv")]) == 0
        text = capsys.readouterr().out
        assert text.index("/music/x/a.flac") < text.index("/music/x/c.flac") and "/music/y/b.flac" not in text
        rows = (tmp_path / "n.csv").read_text().splitlines()
        assert rows[0].split(",")[:3] == ["query", "rank", "id"] and [r.split(",")[2] for r in rows[1:]] == ["a", "c"]


def test_k_beyond_the_table_lists_every_other_track(table, tmp_path):
    assert main(["neighbours", str(table), "007", "-k", "10", "--out", str(tmp_path / "n.csv")]) == 0
    assert [r.split(",")[2] for r in (tmp_path / "n.csv").read_text().splitlines()[1:]] == ["a", "c", "b", "d"]


def test_an_unknown_track_is_one_line_and_exit_2(table, capsys):
    assert main(["neighbours", str(table), "nope"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "'nope' is not in the table" in err
