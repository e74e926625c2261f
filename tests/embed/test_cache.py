"""The per-file embedding cache: unchanged files are never decoded again, and nothing stale is ever reused."""
import logging
import os
import re
import subprocess
import sys
from functools import partial
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

import cml.embed.tracks
from cml.audio.mel import MelConfig
from cml.cli import main
from cml.embed.cache import DB_NAME, EmbeddingCache, model_key
from cml.embed.tracks import embed_tracks
from cml.model.checkpoint import Normalizer, save_checkpoint, untrained_encoder
from cml.model.encoder import EncoderConfig
from cml.tables import FeatureTableError, read_feature_table
from tests.helpers import write_tone

TINY = dict(dim=16, depth=1, heads=2, mlp_ratio=2, embed_dim=8, proj_dim=4)
NORM = Normalizer(-5.0, 4.0)
tone = partial(write_tone, amp=0.2, noise=0.01)  # a tone in a little noise


@pytest.fixture
def decodes(monkeypatch):
    """Counts the audio files `cml.embed.tracks` decodes (handed to its decoding workers, `iter_logmels`)."""
    calls = []
    real = cml.embed.tracks.iter_logmels

    def counting(paths, *args, **kwargs):
        calls.extend(map(str, paths))
        return real(paths, *args, **kwargs)

    monkeypatch.setattr(cml.embed.tracks, "iter_logmels", counting)
    return calls


@pytest.fixture
def library(tmp_path):
    return pd.DataFrame([{"id": f"t{i}", "path": str(tone(tmp_path / f"t{i}.wav", 2.0 + i, 200 + 150 * i, seed=i))}
                         for i in range(3)])


def _checkpoint(path, seed):
    cfg = EncoderConfig(variant="rope1d", **TINY)
    save_checkpoint(path, model=untrained_encoder(cfg, seed=seed), optimizer=None, scheduler=None, epoch=1, step=1,
                    encoder_config=cfg, mel_config=MelConfig(), norm=NORM, train_config={}, metrics={}, rng_state={})
    return str(path)


def _embed(encoder, tracks, folder, key):
    with EmbeddingCache(folder, key) as cache:
        return embed_tracks(encoder, MelConfig(), NORM, tracks, progress=False, cache=cache), (cache.hits, cache.misses)


def test_an_unchanged_library_is_not_decoded_again_and_gives_the_same_vectors(library, tmp_path, decodes):
    encoder = untrained_encoder(EncoderConfig(variant="rope1d", **TINY), seed=0)
    first, counts = _embed(encoder, library, tmp_path / "cache", "k")
    assert len(decodes) == 3 and counts == (0, 3)
    again, counts = _embed(encoder, library, tmp_path / "cache", "k")
    assert len(decodes) == 3 and counts == (3, 0)  # no decoding at all on the re-run
    np.testing.assert_array_equal(again.X, first.X)  # bit for bit
    assert again.tracks["seconds"].tolist() == first.tracks["seconds"].tolist()
    fresh = embed_tracks(encoder, MelConfig(), NORM, library, progress=False)
    np.testing.assert_array_equal(fresh.X, first.X)


def test_only_added_and_edited_files_are_embedded(library, tmp_path, decodes):
    encoder = untrained_encoder(EncoderConfig(variant="rope1d", **TINY), seed=0)
    before, _ = _embed(encoder, library, tmp_path / "cache", "k")
    added = pd.concat([library, pd.DataFrame([{"id": "new", "path": str(tone(tmp_path / "new.wav", 2.0, 900))}])],
                      ignore_index=True)
    decodes.clear()
    _embed(encoder, added, tmp_path / "cache", "k")
    assert decodes == [added["path"][3]]  # only the new file
    tone(library["path"][1], 3.0, 1234, seed=9)  # edited in place
    os.utime(library["path"][2], ns=(1, 1))  # touched: another mtime, the same content
    decodes.clear()
    after, _ = _embed(encoder, added, tmp_path / "cache", "k")
    assert decodes == [library["path"][1]]
    assert not np.allclose(after.X[1], before.X[1]) and np.array_equal(after.X[[0, 2]], before.X[[0, 2]])


