#!/usr/bin/env bash
# Multi-task learning's benchmark (issue #25): 500 CR rows as the target, 5 seeds, from
# scratch, with the fixed protocol of `experiment` (10% validation, patience 3, at most 50
# epochs). Three tables: all of SST-2 as the auxiliary source at weight 0.5 (baseline, mix,
# multitask); SUBJ instead (different labels: mix cannot apply, the report says so); and SST-2
# under the frozen encoder (encoder, encoder+mix, encoder+multitask; needs models/fetch.sh).
# Threshold: multitask at least 2 points above baseline in accuracy and in macro-F1.
# Usage: bench/multitask.sh [OUT] [SEEDS]
set -euo pipefail
cd "$(dirname "$0")/.."
out="${1:-runs/bench-multitask}"
seeds="${2:-5}"
data="${DATASETS:-../shared/datasets}"
bin=target/release/coordinator
cargo build --release --bins
mkdir -p "$out"
run() {
  local name="$1"; shift
  $bin experiment --data "$data/cr/train.tsv" --test "$data/cr/test.tsv" --sizes 500 \
    --seeds "$seeds" --workers 1 --threads 2 --out "$out/$name" "$@" \
    2>"$out/$name.log" >/dev/null || { tail "$out/$name.log"; exit 1; }
  tail -n +5 "$out/$name/report.md"
}
run sst2 --conditions baseline,mix,multitask --mix "$data/sst2/train.tsv:0.5"
run subj --conditions baseline,mix,multitask --mix "$data/subj/train.tsv:0.5"
if [ -f models/all-MiniLM-L6-v2/model.safetensors ]; then
  run sst2-encoder --conditions encoder,encoder+mix,encoder+multitask \
    --mix "$data/sst2/train.tsv:0.5" --encoder models/all-MiniLM-L6-v2
fi
python3 - "$out" <<'PY'
import json, statistics, sys
cells = [json.loads(l) for l in open(f"{sys.argv[1]}/sst2/results.jsonl")]
def mean(cond, key):
    return statistics.mean(100 * c[key] for c in cells if c["condition"] == cond)
gains = [mean("multitask", k) - mean("baseline", k) for k in ("accuracy", "macro_f1")]
print(f"multitask - baseline: accuracy {gains[0]:+.1f}, macro-F1 {gains[1]:+.1f} (threshold +2.0 each)")
sys.exit(0 if min(gains) >= 2.0 else 1)
PY
