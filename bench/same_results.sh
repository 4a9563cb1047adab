#!/usr/bin/env bash
# Do two builds train the same models? A redesign must keep its figures: this records, for each
# of a fixed set of runs, the SHA-256 of the final weights and the test accuracy, once with the
# binaries of BASE_COMMIT and once with this checkout's, and compares them line by line.
#
#   bench/same_results.sh BASE_COMMIT        # builds BASE_COMMIT in a worktree (target/same-base)
#   BASE_BIN=DIR bench/same_results.sh       # DIR holds that commit's coordinator and worker
#   bench/same_results.sh --record BIN OUT   # only records BIN's figures into OUT/figures.txt
#
# The runs: TREC, 3 epochs, 1 worker and 2 workers; EDA with oversampling; a weighted mix of
# two sources; the frozen encoder on 500 SST-2 rows; MiniLM fine-tuned on 200 of them; a run
# killed after epoch 1 and resumed; a small experiment grid (its results.jsonl without the
# wall-clock seconds, and its models).
# Every run fixes its threads, so the figures do not depend on the machine's core count.
# Exit 0 when every figure is equal, 1 when one differs (the differing lines are printed).
set -euo pipefail
cd "$(dirname "$0")/.."
root=$PWD
data=$root/data/trec
shared=${SHARED_DATA:-$root/../shared/datasets}

record() {
  local bin=$1 out=$2
  mkdir -p "$out"
  local c=$bin/coordinator fig=$out/figures.txt
  : >"$fig"
  local tmp=$out/work
  rm -rf "$tmp" && mkdir -p "$tmp"
  head -n 1500 "$data/train.tsv" | tail -n 700 >"$tmp/b.tsv"
  head -n 800 "$data/train.tsv" >"$tmp/a.tsv"
  head -n 500 "$shared/sst2/train.tsv" >"$tmp/sst2.tsv"
  head -n 300 "$shared/sst2/test.tsv" >"$tmp/sst2_test.tsv"
  fact() { # NAME RUN_DIR: the weights' hash and the summary's test accuracy
    local w a
    w=$(sha256sum "$2/model/weights.safetensors" | cut -d' ' -f1)
    a=$(python3 -c 'import json,sys; s=json.load(open(sys.argv[1])); print(s.get("test_accuracy", s.get("accuracy")))' "$2/summary.json")
    echo "$1 weights=$w accuracy=$a" | tee -a "$fig"
  }
  train() { # NAME ARGS...
    local name=$1
    shift
    "$c" --run-dir "$tmp/$name" --seed 7 "$@" >"$tmp/$name.log" 2>&1 ||
      { tail -n 20 "$tmp/$name.log"; echo "$name failed" >&2; exit 2; }
    fact "$name" "$tmp/$name"
  }
  local test=(--test "$data/test.tsv")
  train trec_1w --workers 1 --threads 2 --epochs 3 --data "$data/train.tsv" "${test[@]}"
  train trec_2w --workers 2 --threads 1 --epochs 3 --data "$data/train.tsv" "${test[@]}"
  train eda --workers 1 --threads 2 --epochs 2 --data "$tmp/a.tsv" --augment eda --num-aug 2 \
    --balance oversample "${test[@]}"
  train mix --workers 2 --threads 1 --epochs 2 --data "$tmp/a.tsv:0.7" --data "$tmp/b.tsv:0.3" \
    "${test[@]}"
  train dropout --workers 2 --threads 1 --epochs 2 --dropout 0.3 --data "$tmp/a.tsv" "${test[@]}"
  train encoder --workers 2 --threads 1 --epochs 2 --encoder "$root/models/all-MiniLM-L6-v2" \
    --data "$tmp/sst2.tsv" --test "$tmp/sst2_test.tsv"
  head -n 200 "$tmp/sst2.tsv" >"$tmp/sst2_200.tsv"
  train finetune --workers 2 --threads 1 --epochs 2 --encoder "$root/models/all-MiniLM-L6-v2" \
    --encoder-mode finetune --head mean --data "$tmp/sst2_200.tsv" --eval-split 0.1 \
    --test "$tmp/sst2_test.tsv"
  # Killed after epoch 1 (its metrics line is written), then resumed to the end.
  local r=$tmp/resumed
  "$c" --run-dir "$r" --seed 7 --workers 1 --threads 2 --epochs 3 --data "$data/train.tsv" \
    "${test[@]}" >"$tmp/resumed.log" 2>&1 &
  local pid=$!
  for _ in $(seq 600); do
    [[ -s $r/metrics.jsonl ]] && break
    sleep 0.1
  done
  kill -9 "$pid" 2>/dev/null || true
  pkill -9 -f "worker.*$r" 2>/dev/null || true
  wait "$pid" 2>/dev/null || true
  [[ -s $r/metrics.jsonl ]] || { echo "the run to kill wrote no epoch" >&2; exit 2; }
  "$c" --resume "$r" >>"$tmp/resumed.log" 2>&1 || { tail "$tmp/resumed.log"; exit 2; }
  fact resumed "$r"
  "$c" experiment --data "$tmp/a.tsv" --test "$data/test.tsv" --sizes 100,300 \
    --conditions baseline,eda --seeds 2 --max-epochs 4 --workers 1 --threads 2 \
    --out "$tmp/grid" >"$tmp/grid.log" 2>&1 || { tail "$tmp/grid.log"; exit 2; }
  python3 - "$tmp/grid/results.jsonl" <<'PY' | tee -a "$fig"
import json, sys
for line in open(sys.argv[1]):
    cell = json.loads(line)
    cell.pop("seconds")
    print("grid", json.dumps(cell, sort_keys=True))
PY
  # The cells' models (a recorded cell's checkpoint is deleted since 04b4ff2).
  find "$tmp/grid/runs" -path '*/model/weights.safetensors' | sort | while read -r w; do
    echo "grid ${w#"$tmp"/grid/runs/} $(sha256sum "$w" | cut -d' ' -f1)" | tee -a "$fig"
  done
}

if [[ ${1:-} == --record ]]; then
  record "$2" "$3"
  exit 0
fi

cargo build --release --locked --quiet -p coordinator -p worker
mkdir -p target/same
rm -rf target/same/new-bin && mkdir -p target/same/new-bin
cp target/release/coordinator target/release/worker target/same/new-bin/
if [[ -z ${BASE_BIN:-} ]]; then
  base=${1:?usage: bench/same_results.sh BASE_COMMIT (or BASE_BIN=DIR)}
  wt=target/same/base-src
  git worktree remove --force "$wt" 2>/dev/null || rm -rf "$wt"
  git worktree add --detach "$wt" "$base" >/dev/null
  (cd "$wt" && CARGO_TARGET_DIR=$root/target/same-base cargo build --release --locked --quiet \
    -p coordinator -p worker)
  BASE_BIN=$root/target/same-base/release
  git worktree remove --force "$wt"
fi
models/fetch.sh
echo "== base ($BASE_BIN)"
record "$BASE_BIN" target/same/base
echo "== this checkout"
record "$root/target/same/new-bin" target/same/new
if diff target/same/base/figures.txt target/same/new/figures.txt; then
  echo "same results: $(wc -l <target/same/new/figures.txt) figures equal"
else
  echo "DIFFERENT results (above: < base, > this checkout)"
  exit 1
fi
