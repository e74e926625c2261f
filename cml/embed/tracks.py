"""One embedding per track from a trained (or untrained) encoder: the input of evaluation and clustering.

A track's embedding is the mean of the embeddings of WINDOWS of its log-mel (`mode="chunked"`, the default;
`Encoder.embed_chunked`): `window_seconds` long (by default 8x the training crop, 32 s, the longest input
every variant is checked on), one every half window, the last aligned to the end. A track no longer than
a window is one pass over the whole track, so the default corpus (excerpts up to 30 s) is embedded exactly
as by one pass. Longer tracks never meet positions far beyond training: one pass over a 7-minute track
gives absolute positions (sincos) a length-dependent offset that the mean pooling keeps, so tracks sort
by length; windows keep the embedding of the same music the same at any
length, and cost time linear in length instead of quadratic. `mode="full"` is the one pass, any length.
The log-mel (`track_logmel`, computed block by block) is standardised with the checkpoint's `Normalizer`.
It is computed in DataLoader worker processes (`iter_logmels`) while the encoder runs, and once per file:
with `crops`, the same log-mel also gives the embeddings of centred crops of 1x to 64x the training crop
and of the whole track in one pass each, for the length-extrapolation table. Under `torchrun`, each
process embeds a block of the tracks and writes part files (`Shard`).

Output is the project's one feature-table format (`cml.tables`: Parquet with `id`, optional `label`,
`path`, then the feature columns f0..f{d-1}; see that module's docstring). A `split` column is carried
over from a track table, so `cml evaluate` can use the file on its own.

Failures never stop a run: a track that cannot be decoded, is shorter than one token or gives a
non-finite embedding is skipped with a one-line reason (`Embedded.skipped`, and `--skipped FILE`).

MODEL on the command line is a checkpoint path, `untrained:VARIANT` for the random-init baseline
(architecture: `EncoderConfig` defaults, changed with `--set dim=64 --set depth=2 ...`, weights from
`--seed`), or `musicnn[:MODEL[:LAYER]]` for the pretrained tagger baseline (`cml.model.musicnn`: its own front
end, and its 3 s training patch as the window, half-overlapping like the encoders' windows). An untrained
model has no stored input standardisation, so its `Normalizer` is measured on the log-mels of (at most 16
of) the tracks to embed, the training split when there is one: a global mean and std, no labels involved,
the same kind of constants a checkpoint stores.

One module, over 400 lines: the decode -> log-mel -> windows -> encoder path of one track, and its batching
and skip rules, which change together. Which model and which settings: `cml.embed.library`.
"""
from __future__ import annotations

import contextlib
import dataclasses
import logging
import os
from pathlib import Path
from typing import Iterable, Iterator, NamedTuple, Optional, Sequence

import numpy as np
import pandas as pd
import torch

from cml.audio.mel import DECODE_ERRORS, MelConfig, centre_offset, track_logmel
from cml.data.scan import SKIP_COLUMNS, length_slack
from cml.embed.cache import EmbeddingCache
from cml.errors import one_line
from cml.model.checkpoint import Normalizer
from cml.model.encoder import Encoder, chunk_windows
from cml.progress import tqdm
from cml.tables import write_feature_table

log = logging.getLogger(__name__)

MODES = ("full", "chunked")
UNTRAINED = "untrained:"  # MODEL prefix of the random-init baseline
MUSICNN = "musicnn"  # MODEL of the pretrained baseline: musicnn[:MODEL[:LAYER]]
WINDOW_CROPS = 8  # the default window of the track embedding, in training crops
DEFAULT_CROP_SECONDS = 4.0  # the recipe's training crop (TrainConfig.crop_seconds), for a model without one (untrained)
CROP_MULTIPLES = (1, 2, 4, 8, 16, 32, 64)  # up to 4.3 min at the 4 s default crop: real tracks run for minutes
TRAINING_CROP = 0.0  # --crops without a value (no valid crop is 0): the crop length the checkpoint was trained on
NORM_TRACKS = 16  # tracks whose log-mels set the untrained baseline's standardisation
NORM_SECONDS = 30.0  # seconds read from each of them
SILENCE_MARGIN = 0.01  # a log-mel within this of the front end's floor everywhere is digital silence
CORES = len(os.sched_getaffinity(0))
DEFAULT_WORKERS = min(8, CORES)  # decoding processes: one per core, the most of the work on CPU
# What can go wrong with one track: decoding (`DECODE_ERRORS`) or a too-short input (ValueError from the encoder).
TRACK_ERRORS = (*DECODE_ERRORS, ValueError)


