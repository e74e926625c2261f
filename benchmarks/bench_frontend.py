"""Front-end throughput: decode + resample + log-mel from files on disk, and peak memory on a long track.

Throughput is reported as seconds of audio per second of wall time (target: 500x real time or more).
Peak memory of `track_logmel` on a long track is measured in a fresh subprocess (VmHWM above the
import baseline) next to the one-shot `LogMel()(load_audio(...))`, to show that block-wise extraction
keeps memory bounded. All audio is synthesised into a temporary folder.

    python benchmarks/bench_frontend.py                       # 8 x 60 s files per format, 20-minute track
    python benchmarks/bench_frontend.py --files 2 --seconds 30 --long-minutes 5   # quick check
"""

from __future__ import annotations

import argparse
import functools
import multiprocessing
import os
import subprocess
import sys
import tempfile
import time
from multiprocessing.pool import Pool
from pathlib import Path

import numpy as np
import soundfile as sf
import torch

from cml.audio.mel import LogMel, MelConfig, load_audio, track_logmel

PITCHES = (196.0, 220.0, 262.0, 294.0, 330.0, 392.0, 440.0)


def music(seconds: float, sr: int, channels: int, seed: int) -> np.ndarray:
    """Music-like test signal: decaying harmonic notes every 0.25 s plus a little noise, float32 (n, ch)."""
    rng = np.random.default_rng(seed)
    n, note = round(seconds * sr), sr  # each note lasts 1 s
    t = np.arange(note) / sr
    templates = [np.exp(-5 * t) * sum(np.sin(2 * np.pi * f * k * t) / k for k in range(1, 6)) for f in PITCHES]
    x = np.zeros(n + note, np.float32)
    for onset in range(0, n, sr // 4):
        x[onset : onset + note] += 0.15 * templates[rng.integers(len(PITCHES))]
    x = x[:n] + 0.003 * rng.standard_normal(n).astype(np.float32)
    return np.stack([x, np.roll(x, 37)], 1)[:, :channels]


def write_long(path: Path, minutes: float, sr: int, channels: int, subtype: str) -> None:
    """Write a long track one minute at a time so the benchmark itself stays small in memory."""
    with sf.SoundFile(path, "w", sr, channels, subtype=subtype) as f:
        for i in range(int(np.ceil(minutes))):
            f.write(music(min(60.0, 60 * (minutes - i)), sr, channels, seed=i))


@functools.lru_cache(maxsize=1)
def _logmel() -> LogMel:
    return LogMel(MelConfig())


def blocks(path: Path) -> tuple:
    return tuple(track_logmel(path).shape)


def one_shot(path: Path) -> tuple:
    return tuple(_logmel()(load_audio(path)).shape)


METHODS = {"track_logmel (blocks)": blocks, "LogMel(load_audio)": one_shot}


def _init_worker(threads: int) -> None:
    torch.set_num_threads(threads)
    torch.set_grad_enabled(False)


def throughput(pool: Pool, paths: list[Path], fn, repeat: int) -> tuple[float, float]:
    """(audio seconds, best wall seconds over `repeat` passes) for running fn on every file.

    The best pass is the one least disturbed by other processes on a shared machine.
    """
    audio = sum(sf.info(str(p)).duration for p in paths)
    walls = []
    for _ in range(repeat):
        start = time.perf_counter()
        pool.map(fn, paths, chunksize=1)
        walls.append(time.perf_counter() - start)
    return audio, min(walls)


# VmHWM (peak RSS of this process image), not ru_maxrss: after fork + exec, ru_maxrss starts at the parent's peak.
PEAK_SCRIPT = """
import re, sys, torch
from cml.audio.mel import LogMel, MelConfig, load_audio, track_logmel
def hwm():
    return int(re.search(r"VmHWM:\\s+(\\d+)", open("/proc/self/status").read()).group(1))
base = hwm()
with torch.inference_mode():
    out = track_logmel(sys.argv[1]) if sys.argv[2] == "blocks" else LogMel()(load_audio(sys.argv[1]))
print(base, hwm(), tuple(out.shape))
"""


def peak_memory(path: Path, method: str) -> tuple[float, float, tuple]:
    """(baseline MiB after imports, extra MiB at peak, output shape) in a fresh process."""
    out = subprocess.run([sys.executable, "-c", PEAK_SCRIPT, str(path), method],
                         capture_output=True, text=True, check=True).stdout.split(maxsplit=2)
    return int(out[0]) / 1024, (int(out[1]) - int(out[0])) / 1024, out[2].strip()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--files", type=int, default=8, help="files per format")
    parser.add_argument("--seconds", type=float, default=60.0, help="length of each file")
    parser.add_argument("--workers", type=int, default=os.cpu_count(), help="processes sharing the files")
    parser.add_argument("--threads", type=int, default=1,
                        help="torch threads per worker; 1 is what a DataLoader worker uses, and on a busy "
                             "2-core machine 2 OpenMP threads spin-wait and run several times slower")
    parser.add_argument("--repeat", type=int, default=5, help="passes per measurement; the best is kept")
    parser.add_argument("--long-minutes", type=float, default=20.0, help="length of the memory-test track")
    args = parser.parse_args()

    inputs = {
        "16 kHz mono FLAC (corpus)": (16000, 1, "flac"),
        "44.1 kHz stereo WAV": (44100, 2, "wav"),
        "44.1 kHz stereo MP3": (44100, 2, "mp3"),
        "44.1 kHz stereo FLAC": (44100, 2, "flac"),
    }
    rows = []
    spawn = multiprocessing.get_context("spawn")  # no fork after torch has started its thread pools
    with tempfile.TemporaryDirectory() as tmp, spawn.Pool(args.workers, _init_worker, (args.threads,)) as pool:
        for name, (sr, ch, ext) in inputs.items():
            if ext.upper() not in sf.available_formats():
                print(f"skipping {name}: libsndfile here cannot write {ext}")
                continue
            paths = [Path(tmp) / f"{ext}{sr}_{i}.{ext}" for i in range(args.files)]
            for i, p in enumerate(paths):
                sf.write(p, music(args.seconds, sr, ch, seed=i), sr)
            for fn in METHODS.values():  # warm-up: imports, kernels, caches, page cache
                throughput(pool, paths, fn, 1)
            for method, fn in METHODS.items():
                audio, wall = throughput(pool, paths, fn, args.repeat)
                rows.append((name, method, audio, wall))

        long_path = Path(tmp) / "long.flac"
        write_long(long_path, args.long_minutes, 44100, 2, "PCM_16")
        mem = [(method, *peak_memory(long_path, method)) for method in ("blocks", "one-shot")]

    print(f"\nThroughput, best of {args.repeat}: {args.workers} worker processes x {args.threads} torch "
          f"threads on {os.cpu_count()} CPUs\n")
    print("| input | method | audio (s) | wall (s) | x real time |")
    print("|---|---|---:|---:|---:|")
    for name, method, audio, wall in rows:
        print(f"| {name} | {method} | {audio:.0f} | {wall:.2f} | {audio / wall:.0f} |")
    print(f"\nPeak memory, {args.long_minutes:g}-minute 44.1 kHz stereo FLAC -> 16 kHz log-mel\n")
    print("| method | output shape | baseline RSS (MiB) | extra peak RSS (MiB) |")
    print("|---|---|---:|---:|")
    for method, base, extra, shape in mem:
        label = "track_logmel (60 s blocks)" if method == "blocks" else "LogMel(load_audio(...))"
        print(f"| {label} | {shape} | {base:.0f} | {extra:.0f} |")


if __name__ == "__main__":
    main()
