"""The pretrained musicnn baseline: the PyTorch port reproduces the original TensorFlow models, the weights
load strictly, and `cml embed musicnn` embeds a folder as any other model does."""
import shutil

import librosa
import numpy as np
import pandas as pd
import pytest
import soundfile as sf
import torch

from cml.audio.mel import LogMel, MelConfig, track_logmel
from cml.cli import main
from cml.embed import tracks as embed
from cml.embed.tracks import embed_tracks
from cml.errors import CmlError
from cml.model import musicnn
from cml.model.checkpoint import Normalizer
from cml.model.encoder import chunk_windows
from cml.model.musicnn import LAYERS, MODELS, MUSICNN_MEL, PATCH_FRAMES, MusicnnConfig, load_musicnn
from cml.tables import read_feature_table
from tests.helpers import FIXTURES, sine

REFERENCE = FIXTURES / "musicnn_reference.npz"  # scripts/convert_musicnn.py, from the original TF graph


def reference_input() -> torch.Tensor:
    """The fixture's input (scripts/convert_musicnn.py: fixture_input), as (patches, mels, frames)."""
    x = np.random.default_rng(0).uniform(0, 4, (3, PATCH_FRAMES, 96)).astype(np.float32)
    return torch.from_numpy(x).transpose(1, 2)


@pytest.mark.parametrize("model", MODELS)
def test_the_port_reproduces_the_original_models_outputs(model):
    reference = np.load(REFERENCE)
    with torch.inference_mode():
        out = load_musicnn(f"{model}:taggram").layers(reference_input())
    for layer in LAYERS[model.split("_")[1]]:
        expected = reference[f"{model}/{layer}"]
        assert out[layer].shape == expected.shape
        np.testing.assert_allclose(out[layer].numpy(), expected, rtol=1e-4, atol=1e-4 * np.abs(expected).max())


def test_a_short_patch_is_repeated_to_the_training_length():
    net, x = load_musicnn("MTT_musicnn:penultimate"), reference_input()[:1, :, :100]
    with torch.inference_mode():
        short = net.embed(x)
        repeated = net.embed(torch.cat([x, x], dim=-1)[..., :PATCH_FRAMES])
    torch.testing.assert_close(short, repeated)


def test_the_front_end_is_librosas_melspectrogram_with_musicnns_compression():
    y = sine(440, 3.0, 16000, amp=0.3, noise=0.05, seed=1)
    power = librosa.feature.melspectrogram(y=y, sr=16000, hop_length=256, n_fft=512, n_mels=96)
    ours = LogMel(MUSICNN_MEL)(torch.from_numpy(y)).numpy()
    np.testing.assert_allclose(ours, np.log10(10000 * power + 1), atol=1e-4)
    assert MUSICNN_MEL.floor == 0.0 and MelConfig().floor == pytest.approx(np.log(1e-6))


def test_model_and_layer_are_chosen_by_name():
    assert MusicnnConfig.parse("") == MusicnnConfig()
    assert MusicnnConfig.parse("MTT_vgg") == MusicnnConfig("MTT_vgg", "pool5") == MusicnnConfig("MTT_vgg")
    assert MusicnnConfig.parse("MTT_musicnn").layer == "mean_pool" and MusicnnConfig().model == "MSD_musicnn"
    assert MusicnnConfig.parse("MSD_musicnn:penultimate").embed_dim == 200
    with pytest.raises(CmlError, match=r"unknown musicnn model 'MTT_resnet'; one of MTT_musicnn"):
        MusicnnConfig.parse("MTT_resnet")
    with pytest.raises(CmlError, match=r"MTT_vgg has no layer 'penultimate'; one of taggram, pool5"):
        MusicnnConfig.parse("MTT_vgg:penultimate")


@pytest.fixture
def weights(tmp_path, monkeypatch):
    """A copy of the weights folder the test may damage."""
    folder = tmp_path / "weights"
    shutil.copytree(musicnn.WEIGHTS, folder)
    monkeypatch.setattr(musicnn, "WEIGHTS", folder)
    return folder


