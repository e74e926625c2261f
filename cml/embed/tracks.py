"""One embedding per track from a trained (or untrained) encoder: the input of evaluation and clustering.

A track's embedding is the mean of the embeddings of WINDOWS of its log-mel (`mode="chunked"`, the default;
`Encoder.embed_chunked`): `window_seconds` long (by default 8x the training crop, 32 s, the longest input
every variant is checked on), one every half window, the last aligned to the end. A track no longer than
a window is one pass over the whole track, so the default corpus (excerpts up to 30 s) is embedded exactly
as by one pass. Longer tracks never meet positions far beyond training: one pass over a 7-minute track
gives absolute positions (sincos) a length-dependent offset that the mean pooling keeps, so tracks sort
by length (README, "Real recordings"); windows keep the embedding of the same music the same at any
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
"""
from __future__ import annotations

import argparse
import contextlib
import dataclasses
import logging
import os
import sys
import typing
from pathlib import Path
from typing import Iterable, Iterator, NamedTuple, Optional, Sequence

import numpy as np
import pandas as pd
import torch
from threadpoolctl import threadpool_limits
from tqdm.auto import tqdm

from cml.audio.mel import DECODE_ERRORS, MelConfig, centre_offset, track_logmel
from cml.model.checkpoint import (
    Normalizer, checkpoint_path, load_encoder, process_device, read_checkpoint, untrained_encoder,
)
from cml.model.encoder import Encoder, EncoderConfig, chunk_windows
from cml.model.musicnn import MUSICNN_MEL, PATCH_FRAMES, Musicnn, MusicnnConfig, load_musicnn, weights_sha256
from cml.embed.cache import EmbeddingCache, default_folder, model_key
from cml.errors import CmlError, UsageError, check_input_file, check_output, non_negative_int, one_line, positive
from cml.data.scan import length_slack, scan_audio
from cml.tables import part_path, read_tracks, write_feature_table

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
DEFAULT_WORKERS = min(8, CORES)  # decoding processes: one per core, the most of the work on CPU (README, "A whole library")
SKIP_COLUMNS = ["id", "path", "reason"]
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

    Decoding and resampling are most of the time on compressed audio (README, "A whole library"), so a
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
            unusable = x if isinstance(x, str) else _unusable(tracks.iloc[i], x, mel_config)  # str: not decoded
            if unusable:
                _skip(skipped, tracks.iloc[i], unusable)
                found.pop(i, None)
                continue
            try:
                x = normalizer(x)[None].to(device)  # (1, M, T)
                if to_crop[i]:
                    cropped[i] = _embed_crops(encoder, x, lengths), mel_config.seconds(x.shape[-1])
            except TRACK_ERRORS as err:
                _skip(skipped, tracks.iloc[i], f"{type(err).__name__}: {err}")
                found.pop(i, None)
                continue
            if i in cropped and not _finite(skipped, tracks.iloc[i], cropped[i][0].values(), "crops: "):
                del cropped[i]
            if i not in found:
                batch.add(i, x[..., :max_frames])
            if batch.full(device):
                found.update(batch.embed(encoder, window, mel_config, tracks, skipped, cache, paths))
        found.update(batch.embed(encoder, window, mel_config, tracks, skipped, cache, paths))
    kept = sorted(found)
    crop_rows = [i for i in kept if i in cropped]
    skipped_frame = _finish("embed", len(kept), skipped)
    res = Embedded(_track_rows(tracks, kept, [found[i][1] for i in kept]), _stack([found[i][0] for i in kept], encoder),
                   skipped_frame)
    if crops is None:
        return res
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
        slack = length_slack(fmt, int(rate)) / float(rate) + 2 * mel_config.seconds(1)
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


