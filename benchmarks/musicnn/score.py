"""Score the pretrained baseline's feature table as the README's tables score every space: `score_space` over
the track table (z-scored, as the pipeline scores the baselines), optionally the 36-track transfer library,
and the ClusterTesting grid of the space alone.

    python benchmarks/musicnn/score.py TABLE --tracks TRACKS_CSV --out-dir DIR [--transfer LIBRARY_CSV]

Writes DIR/scores.json (every score of `cml.evaluation.scores.score_space`), DIR/transfer.json (the library's rows
only) and DIR/cluster_testing-grid.csv (`cml.cluster.grid.run_grid` with ClusterTesting's defaults).
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import pandas as pd

from cml.cluster.grid import ClusterTestingConfig, load_tables, run_grid
from cml.evaluation.scores import score_space, track_rows
from cml.tables import read_feature_table, read_tracks

NAME = "musicnn"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("table")
    p.add_argument("--tracks", required=True)
    p.add_argument("--transfer", help="track table of a library of some of the tracks, scored on its own")
    p.add_argument("--out-dir", required=True)
    args = p.parse_args()
    out = Path(args.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    tracks = read_tracks(args.tracks).set_index("id")
    table = read_feature_table(args.table)
    results = {"scores": score_space(table.X, track_rows(tracks, table.ids, args.table), standardised=True)}
    if args.transfer:
        library = read_tracks(args.transfer)["id"].tolist()
        rows = pd.Series(range(len(table.ids)), index=table.ids).loc[library].to_numpy()
        results["transfer"] = score_space(table.X[rows], track_rows(tracks, library, args.transfer).drop(columns="split"),
                                          standardised=True)
    for name, scores in results.items():
        (out / f"{name}.json").write_text(json.dumps(scores, indent=1, sort_keys=True, default=float) + "\n")
        print(name, {k: round(v, 3) for k, v in scores.items() if isinstance(v, float)})
    config = ClusterTestingConfig()
    tables = load_tables({NAME: args.table}, ids=list(table.ids), labels=tracks["label"].to_dict())
    grid = run_grid(tables, config.methods, seed=config.seed, elki_on=[NAME])
    grid.to_csv(out / "cluster_testing-grid.csv", index=False)
    print(grid[["method", "nmi", "ari", "n_clusters"]].to_string(index=False))


if __name__ == "__main__":
    main()
