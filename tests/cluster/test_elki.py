"""The ELKI wrapper, run against the real ELKI jar (Debian 0.7.1): results, input order, errors."""

import math
import os
import re
import tempfile
import zipfile
from pathlib import Path

import numpy as np
import pytest
from scipy.cluster.hierarchy import fcluster, linkage
from sklearn.cluster import DBSCAN
from sklearn.datasets import make_blobs
from sklearn.metrics import adjusted_rand_score

from cml.cluster import elki
from cml.errors import CmlError


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
    result = elki.dbscan(X, eps=2.0, min_pts=5)
    assert result.args[result.args.index("-db.index") + 1] == elki.CLASSES["covertree"]  # range queries indexed
    got = result.labels
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


def test_a_jar_of_another_elki_version_is_refused_in_one_line(blobs, monkeypatch, tmp_path):
    """Only ELKI 0.7.x's class names are known; ELKI 0.8 (package ``elki.*``) gets a clear error, no JVM."""
    jar = tmp_path / "elki-0.8.jar"
    with zipfile.ZipFile(jar, "w") as zf:
        zf.writestr("elki/application/KDDCLIApplication.class", b"")
    monkeypatch.setenv(elki.ELKI_JAR_ENV, str(jar))
    with pytest.raises(elki.ElkiError, match=r"elki-0\.8\.jar is not ELKI 0\.7\.x") as err:
        elki.kmeans(blobs[0], 3)
    assert "\n" not in str(err.value) and "apt-get install elki" in str(err.value)


@pytest.fixture
def no_jvm(monkeypatch, tmp_path):
    """ELKI cannot be found and no process may start: a bad call must be refused by our own checks."""
    monkeypatch.setenv(elki.ELKI_JAR_ENV, str(tmp_path / "no-elki.jar"))  # find_elki() raises ElkiError

    def no_process(*args, **kwargs):
        raise AssertionError("a JVM was started")

    monkeypatch.setattr(elki.subprocess, "run", no_process)


X10 = np.random.default_rng(0).normal(size=(10, 3))
BAD_CALLS = {
    "empty X": (lambda: elki.kmeans(X10[:0], 2), r"non-empty 2-D array .* shape \(0, 3\)"),
    "1-D X": (lambda: elki.dbscan(X10[0], eps=1.0), r"non-empty 2-D array .* shape \(3,\)"),
    "k=0": (lambda: elki.hierarchical(X10, k=0), r"k=0 must be an integer from 1 to 10 \(the number of points\)"),
    "k>n": (lambda: elki.hierarchical(X10, k=11), r"k=11 must be an integer from 1 to 10"),
    "k not an integer": (lambda: elki.hierarchical(X10, k=2.5), r"k=2.5 must be an integer"),
    "k>distinct": (lambda: elki.kmeans(np.repeat(X10[:2], 5, axis=0), 3),
                   r"k=3 must be an integer from 1 to 2 .*no more than the 2 distinct ones"),
    "k=n k-means": (lambda: elki.kmeans(X10, 10), r"k=10 must be an integer from 1 to 9 .*fewer clusters than the 10"),
    "k=0 k-means": (lambda: elki.kmeans(X10, 0), r"k=0 must be an integer"),
    "k and height": (lambda: elki.hierarchical(X10, k=2, height=1.0), "exactly one of k"),
    "no k, no height": (lambda: elki.hierarchical(X10), "exactly one of k"),
    "negative height": (lambda: elki.hierarchical(X10, height=-0.5), r"height=-0.5 must be a finite number >= 0"),
    "inf height": (lambda: elki.hierarchical(X10, height=math.inf), r"height=inf must be a finite number"),
    "NaN height": (lambda: elki.hierarchical(X10, height=math.nan), r"height=nan must be a finite number"),
    "unknown linkage": (lambda: elki.hierarchical(X10, "median", k=2), "linkage must be one of"),
    "SLINK with Ward": (lambda: elki.hierarchical(X10, "ward", k=2, slink=True), "SLINK is single linkage only"),
    "eps=0": (lambda: elki.dbscan(X10, eps=0.0), r"eps=0.0 must be a finite number > 0"),
    "inf eps": (lambda: elki.dbscan(X10, eps=math.inf), r"eps=inf must be a finite number > 0"),
    "NaN eps": (lambda: elki.dbscan(X10, eps=math.nan), r"eps=nan must be a finite number > 0"),
    "DBSCAN min_pts=0": (lambda: elki.dbscan(X10, eps=1.0, min_pts=0), r"min_pts=0 must be an integer from 1"),
    "DBSCAN min_pts>n": (lambda: elki.dbscan(X10, eps=1.0, min_pts=11), r"min_pts=11 must be an integer from 1 to 10"),
    "HDBSCAN min_pts=1": (lambda: elki.hdbscan(X10, min_pts=1), r"min_pts=1 must be an integer from 2"),
    "HDBSCAN min_pts>n": (lambda: elki.hdbscan(X10, min_pts=11), r"min_pts=11 must be an integer from 2 to 10"),
    "min_cluster_size=0": (lambda: elki.hdbscan(X10, min_cluster_size=0), r"min_cluster_size=0 must be >= 1"),
    "unknown variant": (lambda: elki.kmeans(X10, 2, variant="macqueen"), "variant must be one of"),
    "max_iter<0": (lambda: elki.kmeans(X10, 2, max_iter=-1), r"max_iter=-1 must be >= 0"),
}


