"""The playlist on the 2-D map of the library (matplotlib): tracks, candidates, the seeds' hull, the path.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np
import pandas as pd
from scipy.spatial import ConvexHull

from cml.playlist.hull import Playlist, rank_basis


def draw_map(ax, coords: np.ndarray, playlist: Playlist, labels: Sequence | None = None, title: str = "") -> None:
    """The 2-D map: all tracks, the candidates, the seeds' hull (its shadow in the first two PCs), the path."""
    seeds2 = coords[playlist.seeds]
    groups = pd.Series(labels if labels is not None else ["track"] * len(coords), dtype=object).fillna("?")
    for name in sorted(groups.unique()):
        mask = (groups == name).to_numpy()
        ax.scatter(*coords[mask].T, s=10, alpha=0.35, label=str(name))
    if playlist.mode != "journey":
        ax.scatter(*coords[playlist.candidates].T, s=28, facecolors="none", edgecolors="0.3", linewidths=0.6,
                   label="candidates")
    if len(seeds2) >= 3 and rank_basis(seeds2)[1].shape[1] == 2:
        ring = ConvexHull(seeds2).vertices
        ax.fill(*seeds2[ring].T, color="tab:orange", alpha=0.15, label="seeds' hull")
    elif len(seeds2) >= 2:
        ax.plot(*seeds2.T, color="tab:orange", alpha=0.5)
    path = coords[playlist.order]
    for a, b in zip(path[:-1], path[1:]):
        ax.annotate("", xy=b, xytext=a, arrowprops=dict(arrowstyle="->", color="black", lw=0.9))
    for position, (x, y) in enumerate(path, start=1):
        ax.annotate(str(position), (x, y), fontsize=7, xytext=(3, 3), textcoords="offset points")
    ax.scatter(*seeds2.T, marker="*", s=180, color="tab:red", edgecolors="black", zorder=5, label="seeds")
    ax.set_xlabel("PC1"); ax.set_ylabel("PC2"); ax.set_title(title)
    ax.legend(bbox_to_anchor=(1.02, 1), loc="upper left", fontsize="small")
