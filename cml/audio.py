"""Audio front end: find audio files, decode them, crop them and turn them into log-mel spectrograms.

Decoding uses soundfile (libsndfile: wav, aiff, flac, ogg/vorbis, opus, mp3); torchaudio is used only
for resampling and the mel filterbank (its `load` needs torchcodec, which this project does not use).
Every reader streams from disk, so the cost of a crop is the crop, not the track, and a 20-minute track
never has to be in memory at its native rate.
"""

from __future__ import annotations

import argparse
import functools
import logging
import math
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import soundfile as sf
import torch
import torchaudio
from tqdm.auto import tqdm

from cml.errors import UsageError, check_output, finite, one_line, positive

log = logging.getLogger(__name__)

AUDIO_EXTENSIONS = (".wav", ".wave", ".flac", ".ogg", ".oga", ".opus", ".mp3", ".aif", ".aiff")

_BLOCK_FRAMES = 1 << 16  # frames per read while scanning: bounded memory for any track length
# An MP3 seek lands with an empty bit reservoir, so the first frames after it decode as silence or
# garbage. Decoding this many MPEG frames (1152 samples each) before the target makes a seek exact
# (8 sufficed for low-bitrate pure tones in our tests; 16 leaves a margin).
_MP3_PREROLL_FRAMES = 16 * 1152
# libsndfile misplaces a Vorbis seek that lands in the last Ogg page by the page's end trim (168
# samples in our tests, pages spanning up to 0.6 s), so a read that starts within this many seconds of
# the end seeks to before the tail instead and decodes forward.
_VORBIS_TAIL_SECONDS = 10.0
# mpg123's idea of the length can be off by an MPEG frame or two (encoder delay and padding), so
# only a larger shortfall counts as truncation.
_MP3_LENGTH_SLACK = 2 * 1152
# Valid Ogg Vorbis/Opus files often decode a few milliseconds short of the length their header
# promises (the last page's granule position counts samples that end trimming removes); real
# truncation loses whole pages (seconds), so a shortfall up to this is accepted.
_OGG_LENGTH_SLACK_SECONDS = 0.1
# libsndfile's messages when it cannot tell the data apart from any format it knows (for an .mp3 it
# says "does not exist" even for a regular file); the scan reports such a file as "not audio".
_NOT_AUDIO_ERRORS = ("not recognised", "does not exist", "unknown format", "unsupported format")


# --------------------------------------------------------------------------------------------------
# Low-level reading


def _read_frames(f: sf.SoundFile, frames: int) -> np.ndarray:
    """Read up to `frames` frames at the current position as float32 (n, channels).

    Calls libsndfile directly instead of `SoundFile.read`: python-soundfile (0.14, `_cdata_io`)
    seeks to tell() + n after every read, and for MP3 that seek empties mpg123's bit reservoir, so
    each following block of a low-bitrate file starts with up to ~2000 samples of silence (and
    mpg123 prints "part2_3_length ... too large", as in python-soundfile issue #402). Sequential C
    reads decode every format exactly as a one-shot read does.
    """
    out = np.empty((max(frames, 0), f.channels), dtype=np.float32)
    done = 0
    while done < frames:
        ptr = sf._ffi.cast("float *", sf._ffi.from_buffer(out[done:]))
        got = sf._snd.sf_readf_float(f._file, ptr, frames - done)
        err = sf._snd.sf_error(f._file)
        if err:
            raise sf.LibsndfileError(err, f"Error decoding {f.name!r} after {done} frames: ")
        if got <= 0:
            break
        done += got
    return out[:done]


def _iter_frames(f: sf.SoundFile, block_frames: int) -> Iterator[np.ndarray]:
    """Yield consecutive float32 (n, channels) blocks of a freshly opened file.

    Requests never exceed the frames left according to the header (libsndfile returns no more
    than that anyway): allocating a whole block for a short remainder made extraction 30 % slower.
    """
    left = f.frames
    while left > 0:
        block = _read_frames(f, min(block_frames, left))
        if len(block) == 0:
            return
        left -= len(block)
        yield block


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


@functools.lru_cache(maxsize=32)
def _resampler(orig: int, new: int) -> torchaudio.transforms.Resample:
    """torchaudio resampler with its sinc kernel computed once per (orig, new) rate pair."""
    return torchaudio.transforms.Resample(orig, new)


def _resample(wave: np.ndarray, orig: int, new: int) -> torch.Tensor:
    x = torch.from_numpy(wave)
    return x if orig == new or len(x) == 0 else _resampler(orig, new)(x)


# What decoding one file can raise: libsndfile errors (RuntimeError), a file gone or unreadable (OSError),
# a track too long for memory (MemoryError).
DECODE_ERRORS = (OSError, RuntimeError, MemoryError)


