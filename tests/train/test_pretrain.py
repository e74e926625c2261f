"""cml.train.pretrain and the shipped encoder: it loads offline and embeds; fine-tuning starts from it; a pretraining run
on a tiny pool resumes and ships a checkpoint that loads. None of it trains for more than a few steps."""

import json
import socket

import numpy as np
import pandas as pd
import pytest
import torch
import yaml

from cml.cli import main
from cml.embed.library import load_model
from cml.errors import UsageError
from cml.model.checkpoint import PRETRAINED_CHECKPOINT, load_encoder
from cml.tables import read_feature_table
from cml.train.config import config_from_params
from cml.train.loop import train
from cml.train.pretrain import pretrain, pretrain_config, pretrain_tracks, ship
from tests.helpers import TINY_TRAINING, make_tracks


@pytest.fixture
def offline(monkeypatch):
    """Any attempt to open a network connection fails the test."""
    def refuse(*args, **kwargs):
        raise AssertionError("network access")
    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)


@pytest.fixture(scope="module")
def audio(tmp_path_factory):
    """Eight 5-second tracks of two kinds (longer than the shipped encoder's 4 s crop)."""
    return make_tracks(tmp_path_factory.mktemp("audio"), n=8, seconds=5.0)


def test_the_shipped_encoder_is_small_loads_offline_and_embeds_a_folder(offline, audio, tmp_path):
    assert PRETRAINED_CHECKPOINT.stat().st_size <= 25 * 2**20
    encoder, mel, norm = load_model("pretrained")
    assert not encoder.training and norm.std > 0
    assert main(["embed", "pretrained", str(audio.parent), "--out", str(tmp_path / "x.parquet"), "--quiet",
                 "--no-cache", "--workers", "0"]) == 0
    table = read_feature_table(tmp_path / "x.parquet")
    assert len(table.ids) == 8 and table.X.shape[1] == encoder.cfg.embed_dim and np.isfinite(table.X).all()
    assert np.linalg.matrix_rank(table.X) > 1  # not one vector for every track


def test_the_card_describes_the_shipped_checkpoint():
    card = json.loads(PRETRAINED_CHECKPOINT.with_name("card.json").read_text())
    import hashlib
    assert card["checkpoint_sha256"] == hashlib.sha256(PRETRAINED_CHECKPOINT.read_bytes()).hexdigest()
    assert card["pool"]["tracks"] == len(card["pool"]["files"]) and card["steps"] > 0
    assert len(card["history"]) == card["epochs_run"]
    splits = {f["split"] for f in card["pool"]["files"].values()}
    assert splits == {"train", "val"}  # the held-out packages validated, never trained


def test_fine_tuning_starts_from_the_shipped_encoder(audio, tmp_path):
    cfg = {"crop_seconds": 4.0, "batch_size": 4, "epochs": 1, "min_steps": 1, "max_steps": 2, "norm_crops": 4,
           "lr": 0.0}  # lr 0: the weights must stay the shipped ones
    assert train(cfg, audio, tmp_path / "tuned", progress=False, init="pretrained")["init"] == "pretrained"
    assert json.loads((tmp_path / "tuned" / "metrics.json").read_text())["init"] == "pretrained"
    tuned, _, tuned_norm = load_encoder(tmp_path / "tuned" / "best.pt")
    shipped, _, shipped_norm = load_encoder(PRETRAINED_CHECKPOINT)
    assert tuned_norm == shipped_norm
    assert all(torch.equal(a, b) for a, b in zip(shipped.state_dict().values(), tuned.state_dict().values()))


def test_a_study_fine_tunes_with_the_shipped_architecture_whatever_its_model_section(tmp_path):
    """The finetune stage runs on any study: its `model`/`frontend` sections (here a tiny model, a 2-D variant)
    cannot fit the shipped weights, so fine-tuning takes the checkpoint's; the recipe stays the study's."""
    params = tmp_path / "params.yaml"
    params.write_text(yaml.safe_dump({"model": {"dim": 32, "depth": 1, "heads": 2}, "frontend": {"n_mels": 32},
                                      "train": {"epochs": 2}}))
    shipped, mel, _ = load_encoder(PRETRAINED_CHECKPOINT)
    cfg = config_from_params(params, variant="rope2d", init="pretrained")
    assert cfg.encoder_config() == shipped.cfg and cfg.mel_config() == mel and cfg.epochs == 2
    assert config_from_params(params, variant="rope2d").encoder_config().dim == 32  # from scratch: the study's


def _tiny_pool(root, audio_csv):
    """A pool folder as `cml pool build` writes it, over the test tracks: two packages, one held out."""
    tracks = pd.read_csv(audio_csv)
    (root / "audio").mkdir(parents=True)
    rows = []
    for i, row in enumerate(tracks.itertuples()):
        path = root / "audio" / f"{row.id}.wav"
        path.write_bytes(open(row.path, "rb").read())
        rows.append({"id": row.id, "path": f"audio/{row.id}.wav", "label": f"pkg{i % 2}",
                     "split": "heldout" if i % 4 == 3 else "train", "duration": row.duration,
                     "licence": "CC0", "sha256": "0" * 64, "source_sha256": "0" * 64, "source": "x"})
    pd.DataFrame(rows).to_csv(root / "pool.csv", index=False)
    return root


def test_pretraining_resumes_and_ships_a_checkpoint_that_loads(audio, tmp_path):
    pool = _tiny_pool(tmp_path / "pool", audio)
    params = tmp_path / "params.yaml"
    recipe = {k: v for k, v in TINY_TRAINING.items() if k != "model"}
    params.write_text(yaml.safe_dump({"pretrain": {**recipe, "epochs": 2}, "model": TINY_TRAINING["model"],
                                      "frontend": {}}))
    table = pretrain_tracks(pool)
    assert set(table["split"]) == {"train", "val"} and all(p.startswith("/") for p in table["path"])
    first = pretrain(params, pool, tmp_path / "run", progress=False, max_epochs=1)
    assert first["init"] == "scratch"
    assert [h["epoch"] for h in first["history"]] == [1]
    resumed = pretrain(params, pool, tmp_path / "run", progress=False)
    assert [h["epoch"] for h in resumed["history"]] == [1, 2]
    dest = ship(tmp_path / "run", tmp_path / "shipped" / "encoder.pt")
    encoder, _, _ = load_encoder(dest)
    assert encoder.cfg.dim == TINY_TRAINING["model"]["dim"]
    assert "optimizer" not in torch.load(dest, weights_only=True)
    card = json.loads((dest.parent / "card.json").read_text())
    assert card["epochs_run"] == 2 and card["pool"]["tracks"] == 8


def test_the_recipe_section_cannot_set_the_architecture(tmp_path):
    params = tmp_path / "params.yaml"
    params.write_text(yaml.safe_dump({"pretrain": {"model": {"dim": 64}}, "model": {}, "frontend": {}}))
    with pytest.raises(UsageError, match="pretrain"):
        pretrain_config(params)