class Embedded(NamedTuple):
    """Embeddings of the tracks that worked, aligned row by row, and the ones skipped with a reason."""

    tracks: pd.DataFrame  # id, [label], path, [split], seconds (of audio embedded); index 0..n-1
    X: np.ndarray  # (n, embed_dim) float32
    skipped: pd.DataFrame  # id, path, reason
    crops: Optional["CropEmbedded"] = None  # with `embed_tracks(crops=...)`

    def write(self, path: str | Path) -> Path:
        """Write as a feature table (`cml.tables`); `seconds` is dropped for CSV, where it would be a feature."""
        extra = self.tracks.drop(columns=["id", "label"], errors="ignore")
        if str(path).lower().endswith(".csv"):
            extra = extra.drop(columns="seconds")
        labels = self.tracks["label"] if "label" in self.tracks else None
        return write_feature_table(path, self.tracks["id"], self.X, labels=labels, extra=extra)


class CropEmbedded(NamedTuple):
    """Per crop name ("1x", "2x", ..., "64x", "full") the (n, embed_dim) embeddings of the same tracks."""

    tracks: pd.DataFrame  # id, [label], path, [split], seconds (the full track)
    X: dict[str, np.ndarray]


def _check_inputs(encoder: Encoder, mel_config: MelConfig, tracks: pd.DataFrame) -> None:
    if mel_config.n_mels != encoder.cfg.n_mels:
        raise ValueError(f"mel config has {mel_config.n_mels} mel bins, the encoder expects {encoder.cfg.n_mels}")
    missing = {"id", "path"} - set(tracks.columns)
    if missing:
        raise ValueError(f"track table needs columns id and path; missing: {sorted(missing)}")
    if tracks["id"].astype(str).duplicated().any():
        raise ValueError(f"track ids must be unique; repeated: {tracks['id'][tracks['id'].duplicated()].tolist()[:5]}")


def _track_rows(tracks: pd.DataFrame, kept: list[int], seconds: list[float]) -> pd.DataFrame:
    cols = [c for c in ("id", "label", "path", "split") if c in tracks.columns]
    rows = tracks.iloc[kept][cols].reset_index(drop=True)
    rows["id"] = rows["id"].astype(str)
    rows["path"] = rows["path"].astype(str)
    rows["seconds"] = np.asarray(seconds, dtype=np.float64)
    return rows


def _skip(skipped: list[dict], row, reason: str) -> None:
    reason = one_line(reason)
    log.info("skipped %s: %s", row.id, reason)
    skipped.append({"id": str(row.id), "path": str(row.path), "reason": reason})


@contextlib.contextmanager
def _eval_mode(encoder: Encoder) -> Iterator[torch.device]:
    """Eval mode (no dropout) for the duration, restored after; yields the encoder's device."""
    was_training = encoder.training
    encoder.eval()
    try:
        yield next(encoder.parameters()).device
    finally:
        encoder.train(was_training)


def _finish(kind: str, n: int, skipped: list[dict]) -> pd.DataFrame:
    if skipped:
        log.warning("%s: %d tracks embedded, %d skipped", kind, n, len(skipped))
    return pd.DataFrame(skipped, columns=SKIP_COLUMNS)


class LogMels(torch.utils.data.Dataset):
    """Item i: (i, log-mel of paths[i]) or (i, the one-line reason it could not be decoded).

    Decoding and resampling are most of the time on compressed audio, so a
    `DataLoader` runs this in worker processes while the encoder works on the tracks already decoded.
    """

    def __init__(self, paths: Sequence[str], mel_config: MelConfig) -> None:
        self.paths, self.mel_config = list(paths), mel_config

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int) -> tuple[int, torch.Tensor | str]:
        try:
            return i, track_logmel(self.paths[i], self.mel_config)
        except DECODE_ERRORS as err:
            return i, f"{type(err).__name__}: {err}"


