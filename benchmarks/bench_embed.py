"""`cml embed` on a library of compressed audio: where the time goes, throughput against decoding workers and
`torchrun` processes, and an unchanged re-run of a 1,000-file library.

The library is synthetic music-like audio at 44.1 kHz stereo, half Ogg Vorbis and half MP3, tracks of 2 to
7 minutes, written once into --data (reused by later runs). The model has the study's architecture
(params.yaml) with random weights: the cost of an embedding does not depend on the weights. Every run is
`cml embed` in a fresh process, so the wall time includes Python and torch start-up, as a user sees it.

    python benchmarks/bench_embed.py                            # 24 tracks (about 1.8 h), 1,000-file re-run
    python benchmarks/bench_embed.py --tracks 6 --library 100   # quick check
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import soundfile as sf
import torch
from bench_frontend import music

from cml.audio.files import iter_frames
from cml.audio.mel import iter_blocks, track_logmel
from cml.embed.library import study_model
from cml.embed.tracks import WINDOW_CROPS
from cml.model.checkpoint import Normalizer, save_checkpoint, untrained_encoder
from cml.model.encoder import EncoderConfig

REPO = Path(__file__).resolve().parent.parent
FORMATS = (("ogg", "VORBIS"), ("mp3", "MPEG_LAYER_III"))


def library(folder: Path, n: int, seed: int = 0) -> pd.DataFrame:
    """n tracks of 2-7 minutes at 44.1 kHz stereo, Ogg Vorbis and MP3 in turn (written once)."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    rows = []
    for i in range(n):
        ext, subtype = FORMATS[i % 2]
        path = folder / f"track{i:03d}.{ext}"
        if not path.exists():
            write_compressed(path, float(rng.uniform(2, 7)), subtype, seed=i)
        rows.append({"id": path.stem, "path": str(path), "duration": sf.info(path).duration})
    return pd.DataFrame(rows)


def write_compressed(path: Path, minutes: float, subtype: str, seed: int) -> None:
    """44.1 kHz stereo, written in small blocks: libsndfile's Vorbis encoder crashes on minute-long writes."""
    wave = music(60 * minutes, 44100, 2, seed)
    with sf.SoundFile(path, "w", 44100, 2, subtype=subtype) as f:
        for start in range(0, len(wave), 1 << 15):
            f.write(wave[start:start + (1 << 15)])


def small_library(folder: Path, n: int) -> pd.DataFrame:
    """n clips of 10 s, 16 kHz mono FLAC: a library of many files, where per-file work shows."""
    folder.mkdir(parents=True, exist_ok=True)
    rows = []
    for i in range(n):
        path = folder / f"clip{i:04d}.flac"
        if not path.exists():
            sf.write(path, music(10.0, 16000, 1, seed=i)[:, 0], 16000)
        rows.append({"id": path.stem, "path": str(path), "duration": 10.0})
    return pd.DataFrame(rows)


def checkpoint(path: Path) -> str:
    """Random weights in the study's architecture, saved as a checkpoint (it brings its own standardisation)."""
    model, frontend = study_model(str(REPO / "params.yaml"))
    cfg = EncoderConfig(**{"n_mels": frontend.n_mels, **model, "variant": "rope1d"})
    save_checkpoint(path, model=untrained_encoder(cfg, seed=0), optimizer=None, scheduler=None, epoch=0, step=0,
                    encoder_config=cfg, mel_config=frontend, norm=Normalizer(-5.0, 4.0),
                    train_config={"crop_seconds": 4.0}, metrics={}, rng_state={})
    return str(path)


def timed(f) -> float:
    start = time.perf_counter()
    f()
    return time.perf_counter() - start


