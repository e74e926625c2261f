import numpy as np
import pandas as pd
import pytest

from cml.data.split import split_counts, split_tracks


def make_tracks(sizes: dict, unlabelled: int = 0) -> pd.DataFrame:
    rows = [{"id": f"{label}/t{i:03d}", "label": label} for label, n in sizes.items() for i in range(n)]
    rows += [{"id": f"loose{i:03d}", "label": None} for i in range(unlabelled)]
    return pd.DataFrame(rows)


def test_every_track_gets_exactly_one_split_aligned_with_index():
    tracks = make_tracks({"rock": 20, "jazz": 10}).set_index(pd.Index(range(100, 130)))
    split = split_tracks(tracks)
    assert split.index.equals(tracks.index)
    assert set(split) == {"train", "val", "test"}
    assert split.notna().all()


def test_stratified_proportions_per_label():
    tracks = make_tracks({"rock": 100, "jazz": 40, "folk": 20})
    split = split_tracks(tracks, seed=3)
    counts = pd.crosstab(tracks["label"], split)
    assert counts.loc["rock"].to_dict() == {"train": 70, "val": 15, "test": 15}
    assert counts.loc["jazz"].to_dict() == {"train": 28, "val": 6, "test": 6}
    assert counts.loc["folk"].to_dict() == {"train": 14, "val": 3, "test": 3}


def test_small_classes_still_get_a_test_track():
    assert split_counts(3, {"train": 0.7, "val": 0.15, "test": 0.15}) == {"train": 1, "val": 1, "test": 1}
    assert split_counts(4, {"train": 0.7, "val": 0.15, "test": 0.15}) == {"train": 2, "val": 1, "test": 1}
    assert split_counts(2, {"train": 0.7, "val": 0.15, "test": 0.15}) == {"train": 2, "val": 0, "test": 0}
    tracks = make_tracks({"big": 50, "tiny": 3})
    split = split_tracks(tracks)
    assert sorted(split[tracks["label"] == "tiny"]) == ["test", "train", "val"]


def test_unlabelled_tracks_are_their_own_stratum():
    tracks = make_tracks({"rock": 20}, unlabelled=20)
    split = split_tracks(tracks)
    loose = split[tracks["label"].isna()]
    assert loose.value_counts().to_dict() == {"train": 14, "val": 3, "test": 3}


def test_deterministic_and_seed_dependent():
    tracks = make_tracks({"rock": 50, "jazz": 50})
    assert split_tracks(tracks, seed=1).equals(split_tracks(tracks, seed=1))
    assert not split_tracks(tracks, seed=1).equals(split_tracks(tracks, seed=2))


def test_independent_of_row_order():
    tracks = make_tracks({"rock": 30, "jazz": 17}, unlabelled=5)
    shuffled = tracks.sample(frac=1.0, random_state=7)
    a = dict(zip(tracks["id"], split_tracks(tracks, seed=5)))
    b = dict(zip(shuffled["id"], split_tracks(shuffled, seed=5)))
    assert a == b


def test_group_members_always_land_together():
    # Each piece rendered with 3 instruments: the renderings must never be split apart.
    rows = [{"id": f"p{p:02d}_{inst}", "label": f"c{p % 3}", "piece": f"p{p:02d}"}
            for p in range(30) for inst in ("piano", "violin", "flute")]
    tracks = pd.DataFrame(rows)
    for seed in range(5):
        split = split_tracks(tracks, seed=seed, group_col="piece")
        per_piece = split.groupby(tracks["piece"]).nunique()
        assert (per_piece == 1).all()
        assert set(split) == {"train", "val", "test"}
    # Without group_col the renderings of some piece do get separated: the option is what prevents it.
    split = split_tracks(tracks, seed=0)
    assert (split.groupby(tracks["piece"]).nunique() > 1).any()


def test_group_counts_are_in_groups_and_missing_group_is_its_own_unit():
    rows = [{"id": f"p{p:02d}_{k}", "label": "x", "piece": f"p{p:02d}"} for p in range(20) for k in range(2)]
    rows += [{"id": f"solo{i}", "label": "x", "piece": np.nan} for i in range(20)]
    tracks = pd.DataFrame(rows)
    split = split_tracks(tracks, group_col="piece")
    # 20 groups + 20 single tracks = 40 units -> 28 / 6 / 6 units.
    units = tracks["piece"].fillna(tracks["id"])
    assert split.groupby(units).first().value_counts().to_dict() == {"train": 28, "val": 6, "test": 6}


def test_custom_split_names_and_zero_fraction():
    tracks = make_tracks({"rock": 10})
    split = split_tracks(tracks, fractions={"train": 0.8, "holdout": 0.2, "unused": 0.0})
    assert split.value_counts().to_dict() == {"train": 8, "holdout": 2}


@pytest.mark.parametrize("fractions, message", [
    ({"train": 0.7, "val": 0.2, "test": 0.2}, "sum to 1"),
    ({"train": 1.2, "test": -0.2}, "non-negative"),
    ({"train": float("nan"), "test": 1.0}, "non-negative"),
    ({}, "empty"),
])
def test_bad_fractions_raise(fractions, message):
    with pytest.raises(ValueError, match=message):
        split_tracks(make_tracks({"rock": 10}), fractions=fractions)


def test_duplicate_ids_raise():
    tracks = pd.DataFrame({"id": ["a", "a", "b"], "label": ["x", "x", "x"]})
    with pytest.raises(ValueError, match="unique"):
        split_tracks(tracks)
