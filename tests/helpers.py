"""What the tests share as plain functions and constants: signals, labelled blobs, tiny training tracks, fake
Debian packages, and where the repository is. Import them as ``from tests.helpers import ...`` (tests/ is a
package). Fixtures (the ``cml`` command runners, the embedding cache) live in tests/conftest.py.

The generators are exact: a call gives the same samples every time, so tests can assert on the numbers they lead to.
"""
from __future__ import annotations

import io
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import soundfile as sf

TESTS = Path(__file__).resolve().parent
ROOT = TESTS.parent  # the repository
FIXTURES = TESTS / "fixtures"
SR = 16000  # cml's sample rate (MelConfig().sample_rate)


# --------------------------------------------------------------------------------------------------
# Signals


def sine(freq: float, seconds: float = 2.0, sr: int = SR, amp: float = 0.5, *, harmonics: int = 1,
         tremolo_hz: float | None = None, noise: float = 0.0, seed: int = 0) -> np.ndarray:
    """A tone as float32 samples: ``amp`` times the sum of sin(2 pi h freq t) / h for h = 1 .. ``harmonics``;
    with ``tremolo_hz``, times (1 + 0.5 sin(2 pi tremolo_hz t)) (not flat); plus ``noise`` times Gaussian noise
    drawn with ``seed``."""
    t = np.arange(round(seconds * sr)) / sr
    x = amp * sum(np.sin(2 * np.pi * freq * h * t) / h for h in range(1, harmonics + 1))
    if tremolo_hz:
        x = x * (1 + 0.5 * np.sin(2 * np.pi * tremolo_hz * t))
    if noise:
        x = x + noise * np.random.default_rng(seed).standard_normal(len(t))
    return x.astype(np.float32)