def parse_overrides(items: Sequence[str]) -> dict[str, object]:
    """`["dim=64", "pool=cls"]` -> {"dim": 64, "pool": "cls"}, typed after the EncoderConfig fields."""
    fields = {f.name: f for f in dataclasses.fields(EncoderConfig)}
    hints = typing.get_type_hints(EncoderConfig)
    out: dict[str, object] = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or key not in fields:
            raise ValueError(f"--set expects KEY=VALUE with KEY one of {sorted(fields)}, got {item!r}")
        kind = hints[key]
        if value.lower() in ("none", "null") and kind not in (int, float, str):
            out[key] = None
        else:
            out[key] = (int(value) if kind is int else float(value) if kind is float
                        else str(value) if kind in (str, Optional[str]) else value)
    return out


def load_model(spec: str, seed: int = 0, overrides: Optional[dict] = None, device: str | torch.device = "cpu",
               frontend: MelConfig = MelConfig()) -> tuple[Encoder, MelConfig, Optional[Normalizer]]:
    """A checkpoint path, `pretrained` (the shipped encoder, `cml.train.pretrain`), `untrained:VARIANT` (random init
    from `seed`, EncoderConfig + `overrides`) or `musicnn[:MODEL[:LAYER]]` (the pretrained tagger, its own front
    end; it standardises its input itself).

    The untrained model comes with the `frontend` log-mel (the encoder takes its n_mels) and no Normalizer:
    measure one with `estimate_normalizer`. A checkpoint's architecture and front end are never overridden.
    """
    if spec == MUSICNN or spec.startswith(MUSICNN + ":"):
        if overrides:
            raise ValueError("--set only applies to untrained:VARIANT; musicnn brings its own architecture")
        return load_musicnn(spec[len(MUSICNN) + 1:], device), MUSICNN_MEL, Normalizer()
    if spec.startswith(UNTRAINED):
        cfg = EncoderConfig(**{"n_mels": frontend.n_mels, **(overrides or {}), "variant": spec[len(UNTRAINED):]})
        return untrained_encoder(cfg, seed).to(device), frontend, None
    if overrides:
        raise ValueError("--set only applies to untrained:VARIANT; a checkpoint brings its own architecture")
    return load_encoder(checkpoint_path(spec), map_location=device)


def study_model(params_file: Optional[str]) -> tuple[dict, MelConfig]:
    """The `model` overrides and the `frontend` of a params file: an untrained baseline must match the trained
    encoders' size and input."""
    if not params_file:
        return {}, MelConfig()
    from cml.params import load_config, load_params

    return dict(load_params(params_file, "model")), load_config(params_file, "frontend", MelConfig)


# --------------------------------------------------------------------------------------------------
# CLI


