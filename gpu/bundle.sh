#!/usr/bin/env bash
# Packs what gpu/check.sh needs on a GPU machine into .gpu-bundle/ (git-ignored): the GPU
# worker (gpu/build.sh) and the CPU coordinator (it only coordinates), stripped. With the
# repository's data/trec and gpu/ it is all the GPU machine needs: a few tens of MiB.
set -euo pipefail
cd "$(dirname "$0")/.."
gpu/build.sh
cargo build --release --locked -p coordinator
mkdir -p .gpu-bundle
strip -o .gpu-bundle/worker target/cuda/release/worker
strip -o .gpu-bundle/coordinator target/release/coordinator
du -sh .gpu-bundle/*
