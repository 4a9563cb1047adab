#!/usr/bin/env bash
# The frozen encoder against PyTorch transformers, side by side on the same machine (issue #9):
#   1. encoding throughput (sentences/s) of all-MiniLM-L6-v2 on the first ROWS sentences of
#      SST-2's training set, batches of 64 in file order, THREADS threads each;
#   2. end to end, SST-2 with 500 training sentences: our `coordinator experiment` cells
#      baseline and encoder (1 seed, 2 workers) and the PyTorch reference
#      torch_encoder_bilstm.py on its own 500 sentences — accuracy and wall time.
#
#   bench/encoder_vs_torch.sh [ROWS=2048] [THREADS=2] [--no-e2e]
#
# Needs PyTorch and transformers: python3 -m venv ~/torchref && ~/torchref/bin/pip install torch
# transformers (TORCH_PYTHON overrides the interpreter; ANCHORS the folder holding the references).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${TORCH_PYTHON:-$HOME/torchref/bin/python}
ANCHORS=${ANCHORS:-../shared/anchors}
SST2=${SHARED_DATA:-../shared/datasets}/sst2
rows=${1:-2048}
threads=${2:-2}
models/fetch.sh
cargo build --release --quiet --bin coordinator --bin worker
cargo build --release --quiet -p common --example bench_encoder
export HF_HUB_OFFLINE=1 TRANSFORMERS_VERBOSITY=error
ours=$(./target/release/examples/bench_encoder --data "$SST2/train.tsv" --rows "$rows" --threads "$threads")
theirs=$("$PY" bench/encoder_speed.py --data "$SST2/train.tsv" --rows "$rows" --threads "$threads" 2>/dev/null | tail -1)
echo "ours:    $ours"
echo "pytorch: $theirs"
python3 - "$ours" "$theirs" <<'PY'
import json, sys
a, b = (json.loads(x) for x in sys.argv[1:3])
print(f"encoding: {a['sentences_per_s']:.0f} vs {b['sentences_per_s']:.0f} sentences/s on {a['threads']} threads "
      f"= {a['sentences_per_s'] / b['sentences_per_s']:.2f}x PyTorch (target >= 1x)")
PY
if [ "${3:-}" = --no-e2e ]; then exit 0; fi
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
start=$(date +%s.%N)
./target/release/coordinator experiment --data "$SST2/train.tsv" --test "$SST2/test.tsv" --sizes 500 \
  --conditions baseline,encoder --seeds 1 --encoder models/all-MiniLM-L6-v2 --workers 2 --out "$tmp/exp" \
  >"$tmp/exp.log" 2>&1
python3 - "$tmp/exp/results.jsonl" <<'PY'
import json, sys
for l in open(sys.argv[1]):
    c = json.loads(l)
    print(f"ours    SST-2 N=500 {c['condition']:<8}: test accuracy {100 * c['accuracy']:.1f}%, {c['epochs']} epochs, {c['seconds']:.1f} s")
PY
t0=$(date +%s.%N)
"$PY" "$ANCHORS/torch_encoder_bilstm.py" --model models/all-MiniLM-L6-v2 --train "$SST2/train.tsv" \
  --test "$SST2/test.tsv" --n-train 500 --seed 0 --threads "$threads" 2>/dev/null | tail -1 > "$tmp/torch.json"
t1=$(date +%s.%N)
python3 - "$tmp/torch.json" "$t0" "$t1" <<'PY'
import json, sys
d = json.load(open(sys.argv[1]))
print(f"pytorch SST-2 N=500 encoder : test accuracy {100 * d['accuracy']:.1f}%, {d['epochs']} epochs, "
      f"{float(sys.argv[3]) - float(sys.argv[2]):.1f} s (encoding {d['encode_seconds']} s)")
PY
