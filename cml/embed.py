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
`crop_embeddings` embeds centred crops of 1x to 64x the training crop length in one pass each, and the
whole track in one pass, for the length-extrapolation table.

Output is the project's one feature-table format (`cml.tables`: Parquet with `id`, optional `label`,
`path`, then the feature columns f0..f{d-1}; see that module's docstring). A `split` column is carried
over from a track table, so `cml evaluate` can use the file on its own.

Failures never stop a run: a track that cannot be decoded, is shorter than one token or gives a
non-finite embedding is skipped with a one-line reason (`Embedded.skipped`, and `--skipped FILE`).

MODEL on the command line is a checkpoint path, or `untrained:VARIANT` for the random-init baseline
(architecture: `EncoderConfig` defaults, changed with `--set dim=64 --set depth=2 ...`, weights from
`--seed`). An untrained model has no stored input standardisation, so its `Normalizer` is measured
on the log-mels of (at most 16 of) the tracks to embed, the training split when there is one: a global
mean and std, no labels involved, the same kind of constants a checkpoint stores.
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
from typing import Iterator, NamedTuple, Optional, Sequence

import numpy as np
import pandas as pd
import torch
from tqdm.auto import tqdm

from cml.audio import DECODE_ERRORS, MelConfig, centre_offset, track_logmel
from cml.checkpoint import Normalizer, load_encoder, read_checkpoint, resolve_device, untrained_encoder
from cml.model import Encoder, EncoderConfig
from cml.embed_cache import EmbeddingCache, default_folder, model_key
from cml.errors import CmlError, UsageError, check_input_file, check_output, one_line, positive
from cml.scan import scan_audio
from cml.tables import part_path, read_tracks, write_feature_table

log = logging.getLogger(__name__)

MODES = ("full", "chunked")
UNTRAINED = "untrained:"  # MODEL prefix of the random-init baseline
WINDOW_CROPS = 8  # the default window of the track embedding, in training crops
DEFAULT_CROP_SECONDS = 4.0  # the recipe's training crop (TrainConfig.crop_seconds), for a model without one (untrained)
CROP_MULTIPLES = (1, 2, 4, 8, 16, 32, 64)  # up to 4.3 min at the 4 s default crop: real tracks run for minutes
TRAINING_CROP = 0.0  # --crops without a value (no valid crop is 0): the crop length the checkpoint was trained on
NORM_TRACKS = 16  # tracks whose log-mels set the untrained baseline's standardisation
NORM_SECONDS = 30.0  # seconds read from each of them
SKIP_COLUMNS = ["id", "path", "reason"]
# What can go wrong with one track: decoding (`DECODE_ERRORS`) or a too-short input (ValueError from the encoder).
TRACK_ERRORS = (*DECODE_ERRORS, ValueError)


class Embedded(NamedTuple):
    """Embeddings of the tracks that worked, aligned row by row, and the ones skipped with a reason."""

    tracks: pd.DataFrame  # id, [label], path, [split], seconds (of audio embedded); index 0..n-1
    X: np.ndarray  # (n, embed_dim) float32
    skipped: pd.DataFrame  # id, path, reason

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
    skipped: pd.DataFrame  # id, path, reason


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


