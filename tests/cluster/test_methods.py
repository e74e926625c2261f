"""cluster() dispatch, the DBSCAN eps rule, metrics and the `cml cluster` CLI."""

import json
import re

import numpy as np
import pandas as pd
import pytest
from sklearn.datasets import make_blobs
from sklearn.metrics import adjusted_rand_score

from cml.cluster.grid import (
    GRID_METRICS,
    ClusterTestingConfig,
    best_pair,
    discover_tables,
    grid_metrics,
    headline_metric,
    load_tables,
    ranking,
    run_grid,
    select_spaces,
)
from cml.cluster.methods import METHODS, cluster, kdistance_eps
from cml.cluster.scores import contingency, medoids, partition_scores, purity
from cml.errors import UsageError
from cml.params import load_config
from cml.search.neighbours import l2_normalise
from cml.tables import FeatureTable, FeatureTableError, check_directions, write_feature_table


@pytest.fixture(scope="module")
def blobs():
    return make_blobs(n_samples=120, n_features=8, centers=3, cluster_std=0.3, random_state=2)


@pytest.fixture(scope="module")
def blobs_and_noise():
    """Three tight 2-D blobs far apart, and 10 scattered points that belong to none."""
    rng = np.random.default_rng(0)
    centres = np.array([[0.0, 10.0], [10.0, -10.0], [-10.0, -10.0]])
    X = np.vstack([c + rng.normal(scale=0.05, size=(50, 2)) for c in centres] +
                  [rng.uniform(-25, 25, size=(10, 2))])
    return X, np.repeat([0, 1, 2, -1], [50, 50, 50, 10])


@pytest.mark.parametrize("method", ["kmeans", "hdbscan", "elki-kmeans"])
def test_methods_find_blobs(blobs, method):
    X, y = blobs
    result = cluster(X, method, k=3, normalise=False)
    assert result.method == method and result.params["k"] == 3
    assert adjusted_rand_score(y, result.labels) == 1.0


def test_normalise_clusters_by_direction():
    # Three directions, each point at a random length: only the direction tells the groups apart.
    rng = np.random.default_rng(0)
    directions = l2_normalise(rng.normal(size=(3, 16)))
    y = np.repeat([0, 1, 2], 40)
    X = directions[y] * rng.uniform(0.1, 10.0, size=(120, 1)) + rng.normal(scale=0.01, size=(120, 16))
    assert adjusted_rand_score(y, cluster(X, "kmeans", k=3, normalise=True).labels) == 1.0
    assert adjusted_rand_score(y, cluster(X, "kmeans", k=3, normalise=False).labels) < 0.9
    np.testing.assert_allclose(np.linalg.norm(l2_normalise(X), axis=1), 1.0)
    assert (l2_normalise(np.zeros((2, 3))) == 0).all()


def test_kdistance_eps_separates_dense_points_from_noise(blobs_and_noise):
    X, y = blobs_and_noise
    eps = kdistance_eps(X, min_pts=5)
    assert 0.05 < eps < 1.0  # above the blobs' spacing, far below the noise's
    result = cluster(X, "dbscan", normalise=False, min_pts=5)
    assert result.params["eps"] == eps
    np.testing.assert_array_equal(result.labels == -1, y == -1)
    assert adjusted_rand_score(y, result.labels) == 1.0


def test_elki_dbscan_equals_sklearn_dbscan(blobs_and_noise):
    X, _ = blobs_and_noise
    ours, theirs = (cluster(X, m, normalise=False).labels for m in ("elki-dbscan", "dbscan"))
    np.testing.assert_array_equal(ours == -1, theirs == -1)
    assert adjusted_rand_score(ours, theirs) == 1.0


def test_bad_calls(blobs):
    X, _ = blobs
    with pytest.raises(ValueError, match="unknown method 'spectral'"):
        cluster(X, "spectral", k=3)
    with pytest.raises(ValueError, match="needs k"):
        cluster(X, "kmeans")
    with pytest.raises(ValueError, match="only 120 points"):
        cluster(X, "kmeans", k=500)
    assert len(METHODS) == 15


