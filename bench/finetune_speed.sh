#!/usr/bin/env bash
# Fine-tuning's speed and memory against PyTorch (issue #24), side by side in one command, on
# the same 500 SST-2 rows (drawn once with seed 0; the reference takes them with --n-train 0
# and holds out 10% as we do with --eval-split 0.1), the same head (mean), batch 16, EPOCHS
# epochs each:
#   1. ours, one worker × 2 threads, against torch_finetune.py --threads 2, in ROUNDS alternating
#      pairs. Samples/s: training examples over the wall time of the epochs (ours from epoch
#      1's end to the last epoch's end, validation and our per-epoch checkpoint of weights and
#      optimizer state included; the reference's train_samples_per_s, its validation passes
#      included), and ours over the training steps alone; peak RSS (ours:
#      coordinator + worker, from summary.json; the reference's from /usr/bin/time).
#      Thresholds: at least 1.2x; peak RSS at most half of the reference's.
#   2. ours, 2 workers × 1 thread against 1 × 1; the all-reduce's share of a step over shared
#      memory and over TCP (2 × 1).
#   3. with BASE_BIN=DIR (another build's coordinator and worker), that build's 2 × 1 share
#      too, run beside ours in turn: a before-and-after of a change to the step.
# Usage: [BASE_BIN=DIR] bench/finetune_speed.sh [EPOCHS=3] [ROUNDS=2]
# Needs PyTorch and transformers (TORCH_PYTHON, default ~/torchref/bin/python).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${TORCH_PYTHON:-$HOME/torchref/bin/python}
ANCHORS=${ANCHORS:-../shared/anchors}
SST2=${SHARED_DATA:-../shared/datasets}/sst2
epochs=${1:-3}
[ "$epochs" -ge 2 ] || { echo "EPOCHS must be at least 2 (epoch 1 holds our start-up)"; exit 2; }
rounds=${2:-2}
models/fetch.sh
cargo build --release --quiet --bin coordinator --bin worker
export HF_HUB_OFFLINE=1 TRANSFORMERS_VERBOSITY=error
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
python3 - "$SST2/train.tsv" "$tmp/sst2-500.tsv" <<'PY'
import random, sys
rows = [l for l in open(sys.argv[1], encoding="utf-8") if l.strip()]
random.Random(0).shuffle(rows)
open(sys.argv[2], "w", encoding="utf-8").writelines(rows[:500])
PY
ours() { # NAME WORKERS THREADS [more flags]: prints samples/s, peak RSS MB, all-reduce share
  local name=$1 workers=$2 threads=$3; shift 3
  "${BIN:-./target/release}/coordinator" --workers "$workers" --threads "$threads" \
    --encoder models/all-MiniLM-L6-v2 --encoder-mode finetune --data "$tmp/sst2-500.tsv" \
    --eval-split 0.1 --epochs "$epochs" --run-dir "$tmp/$name" "$@" 2>"$tmp/$name.log"
  python3 - "$tmp/$name" <<'PY'
import datetime, json, re, sys
run = sys.argv[1]
log = open(run + ".log").read().splitlines()
stamp = lambda l: datetime.datetime.fromisoformat(re.sub(r"\x1b\[[0-9;]*m", "", l).split()[0].rstrip("Z"))
# From the end of epoch 1 to the end of the last: the workers' start-up (the initial state
# fetched, the model built) is not counted, as the reference starts its clock after building.
ends = [stamp(l) for l in log if re.search(r"INFO epoch \d+/\d+:", l)]
start, end = ends[0], ends[-1]
lines = [json.loads(l) for l in open(run + "/metrics.jsonl")]
examples = sum(l["examples"] for l in lines[1:])
s = json.load(open(run + "/summary.json"))
rss = s["peak_rss_mb"]["coordinator"] + sum(s["peak_rss_mb"]["workers"])
step = [l["compute_s_per_step"] + l["allreduce_s_per_step"] + l["update_s_per_step"] for l in lines]
share = sum(l["allreduce_s_per_step"] for l in lines) / sum(step)
# Training steps alone: examples over the seconds the workers spent in steps.
steps_only = s["samples_per_s"]
print(f"{examples / (end - start).total_seconds():.1f} {rss:.0f} {share:.4f} {s['accuracy']:.4f} {steps_only:.1f}")
PY
}
theirs() {
  /usr/bin/time -f "%M" -o "$tmp/torch.rss" "$PY" "$ANCHORS/torch_finetune.py" \
    --model models/all-MiniLM-L6-v2 --train "$tmp/sst2-500.tsv" --test "$SST2/test.tsv" \
    --n-train 0 --max-epochs "$epochs" --threads 2 2>/dev/null | tail -1 > "$tmp/torch.json"
  python3 - "$tmp/torch.json" "$tmp/torch.rss" <<'PY'
import json, sys
d = json.load(open(sys.argv[1]))
print(f"{d['train_samples_per_s']:.1f} {int(open(sys.argv[2]).read().split()[-1]) / 1024:.0f} {d['accuracy']:.4f}")
PY
}
ratios=()
for r in $(seq 1 "$rounds"); do
  read -r a a_rss _ a_acc a_steps <<<"$(ours "pair$r" 1 2)"
  read -r b b_rss b_acc <<<"$(theirs)"
  ratio=$(python3 -c "print(f'{$a / $b:.2f}')")
  ratios+=("$ratio")
  echo "round $r: ours $a samples/s (training steps alone: $a_steps, $(python3 -c "print(f'{$a_steps / $b:.2f}')")x), peak RSS $a_rss MB (test $a_acc) | PyTorch $b samples/s, peak RSS $b_rss MB (test $b_acc) | speed ${ratio}x, memory $(python3 -c "print(f'{$a_rss / $b_rss:.2f}')")x"
done
read -r one _ _ _ _ <<<"$(ours one 1 1)"
read -r two _ shm _ _ <<<"$(ours two 2 1)"
read -r _ _ tcp _ _ <<<"$(ours tcp 2 1 --ring-transport tcp)"
echo "2 workers x 1 thread: $two samples/s against 1 x 1: $one ($(python3 -c "print(f'{$two / $one:.2f}')")x)"
echo "all-reduce share of a step, 2 x 1: shared memory $(python3 -c "print(f'{100 * $shm:.1f}')")%, TCP $(python3 -c "print(f'{100 * $tcp:.1f}')")%"
if [[ -n ${BASE_BIN:-} ]]; then
  read -r b_two _ b_shm _ _ <<<"$(BIN=$BASE_BIN ours base-two 2 1)"
  read -r _ _ b_tcp _ _ <<<"$(BIN=$BASE_BIN ours base-tcp 2 1 --ring-transport tcp)"
  echo "$BASE_BIN, 2 x 1: $b_two samples/s; all-reduce share: shared memory $(python3 -c "print(f'{100 * $b_shm:.1f}')")%, TCP $(python3 -c "print(f'{100 * $b_tcp:.1f}')")%"
fi
echo "speed ratios: ${ratios[*]} (threshold 1.2x)"