def _logmel(path: str, mel_config: MelConfig, max_frames: Optional[int]) -> torch.Tensor:
    """(n_mels, T) log-mel of a whole track, or of its first max_frames frames."""
    x = track_logmel(path, mel_config)
    return x if max_frames is None else x[:, :max_frames]


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
) -> Embedded:
    """One embedding per row of `tracks` (columns id, path, optional label and split).

    mode "chunked": the mean embedding of `window_seconds` windows (default 8 x 4 s) starting every half
    window (the last one aligned to the end), so a window at least as long as the track gives exactly the
    full pass.
    mode "full": the whole track (or its first `max_seconds`) in one encoder pass. The encoder runs in
    eval mode (no dropout) whatever mode it was handed in, and is left as it was.
    cache: vectors of unchanged files are read from it instead of decoding the audio (its key must be that
    of this encoder and these settings: `cml.embed_cache.model_key`); new ones are added.
    """
    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
    _check_inputs(encoder, mel_config, tracks)
    max_frames = mel_config.frames(max_seconds) if max_seconds else None
    window = mel_config.frames(window_seconds or WINDOW_CROPS * DEFAULT_CROP_SECONDS) if mode == "chunked" else None
    kept, seconds, vectors, skipped = [], [], [], []
    rows = tracks.itertuples(index=False)
    for i, row in enumerate(tqdm(rows, total=len(tracks), desc=f"embed ({mode})", unit="track", disable=not progress)):
        cached = cache.get(row.path) if cache is not None else None
        try:
            e, length = cached or _embed_file(encoder, mel_config, normalizer, row.path, max_frames, window)
        except TRACK_ERRORS as err:
            _skip(skipped, row, f"{type(err).__name__}: {err}")
            continue
        if not np.isfinite(e).all():
            _skip(skipped, row, "non-finite embedding")
            continue
        if cache is not None and cached is None:
            cache.put(row.path, e, length)
        kept.append(i)
        seconds.append(length)
        vectors.append(e)
    X = np.stack(vectors) if vectors else np.zeros((0, encoder.cfg.embed_dim), np.float32)
    return Embedded(_track_rows(tracks, kept, seconds), X, _finish("embed", len(kept), skipped))


def _embed_file(encoder: Encoder, mel_config: MelConfig, normalizer: Normalizer, path: str,
                max_frames: Optional[int], window: Optional[int]) -> tuple[np.ndarray, float]:
    """(embedding, seconds of audio embedded) of one file: one pass, or the mean of windows."""
    with _eval_mode(encoder) as device:
        x = normalizer(_logmel(path, mel_config, max_frames))[None].to(device)  # (1, M, T)
        e = encoder.embed(x) if window is None else encoder.embed_chunked(x, window, max(1, window // 2))
    return e[0].float().cpu().numpy(), mel_config.seconds(x.shape[-1])


def centre_crop(x: torch.Tensor, length: int) -> torch.Tensor:
    """The middle `length` frames of (..., T); the whole input when it is not longer."""
    start = int(centre_offset(x.shape[-1], length))
    return x[..., start:start + length]


@torch.inference_mode()
def crop_embeddings(
    encoder: Encoder,
    mel_config: MelConfig,
    normalizer: Normalizer,
    tracks: pd.DataFrame,
    crop_seconds: float,
    multiples: Sequence[int] = CROP_MULTIPLES,
    progress: bool = True,
) -> CropEmbedded:
    """Embeddings of centred crops of m x `crop_seconds` (m in `multiples`) and of the full track.

    The log-mel is computed once per track and cropped, so every crop sees the same frames as the full
    pass. A crop longer than the track is the whole track (compare `tracks.seconds` with the crop length).
    A track skipped for one crop is skipped for all, so every crop has the same rows.
    """
    _check_inputs(encoder, mel_config, tracks)
    lengths = {f"{m}x": mel_config.frames(m * crop_seconds) for m in multiples}
    kept, seconds, skipped = [], [], []
    vectors: dict[str, list[np.ndarray]] = {name: [] for name in [*lengths, "full"]}
    rows = tracks.itertuples(index=False)
    for i, row in enumerate(tqdm(rows, total=len(tracks), desc="embed crops", unit="track", disable=not progress)):
        try:
            with _eval_mode(encoder) as device:
                x = normalizer(_logmel(row.path, mel_config, None))[None].to(device)  # (1, M, T)
                out = {name: encoder.embed(centre_crop(x, n))[0].float().cpu().numpy() for name, n in lengths.items()}
                out["full"] = encoder.embed(x)[0].float().cpu().numpy()
        except TRACK_ERRORS as err:
            _skip(skipped, row, f"{type(err).__name__}: {err}")
            continue
        if not all(np.isfinite(e).all() for e in out.values()):
            _skip(skipped, row, "non-finite embedding")
            continue
        kept.append(i)
        seconds.append(mel_config.seconds(x.shape[-1]))
        for name, e in out.items():
            vectors[name].append(e)
    X = {name: np.stack(v) if v else np.zeros((0, encoder.cfg.embed_dim), np.float32) for name, v in vectors.items()}
    return CropEmbedded(_track_rows(tracks, kept, seconds), X, _finish("embed crops", len(kept), skipped))


def estimate_normalizer(paths: Sequence[str], mel_config: MelConfig, max_tracks: int = NORM_TRACKS,
                        max_seconds: float = NORM_SECONDS, seed: int = 0) -> Normalizer:
    """`Normalizer.measure` over the first `max_seconds` of a seeded sample of tracks (unreadable ones are
    passed over): an untrained encoder has no training crops to measure."""
    paths = list(paths)
    chosen = sorted(np.random.default_rng(seed).permutation(len(paths))[:max_tracks])
    logmels = list(_readable_logmels([paths[i] for i in chosen], mel_config, mel_config.frames(max_seconds)))
    if not logmels:
        log.warning("no readable track to measure log-mel statistics; inputs are not standardised")
    return Normalizer.measure(logmels)


def _readable_logmels(paths: Sequence[str], mel_config: MelConfig, max_frames: int) -> Iterator[torch.Tensor]:
    for path in paths:
        try:
            x = _logmel(path, mel_config, max_frames)
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
    """A checkpoint path, or `untrained:VARIANT` (random init from `seed`, EncoderConfig + `overrides`).

    The untrained model comes with the `frontend` log-mel (the encoder takes its n_mels) and no Normalizer:
    measure one with `estimate_normalizer`. A checkpoint's architecture and front end are never overridden.
    """
    if spec.startswith(UNTRAINED):
        cfg = EncoderConfig(**{"n_mels": frontend.n_mels, **(overrides or {}), "variant": spec[len(UNTRAINED):]})
        return untrained_encoder(cfg, seed).to(device), frontend, None
    if overrides:
        raise ValueError("--set only applies to untrained:VARIANT; a checkpoint brings its own architecture")
    return load_encoder(spec, map_location=device)


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
            splits = sorted(tracks["split"].dropna().unique()) if "split" in tracks.columns else []
            if args.only_split not in splits:
                raise UsageError(f"--only-split {args.only_split!r} is not a split of {args.tracks} "
                                 f"(splits there: {', '.join(splits) or 'none, no split column'})")
            tracks = tracks[tracks["split"] == args.only_split].reset_index(drop=True)
        return tracks, pd.DataFrame(columns=SKIP_COLUMNS)
    if not Path(args.audio_dir).is_dir():
        raise UsageError(f"audio folder not found: {args.audio_dir}")
    scan = scan_audio(args.audio_dir, progress=not args.quiet)
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

    def device(self, device: torch.device) -> torch.device:
        """One GPU per process: cuda without an index is cuda:LOCAL_RANK."""
        if device.type == "cuda" and device.index is None and self.world > 1:
            return torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0)))
        return device


