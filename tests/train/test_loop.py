import json
from pathlib import Path

import pandas as pd
import pytest
import torch

from cml.audio.mel import MelConfig
from cml.errors import UsageError
from cml.model.checkpoint import Normalizer, load_encoder, read_checkpoint, untrained_encoder
from cml.train.augment import Augment, AugmentConfig
from cml.train.config import TrainConfig, config_from_params
from cml.train.data import PairDataset, TrackCrops, _groups, choose_recipe, epoch_batches, pair_dataset, steps_per_epoch
from cml.train.loop import train
from cml.train.validate import best_epoch, patience_over
from tests.helpers import TINY_TRAINING, make_tracks


@pytest.fixture(scope="module")
def tracks(tmp_path_factory) -> Path:
    return make_tracks(tmp_path_factory.mktemp("audio"))


def test_loss_falls_on_a_tiny_overfit_set(tmp_path):
    csv = make_tracks(tmp_path, n=6)  # 4 training tracks, one batch of all of them
    cfg = {**TINY_TRAINING, "epochs": 6, "crops_per_track": 6, "augment": {"off": True}, "warmup_epochs": 0.5,
           "temperature": 0.1, "recipe": "renderings"}  # aligned views: an easy task to overfit
    history = train(cfg, csv, tmp_path / "out", progress=False)["history"]
    first, last = history[0]["train/ntxent"], history[-1]["train/ntxent"]
    assert last < 0.5 * first, (first, last)


