#!/usr/bin/env bash
# Packs what gpu/check.sh needs on a GPU machine into .gpu-bundle/ (git-ignored): the GPU
# worker (gpu/build.sh) and the CPU coordinator (it only coordinates), stripped and
# xz-compressed (the worker's embedded PTX makes it 55 MiB, 7 MiB compressed). With the
# repository's data/trec and gpu/ it is all the GPU machine needs.
set -euo pipefail
cd "$(dirname "$0")/.."
gpu/build.sh
cargo build --release --locked -p coordinator
rm -rf .gpu-bundle
mkdir -p .gpu-bundle
for bin in target/cuda/release/worker target/release/coordinator; do
  strip -o ".gpu-bundle/$(basename "$bin")" "$bin"
  xz -T0 -6 ".gpu-bundle/$(basename "$bin")"
done
du -sh .gpu-bundle/*
