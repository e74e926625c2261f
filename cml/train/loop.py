"""Contrastive training of the encoder: a plain loop in the style of nanoGPT's train.py.

One step: a batch of N tracks (or pieces), two augmented random crops of each, one forward pass over the
2N views, SimCLR's NT-Xent on the projections (plus lambda * the k-means term on the embeddings when
lambda > 0), AdamW, linear warm-up then cosine decay of the learning rate, both counted in steps.

Determinism: every random choice of the data (which track, where to crop, which augmentation) comes from
a generator seeded by (seed, epoch, position in the epoch), so the data does not depend on workers,
processes or on where a run was resumed; the model state, optimizer, scheduler, k-means centroids and
the global RNG (dropout) are in the checkpoint. A run resumed from `last.pt` therefore ends bit for bit
where an uninterrupted run ends (on the same machine and thread count).

Distributed: under `torchrun`, each process takes a contiguous slice of every global batch, projections
are all-gathered so NT-Xent sees the same 2N views as a single process would, and only rank 0 logs and
writes files. Outputs in `out_dir`: `last.pt` (every epoch), `best.pt` (the epoch of lowest val NT-Xent,
see `_score`), `live/` (DVCLive: per-epoch metrics and plots) and `metrics.json` (final summary).
"""
from __future__ import annotations

import argparse
import contextlib
import logging
import math
import os
import shutil
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Optional

import numpy as np
import pandas as pd
import torch
import torch.distributed as dist
from torch import Tensor, nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader, Dataset
from tqdm.auto import tqdm

from cml.audio.mel import DECODE_ERRORS, LogMel, MelConfig, audio_info, centre_offset, load_audio, track_logmel
from cml.train.augment import Augment, AugmentConfig
from cml.model.checkpoint import (
    Normalizer, checkpoint_path, load_encoder, process_device, read_checkpoint, resolve_device, save_checkpoint,
)
from cml.errors import CmlError, UsageError, check_input_file, check_output, one_line
from cml.train.losses import KMEANS_MODES, KMeansLoss, nt_xent
from cml.model.encoder import Encoder, EncoderConfig
from cml.search.neighbours import knn_accuracy
from cml.notebook import write_metrics
from cml.params import build, load_params, parse_section
from cml.tables import read_tracks

log = logging.getLogger(__name__)

PRECISIONS = ("auto", "fp32", "bf16", "fp16")
CACHE_MODES = ("auto", "memory", "disk")
RECIPES = ("auto", "renderings", "recordings")
# keys that may change between an interrupted run and its resumption without changing the results
RESUME_FREE_KEYS = ("num_workers",)
# independent random streams derived from the seed
_TRAIN, _VAL, _NORM, _KMEANS = range(4)


@dataclass
class TrainConfig:
    variant: str = "rope1d"  # positional variant, a key of cml.model.encoder.VARIANTS
    model: dict = field(default_factory=dict)  # EncoderConfig overrides (the `model` section): dim, depth, heads, ...
    frontend: dict = field(default_factory=dict)  # MelConfig overrides (the `frontend` section): the log-mel input
    crop_seconds: float = 4.0  # length of each view (400 frames, 50 tokens at the model defaults)
    batch_size: int = 32  # pairs per step (2x views, 2N - 2 negatives each); global over all processes
    epochs: int = 18  # 36 steps an epoch on the default corpus: 648 steps in all
    crops_per_track: int = 8  # pairs drawn per training track (or piece) per epoch ...
    min_steps: int = 648  # ... but at least this many steps in all (a 100-track library still learns) ...
    max_steps: int = 6000  # ... and at most this many (a 10k-track library: ~20 min on 2 CPU cores)
    lr: float = 3e-4  # peak learning rate (AdamW); 1e-3 stalled the loss on the default corpus
    min_lr_ratio: float = 0.1  # the cosine decays to lr * min_lr_ratio
    weight_decay: float = 0.05
    warmup_epochs: float = 1.0  # linear warm-up from 0, in epochs (converted to steps)
    grad_clip: float = 1.0  # max gradient norm; 0 turns clipping off
    temperature: float = 0.1  # NT-Xent temperature
    kmeans_lambda: float = 0.1  # weight of the k-means term (Deep Clustering Network style); 0 turns it off
    kmeans_k: int = 7  # number of centroids (the default corpus has 7 styles)
    kmeans_mode: str = "minibatch"  # "minibatch" (Sculley 2010 updates) | "learned" (trained by gradient)
    augment: dict = field(default_factory=dict)  # AugmentConfig overrides; {"off": true} turns all off
    recipe: str = "auto"  # where positives come from: "renderings" | "recordings" | "auto" (see `choose_recipe`)
    pair_by_piece: bool = True  # renderings: the two views come from two renderings of a piece
    view_shift_seconds: Optional[float] = 0.5  # renderings: the two views at the same relative position up to
    #   +-0.5 s (the same notes with other instruments); None: independent positions
    cache: str = "auto"  # "memory": whole-track log-mels in RAM; "disk": read each crop; "auto": memory if it fits
    cache_mb: int = 2048  # the memory budget of "auto"
    norm_crops: int = 64  # random training crops measured for the log-mel mean and std
    patience: int = 0  # stop once the val NT-Xent has not improved for this many epochs (0: run every epoch)
    knn_k: int = 5  # k of the per-epoch val k-NN accuracy (cosine)
    num_workers: int = 0  # DataLoader workers; 0 loads in the main process (best on 2 cores with the cache)
    seed: int = 0
    device: str = "auto"  # "auto" (cuda if available), "cpu", "cuda", "cuda:1", ...
    precision: str = "auto"  # "auto": bf16 (or fp16) autocast on CUDA, fp32 on CPU; or fp32 | bf16 | fp16

    @classmethod
    def from_dict(cls, d: dict) -> "TrainConfig":
        return build(cls, d, "'train'")

    def __post_init__(self) -> None:
        if self.precision not in PRECISIONS:
            raise ValueError(f"precision must be one of {PRECISIONS}, got {self.precision!r}")
        if self.cache not in CACHE_MODES:
            raise ValueError(f"cache must be one of {CACHE_MODES}, got {self.cache!r}")
        if self.kmeans_mode not in KMEANS_MODES:
            raise ValueError(f"kmeans_mode must be one of {KMEANS_MODES}, got {self.kmeans_mode!r}")
        if self.recipe not in RECIPES:
            raise ValueError(f"recipe must be one of {RECIPES}, got {self.recipe!r}")
        if self.batch_size < 2 or self.epochs < 1 or self.crops_per_track < 1 or self.crop_seconds <= 0:
            raise ValueError("need batch_size >= 2, epochs >= 1, crops_per_track >= 1 and crop_seconds > 0")
        if self.patience < 0:
            raise ValueError(f"patience must be >= 0 epochs (0: no early stop), got {self.patience}")
        if not 1 <= self.min_steps <= self.max_steps:
            raise ValueError(f"need 1 <= min_steps <= max_steps, got {self.min_steps} and {self.max_steps}")
        self.encoder_config()  # fails early on a bad variant, model or frontend key
        self.augment_config()

    def mel_config(self) -> MelConfig:
        return build(MelConfig, self.frontend, "'frontend'")

    def encoder_config(self) -> EncoderConfig:
        if "variant" in self.model:
            raise ValueError("the variant is not a model key: the study's variants (or train.variant) choose it")
        values = {"n_mels": self.mel_config().n_mels, **self.model, "variant": self.variant}
        return build(EncoderConfig, values, "'model'")

    def augment_config(self) -> AugmentConfig:
        d = dict(self.augment)
        if d.pop("off", False):
            return AugmentConfig.off()
        return AugmentConfig.from_dict(d)


