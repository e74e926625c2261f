import json
import re
from functools import partial

import numpy as np
import pandas as pd
import pytest
import soundfile as sf
import torch

from cml.audio.mel import MelConfig, centre_offset, track_logmel
from cml.embed.library import load_model, parse_overrides
from cml.embed.tracks import Crops, centre_crop, embed_tracks, estimate_normalizer
from cml.errors import UsageError
from cml.model.checkpoint import Normalizer, save_checkpoint, untrained_encoder
from cml.model.encoder import VARIANTS, EncoderConfig
from cml.tables import read_feature_table
from tests.helpers import SR, write_tone

TINY = dict(dim=16, depth=1, heads=2, mlp_ratio=2, embed_dim=8, proj_dim=4)
TINY_SET = [f"{k}={v}" for k, v in TINY.items()]
tone = partial(write_tone, amp=0.2, harmonics=3, noise=0.01)  # noisy and harmonic: frequencies differ in spectrum


@pytest.fixture(scope="module")
def encoder():
    return untrained_encoder(EncoderConfig(variant="rope1d", **TINY), seed=0)


@pytest.fixture
def tracks(tmp_path):
    rows = [{"id": f"t{i}", "path": str(tone(tmp_path / f"t{i}.wav", s, f, seed=i)), "label": lab}
            for i, (s, f, lab) in enumerate([(3.0, 220, "low"), (5.0, 880, "high"), (2.5, 247, "low")])]
    return pd.DataFrame(rows)


def test_full_and_chunked_shapes_and_whole_window_equals_full(encoder, tracks):
    norm = Normalizer(-5.0, 4.0)
    full = embed_tracks(encoder, MelConfig(), norm, tracks, progress=False)
    assert full.X.shape == (3, 8) and full.X.dtype == np.float32
    assert full.tracks["id"].tolist() == ["t0", "t1", "t2"] and full.tracks["label"].tolist() == ["low", "high", "low"]
    assert full.tracks["seconds"].round(1).tolist() == [3.0, 5.0, 2.5]
    assert full.skipped.empty
    chunked = embed_tracks(encoder, MelConfig(), norm, tracks, mode="chunked", window_seconds=1.0, progress=False)
    assert chunked.X.shape == full.X.shape
    assert not np.allclose(chunked.X, full.X, atol=1e-4)  # averaging windows is not the one-pass embedding
    whole = embed_tracks(encoder, MelConfig(), norm, tracks, mode="chunked", window_seconds=10.0, progress=False)
    np.testing.assert_allclose(whole.X, full.X, rtol=1e-5, atol=1e-6)
    capped = embed_tracks(encoder, MelConfig(), norm, tracks, max_seconds=2.0, progress=False)
    assert capped.tracks["seconds"].round(2).tolist() == [2.0, 2.0, 2.0]


def test_a_vector_is_the_encoders_chunked_embedding_and_batching_tracks_changes_nothing(encoder, tracks, monkeypatch):
    """On a CPU each track goes through alone (bit for bit `Encoder.embed_chunked`); on a GPU the windows of
    several tracks share encoder passes, grouped by window length: the same vectors up to float rounding."""
    import cml.embed.tracks

    norm, mel = Normalizer(-5.0, 4.0), MelConfig()
    alone = embed_tracks(encoder, mel, norm, tracks, window_seconds=1.0, progress=False)
    with torch.inference_mode():
        for row, vector in zip(tracks.itertuples(), alone.X):
            x = norm(track_logmel(row.path, mel))[None]
            np.testing.assert_array_equal(vector, encoder.eval().embed_chunked(x, 100, 50)[0].numpy())
    batches = []
    monkeypatch.setattr(cml.embed.tracks._TrackBatch, "full", lambda self, device: batches.append(len(self.rows)) and False)
    together = embed_tracks(encoder, mel, norm, tracks, window_seconds=1.0, progress=False)
    assert max(batches) == 3  # all three tracks in one batch
    np.testing.assert_allclose(together.X, alone.X, rtol=1e-5, atol=1e-6)
    full = embed_tracks(encoder, mel, norm, tracks.iloc[[0, 2, 0]].assign(id=["a", "b", "c"]), mode="full",
                        progress=False)  # one-pass tracks of two lengths in one batch
    np.testing.assert_allclose(full.X, embed_tracks(encoder, mel, norm, tracks, mode="full", progress=False).X[[0, 2, 0]],
                               rtol=1e-5, atol=1e-6)