# --------------------------------------------------------------------------------------------------
# Loading and cropping


def audio_info(path: str | os.PathLike) -> sf._SoundFileInfo:
    """The header of an audio file (format, rate, frames); raises one of DECODE_ERRORS when unusable."""
    return sf.info(str(path))


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
    with sf.SoundFile(path) as f:
        start = min(max(0, round(offset * f.samplerate)), f.frames)
        frames = f.frames - start if duration is None else round(duration * f.samplerate)
        preroll = _seek(f, start)
        native = _mono(_read_frames(f, preroll + frames)[preroll:])
        wave = _resample(native, f.samplerate, sample_rate)
    if duration is not None:
        wave = wave[: round(duration * sample_rate)]
    return wave


def iter_blocks(path: str | os.PathLike, block_seconds: float, sample_rate: int) -> Iterator[torch.Tensor]:
    """Yield a track as consecutive mono float32 blocks at `sample_rate`, about `block_seconds` long.

    The blocks concatenate to `load_audio(path, sample_rate)` up to float error: each native block is
    resampled with enough real neighbouring samples on both sides to cover the sinc kernel, and block
    starts are aligned to the resampler's period, so block edges leave no trace.
    """
    if block_seconds <= 0:
        raise ValueError(f"block_seconds must be positive, got {block_seconds}")
    with sf.SoundFile(path) as f:
        orig = f.samplerate
        if orig == sample_rate:
            for block in _iter_frames(f, max(1, round(block_seconds * orig))):
                yield torch.from_numpy(_mono(block))
            return
        resampler = _resampler(orig, sample_rate)
        period_in, period_out = orig // resampler.gcd, sample_rate // resampler.gcd
        context = period_in * math.ceil((resampler.width + 1) / period_in)  # native samples per side
        size = max(context, period_in * math.ceil(block_seconds * orig / period_in))
        blocks = (_mono(b) for b in _iter_frames(f, size))
        prev, cur = np.zeros(0, np.float32), next(blocks, None)
        consumed = 0  # native samples before `cur`, always a multiple of period_in
        while cur is not None:
            nxt = next(blocks, None)
            left = prev[len(prev) - min(context, len(prev)) :]
            right = nxt[:context] if nxt is not None else np.zeros(0, np.float32)
            out = resampler(torch.from_numpy(np.concatenate([left, cur, right])))
            skip = len(left) // period_in * period_out
            keep = math.ceil((consumed + len(cur)) * period_out / period_in) - consumed // period_in * period_out
            yield out[skip : skip + keep]
            consumed += len(cur)
            prev, cur = cur, nxt


# --------------------------------------------------------------------------------------------------
# Log-mel features


@dataclass(frozen=True)
class MelConfig:
    """Log-mel parameters; frozen so a config can key caches and be stored with a checkpoint."""

    sample_rate: int = 16000  # Hz; every track is resampled to this
    n_fft: int = 2048  # 128 ms window: 7.8 Hz bins separate the partials of neighbouring semitones from
    #   ~130 Hz up; a 25 ms window (400, 40 Hz bins) blurs them below ~700 Hz, where most melodies and
    #   all bass lines lie, and the encoders learned less style from it (README, "What changed the numbers")
    hop_length: int = 160  # 10 ms hop: 100 frames per second
    n_mels: int = 64  # mel bands (HTK scale)
    f_min: float = 30.0  # Hz; below is rumble and DC offset, not music
    f_max: float = 8000.0  # Hz; Nyquist at 16 kHz
    log_offset: float = 1e-6  # features are ln(mel power + log_offset): digital silence -> about -13.8


