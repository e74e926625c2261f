"""Handcrafted audio descriptors: what the data looks like, and the baseline learned embeddings must beat.

Two kinds of per-track features, both computed from one mono waveform:

- `describe`: a handful of interpretable numbers (level, loudness spread, brightness, noisiness,
  onset density, tempo) for the DataAnalysis notebook's tables and plots.
- `handcrafted_embedding`: the standard MIR baseline vector (Tzanetakis & Cook 2002 style):
  20 MFCC, 20 delta-MFCC, 12 chroma and 7 spectral-contrast rows, each summarised by its mean and std
  over time = 118 dims. Learned representations are compared against this vector with the same
  clustering and retrieval metrics.

`extract_features` runs either over a track table with skip-and-report; `project_2d` and `class_summary`
are the small numeric helpers the notebook needs around them (`cml.tables.standardise` z-scores the columns).

Framing (fixed so that numbers from different tracks are comparable): spectral features use an
N_FFT = 2048 window with hop 512 (128 ms / 32 ms at 16 kHz); onsets and tempo use a 10 ms hop. Inputs
shorter than one FFT window are zero-padded to one window, so very short clips still give a value.
"""
from __future__ import annotations

import argparse
import logging
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Sequence

import librosa
import numpy as np
import pandas as pd
from sklearn.decomposition import PCA
from sklearn.manifold import TSNE

from cml.audio.mel import MelConfig, load_audio
from cml.data.scan import SKIP_COLUMNS
from cml.errors import CmlError, check_input_file, check_output, one_line
from cml.params import load_config
from cml.progress import tqdm
from cml.tables import read_tracks, write_feature_table

log = logging.getLogger(__name__)

N_FFT = 2048
HOP = 512
N_MELS = 128
N_MFCC = 20
N_CHROMA = 12
N_CONTRAST_BANDS = 6  # spectral contrast gives n_bands + 1 rows; its top band edge needs sr > 12.8 kHz
DELTA_WIDTH = 9  # frames in the delta-MFCC regression window
ROLLOFF_PERCENT = 0.85  # spectral rolloff: frequency below which 85 % of the energy lies

DB_FLOOR = -120.0  # dBFS reported for digital silence instead of -inf
ACTIVE_GATE_DBFS = -70.0  # frames quieter than this are "silent" (EBU R128's absolute gate value)
SHORT_TERM_SECONDS = 0.4  # window of the short-term RMS behind loudness_range_db (EBU "momentary")
SHORT_TERM_HOP_SECONDS = 0.1
LOUDNESS_RANGE_PERCENTILES = (10.0, 95.0)  # as in EBU Tech 3342's LRA

ONSET_HOP_SECONDS = 0.01  # 100 frames/s: tempo lags are 1 % apart near 120 BPM (hop 512 gives ~3 %)
TEMPO_PRIOR_BPM = 120.0  # centre of librosa's log-normal tempo prior
TEMPO_PRIOR_STD_OCTAVES = 1.0  # its width in octaves
TEMPO_MAX_BPM = 240.0  # candidates above this are ignored
MIN_TEMPO_SECONDS = 2.0  # shorter clips hold too few beats for a tempo estimate

DESCRIBE_COLUMNS = (
    "duration_s",
    "rms_dbfs",
    "peak_dbfs",
    "loudness_range_db",
    "spectral_centroid_hz",
    "spectral_bandwidth_hz",
    "spectral_rolloff_hz",
    "spectral_flatness",
    "zero_crossing_rate",
    "onset_rate",
    "tempo_bpm",
)
_BLOCKS = (("mfcc", N_MFCC), ("dmfcc", N_MFCC), ("chroma", N_CHROMA), ("contrast", N_CONTRAST_BANDS + 1))
# Per block: every row's mean, then every row's std, e.g. mfcc01_mean .. mfcc20_mean, mfcc01_std ..
HANDCRAFTED_COLUMNS = [
    f"{name}{i:02d}_{stat}" for name, rows in _BLOCKS for stat in ("mean", "std") for i in range(1, rows + 1)
]
KINDS = ("describe", "handcrafted", "both")