def test_rows_without_a_direction_are_named_or_dropped(caplog):
    X = np.arange(12.0).reshape(4, 3)
    X[[1, 3]] = 0.0
    table = FeatureTable(ids=np.array(["a", "b", "c", "d"]), X=X, feature_names=["x", "y", "z"],
                         labels=np.array(["p", "q", "r", "s"], dtype=object), meta=pd.DataFrame({"m": [0, 1, 2, 3]}))
    with pytest.raises(FeatureTableError, match="t.csv: 2 rows of length zero .* ids: b, d"):
        check_directions(table, "t.csv")
    with caplog.at_level("WARNING"):
        kept = check_directions(table, "t.csv", drop_invalid=True)
    assert "ids: b, d: dropped" in caplog.text
    assert kept.ids.tolist() == ["a", "c"] and kept.labels.tolist() == ["p", "r"] and kept.meta["m"].tolist() == [0, 2]
    np.testing.assert_array_equal(kept.X, X[[0, 2]])
    assert check_directions(kept, "t.csv") is kept  # valid input passes unchanged


def test_eps_zero_is_not_replaced_by_the_knee(blobs):
    with pytest.raises(ValueError, match="eps"):
        cluster(blobs[0], "dbscan", eps=0.0)


def test_purity():
    assert purity(np.array(list("aabbb")), np.array([0, 0, 0, 1, 1])) == pytest.approx(0.8)


def test_evaluate(blobs):
    X, y = blobs
    scores = partition_scores(X, y, [str(v) if i % 2 else None for i, v in enumerate(y)])
    assert scores["n_clusters"] == 3 and scores["noise_fraction"] == 0.0
    assert scores["n_labelled"] == 60 and scores["ari"] == 1.0 and scores["purity"] == 1.0
    assert scores["silhouette"] > 0.8 and scores["davies_bouldin"] < 0.5


def test_evaluate_degenerate_cases(blobs):
    X, y = blobs
    one = partition_scores(X, np.zeros(len(X), dtype=int), y)
    assert one["n_clusters"] == 1 and one["silhouette"] is None and one["davies_bouldin"] is None
    assert one["purity"] == pytest.approx(1 / 3, abs=0.01)
    noise = partition_scores(X, -np.ones(len(X), dtype=int))
    assert noise["n_clusters"] == 0 and noise["noise_fraction"] == 1.0 and noise["silhouette"] is None
    assert json.dumps(noise)  # no NaN: valid JSON for `dvc metrics`


def test_cli_writes_clusters_and_metrics(blobs, tmp_path, cli_raising):
    X, y = blobs
    ids = [f"track{i:03d}" for i in range(len(X))]
    table = write_feature_table(tmp_path / "emb.parquet", ids, X, labels=[f"g{v}" for v in y])
    out, scores = tmp_path / "clusters.csv", tmp_path / "metrics.json"
    assert cli_raising("cluster", table, "--method", "elki-ward", "--k", "3", "--out", out, "--metrics", scores) == 0
    got = pd.read_csv(out)
    assert list(got.columns) == ["id", "cluster"] and got["id"].tolist() == ids
    assert adjusted_rand_score(y, got["cluster"]) == 1.0
    metrics = json.loads(scores.read_text())
    assert metrics["method"] == "elki-ward" and metrics["nmi"] == 1.0 and metrics["normalise"] is True
    # k defaults to the number of distinct labels
    assert cli_raising("cluster", str(table), "--method", "kmeans", "--out", str(out)) == 0
    assert pd.read_csv(out)["cluster"].nunique() == 3


def test_cli_and_the_grid_give_the_same_keys_and_values(blobs, tmp_path, cli_raising):
    """`cml cluster` scores with the function the ClusterTesting grid uses: the grid's keys (its metrics.json)
    hold the same values in the CLI's metrics; --standardise z-scores as `load_tables` does for a baseline."""
    X, y = blobs
    ids = [f"t{i:03d}" for i in range(len(X))]
    path = write_feature_table(tmp_path / "hand.parquet", ids, X * [1, 1, 1, 1, 1, 1, 1, 1e3] + 5,
                               labels=[f"g{v}" for v in y])
    tables = load_tables({"hand": path}, zscored=("hand",))
    for method in ("kmeans", "dbscan"):
        row = grid_metrics(run_grid(tables, [method], seed=0))["hand"][method]
        scores = tmp_path / f"{method}.json"
        assert cli_raising("cluster", str(path), "--method", method, "--standardise", "--metrics", str(scores)) == 0
        metrics = json.loads(scores.read_text())
        assert {key: metrics[key] for key in GRID_METRICS} == row
        assert metrics["method"] == method and metrics["n_labelled"] == len(X)