def profile(tracks: pd.DataFrame, ckpt: str) -> list[dict]:
    """Seconds per stage of one embedding, in this process, one thread: decode, + mono and resample, + log-mel,
    the encoder on the log-mels."""
    from cml.model.checkpoint import load_encoder

    torch.set_num_threads(1)
    paths = tracks["path"].tolist()

    def decode():
        for p in paths:
            with sf.SoundFile(p) as f:
                for _ in iter_frames(f, 1 << 18):
                    pass

    encoder, mel, norm = load_encoder(ckpt)
    encoder.eval()
    window = mel.frames(WINDOW_CROPS * 4.0)
    logmels = []
    rows = [("decode (libsndfile)", timed(decode)),
            ("decode + mono + resample to 16 kHz", timed(lambda: [list(iter_blocks(p, 60.0, 16000)) for p in paths])),
            ("decode ... log-mel (track_logmel)", timed(lambda: logmels.extend(track_logmel(p, mel) for p in paths)))]
    with torch.inference_mode():
        rows.append(("encoder (windows of 32 s, every 16 s)",
                     timed(lambda: [encoder.embed_chunked(norm(x)[None], window, window // 2) for x in logmels])))
    torch.set_num_threads(len(os.sched_getaffinity(0)))
    audio = tracks["duration"].sum()
    return [{"stage": name, "seconds": round(s, 2), "x real time (1 thread)": round(audio / s)} for name, s in rows]


def run_embed(args: list[str], torchrun: int = 0) -> tuple[float, str]:
    """Wall seconds and stderr of one `cml embed` in a fresh process (under torchrun with that many processes)."""
    bin_dir = Path(sys.executable).parent
    cmd = ([str(bin_dir / "torchrun"), "--standalone", f"--nproc_per_node={torchrun}", "--no-python", str(bin_dir / "cml")]
           if torchrun else [str(bin_dir / "cml")]) + ["embed", *args]
    start = time.perf_counter()
    done = subprocess.run(cmd, capture_output=True, text=True)
    wall = time.perf_counter() - start
    if done.returncode:
        raise SystemExit(f"{' '.join(cmd)} failed:\n{done.stderr[-2000:]}")
    return wall, done.stderr


def throughput(tracks: pd.DataFrame, ckpt: str, work: Path) -> list[dict]:
    """End-to-end `cml embed` (no cache) with 0, 1, 2 decoding workers, and under torchrun with 2 processes."""
    table = work / "library.csv"
    tracks.to_csv(table, index=False)
    audio = tracks["duration"].sum()
    rows = []
    for procs, workers in ((1, 0), (1, 1), (1, 2), (2, 0), (2, 1)):
        out = work / f"emb-{procs}-{workers}.parquet"
        shutil.rmtree(out, ignore_errors=True)
        wall, _ = run_embed([ckpt, "--tracks", str(table), "--out", str(out), "--no-cache", "--quiet",
                             "--workers", str(workers)], torchrun=procs if procs > 1 else 0)
        rows.append({"processes": procs, "decoding workers per process": workers, "wall s": round(wall, 1),
                     "x real time": round(audio / wall)})
    base = rows[0]["wall s"]
    for r in rows:
        r["speed-up"] = round(base / r["wall s"], 2)
    return rows


def rerun(tracks: pd.DataFrame, ckpt: str, work: Path) -> list[dict]:
    """A library embedded with the cache, then again unchanged, then again after touching every file."""
    table, cache, out = work / "small.csv", work / "cache", work / "small.parquet"
    tracks.to_csv(table, index=False)
    shutil.rmtree(cache, ignore_errors=True)
    args = [ckpt, "--tracks", str(table), "--out", str(out), "--cache", str(cache), "--quiet"]
    rows = []
    for what in ("first run (empty cache)", "unchanged re-run", "re-run after touching every file"):
        if what.startswith("re-run after"):
            for p in tracks["path"]:
                os.utime(p)
        wall, log = run_embed(args)
        reused, missed = map(int, re.search(r"(\d+) vectors reused, (\d+) files not in it", log).groups())
        rows.append({"run": what, "files": len(tracks), "wall s": round(wall, 1), "files decoded": missed,
                     "vectors reused": reused})
    return rows


def markdown(rows: list[dict]) -> str:
    cols = list(rows[0])
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    lines += ["| " + " | ".join(str(r[c]) for c in cols) + " |" for r in rows]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tracks", type=int, default=24, help="tracks of 2-7 min in the compressed library")
    parser.add_argument("--library", type=int, default=1000, help="files in the re-run library")
    parser.add_argument("--data", type=Path, default=Path("/tmp/cml-bench-embed"), help="where the audio is kept")
    args = parser.parse_args()
    args.data.mkdir(parents=True, exist_ok=True)
    tracks = library(args.data / "compressed", args.tracks)
    ckpt = checkpoint(args.data / "model.pt")
    print(f"compressed library: {len(tracks)} tracks, {tracks['duration'].sum() / 3600:.2f} h, 44.1 kHz stereo "
          f"Ogg Vorbis + MP3; {len(os.sched_getaffinity(0))} cores; torch {torch.__version__}\n")
    print(markdown(profile(tracks, ckpt)), "\n")
    print(markdown(throughput(tracks, ckpt, args.data)), "\n")
    print(markdown(rerun(small_library(args.data / "small", args.library), ckpt, args.data)))


if __name__ == "__main__":
    main()