@dataclass
class FeaturesConfig:
    """The `features` stage (its sample rate is the front end's, `frontend.sample_rate`)."""

    max_seconds: Optional[float] = None  # read at most this much of each track (from its start); None: all of it,
    #   so the handcrafted baseline summarises a whole recording, as the encoders' full-track embeddings do
    describe_seconds: Optional[float] = 30.0  # the descriptors of the data analysis: the first 30 s (their
    #   tempo estimate costs ~50 ms per second of audio)


@dataclass
class DataAnalysisConfig:
    """The DataAnalysis notebook."""

    knn_k: int = 5  # k of the k-NN probe of style vs timbre
    projection: str = "tsne"  # the 2-D map: tsne, pca or umap (`project_2d`)
    examples_per_class: int = 1  # audio players per class
    example_seconds: float = 8.0
    seed: int = 0


def _check_wave(wave: np.ndarray, sr: int) -> np.ndarray:
    """Fail clearly on input librosa would reject with an obscure message (or accept silently)."""
    y = np.asarray(wave, dtype=np.float32)
    if y.ndim != 1:
        raise ValueError(f"expected a mono waveform of shape (n,), got shape {y.shape}")
    if y.size == 0:
        raise ValueError("empty waveform (0 samples): nothing to describe")
    if not np.all(np.isfinite(y)):
        raise ValueError("waveform holds NaN or inf samples")
    if sr <= 0:
        raise ValueError(f"sample rate must be positive, got {sr}")
    return y


def _pad_to_window(y: np.ndarray) -> np.ndarray:
    return np.pad(y, (0, N_FFT - y.size)) if y.size < N_FFT else y


def _to_dbfs(amplitude: float) -> float:
    """Amplitude re full scale (1.0) in dB, floored at DB_FLOOR so silence sorts last instead of -inf."""
    return max(20.0 * math.log10(amplitude), DB_FLOOR) if amplitude > 0 else DB_FLOOR


def _nan(names: str, reason: str) -> float:
    log.info("%s NaN: %s", names, reason)
    return math.nan


def _loudness_range(y: np.ndarray, sr: int) -> float:
    """Spread of short-term level: 95th minus 10th percentile of 400 ms RMS (dB) above the -70 dBFS gate.

    A rough, unweighted stand-in for EBU R128 LRA (no K-weighting, no relative gate, 400 ms instead of
    3 s windows so 30 s clips give enough windows): small for compressed or steady music, large for
    music with quiet and loud passages.
    """
    frame, hop = round(SHORT_TERM_SECONDS * sr), round(SHORT_TERM_HOP_SECONDS * sr)
    if y.size < frame:
        return _nan("loudness_range_db", f"clip shorter than one {SHORT_TERM_SECONDS} s window")
    frames = librosa.util.frame(y.astype(np.float64), frame_length=frame, hop_length=hop)
    levels = 10.0 * np.log10(np.maximum(np.mean(frames**2, axis=0), 1e-30))
    levels = levels[levels > ACTIVE_GATE_DBFS]
    if levels.size < 2:
        return _nan("loudness_range_db", f"fewer than 2 windows above {ACTIVE_GATE_DBFS} dBFS")
    low, high = np.percentile(levels, LOUDNESS_RANGE_PERCENTILES)
    return float(high - low)


def _tempo(onset_env: np.ndarray, n_onsets: int, duration: float, sr: int, hop: int) -> float:
    """Tempo (BPM) from the onset envelope with a log-normal prior centred at 120 BPM (1 octave wide).

    The prior decides between metrical levels: a clear 120 BPM pulse gives 120, not 60 or 240; tempi
    far from 120 may come out halved or doubled (174 BPM drum and bass reads as ~87). Candidates above
    TEMPO_MAX_BPM are ignored.
    """
    if duration < MIN_TEMPO_SECONDS:
        return _nan("tempo_bpm", f"clip shorter than {MIN_TEMPO_SECONDS} s")
    if n_onsets < 2:  # without onsets librosa returns the prior's centre, which would look like a tempo
        return _nan("tempo_bpm", "fewer than 2 onsets, no pulse to measure")
    tempo = librosa.feature.tempo(
        onset_envelope=onset_env, sr=sr, hop_length=hop, start_bpm=TEMPO_PRIOR_BPM,
        std_bpm=TEMPO_PRIOR_STD_OCTAVES, max_tempo=TEMPO_MAX_BPM,
    )
    return float(tempo[0])