# --------------------------------------------------------------------------------------------------
# Seeds, devices, processes


def derive_seed(*keys: int) -> int:
    """A 63-bit seed for one random stream, the same on every platform (numpy's SeedSequence hashing)."""
    return int(np.random.SeedSequence([int(k) for k in keys]).generate_state(1, np.uint64)[0] >> 1)


def _generator(*keys: int) -> torch.Generator:
    return torch.Generator().manual_seed(derive_seed(*keys))


@dataclass
class Dist:
    """Where this process stands in a (possibly one-process) run."""

    rank: int = 0
    world: int = 1
    local_rank: int = 0
    owns_group: bool = False  # this call created the process group and must destroy it

    @property
    def main(self) -> bool:
        return self.rank == 0


def _init_distributed(device_type: str) -> Dist:
    """Join the torchrun process group (gloo on CPU, nccl on CUDA) when WORLD_SIZE > 1."""
    if dist.is_available() and dist.is_initialized():
        return Dist(dist.get_rank(), dist.get_world_size(), int(os.environ.get("LOCAL_RANK", 0)))
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return Dist()
    dist.init_process_group(backend="nccl" if device_type == "cuda" else "gloo")
    return Dist(dist.get_rank(), dist.get_world_size(), int(os.environ.get("LOCAL_RANK", 0)), owns_group=True)


def _autocast(device: torch.device, precision: str) -> tuple[contextlib.AbstractContextManager, Optional[torch.dtype]]:
    """Autocast context and its dtype: mixed precision only on CUDA (CPU autocast is slower than fp32)."""
    if precision == "auto":
        if device.type != "cuda":
            return contextlib.nullcontext(), None
        precision = "bf16" if torch.cuda.is_bf16_supported() else "fp16"
    if precision == "fp32":
        return contextlib.nullcontext(), None
    if device.type != "cuda":
        raise ValueError(f"precision {precision!r} needs a CUDA device; use 'auto' or 'fp32' on {device}")
    dtype = torch.bfloat16 if precision == "bf16" else torch.float16
    return torch.autocast("cuda", dtype=dtype), dtype


def _gather(x: Tensor, d: Dist) -> Tensor:
    """Concatenate x over processes in rank order; gradients flow only into this process's slice."""
    if d.world == 1:
        return x
    parts = [torch.empty_like(x) for _ in range(d.world)]
    dist.all_gather(parts, x.detach().contiguous())
    parts[d.rank] = x
    return torch.cat(parts)


def _all_mean(value: float, d: Dist, device: torch.device) -> float:
    if d.world == 1:
        return value
    t = torch.tensor([value], dtype=torch.float64, device=device)
    dist.all_reduce(t)
    return float(t) / d.world


# --------------------------------------------------------------------------------------------------
# Data


