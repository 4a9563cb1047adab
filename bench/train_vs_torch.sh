#!/usr/bin/env bash
# Training speed and memory, ours vs the PyTorch reference, side by side on the same data,
# model, batch, epochs and threads (issue #3), and data-parallel (issue #4).
#
#   bench/train_vs_torch.sh [trec|sst2] [threads] [epochs]     # one process each
#   bench/train_vs_torch.sh ddp [trec|sst2] [epochs]           # 1×1 and 2×1 ours vs torchrun 2×1
#
# In ddp mode our 2×1 run sums through shared memory (--ring-transport auto, what two local
# workers use) and is repeated over the TCP ring for comparison; bytes/step are the bytes each
# worker publishes to the others either way. REPEAT=N (ddp mode) runs our three
# configurations N times, interleaved so that a slow spell of a shared machine hits all of
# them alike, and prints each column's median over the N runs (the scaling is the ratio of
# the medians). Before each of those runs it also measures what this machine's second core
# adds at that moment (bench_op PROBE=2: the step's products alone, then two copies at once):
# on a shared host two busy vCPUs at times get the throughput of one, and then no program
# scales.
#
# Needs PyTorch: python3 -m venv ~/torchref && ~/torchref/bin/pip install torch
# (TORCH_PYTHON overrides the interpreter; ANCHORS the folder holding torch_bilstm.py).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${TORCH_PYTHON:-$HOME/torchref/bin/python}
ANCHORS=${ANCHORS:-../shared/anchors}
SHARED=${SHARED_DATA:-../shared/datasets}
mode=single
if [ "${1:-}" = ddp ]; then mode=ddp; shift; fi
corpus=${1:-trec}
case "$corpus" in
  trec) train=data/trec/train.tsv; test=data/trec/test.tsv ;;
  sst2) train=$SHARED/sst2/train.tsv; test=$SHARED/sst2/test.tsv ;;
  *) echo "unknown corpus $corpus (trec|sst2)" >&2; exit 2 ;;
esac
cargo build --release --quiet --bin coordinator --bin worker
[ "$mode" = ddp ] && cargo build --release --quiet -p common --example bench_op
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT

ours() { # workers threads epochs tag [coordinator options...]
  local w=$1 th=$2 ep=$3 tag=$4
  shift 4
  ${CHRT:-} ./target/release/coordinator --workers "$w" --threads "$th" --epochs "$ep" --data "$train" --test "$test" \
    --run-dir "$tmp/$tag" "$@" 2>"$tmp/$tag.log" >/dev/null
  python3 - "$tmp/$tag/summary.json" "$tmp/$tag/metrics.jsonl" <<'PY'
import json, sys, statistics
s = json.load(open(sys.argv[1]))
m = [json.loads(l) for l in open(sys.argv[2])]
ms = lambda k: statistics.median(x[k] for x in m) * 1e3
by = statistics.median(x["bytes_per_step"] for x in m)
rss = max([s["peak_rss_mb"]["coordinator"]] + s["peak_rss_mb"]["workers"])
print(f'{s["samples_per_s"]:.1f} {s["accuracy"]:.4f} {rss:.0f} {ms("allreduce_s_per_step"):.2f} {by:.0f} '
      f'{ms("compute_s_per_step"):.2f} {ms("update_s_per_step"):.2f}')
PY
}
machine() { # what a second busy core adds right now: the step's products, two copies vs one
  local probe=./target/release/examples/bench_op
  local one two_a two_b
  one=$(PROBE=2 ${CHRT:-} "$probe" | awk '{print $2}')
  PROBE=2 ${CHRT:-} "$probe" | awk '{print $2}' >"$tmp/probe" &
  two_a=$(PROBE=2 ${CHRT:-} "$probe" | awk '{print $2}')
  wait
  two_b=$(cat "$tmp/probe")
  python3 -c 'import sys; a, b, c = map(float, sys.argv[1:]); print(f"{(b + c) / a:.2f}")' "$one" "$two_a" "$two_b"
}
torch() { # threads epochs tag [torchrun]
  if [ "${4:-}" = torchrun ]; then
    "$(dirname "$PY")/torchrun" --nproc-per-node 2 "$ANCHORS/torch_bilstm.py" --train "$train" --test "$test" \
      --epochs "$2" --threads "$1" 2>"$tmp/$3.log" | tail -1 > "$tmp/$3.json"
    rss=0
  else
    ${CHRT:-} /usr/bin/time -f '%M' -o "$tmp/$3.rss" "$PY" "$ANCHORS/torch_bilstm.py" --train "$train" --test "$test" \
      --epochs "$2" --threads "$1" 2>"$tmp/$3.log" | tail -1 > "$tmp/$3.json"
    rss=$(( $(cat "$tmp/$3.rss") / 1024 ))
  fi
  python3 -c 'import json,sys; d=json.load(open(sys.argv[1])); print("%.1f %.4f" % (d["samples_per_s_median"], d["accuracy"]), sys.argv[2])' "$tmp/$3.json" "$rss"
}

