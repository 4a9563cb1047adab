#!/usr/bin/env bash
# The GPU check, for a machine with an NVIDIA GPU (CUDA 13 driver) and PyTorch, no Rust and no
# network: run from the repository root with the binaries gpu/bundle.sh prebuilt on the
# development machine in .gpu-bundle/ (worker and coordinator with `cuda,nccl`; xz-compressed).
#
#   1. worker --self-check: the LSTM layer's output and gradients on cuda:0 against the CPU's
#      fused op (with the step's cell as Candle ops and as the fused cell kernels), ten
#      training steps held on the device against the CPU (and the copies of state they made:
#      none), a one-rank NCCL all-reduce from host memory and in place in GPU buffers;
#   2. TREC (data/trec), 3 epochs, one worker on cuda:0: samples/s and the loss curve, with the
#      fused cell kernels (the default) and again with SMALLTEXT_GPU_CELL=ops (Candle's ops);
#   3. the same 3 epochs on the CPU (2 threads) beside it;
#   4. PyTorch's cuDNN LSTM (gpu/torch_bilstm.py, a copy of the reference) on the same GPU;
#   5. steps 2 to 4 again on the bundle's SST-2 slice (2,000 training rows, its test set);
#   6. fine-tuning MiniLM on the 500 SST-2 rows of bench/finetune_speed.sh, 2 epochs on cuda:0,
#      its weights drawn at random on both sides (the bundle has no weights): ours
#      (--encoder-random-init) against gpu/torch_finetune.py --random-init, a copy of the
#      reference (needs transformers; skipped, and said, without it).
#
# Exits non-zero if any step fails. EPOCHS and BUNDLE (the bundle's folder) override the
# defaults.
set -uo pipefail
cd "$(dirname "$0")/.."
epochs="${EPOCHS:-3}"
out="${LOGS:-$(mktemp -d)}"; mkdir -p "$out"
status=0
bundle="$out/bin"
mkdir -p "$bundle"
for bin in worker coordinator; do
  python3 -c 'import lzma, shutil, sys; shutil.copyfileobj(lzma.open(sys.argv[1]), open(sys.argv[2], "wb"))' \
    "${BUNDLE:-.gpu-bundle}/$bin.xz" "$bundle/$bin" && chmod +x "$bundle/$bin" || exit 1
done

# cuBLAS, NVRTC, cuRAND and NCCL (CUDA 13) from the pip packages PyTorch brings; the driver's
# libcuda from the system.
libs="$(python3 - <<'PY'
import os
try:
    import nvidia
except ImportError:
    raise SystemExit(0)
dirs = []
for root in nvidia.__path__:
    for sub in ("cu13/lib", "nccl/lib", "cublas/lib", "cuda_nvrtc/lib", "curand/lib"):
        if os.path.isdir(os.path.join(root, sub)):
            dirs.append(os.path.join(root, sub))
print(":".join(dirs))
PY
)"
export LD_LIBRARY_PATH="${libs}${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
if ldd "$bundle/worker" | grep "not found"; then
  echo "missing libraries for $bundle/worker (searched $LD_LIBRARY_PATH)"
  exit 1
fi
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader || true

echo "== 1. self-check on cuda:0"
"$bundle/worker" --self-check --device cuda:0 --threads 2 || status=1

