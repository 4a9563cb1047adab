#!/usr/bin/env bash
# Builds the GPU worker (`--features cuda,nccl`), and the coordinator that can `predict` and
# `evaluate --device cuda`, without a GPU: the toolchain comes from NVIDIA's PyPI packages
# (gpu/toolchain.sh), the binaries land in target/cuda/release/.
# Then `gpu/bundle.sh` packs what gpu/check.sh needs on the GPU machine.
set -euo pipefail
cd "$(dirname "$0")/.."
# Only a toolchain that gpu/toolchain.sh finished carries its stamp.
[[ -f .cuda/root/complete ]] || gpu/toolchain.sh
source gpu/env.sh
cargo build --release --locked -p worker -p coordinator --features cuda,nccl "$@"
