"""cml.cluster.hierarchy: exact single linkage and HDBSCAN* against ELKI, scipy and scikit-learn; the k-NN path; bad input.

Ties: the data are continuous random rows (no two distances tie) except where duplicates are the point; with
ties, every minimum spanning tree has the same sorted edge lengths, so heights are compared, not edges.
HDBSCAN*'s mutual-reachability distances tie by construction (a row's core distance is the length of every
edge it reaches within it): flat clusters there depend on the order of tied merges, in scikit-learn too.
"""

import json

import numpy as np
import pytest
from scipy.cluster.hierarchy import fcluster, linkage
from sklearn.cluster import HDBSCAN
from sklearn.datasets import make_blobs
from sklearn.metrics import adjusted_rand_score

from cml.cluster import elki, hierarchy
from cml.cluster.methods import cluster
from cml.search.neighbours import l2_normalise
from cml.tables import write_feature_table


@pytest.fixture(scope="module")
def rows():
    """2,000 unit rows of 32 dims in 8 loose blobs: a deep tree with distinct heights."""
    X = make_blobs(n_samples=2000, n_features=32, centers=8, cluster_std=4.0, random_state=3)[0]
    return l2_normalise(X)


@pytest.fixture(scope="module")
def tree(rows):
    return hierarchy.exact_mst(rows)


def test_single_linkage_equals_elki_slink(rows, tree):
    ref = elki.hierarchical(rows, "single", k=12, slink=True, dendrogram=True)
    np.testing.assert_allclose(tree.linkage[:, 2], np.sort(ref.linkage[:, 2]), rtol=1e-9, atol=1e-12)
    assert np.array_equal(hierarchy.cut(tree.linkage, k=12), ref.labels)  # both numbered by first row
    for k in (2, 40, 300):
        assert adjusted_rand_score(hierarchy.cut(tree.linkage, k=k), hierarchy.cut(ref.linkage, k=k)) == 1.0


def test_single_linkage_equals_scipy(rows, tree):
    Z = linkage(rows, "single")
    np.testing.assert_allclose(tree.linkage[:, 2], Z[:, 2], rtol=1e-9, atol=1e-12)
    assert np.array_equal(tree.linkage[:, 3], Z[:, 3])  # the same cluster sizes, merge by merge
    height = float(np.mean(Z[-9:-7, 2]))
    assert adjusted_rand_score(hierarchy.cut(tree.linkage, height=height), fcluster(Z, height, "distance")) == 1.0


@pytest.mark.parametrize("min_pts, min_size", [(5, 5), (10, 25)])
def test_hdbscan_equals_scikit_learn(rows, min_pts, min_size):
    ours = hierarchy.hdbscan_labels(hierarchy.exact_mst(rows, min_pts), min_size)
    ref = HDBSCAN(min_cluster_size=min_size, min_samples=min_pts, copy=True).fit_predict(rows)
    assert np.array_equal(ours < 0, ref < 0)  # the same noise
    assert adjusted_rand_score(ours, ref) == 1.0  # the same clusters (numbered differently)
    assert len(set(ref)) > 2


@pytest.fixture(scope="module")
def wide_rows():
    """420 z-scored, unit rows of 753 dims in 7 overlapping styles: the shape of a pretrained embedding of the
    default corpus (musicnn), where near neighbours are nearly equidistant."""
    rng = np.random.default_rng(0)
    centres = rng.normal(size=(7, 753)) * 0.35
    X = centres[rng.integers(7, size=420)] + rng.normal(size=(420, 753)) * rng.uniform(0.5, 1.5, size=(420, 1))
    return l2_normalise((X - X.mean(0)) / X.std(0))


