"""Score a feature table as the README's real-recordings tables do: the soundtracks benchmark (all tracks:
LOO 5-NN, k-means NMI/ARI, length diagnostics), the 36-track transfer library, and the ClusterTesting grid.

    python benchmarks/musicnn/score.py TABLE --tracks TRACKS_CSV --name musicnn --out-dir benchmarks/musicnn/soundtracks

Scores come from the project's own code (`cml.evaluation.score_space`, `cml.clustering.run_grid`), on the
same rows and with the same settings as the other spaces of `benchmarks/soundtracks/`.
"""
from __future__ import annotations

import argparse
from pathlib import Path

import pandas as pd

from cml.clustering import ClusterTestingConfig, load_tables, run_grid
from cml.evaluation import score_space, track_rows
from cml.tables import read_feature_table, read_tracks

TRANSFER = Path(__file__).resolve().parents[1] / "soundtracks" / "transfer-library.csv"
KEYS = ("knn_acc_loo_all", "nmi_all", "ari_all", "pc1_share", "pc1_duration_rho")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("table")
    p.add_argument("--tracks", required=True)
    p.add_argument("--name", required=True)
    p.add_argument("--standardised", action="store_true", help="z-score the columns first")
    p.add_argument("--out-dir", required=True)
    args = p.parse_args()
    out = Path(args.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    tracks = read_tracks(args.tracks).set_index("id").drop(columns="split")
    table = read_feature_table(args.table)
    scores = score_space(table.X, track_rows(tracks, table.ids, args.table), standardised=args.standardised)
    library = read_tracks(TRANSFER)["id"].tolist()
    rows = pd.Series(range(len(table.ids)), index=table.ids).loc[library].to_numpy()
    transfer = score_space(table.X[rows], track_rows(tracks, library, TRANSFER), standardised=args.standardised)
    summary = pd.DataFrame([{"space": args.name, "set": "soundtracks (all)", **{k: scores[k] for k in KEYS}},
                            {"space": args.name, "set": "transfer library", **{k: transfer[k] for k in KEYS[:3]}}])
    summary.to_csv(out / "scores.csv", index=False)
    print(summary.to_string(index=False))
    config = ClusterTestingConfig()
    labels = tracks["label"].to_dict()
    tables = load_tables({args.name: args.table}, ids=list(table.ids), labels=labels,
                         zscored=[args.name] if args.standardised else [])
    grid = run_grid(tables, config.methods, seed=config.seed, elki_on=[args.name])
    grid.to_csv(out / "cluster_testing-grid.csv", index=False)
    print(grid[["method", "nmi", "ari", "n_clusters"]].to_string(index=False))


if __name__ == "__main__":
    main()
