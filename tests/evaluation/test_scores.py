import json
import warnings

import numpy as np
import pandas as pd
import pytest

from cml.evaluation import scores as evaluation
from cml.evaluation.probes import linear_probe_accuracy
from cml.evaluation.scores import evaluate_embeddings, kmeans_agreement, length_extrapolation
from cml.search.neighbours import exact_leave_group_out_knn_accuracy
from cml.tables import standardise, write_feature_table
from tests.helpers import blobs


def test_separated_blobs_score_perfectly():
    X, y, split = blobs()
    m = evaluate_embeddings(X, y, split)
    assert (m["knn_acc"], m["linear_acc"], m["nmi"], m["ari"]) == (1.0, 1.0, 1.0, 1.0)
    assert (m["n_train"], m["n_test"], m["n_classes"]) == (80, 28, 4)
    assert m["chance"] == 0.25 and "notes" not in m


def test_random_labels_score_near_chance():
    rng = np.random.default_rng(1)
    n = 600
    X = rng.normal(size=(n, 16))
    y = rng.choice(["a", "b", "c", "d"], n)
    split = np.where(rng.random(n) < 0.7, "train", "test")
    m = evaluate_embeddings(X, y, split, seed=0)
    assert abs(m["knn_acc"] - 0.25) < 0.1 and abs(m["linear_acc"] - 0.25) < 0.1
    assert m["nmi"] < 0.05 and abs(m["ari"]) < 0.05


def test_label_structure_that_only_a_linear_probe_reads():
    """One informative dimension among many noisy ones: the linear probe finds it, k-NN is diluted."""
    rng = np.random.default_rng(2)
    n = 400
    y = rng.integers(0, 2, n)
    X = np.concatenate([(2 * y - 1)[:, None] * 1.0 + rng.normal(0, 0.2, (n, 1)), rng.normal(0, 1, (n, 200))], 1)
    split = np.where(np.arange(n) < 300, "train", "test")
    assert linear_probe_accuracy(X[:300], y[:300], X[300:], y[300:]) > 0.95
    assert evaluate_embeddings(X, y, split)["knn_acc"] < 0.8


def test_missing_labels_or_split_say_why():
    X, y, split = blobs()
    no_labels = evaluate_embeddings(X, None, split)
    assert not set(evaluation.METRIC_KEYS) & set(no_labels)
    assert no_labels["notes"] == {k: "no labels" for k in evaluation.METRIC_KEYS}
    no_split = evaluate_embeddings(X, y, None)
    assert no_split["nmi"] == 1.0 and no_split["ari"] == 1.0 and "knn_acc" not in no_split
    assert no_split["notes"]["knn_acc"] == "no train/test split"
    partial = y.astype(object)
    partial[:5] = None
    m = evaluate_embeddings(X, partial, split)
    assert m["notes"]["unlabelled"] == "5 rows without a label left out" and m["n_train"] == 75
    one_class = evaluate_embeddings(X, np.where(split == "train", "c0", y), split)
    assert "linear_acc" not in one_class and "two classes" in one_class["notes"]["linear_acc"]
    assert "knn_acc" in one_class
    empty = evaluate_embeddings(X, y, np.full(len(y), "train", dtype=object))
    assert "knn_acc" not in empty and "nmi" not in empty and "empty split" in empty["notes"]["knn_acc"]


def test_evaluation_is_deterministic():
    rng = np.random.default_rng(3)
    X = rng.normal(size=(200, 8))
    y = rng.choice(list("abc"), 200)
    split = np.where(rng.random(200) < 0.6, "train", "test")
    assert evaluate_embeddings(X, y, split, seed=7) == evaluate_embeddings(X, y, split, seed=7)
    assert kmeans_agreement(X, y, seed=1) == kmeans_agreement(X, y, seed=1)


def test_length_extrapolation_table():
    X, y, split = blobs()
    train, test = split == "train", split == "test"
    rng = np.random.default_rng(4)
    crops = {"1x": rng.normal(size=(test.sum(), X.shape[1])), "full": X[test]}
    table = length_extrapolation(X[train], y[train], crops, y[test])
    assert list(table.index) == ["1x", "full"] and list(table.columns) == ["knn_acc", "linear_acc", "nmi", "ari"]
    assert table.loc["full"].tolist() == [1.0, 1.0, 1.0, 1.0]
    assert table.loc["1x", "knn_acc"] < 0.6 and table.loc["1x", "nmi"] < 0.5


