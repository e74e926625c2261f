"""Handcrafted descriptors and the MFCC/chroma/contrast baseline on synthetic audio with known answers."""
from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
import soundfile as sf

from cml.data.features import (
    DESCRIBE_COLUMNS,
    HANDCRAFTED_COLUMNS,
    FeaturesConfig,
    class_summary,
    describe,
    extract_features,
    handcrafted_embedding,
    project_2d,
)
from cml.tables import standardise
from tests.helpers import SR, sine


def click_track(bpm: float, seconds: float = 10.0) -> np.ndarray:
    """Short decaying noise bursts on every beat, like a metronome."""
    y = np.zeros(int(seconds * SR), dtype=np.float32)
    n = int(0.01 * SR)
    burst = np.random.default_rng(0).standard_normal(n) * np.exp(-np.arange(n) / (0.002 * SR))
    for start in (np.arange(0.0, seconds, 60.0 / bpm) * SR).astype(int):
        y[start:start + n] += burst[: len(y) - start]
    return 0.5 * y


def test_click_track_tempo_and_onset_rate():
    d = describe(click_track(120.0), SR)
    assert d["tempo_bpm"] == pytest.approx(120.0, rel=0.03)
    assert d["onset_rate"] == pytest.approx(2.0, abs=0.2)  # 20 clicks in 10 s


def test_gain_shifts_levels_by_its_db_and_leaves_spectrum_alone():
    x = sine(440.0) + 0.1 * np.random.default_rng(1).standard_normal(2 * SR).astype(np.float32)
    quiet, loud = describe(0.25 * x, SR), describe(0.5 * x, SR)
    gain_db = 20 * math.log10(2)  # 6.02 dB
    assert loud["rms_dbfs"] - quiet["rms_dbfs"] == pytest.approx(gain_db, abs=1e-3)
    assert loud["peak_dbfs"] - quiet["peak_dbfs"] == pytest.approx(gain_db, abs=1e-3)
    assert loud["spectral_centroid_hz"] == pytest.approx(quiet["spectral_centroid_hz"], rel=1e-3)


def test_full_scale_sine_is_minus_3_dbfs_rms_and_0_dbfs_peak():
    d = describe(sine(1000.0, amp=1.0), SR)
    assert d["rms_dbfs"] == pytest.approx(-3.01, abs=0.01)
    assert d["peak_dbfs"] == pytest.approx(0.0, abs=0.01)
    assert d["duration_s"] == pytest.approx(2.0)


def test_high_sine_is_brighter_than_low_sine():
    low, high = describe(sine(220.0), SR), describe(sine(3000.0), SR)
    assert high["spectral_centroid_hz"] > 2 * low["spectral_centroid_hz"]
    assert high["spectral_rolloff_hz"] > low["spectral_rolloff_hz"]
    assert high["zero_crossing_rate"] > low["zero_crossing_rate"]


def test_noise_is_flatter_than_a_sine():
    noise = 0.3 * np.random.default_rng(2).standard_normal(2 * SR).astype(np.float32)
    assert describe(noise, SR)["spectral_flatness"] > 10 * describe(sine(440.0), SR)["spectral_flatness"]


def test_loudness_range_grows_with_dynamics():
    steady = sine(440.0, seconds=4.0)
    dynamic = steady.copy()
    dynamic[: 2 * SR] *= 0.1  # first half 20 dB quieter
    assert describe(steady, SR)["loudness_range_db"] < 0.5
    assert describe(dynamic, SR)["loudness_range_db"] == pytest.approx(20.0, abs=1.0)


def test_silence_gives_floor_levels_and_nan_for_undefined_values():
    d = describe(np.zeros(3 * SR, dtype=np.float32), SR)
    assert set(d) == set(DESCRIBE_COLUMNS)
    assert d["rms_dbfs"] == d["peak_dbfs"] == -120.0
    assert d["onset_rate"] == 0.0
    for key in ("loudness_range_db", "spectral_centroid_hz", "tempo_bpm"):
        assert math.isnan(d[key]), key
    emb = handcrafted_embedding(np.zeros(3 * SR, dtype=np.float32), SR)
    assert np.all(np.isfinite(emb))


def test_very_short_input_does_not_crash():
    y = sine(440.0, seconds=0.1)
    d = describe(y, SR)
    assert d["duration_s"] == pytest.approx(0.1)
    assert d["spectral_centroid_hz"] < describe(sine(3000.0, seconds=0.1), SR)["spectral_centroid_hz"]
    assert math.isnan(d["tempo_bpm"])  # too short for a tempo
    emb = handcrafted_embedding(y, SR)
    assert emb.shape == (118,) and np.all(np.isfinite(emb))