def test_hdbscan_tree_is_scikit_learns_on_wide_data(wide_rows):
    """min_pts = 5: the same core distances and merge heights as scikit-learn's Prim tree; min_pts = 2, where
    mutual reachability has no ties: the same flat clusters."""
    from sklearn.cluster._hdbscan._linkage import mst_from_data_matrix
    from sklearn.metrics import DistanceMetric
    from sklearn.neighbors import NearestNeighbors

    core = NearestNeighbors(n_neighbors=5).fit(wide_rows).kneighbors(wide_rows)[0][:, -1]
    prim = mst_from_data_matrix(wide_rows, np.ascontiguousarray(core), DistanceMetric.get_metric("euclidean"), 1.0)
    tree = hierarchy.exact_mst(wide_rows, 5)
    np.testing.assert_allclose(tree.core, core, rtol=1e-12)
    np.testing.assert_allclose(tree.heights, np.sort(prim["distance"]), rtol=1e-12)
    untied = hierarchy.exact_mst(wide_rows, 2)
    assert np.diff(untied.heights).min() > 1e-9
    ref = HDBSCAN(min_cluster_size=5, min_samples=2, copy=True).fit_predict(wide_rows)
    ours = hierarchy.hdbscan_labels(untied, 5)
    assert np.array_equal(ours < 0, ref < 0) and adjusted_rand_score(ours, ref) == 1.0
    assert len(set(ref)) > 2


def test_tied_mutual_reachability_orders_scikit_learn_too(wide_rows):
    """Why min_pts = 5 is compared by heights above: the reference's own flat clusters change with the order
    of the rows, as ours do; the disagreement between the two stays within that."""
    def labels(order, ours):
        out = np.empty(len(order), dtype=np.int64)
        X = wide_rows[order]
        out[order] = (hierarchy.hdbscan_labels(hierarchy.exact_mst(X, 5), 5) if ours else
                      HDBSCAN(min_cluster_size=5, min_samples=5, copy=True).fit_predict(X))
        return out

    orders = [np.arange(420)] + [np.random.default_rng(s).permutation(420) for s in range(3)]
    ref = [labels(o, ours=False) for o in orders]
    itself = min(adjusted_rand_score(ref[0], r) for r in ref[1:])
    assert itself < 1.0  # the reference is order-dependent on these data
    ours = labels(orders[0], ours=True)
    assert adjusted_rand_score(ours, ref[0]) >= itself - 0.02


@pytest.mark.parametrize("k", [hierarchy.LIST_K, 4])  # 4: lists of core-distance length, rescans everywhere
def test_mutual_reachability_heights_equal_a_brute_force_tree(rows, k):
    from scipy.sparse.csgraph import minimum_spanning_tree
    X = rows[:400]
    D = np.linalg.norm(X[:, None] - X[None], axis=2)
    core = np.sort(D, axis=1)[:, 4]  # the 5th row counting the row itself
    mrd = np.maximum(D, np.maximum(core[:, None], core[None]))
    expected = np.sort(minimum_spanning_tree(mrd).data)
    got = hierarchy.exact_mst(X, min_pts=5, k=k)
    np.testing.assert_allclose(got.heights, expected, rtol=1e-9)
    np.testing.assert_allclose(got.core, core, rtol=1e-9)


def test_rescans_are_needed_and_exact_with_short_lists(rows, tree):
    """Lists of 2 force the certification and rescans on almost every merge: the tree is the same."""
    short = hierarchy.exact_mst(rows, k=2)
    np.testing.assert_allclose(short.linkage[:, 2], tree.linkage[:, 2], rtol=1e-9)


def test_knn_tree_agrees_with_exact_on_separated_blobs():
    X = l2_normalise(make_blobs(n_samples=1500, n_features=32, centers=6, cluster_std=1.0, random_state=0)[0])
    exact, approx = hierarchy.exact_mst(X), hierarchy.knn_mst(X, k=10)
    assert len(approx.edges) == len(X) - 1
    same = {tuple(e) for e in np.sort(exact.edges, 1)} & {tuple(e) for e in np.sort(approx.edges, 1)}
    assert len(same) / len(exact.edges) > 0.95
    assert adjusted_rand_score(hierarchy.cut(exact.linkage, k=6), hierarchy.cut(approx.linkage, k=6)) == 1.0
    assert (approx.heights >= 0).all() and approx.heights.sum() >= exact.heights.sum() - 1e-9  # no shorter tree


def test_knn_graph_in_pieces_is_joined_into_one_tree():
    rng = np.random.default_rng(0)
    X = l2_normalise(np.concatenate([rng.normal(size=(30, 8)) * 0.01 + c for c in np.eye(8)[:4] * 10]))
    tree = hierarchy.knn_mst(X, k=3)  # 3 neighbours never leave a group of 30: four pieces
    assert len(tree.edges) == len(X) - 1
    assert adjusted_rand_score(hierarchy.cut(tree.linkage, k=4), np.repeat(range(4), 30)) == 1.0