def describe(wave: np.ndarray, sr: int) -> dict[str, float]:
    """Interpretable per-track descriptors (keys: DESCRIBE_COLUMNS), for looking at the data.

    Levels are dB re full-scale amplitude (a full-scale square wave is 0 dBFS, a full-scale sine
    -3.01 dBFS); silence gives DB_FLOOR, not -inf. Spectral means and the zero-crossing rate average only
    frames above ACTIVE_GATE_DBFS, so leading silence and gaps do not bias them; they are NaN (reason
    logged) when no frame is that loud. onset_rate is onsets per second (0.0 for silence); tempo_bpm is
    NaN for clips under MIN_TEMPO_SECONDS or without onsets. Raises ValueError on empty or non-finite input.
    """
    y = _check_wave(wave, sr)
    duration = y.size / sr
    y64 = y.astype(np.float64)
    out = {
        "duration_s": duration,
        "rms_dbfs": _to_dbfs(float(np.sqrt(np.mean(y64**2)))),
        "peak_dbfs": _to_dbfs(float(np.max(np.abs(y64)))),
        "loudness_range_db": _loudness_range(y, sr),
    }

    padded = _pad_to_window(y)
    S = np.abs(librosa.stft(padded, n_fft=N_FFT, hop_length=HOP))  # (1 + N_FFT/2, T)
    frame_rms = librosa.feature.rms(y=padded, frame_length=N_FFT, hop_length=HOP)[0]  # (T,), same frames
    active = frame_rms > 10.0 ** (ACTIVE_GATE_DBFS / 20.0)
    feature = librosa.feature
    per_frame = {  # name -> (T,)
        "spectral_centroid_hz": feature.spectral_centroid(S=S, sr=sr)[0],
        "spectral_bandwidth_hz": feature.spectral_bandwidth(S=S, sr=sr)[0],
        "spectral_rolloff_hz": feature.spectral_rolloff(S=S, sr=sr, roll_percent=ROLLOFF_PERCENT)[0],
        "spectral_flatness": feature.spectral_flatness(S=S)[0],
        "zero_crossing_rate": feature.zero_crossing_rate(padded, frame_length=N_FFT, hop_length=HOP)[0],
    }
    if active.any():
        out.update({name: float(np.mean(values[active])) for name, values in per_frame.items()})
    else:
        reason = f"no frame above {ACTIVE_GATE_DBFS} dBFS"
        out.update(dict.fromkeys(per_frame, _nan(", ".join(per_frame), reason)))

    onset_hop = round(ONSET_HOP_SECONDS * sr)
    onset_env = librosa.onset.onset_strength(y=padded, sr=sr, hop_length=onset_hop)
    onsets = librosa.onset.onset_detect(onset_envelope=onset_env, sr=sr, hop_length=onset_hop)
    out["onset_rate"] = onsets.size / duration
    out["tempo_bpm"] = _tempo(onset_env, onsets.size, duration, sr, onset_hop)
    return out


def handcrafted_embedding(wave: np.ndarray, sr: int) -> np.ndarray:
    """The 118-dim MIR baseline vector (float32, order = HANDCRAFTED_COLUMNS); deterministic.

    MFCCs come from a 128-band log-mel spectrogram in absolute dB (so mfcc01 tracks level); deltas use a
    9-frame regression with edge frames repeated, so any clip length works; chroma uses a fixed A440
    reference (no per-track tuning estimate, so all tracks share one pitch grid). Silence gives a finite
    vector (the dB floor), which clusters as an outlier rather than breaking the pipeline.
    """
    y = _pad_to_window(_check_wave(wave, sr))
    S = np.abs(librosa.stft(y, n_fft=N_FFT, hop_length=HOP))  # (1 + N_FFT/2, T)
    power = S**2
    mel_db = librosa.power_to_db(librosa.feature.melspectrogram(S=power, sr=sr, n_mels=N_MELS))
    mfcc = librosa.feature.mfcc(S=mel_db, n_mfcc=N_MFCC)  # (20, T)
    blocks = [
        mfcc,
        librosa.feature.delta(mfcc, width=DELTA_WIDTH, mode="nearest"),  # (20, T)
        librosa.feature.chroma_stft(S=power, sr=sr, tuning=0.0, n_chroma=N_CHROMA),  # (12, T)
        librosa.feature.spectral_contrast(S=S, sr=sr, n_bands=N_CONTRAST_BANDS),  # (7, T)
    ]
    vector = np.concatenate([np.concatenate([b.mean(axis=1), b.std(axis=1)]) for b in blocks])
    return vector.astype(np.float32)