if [ "$mode" = single ]; then
  threads=${2:-2}; epochs=${3:-3}
  read -r o_sps o_acc o_rss _ _ _ _ <<<"$(ours 1 "$threads" "$epochs" ours)"
  read -r t_sps t_acc t_rss <<<"$(torch "$threads" "$epochs" torch)"
  printf '%s, %s thread(s), %s epochs, batch 32\n' "$corpus" "$threads" "$epochs"
  printf '%-28s %12s %10s %14s\n' run samples/s accuracy "peak RSS MB"
  printf '%-28s %12s %10s %14s\n' "ours (coordinator+1 worker)" "$o_sps" "$o_acc" "$o_rss"
  printf '%-28s %12s %10s %14s\n' "PyTorch reference" "$t_sps" "$t_acc" "$t_rss"
  python3 -c "import sys; print(f'ratio ours/PyTorch: {float(sys.argv[1])/float(sys.argv[2]):.2f}x')" "$o_sps" "$t_sps"
else
  epochs=${2:-3}
  repeat=${REPEAT:-1}
  for i in $(seq "$repeat"); do
    machine >>"$tmp/machine.rows"
    ours 1 1 "$epochs" "one$i" >>"$tmp/one.rows"
    ours 2 1 "$epochs" "two$i" >>"$tmp/two.rows"
    ours 2 1 "$epochs" "twotcp$i" --ring-transport tcp >>"$tmp/twotcp.rows"
  done
  median() { # the median of each column of a file of rows
    python3 -c 'import sys, statistics as s; rows = [l.split() for l in open(sys.argv[1])]
print(" ".join(f"{s.median(float(r[i]) for r in rows):.{0 if i in (2, 4) else 4 if i == 1 else 2}f}" for i in range(len(rows[0]))))' "$1"
  }
  read -r a_sps a_acc a_rss a_ar a_by a_cm a_up <<<"$(median "$tmp/one.rows")"
  read -r b_sps b_acc b_rss b_ar b_by b_cm b_up <<<"$(median "$tmp/two.rows")"
  read -r c_sps c_acc c_rss c_ar c_by c_cm c_up <<<"$(median "$tmp/twotcp.rows")"
  if [ "$repeat" -gt 1 ]; then
    for f in one two twotcp; do printf '%-7s samples/s per run: %s\n' "$f" "$(cut -d' ' -f1 "$tmp/$f.rows" | tr '\n' ' ')"; done
    printf '%-7s 2-core scaling before each run: %s\n' machine "$(tr '\n' ' ' <"$tmp/machine.rows")"
  fi
  read -r d_sps d_acc _ <<<"$(torch 1 "$epochs" ddp torchrun)"
  printf '%s, %s epochs, batch 32 (global), 1 thread per process; ms per step, the largest over the workers; medians of %s run(s)\n' "$corpus" "$epochs" "$repeat"
  row='%-26s %11s %9s %10s %11s %8s %11s\n'
  printf "$row" run samples/s accuracy compute all-reduce update bytes/step
  printf "$row" "ours 1 worker x 1 thread" "$a_sps" "$a_acc" "$a_cm" "$a_ar" "$a_up" "$a_by"
  printf "$row" "ours 2 workers x 1 thread" "$b_sps" "$b_acc" "$b_cm" "$b_ar" "$b_up" "$b_by"
  printf "$row" "  same, TCP ring" "$c_sps" "$c_acc" "$c_cm" "$c_ar" "$c_up" "$c_by"
  printf "$row" "PyTorch DDP (gloo) 2 x 1" "$d_sps" "$d_acc" - - - -
  python3 -c "import sys; a,b,d=map(float,sys.argv[1:]); print(f'scaling 2 workers / 1 worker: {b/a:.2f}x (target 1.6x); ours 2x1 / PyTorch DDP 2x1: {b/d:.2f}x')" "$a_sps" "$b_sps" "$d_sps"
  printf "this machine's own 2-core scaling at the time (bench_op PROBE: the step's products, two copies at once vs one; median): %s\n" \
    "$(python3 -c 'import sys, statistics as s; print(f"{s.median(float(l) for l in open(sys.argv[1])):.2f}x")' "$tmp/machine.rows")"
fi
