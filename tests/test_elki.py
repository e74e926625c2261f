"""The ELKI wrapper, run against the real ELKI jar (Debian 0.7.1): results, input order, errors."""

import os
import tempfile

import numpy as np
import pytest
from scipy.cluster.hierarchy import fcluster, linkage
from sklearn.cluster import DBSCAN
from sklearn.datasets import make_blobs
from sklearn.metrics import adjusted_rand_score

from cml import elki


@pytest.fixture(scope="module")
def no_ties():
    """Unstructured continuous data: almost surely no tied distances, so every cut is unique."""
    return np.random.default_rng(1).normal(size=(60, 4))


@pytest.fixture(scope="module")
def blobs():
    return make_blobs(n_samples=90, n_features=8, centers=3, cluster_std=0.4, random_state=0)


def same_partition(a, b) -> bool:
    return adjusted_rand_score(a, b) == 1.0


@pytest.mark.parametrize("method", ["slink", "single", "complete", "average", "ward"])
def test_flat_clusters_equal_scipy(no_ties, method):
    scipy_method = "single" if method == "slink" else method
    expected = fcluster(linkage(no_ties, scipy_method), 5, criterion="maxclust")
    got = elki.hierarchical(no_ties, scipy_method, k=5, slink=method == "slink").labels
    assert len(np.unique(got)) == 5
    assert same_partition(expected, got)


@pytest.mark.parametrize("method", ["slink", "ward"])
def test_dendrogram_equals_scipy(no_ties, method):
    scipy_method = "single" if method == "slink" else method
    Z = linkage(no_ties, scipy_method)
    got = elki.hierarchical(no_ties, scipy_method, k=3, slink=method == "slink", dendrogram=True).linkage
    assert got.shape == Z.shape
    np.testing.assert_allclose(np.sort(got[:, 2]), np.sort(Z[:, 2]), rtol=1e-9)  # Ward in scipy's units too
    for k in (2, 7, 20):
        assert same_partition(fcluster(got, k, "maxclust"), fcluster(Z, k, "maxclust"))


def test_cut_by_height_equals_scipy(no_ties):
    Z = linkage(no_ties, "complete")
    height = float(np.mean(Z[-6:-4, 2]))  # between two merges: a unique cut
    got = elki.hierarchical(no_ties, "complete", height=height).labels
    assert same_partition(fcluster(Z, height, criterion="distance"), got)


@pytest.mark.parametrize("variant", elki.KMEANS_VARIANTS)
def test_kmeans_finds_blobs(blobs, variant):
    X, y = blobs
    assert same_partition(y, elki.kmeans(X, 3, variant=variant, seed=0).labels)


def test_dbscan_finds_blobs_like_sklearn(blobs):
    X, y = blobs
    got = elki.dbscan(X, eps=2.0, min_pts=5).labels
    assert same_partition(y, got) and (got >= 0).all()
    tight = elki.dbscan(X, eps=0.9, min_pts=5).labels  # some noise: same core/noise decision as sklearn
    expected = DBSCAN(eps=0.9, min_samples=5).fit_predict(X)
    assert (tight == -1).any()
    np.testing.assert_array_equal(tight == -1, expected == -1)
    assert same_partition(tight, expected)


def test_hdbscan_marks_outliers_as_noise(blobs):
    X, y = blobs
    far = np.random.default_rng(0).uniform(-60, 60, size=(4, X.shape[1]))
    labels = elki.hdbscan(np.vstack([X, far]), min_pts=5, min_cluster_size=10).labels
    assert (labels[-4:] == -1).all()
    core = labels[:-4] >= 0
    assert core.mean() > 0.9 and same_partition(y[core], labels[:-4][core])


def test_labels_come_back_in_input_order(blobs, tmp_path, monkeypatch):
    X, y = blobs
    perm = np.random.default_rng(3).permutation(len(X))
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    labels = elki.hierarchical(X[perm], "average", k=3).labels
    assert same_partition(y[perm], labels)
    assert labels[0] == 0  # clusters are numbered by their first row
    assert os.listdir(tmp_path) == []  # the temporary directory is gone


def test_duplicate_points(blobs):
    X, _ = blobs
    Xd = np.vstack([X, X[:10], X[:10]])  # every one of the first 10 points three times
    for labels in (elki.hierarchical(Xd, "ward", k=3).labels, elki.hdbscan(Xd, min_pts=5).labels):
        assert len(labels) == len(Xd)
        np.testing.assert_array_equal(labels[:10], labels[-10:])
        np.testing.assert_array_equal(labels[:10], labels[90:100])
    with pytest.raises(ValueError, match="only 2 distinct points"):
        elki.kmeans(np.repeat(X[:2], 5, axis=0), 3)


def test_nan_rejected_before_java_starts(blobs, monkeypatch):
    X = blobs[0].copy()
    X[[3, 40]] = [np.nan] * X.shape[1]
    X[41, 0] = np.inf
    monkeypatch.setenv(elki.ELKI_JAR_ENV, "/nonexistent/elki.jar")  # finding ELKI would fail first
    with pytest.raises(ValueError, match=r"NaN or inf values in 3 rows \(row indices 3, 40, 41\)"):
        elki.hierarchical(X, "single", k=3)


def test_missing_jar_and_java(blobs, monkeypatch, tmp_path):
    monkeypatch.setenv(elki.ELKI_JAR_ENV, str(tmp_path / "elki.jar"))
    with pytest.raises(elki.ElkiError, match="elki.jar does not exist.*apt-get install elki default-jre-headless"):
        elki.kmeans(blobs[0], 3)
    monkeypatch.delenv(elki.ELKI_JAR_ENV)
    monkeypatch.setenv("PATH", str(tmp_path))
    monkeypatch.delenv("JAVA_HOME", raising=False)
    with pytest.raises(elki.ElkiError, match="Java not found"):
        elki.kmeans(blobs[0], 3)


def test_k_larger_than_n(blobs):
    with pytest.raises(ValueError, match="k=91 clusters asked for, but there are only 90 points"):
        elki.hierarchical(blobs[0], "single", k=91)


def test_elki_configuration_errors_are_shown_verbatim(blobs):
    with pytest.raises(elki.ElkiError) as err:
        elki.run_elki(blobs[0], ["-algorithm", "NoSuchClusteringAlgorithm"])
    assert "NoSuchClusteringAlgorithm" in str(err.value)
    assert "Stopping execution because of configuration errors" in str(err.value)  # ELKI's own words


def test_heap_sizing():
    assert 256 <= elki.heap_mb(1000, 128) < elki.heap_mb(1000, 128, quadratic=True)
    with pytest.raises(elki.ElkiError, match="use SLINK"):
        elki.heap_mb(10**7, 128, quadratic=True)
