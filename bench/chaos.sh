#!/usr/bin/env bash
# Fault injection (#27): 20 TREC runs with 3 local workers, each disturbed once at a random
# moment (a worker killed, the coordinator killed or sent SIGTERM and resumed, a worker
# stopped past its heartbeat timeout, an idle stranger on the ring ports), each checked
# against the undisturbed run. Not part of CI (about 10 minutes here); options: see
# `bench/chaos.py --help` (--trials, --epochs, --heartbeat, --tolerance, --seed).
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release -q -p coordinator -p worker
exec python3 bench/chaos.py "$@"
