#!/usr/bin/env bash
# Is a build as fast as another? Runs the two builds' coordinators in turn (old, new, old, new,
# …), PAIRS pairs of TREC 3 epochs each, with 1 worker × 2 threads and with 2 workers × 1
# thread, and the two builds' encoder benchmarks (bench_encoder: all-MiniLM-L6-v2 sentences/s
# on SST-2), and prints each pair's ratio new/old of samples/s (sentences/s) and their median.
# Pairs are interleaved so that a drift in the machine's speed hits both sides alike.
#
#   bench/same_speed.sh OLD_DIR NEW_DIR [PAIRS=5]
#
# Each DIR holds a build's coordinator and worker, and its bench_encoder (cargo build --release
# --bins && cargo build --release -p common --example bench_encoder; copy target/release/
# {coordinator,worker} and target/release/examples/bench_encoder there).
set -euo pipefail
cd "$(dirname "$0")/.."
old=${1:?usage: bench/same_speed.sh OLD_DIR NEW_DIR [PAIRS]}
new=${2:?usage: bench/same_speed.sh OLD_DIR NEW_DIR [PAIRS]}
pairs=${3:-5}
sst2=${SHARED_DATA:-../shared/datasets}/sst2/train.tsv
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
models/fetch.sh

rate() { # BIN_DIR ARGS...: samples/s of one TREC run
  local dir=$1
  shift
  rm -rf "$tmp/run"
  "$dir/coordinator" --run-dir "$tmp/run" --epochs 3 --data data/trec/train.tsv "$@" \
    >"$tmp/log" 2>&1 || { tail "$tmp/log" >&2; exit 1; }
  python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["samples_per_s"])' \
    "$tmp/run/summary.json"
}

encode() { # BIN_DIR: sentences/s of the encoder
  "$1/bench_encoder" --data "$sst2" --rows 512 --threads 2 |
    python3 -c 'import json,sys; print(json.load(sys.stdin)["sentences_per_s"])'
}

report() { # NAME FILE: pairs "old new" per line
  python3 - "$1" "$2" <<'PY'
import statistics, sys
name, path = sys.argv[1], sys.argv[2]
pairs = [tuple(map(float, l.split())) for l in open(path)]
ratios = [n / o for o, n in pairs]
print(f"{name}: old {' '.join(f'{o:.0f}' for o, _ in pairs)}; new {' '.join(f'{n:.0f}' for _, n in pairs)}")
print(f"{name}: ratio new/old per pair {' '.join(f'{r:.3f}' for r in ratios)}; median {statistics.median(ratios):.3f}")
PY
}

for what in one two encoder; do
  : >"$tmp/$what"
  for _ in $(seq "$pairs"); do
    case $what in
      one) a=$(rate "$old" --workers 1 --threads 2); b=$(rate "$new" --workers 1 --threads 2) ;;
      two) a=$(rate "$old" --workers 2 --threads 1); b=$(rate "$new" --workers 2 --threads 1) ;;
      encoder) a=$(encode "$old"); b=$(encode "$new") ;;
    esac
    echo "$a $b" >>"$tmp/$what"
  done
  case $what in
    one) report "TREC 3 epochs, 1 worker x 2 threads, samples/s" "$tmp/$what" ;;
    two) report "TREC 3 epochs, 2 workers x 1 thread, samples/s" "$tmp/$what" ;;
    encoder) report "encoder, SST-2 512 sentences, 2 threads, sentences/s" "$tmp/$what" ;;
  esac
done
