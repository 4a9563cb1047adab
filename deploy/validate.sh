#!/usr/bin/env bash
# Validates every Kubernetes manifest in deploy/k8s (CPU and GPU) against the Kubernetes
# schemas, offline, with kubernetes-validate from PyPI (installed into .venv-deploy/, git-ignored).
# Kustomize patch fragments (files with "patch" in their name) are not complete objects and
# are skipped; there are none at present.
set -euo pipefail
cd "$(dirname "$0")/.."
venv=.venv-deploy
if [[ ! -x "$venv/bin/kubernetes-validate" ]]; then
  python3 -m venv "$venv"
  "$venv/bin/pip" install -q --disable-pip-version-check "kubernetes-validate==1.37.*"
fi
mapfile -t files < <(find deploy/k8s -name '*.yaml' ! -name '*patch*' | sort)
"$venv/bin/kubernetes-validate" --strict "${files[@]}"
echo "validated ${#files[@]} manifests"
# What can be checked of the images without building them: the Dockerfiles' paths against the
# builds (gpu/bundle.sh's too), the manifests' programs and users against the images.
"$venv/bin/python" deploy/check_images.py