def test_normalizer_is_applied(encoder, tracks):
    a = embed_tracks(encoder, MelConfig(), Normalizer(0.0, 1.0), tracks, progress=False).X
    b = embed_tracks(encoder, MelConfig(), Normalizer(-5.0, 4.0), tracks, progress=False).X
    assert not np.allclose(a, b, atol=1e-4)


def test_bad_tracks_are_skipped_with_a_reason(encoder, tracks, tmp_path):
    (tmp_path / "garbage.wav").write_bytes(b"RIFF not really a wave file" * 10)
    tone(tmp_path / "blip.wav", 0.02, 440)  # 2 frames: shorter than one 4-frame token
    bad = pd.DataFrame([{"id": "garbage", "path": str(tmp_path / "garbage.wav"), "label": "x"},
                        {"id": "missing", "path": str(tmp_path / "missing.flac"), "label": "x"},
                        {"id": "blip", "path": str(tmp_path / "blip.wav"), "label": "x"}])
    res = embed_tracks(encoder, MelConfig(), Normalizer(), pd.concat([tracks, bad], ignore_index=True),
                       progress=False)
    assert res.tracks["id"].tolist() == ["t0", "t1", "t2"] and len(res.X) == 3
    reasons = dict(zip(res.skipped["id"], res.skipped["reason"]))
    assert set(reasons) == {"garbage", "missing", "blip"}
    assert "shorter than one token" in reasons["blip"]
    assert all(r and "\n" not in r for r in reasons.values())


def test_embedding_is_deterministic(tracks):
    spec = "untrained:alibi2d"
    runs = [embed_tracks(*load_model(spec, seed=3, overrides=TINY)[:2], Normalizer(-5.0, 4.0), tracks,
                         progress=False).X for _ in range(2)]
    np.testing.assert_array_equal(runs[0], runs[1])
    other = embed_tracks(*load_model(spec, seed=4, overrides=TINY)[:2], Normalizer(-5.0, 4.0), tracks,
                         progress=False).X
    assert not np.allclose(runs[0], other, atol=1e-4)


def test_dropout_is_off_while_embedding_and_mode_is_restored(tracks):
    encoder = untrained_encoder(EncoderConfig(variant="sincos", dropout=0.5, **TINY), seed=0).train()
    runs = [embed_tracks(encoder, MelConfig(), Normalizer(-5.0, 4.0), tracks, progress=False).X for _ in range(2)]
    np.testing.assert_array_equal(runs[0], runs[1])
    assert encoder.training


@pytest.mark.parametrize("variant", ["none", "sincos", "alibi1d", "alibi2d", "rope1d", "rope2d"])
def test_untrained_baseline_of_every_variant(variant, tracks):
    encoder, mel, norm = load_model(f"untrained:{variant}", seed=0, overrides=TINY)
    assert norm is None and mel.n_mels == encoder.cfg.n_mels and encoder.cfg.variant == variant
    assert not encoder.training
    res = embed_tracks(encoder, mel, Normalizer(-5.0, 4.0), tracks, progress=False)
    assert res.X.shape == (3, 8) and np.isfinite(res.X).all()
    assert np.linalg.matrix_rank(res.X, tol=1e-6) > 1  # distinct tracks give distinct embeddings


def test_load_model_errors(tmp_path):
    with pytest.raises(ValueError, match="unknown variant"):
        load_model("untrained:rope3d")
    with pytest.raises(UsageError, match="checkpoint not found"):
        load_model(str(tmp_path / "nope.pt"))
    with pytest.raises(ValueError, match="--set only applies"):
        load_model(str(tmp_path / "nope.pt"), overrides={"dim": 8})
    assert parse_overrides(["dim=32", "pool=cls", "tokens=none", "rope_theta=100"]) == {
        "dim": 32, "pool": "cls", "tokens": None, "rope_theta": 100.0}
    with pytest.raises(ValueError, match="KEY=VALUE"):
        parse_overrides(["width=3"])


def test_estimate_normalizer_standardises(tracks):
    norm = estimate_normalizer(tracks["path"], MelConfig(), seed=0)
    x = torch.cat([track_logmel(p) for p in tracks["path"]], dim=1)
    z = norm(x)
    assert abs(z.mean().item()) < 1e-3 and abs(z.std().item() - 1) < 1e-3