# --- the ClusterTesting grid and what the notebook shows of it ---------------------------------------

def _table(tmp_path, name, X, labels, ids=None):
    ids = ids if ids is not None else [f"t{i:03d}" for i in range(len(X))]
    return write_feature_table(tmp_path / name / "tracks.parquet", ids, X, labels=labels)


def test_discover_and_load_tables(tmp_path, blobs):
    X, y = blobs
    labels = [f"g{v}" for v in y]
    _table(tmp_path / "emb", "b-s0", X, labels)
    _table(tmp_path / "emb", "a-s0", X[::-1], labels[::-1], ids=[f"t{i:03d}" for i in range(len(X))][::-1])
    write_feature_table(tmp_path / "emb/a-s0/tracks.1x.parquet", ["t000"], X[:1])  # crops: not a table
    hand = write_feature_table(tmp_path / "hand.parquet", [f"t{i:03d}" for i in range(len(X))], X * 100 + 5)
    paths = discover_tables(tmp_path / "emb", {"handcrafted": hand, "absent": tmp_path / "no.parquet"})
    assert list(paths) == ["a-s0", "b-s0", "handcrafted"]
    assert list(discover_tables(tmp_path / "emb", select=["b-s0"])) == ["b-s0"]
    with pytest.raises(ValueError, match="no feature table for \\['c-s0'\\]; available: a-s0, b-s0"):
        discover_tables(tmp_path / "emb", select="c-s0")

    ids = ["t005", "t001", "t100"]
    tables = load_tables(paths, ids=ids, labels={"t001": "x", "t100": "y"})
    for name, table in tables.items():
        assert table.ids.tolist() == ids and table.labels.tolist() == [None, "x", "y"], name
    np.testing.assert_allclose(tables["a-s0"].X, tables["b-s0"].X)  # same rows whatever the file order
    np.testing.assert_allclose(tables["handcrafted"].X.std(axis=0), 1.0)  # z-scored baseline
    with pytest.raises(ValueError, match="1 tracks have no row"):
        load_tables(paths, ids=["t001", "zzz"])


def test_run_grid_scores_every_pair_and_reports_failures(blobs):
    X, y = blobs
    rng = np.random.default_rng(0)
    good = FeatureTable(ids=np.arange(len(X)).astype(str), X=X, feature_names=[], labels=np.array(
        [f"g{v}" for v in y], dtype=object), meta=pd.DataFrame(index=range(len(X))))
    noise = FeatureTable(ids=good.ids, X=rng.normal(size=X.shape), feature_names=[], labels=good.labels,
                         meta=good.meta)
    tiny = FeatureTable(ids=good.ids[:2], X=X[:2], feature_names=[], labels=good.labels[:2], meta=good.meta[:2])
    grid = run_grid({"good": good, "noise": noise, "tiny": tiny}, ["elki-ward", "kmeans"], k=3, seed=0)
    assert grid[["embedding", "method"]].values.tolist() == [
        [e, m] for e in ("good", "noise", "tiny") for m in ("elki-ward", "kmeans")]
    ok = grid[grid["embedding"] == "good"]
    assert (ok["nmi"] == 1.0).all() and (ok["purity"] == 1.0).all() and (ok["k"] == 3).all()
    assert grid.loc[grid["embedding"] == "tiny", "error"].str.contains("only 2 points").all()

    nested = grid_metrics(grid)
    assert set(nested) == {"good", "noise"} and set(nested["good"]) == {"elki-ward", "kmeans"}
    assert nested["good"]["kmeans"]["ari"] == 1.0 and set(nested["good"]["kmeans"]) == set(GRID_METRICS)
    assert json.dumps(nested)
    assert headline_metric(grid) == "nmi"
    assert ranking(grid, "nmi").index.tolist()[0] == "good"
    assert ranking(grid, "davies_bouldin").index.tolist()[0] == "good"  # lower is better there
    assert best_pair(grid, "nmi", methods=["kmeans"])[["embedding", "method"]].tolist() == ["good", "kmeans"]
    # k = number of true labels when not given; ELKI methods only where asked
    limited = run_grid({"good": good, "tiny": tiny}, ["kmeans", "elki-kmeans"], elki_on=["tiny"])
    assert limited[["embedding", "method"]].values.tolist() == [["good", "kmeans"], ["tiny", "kmeans"],
                                                               ["tiny", "elki-kmeans"]]
    assert limited["k"].tolist() == [3, 2, 2]
    assert select_spaces(["a-s0", "untrained-a", "handcrafted"], "trained") == ["a-s0", "handcrafted"]
    assert select_spaces(["a-s0", "untrained-a"], "all") == ["a-s0", "untrained-a"]
    with pytest.raises(ValueError, match="unknown feature spaces \\['b'\\]"):
        select_spaces(["a-s0"], ["b"])