def iter_logmels(paths: Sequence[str], mel_config: MelConfig, workers: int = 0) -> Iterator[tuple[int, torch.Tensor | str]]:
    """`LogMels` items in order, decoded by `workers` processes ahead of the caller (0: in this process)."""
    data = LogMels(paths, mel_config)
    if workers == 0 or len(data) < 2:
        return map(data.__getitem__, range(len(data)))
    return iter(torch.utils.data.DataLoader(data, batch_size=None, num_workers=min(workers, len(data))))


class Crops(NamedTuple):
    """Also embed centred crops of m x `seconds` (m in `multiples`) and the whole track in one pass, for
    the rows where `rows` is True (all when None): the length-extrapolation tables."""

    seconds: float
    multiples: Sequence[int] = CROP_MULTIPLES
    rows: Optional[np.ndarray] = None  # bool per track row

    def mask(self, n: int) -> np.ndarray:
        return np.ones(n, bool) if self.rows is None else np.asarray(self.rows, bool)

    def lengths(self, mel_config: MelConfig) -> dict[str, Optional[int]]:
        """Crop name -> frames ("full": None, the whole track)."""
        return {**{f"{m}x": mel_config.frames(m * self.seconds) for m in self.multiples}, "full": None}


@torch.inference_mode()
def embed_tracks(
    encoder: Encoder,
    mel_config: MelConfig,
    normalizer: Normalizer,
    tracks: pd.DataFrame,
    mode: str = "chunked",
    window_seconds: Optional[float] = None,
    max_seconds: Optional[float] = None,
    progress: bool = True,
    cache: Optional[EmbeddingCache] = None,
    crops: Optional[Crops] = None,
    workers: int = 0,
) -> Embedded:
    """One embedding per row of `tracks` (columns id, path, optional label and split).

    mode "chunked": the mean embedding of `window_seconds` windows (default 8 x 4 s) starting every half
    window (the last one aligned to the end), so a window at least as long as the track gives exactly the
    full pass.
    mode "full": the whole track (or its first `max_seconds`) in one encoder pass. The encoder runs in
    eval mode (no dropout) whatever mode it was handed in, and is left as it was.
    cache: vectors of unchanged files are read from it instead of decoding the audio (its key must be that
    of this encoder and these settings: `cml.embed.cache.model_key`); new ones are added.
    crops: also the crop embeddings (`Embedded.crops`) from the same log-mel: each file is decoded once,
    in `workers` processes (`iter_logmels`) while this one runs the encoder. On a GPU the windows of several
    tracks share encoder passes (`_TrackBatch`).
    """
    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
    _check_inputs(encoder, mel_config, tracks)
    max_frames = mel_config.frames(max_seconds) if max_seconds else None
    window = mel_config.frames(window_seconds or WINDOW_CROPS * DEFAULT_CROP_SECONDS) if mode == "chunked" else None
    lengths = crops.lengths(mel_config) if crops else {}
    to_crop = np.zeros(len(tracks), bool) if crops is None else crops.mask(len(tracks))
    paths = tracks["path"].astype(str).tolist()
    found = {i: hit for i, p in enumerate(paths) if cache is not None and (hit := cache.get(p)) is not None}
    todo = [i for i in range(len(paths)) if i not in found or to_crop[i]]
    cropped: dict[int, tuple[dict[str, np.ndarray], float]] = {}  # row -> (crop name -> vector, seconds)
    skipped: list[dict] = []
    batch = _TrackBatch()
    logmels = tqdm(iter_logmels([paths[i] for i in todo], mel_config, workers), total=len(todo),
                   desc=f"embed ({mode})", unit="track", disable=not progress)
    with _eval_mode(encoder) as device:
        for j, x in logmels:
            i = todo[j]
            x = _track_input(tracks.iloc[i], x, mel_config, normalizer, device, skipped)
            if x is not None and to_crop[i]:
                x = _add_crops(cropped, i, tracks.iloc[i], x, encoder, lengths, mel_config, skipped)
            if x is None:
                found.pop(i, None)
                continue
            if i not in found:
                batch.add(i, x[..., :max_frames])
            if batch.full(device):
                found.update(batch.embed(encoder, window, mel_config, tracks, skipped, cache, paths))
        found.update(batch.embed(encoder, window, mel_config, tracks, skipped, cache, paths))
    return _embedded(tracks, found, cropped if crops else None, lengths, skipped, encoder)


