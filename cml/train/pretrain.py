"""Pretraining (`cml pretrain`): one encoder learnt from the pool's free music, shipped in ``cml/weights/pretrained``.

Why: an encoder trained from scratch on a user's hundred tracks learns little and makes the user wait; one
pretrained on far more real music (`cml.data.pool`: 13 hours, eleven Debian packages, none of the benchmark's) embeds
a new library with no training at all, or starts its fine-tuning (CLMR, MERT and their kind work the same way).

The run is `cml.train.loop` on the pool's track table: the packages of ``cml.data.pool.HELDOUT`` are its val split (the
label-free val NT-Xent picks the best epoch; the packages, as labels, only score recipes), the rest its training
split. The recipe is the ``pretrain`` section of params.yaml over the TrainConfig defaults; the architecture and
front end are the study's ``model`` and ``frontend`` sections, so a study fine-tunes from the shipped encoder
without conversion. A run resumes from its ``last.pt`` after an interruption; ``--ship`` copies the best epoch,
without optimiser state, to ``cml/weights/pretrained/encoder.pt`` with ``card.json`` beside it (the pool's
packages and file hashes, the recipe, the loss per epoch): the model card (README.md there) is written from it.
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import time
from pathlib import Path

import pandas as pd
import torch

from cml.data.pool import POOL, build_pool, pool_dir
from cml.data.soundtracks import sha256_file
from cml.errors import check_output
from cml.model.checkpoint import PRETRAINED_CHECKPOINT, read_checkpoint

log = logging.getLogger(__name__)

SECTION = "pretrain"  # params.yaml: the pretraining recipe (TrainConfig overrides)
CARD = PRETRAINED_CHECKPOINT.with_name("card.json")
RUN_ENV = "CML_PRETRAIN_DIR"
SHIPPED_KEYS = ("format", "model", "epoch", "step", "encoder_config", "mel_config", "norm", "train_config")


def run_dir() -> Path:
    return Path(os.environ.get(RUN_ENV) or Path.home() / ".cache" / "cml" / "pretrain")


def pretrain_tracks(pool: str | Path) -> pd.DataFrame:
    """The pool's track table for training: absolute paths, the held-out packages as the val split."""
    pool = Path(pool).resolve()
    table = pd.read_csv(pool / "pool.csv", dtype={"id": str, "label": str})
    table["path"] = [str(pool / p) for p in table["path"]]
    table["split"] = table["split"].replace({"heldout": "val"})
    return table


def pretrain_config(params_file: str | Path):
    """The pretraining TrainConfig: the `pretrain` section, with the study's `model` and `frontend`."""
    from cml.train.config import config_from_params

    return config_from_params(params_file, section=SECTION)


def pretrain(params_file: str | Path, pool: str | Path, out: str | Path, progress: bool = True,
             fresh: bool = False, max_epochs: int | None = None) -> dict:
    """Build the pool where it is missing, then train (resuming from ``out/last.pt`` unless ``fresh``)."""
    from cml.train.loop import train

    cfg, pool, out = pretrain_config(params_file), Path(pool), Path(out)
    if not (pool / "pool.csv").is_file():
        build_pool(pool)
    out.mkdir(parents=True, exist_ok=True)
    tracks = out / "tracks.csv"
    pretrain_tracks(pool).to_csv(tracks, index=False)
    start = time.monotonic()
    metrics = train(cfg, tracks, out, progress=progress, resume=not fresh, max_epochs=max_epochs)
    log.info("pretraining: %.1f min in this call", (time.monotonic() - start) / 60)
    return metrics


def ship(run: str | Path, dest: str | Path = PRETRAINED_CHECKPOINT) -> Path:
    """The run's best epoch as the shipped encoder (no optimiser state: a few MB), and its card.json."""
    run, dest = Path(run), Path(dest)
    state = read_checkpoint(run / "best.pt")
    last = read_checkpoint(run / "last.pt")
    dest.parent.mkdir(parents=True, exist_ok=True)
    torch.save({key: state[key] for key in SHIPPED_KEYS}, dest)
    tracks = pd.read_csv(run / "tracks.csv", dtype={"id": str})
    card = {
        "checkpoint_sha256": sha256_file(dest),
        "best_epoch": state["epoch"], "steps": state["step"], "epochs_run": last["epoch"],
        "train_config": state["train_config"],
        "history": last["metrics"]["history"],
        "seconds": sum(t.get("seconds", 0.0) for t in last["metrics"].get("timing", [])),
        "pool": {"tracks": len(tracks), "hours": round(float(tracks["duration"].sum()) / 3600, 2),
                 "packages": sorted({f"{spec.package}={spec.version}" for spec in POOL.values()}),
                 "files": {row.id: {"split": row.split, "sha256": row.sha256} for row in tracks.itertuples()}},
    }
    (dest.parent / CARD.name).write_text(json.dumps(card, indent=1, sort_keys=True) + "\n")
    return dest


def _cmd_pretrain(args: argparse.Namespace) -> int:
    check_output(args.out, folder=True)
    if not args.ship_only:
        metrics = pretrain(args.params, args.pool, args.out, not args.quiet, args.fresh, args.max_epochs)
        if metrics:
            print(f"pretrained: val NT-Xent {metrics['best_val_ntxent']:.3f} at epoch {metrics['best_epoch']}, "
                  f"{metrics['train_seconds'] / 60:.1f} min of training -> {args.out}")
    if args.ship or args.ship_only:
        print(f"shipped: {ship(args.out)}")
    return 0


def register_cli(subparsers) -> None:
    """Add `cml pretrain`."""
    p = subparsers.add_parser("pretrain", description=__doc__.split("\n\n")[0])
    p.add_argument("--params", default="params.yaml", help="params file: its pretrain, model and frontend sections")
    p.add_argument("--pool", default=str(pool_dir()), help="the pool (built there when it lacks pool.csv; "
                                                           "default $CML_POOL_DIR or ~/.cache/cml/pool)")
    p.add_argument("--out", default=str(run_dir()), help=f"the run's folder (default ${RUN_ENV} or "
                                                         "~/.cache/cml/pretrain): last.pt, best.pt, live/")
    p.add_argument("--fresh", action="store_true", help="start again, ignoring a last.pt in --out")
    p.add_argument("--max-epochs", type=int, help="stop after this many epochs in this call (a later call resumes)")
    p.add_argument("--ship", action="store_true", help="then copy the best epoch to cml/weights/pretrained/")
    p.add_argument("--ship-only", action="store_true", help="ship the run in --out without training")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.set_defaults(func=_cmd_pretrain)
