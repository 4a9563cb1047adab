# Sourced by gpu/build.sh (and by hand: `source gpu/env.sh`): points nvcc, cudarc and
# candle-kernels at the toolchain gpu/toolchain.sh installed in .cuda/, for Hopper (sm_90).
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
export CUDA_ROOT="$root/.cuda/root"
export CUDA_HOME="$CUDA_ROOT" CUDA_PATH="$CUDA_ROOT"
export NVCC="$CUDA_ROOT/bin/nvcc"
export PATH="$CUDA_ROOT/bin:$PATH"
# There is no GPU here to ask; the GPU machines are H200s (compute capability 9.0).
export CUDA_COMPUTE_CAP="${CUDA_COMPUTE_CAP:-90}"
# The GPU build keeps its own target directory, so it never invalidates the CPU build's cache.
export CARGO_TARGET_DIR="$root/target/cuda"
