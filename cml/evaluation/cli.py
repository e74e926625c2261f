"""`cml evaluate TABLE`: a thin command over cml.evaluation.scores."""
from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path

import numpy as np
import pandas as pd

from cml.data.split import split_tracks
from cml.errors import UsageError, check_input_file, check_output, count, fraction, non_negative_int
from cml.evaluation.scores import TEST_FRACTION, score_space
from cml.tables import add_table_arguments, check_at_most, read_cli_table, read_tracks

log = logging.getLogger(__name__)

TRACK_EXTRA_COLUMNS = ("piece", "programs", "duration")  # what `score_space` reads besides label and split, where known


def _tracks_for(table, args: argparse.Namespace) -> pd.DataFrame:
    """The track table `score_space` reads, one row per table row (index: the ids): the table's labels; the
    split from --split tracks.csv (with its piece, programs and duration columns), else the table's own split
    column, else a seeded stratified one."""
    if args.test_fraction is not None and (args.split or "split" in table.meta.columns):
        raise UsageError(f"--test-fraction sets the fallback split only; the split comes from "
                         f"{args.split or f'the split column of {args.file}'}")
    frame = table.meta[[c for c in TRACK_EXTRA_COLUMNS if c in table.meta.columns]].set_axis(pd.Index(table.ids))
    if table.labels is not None:
        frame["label"] = table.labels
    if args.split:
        tracks = read_tracks(check_input_file(args.split, "split table"), required=("id", "split"))
        tracks = tracks.set_index("id").reindex(table.ids)  # read_tracks refuses repeated ids
        missing = tracks["split"].isna().to_numpy()
        if missing.all():
            raise ValueError(f"no id of {args.file} appears in {args.split}")
        if missing.any():
            log.warning("%d rows have no split in %s and are left out", missing.sum(), args.split)
        for column in ("split", *TRACK_EXTRA_COLUMNS):
            if column in tracks:
                frame[column] = tracks[column].to_numpy(dtype=object)
    elif "split" in table.meta.columns:
        log.info("using the split column of %s", args.file)
        frame["split"] = table.meta["split"].to_numpy(dtype=object)
    else:
        test = TEST_FRACTION if args.test_fraction is None else args.test_fraction
        ids = pd.DataFrame({"id": table.ids, "label": table.labels if table.labels is not None else None})
        log.info("no split given: seeded stratified %.0f/%.0f train/test split", 100 * (1 - test), 100 * test)
        frame["split"] = split_tracks(ids, {"train": 1 - test, "test": test}, seed=args.seed).to_numpy(dtype=object)
    return frame


def _cmd_evaluate(args: argparse.Namespace) -> int:
    check_output(args.out)
    table = read_cli_table(args, l2=True)  # the k-NN, the probe and k-means work on L2-normalised rows
    tracks = _tracks_for(table, args)
    n_train = 0 if table.labels is None else int(np.sum((tracks["split"] == "train") & pd.notna(table.labels)))
    if n_train:  # the k-NN votes among these (none: evaluate_embeddings notes why there is no k-NN score)
        check_at_most(args.k, "--k", n_train, f"labelled train rows in {args.file}")
    metrics = score_space(table.X, tracks, k=args.k, seed=args.seed, standardised=args.standardise)
    Path(args.out).write_text(json.dumps(metrics, indent=2, sort_keys=True) + "\n")
    print(json.dumps(metrics, indent=2, sort_keys=True))
    return 0


def register_cli(subparsers) -> None:
    """Add `cml evaluate FILE --out metrics.json [--split tracks.csv]`."""
    p = subparsers.add_parser("evaluate", description="k-NN accuracy (cosine), linear-probe accuracy and k-means NMI/ARI "
                                          "of a feature table, trained on train and scored on test, and the scores "
                                          "over more tracks of the Compare notebook (`score_space`: the same keys).")
    add_table_arguments(p)
    p.add_argument("--out", required=True, help="metrics JSON to write")
    p.add_argument("--split", help="tracks.csv with id and split columns, and piece, programs and duration where "
                                   "known (default: the table's split column, else a seeded stratified split)")
    p.add_argument("--standardise", action="store_true",
                   help="z-score every column first (features in mixed units, like the handcrafted baseline: "
                        "the Compare notebook scores it so)")
    p.add_argument("--test-fraction", type=fraction,
                   help=f"test share of the fallback split (default {TEST_FRACTION}); not with a given split")
    p.add_argument("--k", type=count, default=5, help="neighbours of the k-NN vote")
    p.add_argument("--seed", type=non_negative_int, default=0)
    p.set_defaults(func=_cmd_evaluate)