def test_resume_reproduces_the_uninterrupted_run(tracks, tmp_path):
    cfg = {**TINY_TRAINING, "kmeans_lambda": 0.5, "kmeans_k": 2}  # the k-means state must resume too
    full = train(cfg, tracks, tmp_path / "full", progress=False)
    part = train(cfg, tracks, tmp_path / "part", progress=False, max_epochs=1)
    assert part["epochs"] == 1 and not (tmp_path / "part" / "metrics.json").read_text() == ""
    resumed = train(cfg, tracks, tmp_path / "part", progress=False)
    assert resumed["history"] == full["history"]  # bit for bit, every epoch's metrics
    a, b = read_checkpoint(tmp_path / "full" / "last.pt"), read_checkpoint(tmp_path / "part" / "last.pt")
    assert all(torch.equal(a["model"][k], b["model"][k]) for k in a["model"])
    assert all(torch.equal(a["kmeans"][k], b["kmeans"][k]) for k in a["kmeans"])
    assert a["step"] == b["step"] == 2 * (8 * 2 // 4)
    assert full["train_kmeans"] > 0
    # DVCLive curves of the resumed run equal the uninterrupted ones (no duplicated or missing epochs)
    for name in ("train/loss.tsv", "val/knn_acc.tsv"):
        curve = (tmp_path / "full" / "live" / "plots" / "metrics" / name).read_text()
        assert curve == (tmp_path / "part" / "live" / "plots" / "metrics" / name).read_text()
        assert len(curve.strip().splitlines()) == 1 + 2
    drop = ("train_seconds", "clips_per_s")
    m_full, m_part = (json.loads((tmp_path / d / "metrics.json").read_text()) for d in ("full", "part"))
    assert {k: v for k, v in m_full.items() if k not in drop} == {k: v for k, v in m_part.items() if k not in drop}


def test_resume_refuses_a_different_config(tracks, tmp_path):
    train({**TINY_TRAINING, "epochs": 1}, tracks, tmp_path, progress=False)
    with pytest.raises(ValueError, match="different config.*lr"):
        train({**TINY_TRAINING, "epochs": 1, "lr": 1e-2}, tracks, tmp_path, progress=False)
    again = train({**TINY_TRAINING, "epochs": 1, "num_workers": 1}, tracks, tmp_path, progress=False)  # loader only
    assert again["epochs"] == 1


def test_checkpoint_round_trips_through_load_encoder(tracks, tmp_path):
    cfg = {**TINY_TRAINING, "variant": "alibi2d", "epochs": 1,
           "model": {**TINY_TRAINING["model"], "patch_freq": 16, "patch_time": 8, "pool": "cls"}}
    metrics = train(cfg, tracks, tmp_path, progress=False)
    encoder, mel, norm = load_encoder(tmp_path / "best.pt")
    state = read_checkpoint(tmp_path / "last.pt")
    assert not encoder.training and encoder.cfg.variant == "alibi2d" and encoder.cfg.pool == "cls"
    assert encoder.cfg.patch_time == 8 and mel == MelConfig()
    assert all(torch.equal(v, state["model"][k]) for k, v in encoder.state_dict().items())
    assert norm == Normalizer(**state["norm"]) and norm.std > 0 and norm.mean < 0  # ln of small mel powers
    assert state["train_config"]["variant"] == "alibi2d" and state["epoch"] == metrics["epochs"] == 1
    x = norm(torch.randn(2, 64, 64) - 5)
    assert encoder.embed(x).shape == (2, 16)
    # the random-init baseline is the same architecture with different (untrained) weights
    init = untrained_encoder(encoder.cfg, seed=0)
    assert init.state_dict().keys() == encoder.state_dict().keys()
    assert not torch.equal(init.state_dict()["to_embed.weight"], encoder.state_dict()["to_embed.weight"])
    assert torch.equal(init.state_dict()["to_embed.weight"], untrained_encoder(encoder.cfg, 0).state_dict()["to_embed.weight"])


def test_bad_config_keys_raise():
    with pytest.raises(ValueError, match="unknown keys.*bogus"):
        TrainConfig.from_dict({"lr": 1e-3, "bogus": 1})
    with pytest.raises(ValueError, match="'model'.*dimm"):
        TrainConfig.from_dict({"model": {"dimm": 3}})
    with pytest.raises(ValueError, match="'frontend'.*hop"):
        TrainConfig.from_dict({"frontend": {"hop": 3}})
    with pytest.raises(ValueError, match="train.augment.*reverb"):
        TrainConfig.from_dict({"augment": {"reverb": 1}})
    with pytest.raises(ValueError, match="unknown variant"):
        TrainConfig.from_dict({"variant": "learned"})
    with pytest.raises(ValueError, match="precision"):
        TrainConfig.from_dict({"precision": "int8"})


def test_two_views_of_a_piece_come_from_two_renderings(tmp_path):
    csv = make_tracks(tmp_path, n=4, piece=True)
    rows = pd.read_csv(csv)
    groups = _groups(rows, by_piece=True)
    assert groups == [[0, 1], [2, 3]]
    assert _groups(rows, by_piece=False) == [[0], [1], [2], [3]]
    crops = TrackCrops(list(rows["path"]), list(rows["duration"]), MelConfig(), in_memory=True, progress=False)
    crops.logmels = [torch.full((64, 300), float(i)) for i in range(4)]  # row i is recognisable by value i
    data = PairDataset(crops, groups, 0.64, Augment(AugmentConfig.off()), Normalizer())
    for seed in range(5):
        v1, v2, group = data[(1, seed)]
        assert group == 1 and {round(float(v1.mean())), round(float(v2.mean()))} == {2, 3}


def test_aligned_views_take_the_same_passage_of_both_renderings(tmp_path):
    csv = make_tracks(tmp_path, n=2, piece=True)
    rows = pd.read_csv(csv)
    crops = TrackCrops(list(rows["path"]), [3.0, 3.0], MelConfig(), in_memory=True, progress=False)
    ramp = torch.arange(300, dtype=torch.float32).expand(64, 300) / 100  # frame / 100: a crop shows its start
    crops.logmels = [ramp, ramp + 10]  # rendering 1 = rendering 0 plus 10
    starts = lambda v1, v2: (round(float(v1[0, 0]) * 100) % 1000, round(float(v2[0, 0]) * 100) % 1000)
    aligned = PairDataset(crops, [[0, 1]], 0.64, Augment(AugmentConfig.off()), Normalizer(), shift=0.0)
    jittered = PairDataset(crops, [[0, 1]], 0.64, Augment(AugmentConfig.off()), Normalizer(), shift=0.2)
    free = PairDataset(crops, [[0, 1]], 0.64, Augment(AugmentConfig.off()), Normalizer())
    a, b = zip(*(starts(*aligned[(0, seed)][:2]) for seed in range(20)))
    assert a == b and len(set(a)) > 5  # same passage in both views, at many positions
    gaps = [abs(x - y) for x, y in (starts(*jittered[(0, seed)][:2]) for seed in range(20))]
    assert max(gaps) <= 20 and max(gaps) > 0  # within +-0.2 s = 20 frames
    assert max(abs(x - y) for x, y in (starts(*free[(0, seed)][:2]) for seed in range(20))) > 20


def test_the_recipe_follows_the_data_renderings_of_a_piece_or_single_recordings(tmp_path):
    rows = pd.read_csv(make_tracks(tmp_path, n=4, piece=True))
    assert choose_recipe(rows) == "renderings"  # two renderings of each piece
    assert choose_recipe(rows.drop(columns="piece")) == "recordings"
    assert choose_recipe(rows.assign(piece=list("abcd"))) == "recordings"  # one rendering per piece
    assert choose_recipe(rows.assign(piece=None)) == "recordings"
    assert choose_recipe(rows, "recordings") == "recordings"
    with pytest.raises(ValueError, match="recipe must be one of"):
        TrainConfig(recipe="pieces")


def test_single_recordings_pair_two_crops_from_anywhere_in_the_track(tmp_path):
    rows = pd.read_csv(make_tracks(tmp_path, n=2))
    crops = TrackCrops(list(rows["path"]), [30.0, 30.0], MelConfig(), in_memory=True, progress=False)
    crops.logmels = [torch.arange(3000, dtype=torch.float32).expand(64, 3000) / 100] * 2  # a crop shows its start
    cfg = TrainConfig(crop_seconds=0.64)  # view_shift_seconds 0.5 applies to renderings only
    off = Augment(AugmentConfig.off())
    starts = lambda data, seed: [round(float(v[0, 0]) * 100) for v in data[(0, seed)][:2]]
    gaps = [abs(a - b) for a, b in (starts(pair_dataset(crops, rows, "recordings", cfg, off, Normalizer()), s)
                                    for s in range(20))]
    assert max(gaps) > 500  # positions drawn independently over the whole 30 s track
    rendered = pair_dataset(crops, rows.assign(piece="p"), "renderings", cfg, off, Normalizer())
    assert len(rendered) == 1 and max(abs(a - b) for a, b in (starts(rendered, s) for s in range(20))) <= 50


def test_the_step_budget_grows_with_the_library_within_its_bounds():
    cfg = TrainConfig()  # 18 epochs, 8 pairs per track and epoch, 32 pairs a step, 648..6000 steps
    assert steps_per_epoch(146, cfg) == 36  # the default corpus: 146 pieces -> 648 steps
    assert steps_per_epoch(94, cfg) * cfg.epochs == 648  # 100 tracks: the minimum, not 414 steps
    assert steps_per_epoch(200, cfg) == 50  # by the data
    assert steps_per_epoch(10_000, cfg) * cfg.epochs == 5994  # 10k tracks: capped, not 45,000 steps
    assert steps_per_epoch(3, TrainConfig(min_steps=1)) == 1
    with pytest.raises(ValueError, match="min_steps <= max_steps"):
        TrainConfig(min_steps=700, max_steps=600)


def test_fine_tuning_starts_from_the_checkpoint_weights_and_standardisation(tracks, tmp_path):
    train({**TINY_TRAINING, "epochs": 1}, tracks, tmp_path / "pre", progress=False)
    pre, _, pre_norm = load_encoder(tmp_path / "pre" / "best.pt")
    frozen = {**TINY_TRAINING, "epochs": 1, "lr": 0.0, "seed": 5}  # lr 0: the weights stay where they start
    train(frozen, tracks, tmp_path / "tuned", progress=False, init=tmp_path / "pre" / "best.pt")
    tuned, _, tuned_norm = load_encoder(tmp_path / "tuned" / "best.pt")
    assert tuned_norm == pre_norm
    assert all(torch.equal(a, b) for a, b in zip(pre.state_dict().values(), tuned.state_dict().values()))
    train(frozen, tracks, tmp_path / "scratch", progress=False)
    scratch, _, _ = load_encoder(tmp_path / "scratch" / "best.pt")
    assert not torch.equal(scratch.patch.linear.weight, pre.patch.linear.weight)
    other = {**TINY_TRAINING, "epochs": 1, "model": {**TINY_TRAINING["model"], "dim": 16}}
    with pytest.raises(UsageError, match=r"another architecture.*\['dim'\]"):
        train(other, tracks, tmp_path / "bad", progress=False, init=tmp_path / "pre" / "best.pt")


def test_best_epoch_is_the_lowest_val_loss_or_the_last_without_val():
    nan = float("nan")
    history = [{"epoch": e, "val/ntxent": v, "val/knn_acc": k} for e, v, k in [(1, 3.5, 0.6), (2, 3.1, 0.3), (3, 3.2, 0.5)]]
    assert best_epoch(history)["epoch"] == 2  # the loss decides, not the noisy k-NN accuracy
    assert best_epoch([{**h, "val/ntxent": nan, "val/knn_acc": nan} for h in history])["epoch"] == 3


def test_patience_stops_a_run_that_no_longer_improves_and_keeps_its_best_epoch(tracks, tmp_path):
    history = [{"epoch": e, "val/ntxent": v} for e, v in [(1, 3.5), (2, 3.1), (3, 3.2), (4, 3.3)]]
    assert not patience_over(history[:3], 2) and patience_over(history, 2) and not patience_over(history, 0)
    assert not patience_over([{**h, "val/ntxent": float("nan")} for h in history], 1)  # no val split: no stop
    cfg = {**TINY_TRAINING, "epochs": 6, "lr": 0.0, "patience": 1}  # lr 0: the val loss never improves after epoch 1
    result = train(cfg, tracks, tmp_path / "run", progress=False)
    assert [h["epoch"] for h in result["history"]] == [1, 2]
    assert result["best_epoch"] == 1 and read_checkpoint(tmp_path / "run" / "best.pt")["epoch"] == 1
    with pytest.raises(ValueError, match="patience"):
        TrainConfig(patience=-1)


def test_epoch_batches_are_deterministic_and_cover_the_groups():
    a = epoch_batches(seed=0, epoch=3, n_groups=10, batch_size=4, steps=5)
    assert a == epoch_batches(seed=0, epoch=3, n_groups=10, batch_size=4, steps=5)
    assert a != epoch_batches(seed=0, epoch=4, n_groups=10, batch_size=4, steps=5)
    groups = [g for batch in a for g, _ in batch]
    assert len(a) == 5 and sorted(groups[:10]) == list(range(10))  # each shuffle visits every group once
    assert len({s for batch in a for _, s in batch}) == 20  # every item gets its own seed


def test_disk_crops_match_the_memory_cache(tracks):
    rows = pd.read_csv(tracks)
    mem = TrackCrops(list(rows["path"][:2]), list(rows["duration"][:2]), MelConfig(), True, False)
    disk = TrackCrops(list(rows["path"][:2]), list(rows["duration"][:2]), MelConfig(), False, False)
    a, b = mem.centre(0, 1.0), disk.centre(0, 1.0)
    assert a.shape == b.shape == (64, 100)
    e = -(-MelConfig().n_fft // 2 // MelConfig().hop_length)  # edge frames differ: padding vs real context
    assert torch.allclose(a[:, e:-e], b[:, e:-e], atol=1e-3)
    assert torch.allclose(mem.at(0, 0.5, 0.5, 0.1)[:, e:-e], disk.at(0, 0.5, 0.5, 0.1)[:, e:-e], atol=1e-3)
    r = disk.random(1, 0.64, torch.Generator().manual_seed(0))
    assert r.shape == (64, 64) and torch.isfinite(r).all()


def test_cli_trains_from_params(tracks, tmp_path, cli_raising):
    params = tmp_path / "params.yaml"
    train_section = {k: v for k, v in TINY_TRAINING.items() if k != "model"}
    params.write_text(json.dumps({"train": {**train_section, "epochs": 1}, "model": TINY_TRAINING["model"],
                                  "frontend": {}}))
    assert cli_raising("train", "--params", params, "--variant", "none", "--tracks", tracks, "--out", tmp_path / "out",
                       "--quiet") == 0
    assert read_checkpoint(tmp_path / "out" / "last.pt")["encoder_config"]["variant"] == "none"
    assert read_checkpoint(tmp_path / "out" / "last.pt")["encoder_config"]["dim"] == TINY_TRAINING["model"]["dim"]
    metrics = json.loads((tmp_path / "out" / "metrics.json").read_text())
    assert metrics["epochs"] == 1 and 0 <= metrics["val_knn_acc"] <= 1


def test_the_front_end_comes_from_the_frontend_section(tracks, tmp_path):
    cfg = TrainConfig.from_dict({**TINY_TRAINING, "epochs": 1, "frontend": {"n_mels": 32, "hop_length": 320}})
    assert cfg.mel_config() == MelConfig(n_mels=32, hop_length=320)
    assert cfg.encoder_config().n_mels == 32  # the encoder takes the front end's mel bins
    train(cfg, tracks, tmp_path / "out", progress=False)
    encoder, mel, _ = load_encoder(tmp_path / "out" / "best.pt")
    assert mel == MelConfig(n_mels=32, hop_length=320) and encoder.cfg.n_mels == 32


def test_the_architecture_and_the_front_end_are_sections_of_their_own(tmp_path):
    params = tmp_path / "params.yaml"
    params.write_text(json.dumps({"train": {"epochs": 2, "model": {"dim": 32}}, "model": {}, "frontend": {}}))
    with pytest.raises(UsageError, match=r"\['model'\] in the 'train' section"):
        config_from_params(params)
    params.write_text(json.dumps({"train": {"epochs": 2}, "model": {"dim": 32, "heads": 2}, "frontend": {"n_mels": 32}}))
    config = config_from_params(params, "none", 3)
    assert (config.epochs, config.variant, config.seed) == (2, "none", 3)
    assert config.encoder_config().dim == 32 and config.encoder_config().n_mels == 32