def test_another_checkpoint_or_setting_never_reuses_a_vector(tmp_path):
    a, b = _checkpoint(tmp_path / "a.pt", 0), _checkpoint(tmp_path / "b.pt", 1)
    settings = {"mode": "chunked", "window_seconds": 32.0, "norm": NORM.to_dict()}
    assert model_key(a, settings) == model_key(a, dict(settings))
    assert model_key(a, settings) != model_key(b, settings)  # same path and size, other weights
    os.replace(b, a)  # retrained in place: the same path now holds other bytes
    assert model_key(a, settings) == model_key(str(tmp_path / "a.pt"), settings) != model_key(_checkpoint(
        tmp_path / "c.pt", 0), settings)
    assert model_key(a, settings) != model_key(a, {**settings, "window_seconds": 16.0})
    assert model_key("untrained:rope1d", settings) != model_key("untrained:rope2d", settings)


def test_the_cli_reuses_vectors_only_for_the_same_checkpoint(library, tmp_path, decodes):
    library.to_csv(tmp_path / "tracks.csv", index=False)
    ckpt = _checkpoint(tmp_path / "model.pt", 0)
    args = ["embed", ckpt, "--tracks", str(tmp_path / "tracks.csv"), "--cache", str(tmp_path / "cache"), "--quiet"]
    assert main([*args, "--out", str(tmp_path / "a.parquet")]) == 0 and len(decodes) == 3
    assert main([*args, "--out", str(tmp_path / "b.parquet")]) == 0 and len(decodes) == 3
    np.testing.assert_array_equal(read_feature_table(tmp_path / "a.parquet").X, read_feature_table(tmp_path / "b.parquet").X)
    _checkpoint(ckpt, 1)  # retrained: every vector is stale
    assert main([*args, "--out", str(tmp_path / "c.parquet")]) == 0 and len(decodes) == 6
    assert not np.allclose(read_feature_table(tmp_path / "c.parquet").X, read_feature_table(tmp_path / "a.parquet").X)
    assert main([*args, "--no-cache", "--out", str(tmp_path / "d.parquet")]) == 0 and len(decodes) == 9


def test_an_untrained_baseline_rerun_decodes_nothing_not_even_for_its_standardisation(library, tmp_path, decodes,
                                                                                        monkeypatch):
    measured = []
    real = cml.embed.tracks.track_logmel
    monkeypatch.setattr(cml.embed.tracks, "track_logmel", lambda path, *a, **k: measured.append(path) or real(path, *a, **k))
    library.to_csv(tmp_path / "tracks.csv", index=False)
    args = ["embed", "untrained:rope1d", "--tracks", str(tmp_path / "tracks.csv"), "--cache", str(tmp_path / "cache"),
            "--quiet", "--workers", "0", *[a for k, v in TINY.items() for a in ("--set", f"{k}={v}")]]
    assert main([*args, "--out", str(tmp_path / "a.parquet")]) == 0
    assert len(decodes) == 3 and len(measured) == 3 + 3  # the normaliser's sample, then the embedding
    assert main([*args, "--out", str(tmp_path / "b.parquet")]) == 0
    assert len(decodes) == 3 and len(measured) == 6  # nothing decoded at all
    np.testing.assert_array_equal(read_feature_table(tmp_path / "a.parquet").X, read_feature_table(tmp_path / "b.parquet").X)
    tone(library["path"][0], 2.5, 300, seed=9)  # an edited file changes the standardisation, so every vector
    assert main([*args, "--out", str(tmp_path / "c.parquet")]) == 0
    assert len(decodes) == 6 and len(measured) == 6 + 3 + 3


def test_a_corrupt_cache_is_set_aside_and_rebuilt_with_a_message(library, tmp_path, caplog, decodes):
    encoder = untrained_encoder(EncoderConfig(variant="rope1d", **TINY), seed=0)
    first, _ = _embed(encoder, library, tmp_path / "cache", "k")
    (tmp_path / "cache" / DB_NAME).write_bytes(b"this is not a database" * 100)
    with caplog.at_level(logging.WARNING, logger="cml.embed.cache"):
        again, counts = _embed(encoder, library, tmp_path / "cache", "k")
    assert "cannot be read" in caplog.text and "rebuilding" in caplog.text
    assert counts == (0, 3) and np.array_equal(again.X, first.X)
    assert any(p.name.startswith(f"{DB_NAME}.corrupt-") for p in (tmp_path / "cache").iterdir())