class TrackCrops:
    """Log-mel crops of a list of tracks: from whole-track log-mels kept in memory, or read from disk.

    In memory a crop is a slice (microseconds); from disk it is a seek, a decode and a log-mel (a few
    ms). Both give (n_mels, frames) crops of the same length, zero-padded (log floor) past a track's end.
    Every crop is `_take(i, start, frames)`; `random`, `at` and `centre` only choose the start frame.
    """

    def __init__(self, paths: list[str], durations: list[float], mel: MelConfig, in_memory: bool, progress: bool):
        self.paths, self.durations, self.mel = paths, durations, mel
        self.floor = math.log(mel.log_offset)
        self.logmels: Optional[list[Tensor]] = None
        self.failed: dict[str, str] = {}  # path -> reason, for files that failed to decode from disk
        if in_memory:
            self.logmels = [track_logmel(p, mel) for p in tqdm(paths, desc="cache log-mels", unit="track",
                                                                 disable=not progress)]

    def __len__(self) -> int:
        return len(self.paths)

    def _length(self, i: int) -> int:
        """Frames of track i: exact in memory, from the table's duration on disk."""
        return self.logmels[i].shape[1] if self.logmels is not None else self.mel.frames(self.durations[i])

    def _take(self, i: int, start: int, frames: int) -> Tensor:
        """The crop of `frames` frames from frame `start` (padded with the log floor past the end)."""
        if self.logmels is not None:
            x = self.logmels[i][:, start:start + frames]
        else:
            x = self._read(i, self.mel.seconds(start), self.mel.seconds(frames))
        return torch.nn.functional.pad(x[:, :frames], (0, frames - min(frames, x.shape[1])), value=self.floor)

    def _read(self, i: int, offset: float, seconds: float) -> Tensor:
        """A crop decoded from disk; a file that fails now is logged and read as silence (the run goes on)."""
        try:
            wave = load_audio(self.paths[i], self.mel.sample_rate, offset=offset, duration=seconds)
            if not torch.isfinite(wave).all():
                raise ValueError("non-finite samples (NaN or inf)")
            wave = torch.nn.functional.pad(wave, (0, round(seconds * self.mel.sample_rate) - len(wave)))
        except (*DECODE_ERRORS, ValueError) as err:
            if self.paths[i] not in self.failed:
                log.warning("cannot use %s (%s): its crops are silence from now on", self.paths[i], one_line(err))
            self.failed[self.paths[i]] = f"failed during training: {one_line(err)}"
            wave = torch.zeros(0)
        return LogMel(self.mel)(wave)

    def random(self, i: int, seconds: float, g: torch.Generator) -> Tensor:
        frames = self.mel.frames(seconds)
        return self._take(i, int(torch.randint(max(1, self._length(i) - frames + 1), (), generator=g)), frames)

    def at(self, i: int, seconds: float, fraction: float, shift: float = 0.0) -> Tensor:
        """The crop starting at `fraction` of the track's room for crops, moved by `shift` seconds (clipped)."""
        room = max(0.0, self.durations[i] - seconds)
        frames = self.mel.frames(seconds)
        start = self.mel.frames(min(max(fraction * room + shift, 0.0), room))
        return self._take(i, min(start, max(0, self._length(i) - frames)), frames)

    def centre(self, i: int, seconds: float) -> Tensor:
        frames = self.mel.frames(seconds)
        return self._take(i, int(centre_offset(self._length(i), frames)), frames)


def readable_crops(rows: pd.DataFrame, mel: MelConfig, in_memory: bool, progress: bool,
                   ) -> tuple[TrackCrops, pd.DataFrame, list[dict]]:
    """TrackCrops of the rows whose audio can be read (whole log-mels cached when `in_memory`), those rows,
    and the other rows with the reason: one unreadable or non-finite file never stops training."""
    logmels, keep, skipped = [], [], []
    for i, row in enumerate(tqdm(rows.itertuples(index=False), total=len(rows), desc="read tracks",
                                 unit="track", disable=not progress)):
        try:
            x = track_logmel(row.path, mel) if in_memory else audio_info(row.path)
        except DECODE_ERRORS as err:
            skipped.append({"id": row.id, "path": row.path, "reason": f"cannot decode: {one_line(err)}"})
            continue
        if in_memory and not torch.isfinite(x).all():
            skipped.append({"id": row.id, "path": row.path, "reason": "non-finite log-mel (NaN/inf or huge samples)"})
            continue
        keep.append(i)
        logmels.append(x)
    for r in skipped:
        log.warning("skipped %s: %s", r["path"], r["reason"])
    kept = rows.iloc[keep].reset_index(drop=True)
    crops = TrackCrops(list(kept["path"]), list(kept["duration"]), mel, in_memory=False, progress=False)
    crops.logmels = logmels if in_memory else None
    return crops, kept, skipped


class PairDataset(Dataset):
    """Two augmented views of one group (a track, or a piece's renderings), keyed by (group, item seed).

    Stateless: the key holds all the randomness, so workers, processes and resumptions agree. With
    several rows in a group (renderings of one piece with different instruments), the two views come
    from two different rows: a positive pair that differs in timbre, the data-side cure for the timbre
    trap (see cml.train.augment).
    """

    def __init__(self, crops: TrackCrops, groups: list[list[int]], seconds: float, augment: Augment, norm: Normalizer,
                 shift: Optional[float] = None):
        self.crops, self.groups, self.seconds, self.augment, self.norm = crops, groups, seconds, augment, norm
        self.shift = shift

    def __len__(self) -> int:
        return len(self.groups)

    def __getitem__(self, key: tuple[int, int]) -> tuple[Tensor, Tensor, int]:
        group, seed = key
        g = torch.Generator().manual_seed(seed)
        rows = self.groups[group]
        pick = torch.randperm(len(rows), generator=g)
        a, b = rows[int(pick[0])], rows[int(pick[-1])]
        fraction = shift = None
        if self.shift is not None:  # one position for both views, the second moved by up to +-shift seconds
            fraction, shift = float(torch.rand((), generator=g)), self.shift * (2 * float(torch.rand((), generator=g)) - 1)
        views = []
        for row, moved in ((a, 0.0), (b, shift)):
            x = self.crops.random(row, self.seconds, g) if fraction is None else self.crops.at(row, self.seconds, fraction, moved)
            views.append(self.norm(self.augment(x, g)))
        return views[0], views[1], group


def epoch_batches(seed: int, epoch: int, n_groups: int, batch_size: int, steps: int) -> list[list[tuple[int, int]]]:
    """The global batches of one epoch: keys (group, item seed) from back-to-back shuffles of all groups."""
    g = _generator(seed, _TRAIN, epoch)
    order = torch.cat([torch.randperm(n_groups, generator=g) for _ in range(math.ceil(steps * batch_size / n_groups))])
    keys = [(int(group), derive_seed(seed, _TRAIN, epoch, pos)) for pos, group in enumerate(order[: steps * batch_size])]
    return [keys[s * batch_size:(s + 1) * batch_size] for s in range(steps)]


def _worker_init(worker_id: int) -> None:
    """Workers need no seed of their own (keys carry it); one thread each keeps 2 cores for the model."""
    torch.set_num_threads(1)


def _collate(items: list[tuple[Tensor, Tensor, int]]) -> tuple[Tensor, Tensor, Tensor]:
    v1, v2, groups = zip(*items)
    return torch.stack(v1), torch.stack(v2), torch.tensor(groups)


