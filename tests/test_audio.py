import argparse
import math
import os
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import soundfile as sf
import torch
import torchaudio

from cml.audio.files import open_audio
from cml.audio.mel import DECODE_ERRORS, LogMel, MelConfig, audio_info, iter_blocks, load_audio, track_logmel
from cml.data.scan import register_cli, scan_audio, write_skip_report

# (extension, soundfile format, subtype, sample rate the format accepts)
FORMATS = [
    ("wav", "WAV", "PCM_16", 44100),
    ("flac", "FLAC", "PCM_16", 44100),
    ("aiff", "AIFF", "PCM_16", 44100),
    ("ogg", "OGG", "VORBIS", 44100),
    ("opus", "OGG", "OPUS", 48000),
    ("mp3", "MP3", "MPEG_LAYER_III", 44100),
]
LOSSLESS = {"wav", "flac", "aiff"}


def sine(freq: float, seconds: float, sr: int, amp: float = 0.5) -> np.ndarray:
    return (amp * np.sin(2 * np.pi * freq * np.arange(round(seconds * sr)) / sr)).astype(np.float32)


def music(seconds: float, sr: int, channels: int = 1, seed: int = 0) -> np.ndarray:
    """Decaying harmonic notes plus a little noise: a cheap stand-in for real music."""
    rng = np.random.default_rng(seed)
    n = round(seconds * sr)
    x = np.zeros(n)
    for start in np.arange(0, seconds, 0.25):
        i, f0 = int(start * sr), rng.choice([220.0, 262.0, 330.0, 392.0, 440.0])
        t = np.arange(min(n - i, sr)) / sr  # a note has decayed to 0.25 % after 1 s
        x[i : i + len(t)] += np.exp(-6 * t) * sum(np.sin(2 * np.pi * f0 * k * t) / k for k in range(1, 5))
    x = 0.4 * x / np.abs(x).max() + 0.005 * rng.standard_normal(n)
    return np.stack([x, np.roll(x, 50)], 1)[:, :channels].squeeze().astype(np.float32)


def write(path, data, sr, fmt=None, subtype=None):
    """Write with soundfile, or skip the test naming the format this libsndfile cannot write."""
    fmt = fmt or path.suffix[1:].upper()
    if fmt not in sf.available_formats() or (subtype and subtype not in sf.available_subtypes(fmt)):
        pytest.skip(f"libsndfile here cannot write {fmt}/{subtype}")
    path.parent.mkdir(parents=True, exist_ok=True)
    sf.write(path, data, sr, format=fmt, subtype=subtype)
    return path


# ----------------------------------------------------------------------------------------------
# Reading


@pytest.mark.parametrize("ext, fmt, subtype, sr", FORMATS, ids=[f[0] for f in FORMATS])
def test_each_format_round_trips(tmp_path, ext, fmt, subtype, sr):
    x = music(2.0, sr)
    path = write(tmp_path / f"a.{ext}", x, sr, fmt, subtype)
    y = load_audio(path, sample_rate=sr).numpy()
    assert y.dtype == np.float32 and y.ndim == 1
    if ext in LOSSLESS:
        assert len(y) == len(x)
        np.testing.assert_allclose(y, x, atol=1e-4)  # 16-bit quantisation
    else:  # lossy codecs keep the length (gapless) and the waveform closely
        assert abs(len(y) - len(x)) <= 0.01 * sr
        m = min(len(x), len(y))
        assert np.corrcoef(x[:m], y[:m])[0, 1] > 0.95


def test_stereo_is_averaged_to_mono(tmp_path):
    left, right = sine(440, 1.0, 16000), sine(1000, 1.0, 16000, amp=0.3)
    path = write(tmp_path / "st.wav", np.stack([left, right], 1), 16000, subtype="FLOAT")
    np.testing.assert_allclose(load_audio(path, 16000).numpy(), (left + right) / 2, atol=1e-6)


