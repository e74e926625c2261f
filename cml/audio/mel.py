"""Audio front end: decode audio files, crop them and turn them into log-mel spectrograms.

Decoding uses soundfile (libsndfile: wav, aiff, flac, ogg/vorbis, opus, mp3), resampling soxr (high quality;
its stream resamples block by block exactly as in one call, and 4x faster than torchaudio's sinc resampler);
torchaudio is used only for the mel filterbank (its audio I/O moved to torchcodec, which this project does not use).
Every reader streams from disk, so the cost of a crop is the crop, not the track, and a 20-minute track
never has to be in memory at its native rate. Finding usable files under a folder is `cml.data.scan` (no torch).
"""

from __future__ import annotations

import functools
import math
import os
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Optional

import numpy as np
import soundfile as sf
import soxr
import torch
import torchaudio

from cml.audio.files import check_audio_path, iter_frames, open_audio, read_frames

# An MP3 seek lands with an empty bit reservoir, so the first frames after it decode as silence or
# garbage. Decoding this many MPEG frames (1152 samples each) before the target makes a seek exact
# (8 sufficed for low-bitrate pure tones in our tests; 16 leaves a margin).
_MP3_PREROLL_FRAMES = 16 * 1152
# libsndfile misplaces a Vorbis seek that lands in the last Ogg page by the page's end trim (168
# samples in our tests, pages spanning up to 0.6 s), so a read that starts within this many seconds of
# the end seeks to before the tail instead and decodes forward.
_VORBIS_TAIL_SECONDS = 10.0


# --------------------------------------------------------------------------------------------------
# Low-level reading


def _seek(f: sf.SoundFile, start: int) -> int:
    """Seek so that the next read is exact at `start`; return how many frames to discard first."""
    target = start
    if f.format == "MP3":
        target = start - _MP3_PREROLL_FRAMES
    elif f.subtype == "VORBIS":
        target = min(start, f.frames - round(_VORBIS_TAIL_SECONDS * f.samplerate))
    target = max(0, target)
    f.seek(target)
    return start - target


def _mono(block: np.ndarray) -> np.ndarray:
    """Down-mix (n, channels) to (n,) by averaging channels (a matmul: 15x faster than mean(axis=1))."""
    channels = block.shape[1]
    return block[:, 0] if channels == 1 else block @ np.full(channels, 1 / channels, np.float32)


RESAMPLE_QUALITY = "HQ"  # soxr's high quality, as the soundtracks corpus is transcoded


def _resample(wave: np.ndarray, orig: int, new: int) -> torch.Tensor:
    if orig == new or len(wave) == 0:
        return torch.from_numpy(wave)
    return torch.from_numpy(soxr.resample(wave, orig, new, quality=RESAMPLE_QUALITY))


# What decoding one file can raise: libsndfile errors (RuntimeError), a file gone or unreadable (OSError),
# a track too long for memory (MemoryError).
DECODE_ERRORS = (OSError, RuntimeError, MemoryError)


# --------------------------------------------------------------------------------------------------
# Loading and cropping


def audio_info(path: str | os.PathLike) -> sf._SoundFileInfo:
    """The header of an audio file (format, rate, frames); raises one of DECODE_ERRORS when unusable."""
    try:
        return sf.info(str(path))
    except sf.LibsndfileError:
        check_audio_path(path)  # "no such file: PATH", not libsndfile's "System error"
        raise


def load_audio(
    path: str | os.PathLike,
    sample_rate: int = 16000,
    offset: float = 0.0,
    duration: float | None = None,
) -> torch.Tensor:
    """Mono float32 (n,) at `sample_rate`, reading only [offset, offset + duration) seconds from disk.

    Channels are averaged. With `duration`, n = round(duration * sample_rate) unless the file ends
    first. A cropped read is resampled on its own, so its edges can differ slightly from the same
    span of a resampled full read; use `iter_blocks` where exact agreement matters.
    """
    with open_audio(path) as f:
        start = min(max(0, round(offset * f.samplerate)), f.frames)
        frames = f.frames - start if duration is None else round(duration * f.samplerate)
        preroll = _seek(f, start)
        native = _mono(read_frames(f, preroll + frames)[preroll:])
        wave = _resample(native, f.samplerate, sample_rate)
    if duration is not None:
        wave = wave[: round(duration * sample_rate)]
    return wave