def test_invalid_waves_raise_clear_errors():
    with pytest.raises(ValueError, match="empty"):
        describe(np.zeros(0, dtype=np.float32), SR)
    with pytest.raises(ValueError, match="mono"):
        handcrafted_embedding(np.zeros((2, SR), dtype=np.float32), SR)
    with pytest.raises(ValueError, match="NaN"):
        describe(np.full(SR, np.nan, dtype=np.float32), SR)


def test_handcrafted_embedding_shape_names_and_determinism():
    x = click_track(100.0, seconds=3.0) + sine(330.0, seconds=3.0, amp=0.2)
    a, b = handcrafted_embedding(x, SR), handcrafted_embedding(x.copy(), SR)
    assert a.shape == (118,) and a.dtype == np.float32
    np.testing.assert_array_equal(a, b)
    assert len(HANDCRAFTED_COLUMNS) == 118 == len(set(HANDCRAFTED_COLUMNS))
    assert HANDCRAFTED_COLUMNS[0] == "mfcc01_mean" and HANDCRAFTED_COLUMNS[20] == "mfcc01_std"
    assert HANDCRAFTED_COLUMNS[-1] == "contrast07_std"
    # A different signal gives a different vector (the features actually depend on the input).
    assert not np.allclose(a, handcrafted_embedding(sine(330.0, seconds=3.0), SR))


def test_chroma_of_a4_peaks_at_pitch_class_a():
    emb = pd.Series(handcrafted_embedding(sine(440.0), SR), index=HANDCRAFTED_COLUMNS)
    chroma = emb[[f"chroma{i:02d}_mean" for i in range(1, 13)]].to_numpy()
    assert int(np.argmax(chroma)) == 9  # C=0, C#=1, ..., A=9


def test_delta_mfcc_follows_the_level_trend():
    fade_in = sine(440.0, seconds=3.0) * np.logspace(-2, 0, 3 * SR, dtype=np.float32)  # -40 dB -> 0 dB
    rising = pd.Series(handcrafted_embedding(fade_in, SR), index=HANDCRAFTED_COLUMNS)
    falling = pd.Series(handcrafted_embedding(fade_in[::-1].copy(), SR), index=HANDCRAFTED_COLUMNS)
    assert rising["dmfcc01_mean"] > 0 > falling["dmfcc01_mean"]


def write(path, y):
    sf.write(path, y, SR)
    return str(path)


def test_extract_features_keeps_order_and_reports_corrupt_files(tmp_path):
    good_a = write(tmp_path / "a.wav", sine(220.0))
    good_b = write(tmp_path / "b.wav", sine(3000.0))
    corrupt = tmp_path / "c.wav"
    corrupt.write_bytes(b"RIFF not really a wav file")
    tracks = pd.DataFrame(
        {"id": ["b", "broken", "a", "gone"], "path": [good_b, str(corrupt), good_a, str(tmp_path / "x.wav")]}
    )
    features, skipped = extract_features(tracks, sample_rate=SR, kind="both", progress=False)
    assert list(features["id"]) == ["b", "a"]
    assert list(features.columns) == ["id", *DESCRIBE_COLUMNS, *HANDCRAFTED_COLUMNS]
    b, a = features.to_dict("records")
    assert b["spectral_centroid_hz"] > a["spectral_centroid_hz"]
    assert a["duration_s"] == pytest.approx(2.0)
    assert list(skipped["id"]) == ["broken", "gone"]
    assert list(skipped.columns) == ["id", "path", "reason"]
    assert all(isinstance(r, str) and r and "\n" not in r for r in skipped["reason"])


def test_extract_features_max_seconds_and_kind(tmp_path):
    tracks = pd.DataFrame({"id": [7], "path": [write(tmp_path / "long.wav", sine(440.0, seconds=3.0))]})
    features, skipped = extract_features(tracks, sample_rate=SR, max_seconds=1.0, progress=False)
    assert skipped.empty
    assert list(features.columns) == ["id", *DESCRIBE_COLUMNS]
    assert features.loc[0, "duration_s"] == pytest.approx(1.0)
    hand, _ = extract_features(tracks, sample_rate=SR, kind="handcrafted", progress=False)
    assert list(hand.columns) == ["id", *HANDCRAFTED_COLUMNS]
    with pytest.raises(ValueError, match="kind"):
        extract_features(tracks, kind="mfcc", progress=False)
    with pytest.raises(ValueError, match="path"):
        extract_features(tracks[["id"]], progress=False)