def test_one_normaliser_estimate_for_trained_and_untrained_encoders(tracks):
    logmels = [track_logmel(p) for p in tracks["path"]]
    values = np.concatenate([x.double().flatten().numpy() for x in logmels])
    norm = Normalizer.measure(iter(logmels))  # any iterable: training hands it a generator of crops
    assert norm.mean == pytest.approx(values.mean(), abs=1e-12) and norm.std == pytest.approx(values.std(ddof=1), abs=1e-12)
    # the untrained baseline's estimate is the same statistic over the first seconds of its sample
    assert estimate_normalizer(tracks["path"], MelConfig(), max_tracks=len(tracks), seed=0) == norm
    assert Normalizer.measure([]) == Normalizer() and Normalizer.measure([torch.full((4, 5), -3.0)]).std == 1.0


def test_seconds_frames_and_the_centre_are_written_once():
    mel = MelConfig()
    assert mel.frames(4.0) == 400 and mel.seconds(400) == 4.0 and mel.frames(mel.seconds(123)) == 123
    assert centre_offset(30.0, 4.0) == 13.0 and centre_offset(3.0, 4.0) == 0.0
    assert int(centre_offset(11, 4)) == 3  # frames: the earlier of two middles, as (11 - 4) // 2


def test_crops_come_from_the_same_log_mel_as_the_track_embedding(encoder, tracks):
    norm = Normalizer(-5.0, 4.0)
    both = embed_tracks(encoder, MelConfig(), norm, tracks, crops=Crops(0.5, (1, 2, 8)), progress=False)
    res, full = both.crops, both.X
    assert list(res.X) == ["1x", "2x", "8x", "full"]
    assert all(X.shape == (3, 8) for X in res.X.values())
    np.testing.assert_array_equal(full, embed_tracks(encoder, MelConfig(), norm, tracks, progress=False).X)
    np.testing.assert_allclose(res.X["full"], full, rtol=1e-5, atol=1e-6)
    # 8 x 0.5 s = 4 s covers the 3 s and 2.5 s tracks whole, but not the 5 s one
    np.testing.assert_allclose(res.X["8x"][[0, 2]], full[[0, 2]], rtol=1e-5, atol=1e-6)
    assert not np.allclose(res.X["8x"][1], full[1], atol=1e-4)
    assert not np.allclose(res.X["1x"], full, atol=1e-4)
    x = torch.arange(10.0)
    assert centre_crop(x, 4).tolist() == [3.0, 4.0, 5.0, 6.0] and centre_crop(x, 20).tolist() == x.tolist()


def test_cli_round_trip_from_folder(tmp_path, capsys, cli):
    audio = tmp_path / "audio"
    for i in range(4):
        tone(audio / "low" / f"a{i}.wav", 2.0 + 0.5 * i, 200 + 10 * i, seed=i)
        tone(audio / "high" / f"b{i}.flac", 2.0 + 0.5 * i, 2000 + 100 * i, seed=10 + i)
    tone(audio / "loose.wav", 2.0, 500)  # directly in the root: no label
    (audio / "notes.txt").write_text("not audio")
    out, skipped = tmp_path / "emb.parquet", tmp_path / "skipped.csv"
    assert cli("embed", "untrained:none", str(audio), "--out", str(out), "--skipped", str(skipped),
               "--quiet", "--device", "cpu", *[a for s in TINY_SET for a in ("--set", s)]) == 0
    table = read_feature_table(out)
    assert len(table) == 9 and table.X.shape[1] == 8
    assert sorted(table.ids)[:2] == ["high/b0", "high/b1"]
    labels = dict(zip(table.ids, table.labels))
    assert labels["low/a0"] == "low" and labels["high/b3"] == "high" and labels["loose"] is None
    assert "path" in table.meta.columns and "seconds" in table.meta.columns
    report = pd.read_csv(skipped)
    assert len(report) == 1 and report["path"].iloc[0].endswith("notes.txt")

    metrics_path = tmp_path / "metrics.json"
    assert cli("evaluate", str(out), "--out", str(metrics_path), "--test-fraction", "0.5", "--k", "3") == 0
    metrics = json.loads(metrics_path.read_text())
    assert {"knn_acc", "linear_acc", "nmi", "ari"} <= set(metrics)
    assert metrics["n_test"] == 4 and metrics["notes"]["unlabelled"].startswith("1 rows")
    assert 0.0 <= metrics["knn_acc"] <= 1.0