def test_resampling_44k1_keeps_length_and_frequency(tmp_path):
    path = write(tmp_path / "s.wav", sine(1000, 2.0, 44100), 44100, subtype="FLOAT")
    y = load_audio(path, sample_rate=16000).numpy()
    assert len(y) == math.ceil(2.0 * 44100 * 16000 / 44100)
    spectrum = np.abs(np.fft.rfft(y))
    assert np.argmax(spectrum) * 16000 / len(y) == pytest.approx(1000, abs=1)


@pytest.mark.parametrize("ext, fmt, subtype", [("wav", "WAV", "FLOAT"), ("flac", "FLAC", "PCM_16"),
                                               ("ogg", "OGG", "VORBIS"), ("mp3", "MP3", "MPEG_LAYER_III")])
def test_offset_and_duration_read_the_right_samples(tmp_path, ext, fmt, subtype):
    # A pure tone is the hard case for MP3: its decoder needs the bit reservoir of earlier frames.
    x = np.stack([sine(440, 6.0, 44100), sine(660, 6.0, 44100)], 1)
    path = write(tmp_path / f"t.{ext}", x, 44100, fmt, subtype)
    full, _ = sf.read(path, dtype="float32", always_2d=True)
    full = full.mean(axis=1)
    for offset, duration in [(0.0, 0.5), (1.3, 0.25), (4.1, 1.0), (5.5, 2.0)]:
        crop = load_audio(path, sample_rate=44100, offset=offset, duration=duration).numpy()
        start = round(offset * 44100)
        expected = full[start : start + round(duration * 44100)]  # the last one runs past the end
        assert len(crop) == len(expected)
        np.testing.assert_allclose(crop, expected, atol=1e-6)


def test_crop_length_at_target_rate(tmp_path):
    path = write(tmp_path / "m.flac", music(3.0, 44100), 44100)
    assert load_audio(path, 16000, offset=0.77, duration=1.23).shape == (round(1.23 * 16000),)


def test_mp3_blocks_decode_like_one_shot_read(tmp_path):
    path = write(tmp_path / "tone.mp3", sine(440, 5.0, 44100), 44100)
    whole, _ = sf.read(path, dtype="float32")
    blocks = torch.cat(list(iter_blocks(path, block_seconds=0.2, sample_rate=44100))).numpy()
    np.testing.assert_allclose(blocks, whole, atol=1e-6)


@pytest.mark.parametrize("orig", [44100, 22050, 48000, 16000])
def test_iter_blocks_concatenate_to_full_resampled_read(tmp_path, orig):
    path = write(tmp_path / "m.flac", music(5.3, orig, channels=2), orig)
    full = load_audio(path, 16000)
    blocks = list(iter_blocks(path, block_seconds=0.7, sample_rate=16000))
    assert len(blocks) > 5
    torch.testing.assert_close(torch.cat(blocks), full, atol=1e-5, rtol=0)


# ----------------------------------------------------------------------------------------------
# Log-mel


