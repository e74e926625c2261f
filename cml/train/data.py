"""The training data: the log-mels of the training tracks (in memory or read per crop), pairs of augmented
crops of one recording or piece, the per-epoch batches, and the input standardisation.
"""
from __future__ import annotations

import logging
import math
import os
from pathlib import Path
from typing import Optional

import pandas as pd
import torch
from torch import Tensor
from torch.utils.data import DataLoader, Dataset

from cml.audio.mel import DECODE_ERRORS, LogMel, MelConfig, audio_info, centre_offset, load_audio, track_logmel
from cml.errors import CmlError, one_line
from cml.model.checkpoint import Normalizer
from cml.progress import tqdm
from cml.tables import read_tracks
from cml.train.augment import Augment
from cml.train.config import TrainConfig
from cml.train.distributed import NORM_STREAM, TRAIN_STREAM, Dist, derive_seed, generator

log = logging.getLogger(__name__)
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
    g = generator(seed, TRAIN_STREAM, epoch)
    order = torch.cat([torch.randperm(n_groups, generator=g) for _ in range(math.ceil(steps * batch_size / n_groups))])
    keys = [(int(group), derive_seed(seed, TRAIN_STREAM, epoch, pos)) for pos, group in enumerate(order[: steps * batch_size])]
    return [keys[s * batch_size:(s + 1) * batch_size] for s in range(steps)]


def _worker_init(worker_id: int) -> None:
    """Workers need no seed of their own (keys carry it); one thread each keeps 2 cores for the model."""
    torch.set_num_threads(1)


def collate(items: list[tuple[Tensor, Tensor, int]]) -> tuple[Tensor, Tensor, Tensor]:
    v1, v2, groups = zip(*items)
    return torch.stack(v1), torch.stack(v2), torch.tensor(groups)


def loader(dataset: PairDataset, batches: list[list[tuple[int, int]]], d: Dist, workers: int,
            pin: bool = False) -> DataLoader:
    """A loader over this process's contiguous slice of each global batch."""
    per = len(batches[0]) // d.world
    local = [b[d.rank * per:(d.rank + 1) * per] for b in batches]
    return DataLoader(dataset, batch_sampler=local, num_workers=workers, collate_fn=collate,
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
    g = generator(seed, NORM_STREAM)
    idx = torch.randint(len(crops), (n,), generator=g)
    return Normalizer.measure(crops.random(int(i), seconds, g) for i in idx)