def _track_features(wave: np.ndarray, sr: int, kind: str, describe_seconds: float | None) -> dict[str, float]:
    row: dict[str, float] = {}
    if kind in ("describe", "both"):
        row.update(describe(wave if describe_seconds is None else wave[:round(describe_seconds * sr)], sr))
        row["duration_s"] = len(wave) / sr  # of all that was read, not of the described start
    if kind in ("handcrafted", "both"):
        row.update(zip(HANDCRAFTED_COLUMNS, handcrafted_embedding(wave, sr).tolist()))
    return row


def feature_columns(kind: str) -> list[str]:
    """Feature column names `extract_features` returns for `kind` (without the `id` column)."""
    if kind not in KINDS:
        raise ValueError(f"kind must be one of {KINDS}, got {kind!r}")
    return [
        *(DESCRIBE_COLUMNS if kind in ("describe", "both") else ()),
        *(HANDCRAFTED_COLUMNS if kind in ("handcrafted", "both") else ()),
    ]


def extract_features(
    tracks: pd.DataFrame,
    sample_rate: int = 16000,
    max_seconds: float | None = None,
    kind: str = "describe",
    progress: bool = True,
    describe_seconds: float | None = None,
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Features for every track of a table with `id` and `path` columns, skipping the ones that fail.

    Returns (features, skipped): features has `id` then `feature_columns(kind)`, one row per usable
    track in input order; skipped has id, path and a one-line reason for each track that could not be
    read or described. `max_seconds` reads only the start of each file (None: the whole file);
    `describe_seconds` limits the descriptors (not the handcrafted baseline) to the start of what was read.
    """
    columns = feature_columns(kind)
    missing = {"id", "path"} - set(tracks.columns)
    if missing:
        raise ValueError(f"tracks table lacks column(s) {sorted(missing)}")
    rows, skipped = [], []
    for track_id, path in tqdm(
        zip(tracks["id"], tracks["path"]), total=len(tracks), desc="features", unit="track",
        disable=not progress,
    ):
        try:
            wave = load_audio(Path(path), sample_rate=sample_rate, duration=max_seconds).numpy()
            rows.append({"id": track_id, **_track_features(wave, sample_rate, kind, describe_seconds)})
        except Exception as err:  # skip-and-report: one bad file must not lose the rest
            reason = one_line(f"{type(err).__name__}: {err}")
            log.warning("skipping %s (%s): %s", track_id, path, reason)
            skipped.append({"id": track_id, "path": str(path), "reason": reason})
    features = pd.DataFrame(rows, columns=["id", *columns])
    features[columns] = features[columns].astype(np.float64)
    log.info("features (%s) for %d tracks, %d skipped", kind, len(features), len(skipped))
    return features, pd.DataFrame(skipped, columns=SKIP_COLUMNS)


PROJECTIONS = ("pca", "tsne", "umap")  # the methods of `project_2d`


def project_2d(X: np.ndarray | pd.DataFrame, method: str = "pca", seed: int = 0) -> np.ndarray:
    """2-D coordinates (n, 2) for scatter plots; deterministic for a seed.

    t-SNE uses perplexity min(30, (n - 1) / 3) so small sets work, PCA initialisation and `seed`. UMAP
    (umap-learn) uses n_neighbors = min(15, n - 1) and `seed` (seeded UMAP runs single-threaded). Below
    5 points or 2 features t-SNE and UMAP are meaningless, so PCA is used instead (logged). PCA output is
    padded with zero columns when fewer than 2 components exist.
    """
    if method not in PROJECTIONS:
        raise ValueError(f"method must be one of {', '.join(map(repr, PROJECTIONS))}, got {method!r}")
    X = np.asarray(X, dtype=np.float64)
    if X.ndim != 2:
        raise ValueError(f"expected a 2-D array (n, d), got shape {X.shape}")
    if not np.all(np.isfinite(X)):
        raise ValueError("X holds NaN or inf; drop or impute those rows/columns before projecting")
    n, d = X.shape
    if method in ("tsne", "umap") and (n < 5 or d < 2):
        log.info("%s needs >= 5 points and >= 2 features (got %d x %d): using PCA", method, n, d)
        method = "pca"
    if method == "tsne":
        perplexity = max(1.0, min(30.0, (n - 1) / 3))
        return TSNE(n_components=2, perplexity=perplexity, init="pca", random_state=seed).fit_transform(X)
    if method == "umap":
        import warnings

        import umap  # umap-learn: imported here, it takes seconds (numba)

        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="n_jobs value")  # seeded UMAP runs single-threaded
            return umap.UMAP(n_neighbors=min(15, n - 1), random_state=seed).fit_transform(X)
    out = np.zeros((n, 2))
    k = min(2, n, d)
    if k > 0:
        out[:, :k] = PCA(n_components=k, svd_solver="full", random_state=seed).fit_transform(X)
    return out


def class_summary(
    features_df: pd.DataFrame, labels: Sequence | pd.Series, columns: Sequence[str]
) -> pd.DataFrame:
    """Per-label mean, std and median of chosen columns: one row per label, columns (column, stat).

    `labels` is matched to rows by position (not index). Rows without a label form their own NaN group
    so nothing is dropped silently.
    """
    labels = np.asarray(labels)
    if len(labels) != len(features_df):
        raise ValueError(f"{len(labels)} labels for {len(features_df)} feature rows")
    missing = [c for c in columns if c not in features_df.columns]
    if missing:
        raise ValueError(f"columns not in the feature table: {missing}")
    grouped = features_df[list(columns)].reset_index(drop=True).groupby(labels, dropna=False)
    summary = grouped.agg(["mean", "std", "median"])
    summary.index.name = "label"
    return summary


def _cmd_features(args: argparse.Namespace) -> int:
    """The `features` stage: descriptors for the analysis and the handcrafted baseline as a feature table."""
    config = load_config(args.params, "features", FeaturesConfig)
    frontend = load_config(args.params, "frontend", MelConfig)
    tracks = read_tracks(check_input_file(args.tracks, "tracks table"))
    out = check_output(args.out, folder=True)
    features, skipped = extract_features(tracks, sample_rate=frontend.sample_rate, max_seconds=config.max_seconds,
                                         kind="both", describe_seconds=config.describe_seconds)
    features[["id", *DESCRIBE_COLUMNS]].to_parquet(out / "descriptors.parquet", index=False)
    rows = tracks.set_index("id").loc[features["id"]]
    labels = rows["label"].to_numpy() if "label" in rows.columns else None
    write_feature_table(
        out / "handcrafted.parquet", features["id"], features[HANDCRAFTED_COLUMNS].to_numpy(),
        labels=labels, extra={"path": rows["path"].astype(str).to_numpy()},
    )
    skipped.to_csv(out / "skipped.csv", index=False)
    log.info("features of %d tracks in %s; %d skipped (%s)", len(features), out, len(skipped),
             out / "skipped.csv")
    if len(tracks) and not len(features):
        raise CmlError(f"no track could be read; the reason for each is in {out / 'skipped.csv'}")
    return 0


def register_cli(subparsers) -> None:
    p = subparsers.add_parser("features")
    p.add_argument("--params", default="params.yaml", help="reads its features and frontend sections")
    p.add_argument("--tracks", default="outputs/tracks/tracks.csv", help="table with id, path, label")
    p.add_argument("--out", default="outputs/features")
    p.set_defaults(func=_cmd_features)