def _loader(dataset: PairDataset, batches: list[list[tuple[int, int]]], d: Dist, workers: int,
            pin: bool = False) -> DataLoader:
    """A loader over this process's contiguous slice of each global batch."""
    per = len(batches[0]) // d.world
    local = [b[d.rank * per:(d.rank + 1) * per] for b in batches]
    return DataLoader(dataset, batch_sampler=local, num_workers=workers, collate_fn=_collate,
                      worker_init_fn=_worker_init, pin_memory=pin)


def choose_recipe(rows: pd.DataFrame, recipe: str = "auto") -> str:
    """Where the two views of a positive pair come from.

    "renderings" (the default corpus: a `piece` column and two or more renderings of a piece): two
    renderings of one piece at nearly the same position, so the pair shares notes, not timbre.
    "recordings" (user audio: one recording per track): two crops from anywhere in the same track,
    drawn independently as in CLMR (Spijkervet & Burgoyne 2021). Two crops at the same position of one
    recording would be nearly the same audio, a pretext task the augmentations alone cannot make hard.
    "auto" picks "renderings" when some piece has several renderings among `rows`, else "recordings".
    """
    if recipe != "auto":
        return recipe
    if "piece" in rows.columns and rows["piece"].dropna().astype(str).duplicated().any():
        return "renderings"
    return "recordings"


def _groups(rows: pd.DataFrame, by_piece: bool) -> list[list[int]]:
    """Row positions grouped by piece (when asked and a `piece` column exists), else one row per group."""
    if by_piece and "piece" in rows.columns:
        key = rows["piece"].where(rows["piece"].notna(), rows["id"]).astype(str)
        return [list(idx) for idx in pd.Series(range(len(rows))).groupby(key.values, sort=True).groups.values()]
    return [[i] for i in range(len(rows))]


def pair_dataset(crops: TrackCrops, rows: pd.DataFrame, recipe: str, cfg: TrainConfig, augment: Augment,
                 norm: Normalizer) -> PairDataset:
    """The positive pairs of a recipe (see `choose_recipe`)."""
    if recipe == "renderings":
        return PairDataset(crops, _groups(rows, cfg.pair_by_piece), cfg.crop_seconds, augment, norm,
                           cfg.view_shift_seconds)
    return PairDataset(crops, _groups(rows, False), cfg.crop_seconds, augment, norm, shift=None)


