#!/usr/bin/env bash
# Smoke test of the CPU image that deploy/build-local.sh builds, driven by the manifests in
# deploy/k8s (see deploy/smoke.py --help): one coordinator and two worker containers on a
# podman network. Builds the image first unless --no-build is given; its Python needs (PyYAML,
# grpcio's health client) go into .venv-deploy/ (git-ignored). Prints `N passed, M failed`.
set -euo pipefail
cd "$(dirname "$0")/.."
export CONTAINERS_CONF="$PWD/deploy/podman/containers.conf"
build=1
args=()
for arg in "$@"; do
  case "$arg" in
    --no-build) build=0 ;;
    *) args+=("$arg") ;;
  esac
done
venv=.venv-deploy
if ! "$venv/bin/python" -c 'import grpc, grpc_health, yaml' 2>/dev/null; then
  python3 -m venv "$venv"
  "$venv/bin/pip" install -q --disable-pip-version-check "grpcio==1.*" "grpcio-health-checking==1.*" "PyYAML==6.*"
fi
if (( build )); then
  deploy/build-local.sh
fi
exec "$venv/bin/python" deploy/smoke.py "${args[@]}"