def test_medoids_are_the_most_central_members():
    X = np.array([[0.0], [1.0], [2.0], [3.0], [10.0], [100.0], [101.0], [500.0]])
    labels = np.array([0, 0, 0, 0, 0, 1, 1, -1])
    got = medoids(X, labels, n=2)
    assert set(got) == {0, 1}  # noise has no medoid
    assert got[0].tolist() == [2, 1]  # sums of distances: 2 -> 12, then 1 and 3 -> 13 (stable: 1 first)
    assert got[1].tolist() == [5, 6]


def test_contingency_orders_clusters_by_majority_label():
    pred = np.array([5, 5, 5, 2, 2, -1, 7, 7])
    true = ["b", "b", "a", "a", "a", "b", None, "b"]
    table = contingency(pred, true)
    assert table.columns.tolist() == ["a", "b"]
    assert table.index.tolist() == ["2", "5", "7", "noise"]  # 2 is mostly a, 5 and 7 mostly b, noise last
    assert table.loc["5"].tolist() == [1, 2] and table.loc["7"].tolist() == [0, 1]  # unlabelled row left out
    assert table.to_numpy().sum() == 7


@pytest.mark.parametrize("line, message", [
    ("split: train", "split must be 'all' or 'test', got 'train'"),
    ("methods: [kmeans, ward]", "unknown methods \\['ward'\\]"),
    ("methods: []", "methods must be a non-empty list"),
    ("methods: kmeans", "methods must be a non-empty list"),
    ("k: 1", "k must be an integer >= 2, or null"),
    ("k: 3.5", "k must be an integer >= 2, or null"),
    ("k: true", "k must be an integer >= 2, or null"),
    ("embeddings: []", "embeddings must be 'all' or a list"),
    ("elki_embeddings: 3", "elki_embeddings must be 'all', 'trained' or a list"),
    ("seed: -1", "seed must be an integer >= 0"),
    ("medoids_per_cluster: 0", "medoids_per_cluster must be an integer >= 1"),
    ("audio_seconds: 0", "audio_seconds must be a finite number > 0"),
    ("audio_seconds: .inf", "audio_seconds must be a finite number > 0"),
    ("audio_seconds: six", "audio_seconds must be a finite number > 0"),
    ("n_clusters: 3", "unknown keys in 'cluster_testing': \\['n_clusters'\\]"),
])
def test_cluster_testing_params_are_checked_in_one_line(tmp_path, line, message):
    path = tmp_path / "params.yaml"
    path.write_text(f"cluster_testing:\n  {line}\n")
    with pytest.raises(UsageError, match=f"{path}: section 'cluster_testing': {message}") as err:
        load_config(path, "cluster_testing", ClusterTestingConfig)
    assert "\n" not in str(err.value)