def test_cli_spotify_csv_with_split_file_and_fallback(tmp_path, cli_raising):
    X, y, split = blobs(classes=3)
    ids = [f"sp{i:03d}" for i in range(len(X))]
    frame = pd.DataFrame(X, columns=[f"feat{j}" for j in range(X.shape[1])])
    frame.insert(0, "track_id", ids)
    frame.insert(1, "track_genre", y)
    frame.insert(2, "track_name", "song")
    frame.to_csv(tmp_path / "spotify.csv", index=False)
    pd.DataFrame({"id": ids[:-2], "split": split[:-2]}).to_csv(tmp_path / "tracks.csv", index=False)

    out = tmp_path / "m" / "metrics.json"
    assert cli_raising("evaluate", tmp_path / "spotify.csv", "--out", out, "--split", tmp_path / "tracks.csv",
                       "--label-column", "track_genre") == 0
    m = json.loads(out.read_text())
    assert (m["knn_acc"], m["linear_acc"], m["nmi"], m["ari"]) == (1.0, 1.0, 1.0, 1.0)
    assert m["n_test"] == split[:-2].tolist().count("test")

    assert cli_raising("evaluate", tmp_path / "spotify.csv", "--out", out, "--label-column", "track_genre",
                       "--seed", "1") == 0
    m = json.loads(out.read_text())
    assert m["n_test"] == 18 and m["n_train"] == 72 and m["knn_acc"] == 1.0  # seeded 80/20 stratified split

    assert cli_raising("evaluate", str(tmp_path / "spotify.csv"), "--out", str(out)) == 0  # no label column
    assert set(json.loads(out.read_text())["notes"]) == set(evaluation.METRIC_KEYS)


def test_cli_and_the_compare_notebook_s_function_give_the_same_keys_and_values(tmp_path, cli_raising):
    """`cml evaluate FILE --split tracks.csv` writes what `score_space` (the Compare notebook's scores) gives
    on the same rows: the same keys, from the same code, and the same values; --standardise as standardised."""
    X, y, split = blobs(classes=3)
    rng = np.random.default_rng(2)
    ids = [f"t{i:03d}" for i in range(len(X))]
    tracks = pd.DataFrame({"id": ids, "label": y, "split": split, "piece": [f"p{i // 2}" for i in range(len(X))],
                           "programs": rng.choice(["0;33", "40;0", "73"], len(X)),
                           "duration": rng.uniform(20, 300, len(X))})
    tracks.to_csv(tmp_path / "tracks.csv", index=False)
    loud = np.hstack([X, 1e3 * rng.normal(size=(len(X), 1))])  # one column in other units
    write_feature_table(tmp_path / "emb.parquet", ids[::-1], loud[::-1], labels=y[::-1])  # another row order
    expected = evaluation.score_space(loud, tracks.set_index("id"))
    assert {"knn_acc", "knn_acc_loo", "knn_timbre_acc", "nmi_all", "pc1_share", "n_test"} <= set(expected)
    for flags, standardised in (([], False), (["--standardise"], True)):
        out = tmp_path / "metrics.json"
        assert cli_raising("evaluate", tmp_path / "emb.parquet", "--out", out, "--split", tmp_path / "tracks.csv",
                           *flags) == 0
        expected = evaluation.score_space(loud, tracks.set_index("id"), standardised=standardised)
        assert json.loads(out.read_text()) == pytest.approx(expected, rel=1e-9)  # rows in another order: float sums


def test_cli_uses_the_tables_own_split(tmp_path, cli_raising):  # bad input: tests/test_cli_domains.py
    X, y, split = blobs(classes=2)
    ids = [f"t{i}" for i in range(len(X))]
    write_feature_table(tmp_path / "emb.parquet", ids, X, labels=y, extra={"split": split})
    out = tmp_path / "metrics.json"
    assert cli_raising("evaluate", str(tmp_path / "emb.parquet"), "--out", str(out)) == 0
    assert json.loads(out.read_text())["n_test"] == 14


def test_leave_group_out_knn_keeps_a_query_s_own_group_out_of_the_vote():
    """Twins (two renderings of one piece) with a label drawn per piece: each twin predicts the other
    perfectly, so plain leave-one-out is perfect; without the twin the labels are noise, near chance."""
    rng = np.random.default_rng(4)
    pieces = 150
    base = rng.normal(size=(pieces, 16))
    X = np.repeat(base, 2, axis=0) + rng.normal(0, 0.01, (2 * pieces, 16))
    y = np.repeat(rng.choice(["a", "b", "c"], pieces), 2)
    groups = np.repeat(np.arange(pieces), 2)
    everyone = np.ones(2 * pieces, bool)
    assert exact_leave_group_out_knn_accuracy(X, y, everyone, k=1) == 1.0
    assert abs(exact_leave_group_out_knn_accuracy(X, y, everyone, groups, k=5) - 1 / 3) < 0.12


def test_leave_group_out_knn_scores_only_the_queries_and_blocks_agree():
    X, y, split = blobs()
    queries = split != "train"
    assert exact_leave_group_out_knn_accuracy(X, y, queries) == 1.0
    one_per_class = np.zeros(len(y), bool)
    one_per_class[np.unique(y, return_index=True)[1]] = True
    y_bad = np.where(one_per_class, y, "zz")  # every neighbour of a query is "zz": only the queries are scored
    assert exact_leave_group_out_knn_accuracy(X, y_bad, one_per_class) == 0.0
    assert exact_leave_group_out_knn_accuracy(X, y_bad, ~one_per_class) == 1.0
    rng = np.random.default_rng(5)
    Xr, yr = rng.normal(size=(300, 8)), rng.choice(list("abcd"), 300)
    groups = rng.integers(0, 100, 300)
    whole = exact_leave_group_out_knn_accuracy(Xr, yr, np.ones(300, bool), groups)
    assert whole == exact_leave_group_out_knn_accuracy(Xr, yr, np.ones(300, bool), groups, block=7)
    assert np.isnan(exact_leave_group_out_knn_accuracy(Xr, yr, np.zeros(300, bool)))


