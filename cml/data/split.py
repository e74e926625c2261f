"""Track-level train/val/test split, stratified by label, optionally keeping groups together.

Splitting whole tracks (never crops) is what keeps the evaluation honest: crops of one track are
near-duplicates, so if they fell on both sides a model could score by recognising the recording.
`group_col` extends the same guarantee to several renderings of one piece.
"""

from __future__ import annotations

import logging
import math
import zlib

import numpy as np
import pandas as pd

log = logging.getLogger(__name__)

DEFAULT_FRACTIONS = {"train": 0.7, "val": 0.15, "test": 0.15}
UNLABELLED = "<unlabelled>"  # stratum name for tracks without a label


def _check_fractions(fractions: dict[str, float]) -> None:
    if not fractions:
        raise ValueError("fractions is empty: give at least one split, e.g. {'train': 0.8, 'test': 0.2}")
    bad = {k: v for k, v in fractions.items() if not (math.isfinite(v) and v >= 0)}
    if bad:
        raise ValueError(f"fractions must be finite and non-negative, got {bad}")
    total = sum(fractions.values())
    if not math.isclose(total, 1.0, abs_tol=1e-6):
        raise ValueError(f"fractions must sum to 1, got {total:g} from {fractions}")


def split_counts(n: int, fractions: dict[str, float]) -> dict[str, int]:
    """How many of `n` units each split gets.

    Largest-remainder rounding of n * fraction (ties go to the split listed first); then, when there
    are at least as many units as splits with a positive fraction, every such split gets at least
    one unit, taken from the currently largest split. At 70/15/15 a class of 3 tracks gives 1/1/1,
    4 give 2/1/1, and 1 or 2 tracks all go to train.
    """
    _check_fractions(fractions)
    names = list(fractions)
    exact = [n * fractions[k] for k in names]
    counts = [math.floor(x) for x in exact]
    by_remainder = sorted(range(len(names)), key=lambda i: (-(exact[i] - counts[i]), i))
    for i in by_remainder[: n - sum(counts)]:
        counts[i] += 1
    positive = [i for i in range(len(names)) if fractions[names[i]] > 0]
    if n >= len(positive):
        for i in positive:
            if counts[i] == 0:
                counts[max(range(len(names)), key=lambda j: (counts[j], -j))] -= 1
                counts[i] = 1
    return dict(zip(names, counts))


def _stratum_rng(seed: int, stratum: str) -> np.random.Generator:
    """One generator per stratum, so adding a label does not reshuffle the others."""
    return np.random.default_rng([seed, zlib.crc32(stratum.encode())])


def split_tracks(
    tracks: pd.DataFrame,
    fractions: dict[str, float] = DEFAULT_FRACTIONS,
    seed: int = 0,
    label_col: str | None = "label",
    group_col: str | None = None,
    id_col: str = "id",
) -> pd.Series:
    """Assign every track to a split; returns a Series of split names aligned with `tracks.index`.

    Units are tracks, or with `group_col` groups of tracks (all members land on the same side; a
    track with no group value is a group of its own). Units are stratified by `label_col` (a group
    takes its most common label; unlabelled tracks form their own stratum) and each stratum is
    divided by `split_counts`, so proportions hold per label, counted in units. The result depends
    only on the seed and the ids, not on the row order.
    """
    _check_fractions(fractions)
    if tracks[id_col].duplicated().any():
        dups = tracks.loc[tracks[id_col].duplicated(), id_col].unique()[:5].tolist()
        raise ValueError(f"track ids must be unique, duplicated: {dups}")
    df = tracks.sort_values(id_col)
    ids = df[id_col].astype(str)
    labels = df[label_col].astype(object) if label_col else pd.Series(None, index=df.index, dtype=object)
    labels = labels.where(labels.notna(), UNLABELLED).astype(str)
    if group_col:
        groups = df[group_col].astype(object)
        units = ("group:" + groups.astype(str)).where(groups.notna(), "track:" + ids)
    else:
        units = "track:" + ids
    if group_col:
        # A group's stratum is its most common label; ties go to the label that sorts first.
        unit_label = labels.groupby(units).agg(lambda s: s.value_counts().sort_index().idxmax())
        if (labels.groupby(units).nunique() > 1).any():
            log.info("some groups mix labels; each group is stratified by its most common label")
    else:
        unit_label = pd.Series(labels.to_numpy(), index=units.to_numpy())

    assignment: dict[str, str] = {}
    for stratum, members in unit_label.groupby(unit_label, sort=True):
        order = _stratum_rng(seed, str(stratum)).permutation(sorted(members.index))
        counts = split_counts(len(order), fractions)
        names = np.repeat(list(counts), list(counts.values()))
        assignment.update(zip(order, names))
    return units.map(assignment).reindex(tracks.index).rename("split")