def steps_per_epoch(n_groups: int, cfg: TrainConfig) -> int:
    """crops_per_track pairs per group and epoch, kept within min_steps..max_steps over all epochs: the
    budget grows with the library but a small one still gets enough steps and a large one ends in time."""
    by_data = n_groups * cfg.crops_per_track // cfg.batch_size
    return max(1, min(max(by_data, math.ceil(cfg.min_steps / cfg.epochs)), cfg.max_steps // cfg.epochs))


def training_tracks(tracks_csv: str | os.PathLike) -> tuple[pd.DataFrame, list[dict]]:
    """The track table checked for what training needs, and the rows whose file is gone (reported)."""
    tracks = read_tracks(tracks_csv, required=("id", "path", "duration", "split"))
    exists = tracks["path"].map(lambda p: Path(p).is_file())
    gone = [{"id": r.id, "path": r.path, "reason": "file not found"} for r in tracks[~exists].itertuples()]
    for r in gone:
        log.warning("skipped %s: file not found", r["path"])
    tracks = tracks[exists].reset_index(drop=True)
    if not (tracks["split"] == "train").any():
        raise CmlError(f"{tracks_csv}: no usable tracks in the train split")
    return tracks, gone


def measure_norm(crops: TrackCrops, n: int, seconds: float, seed: int) -> Normalizer:
    """Mean and std of log-mel values over n random (unaugmented) training crops."""
    g = _generator(seed, _NORM)
    idx = torch.randint(len(crops), (n,), generator=g)
    return Normalizer.measure(crops.random(int(i), seconds, g) for i in idx)


# --------------------------------------------------------------------------------------------------
# Model, schedule, evaluation


class Contrastive(nn.Module):
    """The encoder plus the optional k-means term, so DDP sees every trained parameter in one forward."""

    def __init__(self, encoder: Encoder, kmeans: Optional[KMeansLoss]):
        super().__init__()
        self.encoder, self.kmeans = encoder, kmeans

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """(B, M, T) -> embeddings (B, E), projections (B, P), k-means term (scalar, 0 when off)."""
        e, z = self.encoder(x)
        km = self.kmeans(e) if self.kmeans is not None else e.new_zeros((), dtype=torch.float32)
        return e, z, km


def param_groups(model: Contrastive, weight_decay: float) -> list[dict]:
    """nanoGPT's split: weight decay on the encoder's matrices only, not on biases, norms or centroids."""
    decay = [p for p in model.encoder.parameters() if p.dim() >= 2]
    ids = {id(p) for p in decay}
    rest = [p for p in model.parameters() if id(p) not in ids]
    return [{"params": decay, "weight_decay": weight_decay}, {"params": rest, "weight_decay": 0.0}]


def lr_lambda(warmup_steps: int, total_steps: int, min_ratio: float):
    """Multiplier of the peak lr at a step: linear warm-up from 0, then cosine decay to min_ratio."""

    def f(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / warmup_steps
        progress = min(1.0, (step - warmup_steps) / max(1, total_steps - warmup_steps))
        return min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * progress))

    return f


@dataclass
class ValData:
    """Fixed validation inputs: view pairs of val groups, and centre crops of train and val tracks."""

    pairs: list[tuple[Tensor, Tensor, Tensor]]  # batches of (v1, v2, groups)
    train_crops: Tensor  # (n_train, M, T)
    train_labels: np.ndarray
    val_crops: Tensor
    val_labels: np.ndarray


def _val_data(train: TrackCrops, train_rows: pd.DataFrame, val: TrackCrops, val_rows: pd.DataFrame,
              val_set: PairDataset, cfg: TrainConfig, norm: Normalizer) -> ValData:
    keys = [(group, derive_seed(cfg.seed, _VAL, group)) for group in range(len(val_set))]
    batches = [keys[s:s + cfg.batch_size] for s in range(0, len(keys), cfg.batch_size)]
    pairs = [_collate([val_set[k] for k in b]) for b in batches if len(b) >= 2]

    def centre(crops: TrackCrops, rows: pd.DataFrame) -> tuple[Tensor, np.ndarray]:
        labelled = rows["label"].notna().to_numpy() if "label" in rows.columns else np.zeros(len(rows), bool)
        idx = np.flatnonzero(labelled)
        x = torch.stack([norm(crops.centre(int(i), cfg.crop_seconds)) for i in idx]) if len(idx) else torch.empty(0)
        return x, rows["label"].to_numpy()[idx] if len(idx) else np.array([])

    train_crops, train_labels = centre(train, train_rows)
    val_crops, val_labels = centre(val, val_rows)
    return ValData(pairs, train_crops, train_labels, val_crops, val_labels)


@torch.no_grad()
def validate(encoder: Encoder, data: ValData, cfg: TrainConfig, device: torch.device, autocast) -> dict[str, float]:
    """Val NT-Xent on fixed augmented pairs, and k-NN accuracy of val centre crops against train ones."""
    was_training = encoder.training
    encoder.eval()

    def embed(x: Tensor) -> np.ndarray:
        out = []
        for chunk in x.split(2 * cfg.batch_size):
            with autocast:
                out.append(encoder.embed(chunk.to(device)).float().cpu())
        return torch.cat(out).numpy()

    losses, sizes = [], []
    for v1, v2, groups in data.pairs:
        with autocast:
            _, z = encoder(torch.cat([v1, v2]).to(device))
        z1, z2 = z.float().chunk(2)
        losses.append(float(nt_xent(z1, z2, cfg.temperature, groups.to(device))))
        sizes.append(len(v1))
    knn = float("nan")
    if len(data.train_crops) and len(data.val_crops):
        knn = knn_accuracy(embed(data.train_crops), data.train_labels, embed(data.val_crops), data.val_labels,
                           k=cfg.knn_k)
    encoder.train(was_training)
    return {"val/ntxent": float(np.average(losses, weights=sizes)) if losses else float("nan"), "val/knn_acc": knn}


# --------------------------------------------------------------------------------------------------
# Checkpoints and logs


def _rng_state(device: torch.device) -> dict:
    state = {"torch": torch.get_rng_state()}
    if device.type == "cuda":
        state["cuda"] = torch.cuda.get_rng_state(device)
    return state


def _set_rng_state(state: dict, device: torch.device) -> None:
    torch.set_rng_state(state["torch"])
    if device.type == "cuda" and "cuda" in state:
        torch.cuda.set_rng_state(state["cuda"], device)


def _replay_live(live, history: list[dict]) -> None:
    """Re-log the epochs of a resumed run, so the DVCLive curves equal those of an uninterrupted run."""
    for record in history:
        _log_live(live, record)


def _log_live(live, record: dict) -> None:
    for name, value in record.items():
        if name not in ("epoch", "step"):
            live.log_metric(name, value)
    live.next_step()


def _summary(history: list[dict], timing: list[dict]) -> dict:
    """The final metrics: the last epoch, the best epoch (see `_score`), and throughput."""
    last = history[-1]
    best = _best_epoch(history)
    seconds = sum(t["seconds"] for t in timing)
    clips = sum(t["clips"] for t in timing)
    return {
        "epochs": last["epoch"], "steps": last["step"],
        "train_loss": last["train/loss"], "train_ntxent": last["train/ntxent"], "train_kmeans": last["train/kmeans"],
        "val_ntxent": last["val/ntxent"], "val_knn_acc": last["val/knn_acc"],
        "best_epoch": best["epoch"], "best_val_ntxent": best["val/ntxent"], "best_val_knn_acc": best["val/knn_acc"],
        "train_seconds": seconds, "clips_per_s": clips / seconds if seconds else float("nan"),
    }


def _init_from(path: str | os.PathLike, enc_cfg: EncoderConfig, mel: MelConfig) -> tuple[dict, Normalizer]:
    """The encoder weights and input standardisation of a checkpoint (or `pretrained`, the shipped one) to
    fine-tune from."""
    encoder, their_mel, norm = load_encoder(checkpoint_path(path))
    if asdict(encoder.cfg) != asdict(enc_cfg) or their_mel != mel:
        ours, theirs = {**asdict(enc_cfg), **asdict(mel)}, {**asdict(encoder.cfg), **asdict(their_mel)}
        diff = sorted(k for k in ours if ours[k] != theirs.get(k))
        raise UsageError(f"--init {path}: another architecture or front end than this run's (differs in {diff})")
    log.info("fine-tuning from %s", path)
    return encoder.state_dict(), norm


def _score(record: dict) -> float:
    """Model selection: the lowest val NT-Xent, label-free like the training itself; without a val split,
    the last epoch. (Val k-NN accuracy over a few dozen val tracks is too noisy from epoch to epoch to pick
    by; the val loss falls steadily. README, "What changed the numbers".)"""
    ntxent = record["val/ntxent"]
    return -ntxent if math.isfinite(ntxent) else float(record["epoch"])


def _best_epoch(history: list[dict]) -> dict:
    best = history[0]
    for record in history[1:]:
        if _score(record) > _score(best):  # ties keep the earlier epoch
            best = record
    return best


def _patience_over(history: list[dict], patience: int) -> bool:
    """Early stopping: `patience` epochs have passed since the best one (never without a val split)."""
    return patience > 0 and bool(history) and history[-1]["epoch"] - _best_epoch(history)["epoch"] >= patience


# --------------------------------------------------------------------------------------------------
# The loop


def train(config: TrainConfig | dict, tracks_csv: str | os.PathLike, out_dir: str | os.PathLike,
          progress: bool = True, resume: bool = True, max_epochs: Optional[int] = None,
          init: Optional[str | os.PathLike] = None) -> dict:
    """Train one encoder; return the final metrics (see `_summary`) plus the per-epoch `history`.

    resume: continue from `out_dir/last.pt` when it exists (it must come from the same config);
    False starts afresh and overwrites. max_epochs: stop after this many epochs in this call (a
    time-boxed job; the schedule still follows `config.epochs`, and a later call resumes).
    init: a checkpoint to fine-tune from (its encoder weights and input standardisation; the optimiser,
    schedule and k-means centroids start afresh); its architecture and front end must be this config's.
    """
    cfg = config if isinstance(config, TrainConfig) else TrainConfig.from_dict(config)
    out = Path(out_dir)
    device_type = "cuda" if cfg.device.startswith("cuda") or (cfg.device == "auto" and torch.cuda.is_available()) else "cpu"
    d = _init_distributed(device_type)
    device = process_device(cfg.device, d.local_rank)
    if device.type == "cuda":
        torch.cuda.set_device(device)
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    deterministic = torch.are_deterministic_algorithms_enabled()
    torch.use_deterministic_algorithms(True, warn_only=device.type == "cuda")
    try:
        return _train(cfg, tracks_csv, out, progress and d.main, resume, max_epochs, d, device, init)
    finally:
        torch.use_deterministic_algorithms(deterministic)
        if d.owns_group:
            dist.destroy_process_group()


def _train(cfg: TrainConfig, tracks_csv, out: Path, progress: bool, resume: bool, max_epochs: Optional[int],
           d: Dist, device: torch.device, init: Optional[str | os.PathLike] = None) -> dict:
    """The loop, nanoGPT-style: data and model once, then per step the schedule and one optimiser step, per
    epoch validation, a checkpoint and the logs."""
    if cfg.batch_size % d.world:
        raise ValueError(f"batch_size {cfg.batch_size} is not divisible by the {d.world} processes")
    state = _resume_state(out / "last.pt", cfg) if resume else None
    data = build_data(cfg, tracks_csv, progress, state, init)
    run = build_run(cfg, data, device, d)
    start_epoch, step, history, timing = _restore(run, state, data.init_weights, device)
    live = _open_live(out, history) if d.main else None

    end_epoch = cfg.epochs if max_epochs is None else min(cfg.epochs, start_epoch + max_epochs)
    for epoch in range(start_epoch, end_epoch):
        if _patience_over(history, cfg.patience):
            log.info("early stop after epoch %d: no better val NT-Xent in %d epochs", epoch, cfg.patience)
            break
        run.net.train()
        t0 = time.perf_counter()
        sums = {"loss": 0.0, "ntxent": 0.0, "kmeans": 0.0}
        batches = epoch_batches(cfg.seed, epoch, len(data.train_set), cfg.batch_size, data.epoch_steps)
        bar = tqdm(_loader(data.train_set, batches, d, cfg.num_workers, device.type == "cuda"), total=data.epoch_steps,
                   desc=f"epoch {epoch + 1}/{cfg.epochs}", unit="step", disable=not progress)
        for v1, v2, groups in bar:
            ntx, km = train_step(run, cfg, v1, v2, groups, d, device, step, epoch)
            step += 1
            sums["ntxent"] += ntx
            sums["kmeans"] += km
            sums["loss"] += ntx + cfg.kmeans_lambda * km
            bar.set_postfix(loss=f"{ntx:.3f}", lr=f"{run.scheduler.get_last_lr()[0]:.2e}")
        timing.append({"epoch": epoch + 1, "seconds": time.perf_counter() - t0,
                       "clips": 2 * cfg.batch_size * data.epoch_steps})
        history.append(_epoch_record(run, data, cfg, epoch, step, sums, d, device))
        _log_epoch(history[-1], timing[-1])
        if d.main:
            _log_live(live, history[-1])
            _save_checkpoints(out, run, data, cfg, epoch, step, history, timing, device)
        if d.world > 1:
            dist.barrier()
    return _finish(out, cfg, data, history, timing, live, d, init)


@dataclass
class TrainData:
    """What the loop reads: the datasets, the fixed validation inputs, the standardisation and the budget."""

    train_crops: TrackCrops
    val_crops: TrackCrops
    train_set: PairDataset
    val_data: ValData
    norm: Normalizer
    recipe: str
    epoch_steps: int
    skipped: list[dict]  # rows not trained on, with the reason
    init_weights: Optional[dict] = None  # encoder weights to fine-tune from (--init)


@dataclass
class Run:
    """What the loop updates: the model (and its DDP wrapper), the optimiser, schedule and AMP state."""

    encoder: Encoder
    kmeans: Optional[KMeansLoss]
    model: Contrastive
    net: nn.Module  # `model`, or its DistributedDataParallel wrapper
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LambdaLR
    scaler: torch.amp.GradScaler
    autocast: contextlib.AbstractContextManager


def _resume_state(last: Path, cfg: TrainConfig) -> Optional[dict]:
    """The state of an interrupted run in `last` (None when there is none); it must come from this config."""
    if not last.is_file():
        return None
    state = read_checkpoint(last, map_location="cpu")
    theirs = {k: v for k, v in state["train_config"].items() if k not in RESUME_FREE_KEYS}
    ours = {k: v for k, v in asdict(cfg).items() if k not in RESUME_FREE_KEYS}
    if theirs != ours:
        diff = sorted(k for k in ours.keys() | theirs.keys() if ours.get(k) != theirs.get(k))
        raise ValueError(f"{last} was written with a different config (keys {diff}); use another out_dir or resume=False")
    log.info("resuming from %s after epoch %d", last, state["epoch"])
    return state


def build_data(cfg: TrainConfig, tracks_csv, progress: bool, state: Optional[dict] = None,
               init: Optional[str | os.PathLike] = None) -> TrainData:
    """Read the train and val tracks (skipping what cannot be read), standardise, and pair views by the recipe."""
    tracks, skipped = training_tracks(tracks_csv)
    mel, enc_cfg = cfg.mel_config(), cfg.encoder_config()
    if enc_cfg.n_mels != mel.n_mels:
        raise ValueError(f"model n_mels {enc_cfg.n_mels} differs from the front end's {mel.n_mels}")
    tracks = tracks[tracks["split"].isin(["train", "val"])]
    need_mb = mel.frames(tracks["duration"].sum()) * mel.n_mels * 4 / 2**20
    in_memory = cfg.cache == "memory" or (cfg.cache == "auto" and need_mb <= cfg.cache_mb)
    log.info("log-mels %s (%.0f MB for %d tracks)", "cached in memory" if in_memory else "read from disk",
             need_mb, len(tracks))
    train_crops, train_rows, unread = readable_crops(tracks[tracks["split"] == "train"], mel, in_memory, progress)
    val_crops, val_rows, val_unread = readable_crops(tracks[tracks["split"] == "val"], mel, in_memory, progress)
    if not len(train_rows):
        raise CmlError(f"{tracks_csv}: none of the train tracks can be read (reasons in the log)")
    init_weights = None
    if state:
        norm = Normalizer(**state["norm"])
    elif init:
        init_weights, norm = _init_from(init, enc_cfg, mel)
    else:
        norm = measure_norm(train_crops, cfg.norm_crops, cfg.crop_seconds, cfg.seed)
    augment = Augment(cfg.augment_config(), mel.log_offset)
    recipe = choose_recipe(train_rows, cfg.recipe)
    train_set = pair_dataset(train_crops, train_rows, recipe, cfg, augment, norm)
    val_set = pair_dataset(val_crops, val_rows, recipe, cfg, augment, norm)
    val_data = _val_data(train_crops, train_rows, val_crops, val_rows, val_set, cfg, norm)
    epoch_steps = steps_per_epoch(len(train_set), cfg)
    log.info("recipe %s: %d training groups (%d tracks), %d steps per epoch, %d in all", recipe, len(train_set),
             len(train_rows), epoch_steps, epoch_steps * cfg.epochs)
    return TrainData(train_crops, val_crops, train_set, val_data, norm, recipe, epoch_steps,
                     skipped + unread + val_unread, init_weights)


def build_run(cfg: TrainConfig, data: TrainData, device: torch.device, d: Dist) -> Run:
    """A fresh encoder (seeded like `untrained_encoder`), k-means term, AdamW, warm-up + cosine schedule, AMP."""
    enc_cfg = cfg.encoder_config()
    torch.manual_seed(cfg.seed)  # model init and dropout
    encoder = Encoder(enc_cfg)
    kmeans = None
    if cfg.kmeans_lambda > 0:
        kmeans = KMeansLoss(cfg.kmeans_k, enc_cfg.embed_dim, cfg.kmeans_mode, _generator(cfg.seed, _KMEANS))
    model = Contrastive(encoder, kmeans).to(device)
    optimizer = torch.optim.AdamW(param_groups(model, cfg.weight_decay), lr=cfg.lr)
    total_steps = data.epoch_steps * cfg.epochs
    warmup = round(cfg.warmup_epochs * data.epoch_steps)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_lambda(warmup, total_steps, cfg.min_lr_ratio))
    autocast, amp_dtype = _autocast(device, cfg.precision)
    scaler = torch.amp.GradScaler("cuda", enabled=amp_dtype == torch.float16)
    net = DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None) \
        if d.world > 1 else model
    return Run(encoder, kmeans, model, net, optimizer, scheduler, scaler, autocast)


