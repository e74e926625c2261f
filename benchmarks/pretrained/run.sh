#!/bin/bash
# Every number of benchmarks/pretrained/README.md from the shipped encoder, on this machine's CPU.
#
#   make pool                                       # the pool in ~/.cache/cml/pool
#   benchmarks/pretrained/run.sh OUT                # OUT: a scratch folder outside the repository
#
# Builds the soundtracks benchmark's audio into OUT/st (the corpus stage's builder, source soundtracks), then:
# frozen (the shipped encoder, no training) and fine-tuned (`cml train --init pretrained`, the study's `train`
# section, seeds 0-2) on the 133 tracks (training on their train split, as the from-scratch rows do) and on
# the 36-track transfer library (training on its 36 tracks); handcrafted features as the reference row; and
# on the pool's held-out packages (the data the recipe was chosen on) frozen and fine-tuned. Scores go to
# OUT/*.csv (benchmarks/pretrained/score.py: LOO 5-NN and k-means NMI/ARI, k-means seeds 0-2).
set -euo pipefail
OUT=$(realpath "${1:?usage: run.sh OUT}")
POOL=${CML_POOL_DIR:-$HOME/.cache/cml/pool}
HERE=$(dirname "$(realpath "$0")")
ROOT=$(realpath "$HERE/../..")
cd "$ROOT"
export PATH="$ROOT/.venv/bin:$PATH"  # the project environment of make setup
mkdir -p "$OUT/st" "$OUT/emb"
score() { python "$HERE/score.py" "$@"; }

# The benchmark's audio and track tables (paths into OUT/st)
printf 'study: {audio: corpus, variants: [none], seeds: [0]}\ncorpus: {source: soundtracks}\n' > "$OUT/st/params.yaml"
[ -f "$OUT/st/corpus/manifest.csv" ] || cml corpus --params "$OUT/st/params.yaml" --data data --out "$OUT/st/corpus"
for name in tracks transfer-library; do
  sed "s#outputs/corpus/#$OUT/st/corpus/#" "benchmarks/soundtracks/$name.csv" > "$OUT/st/$name.csv"
done
python -c "import pandas as pd, sys; t = pd.read_csv(sys.argv[1], dtype={'id': str}); \
t[t.split == 'heldout'].assign(path=sys.argv[2] + '/' + t.path).to_csv(sys.argv[3], index=False)" \
  "$POOL/pool.csv" "$POOL" "$OUT/heldout.csv"

# Handcrafted reference
[ -d "$OUT/st/features" ] || cml features --params params.yaml --tracks "$OUT/st/tracks.csv" --out "$OUT/st/features"
score "$OUT/st/features/handcrafted.parquet" --zscore --tracks "$OUT/st/tracks.csv" --out "$OUT/soundtracks.csv"
score "$OUT/st/features/handcrafted.parquet" --zscore --tracks "$OUT/st/tracks.csv" \
  --only "$OUT/st/transfer-library.csv" --out "$OUT/transfer.csv"

# Frozen: no training at all
for lib in st/tracks heldout; do
  cml embed pretrained --tracks "$OUT/$lib.csv" --out "$OUT/emb/frozen-${lib//\//-}.parquet" --no-cache --quiet
done
score "$OUT/emb/frozen-st-tracks.parquet" --tracks "$OUT/st/tracks.csv" --out "$OUT/soundtracks.csv"
score "$OUT/emb/frozen-st-tracks.parquet" --tracks "$OUT/st/tracks.csv" --only "$OUT/st/transfer-library.csv" \
  --out "$OUT/transfer.csv"
score "$OUT/emb/frozen-heldout.parquet" --tracks "$OUT/heldout.csv" --out "$OUT/heldout-scores.csv"

# Fine-tuned: seeds 0-2 of the library training; k-means seed = the training seed
python -c "import pandas as pd, sys; t = pd.read_csv(sys.argv[1]); \
t.assign(split=['val' if i % 5 == 4 else 'train' for i in range(len(t))]).to_csv(sys.argv[2], index=False)" \
  "$OUT/heldout.csv" "$OUT/heldout-split.csv"
finetune() {  # LIB SEED: one training from the shipped encoder, one thread (two run at once on two cores)
  run="$OUT/ft/${1//\//-}-s$2"
  OMP_NUM_THREADS=1 cml train --init pretrained --seed "$2" --tracks "$OUT/$1.csv" --out "$run" --quiet
  OMP_NUM_THREADS=1 cml embed "$run/best.pt" --tracks "$OUT/$1.csv" --out "$run/tracks.parquet" --no-cache --quiet
}
export -f finetune; export OUT
for seed in 0 1 2; do for lib in heldout-split st/tracks st/transfer-library; do echo "$lib $seed"; done; done |
  xargs -P 2 -L 1 bash -c 'finetune "$0" "$1"'
for seed in 0 1 2; do
  score "$OUT/ft/st-tracks-s$seed/tracks.parquet" --tracks "$OUT/st/tracks.csv" --seeds "$seed" \
    --out "$OUT/soundtracks.csv"
  score "$OUT/ft/st-transfer-library-s$seed/tracks.parquet" --tracks "$OUT/st/transfer-library.csv" \
    --seeds "$seed" --out "$OUT/transfer.csv"
  score "$OUT/ft/heldout-split-s$seed/tracks.parquet" --tracks "$OUT/heldout.csv" --seeds "$seed" \
    --out "$OUT/heldout-scores.csv"
done