class LogMel(torch.nn.Module):
    """Natural-log mel power spectrogram: (..., n) waveform -> (..., n_mels, 1 + n // hop_length).

    The numbers of torchaudio's `MelSpectrogram` (Hann window, power 2, HTK mel scale, no filterbank
    norm; tested equal), then ln(power + log_offset); the power is re^2 + im^2, which skips the square
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
                                                      config.n_mels, config.sample_rate, norm=None, mel_scale="htk")
        self.register_buffer("fbank", fbank, persistent=False)  # (n_fft / 2 + 1, n_mels)

    def frames(self, wave: torch.Tensor) -> torch.Tensor:
        """Log-mel of every full n_fft window of `wave` (..., n), without padding."""
        lead = wave.shape[:-1]
        spec = torch.stft(wave.reshape(-1, wave.shape[-1]), self.config.n_fft, self.config.hop_length,
                          window=self.window, center=False, return_complex=True)  # (B, F, T)
        power = spec.real.square() + spec.imag.square()
        mel = (power.transpose(-1, -2) @ self.fbank).transpose(-1, -2)  # (B, n_mels, T)
        return torch.log(mel + self.config.log_offset).reshape(*lead, self.config.n_mels, -1)

    def forward(self, wave: torch.Tensor) -> torch.Tensor:
        pad = self.config.n_fft // 2
        return self.frames(torch.nn.functional.pad(wave, (pad, pad)))


@functools.lru_cache(maxsize=8)
def _logmel(config: MelConfig) -> LogMel:
    return LogMel(config)


@torch.inference_mode()
def track_logmel(path: str | os.PathLike, mel_config: MelConfig = MelConfig(), block_seconds: float = 60.0) -> torch.Tensor:
    """Log-mel (n_mels, frames) of a whole track, equal to `LogMel()(load_audio(path))` up to float error.

    Works block by block: memory is one block plus the output (about 25 KiB per second of audio at
    the defaults), whatever the track length. Windows that straddle two blocks are computed from a
    short junction (the previous block's tail + the start of the next), so big blocks are never
    copied.
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
    add(torch.zeros(n_fft // 2))  # right padding
    return torch.cat(out, dim=-1)


# --------------------------------------------------------------------------------------------------
# Scanning a folder tree


@dataclass
class ScanResult:
    """What `scan_audio` found: usable tracks and every file it skipped, with the reason."""

    tracks: pd.DataFrame  # id, path, label, duration, sample_rate, channels, format
    skipped: pd.DataFrame  # path, reason


TRACK_COLUMNS = ["id", "path", "label", "duration", "sample_rate", "channels", "format"]
SKIP_COLUMNS = ["path", "reason"]


def _walk(root: Path, skip: list[dict]) -> list[Path]:
    """Sorted candidate files under root, following symlinks but never into a folder twice.

    Unreadable folders and folders reached a second time (a symlink loop or a second link to the
    same folder) are recorded in `skip`. Hidden files and folders (name starting with '.') are
    ignored silently: they are OS or tool metadata (.DS_Store, ._AppleDouble, .git), not music.
    """

    def on_error(err: OSError) -> None:
        skip.append({"path": str(err.filename), "reason": f"unreadable folder: {err.strerror}"})

    seen: set[tuple[int, int]] = set()
    files = []
    for folder, dirs, names in os.walk(root, onerror=on_error, followlinks=True):
        st = os.stat(folder)
        if (st.st_dev, st.st_ino) in seen:
            skip.append({"path": folder, "reason": "folder already scanned (symlink loop or duplicate link)"})
            dirs[:] = []
            continue
        seen.add((st.st_dev, st.st_ino))
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        files += [Path(folder) / n for n in sorted(names) if not n.startswith(".")]
    return files


def _length_slack(f: sf.SoundFile) -> int:
    """Frames a complete file of this format may decode short of its header's count."""
    if f.format == "MP3":
        return _MP3_LENGTH_SLACK
    if f.format == "OGG":
        return round(_OGG_LENGTH_SLACK_SECONDS * f.samplerate)
    return 0


def _probe(path: Path, min_duration: float, silence_db: float) -> dict | str:
    """Track metadata after decoding the whole file in blocks, or the one-line reason to skip it."""
    if path.suffix.lower() not in AUDIO_EXTENSIONS:
        return f"not an audio file (extension {path.suffix or 'none'!r})"
    if not path.exists():
        return "broken symlink"
    if path.stat().st_size == 0:
        return "empty file (0 bytes)"
    if not os.access(path, os.R_OK):
        return "unreadable: permission denied"
    if any(ord(c) < 32 or ord(c) == 127 for c in str(path)):
        return "file name holds a control character (newline, tab, ...): rename the file"
    try:
        with sf.SoundFile(path) as f:
            if f.frames == 0:
                return "no audio frames"
            if f.frames < min_duration * f.samplerate:
                return f"too short ({f.frames / f.samplerate:.2f} s < {min_duration} s)"
            decoded, peak = 0, 0.0
            try:
                for block in _iter_frames(f, _BLOCK_FRAMES):
                    decoded += len(block)
                    block_peak = float(np.abs(block).max())  # NaN or inf when any sample is
                    if not math.isfinite(block_peak):
                        first = decoded - len(block) + int(np.flatnonzero(~np.isfinite(block).all(axis=1))[0])
                        return f"non-finite samples (NaN or inf), the first at {first / f.samplerate:.3f} s"
                    peak = max(peak, block_peak)
            except sf.LibsndfileError as err:
                return f"corrupt or truncated: {err.error_string.strip()} after {decoded} of {f.frames} frames"
            if decoded < f.frames - _length_slack(f):
                return f"truncated: decoded {decoded} of {f.frames} frames"
            if decoded < f.frames:
                log.debug("%s: decoded %d of the %d frames in its header (within tolerance)", path, decoded, f.frames)
            meta = {"sample_rate": f.samplerate, "channels": f.channels, "format": f"{f.format}/{f.subtype}"}
    except sf.LibsndfileError as err:
        message = err.error_string.strip()
        if any(m in message.lower() for m in _NOT_AUDIO_ERRORS):
            return f"not audio: no audio format recognised in the data ({message})"
        return f"cannot decode: {message}"
    except (OSError, RuntimeError) as err:
        return f"cannot decode: {err}"
    duration = decoded / meta["sample_rate"]
    if duration < min_duration:
        return f"too short ({duration:.2f} s < {min_duration} s)"
    peak_db = 20 * math.log10(peak) if peak > 0 else -math.inf
    if peak_db < silence_db:
        return f"silent (peak {peak_db:.1f} dBFS < {silence_db} dBFS)"
    return {"duration": duration, **meta}


def scan_audio(
    root: str | os.PathLike,
    *,
    min_duration: float = 1.0,
    silence_db: float = -60.0,
    progress: bool = True,
) -> ScanResult:
    """Find every usable audio file under `root` and say why each other file was skipped.

    Each file is decoded completely (in blocks, so memory stays small) because a header can look fine
    while the data is truncated or corrupt. Tracks get `id` = path relative to root without extension
    (posix), `label` = first sub-folder under root (None for files directly in root), and `duration`
    in seconds as decoded. Files whose id is already taken (same name, other extension) are skipped.
    Hidden files and folders are ignored without a report (see `_walk`). Truncated WAV and Ogg files
    cannot be told from shorter ones (their length comes from the data), so they are kept.
    """
    root = Path(root).absolute()
    if not root.is_dir():
        raise NotADirectoryError(f"audio folder not found: {root}")
    skipped: list[dict] = []
    tracks: list[dict] = []
    ids: dict[str, Path] = {}
    for path in tqdm(_walk(root, skipped), desc="scan audio", unit="file", disable=not progress):
        rel = path.relative_to(root)
        track_id = rel.with_suffix("").as_posix()
        result = _probe(path, min_duration, silence_db)
        if isinstance(result, dict) and track_id in ids:
            result = f"duplicate id {track_id!r} (already taken by {ids[track_id].name})"
        if isinstance(result, str):
            skipped.append({"path": str(path), "reason": one_line(result)})
            continue
        ids[track_id] = path
        label = rel.parts[0] if len(rel.parts) > 1 else None
        tracks.append({"id": track_id, "path": str(path), "label": label, **result})
    for row in skipped:
        log.info("skipped %s: %s", row["path"], row["reason"])
    if skipped:
        log.warning("scan of %s: %d tracks, %d files skipped", root, len(tracks), len(skipped))
    return ScanResult(
        tracks=pd.DataFrame(tracks, columns=TRACK_COLUMNS).sort_values("id", ignore_index=True),
        skipped=pd.DataFrame(skipped, columns=SKIP_COLUMNS).sort_values("path", ignore_index=True),
    )


def write_skip_report(skipped: pd.DataFrame, path: str | os.PathLike) -> None:
    """Write the skipped files as CSV (path, reason), one line per file; the header even if none."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    skipped[SKIP_COLUMNS].to_csv(path, index=False)


# --------------------------------------------------------------------------------------------------
# CLI


def _cmd_scan(args: argparse.Namespace) -> int:
    if not Path(args.audio_dir).is_dir():
        raise UsageError(f"audio folder not found: {args.audio_dir}")
    for out in (args.report, args.out):
        if out:
            check_output(out)
    result = scan_audio(args.audio_dir, min_duration=args.min_duration, silence_db=args.silence_db)
    write_skip_report(result.skipped, args.report)
    if args.out:
        result.tracks.to_csv(args.out, index=False)
    hours = result.tracks["duration"].sum() / 3600
    print(f"{len(result.tracks)} tracks ({hours:.2f} h), {len(result.skipped)} skipped (see {args.report})")
    return 0


def register_cli(subparsers) -> None:
    """Add `cml scan AUDIO_DIR --report skipped.csv [--out tracks.csv]`."""
    p = subparsers.add_parser("scan")
    p.add_argument("audio_dir", help="folder tree of audio files; first sub-folder = label")
    p.add_argument("--report", required=True, help="CSV of skipped files (path, reason)")
    p.add_argument("--out", help="CSV of usable tracks (id, path, label, duration, ...)")
    p.add_argument("--min-duration", type=positive, default=1.0, help="seconds; shorter files are skipped")
    p.add_argument("--silence-db", type=finite, default=-60.0, help="dBFS; files whose peak is lower are skipped")
    p.set_defaults(func=_cmd_scan)