def test_the_baseline_reads_the_whole_track_and_the_descriptors_its_start(tmp_path):
    """A track whose second half differs: the handcrafted baseline sees it, the described start does not."""
    wave = np.concatenate([sine(440.0, seconds=2.0), 0.5 * np.random.default_rng(0).standard_normal(2 * SR)])
    tracks = pd.DataFrame({"id": ["t"], "path": [write(tmp_path / "t.wav", wave.astype(np.float32))]})
    whole, _ = extract_features(tracks, sample_rate=SR, kind="both", describe_seconds=2.0, progress=False)
    start, _ = extract_features(tracks, sample_rate=SR, kind="both", max_seconds=2.0, progress=False)
    assert whole.loc[0, "duration_s"] == pytest.approx(4.0) and start.loc[0, "duration_s"] == pytest.approx(2.0)
    described = [c for c in DESCRIBE_COLUMNS if c != "duration_s"]
    np.testing.assert_allclose(whole[described].to_numpy(), start[described].to_numpy())
    assert not np.allclose(whole[HANDCRAFTED_COLUMNS].to_numpy(), start[HANDCRAFTED_COLUMNS].to_numpy())
    assert FeaturesConfig().max_seconds is None  # the baseline summarises whole recordings by default


def test_standardise_handles_constant_and_nan_columns():
    X = np.array([[1.0, 5.0, 2.0], [3.0, 5.0, np.nan], [5.0, 5.0, 4.0]])
    Z, mean, std = standardise(X)
    np.testing.assert_allclose(mean, [3.0, 5.0, 3.0])
    np.testing.assert_allclose(Z[:, 0], np.array([-1.0, 0.0, 1.0]) / np.sqrt(2 / 3))
    np.testing.assert_array_equal(Z[:, 1], 0.0)
    assert std[1] == 1.0
    assert math.isnan(Z[1, 2]) and Z[0, 2] == pytest.approx(-1.0)
    # A constant column of an awkward float is still recognised as constant.
    Zc, _, _ = standardise(np.full((7, 1), 0.1))
    np.testing.assert_allclose(Zc, 0.0, atol=1e-9)


@pytest.mark.parametrize("method", ["pca", "tsne", "umap"])
def test_project_2d_shapes_and_seed_determinism(method):
    rng = np.random.default_rng(0)
    X = np.vstack([rng.normal(0, 1, (12, 6)), rng.normal(8, 1, (12, 6))])
    a, b = project_2d(X, method=method, seed=3), project_2d(X, method=method, seed=3)
    assert a.shape == (24, 2)
    np.testing.assert_array_equal(a, b)
    # The two well-separated blobs stay separated in 2-D.
    gap = np.linalg.norm(a[:12].mean(0) - a[12:].mean(0))
    assert gap > 2 * max(a[:12].std(0).max(), a[12:].std(0).max())


def test_project_2d_small_inputs_fall_back_to_pca():
    X = np.arange(12, dtype=float).reshape(3, 4) ** 2
    out = project_2d(X, method="tsne", seed=0)
    assert out.shape == (3, 2)
    np.testing.assert_allclose(out, project_2d(X, method="pca"))
    np.testing.assert_allclose(project_2d(X, method="umap"), project_2d(X, method="pca"))
    assert project_2d(np.arange(4.0)[:, None], method="tsne").shape == (4, 2)
    with pytest.raises(ValueError, match="NaN"):
        project_2d(np.array([[1.0, np.nan]] * 6))
    with pytest.raises(ValueError, match="method must be one of 'pca', 'tsne', 'umap', got 'mds'"):
        project_2d(X, method="mds")


def test_class_summary_groups_by_label_in_row_order():
    df = pd.DataFrame({"tempo_bpm": [100.0, 120.0, 60.0, 80.0], "rms_dbfs": [-10.0, -20.0, -30.0, -40.0]},
                      index=[10, 11, 12, 13])
    summary = class_summary(df, ["rock", "rock", "ambient", "ambient"], ["tempo_bpm"])
    assert summary.loc["rock", ("tempo_bpm", "mean")] == 110.0
    assert summary.loc["ambient", ("tempo_bpm", "median")] == 70.0
    assert summary.loc["ambient", ("tempo_bpm", "std")] == pytest.approx(np.std([60, 80], ddof=1))
    assert ("rms_dbfs", "mean") not in summary.columns
    with pytest.raises(ValueError, match="labels"):
        class_summary(df, ["rock"], ["tempo_bpm"])
