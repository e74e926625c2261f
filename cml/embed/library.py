"""Embedding a library: which model (a checkpoint, `pretrained`, `untrained:VARIANT`, `musicnn[:MODEL[:LAYER]]`),
with which settings, the untrained model's input standardisation, the embedding cache's key, and this process's
share of a `torchrun` job. `cml embed` is a thin command over `open_model` and `embed_library`."""
from __future__ import annotations

import contextlib
import dataclasses
import logging
import typing
from dataclasses import dataclass
from typing import NamedTuple, Optional, Sequence

import numpy as np
import pandas as pd
import torch
from threadpoolctl import threadpool_limits

from cml.audio.mel import MelConfig
from cml.embed.cache import EmbeddingCache, default_folder, model_key
from cml.embed.tracks import (
    CORES,
    DEFAULT_CROP_SECONDS,
    DEFAULT_WORKERS,
    MUSICNN,
    TRAINING_CROP,
    UNTRAINED,
    WINDOW_CROPS,
    Crops,
    Embedded,
    embed_tracks,
    estimate_normalizer,
)
from cml.errors import CmlError, UsageError, one_line
from cml.model.checkpoint import Normalizer, checkpoint_path, load_encoder, read_checkpoint, untrained_encoder
from cml.model.devices import Process, process_device
from cml.model.encoder import Encoder, EncoderConfig
from cml.model.musicnn import MUSICNN_MEL, PATCH_FRAMES, Musicnn, MusicnnConfig, load_musicnn, weights_sha256

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class EmbedSettings:
    """How to embed a library; `cml embed`'s options, with its defaults."""

    mode: str = "chunked"  # chunked: the mean of overlapping windows; full: one pass
    window_seconds: Optional[float] = None  # None: 8 training crops, or musicnn's training patch
    max_seconds: Optional[float] = None  # embed at most the first seconds of each track
    crops: Optional[float] = None  # also centred crops of 1x..64x this (TRAINING_CROP: the checkpoint's crop)
    crop_split: Optional[str] = None  # crop only the tracks of this split
    seed: int = 0  # weights of untrained:VARIANT and its standardisation sample
    params: Optional[str] = None  # untrained: model and frontend sections; musicnn: its section
    overrides: Sequence[str] = ()  # untrained: EncoderConfig KEY=VALUE
    workers: int = DEFAULT_WORKERS  # decoding processes
    device: str = "auto"
    cache: Optional[str] = None  # embedding cache folder (None: the default one)
    use_cache: bool = True
    progress: bool = True


class EmbeddingModel(NamedTuple):
    """A model ready to embed: its spec as given, the encoder, its front end, its input standardisation (None:
    untrained, measured on the library) and its training crop (None: none)."""

    spec: str
    encoder: Encoder | Musicnn
    mel: MelConfig
    normalizer: Optional[Normalizer]
    training_crop: Optional[float]


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


def study_musicnn(params_file: Optional[str]) -> str:
    """`musicnn:MODEL:LAYER` of a params file's `musicnn` section (the defaults without one)."""
    from cml.params import load_config, load_params

    has = params_file and "musicnn" in load_params(params_file)
    cfg = load_config(params_file, "musicnn", MusicnnConfig) if has else MusicnnConfig()
    return f"{MUSICNN}:{cfg.model}:{cfg.layer}"


class Shard(NamedTuple):
    """This process's share of a `torchrun` job (RANK of WORLD_SIZE): a contiguous block of the rows, written
    as part files of each output (`cml.tables.part_path`), which every reader takes as one table."""

    rank: int = 0
    world: int = 1

    @classmethod
    def from_env(cls) -> "Shard":
        process = Process.from_env()
        return cls(process.rank, process.world)

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


def split_rows(tracks: pd.DataFrame, split: Optional[str], option: str, source: Optional[str]) -> Optional[np.ndarray]:
    """Rows of `split` (None: every row); a UsageError naming the `option` when the table has no such split."""
    if split is None:
        return None
    splits = sorted(tracks["split"].dropna().unique()) if "split" in tracks.columns else []
    if split not in splits:
        raise UsageError(f"{option} {split!r} is not a split of {source or 'the tracks to embed'} "
                         f"(splits there: {', '.join(splits) or 'none, no split column'})")
    return (tracks["split"] == split).to_numpy()


def threads_beside(workers: int) -> contextlib.AbstractContextManager:
    """While `workers` decoding processes (one thread each) take their cores, torch's OpenMP pool (the encoder)
    and numpy's BLAS (whose idle threads spin, and which the workers inherit) run on the cores left, at least
    one; both are restored after."""
    return threadpool_limits(max(1, CORES - workers)) if workers else contextlib.nullcontext()