def test_cluster_testing_params_defaults_and_valid_values(tmp_path):
    path = tmp_path / "params.yaml"
    path.write_text("cluster_testing: {}\n")
    assert load_config(path, "cluster_testing", ClusterTestingConfig) == ClusterTestingConfig()
    path.write_text("cluster_testing:\n  k: 4\n  split: test\n  elki_embeddings: [a-s0]\n  audio_seconds: 3\n")
    config = load_config(path, "cluster_testing", ClusterTestingConfig)
    assert (config.k, config.split, config.elki_embeddings, config.audio_seconds) == (4, "test", ["a-s0"], 3)


def test_cluster_testing_rows_follow_the_split():
    tracks = pd.DataFrame({"split": ["train", "test", "val", "test"]}, index=["a", "b", "c", "d"])
    assert ClusterTestingConfig().rows(tracks).index.tolist() == ["a", "b", "c", "d"]
    assert ClusterTestingConfig(split="test").rows(tracks).index.tolist() == ["b", "d"]
    with pytest.raises(ValueError, match="split 'test' selects 1 of 3 tracks; clustering needs at least 2"):
        ClusterTestingConfig(split="test").rows(tracks.iloc[:3])


# --- the guard: what cannot run at this size is skipped with a reason, what can runs ------------------

GIB = 1024.0  # MiB
QUADRATIC = ("elki-slink", "elki-single", "elki-complete", "elki-average", "elki-ward", "elki-hdbscan", "hdbscan")
SCALABLE = ("kmeans", "elki-kmeans", "dbscan", "elki-dbscan")  # elki-dbscan: with its cover tree


def test_every_method_of_the_grid_has_a_measured_cost():
    from cml.cluster.costs import COSTS
    assert set(COSTS) == set(METHODS)


@pytest.mark.parametrize("method", QUADRATIC)
def test_a_quadratic_method_is_skipped_at_100k_rows_with_a_reason(method):
    from cml.cluster.costs import too_costly
    reason = too_costly(method, 100_000, 128, memory_mb=18 * GIB)  # asks the model: nothing runs
    assert reason.startswith("skipped at 100,000 rows: ")
    assert too_costly(method, 420, 128, memory_mb=18 * GIB) is None  # the project's own library runs


@pytest.mark.parametrize("method", SCALABLE)
def test_what_scales_runs_at_100k_rows(method):
    from cml.cluster.costs import too_costly
    assert too_costly(method, 100_000, 128, memory_mb=18 * GIB) is None
    if method in ("kmeans", "elki-kmeans"):  # linear: a million rows too
        assert too_costly(method, 1_000_000, 128, memory_mb=18 * GIB) is None
    else:
        assert re.search(r"O\(n\^2(\.\d)?\) time", too_costly(method, 1_000_000, 128, memory_mb=18 * GIB))


@pytest.mark.parametrize("method", ["mst-single", "mst-hdbscan", "knn-single", "knn-hdbscan"])
def test_a_hierarchy_runs_at_100k_rows_and_a_k_nn_one_at_a_million(method):
    from cml.cluster.costs import too_costly
    assert too_costly(method, 100_000, 128, memory_mb=18 * GIB) is None
    at_1m = too_costly(method, 1_000_000, 128, memory_mb=18 * GIB)
    assert (at_1m is None) if method.startswith("knn-") else at_1m.startswith("skipped at 1,000,000 rows: O(n^2)")


def test_the_time_guard_extrapolates_the_measured_base_point():
    from cml.cluster.costs import COSTS, too_costly
    cost = COSTS["elki-slink"]
    at_budget = cost.rows * (900 / cost.seconds) ** (1 / cost.exponent)  # the rows that take 15 min
    assert too_costly("elki-slink", int(at_budget * 0.99), 128, memory_mb=1e9) is None
    reason = too_costly("elki-slink", int(at_budget * 1.01), 128, memory_mb=1e9)
    assert reason.startswith(f"skipped at {int(at_budget * 1.01):,} rows: O(n^2) time, about 15 min")
    assert too_costly("elki-slink", int(at_budget * 1.01), 128, budget=float("inf"), memory_mb=1e9) is None
    assert too_costly("elki-slink", int(at_budget * 0.8), 256, memory_mb=1e9) is not None  # twice the dims