def test_length_diagnostics_flag_a_space_organised_by_duration():
    rng = np.random.default_rng(0)
    seconds = rng.uniform(10, 600, 120)
    clean = rng.normal(size=(120, 32))
    by_length = clean * 0.1 + np.outer(np.log(seconds) - np.log(seconds).mean(), np.ones(32))  # one length direction
    ok, bad = evaluation.length_diagnostics(clean, seconds), evaluation.length_diagnostics(by_length, seconds)
    assert ok["pc1_share"] < 0.15 and abs(ok["pc1_duration_rho"]) < 0.3
    assert bad["pc1_share"] > 0.5 and abs(bad["pc1_duration_rho"]) > 0.9



def test_the_length_correlation_does_not_depend_on_the_sign_svd_gives_a_direction(monkeypatch):
    rng = np.random.default_rng(1)
    seconds = rng.uniform(10, 600, 80)
    X = rng.normal(size=(80, 16)) * 0.1 + np.outer(np.log(seconds) - np.log(seconds).mean(), np.ones(16))
    svd = np.linalg.svd
    as_given = evaluation.length_diagnostics(X, seconds)["pc1_duration_rho"]
    monkeypatch.setattr(np.linalg, "svd", lambda *a, **k: (lambda u, s, vt: (-u, s, -vt))(*svd(*a, **k)))
    flipped = evaluation.length_diagnostics(X, seconds)["pc1_duration_rho"]
    assert as_given == pytest.approx(flipped) and as_given > 0.9


def test_score_space_scores_every_track_and_keeps_a_piece_out_of_its_own_vote():
    X, y, split = blobs(classes=3)
    tracks = pd.DataFrame({"label": y, "split": split, "duration": 30.0 + np.arange(len(y))},
                          index=[f"t{i}" for i in range(len(y))])
    s = evaluation.score_space(X, tracks)
    assert s["knn_acc"] == s["knn_acc_loo"] == s["knn_acc_loo_all"] == s["nmi_all"] == 1.0
    assert {"linear_acc", "nmi", "ari", "ari_all", "pc1_share", "pc1_duration_rho"} <= set(s)
    # a piece's other rendering (here an exact twin) never votes for it; without pieces, it does
    rng = np.random.default_rng(1)
    noise = rng.normal(size=(60, 8))
    twins = pd.DataFrame({"label": rng.choice(list("abc"), 60), "split": "test"})
    doubled = pd.concat([twins, twins], ignore_index=True)
    X2 = np.vstack([noise, noise])
    assert evaluation.score_space(X2, doubled, k=1)["knn_acc_loo_all"] == 1.0
    pieces = doubled.assign(piece=[f"p{i % 60}" for i in range(120)])
    assert evaluation.score_space(X2, pieces, k=1)["knn_acc_loo_all"] < 0.6
    # standardised: the columns are z-scored first (handcrafted columns mix dB, Hz, ...)
    loud = np.hstack([X, 1e3 * rng.normal(size=(len(X), 1))])
    z = evaluation.score_space(loud, tracks, standardised=True)
    assert z == evaluation.score_space(standardise(loud)[0], tracks)
    assert z["pc1_share"] < 0.7 < 0.95 < evaluation.score_space(loud, tracks)["pc1_share"]


def test_cli_names_rows_too_large_to_normalise_and_drops_them_only_when_asked(tmp_path, capsys):
    """Finite values whose squared length overflows (1e308) would be L2-scaled to a zero row and scored
    silently: the same outcome as NaN rows instead, an error naming them or --drop-invalid dropping them."""
    from cml.cli import main

    X, y, split = blobs(classes=2)
    X[[3, 40]] = 1e308
    ids = [f"t{i}" for i in range(len(X))]
    write_feature_table(tmp_path / "emb.parquet", ids, X, labels=y, extra={"split": split})
    out = tmp_path / "metrics.json"
    argv = ["evaluate", str(tmp_path / "emb.parquet"), "--out", str(out)]
    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)  # no overflow warning leaks
        assert main(argv) == 1
        error = capsys.readouterr().err.strip()
        assert error.startswith("cml evaluate: error: ") and "\n" not in error
        assert "2 rows too large" in error and "t3, t40" in error and "--drop-invalid" in error
        assert not out.exists()
        assert main([*argv, "--drop-invalid"]) == 0
    metrics = json.loads(out.read_text())
    assert metrics["n_train"] + metrics["n_test"] == 54 - 2 and metrics["knn_acc"] == 1.0
