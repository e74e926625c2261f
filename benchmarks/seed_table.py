"""Per-seed scores of a finished study and their mean ± std (sample std over seeds).

Run in the study's repository after `dvc repro` (or `dvc exp apply`): python benchmarks/seed_table.py OUT_DIR
Writes OUT_DIR/scores-per-seed.csv and OUT_DIR/mean-std.csv, scored as the Compare notebook scores
(`cml.evaluation.scores.score_runs`), with the variants and seeds of params.yaml's `study` section.
"""
import sys
from pathlib import Path

from cml.evaluation.scores import score_runs
from cml.params import load_params
from cml.tables import read_tracks

COLUMNS = ["kind", "model", "seed", "knn_acc", "knn_acc_loo", "knn_acc_loo_all", "linear_acc", "nmi", "ari",
           "nmi_all", "ari_all", "knn_timbre_acc", "pc1_share", "pc1_duration_rho"]


def main(out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    study = load_params("params.yaml", "study")
    tracks = read_tracks("outputs/tracks/tracks.csv").set_index("id")
    runs = score_runs("outputs/embeddings", study["variants"], study["seeds"], "outputs/features/handcrafted.parquet",
                      tracks)
    runs = runs[[c for c in COLUMNS if c in runs]]
    runs.to_csv(out / "scores-per-seed.csv", index=False)
    scores = [c for c in runs.columns if c not in ("kind", "model", "seed")]
    by = runs.groupby(["kind", "model"], sort=False)[scores]
    table = by.mean().round(3).astype(str) + " ± " + by.std(ddof=1).round(3).astype(str)
    table = table.where(by.count() > 1, by.mean().round(3).astype(str))  # one run (untrained, baseline): no std
    table.to_csv(out / "mean-std.csv")
    print(table.to_string())


if __name__ == "__main__":
    main(Path(sys.argv[1]))