def _track_input(row, x: torch.Tensor | str, mel_config: MelConfig, normalizer: Normalizer, device: torch.device,
                 skipped: list[dict]) -> Optional[torch.Tensor]:
    """The standardised (1, M, T) input of one decoded track; None, and the row skipped, when there is none
    (a str `x` is why it could not be decoded)."""
    unusable = x if isinstance(x, str) else _unusable(row, x, mel_config)
    if unusable:
        _skip(skipped, row, unusable)
        return None
    try:
        return normalizer(x)[None].to(device)
    except TRACK_ERRORS as err:
        _skip(skipped, row, f"{type(err).__name__}: {err}")
        return None


def _add_crops(cropped: dict, i: int, row, x: torch.Tensor, encoder: Encoder, lengths: dict[str, Optional[int]],
               mel_config: MelConfig, skipped: list[dict]) -> Optional[torch.Tensor]:
    """Embed the crops of track `i` into `cropped`; an error skips the track (None), a non-finite crop only
    its crops."""
    try:
        vectors = _embed_crops(encoder, x, lengths)
    except TRACK_ERRORS as err:
        _skip(skipped, row, f"{type(err).__name__}: {err}")
        return None
    if _finite(skipped, row, vectors.values(), "crops: "):
        cropped[i] = vectors, mel_config.seconds(x.shape[-1])
    return x


def _embedded(tracks: pd.DataFrame, found: dict, cropped: Optional[dict], lengths: dict, skipped: list[dict],
              encoder: Encoder) -> Embedded:
    """The result in row order: the tracks embedded, the skipped ones, and (cropped) the crops' tables."""
    kept = sorted(found)
    res = Embedded(_track_rows(tracks, kept, [found[i][1] for i in kept]), _stack([found[i][0] for i in kept], encoder),
                   _finish("embed", len(kept), skipped))
    if cropped is None:
        return res
    crop_rows = [i for i in kept if i in cropped]
    crop_X = {name: _stack([cropped[i][0][name] for i in crop_rows], encoder) for name in lengths}
    return res._replace(crops=CropEmbedded(_track_rows(tracks, crop_rows, [cropped[i][1] for i in crop_rows]), crop_X))


def _unusable(row, x: torch.Tensor, mel_config: MelConfig) -> Optional[str]:
    """Why a decoded log-mel should not be embedded (None if it may): digital silence, or less audio than the
    header promised (a scan of headers only, `cml embed AUDIO_DIR`, leaves truncation to be found here)."""
    if x.shape[-1] and float(x.max()) <= mel_config.floor + SILENCE_MARGIN:
        return "silent: no signal above the log-mel floor"
    header, fmt, rate = (row.get(key) for key in ("duration", "format", "sample_rate"))
    if isinstance(fmt, str) and pd.notna(header) and pd.notna(rate):
        decoded = mel_config.seconds(x.shape[-1] - 1)  # frames = 1 + samples // hop
        slack = length_slack(fmt, int(rate), round(float(header) * int(rate))) / float(rate) + 2 * mel_config.seconds(1)
        if decoded < float(header) - slack:
            return f"truncated: decoded {decoded:.2f} s of the {float(header):.2f} s in its header"
    return None


