#!/usr/bin/env bash
# Packs what gpu/check.sh needs on a GPU machine into .gpu-bundle/ (git-ignored): the GPU
# worker and coordinator (gpu/build.sh; the coordinator for `evaluate --device cuda`), stripped and
# xz-compressed (the worker's embedded PTX makes it 55 MiB, 9 MiB compressed); a slice of SST-2
# (2,000 training rows, the test set, and the 500 rows bench/finetune_speed.sh draws); and
# MiniLM's config.json and tokenizer.json without its weights (fine-tuning's speed does not
# depend on them: both sides draw them, --encoder-random-init and the reference's
# --random-init). With the repository's data/trec and gpu/ it is all the GPU machine needs
# (17 MiB with a CPU coordinator; the GPU coordinator's PTX adds about as much as the
# worker's; the sizes are printed at the end).
set -euo pipefail
cd "$(dirname "$0")/.."
gpu/build.sh
rm -rf .gpu-bundle
mkdir -p .gpu-bundle
for bin in target/cuda/release/worker target/cuda/release/coordinator; do
  strip -o ".gpu-bundle/$(basename "$bin")" "$bin"
  xz -T0 -6 ".gpu-bundle/$(basename "$bin")"
done
SST2=${SHARED_DATA:-../shared/datasets}/sst2
mkdir -p .gpu-bundle/sst2 .gpu-bundle/minilm
python3 - "$SST2/train.tsv" .gpu-bundle/sst2 <<'PY'
import random, sys
rows = [l for l in open(sys.argv[1], encoding="utf-8") if l.strip()]
open(f"{sys.argv[2]}/train.tsv", "w", encoding="utf-8").writelines(rows[:2000])
random.Random(0).shuffle(rows)
open(f"{sys.argv[2]}/finetune-500.tsv", "w", encoding="utf-8").writelines(rows[:500])
PY
cp "$SST2/test.tsv" .gpu-bundle/sst2/test.tsv
models/fetch.sh
cp models/all-MiniLM-L6-v2/config.json models/all-MiniLM-L6-v2/tokenizer.json .gpu-bundle/minilm/
du -sh .gpu-bundle/*
du -sh .gpu-bundle