def _read_tracks(args: argparse.Namespace) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(tracks, files skipped while scanning) from --tracks or AUDIO_DIR."""
    if args.tracks:
        tracks = read_tracks(check_input_file(args.tracks, "tracks table"))
        if args.only_split:
            tracks = tracks[_split_rows(tracks, args.only_split, "--only-split", args.tracks)].reset_index(drop=True)
        return tracks, pd.DataFrame(columns=SKIP_COLUMNS)
    if not Path(args.audio_dir).is_dir():
        raise UsageError(f"audio folder not found: {args.audio_dir}")
    scan = scan_audio(args.audio_dir, progress=not args.quiet, decode=False)  # each file is decoded once, below
    skipped = scan.skipped.assign(id=None)[SKIP_COLUMNS]
    return scan.tracks, skipped


class Shard(NamedTuple):
    """This process's share of a `torchrun` job (RANK of WORLD_SIZE): a contiguous block of the rows, written
    as part files of each output (`cml.tables.part_path`), which every reader takes as one table."""

    rank: int = 0
    world: int = 1

    @classmethod
    def from_env(cls) -> "Shard":
        return cls(int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1)))

    def rows(self, tracks: pd.DataFrame) -> pd.DataFrame:
        """A contiguous block holding about 1/world of the audio (of the rows, without a duration column):
        the ranks finish together, and their parts in rank order are the table in its order."""
        if self.world == 1:
            return tracks
        weight = pd.to_numeric(tracks["duration"], errors="coerce").fillna(0).to_numpy() if "duration" in tracks \
            else np.ones(len(tracks))
        middles = np.cumsum(weight) - weight / 2  # each row goes to the rank its middle falls in
        rank = (middles * self.world // weight.sum()).astype(int) if weight.sum() > 0 else np.zeros(len(tracks), int)
        return tracks[np.minimum(rank, self.world - 1) == self.rank].reset_index(drop=True)


def _outputs(args: argparse.Namespace, shard: Shard) -> dict[str, Path]:
    """Every file the command will write (name -> this process's path), checked before any audio is read."""
    out = Path(args.out)
    names = [*(f"{m}x" for m in CROP_MULTIPLES), "full"] if args.crops is not None else []
    files = {"tracks": out, **{n: out.with_name(f"{out.stem}.{n}{out.suffix}") for n in names}}
    if args.skipped:
        files["skipped"] = Path(args.skipped)
    return {name: check_output(part_path(f, *shard)) for name, f in files.items()}


def study_musicnn(params_file: Optional[str]) -> str:
    """`musicnn:MODEL:LAYER` of a params file's `musicnn` section (the defaults without one)."""
    from cml.params import load_config, load_params

    has = params_file and "musicnn" in load_params(params_file)
    cfg = load_config(params_file, "musicnn", MusicnnConfig) if has else MusicnnConfig()
    return f"{MUSICNN}:{cfg.model}:{cfg.layer}"


def _model(args: argparse.Namespace, device: torch.device) -> tuple[Encoder, MelConfig, Optional[Normalizer], Optional[float]]:
    """The encoder, its front end and standardisation (None: untrained) and training crop (None: untrained)."""
    untrained = args.model.startswith(UNTRAINED)
    model, frontend = study_model(args.params) if untrained else ({}, MelConfig())
    spec = study_musicnn(args.params) if args.model == MUSICNN else args.model
    try:
        overrides = {**model, **parse_overrides(args.set)} if untrained else parse_overrides(args.set)
        encoder, mel_config, normalizer = load_model(spec, args.seed, overrides, device, frontend)
    except (TypeError, ValueError) as err:
        if isinstance(err, CmlError):
            raise
        raise UsageError(f"{args.model}: {one_line(err)}") from err
    trained = not untrained and not isinstance(encoder, Musicnn)
    training_crop = read_checkpoint(checkpoint_path(args.model))["train_config"].get("crop_seconds") if trained else None
    return encoder, mel_config, normalizer, training_crop


def _window_seconds(args: argparse.Namespace, encoder: Encoder | Musicnn, training_crop: Optional[float]) -> float:
    """--window-seconds, else 8 training crops of an encoder, or musicnn's training patch (VGG takes nothing else)."""
    if not isinstance(encoder, Musicnn):
        return args.window_seconds or WINDOW_CROPS * float(training_crop or DEFAULT_CROP_SECONDS)
    if encoder.cfg.arch == "vgg" and (args.window_seconds or args.mode == "full"):
        raise UsageError(f"{args.model}: the VGG taggers take {PATCH_FRAMES}-frame patches only "
                         "(no --window-seconds, no --mode full)")
    return args.window_seconds or MUSICNN_MEL.seconds(PATCH_FRAMES)


def _cache_key(args: argparse.Namespace, encoder: Encoder, mel_config: MelConfig, normalizer: Normalizer,
               window_seconds: float) -> str:
    """The embedding cache's key of this model and these settings."""
    weights = {"weights": weights_sha256(encoder.cfg.model)} if isinstance(encoder, Musicnn) else {}
    settings = {"encoder": dataclasses.asdict(encoder.cfg), **weights, "frontend": dataclasses.asdict(mel_config),
                "norm": normalizer.to_dict(), "mode": args.mode, "max_seconds": args.max_seconds,
                "window_seconds": window_seconds if args.mode == "chunked" else None, "seed": args.seed}
    return model_key(str(checkpoint_path(args.model)), settings)  # a checkpoint file is keyed by its bytes


def _cmd_embed(args: argparse.Namespace) -> int:
    if bool(args.audio_dir) == bool(args.tracks):
        raise UsageError("give either AUDIO_DIR or --tracks FILE (not both)")
    shard = Shard.from_env()
    device = process_device(args.device, int(os.environ.get("LOCAL_RANK", 0)))
    files = _outputs(args, shard)
    encoder, mel_config, normalizer, training_crop = _model(args, device)
    if args.crops == TRAINING_CROP:
        if training_crop is None:
            raise UsageError(f"--crops needs CROP_SECONDS with {args.model} (it has no training crop)")
        args.crops = float(training_crop)
    window_seconds = _window_seconds(args, encoder, training_crop)
    tracks, scan_skipped = _read_tracks(args)
    _split_rows(tracks, args.crop_split, "--crop-split", args.tracks)  # checked on the whole table: a shard may hold none
    with contextlib.nullcontext() if args.no_cache else EmbeddingCache(args.cache or default_folder()) as cache:
        if normalizer is None:  # from all the tracks, so every rank standardises alike
            pool = tracks[tracks["split"] == "train"] if "split" in tracks.columns else tracks
            normalizer = estimate_normalizer((pool if len(pool) else tracks)["path"], mel_config, seed=args.seed,
                                             cache=cache)
            log.info("untrained model: inputs standardised with mean %.3f, std %.3f", normalizer.mean, normalizer.std)
        if cache is not None:
            cache.key = _cache_key(args, encoder, mel_config, normalizer, window_seconds)
        tracks = shard.rows(tracks)
        crop_rows = None if args.crop_split is None else (tracks["split"] == args.crop_split).to_numpy()
        crops = Crops(args.crops, rows=crop_rows) if args.crops else None
        with _threads_beside(args.workers):
            res = embed_tracks(encoder, mel_config, normalizer, tracks, args.mode, window_seconds, args.max_seconds,
                               not args.quiet and shard.rank == 0, cache, crops, args.workers)
    res.write(files["tracks"])
    if res.crops is not None:
        for name, X in res.crops.X.items():
            Embedded(res.crops.tracks, X, res.skipped).write(files[name])
    if cache is not None:
        log.info("embedding cache %s: %d vectors reused, %d files not in it", cache.folder, cache.hits, cache.misses)
    _report(args, files, tracks, res, scan_skipped if shard.rank == 0 else scan_skipped.iloc[:0])
    return 0


def _threads_beside(workers: int) -> contextlib.AbstractContextManager:
    """While `workers` decoding processes (one thread each) take their cores, torch's OpenMP pool (the encoder)
    and numpy's BLAS (whose idle threads spin, and which the workers inherit) run on the cores left, at least
    one; both are restored after."""
    return threadpool_limits(max(1, CORES - workers)) if workers else contextlib.nullcontext()


def _split_rows(tracks: pd.DataFrame, split: Optional[str], option: str, source: Optional[str]) -> Optional[np.ndarray]:
    """Rows of `split` (None: every row); a UsageError naming the `option` when the table has no such split."""
    if split is None:
        return None
    splits = sorted(tracks["split"].dropna().unique()) if "split" in tracks.columns else []
    if split not in splits:
        raise UsageError(f"{option} {split!r} is not a split of {source or 'the scanned folder'} "
                         f"(splits there: {', '.join(splits) or 'none, no split column'})")
    return (tracks["split"] == split).to_numpy()


def _report(args: argparse.Namespace, files: dict[str, Path], tracks: pd.DataFrame, res, scan_skipped: pd.DataFrame) -> None:
    """The skip report and the one-line summary; an error when no track at all could be embedded."""
    skipped = pd.concat([scan_skipped, res.skipped], ignore_index=True) if len(scan_skipped) else res.skipped
    if "skipped" in files:
        skipped.to_csv(files["skipped"], index=False)
    written = ", ".join(str(f) for name, f in files.items() if name != "skipped")
    print(f"{len(res.tracks)} tracks embedded ({res.tracks['seconds'].sum() / 3600:.2f} h) -> {written}; "
          f"{len(skipped)} skipped" + (f" (see {files['skipped']})" if "skipped" in files else ""))
    for r in skipped.head(10).itertuples():
        print(f"  skipped {r.path}: {r.reason}", file=sys.stderr)
    if len(tracks) and not len(res.tracks):
        raise CmlError(f"none of the {len(tracks)} tracks could be embedded; reasons above"
                       + (f" and in {files['skipped']}" if "skipped" in files else ""))


def register_cli(subparsers) -> None:
    """Add `cml embed MODEL (AUDIO_DIR | --tracks tracks.csv) --out FILE`."""
    p = subparsers.add_parser("embed", description=__doc__.split("\n\n")[0])
    p.add_argument("model", help="pretrained (the encoder shipped with cml: no training), a checkpoint path, "
                                 "untrained:VARIANT for the random-init baseline, or musicnn[:MODEL[:LAYER]] for "
                                 "the pretrained tagger (e.g. musicnn:MTT_vgg:pool5)")
    p.add_argument("audio_dir", nargs="?", help="folder of audio, recursive; label = first sub-folder")
    p.add_argument("--tracks", help="track table (CSV with id, path, [label, split]) instead of AUDIO_DIR")
    p.add_argument("--out", required=True, help="feature table to write (.parquet; .csv also works)")
    p.add_argument("--skipped", help="CSV of skipped files/tracks (id, path, reason)")
    p.add_argument("--mode", choices=MODES, default="chunked",
                   help="chunked: the mean of overlapping windows (a track within one window: one pass); full: one pass")
    p.add_argument("--window-seconds", type=positive, help=f"window of --mode chunked (default {WINDOW_CROPS}x the "
                                                          f"training crop; {WINDOW_CROPS * DEFAULT_CROP_SECONDS:g} s untrained)")
    p.add_argument("--max-seconds", type=positive, help="embed at most the first S seconds of each track")
    p.add_argument("--crops", type=positive, nargs="?", const=TRAINING_CROP, metavar="CROP_SECONDS",
                   help="length extrapolation: also write OUT.{1x,2x,...,64x,full}.parquet from centred crops "
                        "of 1, 2, 4, ..., 64 x CROP_SECONDS (default: the checkpoint's training crop) and the full "
                        "track, from the same decoded audio")
    p.add_argument("--crop-split", metavar="SPLIT", help="with --crops: crop only the tracks of this split (e.g. test)")
    p.add_argument("--only-split", help="with --tracks: embed only the tracks of this split (e.g. test)")
    p.add_argument("--workers", type=non_negative_int, default=DEFAULT_WORKERS,
                   help=f"processes that decode audio while the encoder runs, on the cores the encoder leaves "
                        f"(0: none; default {DEFAULT_WORKERS}, the CPU cores up to 8)")
    p.add_argument("--seed", type=int, default=0, help="weights of untrained:VARIANT (and its norm sample)")
    p.add_argument("--params", help="untrained:VARIANT: take the model size and the front end from this file's "
                                   "model and frontend sections; musicnn: the model and layer from its musicnn section")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="untrained:VARIANT: override an EncoderConfig field (repeatable), e.g. --set dim=64")
    p.add_argument("--cache", metavar="DIR", help="embedding cache: unchanged files are not decoded again "
                                                  "(default $CML_EMBED_CACHE or ~/.cache/cml/embeddings)")
    p.add_argument("--no-cache", action="store_true", help="embed every file, read and write no cache")
    p.add_argument("--device", default="auto", help="auto (cuda when available), cpu, cuda, cuda:1, ...")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.set_defaults(func=_cmd_embed)
