#!/usr/bin/env bash
# The small-sample target of issue #7: N=500, seeds 0-2, baseline and eda, on TREC, SST-2, SUBJ
# and CR with the fixed protocol (10% validation, patience 3, at most 50 epochs), against the
# PyTorch reference under the same protocol (../shared/anchors/README.md: seed model at
# N=500, mean 62.0; its EDA ×16 mean 63.5). Usage: bench/experiment_n500.sh [OUT] [WORKERS THREADS]
set -euo pipefail
cd "$(dirname "$0")/.."
out="${1:-runs/exp-n500}"
workers="${2:-1}"
threads="${3:-2}"
data="${DATASETS:-../shared/datasets}"
bin=target/release/coordinator
cargo build --release --bins
for corpus in trec sst2 subj cr; do
  $bin experiment --data "$data/$corpus/train.tsv" --test "$data/$corpus/test.tsv" \
    --sizes 500 --conditions baseline,eda --seeds 3 --workers "$workers" --threads "$threads" \
    --out "$out/$corpus" 2>"$out-$corpus.log" >/dev/null || { tail "$out-$corpus.log"; exit 1; }
done
python3 - "$out" <<'PY'
import json, statistics, sys
out = sys.argv[1]
ref = {"trec": (64.0, 65.1), "sst2": (53.9, 55.6), "subj": (65.3, 68.3), "cr": (64.6, 65.1)}
rows, means = [], {"baseline": [], "eda": []}
print("| corpus | baseline (ours) | eda (ours) | reference seed model | reference + EDA ×16 |")
print("| --- | --- | --- | --- | --- |")
for corpus in ["trec", "sst2", "subj", "cr"]:
    cells = [json.loads(l) for l in open(f"{out}/{corpus}/results.jsonl")]
    acc = {c: [100 * x["accuracy"] for x in cells if x["condition"] == c] for c in means}
    for c in means:
        means[c].append(statistics.mean(acc[c]))
    fmt = lambda xs: f"{statistics.mean(xs):.1f} ± {statistics.stdev(xs):.1f}"
    print(f"| {corpus} | {fmt(acc['baseline'])} | {fmt(acc['eda'])} | {ref[corpus][0]} | {ref[corpus][1]} |")
b, e = statistics.mean(means["baseline"]), statistics.mean(means["eda"])
print(f"| mean | {b:.1f} | {e:.1f} | 62.0 | 63.5 |")
print(f"baseline − reference: {b - 62.0:+.1f} points (target within ±2); eda − baseline: {e - b:+.1f} points (target ≥ +1)")
PY
