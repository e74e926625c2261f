"""cml.audio: decoding every format (soundfile), resampling, reading a crop, and the log-mel front end."""
import math
import os

import numpy as np
import pytest
import soundfile as sf
import torch
import torchaudio

from cml.audio.files import open_audio
from cml.audio.mel import DECODE_ERRORS, LogMel, MelConfig, audio_info, iter_blocks, load_audio, track_logmel
from tests.helpers import music, sine, write_audio

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


# ----------------------------------------------------------------------------------------------
# Reading


@pytest.mark.parametrize("ext, fmt, subtype, sr", FORMATS, ids=[f[0] for f in FORMATS])
def test_each_format_round_trips(tmp_path, ext, fmt, subtype, sr):
    x = music(2.0, sr)
    path = write_audio(tmp_path / f"a.{ext}", x, sr, fmt, subtype)
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
    path = write_audio(tmp_path / "st.wav", np.stack([left, right], 1), 16000, subtype="FLOAT")
    np.testing.assert_allclose(load_audio(path, 16000).numpy(), (left + right) / 2, atol=1e-6)


def test_resampling_44k1_keeps_length_and_frequency(tmp_path):
    path = write_audio(tmp_path / "s.wav", sine(1000, 2.0, 44100), 44100, subtype="FLOAT")
    y = load_audio(path, sample_rate=16000).numpy()
    assert len(y) == math.ceil(2.0 * 44100 * 16000 / 44100)
    spectrum = np.abs(np.fft.rfft(y))
    assert np.argmax(spectrum) * 16000 / len(y) == pytest.approx(1000, abs=1)


@pytest.mark.parametrize("ext, fmt, subtype", [("wav", "WAV", "FLOAT"), ("flac", "FLAC", "PCM_16"),
                                               ("ogg", "OGG", "VORBIS"), ("mp3", "MP3", "MPEG_LAYER_III")])
def test_offset_and_duration_read_the_right_samples(tmp_path, ext, fmt, subtype):
    # A pure tone is the hard case for MP3: its decoder needs the bit reservoir of earlier frames.
    x = np.stack([sine(440, 6.0, 44100), sine(660, 6.0, 44100)], 1)
    path = write_audio(tmp_path / f"t.{ext}", x, 44100, fmt, subtype)
    full, _ = sf.read(path, dtype="float32", always_2d=True)
    full = full.mean(axis=1)
    for offset, duration in [(0.0, 0.5), (1.3, 0.25), (4.1, 1.0), (5.5, 2.0)]:
        crop = load_audio(path, sample_rate=44100, offset=offset, duration=duration).numpy()
        start = round(offset * 44100)
        expected = full[start : start + round(duration * 44100)]  # the last one runs past the end
        assert len(crop) == len(expected)
        np.testing.assert_allclose(crop, expected, atol=1e-6)


def test_crop_length_at_target_rate(tmp_path):
    path = write_audio(tmp_path / "m.flac", music(3.0, 44100), 44100)
    assert load_audio(path, 16000, offset=0.77, duration=1.23).shape == (round(1.23 * 16000),)


def test_mp3_blocks_decode_like_one_shot_read(tmp_path):
    path = write_audio(tmp_path / "tone.mp3", sine(440, 5.0, 44100), 44100)
    whole, _ = sf.read(path, dtype="float32")
    blocks = torch.cat(list(iter_blocks(path, block_seconds=0.2, sample_rate=44100))).numpy()
    np.testing.assert_allclose(blocks, whole, atol=1e-6)


@pytest.mark.parametrize("orig", [44100, 22050, 48000, 16000])
def test_iter_blocks_concatenate_to_full_resampled_read(tmp_path, orig):
    path = write_audio(tmp_path / "m.flac", music(5.3, orig, channels=2), orig)
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
    path = write_audio(tmp_path / "m.flac", music(7.3, 44100, channels=2), 44100)
    expected = LogMel(MelConfig())(load_audio(path, 16000))
    got = track_logmel(path, MelConfig(), block_seconds=0.9)
    assert got.shape == expected.shape
    torch.testing.assert_close(got, expected, atol=1e-3, rtol=0)


def test_track_logmel_max_frames_decodes_only_what_it_needs_and_gives_the_same_frames(tmp_path, monkeypatch):
    import cml.audio.mel

    path = write_audio(tmp_path / "m.flac", music(7.3, 44100, channels=2), 44100)
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
    path = write_audio(tmp_path / "tiny.wav", music(seconds, 16000), 16000, subtype="FLOAT")
    torch.testing.assert_close(track_logmel(path, block_seconds=block_seconds), LogMel()(load_audio(path)),
                               atol=1e-4, rtol=0)


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
    write_audio(locked, music(1.2, 16000), 16000)

    def refuse(*args, **kwargs):  # what libsndfile raises for an unreadable file (root reads anything: faked)
        raise sf.LibsndfileError(2, "System error")

    monkeypatch.setattr(sf, "SoundFile", refuse)
    monkeypatch.setattr(os, "access", lambda *args, **kwargs: False)
    with pytest.raises(PermissionError, match="not readable"):
        open_audio(locked)
