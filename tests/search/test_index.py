"""`cml.search.index`: exact search below the size threshold, the faiss index above it, and what each leaves out."""
import logging

import numpy as np
import pytest

from cml.cli import main
from cml.search import index as index_module
from cml.search import neighbours
from cml.search.index import Index, knn_accuracy, leave_group_out_knn_accuracy
from cml.search.neighbours import nearest
from cml.tables import write_feature_table


def clustered(n: int, d: int = 16, centers: int = 20, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Rows of a mixture of Gaussians with lengths from 0.5 to 2 (only their direction should matter)."""
    rng = np.random.default_rng(seed)
    y = rng.integers(centers, size=n)
    X = rng.normal(size=(centers, d))[y] + rng.normal(scale=0.5, size=(n, d))
    return X * rng.uniform(0.5, 2.0, size=(n, 1)), y


@pytest.fixture
def small_threshold(monkeypatch):
    """The index from 100 rows, scanning ~600 rows a query (10 of 63 lists at 4,000 rows): a real approximation."""
    monkeypatch.setattr(index_module, "EXACT_BELOW", 100)
    monkeypatch.setattr(index_module, "SCAN_ROWS", 600)


def recall(found: np.ndarray, truth: np.ndarray) -> float:
    return float(np.mean([len(np.intersect1d(a, b)) / truth.shape[1] for a, b in zip(found, truth)]))


def test_below_the_threshold_the_search_is_nearest_itself():
    X, _ = clustered(500)
    Q = X[:40] + 0.1
    index = Index(X)
    assert index.exact and index.ivf is None
    idx, sim = index.search(Q, 7)
    want_idx, want_sim = nearest(X, Q, 7)
    assert np.array_equal(idx, want_idx) and np.array_equal(sim, want_sim)


def test_at_the_threshold_the_index_finds_the_exact_neighbours(small_threshold):
    X, _ = clustered(4000)
    Q = clustered(300, seed=1)[0]
    index = Index(X)
    assert not index.exact and (index.ivf.nprobe, index.ivf.nlist) == (10, 63)
    idx, sim = index.search(Q, 10)
    truth, truth_sim = nearest(X, Q, 10)
    assert recall(idx, truth) >= 0.9
    same = idx == truth
    np.testing.assert_allclose(sim[same], truth_sim[same], atol=1e-5)  # cosine, not an unnormalised product
    assert np.array_equal(Index(X).search(Q, 10)[0], idx)  # a seeded build: the same index every time


@pytest.mark.parametrize("exact", [True, False])
def test_a_query_never_finds_itself_or_its_group(small_threshold, exact):
    X, y = clustered(3000)
    rows = np.arange(0, 3000, 7)
    idx, sim = Index(X, exact=exact).search(X[rows], 5, exclude=rows)
    assert not np.any(idx == rows[:, None]) and np.all(idx >= 0)
    assert np.all(np.diff(sim, axis=1) <= 1e-6)  # best first
    truth = nearest(X, X[rows], 6)[0]
    assert np.mean([np.array_equal(t[t != r][:5], i) for t, r, i in zip(truth, rows, idx)]) >= (1.0 if exact else 0.8)
    groups = y % 50 + 50 * (np.arange(3000) % 2)  # 100 groups of ~30 rows
    idx, _ = Index(X, groups, exact=exact).search(X[rows], 20, exclude=rows)
    assert np.all(idx >= 0) and not np.any(groups[idx] == groups[rows][:, None])
    truth = nearest(X, X[rows], 100)[0]
    truth = [t[groups[t] != g][:20] for t, g in zip(truth, groups[rows])]
    assert np.mean([np.array_equal(t, i) for t, i in zip(truth, idx)]) >= (1.0 if exact else 0.5)


def test_the_index_starts_at_the_threshold(small_threshold):
    X, _ = clustered(100)
    assert Index(X).exact is False and Index(X[:99]).exact is True


def test_a_group_larger_than_the_library_leaves_no_neighbour():
    idx, sim = Index(np.eye(3), groups=["a", "a", "a"]).search(np.eye(3)[:1], 2, exclude=[0])
    assert idx.tolist() == [[-1, -1]] and np.all(np.isneginf(sim))


def test_the_votes_are_neighbours_own_below_the_threshold_and_close_above(monkeypatch, small_threshold):
    X, y = clustered(3000)
    y = y.astype(str)
    groups, held = np.arange(3000) // 2, np.arange(3000) % 3 == 0
    exact_loo = neighbours.exact_leave_group_out_knn_accuracy(X, y, held, groups, k=5)
    exact_knn = neighbours.exact_knn_accuracy(X[~held], y[~held], X[held], y[held], k=5)
    with monkeypatch.context() as m:
        m.setattr(index_module, "EXACT_BELOW", 10_000)
        assert leave_group_out_knn_accuracy(X, y, held, groups, k=5) == exact_loo
        assert knn_accuracy(X[~held], y[~held], X[held], y[held], k=5) == exact_knn
    assert abs(leave_group_out_knn_accuracy(X, y, held, groups, k=5) - exact_loo) <= 0.02
    assert abs(knn_accuracy(X[~held], y[~held], X[held], y[held], k=5) - exact_knn) <= 0.02


def test_the_index_s_leave_group_out_vote_never_hears_the_group(small_threshold):
    X, _ = clustered(1500)
    X = np.vstack([X, X + 1e-3])  # every track twice: a piece and its other rendering
    y = np.tile(np.random.default_rng(1).integers(5, size=1500).astype(str), 2)  # labels unrelated to the sound
    groups, everyone = np.tile(np.arange(1500), 2), np.ones(3000, bool)
    accuracy = leave_group_out_knn_accuracy(X, y, everyone, groups, k=5)
    assert accuracy < 0.4  # chance is 0.2; hearing its twin would make it 1.0
    assert accuracy == pytest.approx(neighbours.exact_leave_group_out_knn_accuracy(X, y, everyone, groups, k=5), abs=0.03)


@pytest.fixture
def library(tmp_path):
    X, y = clustered(400)
    ids = [f"t{i}" for i in range(400)]
    path = tmp_path / "lib.parquet"
    write_feature_table(path, ids, X.astype(np.float32), labels=[str(v) for v in y],
                        extra={"path": [f"/music/{i}.flac" for i in ids]})
    return path


def test_the_cli_switches_to_the_index_above_the_threshold_unless_exact(library, tmp_path, monkeypatch, caplog):
    def neighbours_of(*flags):
        caplog.clear()
        with caplog.at_level(logging.INFO, logger="cml.search.index"):
            assert main(["neighbours", str(library), "t0", "t5", "-k", "5", "--out", str(tmp_path / "n.csv"),
                         *flags]) == 0
        return caplog.text, (tmp_path / "n.csv").read_text()

    log, exact = neighbours_of()
    assert "400 rows: exact search" in log
    monkeypatch.setattr(index_module, "EXACT_BELOW", 100)
    log, _ = neighbours_of()
    assert "400 rows: exact search" in log  # two queries: building an index would cost more than it saves
    monkeypatch.setattr(index_module, "BUILD_PAYS_FROM", 2)
    log, approximate = neighbours_of()
    assert "400 rows: approximate (faiss IVF, 20 of 20 lists) search" in log
    assert approximate.splitlines()[0] == exact.splitlines()[0]
    assert [r.split(",")[2] for r in approximate.splitlines()] == [r.split(",")[2] for r in exact.splitlines()]
    log, forced = neighbours_of("--exact")
    assert "400 rows: exact search" in log and forced == exact