class _TrackBatch:
    """Standardised log-mels waiting for the encoder. On a GPU, the windows of several tracks go through it
    together (a GPU is busy only with large batches); windows of one length need no padding, and every window
    of a chunked embedding has the same length. On a CPU a batch is one track: the same computation as
    `Encoder.embed_chunked`, so a vector does not depend on its neighbours (bit for bit across shards)."""

    WINDOWS = 64  # windows per encoder call, as in `Encoder.embed_chunked`
    TRACKS = 64  # tracks a GPU batch gathers before the encoder runs

    def __init__(self) -> None:
        self.rows: list[int] = []
        self.logmels: list[torch.Tensor] = []  # (1, M, T)

    def add(self, row: int, x: torch.Tensor) -> None:
        self.rows.append(row)
        self.logmels.append(x)

    def full(self, device: torch.device) -> bool:
        return bool(self.rows) and (device.type != "cuda" or len(self.rows) >= self.TRACKS)

    def embed(self, encoder: Encoder, window: Optional[int], mel_config: MelConfig, tracks: pd.DataFrame,
              skipped: list[dict], cache: Optional[EmbeddingCache], paths: list[str]) -> dict[int, tuple[np.ndarray, float]]:
        """Row -> (embedding, seconds embedded) of every finite result (cached), the others skipped; empties the batch."""
        rows, logmels, self.rows, self.logmels = self.rows, self.logmels, [], []
        windows = [(chunk_windows(x, window, max(1, window // 2)) if window else x[:, None])[0] for x in logmels]  # (W, M, L)
        vectors: dict[int, torch.Tensor] = {}
        for length in sorted({w.shape[-1] for w in windows}):  # one encoder pass per window length
            members = [k for k, w in enumerate(windows) if w.shape[-1] == length]
            try:
                e = torch.cat([encoder.embed(part) for part in torch.cat([windows[k] for k in members]).split(self.WINDOWS)])
            except TRACK_ERRORS as err:  # too short for one token; out of memory
                for k in members:
                    _skip(skipped, tracks.iloc[rows[k]], f"{type(err).__name__}: {err}")
                continue
            vectors.update(zip(members, e.split([len(windows[k]) for k in members])))
        out = {}
        for k, row in enumerate(rows):
            if k not in vectors:
                continue
            result = vectors[k].mean(dim=0).float().cpu().numpy(), mel_config.seconds(logmels[k].shape[-1])
            if _finite(skipped, tracks.iloc[row], [result[0]]):
                out[row] = result
                if cache is not None:
                    cache.put(paths[row], *result)
        return out


def _embed_crops(encoder: Encoder, x: torch.Tensor, lengths: dict[str, Optional[int]]) -> dict[str, np.ndarray]:
    """Crop name -> embedding of the centred crop of that many frames (None: the whole track), one pass each."""
    return {name: encoder.embed(x if n is None else centre_crop(x, n))[0].float().cpu().numpy()
            for name, n in lengths.items()}


def _finite(skipped: list[dict], row, vectors: Iterable[np.ndarray], what: str = "") -> bool:
    """True if every vector is finite; else the row is skipped with the reason."""
    if all(np.isfinite(e).all() for e in vectors):
        return True
    _skip(skipped, row, f"{what}non-finite embedding")
    return False


def _stack(vectors: list[np.ndarray], encoder: Encoder) -> np.ndarray:
    return np.stack(vectors) if vectors else np.zeros((0, encoder.cfg.embed_dim), np.float32)


def centre_crop(x: torch.Tensor, length: int) -> torch.Tensor:
    """The middle `length` frames of (..., T); the whole input when it is not longer."""
    start = int(centre_offset(x.shape[-1], length))
    return x[..., start:start + length]


def estimate_normalizer(paths: Sequence[str], mel_config: MelConfig, max_tracks: int = NORM_TRACKS,
                        max_seconds: float = NORM_SECONDS, seed: int = 0,
                        cache: Optional[EmbeddingCache] = None) -> Normalizer:
    """`Normalizer.measure` over the first `max_seconds` of a seeded sample of tracks (unreadable ones are
    passed over): an untrained encoder has no training crops to measure. With a cache, kept and reused while
    the sampled files are unchanged."""
    paths = list(paths)
    chosen = [paths[i] for i in sorted(np.random.default_rng(seed).permutation(len(paths))[:max_tracks])]

    def measure() -> tuple[float, float]:
        logmels = list(_readable_logmels(chosen, mel_config, mel_config.frames(max_seconds)))
        if not logmels:
            log.warning("no readable track to measure log-mel statistics; inputs are not standardised")
        norm = Normalizer.measure(logmels)
        return norm.mean, norm.std

    settings = {"frontend": dataclasses.asdict(mel_config), "max_seconds": max_seconds}
    return Normalizer(*(measure() if cache is None else cache.statistic(chosen, settings, measure)))


def _readable_logmels(paths: Sequence[str], mel_config: MelConfig, max_frames: int) -> Iterator[torch.Tensor]:
    for path in paths:
        try:
            x = track_logmel(path, mel_config, max_frames=max_frames)
        except TRACK_ERRORS as err:
            log.warning("normaliser: passed over %s (%s)", path, one_line(err))
            continue
        if not torch.isfinite(x).all():  # one such file would make every standardised input NaN
            log.warning("normaliser: passed over %s (non-finite log-mel values)", path)
            continue
        yield x


