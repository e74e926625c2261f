"""Encoder benchmarks: training throughput per variant, embedding throughput from files, peak memory.

1. Training: clips/s of a full step (forward of both views, NT-Xent, backward, AdamW) for every
   positional variant at the default `EncoderConfig` and a 4 s crop; a batch is 32 positive pairs
   (`TrainConfig.batch_size`), so 64 clips per step, and clips/s counts both views. Achieved
   GFLOP/s = 3 x `Encoder.flops` per clip x clips/s (backward ~ 2x forward; matmuls only, so a lower
   bound), set against the fp32 matmul peak of this machine measured here with torch.matmul on
   2048 x 2048 matrices (best of N) with the same torch threads. The step includes gradient clipping;
   augmentation and data loading are left out (random log-mels), so this is the model's own cost.
2. Embedding: seconds of audio per second of wall time, end to end from files on disk (decode,
   resample, log-mel, standardise, encoder) with `cml.embed.tracks.embed_tracks`, one pass per track and
   chunked (4 s windows), in a pool of worker processes. Target: 300x real time for the default model
   (rope1d) on 2 cores.
3. Peak memory of embedding one 20-minute track in one pass: the peak RSS (VmHWM) above the RSS after
   imports and model construction, in a fresh subprocess per variant and mode. The high-water mark is
   reset there through /proc/self/clear_refs, so the import's transient peak cannot hide a smaller one;
   ru_maxrss is not used because after fork + exec it starts at the parent's peak.

Weights are random (speed and memory do not depend on them) unless --model names a checkpoint. All
audio is synthesised into a temporary folder; tables are printed as markdown.

    python benchmarks/bench_model.py            # full run (several minutes on 2 cores)
    python benchmarks/bench_model.py --quick    # a small version of everything, to check it works
"""
from __future__ import annotations

import argparse
import multiprocessing
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import soundfile as sf
import torch

from cml.audio.mel import MelConfig
from cml.embed.library import load_model
from cml.embed.tracks import embed_tracks
from cml.model.checkpoint import Normalizer, untrained_encoder
from cml.model.encoder import VARIANTS, Encoder, EncoderConfig
from cml.train.losses import nt_xent

SR = 16000  # the corpus format: 16 kHz mono FLAC
PITCHES = (196.0, 220.0, 262.0, 294.0, 330.0, 392.0, 440.0)
NORM = Normalizer(-5.0, 4.0)  # about the corpus' log-mel statistics; any constant costs the same