def iter_blocks(path: str | os.PathLike, block_seconds: float, sample_rate: int) -> Iterator[torch.Tensor]:
    """Yield a track as consecutive mono float32 blocks at `sample_rate`, about `block_seconds` long.

    The blocks concatenate to `load_audio(path, sample_rate)`: soxr's stream keeps the filter state from
    one block to the next, so block edges leave no trace.
    """
    if block_seconds <= 0:
        raise ValueError(f"block_seconds must be positive, got {block_seconds}")
    with open_audio(path) as f:
        orig = f.samplerate
        stream = None if orig == sample_rate else soxr.ResampleStream(orig, sample_rate, 1, dtype="float32",
                                                                       quality=RESAMPLE_QUALITY)
        blocks = iter_frames(f, max(1, round(block_seconds * orig)))
        block = next(blocks, None)
        while block is not None:
            after = next(blocks, None)
            mono = _mono(block)
            yield torch.from_numpy(mono if stream is None else stream.resample_chunk(mono, last=after is None))
            block = after


# --------------------------------------------------------------------------------------------------
# Log-mel features


FRAME_CHUNK = 128  # log-mel frames per FFT batch: a chunk's spectrogram fits the CPU cache
COMPRESSIONS = {  # mel power -> features
    "ln": lambda power, config: torch.log(power + config.log_offset),
    "log10_1p_1e4": lambda power, config: torch.log10(1 + 10000 * power),
}


@dataclass(frozen=True)
class MelConfig:
    """Log-mel parameters; frozen so a config can key caches and be stored with a checkpoint."""

    sample_rate: int = 16000  # Hz; every track is resampled to this
    n_fft: int = 2048  # 128 ms window: 7.8 Hz bins separate the partials of neighbouring semitones from
    #   ~130 Hz up; a 25 ms window (400, 40 Hz bins) blurs them below ~700 Hz, where most melodies and
    #   all bass lines lie, and the encoders learned less style from it
    hop_length: int = 160  # 10 ms hop: 100 frames per second
    n_mels: int = 64  # mel bands
    f_min: float = 30.0  # Hz; below is rumble and DC offset, not music
    f_max: float = 8000.0  # Hz; Nyquist at 16 kHz
    log_offset: float = 1e-6  # features are ln(mel power + log_offset): digital silence -> about -13.8
    mel_scale: str = "htk"  # or "slaney" (librosa's default), for models trained on that front end
    mel_norm: Optional[str] = None  # or "slaney": each triangle scaled to unit area
    compression: str = "ln"  # ln(power + log_offset); "log10_1p_1e4": log10(1 + 10000 power), musicnn's

    def __post_init__(self) -> None:
        if self.compression not in COMPRESSIONS:
            raise ValueError(f"compression must be one of {sorted(COMPRESSIONS)}, got {self.compression!r}")

    @property
    def floor(self) -> float:
        """The feature value of zero power (digital silence)."""
        return float(COMPRESSIONS[self.compression](torch.zeros(()), self))

    def frames(self, seconds: float) -> int:
        """Log-mel frames in `seconds` of audio: the one seconds -> frames conversion."""
        return round(seconds * self.sample_rate / self.hop_length)

    def seconds(self, frames: int) -> float:
        """Seconds of audio that `frames` log-mel frames cover (hop by hop)."""
        return frames * self.hop_length / self.sample_rate


def centre_offset(total: float, length: float) -> float:
    """Where a centred excerpt of `length` starts in `total` (seconds, or frames: int() of it); 0 if it does not fit."""
    return max(0.0, (total - length) / 2)


