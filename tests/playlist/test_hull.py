"""Playlists from convex hulls: regions, fallbacks, order, outputs, metrics and the CLI."""
from __future__ import annotations

import json
import logging
import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import soundfile as sf
from scipy.spatial import Delaunay

from cml.playlist.files import playlist_frame, write_playlist
from cml.playlist.hull import (
    PlaylistError,
    auto_seeds,
    build_playlist,
    fit_projection,
    nearest_neighbour_tour,
    outside_distance,
    path_length,
    prepare,
    resolve_ids,
    two_opt,
)
from cml.playlist.scores import (
    cluster_baseline,
    compare_with_baselines,
    knn_baseline,
    playlist_metrics,
    playlist_scores,
)
from cml.search import index as index_module
from cml.search.index import Index
from cml.tables import read_feature_table, write_feature_table

SQUARE = np.array([[0.0, 0.0], [1.0, 0.0], [1.0, 1.0], [0.0, 1.0]])


def plane(n: int = 400, seed: int = 0) -> np.ndarray:
    """Uniform points in [-3, 4]^2 with the unit square's corners as rows 0..3 (the seeds)."""
    rng = np.random.default_rng(seed)
    return np.vstack([SQUARE, rng.uniform(-3, 4, size=(n, 2))])


def blobs(n: int = 300, d: int = 16, centers: int = 4, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Rows around ``centers`` means (s.d. 4), a label drawn for each row, unit noise: not tests.helpers.blobs,
    whose classes are balanced."""
    rng = np.random.default_rng(seed)
    means = rng.normal(size=(centers, d)) * 4
    y = rng.integers(centers, size=n)
    return means[y] + rng.normal(size=(n, d)), np.array([f"c{v}" for v in y], dtype=object)


# ---- regions ----

@pytest.mark.parametrize("mode,dim,margin", [("hull", 2, 0.0), ("hull", 3, 0.0), ("hull", 3, 0.2),
                                              ("lp", 2, 0.0), ("lp", 2, 0.5), ("journey", 2, 0.0)])
def test_every_seed_is_in_the_playlist(mode, dim, margin):
    X, _ = blobs()
    X = prepare(X)
    for trial in range(5):
        seeds = np.random.default_rng(trial).choice(len(X), size=2 if mode == "journey" else 4, replace=False)
        playlist = build_playlist(X, seeds, 12, mode=mode, dim=dim, margin=margin)
        assert set(seeds) <= set(playlist.order.tolist())
        assert len(set(playlist.order.tolist())) == len(playlist.order) <= 12


def test_tracks_outside_the_hull_are_never_chosen_without_margin():
    X = plane()
    playlist = build_playlist(X, [0, 1, 2, 3], 30, dim=2)
    chosen = X[playlist.order]
    assert playlist.region == "hull"
    assert np.all((chosen >= -1e-9) & (chosen <= 1 + 1e-9))  # nothing outside the unit square
    inside = Delaunay(SQUARE).find_simplex(X) >= 0  # Qhull's own membership test agrees with the facets
    assert set(playlist.candidates.tolist()) == set(np.flatnonzero(inside).tolist())
    assert len(playlist.order) == min(30, inside.sum())


def test_margin_admits_tracks_near_the_hull_but_not_far():
    X = plane()
    playlist = build_playlist(X, [0, 1, 2, 3], 400, dim=2, margin=0.5)
    outside = np.maximum(np.maximum(-X, X - 1), 0)  # per-axis distance outside the square
    distance = np.linalg.norm(outside, axis=1)
    chosen = playlist.candidates
    assert distance[chosen].max() <= 0.5 * math.sqrt(2) + 1e-9  # facets pushed out: corners reach sqrt(2) m
    assert np.all(np.isin(np.flatnonzero(distance <= 0.5), chosen))
    assert len(chosen) > (distance == 0).sum()


@pytest.mark.parametrize("seeds,dim,region", [
    ([[0.3, 0.3, 0.3]], 3, "ball"),
    ([[0, 0, 0], [1, 1, 0]], 3, "capsule"),
    ([[0, 0, 0], [1, 1, 1], [2, 2, 2]], 3, "capsule"),  # collinear
    ([[0, 0, 0], [1, 0, 0], [0, 1, 0], [1, 1, 0]], 3, "flat hull"),  # co-planar
    ([[0, 0, 0], [1, 0, 0.2], [0, 1, 0.4]], 3, "flat hull"),  # fewer seeds than dim + 1
    ([[0, 0], [1, 1], [2, 2], [3, 3.0000000001]], 2, "capsule"),  # collinear up to rounding
], ids=["one", "two", "collinear", "coplanar", "too-few", "nearly-collinear"])
def test_degenerate_seeds_take_the_fallback(seeds, dim, region, caplog):
    rng = np.random.default_rng(1)
    seeds = np.array(seeds, dtype=float)
    X = np.vstack([seeds, rng.uniform(-1, 3, size=(300, seeds.shape[1]))])
    with caplog.at_level(logging.INFO, logger="cml.playlist.hull"):
        playlist = build_playlist(X, range(len(seeds)), 15, dim=dim)
    assert playlist.region == region
    assert len(playlist.order) == 15  # the fallback radius grows until it holds the length asked for
    assert f"a {region} around them" in caplog.text
    kind, distance = outside_distance(playlist.projection.transform(X), playlist.projection.transform(seeds))
    assert kind == region
    assert set(playlist.candidates.tolist()) == set(np.argsort(distance)[:15].tolist())


def test_a_qhull_error_falls_back_instead_of_escaping(monkeypatch, caplog):
    import cml.playlist.hull

    monkeypatch.setattr(cml.playlist.hull, "RANK_TOL", 0.0)  # let rounding noise pass the rank test
    rotation = np.linalg.qr(np.random.default_rng(0).normal(size=(3, 3)))[0]
    seeds = np.array([[0, 0, 0], [1, 0, 0], [0, 1, 0], [1, 1, 0], [0.3, 0.3, 0]]) @ rotation  # co-planar
    with caplog.at_level(logging.INFO, logger="cml.playlist.hull"):
        kind, distance = outside_distance(np.vstack([seeds, [[5, 5, 5]]]), seeds)
    assert kind == "flat hull" and "Qhull could not build" in caplog.text
    np.testing.assert_allclose(distance[:5], 0, atol=1e-9)
    assert distance[5] > 1


def test_capsule_is_the_distance_to_the_segment():
    Z = np.array([[0.5, 1.0], [-1.0, 0.0], [3.0, 4.0], [0.2, 0.0]])
    kind, distance = outside_distance(Z, np.array([[0.0, 0.0], [1.0, 0.0]]))
    assert kind == "capsule"
    np.testing.assert_allclose(distance, [1.0, 1.0, math.hypot(2, 4), 0.0], atol=1e-12)


def test_lp_mode_agrees_with_hull_mode_where_the_projection_is_exact():
    rng = np.random.default_rng(3)
    X = rng.normal(size=(500, 3))
    seeds = [0, 1, 2, 3, 4, 5]
    hull = build_playlist(X, seeds, 500, mode="hull", dim=3)  # PCA to all 3 dims: a rotation
    lp = build_playlist(X, seeds, 500, mode="lp")
    assert hull.region == "hull" and lp.region == "lp"
    assert len(hull.candidates) > len(seeds)
    assert set(hull.candidates.tolist()) == set(lp.candidates.tolist())


def test_lp_tolerance_is_the_largest_coordinate_deviation():
    X = np.array([[0.0, 0.0], [2.0, 0.0], [1.0, 0.3], [1.0, 0.5], [5.0, 5.0]])
    playlist = build_playlist(X, [0, 1], 5, mode="lp", margin=0.4)
    assert set(playlist.candidates.tolist()) == {0, 1, 2}


def test_lp_distances_match_one_linprog_per_track():
    from scipy.optimize import linprog

    from cml.playlist.hull import lp_outside_distance

    rng = np.random.default_rng(5)
    X = rng.normal(size=(120, 8))
    seeds = np.arange(5)
    S = X[seeds]
    expected = []
    for x in X:  # min t  s.t.  -t <= S^T l - x <= t, sum(l) = 1, l >= 0
        A = np.block([[S.T, -np.ones((8, 1))], [-S.T, -np.ones((8, 1))]])
        res = linprog(np.r_[np.zeros(5), 1], A_ub=A, b_ub=np.r_[x, -x], A_eq=[np.r_[np.ones(5), 0]], b_eq=[1],
                      bounds=(0, None), method="highs")
        expected.append(res.x[-1])
    expected = np.array(expected)
    tol = float(np.quantile(expected, 0.3))
    got = lp_outside_distance(X, seeds, tol)
    assert np.array_equal(np.isfinite(got), expected <= tol + 1e-9)
    assert np.all(got[np.isfinite(got)] >= expected[np.isfinite(got)] - 1e-9)  # bounds never undercut


# ---- selection and order ----

def test_two_opt_path_is_never_longer_than_the_nearest_neighbour_tour():
    for trial in range(150):
        rng = np.random.default_rng(trial)
        n = int(rng.integers(3, 25))
        P = rng.normal(size=(n, int(rng.integers(2, 5))))
        D = np.linalg.norm(P[:, None] - P[None], axis=-1)
        end = int(rng.integers(1, n)) if trial % 2 else None
        tour = nearest_neighbour_tour(D, 0, end)
        better = two_opt(D, tour, fix_start=trial % 3 != 0, fix_end=end is not None)
        assert sorted(better.tolist()) == list(range(n))
        assert path_length(D, better) <= path_length(D, tour) + 1e-9
        if trial % 3:
            assert better[0] == 0
        if end is not None:
            assert better[-1] == end


def test_two_opt_untangles_a_crossing():
    P = np.array([[0, 0], [1, 1], [1, 0], [2, 1.0]])  # 0 -> 1 -> 2 -> 3 crosses itself
    D = np.linalg.norm(P[:, None] - P[None], axis=-1)
    assert two_opt(D, [0, 1, 2, 3]).tolist() == [0, 2, 1, 3]


def test_start_and_end_are_respected():
    X, _ = blobs()
    X = prepare(X)
    playlist = build_playlist(X, [5, 9, 40, 77], 10, margin=0.3, start=40, end=9)
    assert playlist.order[0] == 40 and playlist.order[-1] == 9


def test_farthest_point_sampling_spreads_the_picks():
    X = plane(2000)
    playlist = build_playlist(X, [0, 1, 2, 3], 8, dim=2)
    rest = [i for i in playlist.order if i > 3]
    gaps = np.linalg.norm(X[rest][:, None] - X[[0, 1, 2, 3]][None], axis=-1).min(axis=1)
    assert gaps.min() > 0.25  # no pick hugs a corner: the first picks go to the middle and the edges' middles


def test_results_are_deterministic_for_a_seed():
    X, labels = blobs()
    X = prepare(X)
    seeds = auto_seeds(len(X), 4, labels, seed=7)
    np.testing.assert_array_equal(seeds, auto_seeds(len(X), 4, labels, seed=7))
    assert len({labels[i] for i in seeds}) == 1
    first = build_playlist(X, seeds, 15, margin=0.2)
    second = build_playlist(X, seeds, 15, margin=0.2)
    np.testing.assert_array_equal(first.order, second.order)
    table = compare_with_baselines(X, first, labels, n_clusters=4, seed=3)
    pd.testing.assert_frame_equal(table, compare_with_baselines(X, second, labels, n_clusters=4, seed=3))
    np.testing.assert_array_equal(cluster_baseline(X, seeds, 15, 4, seed=3), cluster_baseline(X, seeds, 15, 4, seed=3))


def test_journey_goes_from_a_to_b_along_the_segment():
    rng = np.random.default_rng(0)
    t = np.sort(rng.uniform(0, 1, 200))
    X = np.c_[t * 10, rng.normal(scale=0.05, size=200), rng.normal(scale=0.05, size=200)]
    a, b = int(np.argmin(t)), int(np.argmax(t))
    playlist = build_playlist(X, [a, b], 12, mode="journey")
    assert playlist.order[0] == a and playlist.order[-1] == b
    assert len(playlist.order) == 12
    assert np.all(np.diff(X[playlist.order, 0]) > 0)  # always moving on towards B


def test_journey_needs_two_seeds():
    with pytest.raises(PlaylistError, match="exactly two seeds"):
        build_playlist(np.eye(5), [0, 1, 2], 4, mode="journey")


def test_a_journey_through_the_index_is_the_exact_one(monkeypatch):
    monkeypatch.setattr(index_module, "EXACT_BELOW", 100)
    monkeypatch.setattr(index_module, "SCAN_ROWS", 400)  # 8 of 54 lists: a real approximation
    X = prepare(blobs(n=3000, centers=10)[0])
    index = Index(X)
    assert not index.exact
    exact = build_playlist(X, [3, 1500], 15, mode="journey")
    assert build_playlist(X, [3, 1500], 15, mode="journey", index=index).order.tolist() == exact.order.tolist()


# ---- metrics and baselines ----

def test_metrics_on_a_known_example():
    X = np.array([[1.0, 0.0], [0.0, 1.0], [-1.0, 0.0], [0.0, -1.0]])
    labels = np.array(["a", "a", "b", None], dtype=object)
    m = playlist_metrics(X, [0, 1, 2, 3], seeds=[0], labels=labels, coords=X)
    assert m["coherence"] == pytest.approx(0.0)  # adjacent tracks are orthogonal
    assert m["largest_jump"] == pytest.approx(math.sqrt(2))
    assert m["path_length"] == pytest.approx(3 * math.sqrt(2))
    assert m["diversity"] == pytest.approx((4 * math.sqrt(2) + 2 * 2) / 6)
    assert m["hull_volume"] == pytest.approx(2.0)  # the square |x| + |y| <= 1
    assert m["label_purity"] == pytest.approx(0.5)  # added tracks: "a" and "b" (the unlabelled one is ignored)
    single = playlist_metrics(X, [2], seeds=[2], labels=labels, coords=X)
    assert single["coherence"] is None and single["hull_volume"] == 0.0 and single["label_purity"] is None


def test_baselines_hold_the_seeds_and_stay_near_them():
    X, labels = blobs(centers=3, seed=2)
    X = prepare(X)
    seeds = auto_seeds(len(X), 3, labels, seed=0)
    knn = knn_baseline(X, seeds, 10)
    centroid = X[seeds].mean(axis=0)
    others = np.setdiff1d(np.arange(len(X)), knn)
    assert set(seeds) <= set(knn) and len(knn) == 10
    assert np.linalg.norm(X[np.setdiff1d(knn, seeds)] - centroid, axis=1).max() <= \
        np.linalg.norm(X[others] - centroid, axis=1).min()
    rand = cluster_baseline(X, seeds, 10, n_clusters=3, seed=0)
    assert set(seeds) <= set(rand) and len(rand) == 10
    assert {labels[i] for i in rand} == {labels[seeds[0]]}  # well-separated blobs: the seeds' cluster only


def test_the_knn_baseline_through_the_index_is_the_exact_one(monkeypatch):
    monkeypatch.setattr(index_module, "EXACT_BELOW", 100)
    monkeypatch.setattr(index_module, "SCAN_ROWS", 400)
    X, labels = blobs(n=3000, centers=10)
    X = prepare(X)
    seeds = auto_seeds(len(X), 4, labels, seed=0)
    assert knn_baseline(X, seeds, 25, Index(X)).tolist() == knn_baseline(X, seeds, 25).tolist()


# ---- outputs ----

def make_table(tmp_path: Path, n: int = 40) -> Path:
    """A feature table of n tracks with real audio files, titles, durations and Spotify URIs."""
    X, labels = blobs(n=n, d=6, centers=2, seed=4)
    audio = tmp_path / "audio"
    audio.mkdir()
    paths = []
    for i in range(n):
        path = audio / f"t{i}.wav"
        sf.write(path, np.zeros(800, dtype=np.float32), 8000)
        paths.append(str(path.relative_to(tmp_path)))
    extra = pd.DataFrame({"path": paths, "title": [f"Track {i}" for i in range(n)],
                          "seconds": np.full(n, 12.4), "uri": [f"spotify:track:{i:022d}" for i in range(n)]})
    return write_feature_table(tmp_path / "emb.parquet", [f"t{i}" for i in range(n)], X, labels, extra=extra)


def test_m3u8_and_csv_content(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    table = read_feature_table(make_table(tmp_path))
    X = prepare(table.X)
    playlist = build_playlist(X, [0, 1, 2, 3], 6, margin=0.5)
    frame = playlist_frame(table, X, playlist.order)
    m3u = write_playlist(frame, tmp_path / "out" / "list.m3u8").read_text().splitlines()
    assert m3u[0] == "#EXTM3U"
    assert len(m3u) == 1 + 2 * len(playlist.order)
    first = table.ids[playlist.order[0]]
    assert m3u[1] == f"#EXTINF:12,Track {first[1:]}"
    for line in m3u[2::2]:
        assert (tmp_path / "out" / line).resolve().is_file()  # relative to the playlist's folder
    write_playlist(frame, tmp_path / "out" / "list.csv")
    csv = pd.read_csv(tmp_path / "out" / "list.csv")
    assert list(csv.columns[:4]) == ["id", "position", "path", "distance_to_previous"]
    assert csv["id"].tolist() == table.ids[playlist.order].tolist()
    assert csv["position"].tolist() == list(range(1, len(playlist.order) + 1))
    assert math.isnan(csv["distance_to_previous"][0])
    step = np.linalg.norm(X[playlist.order[1]] - X[playlist.order[0]])
    assert csv["distance_to_previous"][1] == pytest.approx(step, rel=1e-5)
    assert csv["spotify_uri"][0] == f"spotify:track:{int(first[1:]):022d}"
    with pytest.raises(PlaylistError, match="unknown playlist format"):
        write_playlist(frame, tmp_path / "list.txt")


# ---- CLI (bad input: tests/test_cli_domains.py) ----

def spotify_csv(tmp_path: Path) -> Path:
    X, labels = blobs(n=60, d=5, centers=3, seed=5)
    frame = pd.DataFrame(X, columns=["danceability", "energy", "valence", "tempo", "loudness"])
    frame.insert(0, "track_id", [f"sp{i:03d}" for i in range(60)])
    frame.insert(1, "track_name", [f"Song {i}" for i in range(60)])
    frame.insert(2, "artists", "Band")
    frame.insert(3, "uri", [f"spotify:track:sp{i:03d}" for i in range(60)])
    frame.insert(4, "label", labels)
    path = tmp_path / "tracks.csv"
    frame.to_csv(path, index=False)
    return path


def test_cli_end_to_end_on_a_small_csv(tmp_path, capsys, cli_raising):
    path = spotify_csv(tmp_path)
    rc = cli_raising("playlist", path, "--seed-tracks", "sp001,sp002,sp003,sp004", "--length", "8",
                     "--out", tmp_path / "p.csv", "--out", tmp_path / "p.m3u8", "--scale", "standard",
                     "--margin", "0.3", "--metrics", tmp_path / "m.json", "--seed", "1")
    assert rc == 0
    printed = json.loads(capsys.readouterr().out)
    assert printed["n_tracks"] == 8 and -1 <= printed["coherence"] <= 1
    csv = pd.read_csv(tmp_path / "p.csv")
    assert len(csv) == 8 and csv["id"][0] == "sp001"
    assert {"sp001", "sp002", "sp003", "sp004"} <= set(csv["id"])
    assert csv["spotify_uri"][0] == "spotify:track:sp001" and csv["title"][0] == "Band - Song 1"
    assert (tmp_path / "p.m3u8").read_text() == "#EXTM3U\n"  # no local files in a Spotify export
    metrics = json.loads((tmp_path / "m.json").read_text())
    assert set(metrics) == {"corpus_tracks", "n_seeds", "n_candidates", "fallback", "explained_variance",
                            "playlist", "knn_centroid", "random_cluster"}


def test_cli_and_the_notebook_s_function_give_the_same_keys_and_values(tmp_path, cli_raising):
    """`cml playlist --metrics` writes `playlist_scores`, the dict the Playlists notebook writes (plus its
    journey): same keys, same values on the same table, seeds and options."""
    path = spotify_csv(tmp_path)
    assert cli_raising("playlist", path, "--seed-tracks", "sp001,sp002,sp003,sp004", "--length", "8", "--margin", "0.3",
                       "--out", tmp_path / "p.csv", "--metrics", tmp_path / "m.json", "--seed", "1") == 0
    table = read_feature_table(path)
    X = prepare(table.X, "l2")
    playlist = build_playlist(X, resolve_ids(table.ids, ["sp001", "sp002", "sp003", "sp004"]), 8, margin=0.3)
    expected = playlist_scores(X, playlist, table.labels, seed=1)
    assert json.loads((tmp_path / "m.json").read_text()) == json.loads(json.dumps(expected))
    assert expected["fallback"] is False and expected["playlist"]["n_tracks"] == 8


def test_cli_journey(tmp_path, cli_raising):
    path = spotify_csv(tmp_path)
    assert cli_raising("playlist", path, "--seed-tracks", "sp000,sp059", "--length", "6", "--mode", "journey",
                       "--out", tmp_path / "j.csv") == 0
    ids = pd.read_csv(tmp_path / "j.csv")["id"].tolist()
    assert ids[0] == "sp000" and ids[-1] == "sp059" and len(ids) == 6


def test_the_cli_searches_a_large_library_with_the_index(tmp_path, monkeypatch, caplog, cli_raising):
    path = spotify_csv(tmp_path)
    argv = ["playlist", str(path), "--seed-tracks", "sp000,sp059", "--length", "6", "--mode", "journey", "--out"]
    with caplog.at_level(logging.INFO, logger="cml.search.index"):
        assert cli_raising(*argv, str(tmp_path / "exact.csv")) == 0
        assert "exact search" in caplog.text
        monkeypatch.setattr(index_module, "EXACT_BELOW", 10)
        assert cli_raising(*argv, str(tmp_path / "index.csv")) == 0
        assert "approximate (faiss IVF" in caplog.text
    assert (tmp_path / "index.csv").read_text() == (tmp_path / "exact.csv").read_text()


def test_api_errors_are_clear():
    X = np.eye(4)
    with pytest.raises(PlaylistError, match="unknown seed ids: 'x'"):
        resolve_ids(["a", "b"], ["a", "x"])
    with pytest.raises(PlaylistError, match="length must be positive"):
        build_playlist(X, [0], 0)
    with pytest.raises(PlaylistError, match="margin must be a finite number >= 0, got nan"):
        build_playlist(X, [0], 2, margin=float("nan"))
    with pytest.raises(PlaylistError, match="unknown mode"):
        build_playlist(X, [0], 2, mode="sphere")
    with pytest.raises(PlaylistError, match="dim must be at least 1"):
        fit_projection(X, 0)
