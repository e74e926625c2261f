"""Which musicnn model and layer is the default: every model x layer scored on tracks one may tune on.

    python benchmarks/musicnn/choose.py TRACKS_CSV [--split train] [--one-draw] [--max-seconds 30] --out scores.csv

Each model embeds every track once, all its layers at a time, as the mean over non-overlapping 3 s patches
(the original package's patches; the last one aligned to the end) of its first `--max-seconds` — a
fraction of the work of the half-overlapping patches over whole tracks that `cml embed musicnn` averages,
enough to rank models and layers. Each layer is then scored by `cml.evaluation.scores.score_space` (what
`cml evaluate` and the Compare notebook report), raw and z-scored.
"""
from __future__ import annotations

import argparse

import numpy as np
import pandas as pd
import torch
from tqdm.auto import tqdm

from cml.audio.mel import track_logmel
from cml.evaluation.scores import score_space
from cml.model.encoder import chunk_windows
from cml.model.musicnn import LAYERS, MODELS, MUSICNN_MEL, PATCH_FRAMES, load_musicnn
from cml.tables import read_tracks


@torch.inference_mode()
def track_layers(model: str, paths: list[str], max_seconds: float) -> dict[str, np.ndarray]:
    """Layer -> (tracks, size) mean over each track's patches."""
    net = load_musicnn(model)
    out = {name: [] for name in LAYERS[net.cfg.arch]}
    for path in tqdm(paths, desc=model):
        x = track_logmel(path, MUSICNN_MEL, max_frames=MUSICNN_MEL.frames(max_seconds))
        layers = net.layers(chunk_windows(x[None], PATCH_FRAMES, PATCH_FRAMES)[0])
        for name in out:
            out[name].append(layers[name].mean(dim=0).numpy())
    return {name: np.stack(v) for name, v in out.items()}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("tracks")
    p.add_argument("--split", help="score only this split's tracks (e.g. train)")
    p.add_argument("--one-draw", action="store_true", help="one rendering per piece (draw 0): half the work")
    p.add_argument("--max-seconds", type=float, default=30.0, help="seconds of each track embedded")
    p.add_argument("--out", required=True)
    args = p.parse_args()
    tracks = read_tracks(args.tracks)
    if args.split:
        tracks = tracks[tracks["split"] == args.split]
    if args.one_draw:
        tracks = tracks[tracks["draw"].astype(int) == 0]
    tracks = tracks.reset_index(drop=True)
    scored, rows = tracks.drop(columns="split"), []
    for model in MODELS:
        for layer, X in track_layers(model, tracks["path"].tolist(), args.max_seconds).items():
            for standardised in (False, True):
                scores = score_space(X, scored, standardised=standardised)
                rows.append({"model": model, "layer": layer, "standardised": standardised,
                             **{k: scores[k] for k in ("knn_acc_loo_all", "nmi_all", "ari_all")}})
                print(rows[-1], flush=True)
        pd.DataFrame(rows).to_csv(args.out, index=False)


if __name__ == "__main__":
    main()