def music(seconds: float, seed: int) -> np.ndarray:
    """Music-like mono signal: decaying harmonic notes every 0.25 s plus a little noise, float32."""
    rng = np.random.default_rng(seed)
    n, note = round(seconds * SR), SR
    t = np.arange(note) / SR
    templates = [np.exp(-5 * t) * sum(np.sin(2 * np.pi * f * k * t) / k for k in range(1, 6)) for f in PITCHES]
    x = np.zeros(n + note, np.float32)
    for onset in range(0, n, SR // 4):
        x[onset:onset + note] += 0.15 * templates[rng.integers(len(PITCHES))]
    return x[:n] + 0.003 * rng.standard_normal(n).astype(np.float32)


def write_track(path: Path, seconds: float, seed: int) -> Path:
    """Write a track one minute at a time, so a long one never sits in memory whole."""
    with sf.SoundFile(path, "w", SR, 1, format="FLAC", subtype="PCM_16") as f:
        for i, start in enumerate(np.arange(0.0, seconds, 60.0)):
            f.write(music(min(60.0, seconds - start), seed=1000 * seed + i))
    return path


# --------------------------------------------------------------------------------------------------
# 1. Training throughput


def matmul_peak(n: int = 2048, repeat: int = 10) -> float:
    """fp32 GFLOP/s of the best of `repeat` n x n matmuls (2 n^3 FLOPs each)."""
    a, b = torch.randn(n, n), torch.randn(n, n)
    torch.matmul(a, b)  # warm-up
    best = float("inf")
    for _ in range(repeat):
        start = time.perf_counter()
        torch.matmul(a, b)
        best = min(best, time.perf_counter() - start)
    return 2 * n**3 / best / 1e9


def train_throughput(variant: str, crop_seconds: float, batch: int, steps: int, warmup: int) -> tuple[float, int]:
    """(clips/s over `steps` timed steps after `warmup` ones, forward FLOPs per clip); `batch` pairs a step."""
    torch.manual_seed(0)
    model = Encoder(EncoderConfig(variant=variant)).train()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    n_frames = MelConfig().frames(crop_seconds)
    x = torch.randn(2 * batch, model.cfg.n_mels, n_frames)  # first half view 1, second half view 2

    def step() -> None:
        _, z = model(x)
        loss = nt_xent(z[:batch], z[batch:])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()

    for _ in range(warmup):
        step()
    start = time.perf_counter()
    for _ in range(steps):
        step()
    return 2 * batch * steps / (time.perf_counter() - start), model.flops(n_frames)


# --------------------------------------------------------------------------------------------------
# 2. Embedding throughput from files

_worker: dict = {}


def _init_worker(threads: int, model: str, variant: str) -> None:
    torch.set_num_threads(threads)
    if model:
        encoder, mel, norm = load_model(model)
    else:
        encoder, mel, norm = untrained_encoder(EncoderConfig(variant=variant)), MelConfig(), NORM
    _worker.update(encoder=encoder, mel=mel, norm=norm)


def _embed_file(job: tuple[str, str, float | None]) -> int:
    import pandas as pd

    path, mode, window = job
    res = embed_tracks(_worker["encoder"], _worker["mel"], _worker["norm"], pd.DataFrame({"id": ["x"], "path": [path]}),
                       mode=mode, window_seconds=window, progress=False)
    if len(res.skipped):
        raise RuntimeError(f"{path}: {res.skipped['reason'].iloc[0]}")
    return len(res.X)


def embed_throughput(pool, paths: list[Path], mode: str, window: float | None, repeat: int) -> float:
    """Seconds of audio per wall second, best of `repeat` passes over all files."""
    audio = sum(sf.info(str(p)).duration for p in paths)
    jobs = [(str(p), mode, window) for p in paths]
    pool.map(_embed_file, jobs, chunksize=1)  # warm-up: kernels, page cache
    walls = []
    for _ in range(repeat):
        start = time.perf_counter()
        pool.map(_embed_file, jobs, chunksize=1)
        walls.append(time.perf_counter() - start)
    return audio / min(walls)


# --------------------------------------------------------------------------------------------------
# 3. Peak memory on a long track, in a fresh process

PEAK_SCRIPT = """
import re, resource, sys, time, torch, pandas as pd
from cml.audio.mel import MelConfig
from cml.model.checkpoint import Normalizer, untrained_encoder
from cml.embed.tracks import embed_tracks
from cml.model.encoder import EncoderConfig

def high_water_kib():
    # VmHWM, not ru_maxrss: after fork + exec, ru_maxrss starts at the PARENT's peak RSS
    try:
        return int(re.search(r"VmHWM:\\s+(\\d+)", open("/proc/self/status").read()).group(1))
    except OSError:
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss

path, variant, mode, threads = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
torch.set_num_threads(threads)
encoder = untrained_encoder(EncoderConfig(variant=variant))
try:  # reset the high-water mark to the current RSS (Linux >= 4.0), so import spikes do not hide the peak
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")
except OSError:
    pass
base = high_water_kib()
start = time.perf_counter()
res = embed_tracks(encoder, MelConfig(), Normalizer(-5.0, 4.0), pd.DataFrame({"id": ["x"], "path": [path]}),
                   mode=mode, window_seconds=4.0 if mode == "chunked" else None, progress=False)
wall = time.perf_counter() - start
peak = high_water_kib()
reason = res.skipped["reason"].iloc[0].replace(" ", "_") if len(res.skipped) else "ok"
seconds = res.tracks["seconds"].sum() if mode == "full" else 4.0
print(base, peak, wall, encoder.n_tokens(MelConfig().frames(seconds)), reason)
"""


def peak_memory(path: Path, variant: str, mode: str, threads: int) -> tuple[float, float, float, int, str]:
    """(baseline MiB, extra peak MiB, wall s, tokens, status) of embedding `path` in a fresh process."""
    proc = subprocess.run([sys.executable, "-c", PEAK_SCRIPT, str(path), variant, mode, str(threads)],
                          capture_output=True, text=True)
    if proc.returncode:
        return float("nan"), float("nan"), float("nan"), 0, f"failed: {proc.stderr.strip().splitlines()[-1:]}"
    base, peak, wall, tokens, status = proc.stdout.split()
    return int(base) / 1024, (int(peak) - int(base)) / 1024, float(wall), int(tokens), status


# --------------------------------------------------------------------------------------------------


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="small sizes everywhere, to check the script works")
    parser.add_argument("--variants", default=",".join(VARIANTS), help="training variants, comma-separated")
    parser.add_argument("--crop-seconds", type=float, default=4.0)
    parser.add_argument("--batch", type=int, default=32, help="positive pairs per training step (2x clips)")
    parser.add_argument("--steps", type=int, default=10, help="timed training steps per variant")
    parser.add_argument("--variant", default="rope1d", help="model of the embedding-throughput test")
    parser.add_argument("--model", help="checkpoint for the embedding-throughput test (default: random init)")
    parser.add_argument("--files", type=int, default=8, help="audio files of the embedding-throughput test")
    parser.add_argument("--seconds", type=float, default=30.0, help="length of each of those files")
    parser.add_argument("--workers", type=int, default=os.cpu_count(), help="embedding worker processes")
    parser.add_argument("--threads", type=int, default=1, help="torch threads per embedding worker")
    parser.add_argument("--repeat", type=int, default=3, help="passes per measurement; the best is kept")
    parser.add_argument("--long-minutes", type=float, default=20.0, help="length of the memory-test track")
    parser.add_argument("--memory-variants", default=",".join(VARIANTS), help="variants of the memory test")
    args = parser.parse_args()
    if args.quick:
        args.steps, args.files, args.seconds, args.repeat, args.long_minutes = 2, 4, 10.0, 1, 2.0
        args.memory_variants = "rope1d,alibi1d"
    train_variants, mem_variants = args.variants.split(","), args.memory_variants.split(",")
    threads = torch.get_num_threads()

    peak = matmul_peak(repeat=3 if args.quick else 10)
    train_rows = []
    for v in train_variants:
        clips, flops = train_throughput(v, args.crop_seconds, args.batch, args.steps, warmup=1 if args.quick else 2)
        train_rows.append((v, clips, flops))

    spawn = multiprocessing.get_context("spawn")  # no fork after torch has started its thread pools
    with tempfile.TemporaryDirectory() as tmp:
        paths = [write_track(Path(tmp) / f"track{i}.flac", args.seconds, seed=i) for i in range(args.files)]
        pool = spawn.Pool(args.workers, _init_worker, (args.threads, args.model, args.variant))
        embed_rows = [(mode, embed_throughput(pool, paths, mode, window, args.repeat))
                      for mode, window in (("full", None), ("chunked", 4.0))]
        pool.close()
        pool.join()
        long_path = write_track(Path(tmp) / "long.flac", 60 * args.long_minutes, seed=99)
        mem_rows = [(v, mode, *peak_memory(long_path, v, mode, threads)) for v in mem_variants
                    for mode in ("full", "chunked")]

    print(f"\n### Training throughput ({args.crop_seconds:g} s crops, batch {args.batch} pairs, "
          f"{args.steps} timed steps, {threads} torch threads on {os.cpu_count()} CPUs)\n")
    print(f"fp32 matmul peak (2048 x 2048, best of N): {peak:.1f} GFLOP/s\n")
    print("| variant | clips/s | GFLOP per clip (fwd) | achieved GFLOP/s | % of matmul peak |")
    print("|---|---:|---:|---:|---:|")
    for v, clips, flops in train_rows:
        achieved = 3 * flops * clips / 1e9
        print(f"| {v} | {clips:.1f} | {flops / 1e9:.3f} | {achieved:.1f} | {100 * achieved / peak:.0f}% |")

    model = args.model or f"{args.variant} (random init)"
    print(f"\n### Embedding throughput from files ({args.files} x {args.seconds:g} s 16 kHz FLAC, {model}, "
          f"{args.workers} workers x {args.threads} threads, best of {args.repeat})\n")
    print("| mode | x real time |")
    print("|---|---:|")
    for mode, speed in embed_rows:
        print(f"| {'one pass' if mode == 'full' else 'chunked (4 s windows)'} | {speed:.0f} |")

    print(f"\n### Peak memory, one {args.long_minutes:g}-minute track ({threads} torch threads)\n")
    print("| variant | mode | tokens per pass | baseline RSS (MiB) | extra peak RSS (MiB) | wall (s) | x real time "
          "| status |")
    print("|---|---|---:|---:|---:|---:|---:|---|")
    for v, mode, base, extra, wall, tokens, status in mem_rows:
        speed = 60 * args.long_minutes / wall if wall == wall else float("nan")
        print(f"| {v} | {'one pass' if mode == 'full' else 'chunked 4 s'} | {tokens} | {base:.0f} | {extra:.0f} | "
              f"{wall:.1f} | {speed:.0f} | {status} |")


if __name__ == "__main__":
    main()