def test_a_file_gone_since_the_scan_is_reported_and_the_rest_embedded(library, tmp_path):
    encoder = untrained_encoder(EncoderConfig(variant="rope1d", **TINY), seed=0)
    os.remove(library["path"][1])
    res, counts = _embed(encoder, library, tmp_path / "cache", "k")
    assert res.tracks["id"].tolist() == ["t0", "t2"]
    assert res.skipped["id"].tolist() == ["t1"] and "t1.wav" in res.skipped["reason"][0] + res.skipped["path"][0]


def test_torchrun_ranks_write_parts_that_read_as_the_single_process_table(tmp_path):
    """Two CPU processes under torchrun: each embeds its block of rows; the parts are the one-process table."""
    rows = [{"id": f"t{i}", "path": str(tone(tmp_path / f"t{i}.wav", 1.0 + 0.5 * i, 200 + 90 * i, seed=i)),
             "label": "ab"[i % 2]} for i in range(5)]
    rows.insert(2, {"id": "gone", "path": str(tmp_path / "gone.wav"), "label": "a"})
    pd.DataFrame(rows).to_csv(tmp_path / "tracks.csv", index=False)
    ckpt = _checkpoint(tmp_path / "model.pt", 0)
    args = [ckpt, "--tracks", str(tmp_path / "tracks.csv"), "--quiet", "--device", "cpu",
            "--cache", str(tmp_path / "cache")]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    single = subprocess.run([sys.executable, "-m", "cml.cli", "embed", *args, "--no-cache", "--out",
                             str(tmp_path / "one.parquet")], env=env, capture_output=True, text=True)
    assert single.returncode == 0, single.stderr
    torchrun = Path(sys.executable).with_name("torchrun")
    for attempt in ("cold", "warm"):  # the second run reads every vector from the shared cache
        run = subprocess.run([str(torchrun), "--nproc_per_node", "2", "--no-python", "--master_port", "0",
                              str(Path(sys.executable).with_name("cml")), "embed", *args,
                              "--out", str(tmp_path / "parts.parquet"), "--skipped", str(tmp_path / "skipped.csv")],
                             env=env, capture_output=True, text=True, timeout=300)
        assert run.returncode == 0, run.stderr
        reused = sorted(re.findall(r"(\d+) vectors reused, (\d+) files not in it", run.stderr))
        assert reused == ([("0", "3"), ("0", "3")] if attempt == "cold" else [("2", "1"), ("3", "0")])
        assert sorted(p.name for p in (tmp_path / "parts.parquet").iterdir()) == \
            ["part-00000-of-00002.parquet", "part-00001-of-00002.parquet"]
        one, parts = read_feature_table(tmp_path / "one.parquet"), read_feature_table(tmp_path / "parts.parquet")
        assert parts.ids.tolist() == one.ids.tolist() == ["t0", "t1", "t2", "t3", "t4"]
        np.testing.assert_array_equal(parts.X, one.X)  # bit for bit
        skipped = pd.concat([pd.read_csv(p) for p in sorted((tmp_path / "skipped.csv").iterdir())])
        assert skipped["id"].tolist() == ["gone"]  # reported by the rank that had it; the run went on
    (tmp_path / "parts.parquet" / "part-00001-of-00002.parquet").unlink()
    with pytest.raises(FeatureTableError, match="not one complete set of parts"):
        read_feature_table(tmp_path / "parts.parquet")


def test_ranks_take_contiguous_blocks_of_about_equal_audio():
    from cml.embed.library import Shard

    rng = np.random.default_rng(0)
    tracks = pd.DataFrame({"id": [f"t{i}" for i in range(200)], "duration": rng.lognormal(4, 1.2, 200)})
    for world in (1, 2, 3, 8):
        parts = [Shard(rank, world).rows(tracks) for rank in range(world)]
        assert pd.concat(parts, ignore_index=True)["id"].tolist() == tracks["id"].tolist()  # in order, each once
        audio = np.array([p["duration"].sum() for p in parts])
        assert audio.max() - audio.min() <= 2 * tracks["duration"].max()  # balanced up to a track or two
    counts = [len(Shard(rank, 3).rows(tracks.drop(columns="duration"))) for rank in range(3)]
    assert counts in ([66, 67, 67], [67, 66, 67], [67, 67, 66])  # no duration: by rows
