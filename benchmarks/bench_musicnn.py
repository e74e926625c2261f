"""Throughput of the pretrained baseline on real compressed audio: `cml embed musicnn[:MODEL[:LAYER]]` over a
folder, beside `cml embed untrained:none` (the project's encoder at the study's size) on the same files in the
same run.

Each run is `cml embed` in a fresh process without the cache, so the wall time includes start-up, decoding
in the workers and the model, as a user sees it.

    python benchmarks/bench_musicnn.py AUDIO_DIR [--models MSD_musicnn MTT_vgg ...]
"""
from __future__ import annotations

import argparse
import subprocess
import tempfile
import time
from pathlib import Path

from cml.data.scan import scan_audio
from cml.embed.tracks import MUSICNN
from cml.tables import read_feature_table

REPO = Path(__file__).resolve().parent.parent


def embed(model: str, audio_dir: str, out: Path) -> float:
    """Wall seconds of one `cml embed` process."""
    start = time.perf_counter()
    subprocess.run(["cml", "embed", model, audio_dir, "--out", str(out), "--no-cache", "--quiet",
                    "--params", str(REPO / "params.yaml")], check=True, capture_output=True)
    return time.perf_counter() - start


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("audio_dir")
    p.add_argument("--models", nargs="+", default=[MUSICNN, "untrained:none"])
    args = p.parse_args()
    hours = scan_audio(args.audio_dir, progress=False, decode=False).tracks["duration"].sum() / 3600
    print(f"{args.audio_dir}: {hours:.2f} h of audio")
    with tempfile.TemporaryDirectory() as tmp:
        for model in args.models:
            out = Path(tmp) / "x.parquet"
            seconds = embed(model, args.audio_dir, out)
            n = len(read_feature_table(out).ids)
            print(f"{model:32s} {n} tracks in {seconds:6.1f} s = {hours * 3600 / seconds:6.0f}x real time")


if __name__ == "__main__":
    main()
