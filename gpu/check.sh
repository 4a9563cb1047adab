#!/usr/bin/env bash
# The GPU check, for a machine with an NVIDIA GPU (CUDA 13 driver) and PyTorch, no Rust and no
# network: run from the repository root with the binaries gpu/bundle.sh prebuilt on the
# development machine in .gpu-bundle/ (worker with `cuda,nccl`, CPU coordinator; xz-compressed).
#
#   1. worker --self-check: the LSTM layer's output and gradients on cuda:0 against the CPU's
#      fused op (with the step's cell as Candle ops and as the fused cell kernels), ten
#      training steps against the CPU, a one-rank NCCL all-reduce;
#   2. TREC (data/trec), 3 epochs, one worker on cuda:0: samples/s and the loss curve, with the
#      cell as Candle ops (the default) and again with SMALLTEXT_GPU_CELL=fused;
#   3. the same 3 epochs on the CPU (2 threads) beside it;
#   4. PyTorch's cuDNN LSTM (gpu/torch_bilstm.py, a copy of the reference) on the same GPU.
#
# Exits non-zero if any step fails. EPOCHS and BUNDLE (the .xz folder) override the defaults.
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

train() {  # name, coordinator args...
  local name="$1"; shift
  local t0=$SECONDS
  if "$bundle/coordinator" --workers 1 --data data/trec/train.tsv --test data/trec/test.tsv \
      --epochs "$epochs" --seed 0 --run-dir "$out/$name" "$@" > "$out/$name.log" 2>&1; then
    python3 - "$out/$name" "$name" $((SECONDS - t0)) <<'PY'
import json, sys
run, name, wall = sys.argv[1], sys.argv[2], sys.argv[3]
rows = [json.loads(l) for l in open(f"{run}/metrics.jsonl")]
summary = json.load(open(f"{run}/summary.json"))
rates = sorted(r["samples_per_s"] for r in rows)
print(f"{name}: median {rates[len(rates) // 2]:.0f} samples/s, epoch losses "
      + " ".join(f"{r['train_loss']:.4f}" for r in rows)
      + f", test accuracy {summary['accuracy']:.4f}, {wall} s wall")
PY
  else
    echo "$name: FAILED"; tail -20 "$out/$name.log"; status=1
  fi
}
echo "== 2. TREC, $epochs epochs, one worker on cuda:0"
train ours-cuda --device cuda --threads 2
SMALLTEXT_GPU_CELL=fused train ours-cuda-fused-cell --device cuda --threads 2
echo "== 3. the same on the CPU, 2 threads"
train ours-cpu --device cpu --threads 2
echo "== 4. PyTorch (cuDNN LSTM) on cuda:0, same data and epochs"
if python3 gpu/torch_bilstm.py --train data/trec/train.tsv --test data/trec/test.tsv \
    --epochs "$epochs" --device cuda --threads 2 > "$out/torch.json" 2> "$out/torch.log"; then
  cat "$out/torch.json"
else
  echo "PyTorch: FAILED"; tail -5 "$out/torch.log"; status=1
fi
python3 - "$out" <<'PY'
import json, os, sys
out = sys.argv[1]
if os.path.exists(f"{out}/ours-cuda/metrics.jsonl") and os.path.exists(f"{out}/torch.json"):
    ours = sorted(json.loads(l)["samples_per_s"] for l in open(f"{out}/ours-cuda/metrics.jsonl"))
    torch = json.load(open(f"{out}/torch.json"))["samples_per_s_median"]
    print(f"ratio ours/PyTorch on the GPU (median epoch samples/s): {ours[len(ours) // 2] / torch:.2f}")
    fused = f"{out}/ours-cuda-fused-cell/metrics.jsonl"
    if os.path.exists(fused):
        f = sorted(json.loads(l)["samples_per_s"] for l in open(fused))
        print(f"ratio with the fused cell kernels: {f[len(f) // 2] / torch:.2f}")
PY
echo "logs in $out"
exit $status
