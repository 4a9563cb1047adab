#!/usr/bin/env bash
# Fine-tuning's accuracy benchmark (issue #24): N = 500, 3 seeds, TREC, SST-2, SUBJ and CR, the
# experiment's `encoder` (frozen, under the BiLSTM) and `finetune` conditions with one set of
# defaults for every corpus, against the PyTorch reference's figures (torch_finetune.py, mean
# head, 3 seeds; ../shared/anchors/README.md). Thresholds: the four-corpus mean of finetune at
# least the reference's (88.0) minus 1; no corpus below the reference's minus 3; finetune at
# least encoder + 5 points.
# Usage: bench/finetune_accuracy.sh [OUT] [SEEDS]   (about an hour on 2 cores)
set -euo pipefail
cd "$(dirname "$0")/.."
out="${1:-runs/bench-finetune}"
seeds="${2:-3}"
data="${DATASETS:-../shared/datasets}"
bin=target/release/coordinator
models/fetch.sh
cargo build --release --bins
mkdir -p "$out"
for corpus in trec sst2 subj cr; do
  $bin experiment --data "$data/$corpus/train.tsv" --test "$data/$corpus/test.tsv" --sizes 500 \
    --seeds "$seeds" --workers 1 --threads 2 --conditions encoder,finetune \
    --encoder models/all-MiniLM-L6-v2 --out "$out/$corpus" \
    2>"$out/$corpus.log" >/dev/null || { tail "$out/$corpus.log"; exit 1; }
done
python3 - "$out" <<'PY'
import json, statistics, sys
reference = {"trec": 93.1, "sst2": 80.7, "subj": 92.5, "cr": 85.6}
names = {"trec": "TREC", "sst2": "SST-2", "subj": "SUBJ", "cr": "CR"}
ok, rows, means = True, [], {"encoder": [], "finetune": []}
print("| corpus | encoder (frozen) | finetune | seeds (finetune) | PyTorch fine-tuned |")
print("| --- | --- | --- | --- | --- |")
for corpus, ref in reference.items():
    cells = [json.loads(l) for l in open(f"{sys.argv[1]}/{corpus}/results.jsonl")]
    acc = {c: [100 * x["accuracy"] for x in cells if x["condition"] == c] for c in means}
    m = {c: statistics.mean(v) for c, v in acc.items()}
    for c in means:
        means[c].append(m[c])
    seeds = ", ".join(f"{a:.1f}" for a in acc["finetune"])
    print(f"| {names[corpus]} | {m['encoder']:.1f} | {m['finetune']:.1f} | {seeds} | {ref} |")
    if m["finetune"] < ref - 3:
        print(f"  {names[corpus]}: {m['finetune']:.1f} is below the reference's {ref} minus 3")
        ok = False
enc, ft = statistics.mean(means["encoder"]), statistics.mean(means["finetune"])
ref = statistics.mean(reference.values())
print(f"| mean | {enc:.1f} | {ft:.1f} | | {ref:.1f} |")
print(f"finetune mean {ft:.1f} (threshold {ref - 1:.1f}); finetune - encoder {ft - enc:+.1f} (threshold +5.0)")
ok = ok and ft >= ref - 1 and ft - enc >= 5
sys.exit(0 if ok else 1)
PY