def _outputs(args: argparse.Namespace, shard: Shard) -> dict[str, Path]:
    """Every file the command will write (name -> this process's path), checked before any audio is read."""
    out = Path(args.out)
    names = [*(f"{m}x" for m in CROP_MULTIPLES), "full"] if args.crops is not None else []
    files = {n: out.with_name(f"{out.stem}.{n}{out.suffix}") for n in names} or {"tracks": out}
    if args.skipped:
        files["skipped"] = Path(args.skipped)
    return {name: check_output(part_path(f, *shard)) for name, f in files.items()}


def _model(args: argparse.Namespace, device: torch.device) -> tuple[Encoder, MelConfig, Optional[Normalizer], Optional[float]]:
    """The encoder, its front end and standardisation (None: untrained) and training crop (None: untrained)."""
    untrained = args.model.startswith(UNTRAINED)
    model, frontend = study_model(args.params) if untrained else ({}, MelConfig())
    try:
        overrides = {**model, **parse_overrides(args.set)} if untrained else parse_overrides(args.set)
        encoder, mel_config, normalizer = load_model(args.model, args.seed, overrides, device, frontend)
    except (TypeError, ValueError) as err:
        if isinstance(err, CmlError):
            raise
        raise UsageError(f"{args.model}: {one_line(err)}") from err
    training_crop = None if untrained else read_checkpoint(args.model)["train_config"].get("crop_seconds")
    return encoder, mel_config, normalizer, training_crop