@pytest.mark.parametrize("damage, message", [
    (lambda p: p.unlink(), r"musicnn weights not found: .*MTT_musicnn\.npz"),
    (lambda p: p.write_bytes(p.read_bytes()[: len(p.read_bytes()) // 2]), r"musicnn weights unusable: .*MTT_musicnn\.npz"),
    (lambda p: p.write_bytes(b"not a weight file"), r"musicnn weights unusable: .*MTT_musicnn\.npz"),
    (lambda p: np.savez(p, **{k: v for k, v in np.load(str(p)).items() if k != "logits.bias"}),
     r"musicnn weights unusable: .*Missing key.*logits\.bias"),
    (lambda p: np.savez(p, **{k: (v[:-1] if k == "dense.bias" else v) for k, v in np.load(str(p)).items()}),
     r"musicnn weights unusable: .*size mismatch"),
])
def test_missing_or_corrupt_weights_are_a_one_line_error_never_random_weights(weights, damage, message):
    damage(weights / "MTT_musicnn.npz")
    with pytest.raises(CmlError, match=message) as err:
        load_musicnn("MTT_musicnn")
    assert "\n" not in str(err.value)


def test_embed_tracks_pools_half_overlapping_patches(tmp_path):
    rng = np.random.default_rng(0)
    paths = []
    for i, seconds in enumerate([2.0, 7.0]):
        paths.append(tmp_path / f"t{i}.wav")
        sf.write(paths[-1], (0.2 * rng.standard_normal(round(seconds * 16000))).astype(np.float32), 16000)
    tracks = pd.DataFrame({"id": ["a", "b"], "path": [str(p) for p in paths]})
    net = load_musicnn("MSD_musicnn:penultimate")
    res = embed_tracks(net, MUSICNN_MEL, Normalizer(), tracks, window_seconds=MUSICNN_MEL.seconds(PATCH_FRAMES),
                       progress=False)
    assert res.X.shape == (2, 200) and res.skipped.empty
    x = track_logmel(paths[1], MUSICNN_MEL)[None]
    patches = chunk_windows(x, PATCH_FRAMES, PATCH_FRAMES // 2)[0]
    assert len(patches) == 4  # 437 frames: patches at 0, 93, 186 and one ending at the last frame
    with torch.inference_mode():
        expected = net.embed(patches).mean(dim=0).numpy()
    np.testing.assert_allclose(res.X[1], expected, rtol=1e-5, atol=1e-6)


def test_cml_embed_musicnn_embeds_a_folder_and_caches(tmp_path, monkeypatch):
    rng = np.random.default_rng(0)
    for label in ("a", "b"):
        (tmp_path / "music" / label).mkdir(parents=True)
        sf.write(tmp_path / "music" / label / "x.wav", (0.1 * rng.standard_normal(44100 * 4)).astype(np.float32), 44100)
    decoded = []
    monkeypatch.setattr(embed, "track_logmel", lambda path, config, **kw: decoded.append(path) or track_logmel(path, config, **kw))
    out, cache = tmp_path / "m.parquet", tmp_path / "cache"
    argv = ["embed", "musicnn:MTT_vgg", str(tmp_path / "music"), "--out", str(out), "--cache", str(cache), "--quiet",
            "--workers", "0"]
    assert main(argv) == 0
    table = read_feature_table(out)
    assert table.X.shape == (2, 256) and sorted(table.labels) == ["a", "b"] and len(decoded) == 2
    assert main(argv) == 0
    assert len(decoded) == 2  # the second run reads both vectors from the cache
    np.testing.assert_array_equal(read_feature_table(out).X, table.X)
    assert main([*argv[:1], "musicnn:MTT_vgg:taggram", *argv[2:]]) == 0
    assert len(decoded) == 4 and read_feature_table(out).X.shape == (2, 50)  # another layer is another key


def test_vgg_refuses_other_windows(tmp_path, capsys):
    (tmp_path / "music").mkdir()
    sf.write(tmp_path / "music" / "x.wav", np.zeros(16000, np.float32), 16000)
    argv = ["embed", "musicnn:MSD_vgg", str(tmp_path / "music"), "--out", str(tmp_path / "o.parquet"),
            "--window-seconds", "10"]
    assert main(argv) == 2
    assert "the VGG taggers take 187-frame patches only" in capsys.readouterr().err


def test_the_pipeline_takes_model_and_layer_from_params(tmp_path, capsys):
    (tmp_path / "music").mkdir()
    sf.write(tmp_path / "music" / "x.wav", (0.1 * np.random.default_rng(0).standard_normal(48000)).astype(np.float32),
             16000)
    params = tmp_path / "params.yaml"
    params.write_text("musicnn: {model: MTT_musicnn, layer: penultimate}\n")
    argv = ["embed", "musicnn", str(tmp_path / "music"), "--params", str(params), "--out", str(tmp_path / "o.parquet"),
            "--no-cache", "--quiet"]
    assert main(argv) == 0
    assert read_feature_table(tmp_path / "o.parquet").X.shape == (1, 200)
    params.write_text("musicnn: {model: MTT_vgg}\n")
    assert main(argv) == 0
    assert read_feature_table(tmp_path / "o.parquet").X.shape == (1, 256)
    params.write_text("musicnn: {model: MTT_vgg, layer: max_pool}\n")
    assert main(argv) != 0
    assert "MTT_vgg has no layer 'max_pool'" in capsys.readouterr().err