class LogMel(torch.nn.Module):
    """Log mel power spectrogram: (..., n) waveform -> (..., n_mels, 1 + n // hop_length).

    The numbers of torchaudio's `MelSpectrogram` (Hann window, power 2, the config's mel scale and
    filterbank norm; tested equal), then ln(power + log_offset) (or the config's compression); the power is re^2 + im^2, which skips the square
    root and the square of |z|^2 on the 1025 x frames spectrogram of the 2048-point STFT. Frames are
    centred (frame t covers t * hop_length +- n_fft / 2) with zero padding at both ends rather than
    reflection, so any length works and a track computed block by block (`track_logmel`) is the same
    computation. Deterministic: no dropout, no dithering.
    """

    def __init__(self, config: MelConfig = MelConfig()) -> None:
        super().__init__()
        self.config = config
        self.register_buffer("window", torch.hann_window(config.n_fft), persistent=False)
        fbank = torchaudio.functional.melscale_fbanks(config.n_fft // 2 + 1, config.f_min, config.f_max,
                                                      config.n_mels, config.sample_rate, norm=config.mel_norm,
                                                      mel_scale=config.mel_scale)
        self.register_buffer("fbank", fbank, persistent=False)  # (n_fft / 2 + 1, n_mels)

    def frames(self, wave: torch.Tensor) -> torch.Tensor:
        """Log-mel of every full n_fft window of `wave` (..., n), without padding.

        The windows are transformed FRAME_CHUNK at a time: a chunk's spectrogram stays in the CPU cache
        instead of making three passes over an (F x T) array in memory, 3-5x faster on a long track and
        equal to `torch.stft` to the last bit (tested).
        """
        lead = wave.shape[:-1]
        windows = wave.reshape(-1, wave.shape[-1]).unfold(-1, self.config.n_fft, self.config.hop_length)  # (B, T, n_fft)
        mel = torch.cat([self._mel_power(chunk) for chunk in windows.split(FRAME_CHUNK, dim=1)], dim=1)  # (B, T, n_mels)
        features = COMPRESSIONS[self.config.compression](mel, self.config)
        return features.transpose(-1, -2).reshape(*lead, self.config.n_mels, -1)

    def _mel_power(self, windows: torch.Tensor) -> torch.Tensor:
        """(..., T, n_fft) waveform windows -> (..., T, n_mels) mel power."""
        spec = torch.view_as_real(torch.fft.rfft(windows * self.window))  # (..., T, F, 2)
        return (spec[..., 0].square() + spec[..., 1].square()) @ self.fbank

    def forward(self, wave: torch.Tensor) -> torch.Tensor:
        pad = self.config.n_fft // 2
        return self.frames(torch.nn.functional.pad(wave, (pad, pad)))


@functools.lru_cache(maxsize=8)
def _logmel(config: MelConfig) -> LogMel:
    return LogMel(config)


@torch.inference_mode()
def track_logmel(path: str | os.PathLike, mel_config: MelConfig = MelConfig(), block_seconds: float = 60.0,
                 max_frames: int | None = None) -> torch.Tensor:
    """Log-mel (n_mels, frames) of a whole track, equal to `LogMel()(load_audio(path))` up to float error.

    Works block by block: memory is one block plus the output (about 25 KiB per second of audio at
    the defaults), whatever the track length. Windows that straddle two blocks are computed from a
    short junction (the previous block's tail + the start of the next), so big blocks are never
    copied. `max_frames`: only the first frames, decoding no further than they need (the same values).
    """
    logmel = _logmel(mel_config)
    n_fft, hop = mel_config.n_fft, mel_config.hop_length
    tail = torch.zeros(n_fft // 2)  # samples where the next window starts; first the left padding
    out = []

    def windows(wave: torch.Tensor) -> int:
        """Number of full windows in wave."""
        return 0 if len(wave) < n_fft else (len(wave) - n_fft) // hop + 1

    def add(block: torch.Tensor) -> None:
        nonlocal tail
        in_tail = math.ceil(len(tail) / hop)  # windows that start in the tail
        junction = torch.cat([tail, block[:n_fft]])
        k = min(in_tail, windows(junction))
        if k:
            out.append(logmel.frames(junction[: (k - 1) * hop + n_fft]))
        start = k * hop - len(tail)  # where the next window starts in block
        if k < in_tail or start > len(block):  # block too short to reach past the tail
            tail = torch.cat([tail, block])[k * hop :]
            return
        rest = block[start:]
        m = windows(rest)
        if m:
            out.append(logmel.frames(rest[: (m - 1) * hop + n_fft]))
        tail = rest[m * hop :].clone()

    for block in iter_blocks(path, block_seconds, mel_config.sample_rate):
        add(block)
        if max_frames is not None and sum(x.shape[-1] for x in out) >= max_frames:
            return torch.cat(out, dim=-1)[:, :max_frames]
    add(torch.zeros(n_fft // 2))  # right padding
    return torch.cat(out, dim=-1)[:, :max_frames]
