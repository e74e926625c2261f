"""`cml train`: a thin command over cml.train.loop.train.
"""
from __future__ import annotations

import argparse

from cml.errors import check_input_file, check_output
from cml.model.checkpoint import checkpoint_path
from cml.model.devices import resolve_device
from cml.train.config import config_from_params
from cml.train.loop import train


def _cmd_train(args: argparse.Namespace) -> int:
    config = config_from_params(args.params, args.variant, args.seed, init=args.init)
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