def test_logmel_shape_and_dtype():
    cfg = MelConfig()
    wave = torch.randn(2, 3, 16000)
    out = LogMel(cfg)(wave)
    assert out.shape == (2, 3, cfg.n_mels, 1 + 16000 // cfg.hop_length)
    assert out.dtype == torch.float32
    assert torch.equal(out, LogMel(cfg)(wave))  # deterministic
    assert LogMel(cfg)(torch.zeros(100)).min() == pytest.approx(math.log(cfg.log_offset))


def test_logmel_matches_torchaudio_centred_zero_padded():
    cfg = MelConfig()
    reference = torchaudio.transforms.MelSpectrogram(
        cfg.sample_rate, n_fft=cfg.n_fft, hop_length=cfg.hop_length, n_mels=cfg.n_mels,
        f_min=cfg.f_min, f_max=cfg.f_max, center=True, pad_mode="constant",
    )
    wave = torch.from_numpy(music(1.37, cfg.sample_rate))
    torch.testing.assert_close(LogMel(cfg)(wave), torch.log(reference(wave) + cfg.log_offset))


def test_logmel_in_frame_chunks_equals_one_stft_to_the_last_bit():
    """The chunked FFT (`FRAME_CHUNK` frames at a time) is the same computation as one torch.stft."""
    from cml.audio.mel import FRAME_CHUNK

    cfg = MelConfig()
    logmel = LogMel(cfg)
    wave = torch.from_numpy(music(3 * FRAME_CHUNK * cfg.hop_length / cfg.sample_rate + 0.37, cfg.sample_rate))
    spec = torch.stft(wave, cfg.n_fft, cfg.hop_length, window=logmel.window, center=False, return_complex=True)
    power = spec.real.square() + spec.imag.square()
    expected = torch.log((power.T @ logmel.fbank).T + cfg.log_offset)
    assert expected.shape[-1] > 3 * FRAME_CHUNK  # several chunks and a partial one
    assert torch.equal(logmel.frames(wave), expected)


def test_sine_lights_up_the_right_mel_band():
    cfg = MelConfig()

    def hz_to_mel(f):  # HTK mel scale, as in the filterbank
        return 2595 * np.log10(1 + np.asarray(f) / 700)

    centres = 700 * (10 ** (np.linspace(hz_to_mel(cfg.f_min), hz_to_mel(cfg.f_max), cfg.n_mels + 2)[1:-1] / 2595) - 1)
    for freq in (200.0, 1000.0, 3000.0):
        mel = LogMel(cfg)(torch.from_numpy(sine(freq, 1.0, cfg.sample_rate)))
        assert int(mel.mean(dim=-1).argmax()) == int(np.argmin(np.abs(centres - freq)))


def test_track_logmel_equals_one_shot(tmp_path):
    path = write(tmp_path / "m.flac", music(7.3, 44100, channels=2), 44100)
    expected = LogMel(MelConfig())(load_audio(path, 16000))
    got = track_logmel(path, MelConfig(), block_seconds=0.9)
    assert got.shape == expected.shape
    torch.testing.assert_close(got, expected, atol=1e-3, rtol=0)


def test_track_logmel_max_frames_decodes_only_what_it_needs_and_gives_the_same_frames(tmp_path, monkeypatch):
    import cml.audio.mel

    path = write(tmp_path / "m.flac", music(7.3, 44100, channels=2), 44100)
    whole = track_logmel(path, MelConfig(), block_seconds=0.5)
    blocks = []
    real = cml.audio.mel.iter_blocks
    monkeypatch.setattr(cml.audio.mel, "iter_blocks", lambda *a, **k: (blocks.append(b) or b for b in real(*a, **k)))
    head = track_logmel(path, MelConfig(), block_seconds=0.5, max_frames=150)
    assert torch.equal(head, whole[:, :150])
    assert len(blocks) <= 4  # 1.5 s and the next block's look-ahead, not all 15 blocks
    assert torch.equal(track_logmel(path, MelConfig(), block_seconds=0.5, max_frames=10 ** 6), whole)


@pytest.mark.parametrize("seconds", [0.01, 0.0251, 0.5])
@pytest.mark.parametrize("block_seconds", [0.0001, 0.013, 0.1, 60.0])  # blocks of 2 samples .. whole track
def test_track_logmel_blocks_of_any_size_and_tracks_shorter_than_a_window(tmp_path, seconds, block_seconds):
    path = write(tmp_path / "tiny.wav", music(seconds, 16000), 16000, subtype="FLOAT")
    torch.testing.assert_close(track_logmel(path, block_seconds=block_seconds), LogMel()(load_audio(path)),
                               atol=1e-4, rtol=0)


# ----------------------------------------------------------------------------------------------
# Crops


# ----------------------------------------------------------------------------------------------
# Scanning


def build_tree(root):
    """Good files in label folders and directly under root, plus one of each kind of bad file."""
    good = {
        "rock/a.flac": ("rock", 2),
        "rock/live/b.wav": ("rock", 1),
        "jazz/c.ogg": ("jazz", 1),
        "jazz/d.mp3": ("jazz", 2),
        "loose.wav": (None, 1),
    }
    for i, (rel, (_, ch)) in enumerate(good.items()):
        write(root / rel, music(1.5, 22050, channels=ch, seed=i), 22050)
    flac = (root / "rock/a.flac").read_bytes()
    bad = {
        "rock/corrupt.wav": "not audio",
        "jazz/truncated.flac": "truncated",
        "jazz/empty.mp3": "empty",
        "notes.txt": "not an audio file",
        "rock/silent.flac": "silent",
        "rock/short.wav": "too short",
        "rock/a.wav": "duplicate id",
    }
    (root / "rock/corrupt.wav").write_bytes(np.random.default_rng(0).bytes(5000))
    (root / "jazz/truncated.flac").write_bytes(flac[: len(flac) // 2])
    (root / "jazz/empty.mp3").write_bytes(b"")
    (root / "notes.txt").write_text("not music\n")
    write(root / "rock/silent.flac", np.zeros(22050 * 2, np.float32), 22050)
    write(root / "rock/short.wav", music(0.5, 22050), 22050)
    write(root / "rock/a.wav", music(1.5, 22050), 22050)  # same id as rock/a.flac
    (root / ".DS_Store").write_bytes(b"\0\1junk")  # hidden: ignored by design
    return good, bad


def test_scan_audio_keeps_good_files_and_reports_every_bad_one(tmp_path):
    good, bad = build_tree(tmp_path)
    result = scan_audio(tmp_path, progress=False)
    tracks, skipped = result.tracks, result.skipped

    assert list(tracks.columns) == ["id", "path", "label", "duration", "sample_rate", "channels", "format"]
    expected_ids = sorted(rel.rsplit(".", 1)[0] for rel in good)
    assert tracks["id"].tolist() == expected_ids
    by_id = tracks.set_index("id")
    for rel, (label, ch) in good.items():
        row = by_id.loc[rel.rsplit(".", 1)[0]]
        assert (row["label"] if label else None) == label or (label is None and pd.isna(row["label"]))
        assert row["channels"] == ch and row["sample_rate"] == 22050
        assert row["duration"] == pytest.approx(1.5, abs=0.01)
        assert os.path.samefile(row["path"], tmp_path / rel)
    assert by_id.loc["jazz/d", "format"].startswith("MP3")

    reasons = {os.path.relpath(p, tmp_path): r for p, r in zip(skipped["path"], skipped["reason"])}
    assert set(reasons) == set(bad)  # every bad file, nothing else (.DS_Store is hidden)
    for rel, fragment in bad.items():
        assert fragment in reasons[rel], (rel, reasons[rel])
        assert "\n" not in reasons[rel]


def test_scan_audio_is_deterministic_and_survives_symlink_loops(tmp_path):
    write(tmp_path / "a/x.wav", music(1.2, 16000), 16000)
    os.symlink(tmp_path / "a", tmp_path / "a/loop")
    result = scan_audio(tmp_path, progress=False)
    assert result.tracks["id"].tolist() == ["a/x"]
    assert "already scanned" in result.skipped["reason"].iloc[0]
    assert scan_audio(tmp_path, progress=False).tracks.equals(result.tracks)


def test_scan_audio_reports_unreadable_folder(tmp_path, monkeypatch):
    write(tmp_path / "ok/x.wav", music(1.2, 16000), 16000)
    locked = tmp_path / "locked"
    write(locked / "y.wav", music(1.2, 16000), 16000)
    locked.chmod(0)
    if os.access(locked, os.R_OK):  # root reads a chmod 000 folder: let listing it fail as it would for a user
        real_scandir = os.scandir

        def scandir(path="."):
            if Path(path) == locked:
                raise PermissionError(13, "Permission denied", str(path))
            return real_scandir(path)

        monkeypatch.setattr(os, "scandir", scandir)
    try:
        result = scan_audio(tmp_path, progress=False)
    finally:
        locked.chmod(0o755)
    assert result.tracks["id"].tolist() == ["ok/x"]
    assert result.skipped["path"].tolist() == [str(locked)]
    assert "unreadable folder" in result.skipped["reason"].iloc[0]


def test_scan_audio_missing_root_raises_clearly(tmp_path):
    with pytest.raises(NotADirectoryError, match="not found"):
        scan_audio(tmp_path / "nope", progress=False)


def test_skip_report_and_cli(tmp_path, capsys):
    good, bad = build_tree(tmp_path / "audio")
    report, out = tmp_path / "rep/skipped.csv", tmp_path / "tracks.csv"
    write_skip_report(scan_audio(tmp_path / "audio", progress=False).skipped, report)
    rows = pd.read_csv(report)
    assert list(rows.columns) == ["id", "path", "reason"] and rows["id"].isna().all() and len(rows) == len(bad)

    parser = argparse.ArgumentParser(prog="cml")
    register_cli(parser.add_subparsers())
    args = parser.parse_args(["scan", str(tmp_path / "audio"), "--report", str(report), "--out", str(out)])
    assert args.func(args) == 0
    stdout = capsys.readouterr().out
    assert f"{len(good)} tracks" in stdout and f"{len(bad)} skipped" in stdout
    assert len(pd.read_csv(out)) == len(good)


# --------------------------------------------------------------------------------------------------
# A path that is no audio file says so (libsndfile says "System error" for all of these)


@pytest.mark.parametrize("read", [
    lambda p: audio_info(p),
    lambda p: load_audio(p),
    lambda p: load_audio(p, offset=1.0, duration=0.5),
    lambda p: list(iter_blocks(p, 1.0, 16000)),
    lambda p: track_logmel(p),
    lambda p: open_audio(p),
], ids=["audio_info", "load_audio", "load_audio_crop", "iter_blocks", "track_logmel", "open_audio"])
def test_a_missing_file_is_no_such_file_not_a_system_error(tmp_path, read):
    missing = tmp_path / "gone.ogg"
    with pytest.raises(FileNotFoundError, match=r"^no such file: .*gone\.ogg$") as err:
        read(missing)
    assert isinstance(err.value, DECODE_ERRORS)  # callers that skip-and-report still catch it


def test_a_folder_or_an_unreadable_file_says_which(tmp_path, monkeypatch):
    with pytest.raises(IsADirectoryError, match="a folder, not an audio file"):
        open_audio(tmp_path)
    locked = tmp_path / "locked.wav"
    write(locked, music(1.2, 16000), 16000)

    def refuse(*args, **kwargs):  # what libsndfile raises for an unreadable file (root reads anything: faked)
        raise sf.LibsndfileError(2, "System error")

    monkeypatch.setattr(sf, "SoundFile", refuse)
    monkeypatch.setattr(os, "access", lambda *args, **kwargs: False)
    with pytest.raises(PermissionError, match="not readable"):
        open_audio(locked)


def test_scan_says_no_such_file_for_a_file_gone_since_the_listing_and_broken_symlink_for_a_link(tmp_path, monkeypatch):
    import cml.data.scan

    write(tmp_path / "a/x.wav", music(1.2, 16000), 16000)
    write(tmp_path / "a/gone.wav", music(1.2, 16000), 16000)
    os.symlink(tmp_path / "nowhere.wav", tmp_path / "a/link.wav")
    real_walk = cml.data.scan._walk

    def walk_then_delete(root, skip):
        files = real_walk(root, skip)
        (tmp_path / "a/gone.wav").unlink()  # removed while the scan runs
        return files

    monkeypatch.setattr(cml.data.scan, "_walk", walk_then_delete)
    result = scan_audio(tmp_path, progress=False)
    reasons = {Path(p).name: r for p, r in zip(result.skipped["path"], result.skipped["reason"])}
    assert result.tracks["id"].tolist() == ["a/x"]
    assert reasons == {"gone.wav": "no such file (gone since the folder was listed)", "link.wav": "broken symlink"}
