"""Build the default corpus (CorpusConfig() defaults) into a temp dir and say how long it took.

    python benchmarks/bench_corpus.py                       # the full default corpus (target: < 5 min)
    python benchmarks/bench_corpus.py --pieces-per-class 2  # a quick check
"""

import argparse
import logging
import tempfile
import time
from dataclasses import replace

import pandas as pd

from cml.data.corpus import CorpusConfig, build_corpus


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--pieces-per-class", type=int, help="default: CorpusConfig's")
    parser.add_argument("--workers", type=int, help="default: CorpusConfig's")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")

    config = CorpusConfig()
    if args.pieces_per_class:
        config = replace(config, pieces_per_class=args.pieces_per_class)
    if args.workers:
        config = replace(config, workers=args.workers)
    with tempfile.TemporaryDirectory() as out:
        start = time.perf_counter()
        manifest = build_corpus(config, out)
        wall = time.perf_counter() - start
        skipped = pd.read_csv(f"{out}/skipped.csv")

    audio = manifest["duration"].sum()
    print(f"config: {config}")
    print(manifest.groupby("label").agg(pieces=("id", "size"), audio_s=("duration", "sum")).round(1).to_string())
    print(f"pieces: {len(manifest)}  skipped: {len(skipped)}  audio: {audio:.0f} s")
    print(f"wall: {wall:.1f} s  speed: {audio / wall:.1f}x real time ({config.workers} workers)")
    if len(skipped):
        print("skip reasons:\n" + skipped.to_string(index=False, max_colwidth=110))


if __name__ == "__main__":
    main()