def _restore(run: Run, state: Optional[dict], init_weights: Optional[dict], device: torch.device,
             ) -> tuple[int, int, list[dict], list[dict]]:
    """Continue an interrupted run (weights, optimiser, schedule, RNG, logs) or start from `init_weights`;
    returns (first epoch, step, history, timing)."""
    if not state:
        if init_weights is not None:
            run.encoder.load_state_dict(init_weights)
        return 0, 0, [], []
    run.encoder.load_state_dict(state["model"])
    if run.kmeans is not None:
        run.kmeans.load_state_dict(state["kmeans"])
    run.optimizer.load_state_dict(state["optimizer"])
    run.scheduler.load_state_dict(state["scheduler"])
    run.scaler.load_state_dict(state["scaler"])
    _set_rng_state(state["rng_state"], device)
    return state["epoch"], state["step"], list(state["metrics"]["history"]), list(state["metrics"]["timing"])


def train_step(run: Run, cfg: TrainConfig, v1: Tensor, v2: Tensor, groups: Tensor, d: Dist, device: torch.device,
               step: int, epoch: int) -> tuple[float, float]:
    """One optimiser step on a batch of view pairs; returns (NT-Xent, k-means term)."""
    x = torch.cat([v1, v2]).to(device, non_blocking=True)  # (2n, M, T): both views in one pass
    with run.autocast:
        e, z, km = run.net(x)
    z1, z2 = z.float().chunk(2)
    ntx = nt_xent(_gather(z1, d), _gather(z2, d), cfg.temperature, _gather(groups.to(device), d))
    # each process holds the gradient through its own slice; DDP averages, so scale by world
    loss = ntx * d.world + cfg.kmeans_lambda * km
    if not torch.isfinite(loss):
        raise FloatingPointError(f"non-finite loss at step {step} (epoch {epoch + 1}): "
                                 f"NT-Xent {float(ntx.detach())}, k-means {float(km.detach())}")
    run.optimizer.zero_grad(set_to_none=True)
    run.scaler.scale(loss).backward()
    if cfg.grad_clip > 0:
        run.scaler.unscale_(run.optimizer)
        nn.utils.clip_grad_norm_(run.model.parameters(), cfg.grad_clip)
    run.scaler.step(run.optimizer)
    run.scaler.update()
    run.scheduler.step()
    if run.kmeans is not None:
        run.kmeans.update(_gather(e.detach().float().chunk(2)[0], d))  # one view per pair
    return float(ntx.detach()), float(km.detach())