def _open_cache(args: argparse.Namespace, encoder: Encoder, mel_config: MelConfig, normalizer: Normalizer,
                window_seconds: float) -> contextlib.AbstractContextManager:
    """The embedding cache of this model and these settings (a no-op context with --no-cache)."""
    if args.no_cache:
        return contextlib.nullcontext()
    settings = {"encoder": dataclasses.asdict(encoder.cfg), "frontend": dataclasses.asdict(mel_config),
                "norm": normalizer.to_dict(), "mode": args.mode, "max_seconds": args.max_seconds,
                "window_seconds": window_seconds if args.mode == "chunked" else None, "seed": args.seed}
    return EmbeddingCache(args.cache or default_folder(), model_key(args.model, settings))


def _cmd_embed(args: argparse.Namespace) -> int:
    if bool(args.audio_dir) == bool(args.tracks):
        raise UsageError("give either AUDIO_DIR or --tracks FILE (not both)")
    shard = Shard.from_env()
    device = shard.device(resolve_device(args.device))
    files = _outputs(args, shard)
    encoder, mel_config, normalizer, training_crop = _model(args, device)
    if args.crops == TRAINING_CROP:
        if training_crop is None:
            raise UsageError(f"--crops needs CROP_SECONDS with {args.model} (it has no training crop)")
        args.crops = float(training_crop)
    window_seconds = args.window_seconds or WINDOW_CROPS * float(training_crop or DEFAULT_CROP_SECONDS)
    tracks, scan_skipped = _read_tracks(args)
    if normalizer is None:  # from all the tracks, so every rank standardises alike
        pool = tracks[tracks["split"] == "train"] if "split" in tracks.columns else tracks
        normalizer = estimate_normalizer((pool if len(pool) else tracks)["path"], mel_config, seed=args.seed)
        log.info("untrained model: inputs standardised with mean %.3f, std %.3f", normalizer.mean, normalizer.std)
    tracks, progress = shard.rows(tracks), not args.quiet and shard.rank == 0
    if args.crops:
        res = crop_embeddings(encoder, mel_config, normalizer, tracks, args.crops, progress=progress)
        for name, X in res.X.items():
            Embedded(res.tracks, X, res.skipped).write(files[name])
    else:
        with _open_cache(args, encoder, mel_config, normalizer, window_seconds) as cache:
            res = embed_tracks(encoder, mel_config, normalizer, tracks, args.mode, window_seconds, args.max_seconds,
                               progress, cache)
        res.write(files["tracks"])
        if cache is not None:
            log.info("embedding cache %s: %d vectors reused, %d files not in it", cache.folder, cache.hits, cache.misses)
    _report(args, files, tracks, res, scan_skipped if shard.rank == 0 else scan_skipped.iloc[:0])
    return 0


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
    p.add_argument("model", help="checkpoint path, or untrained:VARIANT for the random-init baseline")
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
                   help="length-extrapolation run: write OUT.{1x,2x,...,64x,full}.parquet from centred crops "
                        "of 1, 2, 4, ..., 64 x CROP_SECONDS (default: the checkpoint's training crop) and the full track")
    p.add_argument("--only-split", help="with --tracks: embed only the tracks of this split (e.g. test)")
    p.add_argument("--seed", type=int, default=0, help="weights of untrained:VARIANT (and its norm sample)")
    p.add_argument("--params", help="untrained:VARIANT: take the model size and the front end from this file's "
                                   "model and frontend sections")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="untrained:VARIANT: override an EncoderConfig field (repeatable), e.g. --set dim=64")
    p.add_argument("--cache", metavar="DIR", help="embedding cache: unchanged files are not decoded again "
                                                  "(default $CML_EMBED_CACHE or ~/.cache/cml/embeddings)")
    p.add_argument("--no-cache", action="store_true", help="embed every file, read and write no cache")
    p.add_argument("--device", default="auto", help="auto (cuda when available), cpu, cuda, cuda:1, ...")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.set_defaults(func=_cmd_embed)
