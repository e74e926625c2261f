"""cluster() dispatch, the DBSCAN eps rule, metrics and the `cml cluster` CLI."""

import argparse
import json

import numpy as np
import pandas as pd
import pytest
from sklearn.datasets import make_blobs
from sklearn.metrics import adjusted_rand_score

from cml.clustering import METHODS, cluster, evaluate, kdistance_eps, l2_normalise, purity, register_cli
from cml.tables import write_feature_table


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
    assert len(METHODS) == 11


def test_purity():
    assert purity(np.array(list("aabbb")), np.array([0, 0, 0, 1, 1])) == pytest.approx(0.8)


def test_evaluate(blobs):
    X, y = blobs
    scores = evaluate(X, y, [str(v) if i % 2 else None for i, v in enumerate(y)])
    assert scores["n_clusters"] == 3 and scores["noise_fraction"] == 0.0
    assert scores["n_labelled"] == 60 and scores["ari"] == 1.0 and scores["purity"] == 1.0
    assert scores["silhouette"] > 0.8 and scores["davies_bouldin"] < 0.5


def test_evaluate_degenerate_cases(blobs):
    X, y = blobs
    one = evaluate(X, np.zeros(len(X), dtype=int), y)
    assert one["n_clusters"] == 1 and one["silhouette"] is None and one["davies_bouldin"] is None
    assert one["purity"] == pytest.approx(1 / 3, abs=0.01)
    noise = evaluate(X, -np.ones(len(X), dtype=int))
    assert noise["n_clusters"] == 0 and noise["noise_fraction"] == 1.0 and noise["silhouette"] is None
    assert json.dumps(noise)  # no NaN: valid JSON for `dvc metrics`


@pytest.fixture
def cli():
    parser = argparse.ArgumentParser(prog="cml")
    register_cli(parser.add_subparsers(dest="command", required=True))

    def run(*argv: str) -> int:
        args = parser.parse_args(["cluster", *argv])
        return args.func(args)
    return run


def test_cli_writes_clusters_and_metrics(blobs, tmp_path, cli):
    X, y = blobs
    ids = [f"track{i:03d}" for i in range(len(X))]
    table = write_feature_table(tmp_path / "emb.parquet", ids, X, labels=[f"g{v}" for v in y])
    out, scores = tmp_path / "clusters.csv", tmp_path / "metrics.json"
    assert cli(str(table), "--method", "elki-ward", "--k", "3", "--out", str(out), "--metrics", str(scores)) == 0
    got = pd.read_csv(out)
    assert list(got.columns) == ["id", "cluster"] and got["id"].tolist() == ids
    assert adjusted_rand_score(y, got["cluster"]) == 1.0
    metrics = json.loads(scores.read_text())
    assert metrics["method"] == "elki-ward" and metrics["nmi"] == 1.0 and metrics["normalise"] is True
    # k defaults to the number of distinct labels
    assert cli(str(table), "--method", "kmeans", "--out", str(out)) == 0
    assert pd.read_csv(out)["cluster"].nunique() == 3


def test_cli_reports_bad_input(tmp_path, cli, capsys):
    pd.DataFrame({"id": ["a", "b"], "x": [1.0, np.nan]}).to_csv(tmp_path / "t.csv", index=False)
    assert cli(str(tmp_path / "t.csv"), "--method", "kmeans", "--k", "1") == 1
    assert "NaN or inf features in 1 rows, ids: b" in capsys.readouterr().err
    assert cli(str(tmp_path / "t.csv"), "--method", "kmeans", "--drop-invalid") == 1  # no labels to take k from
    assert "--k is required for kmeans" in capsys.readouterr().err