def write_tone(path: Path | str, seconds: float = 2.0, freq: float = 440.0, sr: int = SR, amp: float = 0.3, *,
               harmonics: int = 1, tremolo_hz: float | None = None, noise: float = 0.0, seed: int = 0,
               **soundfile_kwargs) -> Path:
    """`sine` written to ``path`` (its folder made if missing); ``soundfile_kwargs`` go to soundfile.write
    (``format="OGG", subtype="VORBIS"``, ...). Note the order: ``seconds`` before ``freq``, as a file is a length."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    wave = sine(freq, seconds, sr, amp, harmonics=harmonics, tremolo_hz=tremolo_hz, noise=noise, seed=seed)
    sf.write(path, wave, sr, **soundfile_kwargs)
    return path


def music(seconds: float, sr: int, channels: int = 1, seed: int = 0) -> np.ndarray:
    """Decaying harmonic notes plus a little noise: a cheap stand-in for real music (float32; 2-D for 2 channels)."""
    rng = np.random.default_rng(seed)
    n = round(seconds * sr)
    x = np.zeros(n)
    for start in np.arange(0, seconds, 0.25):
        i, f0 = int(start * sr), rng.choice([220.0, 262.0, 330.0, 392.0, 440.0])
        t = np.arange(min(n - i, sr)) / sr  # a note has decayed to 0.25 % after 1 s
        x[i : i + len(t)] += np.exp(-6 * t) * sum(np.sin(2 * np.pi * f0 * k * t) / k for k in range(1, 5))
    x = 0.4 * x / np.abs(x).max() + 0.005 * rng.standard_normal(n)
    return np.stack([x, np.roll(x, 50)], 1)[:, :channels].squeeze().astype(np.float32)


def write_audio(path: Path, data: np.ndarray, sr: int, fmt: str | None = None, subtype: str | None = None) -> Path:
    """Write with soundfile (the folder made if missing), or skip the test naming the format this libsndfile
    cannot write."""
    fmt = fmt or path.suffix[1:].upper()
    if fmt not in sf.available_formats() or (subtype and subtype not in sf.available_subtypes(fmt)):
        pytest.skip(f"libsndfile here cannot write {fmt}/{subtype}")
    path.parent.mkdir(parents=True, exist_ok=True)
    sf.write(path, data, sr, format=fmt, subtype=subtype)
    return path


def ogg(seconds: float, sr: int, channels: int, freq: float) -> bytes:
    """The bytes of an Ogg Vorbis file: a tone with a 3 Hz tremolo (not silent, not flat) on every channel."""
    wave = sine(freq, seconds, sr, amp=0.5, tremolo_hz=3)
    buf = io.BytesIO()
    sf.write(buf, np.stack([wave] * channels, axis=1), sr, format="OGG", subtype="VORBIS")
    return buf.getvalue()


# --------------------------------------------------------------------------------------------------
# Feature tables


def blobs(n_per_class: int = 30, classes: int = 4, dim: int = 16, spread: float = 0.2,
          seed: int | np.random.Generator = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Separated Gaussian blobs with labels and a split: ``classes`` centres drawn from N(0, 5), ``n_per_class``
    rows around each with s.d. ``spread``; labels c0, c1, ...; per class 20 train, 3 val and 7 test rows (cut to
    ``n_per_class``). ``seed`` may be a Generator, which then draws on from where the blobs stopped."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(0, 5, (classes, dim))
    X = np.concatenate([rng.normal(c, spread, (n_per_class, dim)) for c in centres])
    y = np.repeat([f"c{i}" for i in range(classes)], n_per_class)
    split = np.tile(np.array(["train"] * 20 + ["val"] * 3 + ["test"] * 7)[:n_per_class], classes)
    return X, y, split


# --------------------------------------------------------------------------------------------------
# Training on a CPU

# a recipe small enough for a test: one block of width 32, two epochs of 0.64 s crops
TINY_TRAINING = dict(model=dict(dim=32, depth=1, heads=2, embed_dim=16, proj_dim=16), crop_seconds=0.64,
                     batch_size=4, epochs=2, crops_per_track=2, min_steps=1, lr=3e-3, norm_crops=8)


def _two_kinds(kind: str, i: int, seconds: float, rng: np.random.Generator) -> np.ndarray:
    """Two audibly different classes: steady chords, and rhythmic noise bursts."""
    t = np.arange(int(seconds * SR)) / SR
    if kind == "tone":
        return sum(0.2 * np.sin(2 * np.pi * f * (1 + 0.07 * i) * t) for f in (220, 277, 330))
    return 0.3 * rng.standard_normal(len(t)) * (np.sin(2 * np.pi * (2 + i % 3) * t) > 0.3)


def make_tracks(root: Path, n: int = 12, seconds: float = 2.0, piece: bool = False) -> Path:
    """``n`` WAV files in ``root``, chords and noise bursts in turn (labels tone, noise), and their track table
    (root/tracks.csv: 4 train, 1 val, 1 test of every 6; with ``piece``, rows in pairs of one piece)."""
    rng = np.random.default_rng(0)
    splits = ["train", "train", "train", "train", "val", "test"]
    rows = []
    for i in range(n):
        kind = ("tone", "noise")[i % 2]
        path = root / f"{kind}{i}.wav"
        sf.write(path, _two_kinds(kind, i, seconds, rng).astype(np.float32), SR)
        rows.append({"id": f"{kind}{i}", "path": str(path), "label": kind, "duration": seconds,
                     "split": splits[i % 6]})
    table = pd.DataFrame(rows)
    if piece:
        table["piece"] = [f"p{i // 2}" for i in range(n)]  # pairs of rows share a piece
    csv = root / "tracks.csv"
    table.to_csv(csv, index=False)
    return csv


# --------------------------------------------------------------------------------------------------
# Debian packages (the soundtracks corpus and the pretraining pool read .deb files)


def make_deb(folder: Path, package: str, version: str, files: dict[str, bytes]) -> Path:
    """A .deb of `files` (paths under the package root), named as apt names it (epoch ':' as '%3a')."""
    root = folder / f"{package}-build"
    (root / "DEBIAN").mkdir(parents=True)
    (root / "DEBIAN" / "control").write_text(f"Package: {package}\nVersion: {version}\nArchitecture: all\n"
                                             "Maintainer: Test <test@example.org>\nDescription: test data\n")
    for rel, data in files.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_bytes(data)
    for d in [root, *root.rglob("*")]:
        if d.is_dir():
            d.chmod(0o755)
    deb = folder / f"{package}_{version.replace(':', '%3a')}_all.deb"
    subprocess.run(["dpkg-deb", "--root-owner-group", "-Zgzip", "--build", str(root), str(deb)], check=True,
                   capture_output=True)
    shutil.rmtree(root)
    return deb