@pytest.mark.parametrize("options, message", [
    (["--only-split", "test"], "--only-split needs --tracks"),  # a scanned folder has no split to choose from
    (["--out", "emb.txt"], "--out .*emb.txt: a feature table is written as .parquet or .csv"),
    (["--set", "heads=0"], "untrained:none: heads must be at least 1, got 0"),
    (["--set", "depth=0"], "untrained:none: depth must be at least 1, got 0"),
    (["--crops"], "--crops needs CROP_SECONDS with untrained:none"),  # no training crop to default to
])
def test_cli_refuses_options_it_cannot_honour_before_reading_audio(tmp_path, capsys, monkeypatch, cli, options,
                                                                    message):
    tone(tmp_path / "audio" / "a.wav", 1.0, 440)
    monkeypatch.chdir(tmp_path)

    def no_audio(*args, **kwargs):
        raise AssertionError("the folder was scanned before the options were checked")

    monkeypatch.setattr("cml.embed.cli.scan_audio", no_audio)
    argv = ["embed", "untrained:none", str(tmp_path / "audio"), "--out", "emb.parquet", "--quiet", "--device", "cpu"]
    assert cli(*argv, *options) == 2
    err = capsys.readouterr().err
    assert re.search(message, err) and err.count("\n") == 1, err
    assert not list(tmp_path.glob("emb.*"))


def test_cli_with_track_table_checkpoint_and_crops(tmp_path, tracks, cli):
    threads = torch.get_num_threads()
    cfg = EncoderConfig(variant="rope2d", **TINY)
    model = untrained_encoder(cfg, seed=5)
    ckpt = save_checkpoint(tmp_path / "model.pt", model=model, optimizer=None, scheduler=None, epoch=1, step=1,
                           encoder_config=cfg, mel_config=MelConfig(), norm=Normalizer(-5.0, 4.0),
                           train_config={}, metrics={}, rng_state={})
    table = tracks.assign(split=["train", "test", "test"])
    table.to_csv(tmp_path / "tracks.csv", index=False)
    out = tmp_path / "emb.parquet"
    assert cli("embed", str(ckpt), "--tracks", str(tmp_path / "tracks.csv"), "--out", str(out), "--quiet") == 0
    written = read_feature_table(out)
    expected = embed_tracks(model, MelConfig(), Normalizer(-5.0, 4.0), tracks, progress=False).X
    np.testing.assert_allclose(written.X, expected, rtol=1e-5, atol=1e-7)  # log-mels from worker processes (1 thread)
    assert written.meta["split"].tolist() == ["train", "test", "test"]

    # one command, one decode per file: every track, and the crops of the test tracks (as the embed stage runs it)
    crops = tmp_path / "crops.parquet"
    assert cli("embed", str(ckpt), "--tracks", str(tmp_path / "tracks.csv"), "--out", str(crops), "--quiet",
               "--crops", "0.5", "--crop-split", "test", "--workers", "2") == 0
    assert torch.get_num_threads() == threads  # the encoder's share of the cores is given back
    np.testing.assert_array_equal(read_feature_table(crops).X, written.X)  # the same worker processes: the same vectors
    for name in ("1x", "2x", "4x", "8x", "full"):
        part = read_feature_table(tmp_path / f"crops.{name}.parquet")
        assert part.ids.tolist() == ["t1", "t2"] and part.meta["split"].tolist() == ["test", "test"]
    np.testing.assert_allclose(read_feature_table(tmp_path / "crops.full.parquet").X, expected[1:], rtol=1e-5, atol=1e-7)
    assert cli("embed", str(ckpt), "--tracks", str(tmp_path / "tracks.csv"), "--out", str(crops), "--quiet",
               "--crops", "0.5", "--crop-split", "validation") == 2  # not a split of the table

    assert cli("embed", str(ckpt), str(tmp_path), "--tracks", str(tmp_path / "tracks.csv"),
               "--out", str(out)) == 2
    assert cli("embed", str(ckpt), "--tracks", str(tmp_path / "tracks.csv"), "--out", str(out),
               "--set", "dim=8") == 2


def test_untrained_baseline_takes_the_model_size_and_front_end_from_params(tmp_path):
    from cml.embed.library import load_model, study_model

    params = tmp_path / "params.yaml"
    params.write_text("model: {dim: 32, depth: 1, heads: 2}\nfrontend: {n_mels: 32}\ntrain: {epochs: 1}\n")
    model, frontend = study_model(str(params))
    assert model == {"dim": 32, "depth": 1, "heads": 2} and frontend == MelConfig(n_mels=32)
    assert study_model(None) == ({}, MelConfig())
    encoder, mel, _ = load_model("untrained:rope1d", overrides=model, frontend=frontend)
    assert encoder.cfg.dim == 32 and len(encoder.blocks) == 1
    assert encoder.cfg.n_mels == mel.n_mels == 32  # the encoder takes the front end's mel bins


