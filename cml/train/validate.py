"""Validation during training: NT-Xent and k-NN accuracy on held-out crops, and which epoch is best.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import pandas as pd
import torch
from torch import Tensor

from cml.model.checkpoint import Normalizer
from cml.model.encoder import Encoder
from cml.search.neighbours import exact_knn_accuracy
from cml.train.config import TrainConfig
from cml.train.data import PairDataset, TrackCrops, collate
from cml.train.distributed import VAL_STREAM, derive_seed
from cml.train.losses import nt_xent


@dataclass
class ValData:
    """Fixed validation inputs: view pairs of val groups, and centre crops of train and val tracks."""

    pairs: list[tuple[Tensor, Tensor, Tensor]]  # batches of (v1, v2, groups)
    train_crops: Tensor  # (n_train, M, T)
    train_labels: np.ndarray
    val_crops: Tensor
    val_labels: np.ndarray


def build_val_data(train: TrackCrops, train_rows: pd.DataFrame, val: TrackCrops, val_rows: pd.DataFrame,
              val_set: PairDataset, cfg: TrainConfig, norm: Normalizer) -> ValData:
    keys = [(group, derive_seed(cfg.seed, VAL_STREAM, group)) for group in range(len(val_set))]
    batches = [keys[s:s + cfg.batch_size] for s in range(0, len(keys), cfg.batch_size)]
    pairs = [collate([val_set[k] for k in b]) for b in batches if len(b) >= 2]

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
        knn = exact_knn_accuracy(embed(data.train_crops), data.train_labels, embed(data.val_crops), data.val_labels,
                           k=cfg.knn_k)
    encoder.train(was_training)
    return {"val/ntxent": float(np.average(losses, weights=sizes)) if losses else float("nan"), "val/knn_acc": knn}


def _score(record: dict) -> float:
    """Model selection: the lowest val NT-Xent, label-free like the training itself; without a val split,
    the last epoch. (Val k-NN accuracy over a few dozen val tracks is too noisy from epoch to epoch to pick
    by; the val loss falls steadily.)"""
    ntxent = record["val/ntxent"]
    return -ntxent if math.isfinite(ntxent) else float(record["epoch"])


def best_epoch(history: list[dict]) -> dict:
    best = history[0]
    for record in history[1:]:
        if _score(record) > _score(best):  # ties keep the earlier epoch
            best = record
    return best


def patience_over(history: list[dict], patience: int) -> bool:
    """Early stopping: `patience` epochs have passed since the best one (never without a val split)."""
    return patience > 0 and bool(history) and history[-1]["epoch"] - best_epoch(history)["epoch"] >= patience