def _epoch_record(run: Run, data: TrainData, cfg: TrainConfig, epoch: int, step: int, sums: dict[str, float],
                  d: Dist, device: torch.device) -> dict:
    """The end of an epoch: its mean training losses (over processes) and the validation metrics."""
    record = {"epoch": epoch + 1, "step": step, "lr": run.scheduler.get_last_lr()[0]}
    for name, total in sums.items():
        record[f"train/{name}"] = _all_mean(total / data.epoch_steps, d, device)
    record.update(validate(run.model.encoder, data.val_data, cfg, device, run.autocast))
    return record


def _log_epoch(record: dict, timing: dict) -> None:
    log.info("epoch %d: loss %.4f, val NT-Xent %.4f, val k-NN %.3f, %.1f clips/s", record["epoch"],
             record["train/loss"], record["val/ntxent"], record["val/knn_acc"], timing["clips"] / timing["seconds"])


def _save_checkpoints(out: Path, run: Run, data: TrainData, cfg: TrainConfig, epoch: int, step: int,
                      history: list[dict], timing: list[dict], device: torch.device) -> None:
    """`last.pt` after every epoch (all a resumption needs); `best.pt` a copy of it when this epoch is the best."""
    last = out / "last.pt"
    save_checkpoint(
        last, model=run.encoder, optimizer=run.optimizer, scheduler=run.scheduler, epoch=epoch + 1, step=step,
        encoder_config=cfg.encoder_config(), mel_config=cfg.mel_config(), norm=data.norm, train_config=cfg,
        metrics={"history": history, "timing": timing}, rng_state=_rng_state(device),
        extra={"kmeans": run.kmeans.state_dict() if run.kmeans is not None else None,
               "scaler": run.scaler.state_dict()},
    )
    if _best_epoch(history) is history[-1]:
        shutil.copyfile(last, out / ".best.pt.tmp")
        os.replace(out / ".best.pt.tmp", out / "best.pt")


