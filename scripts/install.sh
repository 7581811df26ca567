#!/usr/bin/env bash
# Install dmlkit and what it needs on a fresh Debian-like machine with Python >= 3.10.
# Fashion-MNIST comes from Debian's dataset-fashion-mnist package where apt can run;
# torch is pinned first so that pip never pulls the multi-GB CUDA wheels on a CPU machine.
set -euo pipefail
cd "$(dirname "$0")/.."
if command -v apt-get >/dev/null 2>&1 && [ ! -d /usr/share/datasets/fashion-mnist ]; then
  SUDO=""; [ "$(id -u)" -ne 0 ] && command -v sudo >/dev/null 2>&1 && SUDO="sudo"
  if [ "$(id -u)" -eq 0 ] || [ -n "$SUDO" ]; then
    ($SUDO apt-get update -qq && $SUDO apt-get install -y -qq dataset-fashion-mnist) \
      || echo "install.sh: could not install dataset-fashion-mnist; set DMLKIT_DATA to a folder with the IDX files"
  fi
fi
python3 -m pip install -q "torch==2.13.0" || python3 -m pip install -q torch
python3 -m pip install -q -e ".[dev]"
