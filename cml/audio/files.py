"""Opening an audio file and exact sequential reads of it with libsndfile, without torch.

Shared by the loader (`cml.audio.mel`, which resamples with torchaudio) and the scanner (`cml.data.scan`, which
must start without torch): one copy of the opener and the block reader both decode with.
"""

from __future__ import annotations

import os
from collections.abc import Iterator

import numpy as np
import soundfile as sf


def check_audio_path(path: str | os.PathLike) -> None:
    """Raise an OSError that names the problem when `path` is no readable file: libsndfile calls a missing
    file, a folder and a permission problem alike "System error"."""
    if not os.path.exists(path):
        raise FileNotFoundError(f"no such file: {path}")
    if os.path.isdir(path):
        raise IsADirectoryError(f"a folder, not an audio file: {path}")
    if not os.access(path, os.R_OK):
        raise PermissionError(f"not readable (permission denied): {path}")


def open_audio(path: str | os.PathLike) -> sf.SoundFile:
    """`sf.SoundFile(path)` for reading; a path that is no readable file raises `check_audio_path`'s OSError."""
    try:
        return sf.SoundFile(path)
    except sf.LibsndfileError:
        check_audio_path(path)  # checked after the failure: the common case costs nothing
        raise


def read_frames(f: sf.SoundFile, frames: int) -> np.ndarray:
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


def iter_frames(f: sf.SoundFile, block_frames: int) -> Iterator[np.ndarray]:
    """Yield consecutive float32 (n, channels) blocks of a freshly opened file.

    Requests never exceed the frames left according to the header (libsndfile returns no more
    than that anyway): allocating a whole block for a short remainder costs time for nothing.
    """
    left = f.frames
    while left > 0:
        block = read_frames(f, min(block_frames, left))
        if len(block) == 0:
            return
        left -= len(block)
        yield block