def test_knn_tree_needs_unit_rows():
    with pytest.raises(ValueError, match="needs L2-normalised rows"):
        hierarchy.knn_mst(np.random.default_rng(0).normal(size=(20, 3)))


# --- bad input --------------------------------------------------------------------------------------

def test_nan_or_inf_rows_are_named():
    X = np.random.default_rng(0).normal(size=(10, 3))
    X[3, 1], X[7, 0] = np.nan, np.inf
    with pytest.raises(ValueError, match=r"NaN or inf values in 2 rows \(first: \[3, 7\]\)"):
        hierarchy.exact_mst(X)


def test_duplicate_rows_merge_at_height_zero():
    rng = np.random.default_rng(0)
    X = rng.normal(size=(50, 6))
    X = np.concatenate([X, X[:20], X[:5]])  # 25 duplicates: 25 zero-length edges, tied
    tree = hierarchy.exact_mst(X)
    assert (tree.heights == 0).sum() == 25
    np.testing.assert_allclose(tree.linkage[:, 2], linkage(X, "single")[:, 2], rtol=1e-9, atol=1e-12)
    labels = hierarchy.cut(tree.linkage, k=3)
    assert (labels[50:70] == labels[:20]).all()  # a duplicate is always with its original
    core = hierarchy.exact_mst(X, min_pts=3).core
    assert (core[:5] == 0).all() and (core[20:50] > 0).all()  # three copies: core distance zero


def test_one_row_and_fewer_rows_than_asked():
    one = np.ones((1, 4))
    assert hierarchy.exact_mst(one).linkage.shape == (0, 4)
    assert cluster(one, "mst-single", k=1).labels.tolist() == [0]
    assert cluster(one, "knn-single", k=1).labels.tolist() == [0]
    with pytest.raises(ValueError, match="min_pts=5 must be from 1 to the 3 rows"):
        cluster(np.eye(3), "mst-hdbscan")
    with pytest.raises(ValueError, match="k=4 clusters asked for, but there are only 3 points"):
        cluster(np.eye(3), "mst-single", k=4)
    X = l2_normalise(np.random.default_rng(0).normal(size=(6, 3)))
    assert len(hierarchy.knn_mst(X, k=50).edges) == 5  # more neighbours asked for than there are rows


def test_cut_needs_k_or_height():
    with pytest.raises(ValueError, match="give exactly one of k"):
        hierarchy.cut(np.zeros((0, 4)))
    with pytest.raises(ValueError, match="height=-1.0 must be a finite number >= 0"):
        hierarchy.cut(np.array([[0, 1, 1.0, 2]]), height=-1.0)


# --- the same API for every hierarchical method -------------------------------------------------------

@pytest.mark.parametrize("method", ["mst-single", "knn-single", "elki-slink"])
def test_every_hierarchy_cuts_by_k_or_height_with_its_dendrogram(method):
    X, y = make_blobs(n_samples=90, n_features=8, centers=3, cluster_std=0.4, random_state=0)
    result = cluster(X, method, k=3, dendrogram=True)
    assert adjusted_rand_score(result.labels, y) == 1.0
    assert result.linkage.shape == (89, 4)
    height = float(np.mean(result.linkage[-3:-1, 2]))
    assert np.array_equal(cluster(X, method, height=height).labels, hierarchy.cut(result.linkage, height=height))
    assert np.array_equal(hierarchy.cut(result.linkage, k=3), result.labels)


def test_cli_runs_the_exact_methods_and_says_which_are_exact(tmp_path, capsys, cli_raising):
    X, y = make_blobs(n_samples=120, n_features=8, centers=3, cluster_std=0.3, random_state=2)
    path = write_feature_table(tmp_path / "emb.parquet", [f"t{i}" for i in range(120)], X,
                               labels=[f"g{v}" for v in y])
    for argv in (["--method", "mst-single"], ["--method", "mst-hdbscan", "--min-cluster-size", "10"]):
        assert cli_raising("cluster", path, *argv) == 0
        assert json.loads(capsys.readouterr().out)["nmi"] == 1.0
    with pytest.raises(SystemExit):
        cli_raising("cluster", "--help")
    text = " ".join(capsys.readouterr().out.split())
    assert "exact: elki-slink, " in text and "mst-single, mst-hdbscan; approximate" in text
