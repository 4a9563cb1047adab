#!/usr/bin/env bash
# The epoch-size estimate behind --memory-budget against the measured peak memory of
# `data export` (TREC, EDA, oversampled), for K augmentations per example.
# Usage: bench/epoch_memory.sh [K ...]   (default: 4 16 64)
set -euo pipefail
cd "$(dirname "$0")/.."
bin=target/release/coordinator
[[ -x $bin ]] || cargo build --release -q -p coordinator
out=$(mktemp --suffix=.tsv)
trap 'rm -f "$out"' EXIT
base_kb=$(/usr/bin/time -f %M "$bin" data export --data data/trec/train.tsv --out "$out" 2>&1 >/dev/null | tail -1)
printf '%6s %12s %12s %12s\n' K sentences estimate measured
for k in "${@:-4 16 64}"; do
  for kk in $k; do
    log=$(RUST_LOG=common=debug /usr/bin/time -f 'peak %M' "$bin" data export --data data/trec/train.tsv \
      --augment eda --num-aug "$kk" --balance oversample --out "$out" 2>&1 >/dev/null)
    est=$(grep -o 'about [0-9.]*[KMGT]* of the budget' <<<"$log" | awk '{print $2}')
    n=$(grep -o 'about [0-9]* sentences' <<<"$log" | awk '{print $2}')
    peak_kb=$(grep -o 'peak [0-9]*' <<<"$log" | awk '{print $2}')
    printf '%6s %12s %12s %11sM\n' "$kk" "$n" "$est" "$(( (peak_kb - base_kb) / 1024 ))"
  done
done