B="${BUNDLE:-.gpu-bundle}"
train() {  # name, data folder (train.tsv, test.tsv), coordinator args...
  local name="$1" data="$2"; shift 2
  local t0=$SECONDS
  if "$bundle/coordinator" --workers 1 --data "$data/train.tsv" --test "$data/test.tsv" \
      --epochs "$epochs" --seed 0 --run-dir "$out/$name" "$@" > "$out/$name.log" 2>&1; then
    python3 - "$out/$name" "$name" $((SECONDS - t0)) <<'PY'
import json, sys
run, name, wall = sys.argv[1], sys.argv[2], sys.argv[3]
rows = [json.loads(l) for l in open(f"{run}/metrics.jsonl")]
summary = json.load(open(f"{run}/summary.json"))
rates = sorted(r["samples_per_s"] for r in rows)
gpu = summary.get("peak_gpu_mb")
print(f"{name}: median {rates[len(rates) // 2]:.0f} samples/s, epoch losses "
      + " ".join(f"{r['train_loss']:.4f}" for r in rows)
      + f", test accuracy {summary['accuracy']:.4f}, {wall} s wall"
      + (f", peak GPU memory {max(gpu):.0f} MB" if gpu else ""))
PY
  else
    echo "$name: FAILED"; tail -20 "$out/$name.log"; status=1
  fi
}
bilstm() {  # corpus name, data folder: ours on cuda:0 (the fused cell, then Candle's ops),
  # on the CPU, and PyTorch's cuDNN LSTM, with the ratios
  local corpus="$1" data="$2"
  echo "== $corpus, $epochs epochs, one worker on cuda:0"
  train "$corpus-ours-cuda" "$data" --device cuda --threads 2
  SMALLTEXT_GPU_CELL=ops train "$corpus-ours-cuda-ops-cell" "$data" --device cuda --threads 2
  echo "== $corpus: the same on the CPU, 2 threads"
  train "$corpus-ours-cpu" "$data" --device cpu --threads 2
  echo "== $corpus: PyTorch (cuDNN LSTM) on cuda:0, same data and epochs"
  if python3 gpu/torch_bilstm.py --train "$data/train.tsv" --test "$data/test.tsv" \
      --epochs "$epochs" --device cuda --threads 2 > "$out/$corpus-torch.json" 2> "$out/$corpus-torch.log"; then
    cat "$out/$corpus-torch.json"
  else
    echo "$corpus PyTorch: FAILED"; tail -5 "$out/$corpus-torch.log"; status=1
  fi
  python3 - "$out" "$corpus" <<'PY'
import json, os, sys
out, corpus = sys.argv[1], sys.argv[2]
def median(run):
    rates = sorted(json.loads(l)["samples_per_s"] for l in open(f"{out}/{corpus}-{run}/metrics.jsonl"))
    return rates[len(rates) // 2]
def losses(run):
    return [json.loads(l)["train_loss"] for l in open(f"{out}/{corpus}-{run}/metrics.jsonl")]
if os.path.exists(f"{out}/{corpus}-ours-cuda/metrics.jsonl") and os.path.exists(f"{out}/{corpus}-torch.json"):
    torch = json.load(open(f"{out}/{corpus}-torch.json"))["samples_per_s_median"]
    print(f"{corpus}: ratio ours/PyTorch on the GPU (median epoch samples/s): {median('ours-cuda') / torch:.2f} "
          "(target at least 1.0, aim 2)")
    if os.path.exists(f"{out}/{corpus}-ours-cuda-ops-cell/metrics.jsonl"):
        print(f"{corpus}: ratio with the cell as Candle ops: {median('ours-cuda-ops-cell') / torch:.2f}")
if os.path.exists(f"{out}/{corpus}-ours-cuda/metrics.jsonl") and os.path.exists(f"{out}/{corpus}-ours-cpu/metrics.jsonl"):
    worst = max(abs(a - b) for a, b in zip(losses("ours-cuda"), losses("ours-cpu")))
    print(f"{corpus}: largest epoch-loss difference, cuda against CPU: {worst:.2e} "
          f"({'within' if worst <= 1e-3 else 'BEYOND'} 1e-3)")
    acc = {run: json.load(open(f"{out}/{corpus}-{run}/summary.json"))["accuracy"]
           for run in ("ours-cuda", "ours-cpu")}
    points = 100 * abs(acc["ours-cuda"] - acc["ours-cpu"])
    print(f"{corpus}: test accuracy cuda {acc['ours-cuda']:.4f}, CPU {acc['ours-cpu']:.4f}: "
          f"{points:.2f} points apart ({'within' if points <= 1 else 'BEYOND'} 1)")
PY
}
bilstm trec data/trec
echo "== evaluate --device cuda: the TREC model trained on cuda:0, tested again on the GPU"
if [[ -f $out/trec-ours-cuda/summary.json ]]; then
  if "$bundle/coordinator" evaluate --device cuda --model "$out/trec-ours-cuda/model" \
      --data data/trec/test.tsv > "$out/evaluate-cuda.txt" 2> "$out/evaluate-cuda.log"; then
    python3 - "$out" <<'PY'
import json, re, sys
out = sys.argv[1]
text = open(f"{out}/evaluate-cuda.txt").read()
found = re.search(r"accuracy\D*([0-9.]+)", text)
trained = json.load(open(f"{out}/trec-ours-cuda/summary.json"))["accuracy"]
print(f"evaluate --device cuda: accuracy {found.group(1) if found else '?'} "
      f"(the run's own test: {trained:.4f})")
PY
  else
    echo "evaluate --device cuda: FAILED"; tail -5 "$out/evaluate-cuda.log"; status=1
  fi
fi
bilstm sst2 "$B/sst2"

echo "== 6. fine-tuning: 500 SST-2 rows, 2 epochs on cuda:0, weights drawn at random"
ft=(--encoder "$B/minilm" --encoder-mode finetune --encoder-random-init --workers 1 --threads 2
    --data "$B/sst2/finetune-500.tsv" --eval-split 0.1 --epochs 2 --seed 0 --device cuda)
if "$bundle/coordinator" "${ft[@]}" --run-dir "$out/finetune-ours" > "$out/finetune-ours.log" 2>&1; then
  python3 - "$out/finetune-ours" <<'PY'
import json, sys
rows = [json.loads(l) for l in open(f"{sys.argv[1]}/metrics.jsonl")]
s = json.load(open(f"{sys.argv[1]}/summary.json"))
print("ours: training samples/s by epoch " + " ".join(f"{r['samples_per_s']:.1f}" for r in rows)
      + "; peak GPU memory " + (f"{max(s['peak_gpu_mb']):.0f} MB" if "peak_gpu_mb" in s else "not recorded"))
PY
else
  echo "fine-tuning, ours: FAILED"; tail -20 "$out/finetune-ours.log"; status=1
fi
if python3 -c "import transformers" 2> /dev/null; then
  if HF_HUB_OFFLINE=1 TRANSFORMERS_VERBOSITY=error python3 gpu/torch_finetune.py --model "$B/minilm" \
      --random-init --device cuda --threads 2 --train "$B/sst2/finetune-500.tsv" \
      --test "$B/sst2/test.tsv" --n-train 0 --max-epochs 2 > "$out/finetune-torch.json" 2> "$out/finetune-torch.log"; then
    cat "$out/finetune-torch.json"
    python3 - "$out" <<'PY'
import json, os, sys
out = sys.argv[1]
if os.path.exists(f"{out}/finetune-ours/metrics.jsonl"):
    ours = [json.loads(l)["samples_per_s"] for l in open(f"{out}/finetune-ours/metrics.jsonl")][-1]
    torch = json.load(open(f"{out}/finetune-torch.json"))["train_samples_per_s"]
    print(f"fine-tuning: ratio ours (epoch 2's training steps) / PyTorch (both epochs, validation "
          f"included): {ours / torch:.2f}")
PY
  else
    echo "fine-tuning, PyTorch: FAILED"; tail -5 "$out/finetune-torch.log"; status=1
  fi
else
  echo "fine-tuning, PyTorch: not measured (no transformers on this machine)"
fi
echo "logs in $out"
exit $status
