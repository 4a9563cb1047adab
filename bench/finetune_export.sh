#!/usr/bin/env bash
# Does Hugging Face load what `coordinator export-encoder` writes (issue #24, item 6)? Fine-tunes
# all-MiniLM-L6-v2 for one epoch on 200 SST-2 rows, exports the encoder, loads it with
# transformers' AutoModel and AutoTokenizer (the reference's Python), puts the model's own head
# (mean pooling, then its fc weights) on top, and compares the class probabilities with
# `coordinator predict --json` on 50 test sentences. Exit 1 when a probability differs by more
# than 1e-4 or a label differs.
# Usage: bench/finetune_export.sh   (needs PyTorch and transformers: TORCH_PYTHON)
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${TORCH_PYTHON:-$HOME/torchref/bin/python}
SST2=${SHARED_DATA:-../shared/datasets}/sst2
models/fetch.sh
cargo build --release --quiet --bin coordinator --bin worker
export HF_HUB_OFFLINE=1 TRANSFORMERS_VERBOSITY=error
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
head -n 200 "$SST2/train.tsv" >"$tmp/train.tsv"
head -n 50 "$SST2/test.tsv" | cut -f2 >"$tmp/sentences.txt"
./target/release/coordinator --workers 1 --encoder models/all-MiniLM-L6-v2 --encoder-mode finetune \
  --data "$tmp/train.tsv" --epochs 1 --run-dir "$tmp/run" 2>"$tmp/train.log"
./target/release/coordinator export-encoder --model "$tmp/run/model" --out "$tmp/hf" 2>>"$tmp/train.log"
./target/release/coordinator predict --model "$tmp/run/model" --json --input "$tmp/sentences.txt" \
  >"$tmp/ours.jsonl" 2>>"$tmp/train.log"
"$PY" - "$tmp" <<'PY'
import json, sys
import torch
from safetensors.torch import load_file
from transformers import AutoModel, AutoTokenizer
tmp = sys.argv[1]
enc, tok = AutoModel.from_pretrained(f"{tmp}/hf").eval(), AutoTokenizer.from_pretrained(f"{tmp}/hf")
weights = load_file(f"{tmp}/run/model/weights.safetensors")
labels = json.load(open(f"{tmp}/run/model/model.json"))["labels"]
sentences = [l.rstrip("\n") for l in open(f"{tmp}/sentences.txt", encoding="utf-8")]
ours = [json.loads(l) for l in open(f"{tmp}/ours.jsonl")]
with torch.no_grad():
    b = tok(sentences, padding=True, truncation=True, max_length=64, return_tensors="pt")
    h = enc(**b).last_hidden_state
    m = b["attention_mask"].unsqueeze(-1).float()
    p = torch.softmax(((h * m).sum(1) / m.sum(1)) @ weights["fc.weight"].T + weights["fc.bias"], 1)
worst, same = 0.0, 0
for o, row in zip(ours, p):
    k = int(row.argmax())
    same += labels[k] == o["label"]
    worst = max(worst, abs(float(row[k]) - o["probability"]))
print(f"transformers' AutoModel on the export: {same}/{len(ours)} labels as ours, largest probability difference {worst:.2e}")
sys.exit(0 if same == len(ours) and worst <= 1e-4 else 1)
PY
