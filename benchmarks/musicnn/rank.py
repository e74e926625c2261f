"""The ranking behind musicnn's default: every model x layer x (raw, z-scored), by the mean of LOO 5-NN and NMI
over the two sets it may be tuned on (`choose.py`'s outputs).

    python benchmarks/musicnn/rank.py benchmarks/musicnn/choice-default-corpus.csv benchmarks/musicnn/choice-soundtracks-train.csv
"""
import sys

import pandas as pd

KEY = ["model", "layer", "standardised"]


def main(default_csv: str, soundtracks_csv: str) -> None:
    sets = {"default corpus": default_csv, "soundtracks train": soundtracks_csv}
    table = pd.concat({name: pd.read_csv(path).set_index(KEY)[["knn_acc_loo_all", "nmi_all"]]
                       .rename(columns={"knn_acc_loo_all": "LOO 5-NN", "nmi_all": "NMI"})
                       for name, path in sets.items()}, axis=1)
    table[("mean", "")] = table.mean(axis=1)
    print(table.sort_values("mean", ascending=False).round(3).to_markdown())


if __name__ == "__main__":
    main(*sys.argv[1:3])