def test_crops_default_to_the_checkpoint_training_crop(tmp_path, tracks, cli):
    ckpt = tmp_path / "model.pt"
    cfg = EncoderConfig(variant="none", dim=16, depth=1, heads=2, embed_dim=8, proj_dim=8)
    save_checkpoint(ckpt, model=untrained_encoder(cfg), optimizer=None, scheduler=None, epoch=1, step=1,
                    encoder_config=cfg, mel_config=MelConfig(), norm=Normalizer(-5.0, 4.0),
                    train_config={"crop_seconds": 0.5}, metrics={}, rng_state={})
    tracks.to_csv(tmp_path / "tracks.csv", index=False)
    assert cli("embed", str(ckpt), "--tracks", str(tmp_path / "tracks.csv"), "--out", str(tmp_path / "a.parquet"),
               "--quiet", "--crops") == 0
    assert cli("embed", str(ckpt), "--tracks", str(tmp_path / "tracks.csv"), "--out", str(tmp_path / "b.parquet"),
               "--quiet", "--crops", "0.5") == 0
    for name in ("1x", "8x"):
        np.testing.assert_array_equal(read_feature_table(tmp_path / f"a.{name}.parquet").X,
                                      read_feature_table(tmp_path / f"b.{name}.parquet").X)
    assert cli("embed", "untrained:none", "--tracks", str(tmp_path / "tracks.csv"), "--crops",
               "--out", str(tmp_path / "c.parquet")) == 2


def _music(seconds: float, seed: int) -> np.ndarray:
    """A new three-note chord every half second over quiet noise: music-like, different for every seed."""
    rng = np.random.default_rng(seed)
    t = np.arange(int(seconds * SR)) / SR
    y = 0.01 * rng.standard_normal(len(t))
    for k in range(int(seconds * 2)):
        on = (t >= k / 2) & (t < k / 2 + 0.5)
        y[on] += sum(0.1 * np.sin(2 * np.pi * f * t[on]) for f in rng.choice([110, 147, 196, 220, 262, 330, 392], 3))
    return y.astype(np.float32)


@pytest.fixture(scope="module")
def lengths(tmp_path_factory):
    """A 30 s excerpt, the same excerpt repeated to 5 minutes, and other music of 30 s."""
    root = tmp_path_factory.mktemp("lengths")
    excerpt = _music(30.0, 0)
    for name, wave in (("excerpt", excerpt), ("repeated", np.tile(excerpt, 10)), ("other", _music(30.0, 1))):
        sf.write(root / f"{name}.wav", wave, SR)
    return pd.DataFrame({"id": ["excerpt", "repeated", "other"], "path": [str(root / f"{n}.wav") for n in
                                                                          ("excerpt", "repeated", "other")]})


def _drift(variant: str, tracks: pd.DataFrame, mode: str) -> float:
    """Distance of the excerpt to itself repeated to 5 minutes, in units of its distance to other music."""
    encoder = untrained_encoder(EncoderConfig(variant=variant), seed=0)
    X = embed_tracks(encoder, MelConfig(), Normalizer(-5.0, 3.0), tracks, mode=mode, progress=False).X
    return float(np.linalg.norm(X[0] - X[1]) / np.linalg.norm(X[0] - X[2]))


@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_the_same_music_at_any_length_lands_closer_than_other_music(variant, lengths):
    """The track embedding (windows of 8x the crop) of 30 s of music and of the same music repeated to 5
    minutes: closer than two different pieces for every variant (untrained: relative and position-free
    schemes 0.03-0.3 of the gap, sin-cos, whose untrained positions outweigh the content, 0.9)."""
    assert _drift(variant, lengths, "chunked") < 1.0


def test_windows_stop_the_drift_of_absolute_positions(lengths):
    """Why the track embedding uses windows: one pass gives sin-cos positions far past training a
    length-dependent offset (the mean of the slow sinusoids): 11x the gap between two pieces, 0.9x in windows."""
    full, windows = _drift("sincos", lengths, "full"), _drift("sincos", lengths, "chunked")
    assert full > 5.0 and windows < 0.2 * full


def test_the_untrained_window_is_the_recipe_s():
    from cml.embed.tracks import DEFAULT_CROP_SECONDS
    from cml.train.config import TrainConfig

    assert DEFAULT_CROP_SECONDS == TrainConfig().crop_seconds
