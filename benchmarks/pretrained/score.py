"""Score feature tables of a labelled library as the README's tables do: leave-one-out 5-NN accuracy over every
track (cosine) and k-means NMI/ARI against the labels at k = the number of labels, over several k-means seeds.

    python benchmarks/pretrained/score.py TABLE [TABLE ...] --tracks TRACKS_CSV [--zscore] [--seeds 0 1 2]
        [--only IDS_CSV] [--out scores.csv]

The labels are for scoring only: no encoder scored here ever trained on one. ``--zscore`` standardises the
columns first (the handcrafted and musicnn baselines, as the pipeline scores them); ``--only`` keeps the ids of
another track table (the 36-track transfer library). One row per table and k-means seed.
"""
from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import pandas as pd

from cml.evaluation.scores import kmeans_agreement
from cml.search.neighbours import exact_leave_group_out_knn_accuracy
from cml.tables import read_feature_table, read_tracks, standardise


def score(table_path: str, tracks: pd.DataFrame, zscore: bool, seeds: list[int], only: list[str] | None) -> list[dict]:
    table = read_feature_table(table_path)
    ids = list(table.ids) if only is None else only
    rows = pd.Series(range(len(table.ids)), index=table.ids).loc[ids].to_numpy()
    X = np.asarray(table.X[rows], dtype=np.float64)
    X = standardise(X)[0] if zscore else X
    y = tracks.loc[ids, "label"].astype(str).to_numpy()
    loo = exact_leave_group_out_knn_accuracy(X, y, np.ones(len(y), bool), np.asarray(ids, dtype=object), k=5)
    return [{"table": table_path, "seed": s, "tracks": len(y), "labels": len(set(y)), "loo_5nn": loo,
             **kmeans_agreement(X, y, seed=s)} for s in seeds]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("tables", nargs="+")
    p.add_argument("--tracks", required=True)
    p.add_argument("--zscore", action="store_true")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--only", help="score only the ids of this track table")
    p.add_argument("--out", help="CSV to append the rows to")
    args = p.parse_args()
    tracks = read_tracks(args.tracks).set_index("id")
    only = read_tracks(args.only)["id"].tolist() if args.only else None
    rows = [r for t in args.tables for r in score(t, tracks, args.zscore, args.seeds, only)]
    frame = pd.DataFrame(rows)
    if args.out:
        frame.to_csv(args.out, mode="a", header=not Path(args.out).exists(), index=False)
    print(frame.groupby("table")[["loo_5nn", "nmi", "ari"]].agg(["mean", "std"]).round(3).to_string())


if __name__ == "__main__":
    main()