def open_model(spec: str, settings: EmbedSettings = EmbedSettings()) -> EmbeddingModel:
    """The model MODEL names, on this process's device; a mistake in it or in --set is a UsageError naming it."""
    untrained = spec.startswith(UNTRAINED)
    model, frontend = study_model(settings.params) if untrained else ({}, MelConfig())
    resolved = study_musicnn(settings.params) if spec == MUSICNN else spec
    try:
        overrides = {**model, **parse_overrides(settings.overrides)} if untrained else parse_overrides(settings.overrides)
        encoder, mel_config, normalizer = load_model(resolved, settings.seed, overrides,
                                                     process_device(settings.device), frontend)
    except (TypeError, ValueError) as err:
        if isinstance(err, CmlError):
            raise
        raise UsageError(f"{spec}: {one_line(err)}") from err
    trained = not untrained and not isinstance(encoder, Musicnn)
    training_crop = read_checkpoint(checkpoint_path(spec))["train_config"].get("crop_seconds") if trained else None
    model = EmbeddingModel(spec, encoder, mel_config, normalizer, training_crop)
    window_seconds(model, settings), crop_seconds(model, settings)  # a setting this model refuses: before any audio
    return model


def crop_seconds(model: EmbeddingModel, settings: EmbedSettings) -> Optional[float]:
    """The crop of the length-extrapolation outputs: as set, or the checkpoint's training crop (TRAINING_CROP)."""
    if settings.crops != TRAINING_CROP:
        return settings.crops
    if model.training_crop is None:
        raise UsageError(f"--crops needs CROP_SECONDS with {model.spec} (it has no training crop)")
    return float(model.training_crop)


def window_seconds(model: EmbeddingModel, settings: EmbedSettings) -> float:
    """--window-seconds, else 8 training crops of an encoder, or musicnn's training patch (VGG takes nothing else)."""
    if not isinstance(model.encoder, Musicnn):
        return settings.window_seconds or WINDOW_CROPS * float(model.training_crop or DEFAULT_CROP_SECONDS)
    if model.encoder.cfg.arch == "vgg" and (settings.window_seconds or settings.mode == "full"):
        raise UsageError(f"{model.spec}: the VGG taggers take {PATCH_FRAMES}-frame patches only "
                         "(no --window-seconds, no --mode full)")
    return settings.window_seconds or MUSICNN_MEL.seconds(PATCH_FRAMES)


def cache_key(model: EmbeddingModel, normalizer: Normalizer, settings: EmbedSettings, windows: float) -> str:
    """The embedding cache's key of this model, these settings and window (a checkpoint file is keyed by its
    bytes)."""
    encoder = model.encoder
    weights = {"weights": weights_sha256(encoder.cfg.model)} if isinstance(encoder, Musicnn) else {}
    values = {"encoder": dataclasses.asdict(encoder.cfg), **weights, "frontend": dataclasses.asdict(model.mel),
              "norm": normalizer.to_dict(), "mode": settings.mode, "max_seconds": settings.max_seconds,
              "window_seconds": windows if settings.mode == "chunked" else None,
              "seed": settings.seed}
    return model_key(str(checkpoint_path(model.spec)), values)


def library_normalizer(model: EmbeddingModel, tracks: pd.DataFrame, settings: EmbedSettings,
                       cache: Optional[EmbeddingCache]) -> Normalizer:
    """The model's own standardisation, or (untrained) one measured on the library's training split (all of
    it without one), from the whole table so that every rank standardises alike."""
    if model.normalizer is not None:
        return model.normalizer
    pool = tracks[tracks["split"] == "train"] if "split" in tracks.columns else tracks
    normalizer = estimate_normalizer((pool if len(pool) else tracks)["path"], model.mel, seed=settings.seed,
                                     cache=cache)
    log.info("untrained model: inputs standardised with mean %.3f, std %.3f", normalizer.mean, normalizer.std)
    return normalizer


def embed_library(model: EmbeddingModel, tracks: pd.DataFrame, settings: EmbedSettings = EmbedSettings(),
                  shard: Optional["Shard"] = None) -> Embedded:
    """Embed this process's share of `tracks` (id, path[, label, split]): the tracks' table, the skipped
    ones, and (settings.crops) the crops' tables."""
    shard = shard or Shard.from_env()
    windows = window_seconds(model, settings)
    crop = crop_seconds(model, settings)
    split_rows(tracks, settings.crop_split, "--crop-split", None)  # on the whole table: a shard may hold none
    folder = settings.cache or default_folder()
    with EmbeddingCache(folder) if settings.use_cache else contextlib.nullcontext() as cache:
        normalizer = library_normalizer(model, tracks, settings, cache)
        if cache is not None:
            cache.key = cache_key(model, normalizer, settings, windows)
        tracks = shard.rows(tracks)
        crop_rows = None if settings.crop_split is None else (tracks["split"] == settings.crop_split).to_numpy()
        with threads_beside(settings.workers):
            result = embed_tracks(model.encoder, model.mel, normalizer, tracks, settings.mode, windows,
                                  settings.max_seconds, settings.progress and shard.rank == 0, cache,
                                  Crops(crop, rows=crop_rows) if crop else None, settings.workers)
        if cache is not None:
            log.info("embedding cache %s: %d vectors reused, %d files not in it", cache.folder, cache.hits,
                     cache.misses)
    return result
