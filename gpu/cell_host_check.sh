#!/usr/bin/env bash
# Checks the LSTM cell's CUDA kernels on the CPU (see gpu/cell_host_check.cpp); needs g++.
set -euo pipefail
cd "$(dirname "$0")/.."
out=$(mktemp -d)
trap 'rm -rf "$out"' EXIT
g++ -O1 -std=c++17 -Wall -Wextra -Werror -I common/src/model gpu/cell_host_check.cpp -o "$out/check"
"$out/check"
