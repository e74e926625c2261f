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

One module, over 400 lines: the loop and the helpers of one step, read top to bottom like nanoGPT's train.py;
the data, validation, config and process plumbing live beside it in cml.train.
"""
from __future__ import annotations

import contextlib
import logging
import math
import os
import shutil
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Optional

import pandas as pd
import torch
import torch.distributed as dist
from torch import Tensor, nn
from torch.nn.parallel import DistributedDataParallel

from cml.audio.mel import MelConfig
from cml.data.scan import SKIP_COLUMNS
from cml.errors import CmlError, UsageError
from cml.model.checkpoint import Normalizer, checkpoint_path, load_encoder, read_checkpoint, save_checkpoint
from cml.model.devices import process_device
from cml.model.encoder import Encoder, EncoderConfig
from cml.notebook import write_metrics
from cml.progress import tqdm
from cml.train.augment import Augment
from cml.train.config import RESUME_FREE_KEYS, TrainConfig
from cml.train.data import (
    PairDataset,
    TrackCrops,
    choose_recipe,
    epoch_batches,
    loader,
    measure_norm,
    pair_dataset,
    readable_crops,
    steps_per_epoch,
    training_tracks,
)
from cml.train.distributed import KMEANS_STREAM, Dist, all_mean, autocast_context, gather, generator, init_distributed
from cml.train.losses import KMeansLoss, nt_xent
from cml.train.validate import ValData, best_epoch, build_val_data, patience_over, validate

log = logging.getLogger(__name__)
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
    best = best_epoch(history)
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
    d = init_distributed(device_type)
    device = process_device(cfg.device)
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
        if patience_over(history, cfg.patience):
            log.info("early stop after epoch %d: no better val NT-Xent in %d epochs", epoch, cfg.patience)
            break
        run.net.train()
        t0 = time.perf_counter()
        sums = {"loss": 0.0, "ntxent": 0.0, "kmeans": 0.0}
        batches = epoch_batches(cfg.seed, epoch, len(data.train_set), cfg.batch_size, data.epoch_steps)
        bar = tqdm(loader(data.train_set, batches, d, cfg.num_workers, device.type == "cuda"), total=data.epoch_steps,
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
    val_data = build_val_data(train_crops, train_rows, val_crops, val_rows, val_set, cfg, norm)
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
        kmeans = KMeansLoss(cfg.kmeans_k, enc_cfg.embed_dim, cfg.kmeans_mode, generator(cfg.seed, KMEANS_STREAM))
    model = Contrastive(encoder, kmeans).to(device)
    optimizer = torch.optim.AdamW(param_groups(model, cfg.weight_decay), lr=cfg.lr)
    total_steps = data.epoch_steps * cfg.epochs
    warmup = round(cfg.warmup_epochs * data.epoch_steps)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_lambda(warmup, total_steps, cfg.min_lr_ratio))
    autocast, amp_dtype = autocast_context(device, cfg.precision)
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
    ntx = nt_xent(gather(z1, d), gather(z2, d), cfg.temperature, gather(groups.to(device), d))
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
        run.kmeans.update(gather(e.detach().float().chunk(2)[0], d))  # one view per pair
    return float(ntx.detach()), float(km.detach())


def _epoch_record(run: Run, data: TrainData, cfg: TrainConfig, epoch: int, step: int, sums: dict[str, float],
                  d: Dist, device: torch.device) -> dict:
    """The end of an epoch: its mean training losses (over processes) and the validation metrics."""
    record = {"epoch": epoch + 1, "step": step, "lr": run.scheduler.get_last_lr()[0]}
    for name, total in sums.items():
        record[f"train/{name}"] = all_mean(total / data.epoch_steps, d, device)
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
    if best_epoch(history) is history[-1]:
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
        pd.DataFrame(skipped, columns=SKIP_COLUMNS).to_csv(out / "skipped.csv", index=False)
    if d.main and history:
        live.summary = dict(summary)  # dvclive adds its step to the dict it is given
        live.end()
        write_metrics(out / "metrics.json", summary)
    return {**summary, "history": history}