def _open_live(out: Path, history: list[dict]):
    """DVCLive in `out/live`, with the epochs of a resumed run logged again."""
    out.mkdir(parents=True, exist_ok=True)
    from dvclive import Live

    live = Live(str(out / "live"), dvcyaml=False, save_dvc_exp=False)
    _replay_live(live, history)
    return live


def _finish(out: Path, cfg: TrainConfig, data: TrainData, history: list[dict], timing: list[dict], live,
            d: Dist, init: Optional[str | os.PathLike] = None) -> dict:
    """The skip report, the DVCLive summary and metrics.json (rank 0); the summary plus the history."""
    start = "scratch" if init is None else str(init)
    summary = {**_summary(history, timing), "recipe": data.recipe, "init": start} if history else {}
    if d.main:
        failed = {**data.train_crops.failed, **data.val_crops.failed}
        skipped = data.skipped + [{"id": None, "path": p, "reason": r} for p, r in failed.items()]
        pd.DataFrame(skipped, columns=["id", "path", "reason"]).to_csv(out / "skipped.csv", index=False)
    if d.main and history:
        live.summary = dict(summary)  # dvclive adds its step to the dict it is given
        live.end()
        write_metrics(out / "metrics.json", summary)
    return {**summary, "history": history}


# --------------------------------------------------------------------------------------------------
# CLI


def config_from_params(params_file: str | os.PathLike, variant: Optional[str] = None,
                       seed: Optional[int] = None, section: str = "train") -> TrainConfig:
    """The TrainConfig of a study: the `train` section (or `pretrain`, the shipped encoder's recipe), the
    architecture of `model`, the front end of `frontend`, and the variant and seed of one run (the study's matrix)."""
    recipe = load_params(params_file, section)
    misplaced = sorted({"model", "frontend"} & set(recipe))
    if misplaced:
        raise UsageError(f"{params_file}: {misplaced} in the '{section}' section: they are sections of their own")
    values = {**recipe, "model": load_params(params_file, "model"), "frontend": load_params(params_file, "frontend")}
    values.update({k: v for k, v in (("variant", variant), ("seed", seed)) if v is not None})
    return parse_section(params_file, section, TrainConfig.from_dict, values)


def _cmd_train(args: argparse.Namespace) -> int:
    config = config_from_params(args.params, args.variant, args.seed)
    resolve_device(config.device)
    check_input_file(args.tracks, "tracks table")
    check_output(args.out, folder=True)
    if args.init:
        check_input_file(checkpoint_path(args.init), "--init checkpoint")
    metrics = train(config, args.tracks, args.out, progress=not args.quiet, resume=not args.fresh, init=args.init)
    if metrics:
        print(f"{config.variant}: val NT-Xent {metrics['val_ntxent']:.3f}, k-NN {metrics['val_knn_acc']:.3f} (best epoch "
              f"{metrics['best_epoch']}: {metrics['best_val_ntxent']:.3f}, {metrics['best_val_knn_acc']:.3f}), "
              f"{metrics['clips_per_s']:.1f} clips/s -> {args.out}")
    return 0


def register_cli(subparsers) -> None:
    """Add `cml train --params params.yaml --variant NAME --tracks tracks.csv --out DIR`."""
    p = subparsers.add_parser("train")
    p.add_argument("--params", default="params.yaml", help="params file: its train, model and frontend sections")
    p.add_argument("--variant", help="positional variant; overrides train.variant")
    p.add_argument("--seed", type=int, help="overrides train.seed")
    p.add_argument("--tracks", default="outputs/tracks/tracks.csv", help="track table with a split column")
    p.add_argument("--out", required=True, help="output folder: last.pt, best.pt, live/, metrics.json")
    p.add_argument("--fresh", action="store_true", help="ignore a last.pt in --out and start again")
    p.add_argument("--init", metavar="CHECKPOINT", help="fine-tune from this checkpoint's encoder (same variant and model); "
                                                            "pretrained: the encoder shipped with cml")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.set_defaults(func=_cmd_train)