@pytest.mark.parametrize("call, message", BAD_CALLS.values(), ids=BAD_CALLS.keys())
def test_parameters_elki_cannot_take_are_refused_before_java_starts(no_jvm, call, message):
    with pytest.raises(ValueError, match=message):
        call()


def test_elki_takes_the_largest_values_we_allow():
    assert (elki.dbscan(X10, eps=0.1, min_pts=10).labels == -1).all()
    assert len(elki.hdbscan(X10, min_pts=10, min_cluster_size=2).labels) == 10
    assert len(np.unique(elki.hierarchical(X10, k=10).labels)) == 10
    assert len(elki.kmeans(X10, 9).labels) == 10


ELKI_FAILURES = {  # args that pass our checks, ELKI's reason in the one-line message, what the log adds
    "unknown class": (["-algorithm", "NoSuchClusteringAlgorithm"],
                      r"Wrong value of parameter algorithm\. Read: NoSuchClusteringAlgorithm\..*"
                      r"Class 'NoSuchClusteringAlgorithm' not found for given value\..*", 1, "Known classes"),
    "Java exception": (["-algorithm", "lloyd", "-kmeans.k", "30"],  # more clusters than rows
                       r"java\.lang\.IllegalArgumentException: Illegal value for size of random sample: 30 > 10 or < 0",
                       0, "\tat de.lmu.ifi.dbs.elki."),
    "unknown option": (["-algorithm", "lloyd", "-kmeans.k", "3", "-no-such-option"],
                       r"The following parameters were not processed: \[-no-such-option\]", 0, "-no-such-option"),
}


@pytest.mark.parametrize("args, reason, code, logged", ELKI_FAILURES.values(), ids=ELKI_FAILURES.keys())
def test_elki_failures_come_back_as_one_line_with_a_log_of_everything(monkeypatch, tmp_path, args, reason, code,
                                                                     logged):
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    args = [elki.find_elki().cls(a) if a == "lloyd" else a for a in args]
    with pytest.raises(elki.ElkiError) as err:
        elki.run_elki(X10, args)
    assert isinstance(err.value, CmlError) and isinstance(err.value, RuntimeError)  # exit code 1 in the CLI
    message = str(err.value)
    found = re.fullmatch(rf"ELKI failed: {reason} \(exit code {code}; full output in (\S+)\)", message)
    assert found, message
    assert "->" not in message and "\tat " not in message  # ELKI's class list and stack trace stay in the log
    log_file = Path(found[1])
    assert log_file.parent == tmp_path and log_file.name.startswith("cml-elki-")  # the system temp dir
    assert logged in log_file.read_text()


def test_heap_sizing():
    assert 256 <= elki.heap_mb(1000, 128) < elki.heap_mb(1000, 128, quadratic=True)
    assert elki.heap_mb(1000, 128, quadratic=True) == int(elki.heap_need_mb(1000, 128, quadratic=True))
    need = elki.heap_need_mb(10**5, 128, quadratic=True)
    assert need > 1.25 * 10**10 / 2 * 8 / 2**20  # the n^2/2 matrix, at the least
    assert elki.heap_need_mb(10**5, 128) < 1024  # SLINK, HDBSCAN, k-means, DBSCAN: linear
    with pytest.raises(elki.ElkiError, match="use SLINK"):
        elki.heap_mb(10**7, 128, quadratic=True)