def test_the_memory_guard_skips_an_n2_matrix_that_does_not_fit():
    from cml.cluster.costs import too_costly
    need = 1.25 * 100_000 ** 2 / 2 * 8 / 2**30  # GiB: Anderberg's triangular matrix
    reason = too_costly("elki-ward", 100_000, 128, budget=float("inf"), memory_mb=(need - 1) * GIB)
    assert re.match(r"skipped at 100,000 rows: about 4\d\.\d GiB of memory \(an n\^2/2 distance matrix\)", reason)
    assert too_costly("elki-ward", 100_000, 128, budget=float("inf"), memory_mb=(need + 2) * GIB) is None
    # linear memory is checked too: a million rows of k-means in 1 GiB
    assert "GiB of memory (the data and its copies)" in too_costly("kmeans", 1_000_000, 128, memory_mb=GIB)


def test_dbscan_neighbourhood_lists_are_sized_before_they_are_built(monkeypatch, blobs):
    import cml.cluster.costs as cc
    from cml.cluster.methods import cluster
    X = np.random.default_rng(0).normal(size=(300, 4))
    assert cc.dbscan_lists_mb(X, eps=1e6) == pytest.approx(300 * (300 * 16 + 100) / 2**20)  # all neighbours
    base = cc.estimate("dbscan", 300, 4)[1]  # the guard's estimate without the lists: it lets DBSCAN start
    monkeypatch.setattr(cc, "memory_limit_mb", lambda: base + 0.01)  # as if the lists passed the RAM
    assert cc.too_costly("dbscan", 300, 4) is None
    with pytest.raises(ValueError, match="skipped at 300 rows: scikit-learn DBSCAN's neighbourhood lists"):
        cluster(X, "dbscan", eps=1e6)
    table = FeatureTable(ids=np.arange(300).astype(str), X=X, feature_names=list("abcd"), labels=None,
                         meta=pd.DataFrame(index=range(300)))
    grid = run_grid({"space": table}, ["dbscan"])
    assert grid.loc[0, "error"].startswith("skipped at 300 rows: scikit-learn DBSCAN's")


def test_the_grid_skips_what_the_guard_refuses_and_runs_the_rest(monkeypatch):
    import cml.cluster.costs as cc
    monkeypatch.setitem(cc.COSTS, "elki-slink", cc.Cost(seconds=1e6, rows=40, exponent=2, copies=0))  # as if 100k
    rng = np.random.default_rng(0)
    X = np.concatenate([rng.normal(0, 0.1, (20, 4)) + 1, rng.normal(0, 0.1, (20, 4)) - 1])
    table = FeatureTable(ids=np.array([str(i) for i in range(40)]), X=X, feature_names=list("abcd"),
                         labels=np.array(["a"] * 20 + ["b"] * 20, dtype=object), meta=pd.DataFrame(index=range(40)))
    grid = run_grid({"space": table}, ["elki-slink", "kmeans"])
    by = grid.set_index("method")
    assert by.loc["elki-slink", "error"].startswith("skipped at 40 rows: O(n^2) time, about 278 h by extrapolation")
    assert pd.isna(by.loc["kmeans", "error"]) and by.loc["kmeans", "nmi"] == 1.0  # what can run still runs


def test_cli_refuses_what_would_not_fit_in_memory_and_warns_what_is_slow(blobs, tmp_path, cli_raising, monkeypatch,
                                                                         caplog):
    import cml.cluster.costs as cc
    X, y = blobs
    path = write_feature_table(tmp_path / "emb.parquet", [f"t{i}" for i in range(len(X))], X,
                               labels=[f"g{v}" for v in y])
    monkeypatch.setitem(cc.COSTS, "kmeans", cc.Cost(seconds=1e9, rows=100, exponent=1, copies=0))
    with caplog.at_level("WARNING"):
        assert cli_raising("cluster", str(path), "--method", "kmeans", "--k", "3") == 0  # asked for by name: slow runs
    assert "kmeans runs anyway, as asked; the grid would have skipped at 120 rows" in caplog.text
    monkeypatch.setattr(cc, "memory_limit_mb", lambda: 1e-3)
    with pytest.raises(UsageError, match=r"--method kmeans skipped at 120 rows: about [\d.]+ GiB of memory"):
        cli_raising("cluster", str(path), "--method", "kmeans", "--k", "3")
